"""Band-limited resampling by a rational factor (polyphase windowed sinc)."""

from __future__ import annotations

from math import gcd

import numpy as np


def resample(x: np.ndarray, sr_in: int, sr_out: int, half_width: int = 32,
             beta: float = 8.6) -> np.ndarray:
    """Resample ``x`` (shape ``(L,)``) from ``sr_in`` to ``sr_out`` Hz.

    Upsample by ``up``, low-pass with a Kaiser-windowed sinc cut at the lower
    Nyquist (``half_width`` zero crossings each side), keep every ``down``-th
    sample, computed directly per output phase. Returns ``ceil(L*up/down)``
    samples, float64.
    """
    if sr_in == sr_out:
        return np.asarray(x, dtype=np.float64)
    g = gcd(int(sr_in), int(sr_out))
    up, down = sr_out // g, sr_in // g
    x = np.asarray(x, dtype=np.float64)
    n_out = -(-len(x) * up // down)
    cutoff = 1.0 / max(up, down)                      # in units of the upsampled Nyquist
    taps = 2 * half_width * max(up, down) + 1
    k = np.arange(taps) - (taps - 1) / 2
    h = cutoff * np.sinc(cutoff * k) * np.kaiser(taps, beta) * up
    # output sample j sits at upsampled position j*down; it sums x[i]*h[j*down - i*up + c]
    centre = (taps - 1) // 2
    out = np.empty(n_out)
    n_i = -(-taps // up) + 1
    for start in range(0, n_out, 8192):               # bounded memory per chunk
        pos = np.arange(start, min(start + 8192, n_out)) * down + centre
        first = np.maximum(-(-(pos - (taps - 1)) // up), 0)   # first input with a tap
        idx = first[:, None] + np.arange(n_i)[None, :]
        tap = pos[:, None] - idx * up
        valid = (tap >= 0) & (tap < taps) & (idx < len(x))
        xi = np.where(valid, x[np.minimum(idx, len(x) - 1)], 0.0)
        hv = np.where(valid, h[np.clip(tap, 0, taps - 1)], 0.0)
        out[start:start + len(pos)] = np.einsum("ij,ij->i", xi, hv)
    return out


def transpose(x: np.ndarray, semitones: float, half_width: int = 8) -> np.ndarray:
    """``x`` played ``2^(semitones/12)`` times faster: every frequency moves by
    ``semitones`` and the length divides by the ratio (a tape-speed change).

    The ratio is the nearest fraction with a denominator ≤ 200 (under 2 cents
    off for any shift within ±2 octaves), so the polyphase filter stays small;
    ``half_width`` 8 keeps a 0.5 s shift to a few milliseconds."""
    from fractions import Fraction

    ratio = Fraction(2.0 ** (float(semitones) / 12.0)).limit_denominator(200)
    return resample(x, ratio.numerator, ratio.denominator, half_width=half_width)
