"""The PG vocoder network (PG paper §3.1): log-mel → log-magnitude and bin offsets.

A stack of 1-d convolutions over time (kernel 3, ReLU), applied to the
standardised log-mel. Its last layer has ``3F`` channels: the magnitude
channel, and the frequency and time bin offsets Δm, Δn of eq. 6. A direct path
warps the standardised mel to the linear frequency axis (a learnable
``n_mels → F`` map initialised from the column-normalised transposed Slaney
filterbank) and is added to the magnitude channel; a scaled tanh
``f(x) = β tanh(x/β)``, β = 5, bounds it before it is de-standardised with the
training set's statistics. The offsets are linear outputs scaled by the
targets' standard deviations.

Every convolution is a :class:`~rtengine.nn.cached_conv.CachedConv1d`, so the
network streams frame by frame with the same output as an offline run. The
shipped models are causal; ``lookahead_layers`` centres that many layers (one
frame of latency each).

Shapes: ``B`` batch, ``T`` frames, ``F = n_fft/2 + 1`` bins.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass

import numpy as np
import torch
from torch import nn

from ..config import AudioConfig
from .cached_conv import CachedConv1d, CachedSequential

BETA = 5.0            # scaled tanh of the magnitude channel (PG paper §3.1)
MAX_LOG_MAG = 8.0     # exp() of a predicted log-magnitude is clamped here (|X| ≤ 2981)


@dataclass(frozen=True)
class PGVocConfig:
    """Size of a PG vocoder network.

    ``layers`` counts every convolution (input, hidden and output); the PG
    paper's network is ``layers=8, channels=1536``.
    """

    n_mels: int = 80
    n_bins: int = 513
    channels: int = 320
    layers: int = 6
    kernel: int = 3
    lookahead_layers: int = 0
    beta: float = BETA
    dm_prior_iter: int = 0     # > 0: Δm is a correction to PGHI's Δm (mel inversion iterations)
    refiner_channels: int = 0  # > 0: the correction comes from a per-frame conv across frequency
    refiner_kernel: int = 5

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "PGVocConfig":
        return cls(**{k: d[k] for k in cls.__dataclass_fields__ if k in d})

    @classmethod
    def for_audio(cls, audio: AudioConfig, **kw) -> "PGVocConfig":
        return cls(n_mels=audio.n_mels, n_bins=audio.n_bins, **kw)


def paper_config(audio: AudioConfig) -> PGVocConfig:
    """The PG paper's network: 8 layers × 1536 channels (its audio config is ``44k``)."""
    return PGVocConfig.for_audio(audio, channels=1536, layers=8)


def warp_matrix(audio: AudioConfig) -> np.ndarray:
    """Mel → linear frequency warping ``(F, n_mels)``: the transposed Slaney
    filterbank with each linear bin's weights normalised to sum 1 (bins no band
    covers take their nearest band)."""
    from ..dsp.mel import mel_filterbank

    w = mel_filterbank(audio).T.copy()        # (F, n_mels)
    s = w.sum(axis=1)
    for m in np.flatnonzero(s <= 0):
        # nearest covered bin's weights
        covered = np.flatnonzero(s > 0)
        w[m] = w[covered[np.argmin(np.abs(covered - m))]]
    return w / w.sum(axis=1, keepdims=True)


class ScaledTanh(nn.Module):
    """``f(x) = β tanh(x / β)``: linear near 0, bounded by ±β (PG paper §3.1)."""

    def __init__(self, beta: float = BETA):
        super().__init__()
        self.beta = float(beta)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.beta * torch.tanh(x / self.beta)


class FrequencyRefiner(nn.Module):
    """The Δm correction as a function of each bin's neighbourhood in frequency.

    Per frame, 1-d convolutions *across frequency* (kernel ``kernel``, ReLU,
    three layers) read the standardised prior Δm and the predicted
    standardised log-magnitude and return a correction ``(B, F, T)``. The same
    weights serve every bin, so what it learns about one pitch holds at any
    other (the convolution stack over time maps the whole spectrum at once and
    learns each pitch region apart, so it mis-corrects pitches it saw little
    of). Stateless across frames: it streams exactly. The last layer starts at
    zero, so an untrained refiner leaves the prior as it is.
    """

    def __init__(self, channels: int, kernel: int = 5):
        super().__init__()
        pad = kernel // 2
        self.net = nn.Sequential(nn.Conv1d(2, channels, kernel, padding=pad), nn.ReLU(),
                                 nn.Conv1d(channels, channels, kernel, padding=pad), nn.ReLU(),
                                 nn.Conv1d(channels, 1, 1))
        nn.init.zeros_(self.net[-1].weight)
        nn.init.zeros_(self.net[-1].bias)

    def forward(self, prior: torch.Tensor, z_mag: torch.Tensor) -> torch.Tensor:
        b, f, t = prior.shape
        x = torch.stack([prior, z_mag], dim=1)                   # (B, 2, F, T)
        x = x.permute(0, 3, 1, 2).reshape(b * t, 2, f)            # frames as the batch
        return self.net(x).reshape(b, t, f).transpose(1, 2)


