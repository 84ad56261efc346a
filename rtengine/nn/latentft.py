"""LatentFT: frame-wise encoder, latent DFT (eq. 3), training mask (eq. 4),
band partitions, continuous band gains and the one-sided streaming operator.

Conventions (the 22k family; see ``docs/latentft.md``):

- mel: the engine's log-mel ``L = ln(max(mel, 1e-5))`` scaled to about
  [-1, 1] by :func:`scale_mel` (``y = 2 (L - 2.1922) / 13.7051 + 1``);
- latent: ``(B, C, T)`` at the mel frame rate (86.13 Hz), one latent frame per
  mel frame;
- latent DFT: ``rfft`` along time over a window of ``W = 512`` frames
  zero-padded to ``N = 1024`` (2x, for spectral granularity), so there are
  ``N/2 + 1 = 513`` bins at ``v_k = k / 512`` (``v = 1`` is the latent Nyquist,
  43.07 Hz); one mask per example, shared by all channels;
- inverse: ``irfft`` to ``N`` and keep the first ``W`` frames.
"""

from __future__ import annotations

import functools
import math

import numpy as np
import torch
from torch import nn

# ---------------------------------------------------------------------------
# mel scaling
LOG_MEL_MAX = 2.1922
LOG_MEL_MIN = math.log(1e-5)  # -11.5129


def scale_mel(log_mel):
    """Engine log-mel → model scale, about [-1, 1]. Works on numpy or torch."""
    return 2.0 * (log_mel - LOG_MEL_MAX) / (LOG_MEL_MAX - LOG_MEL_MIN) + 1.0


def unscale_mel(y):
    """Model scale → engine log-mel (inverse of :func:`scale_mel`)."""
    return (y - 1.0) * (LOG_MEL_MAX - LOG_MEL_MIN) / 2.0 + LOG_MEL_MAX


