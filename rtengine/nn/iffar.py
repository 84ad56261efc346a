"""IFF-AR (Santini, 2025): a causal frame-level generator of log-magnitude and
instantaneous frequency, one hop at a time.

The paper's four modules (§3), each one class here:

* :class:`TCNContextEncoder`: causal dilated 1-d convolutions over frames
  (WaveNet-like gated residual blocks), input the standardised log-magnitude
  and normalised IF of the context → a context embedding per frame;
* :class:`MagHead`: a light FC stack and small 1-d convolutions across
  frequency → the next frame's standardised log-magnitude; its output also
  conditions the flow;
* :class:`IFConditionalFlow`: RealNVP coupling layers (eq. 1) over the next
  frame's IF, with ``s`` and ``t`` conditioned on the context embedding and the
  predicted magnitude; exact log-determinant; sampling with a temperature;
* phase and iSTFT: ``φ_t = φ_{t−1} + Δφ_t``, ``X_t = M̂_t e^{iφ_t}``, then the
  engine's overlap-add (:mod:`rtengine.stages.iffar`).

Choices beyond the paper, each small and stated:

* the context the flow sees is the TCN embedding (global, ``C`` channels)
  plus the last context frame per bin (its log-magnitude and IF): a
  ``C``-vector alone cannot say which of 513 bins held a partial;
* MagHead predicts the change from the last frame (``residual_mag``);
* optionally MagHead also sees the ``mag_history`` frames before the last,
  per bin (the context embedding is one ``C``-vector: through it alone a
  bin's own past, e.g. the level of a noisy bin averaged over a few frames,
  cannot reach the prediction);
* optional conditioning on pitch (MIDI note) and instrument family, added to
  the context embedding; index ``n_notes`` / ``n_families`` means "none"
  (the paper's unconditional continuation), and training drops the labels
  at random so both work.

Shapes: ``B`` batch, ``C`` channels, ``F = n_fft/2 + 1`` bins, ``T`` frames.
Features are ``(B, 2F, T)``: standardised log-magnitude rows ``[0, F)``, then
normalised IF rows ``[F, 2F)``.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as Fn
from torch import nn

from ..config import AudioConfig
from .cached_conv import CachedConv1d
from .iffar_features import nominal_advance, wrap

MAX_LOG_MAG = 8.0      # exp() of a predicted log-magnitude is clamped here (|X| ≤ 2981)
PARTIALS_DB = 40.0     # partial_temp: a frame's partials are its bins within this of its loudest
PARTIALS_LN = PARTIALS_DB * math.log(10) / 20      # the same in natural log-magnitude
FAMILIES = ("bass", "brass", "ethnic", "flute", "guitar", "keyboard", "mallet", "organ", "reed",
            "string", "synth_lead", "synth_pad", "vocal")


@dataclass(frozen=True)
class IFFARConfig:
    """Size and options of an IFF-AR model."""

    n_bins: int = 513
    channels: int = 128          # C: TCN width and context embedding size
    layers: int = 6              # gated residual blocks, dilations 1, 2, 4, …
    kernel: int = 2
    mag_channels: int = 4        # MagHead: channels per bin after the FC stack
    mag_hidden: int = 8
    flow_layers: int = 4         # coupling layers (alternating even/odd bins)
    flow_hidden: int = 24
    cond_channels: int = 8       # global context projected to this many channels per bin
    s_max: float = 2.0           # |s| ≤ s_max (soft clamp of the log-scale)
    residual_mag: bool = True
    if_mode: str = "hetero"
    if_skip: bool = True         # ConditionalAffine base layer (μ = prev IF + Δμ)
    n_notes: int = 128
    n_families: int = len(FAMILIES)
    pitch_template: bool = False  # beyond the paper: the note also as partials per bin
    mag_history: int = 0          # beyond the paper: MagHead also sees this many earlier frames per bin
    mag_base: int = 1             # beyond the paper: MagHead's residual is added to a learned
                                  # convex mix of the last mag_base frames (1: the last frame)

    @property
    def receptive_field(self) -> int:
        """Frames the encoder sees: ``1 + (k−1)·Σ dilations``."""
        return 1 + (self.kernel - 1) * sum(2 ** i for i in range(self.layers))

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "IFFARConfig":
        return cls(**{k: d[k] for k in cls.__dataclass_fields__ if k in d})


# ------------------------------------------------------------------ encoder
class TapConv1d(CachedConv1d):
    """A :class:`CachedConv1d` computed as a sum over its kernel taps,
    ``y_t = b + Σ_j W_j x_{t−(k−1−j)·d}``: the same arithmetic and parameters,
    but each tap is a 1×1 product (fast), where torch's dilated convolution
    takes a slow generic path on the CPU. Shapes as ``CachedConv1d``."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t = x.shape[-1]
        if not self.streaming:
            xc = Fn.pad(x, (self.context, 0))
        else:
            if self._cache is None or self._cache.shape[0] != x.shape[0]:
                self._cache = x.new_zeros(x.shape[0], x.shape[1], self.context)
            xc = torch.cat([self._cache, x], dim=-1)
            self._cache = xc[..., -self.context:].detach()
        d = self.dilation[0]
        if t == 1:      # one frame: matrix-vector products
            y = self.bias
            for j in range(self.kernel_size[0]):
                y = y + Fn.linear(xc[..., j * d], self.weight[:, :, j])
            return y.unsqueeze(-1)
        y = None
        for j in range(self.kernel_size[0]):
            part = Fn.conv1d(xc[..., j * d:j * d + t], self.weight[:, :, j:j + 1])
            y = part if y is None else y + part
        return y + self.bias[:, None]