class PGVocNet(nn.Module):
    """Log-mel ``(B, n_mels, T)`` → ``(log_mag, dm, dn)``, each ``(B, F, T)``.

    Buffers (saved in the state dict, set from the training set by
    :meth:`set_stats`): ``mel_mean``/``mel_std`` ``(n_mels,)``,
    ``mag_mean``/``mag_std`` ``(F,)`` of the natural-log magnitude, and
    ``dm_std``/``dn_std`` ``()`` of the offsets.
    """

    def __init__(self, cfg: PGVocConfig, audio: AudioConfig | None = None):
        super().__init__()
        if cfg.layers < 2:
            raise ValueError("a PG vocoder network needs at least 2 layers")
        self.cfg = cfg
        f, c = cfg.n_bins, cfg.channels
        layers: list[nn.Module] = []
        for i in range(cfg.layers):
            cin = cfg.n_mels + (f if cfg.dm_prior_iter else 0) if i == 0 else c
            cout = 3 * f if i == cfg.layers - 1 else c
            layers.append(CachedConv1d(cin, cout, cfg.kernel, lookahead=i < cfg.lookahead_layers))
            if i < cfg.layers - 1:
                layers.append(nn.ReLU())
        self.net = CachedSequential(*layers)
        self.warp = nn.Linear(cfg.n_mels, f, bias=False)
        if audio is not None:
            with torch.no_grad():
                self.warp.weight.copy_(torch.as_tensor(warp_matrix(audio), dtype=torch.float32))
        self.squash = ScaledTanh(cfg.beta)
        self.refiner = FrequencyRefiner(cfg.refiner_channels, cfg.refiner_kernel) if cfg.refiner_channels else None
        if self.refiner is not None and not cfg.dm_prior_iter:
            raise ValueError("refiner_channels needs dm_prior_iter > 0 (it refines the prior)")
        self.register_buffer("mel_mean", torch.zeros(cfg.n_mels))
        self.register_buffer("mel_std", torch.ones(cfg.n_mels))
        self.register_buffer("mag_mean", torch.zeros(f))
        self.register_buffer("mag_std", torch.ones(f))
        self.register_buffer("dm_std", torch.ones(()))
        self.register_buffer("dn_std", torch.ones(()))
        self._input_delay: torch.Tensor | None = None

    # ------------------------------------------------------------------ stats
    def set_stats(self, stats: dict) -> None:
        """Copy training statistics (arrays or tensors keyed like the buffers)."""
        for k in ("mel_mean", "mel_std", "mag_mean", "mag_std", "dm_std", "dn_std"):
            getattr(self, k).copy_(torch.as_tensor(np.asarray(stats[k]), dtype=torch.float32))

    @property
    def net_inputs(self) -> int:
        """Channels of the convolution stack's input."""
        return self.cfg.n_mels + (self.cfg.n_bins if self.uses_prior else 0)

    @property
    def lookahead(self) -> int:
        """Frames of look-ahead (latency) of the network."""
        return self.net.lookahead

    # ------------------------------------------------------------------ core
    def _standardise(self, log_mel: torch.Tensor) -> torch.Tensor:
        """``(B, n_mels, T)`` → standardised ``(B, n_mels, T)``."""
        return (log_mel - self.mel_mean[:, None]) / self.mel_std[:, None]

    @property
    def uses_prior(self) -> bool:
        return self.cfg.dm_prior_iter > 0

    def prior(self, log_mel: np.ndarray, audio: AudioConfig) -> np.ndarray | None:
        """The Δm prior ``(F, T)`` this network expects for a log-mel
        ``(n_mels, T)`` (numpy), or None if it takes none."""
        if not self.uses_prior:
            return None
        from ..dsp.pghi import frequency_offsets_from_mel

        return frequency_offsets_from_mel(log_mel, audio, self.cfg.dm_prior_iter)

    def _inputs(self, log_mel: torch.Tensor, dm_prior: torch.Tensor | None) -> torch.Tensor:
        """The convolution stack's input: the standardised mel, and the
        standardised prior if the network takes one, ``(B, C_in, T)``."""
        z = self._standardise(log_mel)
        if not self.uses_prior:
            return z
        if dm_prior is None:
            raise ValueError("this PG vocoder network needs dm_prior (PGVocNet.prior)")
        return torch.cat([z, dm_prior / self.dm_std], dim=1)

    def _heads(self, h: torch.Tensor, x: torch.Tensor):
        """Conv output ``(B, 3F, T)`` and the aligned network input ``(B, C_in, T)``
        → ``(log_mag, dm, dn)``, each ``(B, F, T)``."""
        f, n_mels = self.cfg.n_bins, self.cfg.n_mels
        mag_raw, dm_raw, dn_raw = h[:, :f], h[:, f:2 * f], h[:, 2 * f:]
        direct = self.warp(x[:, :n_mels].transpose(1, 2)).transpose(1, 2)  # mel → linear path
        z_mag = self.squash(mag_raw + direct)                             # f_β, β = 5
        log_mag = self.mag_mean[:, None] + self.mag_std[:, None] * z_mag
        dm = self.dm_std * dm_raw
        if self.refiner is not None:                                       # prior + local correction
            prior = x[:, n_mels:]
            dm = self.dm_std * (prior + self.refiner(prior, z_mag))
        elif self.uses_prior:
            dm = dm + self.dm_std * x[:, n_mels:]                          # correction + prior
        return log_mag, dm, self.dn_std * dn_raw

    def forward(self, log_mel: torch.Tensor, dm_prior: torch.Tensor | None = None):
        """Offline. log_mel ``(B, n_mels, T)`` (and the prior ``(B, F, T)`` if
        the network takes one) → ``(log_mag, dm, dn)``, each ``(B, F, T)``,
        frame ``t`` aligned with input frame ``t``."""
        x = self._inputs(log_mel, dm_prior)
        return self._heads(self.net(x), x)

    # ------------------------------------------------------------------ streaming
    def set_streaming(self, on: bool = True) -> None:
        """Switch every convolution to (or from) streaming and clear the caches."""
        self.net.set_streaming(on)
        self._input_delay = None

    def reset_stream(self) -> None:
        self.net.reset_cache()
        self._input_delay = None

    def stream(self, log_mel: torch.Tensor, dm_prior: torch.Tensor | None = None):
        """Streaming. ``k`` new frames ``(B, n_mels, k)`` (and their prior) →
        ``(log_mag, dm, dn)``, each ``(B, F, k)``: output frames ``t - lookahead``
        (the first ``lookahead`` outputs are those of silence before the start)."""
        z = self._inputs(log_mel, dm_prior)
        h = self.net.stream(z)
        d = self.lookahead
        if d:   # the direct path waits for the conv stack
            if self._input_delay is None:
                self._input_delay = z.new_zeros(z.shape[0], z.shape[1], d)
            zz = torch.cat([self._input_delay, z], dim=-1)
            self._input_delay = zz[..., -d:]
            z = zz[..., :-d]
        return self._heads(h, z)

    def flush_stream(self, batch: int = 1):
        """The last ``lookahead`` output frames after the input stops, each
        ``(B, F, lookahead)`` (the offline run pads the input the same way)."""
        d = self.lookahead
        # zero *standardised* frames, as the offline forward pads after standardising
        z = self.mel_mean.new_zeros(batch, self.net_inputs, d)
        h = self.net.stream(z)
        held = self._input_delay if self._input_delay is not None else z
        return self._heads(h, held)


