"""GELU in place, in numba: the streaming IF-AR step's activation.

``torch.nn.functional.gelu`` spends about 17 µs per call on this CPU before
it computes, whatever the size; the live IFF-AR frame calls it twelve times.
:func:`gelu_` costs 1.4 µs on 128 values and 16 µs on 24 × 513.

It is the exact GELU, ``x · Φ(x) = x/2 · (1 + erf(x/√2))``:

- float64 arrays use ``math.erf`` (the same values as torch, to rounding),
  which keeps the float64 stream equal to the offline roll-out;
- float32 arrays use a rational approximation of erf, evaluated in float64:
  ``erf(s) = s · P(s²) / Q(s²)`` on ``|s| < 3.92`` (past that erf rounds to
  ±1 in float32, and is taken as ±1), P and Q of degree 5 in ``s²``, fitted by iteratively
  reweighted least squares on 4000 Chebyshev nodes; its error is at most
  1.6e-8 in erf, under float32's resolution near 1 (6e-8). The result is
  within a float32 rounding of the exact GELU, nearer to it than torch's
  own float32 GELU (at most 2.8e-7 off on [−12, 12], torch 1.0e-6; tested).
  ``math.erf`` does not vectorise; this does (AVX2).
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit

_P = (1.1283790224152157, 0.19277106427109758, 0.05306128831597598,
      0.0038685940432611594, 0.0002874795858149782, 2.0346067388810062e-06)
_Q = (1.0, 0.5041705739427332, 0.11508740605704847,
      0.015172836182237286, 0.0011881688433305847, 3.806931758999864e-05)
_S_MAX = 3.92
_RSQRT2 = 1.0 / math.sqrt(2.0)


# error_model="numpy": with Python's, numba checks each division for zero,
# which keeps the loop from vectorising (78 against 14 µs on 24 × 513)
@njit(cache=True, nogil=True, fastmath=True, error_model="numpy")
def _gelu32(x):
    p0, p1, p2, p3, p4, p5 = _P
    q0, q1, q2, q3, q4, q5 = _Q
    for i in range(x.shape[0]):
        for j in range(x.shape[1]):
            v = np.float64(x[i, j])
            t = v * _RSQRT2
            s = min(max(t, -_S_MAX), _S_MAX)
            u = s * s
            num = ((((p5 * u + p4) * u + p3) * u + p2) * u + p1) * u + p0
            den = ((((q5 * u + q4) * u + q3) * u + q2) * u + q1) * u + q0
            e = s * num / den
            if t >= _S_MAX:         # exactly ±1 past the fit: GELU is then 0 or x
                e = 1.0
            elif t <= -_S_MAX:
                e = -1.0
            x[i, j] = 0.5 * v * (1.0 + e)


@njit(cache=True, nogil=True)
def _gelu64(x):
    for i in range(x.shape[0]):
        for j in range(x.shape[1]):
            v = x[i, j]
            x[i, j] = 0.5 * v * (1.0 + math.erf(v * _RSQRT2))


def gelu_(x: np.ndarray) -> np.ndarray:
    """GELU of a 1-d or 2-d float array, in place; returns it. Any strides,
    but only a C-contiguous one is vectorised (4× faster on 24 × 513)."""
    if x.ndim not in (1, 2):
        raise ValueError(f"gelu_ takes a 1-d or 2-d array, got shape {x.shape}")
    (_gelu64 if x.dtype == np.float64 else _gelu32)(x if x.ndim == 2 else x[None])
    return x