class GatedResidualBlock(nn.Module):
    """WaveNet block over frames: causal dilated conv, ``tanh ⊙ σ`` gate,
    1×1 residual and skip outputs. ``(B, C, T)`` → ``(B, C, T)``, ``(B, C, T)``."""

    def __init__(self, channels: int, kernel: int, dilation: int):
        super().__init__()
        self.conv = TapConv1d(channels, 2 * channels, kernel, dilation=dilation)
        self.res = nn.Conv1d(channels, channels, 1)
        self.skip = nn.Conv1d(channels, channels, 1)

    def forward(self, x: torch.Tensor):
        a, b = self.conv(x).chunk(2, dim=1)
        h = torch.tanh(a) * torch.sigmoid(b)
        return (x + self.res(h)) * math.sqrt(0.5), self.skip(h)


class TCNContextEncoder(nn.Module):
    """Causal dilated TCN over frames (§3).

    Input: context features ``(B, 2F, T)``; output: context embedding
    ``(B, C, T)``, frame ``t`` depending on input frames ``≤ t`` only. Every
    temporal convolution is a :class:`CachedConv1d`: with
    :meth:`set_streaming` on, calls with ``k`` new frames continue the
    previous calls, so one new frame costs O(layers)."""

    def __init__(self, cfg: IFFARConfig):
        super().__init__()
        c = cfg.channels
        self.inp = nn.Conv1d(2 * cfg.n_bins, c, 1)
        self.blocks = nn.ModuleList(GatedResidualBlock(c, cfg.kernel, 2 ** i)
                                    for i in range(cfg.layers))
        self.out = nn.Conv1d(c, c, 1)

    def set_streaming(self, on: bool) -> None:
        for m in self.modules():
            if isinstance(m, CachedConv1d):
                m.streaming = on
                m.reset_cache()

    def reset_cache(self) -> None:
        for m in self.modules():
            if isinstance(m, CachedConv1d):
                m.reset_cache()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.inp(x)
        skip = 0.0
        for blk in self.blocks:
            h, s = blk(h)
            skip = skip + s
        return self.out(Fn.gelu(skip))


# ------------------------------------------------------------------ magnitude
class MagHead(nn.Module):
    """Next frame's standardised log-magnitude from the context embedding (§3).

    A light FC stack projects ``(N, C)`` onto ``mag_channels`` values per bin,
    then two small 1-d convolutions across frequency (kernel 5) give one value
    per bin. With ``residual_mag`` the result is added to the last frame's
    log-magnitude ``prev`` ``(N, F)``. With ``mag_history`` = h the
    convolutions also read the h frames before ``prev`` (``hist`` ``(N, h, F)``,
    most recent first). With ``mag_base`` = k > 1 the residual is added to
    ``Σ_j a_j m_{t−j}`` over ``prev`` and the k − 1 frames before it, with
    ``a = softmax(base_logits)`` (k weights shared by all bins, a uniform
    mean at initialisation): the mean of the last few frames predicts a
    noisy bin better than its last value, and a convex mix keeps the level.
    Output ``(N, F)``."""

    def __init__(self, cfg: IFFARConfig):
        super().__init__()
        self.f, self.k = cfg.n_bins, cfg.mag_channels
        self.residual = cfg.residual_mag
        self.template = cfg.pitch_template
        self.history = cfg.mag_history
        self.base = cfg.mag_base
        if self.base > 1:
            if cfg.mag_history < self.base - 1:
                raise ValueError(f"mag_base {self.base} needs mag_history >= {self.base - 1}, "
                                 f"got {cfg.mag_history}")
            self.base_logits = nn.Parameter(torch.zeros(self.base))
        self.fc1 = nn.Linear(cfg.channels, cfg.channels)
        self.fc2 = nn.Linear(cfg.channels, cfg.mag_channels * cfg.n_bins)
        self.conv1 = nn.Conv1d(cfg.mag_channels + 1 + int(cfg.pitch_template) + cfg.mag_history,
                               cfg.mag_hidden, 5, padding=2)
        self.conv2 = nn.Conv1d(cfg.mag_hidden, 1, 5, padding=2)
        nn.init.zeros_(self.conv2.weight)
        nn.init.zeros_(self.conv2.bias)

    def forward(self, c: torch.Tensor, prev: torch.Tensor,
                template: torch.Tensor | None = None,
                hist: torch.Tensor | None = None) -> torch.Tensor:
        """``template`` ``(N, F)``: the requested note's partials (with
        ``pitch_template``; zeros when None). ``hist`` ``(N, h, F)``: the
        frames before ``prev`` (with ``mag_history``; ``prev`` repeated when
        None, as for a sequence that starts at ``prev``)."""
        h = self.fc2(Fn.gelu(self.fc1(c))).view(-1, self.k, self.f)
        parts = [h, prev.unsqueeze(1)]
        if self.template:
            parts.append((template if template is not None else torch.zeros_like(prev)).unsqueeze(1))
        if self.history:
            if hist is None:
                hist = prev.unsqueeze(1).expand(-1, self.history, -1)
            parts.append(hist)
        h = torch.cat(parts, dim=1)
        d = self.conv2(Fn.gelu(self.conv1(h))).squeeze(1)
        return self.residual_base(prev, hist) + d if self.residual else d

    def residual_base(self, prev: torch.Tensor, hist: torch.Tensor | None) -> torch.Tensor:
        """What the residual is added to: ``prev`` ``(N, F)``, or with
        ``mag_base`` the learned mix of it and the frames of ``hist`` before it
        (``mag_base`` > 1 implies ``mag_history``, so ``hist`` is set then)."""
        if self.base == 1:
            return prev
        frames = torch.cat([prev.unsqueeze(1), hist[:, :self.base - 1]], dim=1)   # (N, k, F)
        return torch.einsum("k,nkf->nf", torch.softmax(self.base_logits, 0), frames)


