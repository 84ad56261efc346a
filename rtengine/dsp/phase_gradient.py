"""Phase gradient by reassignment (Auger–Flandrin) and the PG paper's λ.

Units and signs, in the centre-referenced STFT of :mod:`rtengine.dsp.stft`:

* ``dm`` (Δm): frequency offset of a bin's energy from the bin, in bins;
* ``dn`` (Δn): time offset from the frame centre, in frames;
* ``omega = 2*pi*hop*(m + dm)/n_fft``: phase advance per hop (rad), the
  instantaneous frequency (PG paper eq. 6 solved for the gradient);
* ``tau = -2*pi*hop*dn/n_fft``: phase step per bin (rad), the local group delay.

A sinusoid at bin ``m0`` (fractional) has ``dm = m0 - m`` near its peak; a click
``d`` samples after the centre of frame ``n`` has ``dn = d/hop`` and
``tau = -2*pi*d/n_fft`` in every bin.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from ..config import AudioConfig
from .stft import hann, stft

LAMBDA_IMPULSIVE = 0.4   # λI of the PG paper
LAMBDA_SINUSOIDAL = 0.5  # λS of the PG paper
MAX_DM = 4.0             # PG paper: |Δm| <= 4 bins


def max_dn(cfg: AudioConfig) -> float:
    """PG paper's bound on the time offset: ``|Δn| <= N / 2R`` frames."""
    return cfg.n_fft / (2 * cfg.hop)


def reassignment_windows(n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Hann ``h``, time-weighted ``t*h`` (t in samples from the centre) and ``h'``
    (derivative per sample), each shape ``(n,)``."""
    t = np.arange(n) - n / 2
    h = hann(n)
    dh = (np.pi / n) * np.sin(2 * np.pi * np.arange(n) / n)
    return h, t * h, dh


def reassignment_offsets(x: np.ndarray, cfg: AudioConfig, eps: float = 1e-12):
    """Bin offsets of a signal by reassignment, clipped as in the PG paper.

    x: ``(L,)``. Returns ``(mag, dm, dn)``, each ``(F, T)`` float64: the Hann
    magnitude, Δm in bins (``|Δm| <= 4``) and Δn in frames (``|Δn| <= N/2R``).
    """
    h, th, dh = reassignment_windows(cfg.n_fft)
    xh = stft(x, cfg, h)
    xth = stft(x, cfg, th)
    xdh = stft(x, cfg, dh)
    power = np.abs(xh) ** 2 + eps
    conj = np.conj(xh)
    dm = -np.imag(xdh * conj) / power * cfg.n_fft / (2 * np.pi)  # ω̂ = ω_m − Im(X_dh/X_h)
    dn = np.real(xth * conj) / power / cfg.hop                  # t̂ = t_n + Re(X_th/X_h)
    return (np.abs(xh), np.clip(dm, -MAX_DM, MAX_DM), np.clip(dn, -max_dn(cfg), max_dn(cfg)))


def offsets_to_gradients(dm: np.ndarray, dn: np.ndarray, cfg: AudioConfig):
    """(Δm, Δn) of shape ``(F, T)`` → (omega, tau) (PG paper eq. 6)."""
    m = np.arange(dm.shape[0])[:, None]
    omega = 2 * np.pi * cfg.hop * (m + dm) / cfg.n_fft
    tau = -2 * np.pi * cfg.hop * dn / cfg.n_fft
    return omega, tau


def gradients_to_offsets(omega: np.ndarray, tau: np.ndarray, cfg: AudioConfig):
    """(omega, tau) of shape ``(F, T)`` → (Δm, Δn) (PG paper eq. 6)."""
    m = np.arange(omega.shape[0])[:, None]
    dm = omega * cfg.n_fft / (2 * np.pi * cfg.hop) - m
    dn = -tau * cfg.n_fft / (2 * np.pi * cfg.hop)
    return dm, dn


def phase_gradients(x: np.ndarray, cfg: AudioConfig):
    """Magnitude and exact phase gradients of a signal by reassignment.

    Returns ``(mag, omega, tau)``, each ``(F, T)``."""
    mag, dm, dn = reassignment_offsets(x, cfg)
    omega, tau = offsets_to_gradients(dm, dn, cfg)
    return mag, omega, tau


# λ > λS  <=>  q < -ln λS;   λ < λI  <=>  q > -ln λI   (q = -ln λ)
Q_SINUSOIDAL = float(-np.log(LAMBDA_SINUSOIDAL))
Q_IMPULSIVE = float(-np.log(LAMBDA_IMPULSIVE))


@njit(cache=True, nogil=True)
def lambda_exponent_frame(dm, dn_prev, dn_next, frame_step, out):
    """``q = -ln λ`` of one frame (PG paper eq. 12), written into ``out`` (F,).
    Classifying by ``q`` against :data:`Q_SINUSOIDAL` and :data:`Q_IMPULSIVE`
    saves an ``exp`` per bin.

    ``λ = exp(-((dṁ/dm) / (dṅ/dn))²)`` with ``ṁ = m + Δm``, ``ṅ = n + Δn``.
    dṁ/dm is a centred difference over the frame's bins; dṅ/dn is
    ``frame_step + Δn[n+1] - Δn[n-1]`` divided by ``frame_step``, where the
    caller passes the neighbouring frames: ``(prev, next, 2)`` for the centred
    difference (one frame of look-ahead) or ``(prev, current, 1)`` for the causal
    backward difference.
    """
    f = dm.shape[0]
    for m in range(f):
        lo = m - 1 if m > 0 else m
        hi = m + 1 if m < f - 1 else m
        dmdot = (hi - lo + dm[hi] - dm[lo]) / (hi - lo)
        dndot = (frame_step + dn_next[m] - dn_prev[m]) / frame_step
        out[m] = (dmdot * dmdot) / (dndot * dndot + 1e-12)


@njit(cache=True, nogil=True)
def lambda_frame(dm, dn_prev, dn_next, frame_step, out):
    """λ of one frame (PG paper eq. 12), written into ``out`` (F,); see
    :func:`lambda_exponent_frame` for the arguments."""
    lambda_exponent_frame(dm, dn_prev, dn_next, frame_step, out)
    for m in range(out.shape[0]):
        out[m] = np.exp(-out[m])


def lambda_map(dm: np.ndarray, dn: np.ndarray, centred: bool = True) -> np.ndarray:
    """λ for whole offset maps ``(F, T)`` (PG paper eq. 12). With ``centred`` the
    time difference is centred (as in the paper); otherwise backward (causal).
    Edge frames use one-sided differences."""
    f, t = dm.shape
    lam = np.empty((f, t))
    dm = np.ascontiguousarray(dm, dtype=np.float64)
    dn = np.ascontiguousarray(dn, dtype=np.float64)
    for n in range(t):
        if centred and 0 < n < t - 1:
            lambda_frame(dm[:, n], dn[:, n - 1], dn[:, n + 1], 2.0, lam[:, n])
        elif n > 0:
            lambda_frame(dm[:, n], dn[:, n - 1], dn[:, n], 1.0, lam[:, n])
        else:
            lambda_frame(dm[:, n], dn[:, n], dn[:, min(n + 1, t - 1)], 1.0, lam[:, n])
    return lam
