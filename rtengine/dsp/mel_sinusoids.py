"""The frequencies of low partials, read from a log-mel by a sparse sinusoid fit.

Below 1 kHz the slaney mel bands are linear, 40.7 Hz (1.9 bins at 22 kHz)
apart, and a low note's partials fall only two bands apart. A network that
maps the whole mel frame to Δm regresses there towards the bin centre
(docs/pgvoc.md, "Where the low-note error comes from"), and so does PGHI's Δm
of the mel inverse, whose atoms are single bins. Yet the magnitude mel of a
stationary sinusoid at the fractional bin ``f`` is known exactly: ``B·|W(k − f)|``
with ``W`` the Hann window's spectrum. So each frame's low bands are fitted as
a non-negative sum of such atoms on a grid of ``resolution`` steps per bin
(Lawson–Hanson active-set NNLS, which returns a sparse solution). NNLS
splits an off-grid partial between neighbouring atoms, so active atoms closer
than ``MERGE_BINS`` become one partial at their amplitude-weighted mean
frequency. A partial wider than ``MAX_SPAN`` bins, or with a neighbour of at
least ``REL_LEVEL`` of its amplitude within ``MIN_GAP`` bins (their Hann main
lobes overlap, magnitudes no longer add and the model fails), is declined.
Each bin that resolved partials dominate then takes their power-weighted mean
offset ``f − k`` (within ±``MAX_DM`` bins, the reassignment targets' clip),
which is what reassignment gives for separated partials; the other bins keep
their fallback (the network's or PGHI's Δm).

Frame-local and deterministic, so it streams with no latency and any chunking
gives the same result.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numba import njit

from ..config import AudioConfig
from ..errors import UserError
from .mel import mel_filterbank
from .phase_gradient import MAX_DM
from .stft import hann


@dataclass(frozen=True)
class SinusoidDictionary:
    """Sinusoid atoms for the bins below ``max_bin``."""

    freqs: np.ndarray      # (J,) atom frequencies in (fractional) bins
    bands: np.ndarray      # (nb,) the mel bands fitted: centres below max_bin
    mel_atoms: np.ndarray  # (nb, J) unit-norm mel response of each atom
    norms: np.ndarray      # (J,) the norms divided out of mel_atoms
    gram: np.ndarray       # (J, J) mel_atoms^T mel_atoms
    bin_atoms: np.ndarray  # (max_bin + MAX_DM + 1, J) magnitude of each atom per bin, unit amplitude
    max_bin: int


def _atom_spectrum(f: float, n_fft: int) -> np.ndarray:
    """|STFT| of a unit cosine at fractional bin ``f`` (Hann, one frame)."""
    n = np.arange(n_fft)
    return np.abs(np.fft.rfft(hann(n_fft) * np.cos(2 * np.pi * f * n / n_fft)))


_DICTS: dict[tuple, SinusoidDictionary] = {}


def check_fit_bins(max_bin: int, cfg: AudioConfig) -> int:
    """``max_bin`` as an int, or a :class:`UserError` naming the valid range
    (the atoms reach 6 bins above it, below Nyquist)."""
    if not 0 <= int(max_bin) <= cfg.n_bins - 8:
        raise UserError(f"sinusoid_fit must be between 0 (off) and {cfg.n_bins - 8} bins, got {max_bin}")
    return int(max_bin)


def sinusoid_dictionary(cfg: AudioConfig, max_bin: int = 64, resolution: int = 2) -> SinusoidDictionary:
    """The (cached) dictionary for a configuration. Atoms run from half a bin
    to ``MAX_DM + 2`` bins above ``max_bin`` so partials just above the fitted
    bands explain their energy there instead of dragging the fit."""
    key = (cfg, max_bin, resolution)
    if key not in _DICTS:
        basis = mel_filterbank(cfg)
        centres = (basis * np.arange(cfg.n_bins)).sum(1) / np.maximum(basis.sum(1), 1e-12)
        bands = np.flatnonzero(centres < max_bin)
        freqs = np.arange(resolution // 2, (max_bin + int(MAX_DM) + 2) * resolution) / resolution
        spectra = np.stack([_atom_spectrum(f, cfg.n_fft) for f in freqs], axis=1)   # (F, J)
        mel = basis[bands] @ spectra
        norms = np.linalg.norm(mel, axis=0)
        mel = mel / norms
        _DICTS[key] = SinusoidDictionary(freqs, bands, np.ascontiguousarray(mel), norms, mel.T @ mel,
                                         np.ascontiguousarray(spectra[:max_bin + int(MAX_DM) + 1]), max_bin)
    return _DICTS[key]


@njit(cache=True, nogil=True)
def _cholesky_append(L, m, gram, P, j, ridge):
    """Extend the Cholesky factor ``L[:m, :m]`` of ``gram[P, P] + ridge·I``
    by atom ``j``. Returns False (``L`` unchanged) if ``j`` is numerically a
    combination of the active atoms."""
    for i in range(m):
        acc = gram[P[i], j]
        for k in range(i):
            acc -= L[i, k] * L[m, k]
        L[m, i] = acc / L[i, i]
    d = gram[j, j] + ridge
    for k in range(m):
        d -= L[m, k] * L[m, k]
    if d <= 1e-12 * (gram[j, j] + ridge):
        return False
    L[m, m] = np.sqrt(d)
    return True


@njit(cache=True, nogil=True)
def _cholesky_solve(L, m, b, P, out):
    """``out[:m]`` = the solution of ``(L Lᵀ) s = b[P[:m]]``."""
    for i in range(m):
        acc = b[P[i]]
        for k in range(i):
            acc -= L[i, k] * out[k]
        out[i] = acc / L[i, i]
    for i in range(m - 1, -1, -1):
        acc = out[i]
        for k in range(i + 1, m):
            acc -= L[k, i] * out[k]
        out[i] = acc / L[i, i]


@njit(cache=True, nogil=True)
def _nnls_gram(gram, aty, max_iter, tol_rel, x, L, P, s, w, blocked):
    """Lawson–Hanson NNLS ``min ||A x − y||², x ≥ 0`` from the Gram matrix
    ``A^T A`` and ``A^T y``, into ``x``. The active set's Cholesky factor
    grows by one row per added atom and is rebuilt only when atoms leave; a
    small ridge keeps it positive definite. ``L``, ``P``, ``s``, ``w`` and
    ``blocked`` are work arrays."""
    n = aty.shape[0]
    tol = tol_rel * max(np.max(np.abs(aty)), 1e-300)
    ridge = 1e-9
    x[:] = 0.0
    blocked[:] = False        # active, or found dependent on the active atoms
    m = 0
    for _ in range(max_iter):
        w[:] = aty                          # w = A^T y − A^T A x, over the active atoms
        for i in range(m):
            xi = x[P[i]]
            for k in range(n):
                w[k] -= gram[P[i], k] * xi
        j, best = -1, tol
        for i in range(n):
            if not blocked[i] and w[i] > best:
                j, best = i, w[i]
        if j < 0:
            break
        blocked[j] = True
        if not _cholesky_append(L, m, gram, P, j, ridge):
            continue
        P[m] = j
        m += 1
        while True:
            _cholesky_solve(L, m, aty, P, s)
            feasible = True
            for i in range(m):
                if s[i] <= 0.0:
                    feasible = False
            if feasible:
                for i in range(m):
                    x[P[i]] = s[i]
                break
            # step from x towards s until the first coefficient reaches zero;
            # the atoms that reach it leave, and the factor is rebuilt
            alpha = 1.0
            for i in range(m):
                if s[i] <= 0.0:
                    xi = x[P[i]]
                    alpha = min(alpha, xi / (xi - s[i]) if xi - s[i] > 0.0 else 0.0)
            kept = 0
            for i in range(m):
                v = x[P[i]] + alpha * (s[i] - x[P[i]])
                if v <= tol:
                    x[P[i]] = 0.0
                    blocked[P[i]] = False
                else:
                    x[P[i]] = v
                    P[kept] = P[i]
                    kept += 1
            m = 0
            for i in range(kept):
                if _cholesky_append(L, m, gram, P, P[i], ridge):
                    P[m] = P[i]
                    m += 1
                else:
                    x[P[i]] = 0.0
            if m == 0:
                break
    return x


@njit(cache=True, nogil=True)
def _offsets(mel, bands, mel_atoms, norms, gram, bin_atoms, freqs, max_bin, max_dm, max_iter, tol_rel, merge, max_span, min_gap, rel_level, power, dm, reached):
    """Per frame: fit, merge neighbouring atoms into partials, then each bin's
    power-weighted mean partial offset. mel (n_mels, T) linear; dm, reached
    (max_bin, T) out (where no resolved partial dominates a bin, reached is
    False and dm left as it was)."""
    n_atoms = freqs.shape[0]
    resolution = 1.0 / (freqs[1] - freqs[0])
    part_f = np.empty(n_atoms)
    part_a = np.empty(n_atoms)
    first = np.empty(n_atoms)
    last = np.empty(n_atoms)
    x = np.zeros(n_atoms)
    L = np.empty((n_atoms, n_atoms))
    P = np.zeros(n_atoms, dtype=np.int64)
    s = np.empty(n_atoms)
    w = np.empty(n_atoms)
    blocked = np.zeros(n_atoms, dtype=np.bool_)
    for t in range(mel.shape[1]):
        aty = np.zeros(n_atoms)
        for b in range(bands.shape[0]):
            yb = mel[bands[b], t]
            for j in range(n_atoms):
                aty[j] += mel_atoms[b, j] * yb
        a = _nnls_gram(gram, aty, max_iter, tol_rel, x, L, P, s, w, blocked)
        # atoms closer than ``merge`` bins are one partial: NNLS splits an
        # off-grid partial between neighbours; it sits at their amplitude-weighted mean
        n_part = 0
        for j in range(n_atoms):
            if a[j] <= 0.0:
                continue
            amp = a[j] / norms[j]
            if n_part > 0 and freqs[j] - last[n_part - 1] <= merge:
                part_f[n_part - 1] += amp * freqs[j]
                part_a[n_part - 1] += amp
            else:
                part_f[n_part] = amp * freqs[j]
                part_a[n_part] = amp
                first[n_part] = freqs[j]
                n_part += 1
            last[n_part - 1] = freqs[j]
        for c in range(n_part):
            part_f[c] /= part_a[c]
        num = np.zeros(max_bin)
        den = np.zeros(max_bin)
        unresolved = np.zeros(max_bin)
        for c in range(n_part):
            # resolved: narrow, and no comparable partial so close that the
            # main lobes overlap (there magnitudes do not add, the model fails)
            wide = last[c] - first[c] > max_span
            for o in (c - 1, c + 1):
                if 0 <= o < n_part and abs(part_f[o] - part_f[c]) < min_gap and part_a[o] > rel_level * part_a[c]:
                    wide = True
            f = part_f[c]
            j = min(n_atoms - 1, max(0, int(round((f - freqs[0]) * resolution))))   # nearest atom's shape
            lo = max(0, int(np.ceil(f - max_dm)))
            hi = min(max_bin, int(np.floor(f + max_dm)) + 1)
            for k in range(lo, hi):
                p = (part_a[c] * bin_atoms[k, j]) ** power
                if wide:
                    unresolved[k] += p
                else:
                    num[k] += p * (f - k)
                    den[k] += p
        for k in range(max_bin):
            reached[k, t] = den[k] > 0.0 and den[k] > unresolved[k]
            if reached[k, t]:
                dm[k, t] = num[k] / den[k]


TOL = 1e-6         # NNLS stops when no atom lowers the error by more than this, relative
MERGE_BINS = 1.25  # active atoms closer than this are one partial (notes from C2 up are 3 bins apart)
MAX_SPAN = 1.5     # a merged partial wider than this is not one stationary sinusoid
MIN_GAP = 3.0      # nor one whose main lobe (±2 bins) overlaps a comparable neighbour's
REL_LEVEL = 0.1    # comparable: at least a tenth of its amplitude
POWER = 2.0        # bins take the offset of the partials reaching them, weighted by power (as reassignment)


def fit_low_offsets(log_mel: np.ndarray, cfg: AudioConfig, max_bin: int = 64,
                    resolution: int = 2) -> tuple[np.ndarray, np.ndarray]:
    """The sinusoid fit's Δm in the bins below ``max_bin``.

    log_mel: ``(n_mels, T)`` natural-log mel magnitudes (the engine's mel).
    Returns ``(dm, reached)``, each ``(max_bin, T)``: the offsets in bins, and
    where a fitted partial lies within ±``MAX_DM`` bins (elsewhere ``dm`` is 0
    and says nothing).
    """
    d = sinusoid_dictionary(cfg, max_bin, resolution)
    mel = np.exp(np.ascontiguousarray(log_mel, dtype=np.float64))
    dm = np.zeros((max_bin, mel.shape[1]))
    reached = np.zeros(dm.shape, dtype=np.bool_)
    _offsets(mel, d.bands, d.mel_atoms, d.norms, d.gram, d.bin_atoms, d.freqs, max_bin, MAX_DM,
             3 * len(d.bands), TOL, MERGE_BINS, MAX_SPAN, MIN_GAP, REL_LEVEL, POWER, dm, reached)
    return dm, reached


def replace_low(values: np.ndarray, fitted: np.ndarray, reached: np.ndarray) -> np.ndarray:
    """A copy of ``values`` ``(F, T)`` whose first rows take ``fitted``
    ``(n, T)`` where ``reached``."""
    out = np.array(values, dtype=np.float64, copy=True)
    n = fitted.shape[0]
    out[:n] = np.where(reached, fitted, out[:n])
    return out


def sinusoid_offsets(log_mel: np.ndarray, cfg: AudioConfig, fallback: np.ndarray, max_bin: int = 64,
                     resolution: int = 2) -> np.ndarray:
    """Δm ``(F, T)``: the sinusoid fit's offsets in the bins below ``max_bin``
    that a fitted partial reaches, ``fallback`` ``(F, T)`` (e.g. a network's Δm)
    elsewhere."""
    return replace_low(fallback, *fit_low_offsets(log_mel, cfg, max_bin, resolution))


class StreamingFit:
    """:func:`fit_low_offsets` of a stream of mel frames, handed out
    ``delay`` frames late, for a vocoder whose outputs lag its input (a
    look-ahead): the first ``delay`` frames it hands out are the time before
    the start, where no partial is reached. ``push`` new mel frames as they
    arrive, ``pop`` the fit of each batch of output frames."""

    def __init__(self, cfg: AudioConfig, max_bin: int, delay: int = 0):
        self.cfg, self.max_bin, self.delay = cfg, int(max_bin), int(delay)
        self.reset()

    def reset(self) -> None:
        self._dm = np.zeros((self.max_bin, self.delay))
        self._reached = np.zeros((self.max_bin, self.delay), dtype=bool)

    def push(self, log_mel: np.ndarray) -> None:
        dm, reached = fit_low_offsets(log_mel, self.cfg, self.max_bin)
        self._dm = np.concatenate([self._dm, dm], axis=1)
        self._reached = np.concatenate([self._reached, reached], axis=1)

    def pop(self, k: int) -> tuple[np.ndarray, np.ndarray]:
        """The next ``k`` frames' ``(dm, reached)``, each ``(max_bin, k)``;
        frames past the last pushed one (a flush) reach nothing."""
        short = max(0, k - self._dm.shape[1])
        dm = np.pad(self._dm[:, :k], ((0, 0), (0, short)))
        reached = np.pad(self._reached[:, :k], ((0, 0), (0, short)))
        self._dm, self._reached = self._dm[:, k:], self._reached[:, k:]
        return dm, reached