# ---------------------------------------------------------------------------
# encoder (eq. 2), frame-wise
class FrameNorm(nn.Module):
    """Normalisation over channels of each frame separately (no pooling over
    time, unlike the paper's GroupNorm), so a stream gives the offline result.
    x: ``(B, C, T)`` → ``(B, C, T)``."""

    def __init__(self, channels: int, eps: float = 1e-5):
        super().__init__()
        self.norm = nn.LayerNorm(channels, eps=eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(x.transpose(1, 2)).transpose(1, 2)


class FrameResBlock(nn.Module):
    """``x + W2 GELU(W1 norm(x))`` with 1x1 convolutions. ``(B, C, T)`` → same."""

    def __init__(self, channels: int):
        super().__init__()
        self.norm = FrameNorm(channels)
        self.fc1 = nn.Conv1d(channels, channels, 1)
        self.fc2 = nn.Conv1d(channels, channels, 1)
        self.act = nn.GELU()

    def forward(self, x):
        return x + self.fc2(self.act(self.fc1(self.norm(x))))


class MLPEncoder(nn.Module):
    """The paper's MLP encoder, frame by frame (eq. 2: mel → latent).

    1x1 conv ``n_mels → hidden``, ``blocks`` residual blocks with per-frame
    normalisation, per-frame norm, 1x1 conv ``hidden → latent``. The paper's
    sizes are 80 → 512, 7 blocks, 512 → 80; the shipped model is smaller (see
    its card). Every output frame depends on its input frame only.

    ``skip``: add a linear 1x1 path ``n_mels → latent`` (zero-initialised,
    beyond the paper). The per-frame norm divides out each frame's scale, so
    without it a frame's level reaches the latent only nonlinearly and a band
    mask on the latent is not a band mask on the level; the linear path lets
    the latent carry the mel's own time pattern, which the mask then filters
    exactly.

    x: scaled mel ``(B, n_mels, T)`` → latent ``(B, latent, T)``.
    """

    def __init__(self, n_mels: int = 80, hidden: int = 128, blocks: int = 3, latent: int = 32,
                 skip: bool = False, levels: int = 0):
        super().__init__()
        self.inp = nn.Conv1d(n_mels, hidden, 1)
        self.blocks = nn.Sequential(*[FrameResBlock(hidden) for _ in range(blocks)])
        self.norm = FrameNorm(hidden)
        self.out = nn.Conv1d(hidden, latent, 1)
        self.skip = None
        if skip:
            self.skip = nn.Conv1d(n_mels, latent, 1, bias=False)
            nn.init.zeros_(self.skip.weight)
        # levels > 0: one row per region of region_levels, the region's level,
        # a fixed linear function of the frame (not learnt, not saved)
        self.register_buffer("level_rows",
                             region_levels(n_mels, levels)[region_edges(n_mels, levels)[:-1]] if levels else None,
                             persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = self.out(self.norm(self.blocks(self.inp(x))))
        z = z if self.skip is None else z + self.skip(x)
        if self.level_rows is None:
            return z
        return torch.cat([z, torch.einsum("km,bmt->bkt", self.level_rows.to(x.dtype), x)], dim=1)


# ---------------------------------------------------------------------------
# latent DFT (eq. 3) and its inverse
WINDOW = 512
LOCK_REGIONS = 4        # groups of mel bands whose levels the level lock sets (decode_chunk)
N_DFT = 2 * WINDOW
N_BINS = N_DFT // 2 + 1


def bin_freqs(n_dft: int = N_DFT) -> np.ndarray:
    """Normalised frequency ``v_k = 2k / n_dft`` of each rfft bin (Nyquist = 1).
    ``(n_dft/2 + 1,)`` float64."""
    return np.arange(n_dft // 2 + 1) * 2.0 / n_dft


def latent_dft(z: torch.Tensor, n_dft: int = N_DFT) -> torch.Tensor:
    """Eq. 3 per channel: ``Z[c, k] = Σ_t z[c, t] e^{-2πi k t / N}``, with z
    zero-padded at its end to ``N = n_dft`` frames.
    z: ``(B, C, T ≤ N)`` real → ``(B, C, N/2 + 1)`` complex."""
    return torch.fft.rfft(z, n=n_dft, dim=-1)


def inverse_latent_dft(Z: torch.Tensor, length: int, n_dft: int = N_DFT) -> torch.Tensor:
    """Inverse of :func:`latent_dft`: irfft to ``N`` frames, keep the first
    ``length``. ``(B, C, N/2 + 1)`` → ``(B, C, length)`` real."""
    return torch.fft.irfft(Z, n=n_dft, dim=-1)[..., :length]


def apply_latent_mask(z: torch.Tensor, mask: torch.Tensor, n_dft: int = N_DFT) -> torch.Tensor:
    """Mask a latent in the latent-frequency domain: ``IDFT(M ⊙ DFT(z))``.

    z: ``(B, C, T)``; mask: ``(B, N/2 + 1)`` or ``(N/2 + 1,)`` real gains,
    shared by all channels → ``(B, C, T)``."""
    Z = latent_dft(z, n_dft)
    m = mask if mask.dim() == 1 else mask[:, None, :]
    return inverse_latent_dft(Z * m.to(Z.real.dtype), z.shape[-1], n_dft)


# ---------------------------------------------------------------------------
# the training mask, eq. 4, one step per function
MASK_SIGMA = 0.5
MASK_P = 2.0


def log_frequency_axis(n_dft: int = N_DFT) -> np.ndarray:
    """Step 1: bin frequencies on a logarithmic axis, ``u_k = ln(v_k + 1e-6)``."""
    return np.log(bin_freqs(n_dft) + 1e-6)


def rbf_kernel(u: np.ndarray, sigma: float = MASK_SIGMA, p: float = MASK_P) -> np.ndarray:
    """Step 2: ``K_ij = exp(-½ (|u_i - u_j| / σ)^p)``, then every column scaled
    to unit L2 norm (eq. 4). ``(K,)`` → ``(K, K)`` float64."""
    K = np.exp(-0.5 * (np.abs(u[:, None] - u[None, :]) / sigma) ** p)
    return K / np.linalg.norm(K, axis=0, keepdims=True)


def correlated_scores(g: torch.Tensor, K: torch.Tensor) -> torch.Tensor:
    """Step 3: ``s = g K`` with ``g ~ N(0, I)``: scores of nearby bins (on the
    log axis) are correlated; each ``s_k`` has unit variance since the columns
    of K have unit norm. g: ``(B, K)`` → ``(B, K)``."""
    return g @ K


def threshold_mask(s: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """Step 4: keep the bins whose score exceeds the example's threshold,
    ``M_k = 1[s_k > t]``. s: ``(B, K)``; t: ``(B,)`` → ``(B, K)`` float 0/1."""
    return (s > t[:, None]).float()


class TrainingMask:
    """Eq. 4 sampler: ``M = 1[g K > t]``, ``g ~ N(0, I)``, ``t ~ N(0, 1)``.

    The random threshold makes the number of kept bins roughly uniform instead
    of binomial. ``sample(B)`` → ``(B, N/2 + 1)`` float 0/1."""

    def __init__(self, n_dft: int = N_DFT, sigma: float = MASK_SIGMA, p: float = MASK_P):
        self.K = torch.from_numpy(rbf_kernel(log_frequency_axis(n_dft), sigma, p)).float()

    def sample(self, batch: int, generator: torch.Generator | None = None,
               threshold: torch.Tensor | None = None) -> torch.Tensor:
        n = self.K.shape[0]
        g = torch.randn(batch, n, generator=generator)                      # g ~ N(0, I)
        s = correlated_scores(g, self.K)                                    # s = g K
        t = torch.randn(batch, generator=generator) if threshold is None else threshold  # t ~ N(0, 1)
        return threshold_mask(s, t)                                         # M = 1[s > t]


# ---------------------------------------------------------------------------
# bands and continuous gains
#: 8 log-spaced band edges as v (latent Nyquist = 1, 43.07 Hz at 86.13 frames/s)
BAND_EDGES_8 = (0.0, 0.0078, 0.0157, 0.0313, 0.0626, 0.1251, 0.2501, 0.5001, 1.0)
BAND_EDGES = {
    8: BAND_EDGES_8,
    4: BAND_EDGES_8[::2],                      # adjacent pairs merged
    2: (0.0, BAND_EDGES_8[4], 1.0),            # split at 0.0626 (2.7 Hz)
}


def band_edges(n_bands: int) -> tuple[float, ...]:
    """Edges (as v) of the 2-, 4- or 8-band partition of [0, 1]."""
    if n_bands not in BAND_EDGES:
        raise ValueError(f"band count must be 2, 4 or 8, got {n_bands}")
    return BAND_EDGES[n_bands]


def band_edges_hz(n_bands: int, frame_rate: float = 22050 / 256) -> list[tuple[float, float]]:
    """The partition in Hz of latent frequency: ``[(lo, hi), ...]``."""
    e = band_edges(n_bands)
    ny = frame_rate / 2
    return [(e[i] * ny, e[i + 1] * ny) for i in range(n_bands)]


def band_index(n_bands: int, n_dft: int = N_DFT) -> np.ndarray:
    """Band of every rfft bin: ``(N/2 + 1,)`` int in ``0..n_bands-1``; band b
    holds ``edge_b ≤ v < edge_{b+1}`` (the last band includes v = 1)."""
    e = np.asarray(band_edges(n_bands))
    idx = np.searchsorted(e, bin_freqs(n_dft), side="right") - 1
    return np.clip(idx, 0, n_bands - 1)


def band_mask(n_bands: int, keep, n_dft: int = N_DFT) -> np.ndarray:
    """Binary mask keeping the listed bands (the paper's inference masks).
    keep: iterable of band indices → ``(N/2 + 1,)`` float32."""
    idx = band_index(n_bands, n_dft)
    return np.isin(idx, list(keep)).astype(np.float32)


def band_training_mask(batch: int, n_dft: int = N_DFT,
                       generator: torch.Generator | None = None) -> torch.Tensor:
    """Beyond the paper: masks of the kind a performer sets, for training.

    Per example a partition of 2, 4 or 8 bands (equally likely) and a random
    non-empty subset of its bands (each band kept when its uniform draw
    exceeds the example's uniform threshold, so subsets of every size occur,
    single bands included). Eq. 4 rarely draws such sharp-edged selections
    of one narrow band. → ``(batch, N/2 + 1)`` float 0/1."""
    out = torch.empty(batch, n_dft // 2 + 1)
    counts = (2, 4, 8)
    for i in range(batch):
        n = counts[int(torch.randint(0, 3, (1,), generator=generator))]
        u = torch.rand(n, generator=generator)
        keep = u > torch.rand(1, generator=generator)
        if not keep.any():
            keep[int(torch.argmax(u))] = True
        out[i] = torch.from_numpy(band_mask(n, torch.nonzero(keep)[:, 0].tolist(), n_dft))
    return out


def gains_to_mask(gains, n_bands: int | None = None, n_dft: int = N_DFT) -> np.ndarray:
    """Continuous band gains → per-bin mask (0 = remove, 1 = keep, > 1 = boost).

    gains: ``(n_bands,)`` or ``(B, n_bands)``; ``n_bands`` defaults to the
    length of the last axis. Binary gains give :func:`band_mask`.
    Returns ``(N/2 + 1,)`` or ``(B, N/2 + 1)`` float32."""
    g = np.asarray(gains, dtype=np.float32)
    n = g.shape[-1] if n_bands is None else n_bands
    return g[..., band_index(n, n_dft)]


# ---------------------------------------------------------------------------
# the one-sided streaming operator
def one_sided_chunk(window: torch.Tensor, mask: torch.Tensor, lookahead: int, hop: int,
                    context: int = 0) -> torch.Tensor:
    """The live operator on one window of the last ``W`` latent frames.

    The window ``(B, C, W)`` is masked as a whole (zero-padded to 2W, eq. 3)
    and frames ``[W - D - H - P, W - D)`` are returned (``D = lookahead``,
    ``H = hop`` new frames, ``P = context`` frames before them that the
    decoder sees as already decoded). Training calls this with the same D as
    the stage. → ``(B, C, P + H)``."""
    W = window.shape[-1]
    zm = apply_latent_mask(window, mask, 2 * W)
    return zm[..., W - lookahead - hop - context:W - lookahead]


def one_sided_operator(z: torch.Tensor, mask: torch.Tensor, lookahead: int, hop: int,
                       pad: torch.Tensor, window: int = WINDOW) -> torch.Tensor:
    """Offline reference of the streaming operator over a whole sequence.

    z: ``(C, T)`` latent of a stream; ``pad``: ``(C,)`` latent that fills the
    window before the stream starts (the encoder's output for silence);
    mask ``(N/2+1,)``, or ``(B, N/2+1)`` for B masks at once. For every
    chunk ``j`` (the window ends at frame ``(j+1)·H``) the window is masked
    and frames ``[W-D-H, W-D)`` kept. Returns ``(C, n_chunks·H)`` (``(B, C,
    n_chunks·H)`` for batched masks) whose frame ``i`` is the masked latent
    of stream frame ``i - D`` (frames before 0 are the pad)."""
    C, T = z.shape
    full = torch.cat([pad[:, None].expand(C, window), z], dim=1)
    outs = [one_sided_chunk(full[None, :, end - window:end], mask, lookahead, hop)
            for end in range(window + hop, window + T + 1, hop)]
    out = torch.cat(outs, dim=-1) if outs else z.new_zeros(mask.shape[0] if mask.dim() > 1 else 1, C, 0)
    return out[0] if mask.dim() == 1 else out


# ---------------------------------------------------------------------------
# the whole model: encoder + chunked EDM decoder
DEFAULT_ARCH = {
    "n_mels": 80, "hidden": 128, "enc_blocks": 3, "latent": 32,
    "channels": [48, 64, 96], "dec_blocks": 1, "emb": 96, "in_skip": True, "mean_hidden": 0,
    "enc_skip": False, "level_channels": 0,
    "hop": 24, "context": 16, "lookahead": 32, "window": WINDOW,
}


class LatentFTModel(nn.Module):
    """Encoder (eq. 2) + chunked diffusion decoder with EDM preconditioning.

    ``arch`` (see :data:`DEFAULT_ARCH`) also fixes the streaming geometry the
    decoder was trained with: chunk ``hop`` H, ``context`` P frames, look-ahead
    ``lookahead`` D, ``window`` W."""

    def __init__(self, arch: dict | None = None):
        super().__init__()
        from .edm import EDMPrecond, MeanPrecond
        from .unet1d import ChunkDecoder, LatentMean

        self.arch = dict(DEFAULT_ARCH, **(arch or {}))
        if arch is not None and "in_skip" not in arch:
            self.arch["in_skip"] = False      # weights saved before the option existed
        if arch is not None and "mean_hidden" not in arch:
            self.arch["mean_hidden"] = 0
        a = self.arch
        self.encoder = MLPEncoder(a["n_mels"], a["hidden"], a["enc_blocks"], a["latent"], a["enc_skip"],
                                  a["level_channels"])
        c_lat = a["latent"] + a["level_channels"]       # the masked latent the decoder reads
        net = ChunkDecoder(a["n_mels"], c_lat, tuple(a["channels"]), a["dec_blocks"], a["emb"],
                           a["in_skip"])
        # mean_hidden > 0: the diffusion models the residual around a per-frame
        # mel estimate from the masked latent (edm.MeanPrecond)
        self.denoiser = (MeanPrecond(net, LatentMean(c_lat, a["n_mels"], a["mean_hidden"]))
                         if a["mean_hidden"] else EDMPrecond(net))

    @property
    def hop(self) -> int:
        return self.arch["hop"]

    @property
    def context(self) -> int:
        return self.arch["context"]

    @property
    def lookahead(self) -> int:
        return self.arch["lookahead"]

    @property
    def window(self) -> int:
        return self.arch["window"]

    def encode(self, mel_scaled: torch.Tensor) -> torch.Tensor:
        """``(B, n_mels, T)`` scaled mel → ``(B, latent, T)``."""
        return self.encoder(mel_scaled)

    def silence_latent(self) -> torch.Tensor:
        """Latent of a silent frame (log floor), ``(latent,)``: fills the ring
        buffer before a stream starts, in training and live alike."""
        x = torch.full((1, self.arch["n_mels"], 1), float(scale_mel(LOG_MEL_MIN)))
        return self.encoder(x)[0, :, 0]

    @torch.no_grad()
    def decode_chunk(self, conds, weights, context: torch.Tensor, noise: torch.Tensor,
                     steps: int, scale: float = 1.0, sigma_min: float | None = None,
                     lock: float = 0.0, lock_regions: int = LOCK_REGIONS,
                     lock_latent: float = 0.0) -> torch.Tensor:
        """Sample ``H`` mel frames (scaled) with the Heun sampler.

        conds: list of masked latents ``(B, C, P+H)``; weights: one per cond
        (blend / isolation; one cond = plain guidance); context ``(B, n_mels, P)``;
        noise ``(B, n_mels, H)``; ``sigma_min``: the schedule's last noise level
        (default the paper's 0.002; the last Heun step returns the denoiser's
        estimate there); ``lock`` (0..1, models with a mean path): how far each
        frame's level, in each of ``lock_regions`` groups of mel bands, is
        moved to the mean path's, combined over the conditions as the
        derivatives are (:func:`lock_level`; beyond the paper);
        ``lock_latent`` (0..1, models whose latent carries ``lock_regions``
        level channels): the share of that target taken instead from the
        conditions' level channels (:func:`latent_levels`: the groups' levels,
        band-filtered by the mask exactly and linearly).
        → ``(B, n_mels, H)``."""
        from .edm import SIGMA_MIN, combined_derivative, heun_sample

        null = torch.zeros_like(conds[0])
        den = self.denoiser

        def derivative(x, sigma):
            n = len(conds) + (1 if abs(scale - 1.0) > 1e-6 else 0)
            ctx = context.repeat(n, 1, 1)
            return combined_derivative(lambda xb, sb, cb: den(xb, sb, cb, ctx),
                                       x, sigma, conds, weights, scale, null)

        y = heun_sample(derivative, noise, steps, sigma_min=SIGMA_MIN if sigma_min is None else sigma_min)
        if lock > 0 and hasattr(den, "mean"):
            P = context.shape[-1]
            total = max(sum(float(w) for w in weights), 1e-8)
            shares = [float(w) / total for w in weights]                # normalised, as the derivatives
            mu = sum(a * den.mean(c)[..., P:] for c, a in zip(conds, shares))
            if abs(scale - 1.0) > 1e-6:
                mu = scale * mu + (1.0 - scale) * den.mean(null)[..., P:]
            if lock_latent > 0:
                if self.arch["level_channels"] != lock_regions:
                    raise ValueError(f"lock_latent needs a latent with {lock_regions} level channels; "
                                     f"this model's has {self.arch['level_channels']}")
                # lock_level reads mu through region_levels, which leaves a
                # frame of group levels as it is: so this mixes the two targets
                mu = ((1.0 - lock_latent) * mu
                      + lock_latent * latent_levels(conds, shares, P, lock_regions, y.shape[1]))
            y = lock_level(y, mu, lock, lock_regions)
        return y


@functools.lru_cache(maxsize=None)
def level_weights(n_mels: int) -> torch.Tensor:
    """Weights ``(n_mels,)`` summing to 1 that turn a (scaled) log-mel frame
    into its level: each mel band counts by its width in STFT bins (the 22k
    config), as a loudness averaged in dB over STFT bins counts it. Uniform
    for another band count. (Cached: callers must not modify it.)"""
    from ..config import get_config
    from ..dsp.mel import mel_filterbank

    cfg = get_config("22k")
    width = ((mel_filterbank(cfg) > 0).sum(axis=1).astype(np.float64) if cfg.n_mels == n_mels
             else np.ones(n_mels))
    return torch.from_numpy(width / width.sum()).float()


def region_edges(n_mels: int, regions: int) -> np.ndarray:
    """Band edges ``(regions + 1,)`` of ``regions`` contiguous groups of about
    equally many mel bands (the level lock's and the level channels')."""
    return np.linspace(0, n_mels, regions + 1).round().astype(int)


@functools.lru_cache(maxsize=None)
def region_levels(n_mels: int, regions: int) -> torch.Tensor:
    """``(n_mels, n_mels)`` matrix ``R`` such that ``(R @ frame)[m]`` is the
    level (:func:`level_weights`) of the region of ``regions`` contiguous,
    equally many mel bands that holds band ``m``. (Cached: callers must not
    modify it.)"""
    w = level_weights(n_mels).double()
    R = torch.zeros(n_mels, n_mels, dtype=torch.float64)
    edges = region_edges(n_mels, regions)
    for lo, hi in zip(edges[:-1], edges[1:]):
        R[lo:hi, lo:hi] = (w[lo:hi] / w[lo:hi].sum())[None, :]
    return R.float()


def latent_levels(conds, shares, context: int, regions: int, n_mels: int) -> torch.Tensor:
    """Each band's target level read from the masked latents' level channels
    (the encoder's last ``regions`` channels, one per group of
    :func:`region_levels`), the conditions weighted by ``shares`` (the
    derivatives' weights, normalised; guidance does not extrapolate a
    level). conds: masked latents ``(B, C, P+H)`` → ``(B, n_mels, H)``,
    each band holding its group's level."""
    lev = sum(a * c[:, -regions:, context:] for c, a in zip(conds, shares))
    edges = region_edges(n_mels, regions)
    group = torch.from_numpy(np.repeat(np.arange(regions), np.diff(edges)))
    return lev[:, group, :]


def lock_level(y: torch.Tensor, mu: torch.Tensor, amount: float, regions: int = 1) -> torch.Tensor:
    """Move the level of each frame of a sampled mel ``y`` ``(B, n_mels, T)``
    (scaled), region by region (``regions`` contiguous groups of mel bands),
    by ``amount`` (0..1) of its distance to the level of ``mu``, the decoder's
    per-frame mean estimate: within a region the sample keeps its shape (the
    diffusion's detail) while the region's level follows the condition."""
    R = region_levels(y.shape[1], regions).to(y.dtype)
    return y + float(amount) * torch.einsum("nm,bmt->bnt", R, mu - y)


def save_weights(model: LatentFTModel, path, extra: dict | None = None) -> None:
    """State dict + arch (plain types only) for ``torch.load(weights_only=True)``."""
    torch.save({"arch": model.arch, "state_dict": model.state_dict(), **(extra or {})}, path)


def load_model(path) -> LatentFTModel:
    """Load ``weights.pt`` written by :func:`save_weights` (no unpickling of objects)."""
    blob = torch.load(path, map_location="cpu", weights_only=True)
    model = LatentFTModel(blob["arch"])
    model.load_state_dict(blob["state_dict"])
    model.eval()
    return model


def chunk_seed(seed: int, variation: int, chunk: int) -> int:
    """The noise seed of chunk ``chunk`` (shared by the stage and
    :func:`stream_generate`, so offline and live draw the same noise)."""
    return (int(seed) * 1_000_003 + int(variation) * 7919 + int(chunk)) % (2 ** 63)


@torch.no_grad()
def resample_mask(mask: torch.Tensor, n_dft: int) -> torch.Tensor:
    """A mask ``(..., W+1)`` on the ``2W``-point grid → the same band
    selection on an ``n_dft``-point grid ``(..., n_dft/2+1)`` (nearest bin in
    frequency; band masks are steps in frequency, so this is exact up to
    half a bin at the edges)."""
    two_w = 2 * (mask.shape[-1] - 1)
    k = np.round(np.arange(n_dft // 2 + 1) * two_w / n_dft).astype(np.int64)
    return mask[..., torch.from_numpy(np.minimum(k, mask.shape[-1] - 1))]


@torch.no_grad()
def chunk_conditions(model: LatentFTModel, mel: np.ndarray, masks: torch.Tensor, n_chunks: int,
                     operator: str = "stream") -> list[torch.Tensor]:
    """The masked latent each decoder chunk of a stream is conditioned on.

    The stream is ``mel`` ``(n_mels, T)`` followed by silence, encoded ``H``
    frames at a time as the stage does (bit-identical latents), after a
    window of the latent of silence (the ring buffer's start). Chunk ``j``
    gets stream frames ``[(j+1)H − D − H − P, (j+1)H − D)`` of the latent
    masked by ``masks`` ``(B, W+1)``: within the window ending at frame
    ``(j+1)H`` (``operator="stream"``, the live one-sided operator), within
    the whole stream at once (``"offline"``), or, as the paper's experiments
    mask a clip, within ``mel``'s own frames alone, zero-padded (``"clip"``;
    the silence around it passes only through the mask's DC gain).
    → ``n_chunks × (B, C, P + H)``."""
    W, H, D, P = model.window, model.hop, model.lookahead, model.context
    total = n_chunks * H
    m = np.full((model.arch["n_mels"], total), LOG_MEL_MIN, np.float32)
    k = min(total, mel.shape[1])
    m[:, :k] = mel[:, :k]
    y = scale_mel(m).astype(np.float32)
    z = torch.cat([model.encode(torch.from_numpy(y[:, j * H:(j + 1) * H])[None])[0]
                   for j in range(n_chunks)], dim=1)
    full = torch.cat([model.silence_latent()[:, None].expand(-1, W), z], dim=1)
    if operator == "stream":
        return [one_sided_chunk(full[None, :, (j + 1) * H:W + (j + 1) * H].contiguous(), masks, D, H, P)
                for j in range(n_chunks)]
    if operator == "offline":
        n = int(2 ** np.ceil(np.log2(2 * full.shape[1])))
        masked = apply_latent_mask(full[None], resample_mask(masks, n), n)
    else:   # "clip"
        n = int(2 ** np.ceil(np.log2(2 * k)))
        silence = masks[:, :1, None].to(full.dtype) * full[None, :, :1]      # through the DC gain alone
        masked = torch.cat([silence.expand(-1, -1, W),
                            apply_latent_mask(z[None, :, :k], resample_mask(masks, n), n),
                            silence.expand(-1, -1, total - k)], dim=-1)
    return [masked[..., W + (j + 1) * H - D - H - P:W + (j + 1) * H - D] for j in range(n_chunks)]


def stream_generate(model: LatentFTModel, sources, n_frames: int, steps: int = 8,
                    scale: float = 1.0, seed: int = 0, variation: int = 0,
                    sigma_min: float | None = None, operator: str = "stream",
                    lock: float = 0.0, lock_regions: int = LOCK_REGIONS,
                    lock_latent: float = 0.0, on_chunk=None) -> torch.Tensor:
    """Offline run of the live stage, batched over mask variants.

    sources: list of ``(log_mel (n_mels, T_s) array, masks (B, W+1) tensor,
    weight)``; each source's stream is its mel followed by silence. Every
    chunk ``j`` sees the window ending at stream frame ``(j+1)H`` (ring
    buffer initialised with the latent of silence), exactly as the stage.
    Returns the generated engine log-mel ``(B, n_mels, n_frames)`` aligned with
    the input (the stage's ``D + H`` latency removed).

    ``operator="offline"`` conditions every chunk on the same frames of the
    whole stream masked at once (two-sided, eq. 3 over the whole sequence,
    as the paper's experiments), instead of the live one-sided window: the
    exact band selection, for offline rendering and evaluation;
    ``operator="clip"`` masks ``mel``'s own frames alone, as the paper masks
    a clip (:func:`chunk_conditions`). ``lock``,
    ``lock_regions``, ``lock_latent``: see :meth:`LatentFTModel.decode_chunk`;
    ``on_chunk(done, total)``, if given, is called after each chunk."""
    if operator not in ("stream", "offline", "clip"):
        raise ValueError(f"operator must be 'stream', 'offline' or 'clip', got {operator!r}")
    H, D, P = model.hop, model.lookahead, model.context
    n_mels = model.arch["n_mels"]
    n_chunks = -(-(n_frames + D) // H)
    floor_s = float(scale_mel(LOG_MEL_MIN))
    B = sources[0][1].shape[0]
    conds = [[c.expand(B, -1, -1).contiguous() if c.shape[0] != B else c
              for c in chunk_conditions(model, mel, masks, n_chunks, operator)] for mel, masks, _ in sources]
    weights = [w for _, _, w in sources]
    context = torch.full((B, n_mels, P), floor_s)
    outs = []
    for j in range(n_chunks):
        g = torch.Generator().manual_seed(chunk_seed(seed, variation, j))
        noise = torch.randn(1, n_mels, H, generator=g).expand(B, -1, -1).contiguous()
        y = model.decode_chunk([c[j] for c in conds], weights, context, noise, steps, scale, sigma_min, lock,
                                lock_regions, lock_latent)
        y = y.clamp(-1.5, 1.2)
        context = y[..., -P:]
        outs.append(y)
        if on_chunk is not None:
            on_chunk(j + 1, n_chunks)
    Y = torch.cat(outs, dim=-1)[..., D:D + n_frames]
    return torch.clamp(unscale_mel(Y), min=LOG_MEL_MIN)
