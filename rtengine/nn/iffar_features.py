"""IFF-AR features (IFF-AR paper §3): standardised log-magnitude and
instantaneous frequency normalised by median and MAD.

Conventions are the engine's (:mod:`rtengine.dsp.stft`): periodic Hann
window, frame ``n`` centred on sample ``n·R``, phase referenced to the window
centre. With that reference a steady sinusoid in bin ``m`` advances its phase by
the *nominal advance* ``ω_m = 2π m R / N`` per hop, plus ``2π R Δm / N`` for a
frequency ``Δm`` bins off the bin centre.

Two IF representations (``mode``):

* ``"raw"``: the wrapped phase difference of consecutive frames,
  ``IF_t(m) = wrap(φ_t(m) − φ_{t−1}(m))`` (the paper's ``Δφ_t / Δt`` with
  ``Δt`` = one hop);
* ``"hetero"`` (heterodyned, the default): the deviation from the bin's
  nominal advance, ``IF_t(m) = wrap(φ_t(m) − φ_{t−1}(m) − ω_m)``. It is
  ``2π R Δm / N`` for a partial ``Δm`` bins from bin ``m``, whatever ``m`` is:
  shift-invariant along frequency, and near 0 for every stable partial. The raw
  difference of the same partial is ``ω_m + 2π R Δm/N`` wrapped, which with
  ``R = N/4`` cycles through 0, π/2, π, −π/2 with ``m mod 4`` (bimodal at ±π
  for ``m ≡ 2``). ``docs/iffar.md`` has the measured comparison.

In both modes the phase is rebuilt by ``φ_t = φ_{t−1} + Δφ_t`` (§3), with
``Δφ_t = IF_t`` (raw) or ``IF_t + ω_m`` (hetero); a round trip reproduces the
wrapped phase differences exactly.

Shapes: ``B`` batch, ``F = n_fft/2 + 1`` bins, ``T`` frames; spectrograms are
``(B, F, T)``.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from ..config import AudioConfig

IF_MODES = ("hetero", "raw")
LOG_FLOOR = 1e-5          # log-magnitude floor, as the engine's log-mel
MAD_FLOOR = 1e-3          # a MAD below this (a constant bin) is raised to it


def wrap(x: torch.Tensor) -> torch.Tensor:
    """Wrap angles to ``[−π, π)``; a tensor or a NumPy array (``%`` takes the
    divisor's sign in both)."""
    return (x + math.pi) % (2 * math.pi) - math.pi


def hann_window(n_fft: int, dtype=torch.float32, device=None) -> torch.Tensor:
    """Periodic Hann window ``(n_fft,)``, as :func:`rtengine.dsp.stft.hann`."""
    return torch.hann_window(n_fft, periodic=True, dtype=dtype, device=device)


def centre_sign(n_bins: int, dtype=torch.float32, device=None) -> torch.Tensor:
    """``(−1)^m``, ``(F,)``: moves the phase reference between window start and centre."""
    return 1.0 - 2.0 * (torch.arange(n_bins, device=device) % 2).to(dtype)


def nominal_advance(cfg: AudioConfig, dtype=torch.float32, device=None) -> torch.Tensor:
    """``ω_m = 2π m R / N`` (rad per hop), ``(F,)``."""
    m = torch.arange(cfg.n_bins, dtype=torch.float64, device=device)
    return (2 * math.pi * m * cfg.hop / cfg.n_fft).to(dtype)


def stft(x: torch.Tensor, cfg: AudioConfig, center: bool = True) -> torch.Tensor:
    """Centre-referenced STFT, equal to :func:`rtengine.dsp.stft.stft`.

    x: ``(B, L)`` → ``(B, F, T)`` complex, ``T = 1 + L // R`` (``center=True``,
    zero padding) or ``1 + (L − N) // R`` (``center=False``: frame ``k`` is
    centred on sample ``k·R + N/2`` of ``x``)."""
    w = hann_window(cfg.n_fft, x.dtype, x.device)
    X = torch.stft(x, cfg.n_fft, cfg.hop, window=w, center=center, pad_mode="constant",
                   return_complex=True)
    return X * centre_sign(cfg.n_bins, x.dtype, x.device)[:, None]


def istft(X: torch.Tensor, cfg: AudioConfig, length: int | None = None) -> torch.Tensor:
    """Inverse of :func:`stft` (``center=True``), consistent with
    :func:`rtengine.dsp.stft.istft`: ``(B, F, T)`` complex → ``(B, L)``,
    default ``L = (T − 1)·R``."""
    sign = centre_sign(cfg.n_bins, X.real.dtype, X.device)[:, None]
    w = hann_window(cfg.n_fft, X.real.dtype, X.device)
    if length is None:
        length = (X.shape[-1] - 1) * cfg.hop
    return torch.istft(X * sign, cfg.n_fft, cfg.hop, window=w, center=True, length=length)


def log_magnitude(X: torch.Tensor) -> torch.Tensor:
    """``ln(max(|X|, 1e−5))``, same shape as ``X``."""
    return torch.log(torch.clamp(X.abs(), min=LOG_FLOOR))


def phase_differences(phi: torch.Tensor, prev: torch.Tensor | None = None) -> torch.Tensor:
    """Wrapped ``φ_t − φ_{t−1}`` along the last axis, ``(…, F, T)``; the frame
    before the first is ``prev`` ``(…, F)`` (default zero phase)."""
    if prev is None:
        prev = torch.zeros_like(phi[..., 0])
    p = torch.cat([prev.unsqueeze(-1), phi[..., :-1]], dim=-1)
    return wrap(phi - p)


def if_from_phase(phi: torch.Tensor, cfg: AudioConfig, mode: str = "hetero",
                  prev: torch.Tensor | None = None) -> torch.Tensor:
    """Instantaneous frequency (rad per hop, wrapped) of phases ``(…, F, T)``."""
    d = phase_differences(phi, prev)
    if mode == "hetero":
        w = nominal_advance(cfg, phi.dtype, phi.device)[:, None]
        return wrap(d - w)
    if mode != "raw":
        raise ValueError(f"IF mode must be one of {IF_MODES}, got {mode!r}")
    return d


def phase_advance(if_: torch.Tensor, cfg: AudioConfig, mode: str = "hetero") -> torch.Tensor:
    """``Δφ_t`` from an IF ``(…, F, T)``: the IF itself (raw) or IF + ``ω_m``
    (hetero). In hetero mode this is the unwrapped phase advance per hop, i.e.
    the ``omega`` of :class:`rtengine.dsp.integrator.PhaseIntegrator`."""
    if mode == "hetero":
        return if_ + nominal_advance(cfg, if_.dtype, if_.device)[:, None]
    return if_


def phase_from_if(if_: torch.Tensor, cfg: AudioConfig, mode: str = "hetero",
                  phi0: torch.Tensor | None = None) -> torch.Tensor:
    """Absolute phase by ``φ_t = φ_{t−1} + Δφ_t`` (§3), wrapped; ``phi0`` is
    the phase before the first frame ``(…, F)`` (default zero)."""
    d = phase_advance(if_, cfg, mode)
    phi = torch.cumsum(d.double(), dim=-1)
    if phi0 is not None:
        phi = phi + phi0.double().unsqueeze(-1)
    return wrap(phi).to(if_.dtype)


# ------------------------------------------------------------------ statistics
def compute_stats(clips, cfg: AudioConfig, mode: str = "hetero", dither: float = 1e-6,
                  seed: int = 0) -> dict:
    """Training-set statistics of the features.

    clips: iterable of 1-d float arrays. Returns ``{"mag_mean", "mag_std",
    "if_median", "if_mad", "mag_max"}``, each ``(F,)`` float32: log-magnitude
    mean, standard deviation and maximum per bin; the IF median and MAD (median absolute
    deviation) pooled over time and bins (the same value in every bin). The
    DC and Nyquist bins are left out of the IF statistics: a real spectrum's
    phase there is 0 or π, so their IF is discrete and carries no information;
    the model holds their IF at 0."""
    g = torch.Generator().manual_seed(seed)
    mags, ifs = [], []
    for x in clips:
        x = torch.as_tensor(np.asarray(x, dtype=np.float32))[None]
        x = x + dither * torch.randn(x.shape, generator=g)
        X = stft(x, cfg)[0]
        mags.append(log_magnitude(X))
        ifs.append(if_from_phase(torch.angle(X), cfg, mode)[:, 1:])
    m = torch.cat(mags, dim=-1)
    d = torch.cat(ifs, dim=-1)[1:-1].reshape(-1)     # DC and Nyquist: phase is 0 or π
    if d.numel() > 4_000_000:
        d = d[torch.randperm(d.numel(), generator=g)[:4_000_000]]
    med = d.median()
    mad = (d - med).abs().median().clamp_min(MAD_FLOOR)
    f = cfg.n_bins
    return {"mag_mean": m.mean(-1), "mag_std": m.std(-1).clamp_min(1e-2),
            "mag_max": m.max(-1).values,
            "if_median": med.expand(f).clone(), "if_mad": mad.expand(f).clone()}


def feature_entropy(clips, cfg: AudioConfig, mode: str, bins: int = 64, dither: float = 1e-6,
                    min_db: float = -60.0) -> dict:
    """Spread of an IF representation over the bins that carry energy (within
    ``min_db`` of each clip's peak): histogram entropy (bits, 64 bins over
    [−π, π)), the mean per-bin circular spread (1 − |mean e^{iIF}|) and the
    standard deviation of the normalised feature. Lower = easier to model."""
    vals, spreads = [], []
    for x in clips:
        x = torch.as_tensor(np.asarray(x, dtype=np.float32))[None]
        x = x + dither * torch.randn(x.shape, generator=torch.Generator().manual_seed(0))
        X = stft(x, cfg)[0]
        d = if_from_phase(torch.angle(X), cfg, mode)[:, 1:]
        lm = 20 * torch.log10(X.abs().clamp_min(1e-10))[:, 1:]
        keep = lm > lm.max() + min_db
        vals.append(d[keep])
        # circular spread of each bin over time, weighted by the loud frames
        z = torch.where(keep, torch.exp(1j * d.double()), torch.zeros((), dtype=torch.complex128))
        n = keep.sum(-1)
        ok = n > 4
        spreads.append((1 - (z.sum(-1)[ok].abs() / n[ok])).float())
    v = torch.cat(vals)
    h = torch.histc(v, bins=bins, min=-math.pi, max=math.pi)
    p = h / h.sum()
    ent = float(-(p[p > 0] * torch.log2(p[p > 0])).sum())
    med = v.median()
    mad = (v - med).abs().median()
    return {"entropy_bits": ent, "circular_spread": float(torch.cat(spreads).mean()),
            "mad_rad": float(mad), "n": int(v.numel())}