def log_mag_to_mag(log_mag: torch.Tensor) -> torch.Tensor:
    """Predicted natural-log magnitude → magnitude, with ``exp`` clamped at
    :data:`MAX_LOG_MAG` so a wild prediction cannot overflow."""
    return torch.exp(torch.clamp(log_mag, max=MAX_LOG_MAG))


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def save_weights(path, model: PGVocNet, audio: AudioConfig, extra: dict | None = None) -> None:
    """Write ``{"type", "config", "audio", "state_dict", "extra"}`` atomically: plain
    data and tensors only, loadable with ``torch.load(weights_only=True)``."""
    from ..io import atomic_path

    blob = {"type": "pgvoc", "config": model.cfg.to_dict(), "audio": audio.to_dict(),
            "state_dict": {k: v.detach().cpu().clone() for k, v in model.state_dict().items()},
            "extra": extra or {}}
    with atomic_path(path) as tmp:
        torch.save(blob, tmp)
        os.chmod(tmp, 0o644)   # a shipped file: readable by everyone


def load_weights(path, map_location="cpu") -> tuple[PGVocNet, AudioConfig]:
    """Load a network saved by :func:`save_weights` (``weights_only=True``)."""
    blob = torch.load(str(path), map_location=map_location, weights_only=True)
    audio = AudioConfig.from_dict(blob["audio"])
    model = PGVocNet(PGVocConfig.from_dict(blob["config"]), audio)
    model.load_state_dict(blob["state_dict"])
    return model.eval(), audio
