"""Identity phase locking (Laroche & Dolson, 1999) for held spectra.

A frame held for seconds (IF-AR's ``freeze``) turns each bin by its own phase
advance. The bins of one partial's main lobe carry slightly different
advances (vibrato, noise, a generated IF), so they drift apart in phase and
the partial slowly cancels itself: a held drone lost 1.2 dB over 5 s. Locked,
every bin takes the advance of the spectral peak whose region it lies in
(regions split at the lowest bin between neighbouring peaks), and each
partial's lobe turns as one.
"""

from __future__ import annotations

import numpy as np


def peak_regions(mag: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Local maxima of ``mag`` ``(F,)`` and, per bin, the index (into them)
    of the peak whose region holds it; no peak: every bin is its own."""
    m = np.asarray(mag)
    peaks = np.flatnonzero((m[1:-1] > m[:-2]) & (m[1:-1] >= m[2:])) + 1
    if len(peaks) == 0:
        return np.arange(len(m)), np.arange(len(m))
    bounds = np.array([a + np.argmin(m[a:b]) for a, b in zip(peaks[:-1], peaks[1:])], dtype=int)
    return peaks, np.searchsorted(bounds, np.arange(len(m)), side="right")


def lock_to_peaks(mag: np.ndarray, advance: np.ndarray) -> np.ndarray:
    """Per-bin phase advance ``(F,)`` where each bin takes its peak's."""
    peaks, region = peak_regions(mag)
    return np.asarray(advance)[peaks[region]]