# ------------------------------------------------------------------ flow
class CouplingLayer(nn.Module):
    """One RealNVP affine coupling over the bins (IFF-AR eq. 1).

    The bins of one parity are ``x_a`` (kept), the others ``x_b``
    (transformed)::

        y_a = x_a
        y_b = x_b · exp(s(x_a, c)) + t(x_a, c)                       (1)

    ``s`` and ``t`` come from a small network over frequency: a kernel-5
    convolution of the masked ``x_a`` plus a 1×1 projection of the per-bin
    condition features, a 1×1 hidden layer and a kernel-3 output. ``s`` is
    soft-clamped to ``±s_max``. ``log|det ∂y/∂x| = Σ_b s_b`` exactly."""

    def __init__(self, cfg: IFFARConfig, parity: int):
        super().__init__()
        h = cfg.flow_hidden
        mask = (torch.arange(cfg.n_bins) % 2 == parity).float()   # 1 on x_a
        self.register_buffer("mask", mask, persistent=False)
        self.s_max = cfg.s_max
        self.inp = nn.Conv1d(2, h, 5, padding=2)
        self.cond = nn.Conv1d(h, h, 1)
        self.hid = nn.Conv1d(h, h, 1)
        self.out = nn.Conv1d(h, 2, 3, padding=1)
        nn.init.zeros_(self.out.weight)      # starts as the identity
        nn.init.zeros_(self.out.bias)

    def scale_shift(self, x: torch.Tensor, cond: torch.Tensor):
        """x ``(N, F)``, cond ``(N, H, F)`` → ``s, t`` ``(N, F)``, zero on ``x_a``."""
        xa = (x * self.mask).unsqueeze(1)
        m = self.mask.expand_as(x).unsqueeze(1)
        h = Fn.gelu(self.inp(torch.cat([xa, m], dim=1)) + self.cond(cond))
        s, t = self.out(Fn.gelu(self.hid(h))).unbind(1)
        s = self.s_max * torch.tanh(s / self.s_max)
        b = 1.0 - self.mask
        return s * b, t * b

    def forward(self, x: torch.Tensor, cond: torch.Tensor):
        """Data → latent (eq. 1): ``(N, F)`` → ``y (N, F)``, ``log|det| (N,)``."""
        s, t = self.scale_shift(x, cond)
        y = x * torch.exp(s) + t                # y_a = x_a where s = t = 0
        return y, s.sum(-1)

    def inverse(self, y: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        """Latent → data: ``x_b = (y_b − t)·exp(−s)`` (``y_a = x_a`` gives s, t)."""
        s, t = self.scale_shift(y, cond)       # depends on y_a = x_a only
        return (y - t) * torch.exp(-s)


class ConditionalAffine(nn.Module):
    """An element-wise affine flow layer that depends on the condition only:
    ``y = (x − μ) · exp(−σ)``, ``log|det| = −Σ σ``. ``μ = prev_if + Δμ`` with
    ``Δμ``, ``σ`` from a 1×1 convolution of the condition features (zero at
    initialisation): before any training the flow already says "each bin keeps
    its IF", and the coupling layers model the deviation. ``(N, F)``."""

    def __init__(self, cfg: IFFARConfig):
        super().__init__()
        self.s_max = cfg.s_max
        self.proj = nn.Conv1d(cfg.flow_hidden, 2, 1)
        nn.init.zeros_(self.proj.weight)
        nn.init.zeros_(self.proj.bias)

    def params(self, cond: torch.Tensor, prev_if: torch.Tensor):
        dmu, sig = self.proj(cond).unbind(1)
        return prev_if + dmu, self.s_max * torch.tanh(sig / self.s_max)

    def forward(self, x, cond, prev_if):
        mu, sig = self.params(cond, prev_if)
        return (x - mu) * torch.exp(-sig), -sig.sum(-1)

    def inverse(self, y, cond, prev_if):
        mu, sig = self.params(cond, prev_if)
        return y * torch.exp(sig) + mu


class IFConditionalFlow(nn.Module):
    """Conditional normalising flow over the next frame's normalised IF ``(N, F)``.

    Condition: the context embedding ``c`` ``(N, C)`` (projected to
    ``cond_channels`` per bin), the predicted log-magnitude ``mag`` ``(N, F)``
    and the last context frame ``prev_mag``, ``prev_if`` ``(N, F)``; a shared
    kernel-5 network turns them into ``(N, H, F)`` features that every coupling
    layer reads. The base density is ``N(0, I)``."""

    def __init__(self, cfg: IFFARConfig):
        super().__init__()
        self.f = cfg.n_bins
        self.template = cfg.pitch_template
        self.glob = nn.Linear(cfg.channels, cfg.cond_channels)
        self.cond_net = nn.Conv1d(3 + cfg.cond_channels + int(cfg.pitch_template), cfg.flow_hidden, 5,
                                  padding=2)
        self.base = ConditionalAffine(cfg) if cfg.if_skip else None
        self.layers = nn.ModuleList(CouplingLayer(cfg, i % 2) for i in range(cfg.flow_layers))

    def condition(self, c, mag, prev_mag, prev_if, template=None):
        """→ condition: per-bin features ``(N, H, F)`` and ``prev_if`` ``(N, F)``."""
        g = self.glob(c).unsqueeze(-1).expand(-1, -1, self.f)
        parts = [mag.unsqueeze(1), prev_mag.unsqueeze(1), prev_if.unsqueeze(1), g]
        if self.template:
            parts.append((template if template is not None else torch.zeros_like(mag)).unsqueeze(1))
        x = torch.cat(parts, dim=1)
        return Fn.gelu(self.cond_net(x)), prev_if

    def forward(self, x: torch.Tensor, cond):
        """IF ``(N, F)`` → latent ``z (N, F)`` and ``log|det ∂z/∂x| (N,)``."""
        h, prev_if = cond
        logdet = x.new_zeros(x.shape[0])
        if self.base is not None:
            x, logdet = self.base(x, h, prev_if)
        for layer in self.layers:
            x, ld = layer(x, h)
            logdet = logdet + ld
        return x, logdet

    def inverse(self, z: torch.Tensor, cond) -> torch.Tensor:
        h, prev_if = cond
        for layer in reversed(self.layers):
            z = layer.inverse(z, h)
        if self.base is not None:
            z = self.base.inverse(z, h, prev_if)
        return z

    def nll(self, x: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        """Negative log-likelihood per dimension (nats), ``(N,)``:
        ``−log p(x) = ½‖z‖² + ½ F log 2π − log|det|`` divided by ``F``."""
        z, logdet = self(x, cond)
        return (0.5 * (z ** 2).sum(-1) + 0.5 * self.f * math.log(2 * math.pi) - logdet) / self.f

    def sample(self, cond: torch.Tensor, temperature: float | torch.Tensor = 1.0,
               generator: torch.Generator | None = None, z: torch.Tensor | None = None):
        """Draw ``z ~ N(0, T²I)`` (or use ``z``) and invert: ``(N, F)``. ``T``
        is one number or one per bin ``(N, F)`` (:meth:`IFFAR.temperatures`)."""
        if z is None:
            h = cond[0]
            z = torch.randn((h.shape[0], self.f), generator=generator, dtype=h.dtype, device=h.device)
        return self.inverse(z * temperature, cond)


# ------------------------------------------------------------------ model
class IFFAR(nn.Module):
    """The IFF-AR model: encoder, MagHead and flow, with the feature statistics
    as buffers (so a state dict is a complete model)."""

    def __init__(self, cfg: IFFARConfig, audio: AudioConfig):
        super().__init__()
        self.cfg = cfg
        self.audio = audio
        f = cfg.n_bins
        self.encoder = TCNContextEncoder(cfg)
        self.note_emb = nn.Embedding(cfg.n_notes + 1, cfg.channels)
        self.family_emb = nn.Embedding(cfg.n_families + 1, cfg.channels)
        nn.init.normal_(self.note_emb.weight, std=0.02)
        nn.init.normal_(self.family_emb.weight, std=0.02)
        self.mag_head = MagHead(cfg)
        self.flow = IFConditionalFlow(cfg)
        for name, v in (("mag_mean", 0.0), ("mag_std", 1.0), ("if_median", 0.0), ("if_mad", 1.0),
                        ("mag_max", MAX_LOG_MAG)):
            self.register_buffer(name, torch.full((f,), v))
        # MagHead calibration (set after training on the validation split): the
        # mean teacher-forced residual per bin, subtracted in generation
        self.register_buffer("mag_bias", torch.zeros(f))
        self.register_buffer("nominal", nominal_advance(audio), persistent=False)
        valid = torch.ones(f)
        valid[0] = valid[-1] = 0.0       # DC and Nyquist: real, phase 0 or π, IF held at 0
        self.register_buffer("if_valid", valid, persistent=False)
        if cfg.pitch_template:
            self.register_buffer("templates", pitch_templates(cfg, audio), persistent=False)

    # -- features --------------------------------------------------------------
    def set_stats(self, stats: dict) -> None:
        for k in ("mag_mean", "mag_std", "if_median", "if_mad", "mag_max"):
            if k in stats:
                getattr(self, k).copy_(torch.as_tensor(stats[k]))

    def normalise(self, logmag: torch.Tensor, if_: torch.Tensor) -> torch.Tensor:
        """log-magnitude and IF ``(B, F, T)`` (natural units) → features ``(B, 2F, T)``."""
        m = (logmag - self.mag_mean[:, None]) / self.mag_std[:, None]
        d = (if_ - self.if_median[:, None]) / self.if_mad[:, None] * self.if_valid[:, None]
        return torch.cat([m, d], dim=1)

    def denorm_mag(self, m: torch.Tensor) -> torch.Tensor:
        """Standardised ``(…, F)`` → natural log-magnitude, clamped at ``MAX_LOG_MAG``."""
        return (m * self.mag_std + self.mag_mean).clamp(max=MAX_LOG_MAG)

    def mag_bounds(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-bin bounds ``(lo, hi)`` ``(F,)`` of :meth:`clamp_mag`, standardised."""
        lo = (math.log(1e-5) - self.mag_mean) / self.mag_std
        hi = (self.mag_max + 0.7 - self.mag_mean) / self.mag_std
        return lo, hi

    def clamp_mag(self, m: torch.Tensor) -> torch.Tensor:
        """Safeguard of a generated standardised log-magnitude ``(N, F)``: at
        most the loudest value each bin reached in the training set (+6 dB),
        at least the log floor. A roll-out that drifts upwards cannot feed
        itself ever louder frames."""
        lo, hi = self.mag_bounds()
        return torch.minimum(torch.maximum(m, lo), hi)

    def denorm_if(self, d: torch.Tensor) -> torch.Tensor:
        """Normalised IF ``(…, F)`` → rad per hop (0 at DC and Nyquist)."""
        return (d * self.if_mad + self.if_median) * self.if_valid

    def renorm_if(self, d: torch.Tensor) -> torch.Tensor:
        """A generated normalised IF as the encoder saw IF in training (wrapped)."""
        return (wrap(self.denorm_if(d)) - self.if_median) / self.if_mad * self.if_valid

    def labels(self, note, family, n: int, device) -> tuple[torch.Tensor, torch.Tensor]:
        """Label indices ``(n,)``; ``None`` or a negative value means "none"."""
        def idx(v, none):
            if v is None:
                v = none
            t = torch.as_tensor(v, device=device).long().reshape(-1)
            t = torch.where((t < 0) | (t > none), torch.full_like(t, none), t)
            return t.expand(n) if t.numel() == 1 else t
        return idx(note, self.cfg.n_notes), idx(family, self.cfg.n_families)

    def template(self, note: torch.Tensor) -> torch.Tensor | None:
        """Label indices (any shape) → the notes' partial templates ``(…, F)``
        (zeros for "none"), or None without ``pitch_template``."""
        return self.templates[note] if self.cfg.pitch_template else None

    def mag_history_of(self, mags: torch.Tensor) -> torch.Tensor | None:
        """Standardised log-magnitudes ``(B, F, T)`` → for each frame ``t`` the
        ``mag_history`` frames before it, most recent first, ``(B, T, h, F)``
        (frame 0 repeated before the start); None without ``mag_history``."""
        h = self.cfg.mag_history
        if not h:
            return None
        t = mags.shape[-1]
        padded = torch.cat([mags[..., :1].expand(-1, -1, h), mags], dim=-1)
        return torch.stack([padded[..., h - j:h - j + t] for j in range(1, h + 1)], dim=1).permute(0, 3, 1, 2)

    def history_after(self, mags: torch.Tensor) -> torch.Tensor | None:
        """The history ``(B, h, F)`` that follows a sequence of standardised
        log-magnitudes ``(B, F, T)`` (a prompt): the ``mag_history`` frames
        before its last one; None without ``mag_history``."""
        hist = self.mag_history_of(mags)
        return hist[:, -1] if hist is not None else None

    @staticmethod
    def push_history(hist: torch.Tensor | None, frame_mag: torch.Tensor) -> torch.Tensor | None:
        """The history ``(N, h, F)`` one frame on: ``frame_mag`` ``(N, F)`` (the
        frame that was ``prev``) becomes the most recent."""
        if hist is None:
            return None
        return torch.cat([frame_mag.unsqueeze(1), hist[:, :-1]], dim=1)

    def context(self, e: torch.Tensor, note: torch.Tensor, family: torch.Tensor) -> torch.Tensor:
        """Encoder output ``(B, C, T)`` + label embeddings → ``(B, C, T)``.
        Labels ``(B,)`` hold for the whole sequence; ``(B, T)`` give each frame
        its own (a note change inside a training crop)."""
        emb = self.note_emb(note) + self.family_emb(family)
        return e + (emb.unsqueeze(-1) if emb.dim() == 2 else emb.transpose(1, 2))

    # -- training: teacher forcing -------------------------------------------
    def forward(self, feats: torch.Tensor, note: torch.Tensor, family: torch.Tensor,
                sample_tf: bool = True, targets: torch.Tensor | None = None) -> dict:
        """Teacher-forced prediction of frames ``1..T−1`` from frames ``0..T−2``.

        feats ``(B, 2F, T)``; note, family ``(B,)``, or ``(B, T−1)``: the label
        of each predicted frame; ``targets`` ``(B, 2F, T)``: the true frames
        the NLL scores, when the inputs are not all true (scheduled sampling,
        free runs; default ``feats``). Returns (``N = B·(T−1)``):
        ``mag`` (N, F) predicted standardised log-magnitude, ``nll`` (N,) flow
        NLL per dimension of the true IF, ``if0`` (N, F) the flow's IF at
        temperature 0 (``z = 0``; for the audio losses, when ``sample_tf``),
        ``cond_inputs`` what the flow's condition is made of (``flow.condition``'s
        arguments)."""
        f = self.cfg.n_bins
        b, _, t = feats.shape
        c = self.context(self.encoder(feats[..., :-1]), note, family)   # (B, C, T-1)
        c = c.transpose(1, 2).reshape(-1, c.shape[1])
        prev = feats[..., :-1].transpose(1, 2).reshape(-1, 2 * f)
        tgt = (feats if targets is None else targets)[..., 1:].transpose(1, 2).reshape(-1, 2 * f)
        tmpl = self.template(note if note.dim() == 2 else note[:, None].expand(-1, t - 1))
        tmpl = tmpl.reshape(-1, f) if tmpl is not None else None
        hist = self.mag_history_of(feats[:, :f, :-1])
        hist = hist.reshape(-1, *hist.shape[2:]) if hist is not None else None
        mag = self.mag_head(c, prev[:, :f], tmpl, hist)
        cond = self.flow.condition(c, mag, prev[:, :f], prev[:, f:], tmpl)
        # DC and Nyquist carry no IF: their targets are replaced by N(0, 1)
        # noise, so the flow's density stays proper there (no collapse onto 0)
        x = tgt[:, f:] * self.if_valid + torch.randn_like(mag) * (1 - self.if_valid)
        out = {"mag": mag, "nll": self.flow.nll(x, cond),
               "cond_inputs": (c, mag, prev[:, :f], prev[:, f:], tmpl)}
        if sample_tf:
            out["if0"] = self.flow.inverse(torch.zeros_like(mag), cond)
        return out

    # -- generation ------------------------------------------------------------
    def predict(self, e: torch.Tensor, prev: torch.Tensor, note, family,
                temperature: float = 1.0, generator: torch.Generator | None = None,
                z: torch.Tensor | None = None, guard_ref: torch.Tensor | None = None,
                hist: torch.Tensor | None = None, partial_temp: float = 1.0) -> torch.Tensor:
        """One generated frame from the embedding of the last context frame.

        e ``(N, C)`` encoder output, prev ``(N, 2F)`` last frame's features,
        hist ``(N, h, F)`` the log-magnitudes before it (``mag_history``) →
        next frame's features ``(N, 2F)`` (standardised log-mag, normalised
        IF; the IF as generated, not yet wrapped). ``partial_temp``: see
        :meth:`temperatures`."""
        f = self.cfg.n_bins
        n_idx, f_idx = self.labels(note, family, e.shape[0], e.device)
        c = e + self.note_emb(n_idx) + self.family_emb(f_idx)
        tmpl = self.template(n_idx)
        mag = self.clamp_mag(self.mag_head(c, prev[:, :f], tmpl, hist) - self.mag_bias)
        if guard_ref is not None:
            mag = self.level_guard(mag, guard_ref)
        cond = self.flow.condition(c, mag, prev[:, :f], prev[:, f:], tmpl)
        d = self.flow.sample(cond, self.temperatures(mag, temperature, partial_temp), generator, z)
        return torch.cat([mag, d], dim=1)

    def temperatures(self, mag: torch.Tensor, temperature: float, partial_temp: float = 1.0):
        """The flow's sampling temperature for a frame's bins, from its
        standardised log-magnitude ``(N, F)``: ``temperature`` everywhere
        (``partial_temp`` 1, as the paper), or ``temperature · partial_temp``
        on the frame's partials, its bins within ``PARTIALS_DB`` of its
        loudest.

        Beyond the paper: the temperature only draws the IF (MagHead is
        deterministic), and a random advance at a partial is a random walk
        of its phase, heard as a smear within a second; in the quiet bins it
        is the sound's noise. ``partial_temp`` 0 keeps the partials' phase on
        the flow's most likely advance and the rest random (32-frame
        roll-outs at T = 0.7: SI-SDR with the true magnitude as at T = 0)."""
        if partial_temp == 1.0:
            return temperature
        ln = self.denorm_mag(mag)
        loud = ln > ln.max(dim=-1, keepdim=True).values - PARTIALS_LN
        return torch.where(loud, mag.new_tensor(temperature * partial_temp), mag.new_tensor(temperature))

    @torch.no_grad()
    def calibrate(self, feats_list, labels_list) -> torch.Tensor:
        """Set ``mag_bias`` to MagHead's mean teacher-forced error per bin over
        held-out clips (features ``(1, 2F, T)`` and ``(note, family)``).

        Beyond the paper: a per-bin bias of MagHead's residual (+0.03…0.2
        standard deviations per frame after the shipped training) compounds
        in a teacher-free roll-out; subtracting it in :meth:`predict` turns a
        roll-out that climbs to the clamp into one that decays like a note."""
        errs = []
        for feats, (note, fam) in zip(feats_list, labels_list):
            n_idx, f_idx = self.labels(note, fam, 1, feats.device)
            out = self(feats, n_idx, f_idx, sample_tf=False)
            errs.append(out["mag"] - feats[0, :self.cfg.n_bins, 1:].T)
        self.mag_bias.copy_(torch.cat(errs).mean(0))
        return self.mag_bias

    @staticmethod
    def level_guard(mag: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
        """Cap the frame's mean standardised log-magnitude ``(N, F)`` at ``ref``
        ``(N, 1)`` (the prompt's last frame): a roll-out may decay but not climb
        above its prompt's level; the spectral shape is kept. Beyond the paper:
        a guard for live use against MagHead's compounding upward bias."""
        excess = (mag.mean(-1, keepdim=True) - ref).clamp(min=0)
        return mag - excess

    def feedback(self, frame: torch.Tensor) -> torch.Tensor:
        """Generated frames ``(…, 2F)`` as the next encoder input (IF wrapped)."""
        f = self.cfg.n_bins
        return torch.cat([frame[..., :f], self.renorm_if(frame[..., f:])], dim=-1)

    @torch.no_grad()
    def rollout(self, prompt: torch.Tensor, k: int, temperature: float = 1.0,
                seed: int = 0, note=None, family=None, cached: bool = True,
                guard: bool = False, partial_temp: float = 1.0) -> torch.Tensor:
        """Teacher-free roll-out of ``k`` frames after a prompt ``(B, 2F, P)``.

        ``cached``: stream the encoder (one new frame per step, per-layer
        caches); else recompute it over the whole sequence each step (the
        offline reference). The latent of step ``j`` is the ``j``-th draw of a
        generator seeded with ``seed``, so both paths use the same noise.
        ``guard``: apply :meth:`level_guard` with the prompt's last frame.
        ``partial_temp``: :meth:`temperatures`.
        Returns the generated frames ``(B, 2F, k)`` (IF as generated)."""
        g = torch.Generator(device=prompt.device).manual_seed(seed)
        seq = prompt
        outs = []
        if cached:
            self.encoder.set_streaming(True)
            e = self.encoder(prompt)[..., -1]
        else:
            e = self.encoder(prompt)[..., -1]
        f = self.cfg.n_bins
        prev = prompt[..., -1]
        hist = self.history_after(prompt[:, :f])
        ref = prev[:, :f].mean(-1, keepdim=True)
        for _ in range(k):
            frame = self.predict(e, prev, note, family, temperature, g,
                                 guard_ref=ref if guard else None, hist=hist, partial_temp=partial_temp)
            outs.append(frame)
            hist = self.push_history(hist, prev[:, :f])
            prev = self.feedback(frame)
            if cached:
                e = self.encoder(prev.unsqueeze(-1))[..., -1]
            else:
                seq = torch.cat([seq, prev.unsqueeze(-1)], dim=-1)
                e = self.encoder(seq)[..., -1]
        if cached:
            self.encoder.set_streaming(False)
        return torch.stack(outs, dim=-1)


# ------------------------------------------------------------------ pitch templates
TEMPLATE_SIGMA_BINS = 1.0


def pitch_templates(cfg: IFFARConfig, audio: AudioConfig) -> torch.Tensor:
    """``(n_notes + 1, F)``: for each MIDI note, a Gaussian bump (σ = 1 bin,
    peak 1) at each harmonic ``h·f0`` below Nyquist; the last row ("none")
    is zero. Beyond the paper: the requested pitch as a per-bin input of
    MagHead and the flow, where convolutions across frequency can move
    energy to the new partials for any note alike; a note embedding alone is
    one vector per note, each trained only on its own notes."""
    bins = torch.arange(cfg.n_bins, dtype=torch.float64)
    binhz = audio.sample_rate / audio.n_fft
    rows = torch.zeros(cfg.n_notes + 1, cfg.n_bins, dtype=torch.float64)
    for n in range(cfg.n_notes):
        f0 = 440.0 * 2.0 ** ((n - 69) / 12)
        h = torch.arange(1, int((audio.sample_rate / 2) // f0) + 1, dtype=torch.float64)
        centres = h * f0 / binhz
        bumps = torch.exp(-0.5 * ((bins[None] - centres[:, None]) / TEMPLATE_SIGMA_BINS) ** 2)
        rows[n] = bumps.amax(0) if len(h) else 0.0
    return rows.float()


def widen_for_template(state: dict, cfg: IFFARConfig) -> dict:
    """A state dict of a model without ``pitch_template`` made loadable into
    one with it: the new input channel of MagHead's first convolution and of
    the flow's condition network gets zero weights, so the widened model
    computes what the old one did until training moves them."""
    out = dict(state)
    for key in ("mag_head.conv1.weight", "flow.cond_net.weight"):
        out[key] = _with_zero_inputs(out[key], 1)
    return out


def widen_for_history(state: dict, cfg: IFFARConfig, old_history: int = 0) -> dict:
    """A state dict of a model with ``old_history`` frames of ``mag_history``
    made loadable into one with ``cfg.mag_history`` more: MagHead's first
    convolution gets zero weights for the new (last) input channels, so the
    widened model computes what the old one did until training moves them."""
    out = dict(state)
    out["mag_head.conv1.weight"] = _with_zero_inputs(out["mag_head.conv1.weight"],
                                                     cfg.mag_history - old_history)
    return out


def add_mag_base(state: dict, cfg: IFFARConfig) -> dict:
    """A state dict of a model with ``mag_base`` 1 made loadable into one
    with ``cfg.mag_base`` > 1: uniform mixing weights. Not function-preserving
    (the residual's base moves from the last frame to a mean); fine-tuning
    adapts the residual."""
    out = dict(state)
    out["mag_head.base_logits"] = torch.zeros(cfg.mag_base)
    return out


def _with_zero_inputs(w: torch.Tensor, n: int) -> torch.Tensor:
    """A convolution weight ``(out, in, k)`` with ``n`` zero input channels appended."""
    return torch.cat([w, w.new_zeros(w.shape[0], n, w.shape[2])], dim=1)


# ------------------------------------------------------------------ loading
def weights_file(path):
    """A model folder's ``weights.pt``, or ``path`` itself if it is a file."""
    from pathlib import Path

    p = Path(path)
    return p / "weights.pt" if p.is_dir() else p


def load_iffar(path, map_location="cpu") -> IFFAR:
    """Load a model folder (``weights.pt``) or a weights file; weights only."""
    return iffar_from_state(torch.load(str(weights_file(path)), map_location=map_location,
                                       weights_only=True))


def iffar_from_state(state: dict) -> IFFAR:
    """The model a saved state (:func:`export_state`) describes, in eval mode."""
    from ..config import get_config

    cfg = IFFARConfig.from_dict(state["config"])
    audio = get_config(state["audio"]["name"]) if "audio" in state else get_config("22k")
    model = IFFAR(cfg, audio)
    sd = dict(state["model"])
    sd.setdefault("mag_bias", torch.zeros(cfg.n_bins))    # weights saved before calibration
    model.load_state_dict(sd)
    model.eval()
    return model


def export_state(model: IFFAR, extra: dict | None = None) -> dict:
    """A weights-only state for ``torch.save`` (tensors, numbers, strings)."""
    return {"model": {k: v.detach().cpu().float() for k, v in model.state_dict().items()},
            "config": model.cfg.to_dict(), "audio": model.audio.to_dict(), **(extra or {})}
