"""Slaney mel filterbank, log-mel, and its non-negative inverse.

The filterbank equals ``librosa.filters.mel(norm="slaney", htk=False)``; the
log-mel equals ``ln(max(librosa.feature.melspectrogram(power=1), 1e-5))`` within
1e-5 (tested). Mel projection and its inverse run frame by frame in numba over
the filterbank's sparse rows, so a frame's result is bit-identical whatever
block it was computed in.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numba import njit

from ..config import AudioConfig
from .stft import stft


def hz_to_mel(f: np.ndarray) -> np.ndarray:
    """Slaney mel scale: linear below 1 kHz, logarithmic above."""
    f = np.asarray(f, dtype=np.float64)
    f_sp = 200.0 / 3
    mel = f / f_sp
    min_log_hz, min_log_mel, logstep = 1000.0, 1000.0 / f_sp, np.log(6.4) / 27.0
    return np.where(f >= min_log_hz, min_log_mel + np.log(np.maximum(f, 1e-12) / min_log_hz) / logstep, mel)


def mel_to_hz(m: np.ndarray) -> np.ndarray:
    """Inverse of :func:`hz_to_mel`."""
    m = np.asarray(m, dtype=np.float64)
    f_sp = 200.0 / 3
    min_log_hz, min_log_mel, logstep = 1000.0, 1000.0 / f_sp, np.log(6.4) / 27.0
    return np.where(m >= min_log_mel, min_log_hz * np.exp(logstep * (m - min_log_mel)), f_sp * m)


def mel_filterbank(cfg: AudioConfig) -> np.ndarray:
    """Slaney-normalised triangular filters, shape ``(n_mels, F)``, float64."""
    fft_freqs = np.linspace(0, cfg.sample_rate / 2, cfg.n_bins)
    edges = mel_to_hz(np.linspace(hz_to_mel(cfg.fmin), hz_to_mel(cfg.mel_fmax), cfg.n_mels + 2))
    fdiff = np.diff(edges)
    ramps = edges[:, None] - fft_freqs[None, :]
    lower = -ramps[:-2] / fdiff[:-1, None]
    upper = ramps[2:] / fdiff[1:, None]
    weights = np.maximum(0.0, np.minimum(lower, upper))
    weights *= (2.0 / (edges[2:] - edges[:-2]))[:, None]
    return weights


@dataclass(frozen=True)
class MelBasis:
    """The filterbank as sparse rows: band ``b`` covers bins ``lo[b]:hi[b]``
    with weights ``w[b, :hi[b]-lo[b]]``."""

    dense: np.ndarray  # (n_mels, F)
    lo: np.ndarray     # (n_mels,) int64
    hi: np.ndarray     # (n_mels,) int64
    w: np.ndarray      # (n_mels, max_width) float64
    col_sum: np.ndarray  # (F,) B^T 1
    row_sum: np.ndarray  # (n_mels,) B 1

    @classmethod
    def from_config(cls, cfg: AudioConfig) -> "MelBasis":
        dense = mel_filterbank(cfg)
        nz = dense > 0
        lo = np.array([np.argmax(r) if r.any() else 0 for r in nz], dtype=np.int64)
        hi = np.array([len(r) - np.argmax(r[::-1]) if r.any() else 0 for r in nz], dtype=np.int64)
        width = int(max(1, (hi - lo).max()))
        w = np.zeros((dense.shape[0], width))
        for b in range(dense.shape[0]):
            w[b, :hi[b] - lo[b]] = dense[b, lo[b]:hi[b]]
        return cls(dense, lo, hi, w, dense.sum(axis=0), dense.sum(axis=1))


_BASES: dict[AudioConfig, MelBasis] = {}


def mel_basis(cfg: AudioConfig) -> MelBasis:
    """Cached :class:`MelBasis` for a configuration."""
    if cfg not in _BASES:
        _BASES[cfg] = MelBasis.from_config(cfg)
    return _BASES[cfg]


@njit(cache=True, nogil=True)
def _project(mag, lo, hi, w, out):
    # mag (F, T) -> out (n_mels, T); one frame at a time, same order of sums.
    n_mels = lo.shape[0]
    for t in range(mag.shape[1]):
        for b in range(n_mels):
            acc = 0.0
            for k in range(lo[b], hi[b]):
                acc += w[b, k - lo[b]] * mag[k, t]
            out[b, t] = acc


def magnitude_to_mel(mag: np.ndarray, cfg: AudioConfig) -> np.ndarray:
    """Mel magnitudes of linear magnitudes. mag: ``(F, T)`` → ``(n_mels, T)`` float64."""
    basis = mel_basis(cfg)
    mag = np.ascontiguousarray(mag, dtype=np.float64)
    out = np.empty((basis.lo.shape[0], mag.shape[1]))
    _project(mag, basis.lo, basis.hi, basis.w, out)
    return out


def log_mel(x: np.ndarray, cfg: AudioConfig) -> np.ndarray:
    """Log-mel spectrogram of a mono signal. x: ``(L,)`` → ``(n_mels, 1 + L // hop)``, float32."""
    mel = magnitude_to_mel(np.abs(stft(x, cfg)), cfg)
    return np.log(np.maximum(mel, cfg.log_floor)).astype(np.float32)


@njit(cache=True, nogil=True)
def _nnls_frames(mel, lo, hi, w, col_sum, row_sum, n_iter, out):
    """Non-negative least squares ``min ||B m - y||², m >= 0`` for each frame by
    multiplicative updates (Lee & Seung): ``m <- m * (B^T y) / (B^T B m)``.

    mel (n_mels, T) linear mel magnitudes → out (F, T). The innermost loops run
    over frames, so they vectorise; every frame goes through the same
    operations in the same order, so its result does not depend on which other
    frames share the block.
    """
    n_mels = lo.shape[0]
    n_bins, t = out.shape
    bty = np.zeros((n_bins, t))
    btbm = np.zeros((n_bins, t))
    bm = np.empty((n_mels, t))
    # start from each bin's weighted mean of the levels y_b / (B 1)_b of the
    # bands covering it: a flat spectrum within each band
    for b in range(n_mels):
        inv = 1.0 / row_sum[b] if row_sum[b] > 0 else 0.0
        for k in range(lo[b], hi[b]):
            wk = w[b, k - lo[b]]
            for j in range(t):
                bty[k, j] += wk * mel[b, j]
                btbm[k, j] += wk * (mel[b, j] * inv)
    for k in range(n_bins):
        inv = 1.0 / col_sum[k] if col_sum[k] > 0 else 0.0
        for j in range(t):
            out[k, j] = btbm[k, j] * inv
    for _ in range(n_iter):
        for b in range(n_mels):
            for j in range(t):
                bm[b, j] = 0.0
            for k in range(lo[b], hi[b]):
                wk = w[b, k - lo[b]]
                for j in range(t):
                    bm[b, j] += wk * out[k, j]
        btbm[:, :] = 0.0
        for b in range(n_mels):
            for k in range(lo[b], hi[b]):
                wk = w[b, k - lo[b]]
                for j in range(t):
                    btbm[k, j] += wk * bm[b, j]
        for k in range(n_bins):
            for j in range(t):
                if btbm[k, j] > 0.0:
                    out[k, j] *= bty[k, j] / btbm[k, j]


@njit(cache=True, nogil=True)
def _nnls_one_frame(mel, lo, hi, w, col_sum, row_sum, n_iter, out):
    """:func:`_nnls_frames` for one frame (``mel (n_mels,)`` → ``out (F,)``),
    the live engine's case: the same operations in the same order, so the
    same result, without the per-frame loops' overhead."""
    n_mels = lo.shape[0]
    n_bins = out.shape[0]
    bty = np.zeros(n_bins)
    btbm = np.zeros(n_bins)
    bm = np.empty(n_mels)
    for b in range(n_mels):
        inv = 1.0 / row_sum[b] if row_sum[b] > 0 else 0.0
        for k in range(lo[b], hi[b]):
            wk = w[b, k - lo[b]]
            bty[k] += wk * mel[b]
            btbm[k] += wk * (mel[b] * inv)
    for k in range(n_bins):
        inv = 1.0 / col_sum[k] if col_sum[k] > 0 else 0.0
        out[k] = btbm[k] * inv
    for _ in range(n_iter):
        for b in range(n_mels):
            acc = 0.0
            for k in range(lo[b], hi[b]):
                acc += w[b, k - lo[b]] * out[k]
            bm[b] = acc
        btbm[:] = 0.0
        for b in range(n_mels):
            for k in range(lo[b], hi[b]):
                btbm[k] += w[b, k - lo[b]] * bm[b]
        for k in range(n_bins):
            if btbm[k] > 0.0:
                out[k] *= bty[k] / btbm[k]


def mel_to_magnitude(log_mel_frames: np.ndarray, cfg: AudioConfig, n_iter: int = 30) -> np.ndarray:
    """Non-negative linear magnitude whose mel projection best matches a log-mel.

    log_mel_frames: ``(n_mels, T)`` natural-log mel magnitudes. Returns ``(F, T)``
    float64, non-negative. Frame-local: a frame's result does not depend on the
    others.
    """
    basis = mel_basis(cfg)
    mel = np.exp(np.ascontiguousarray(log_mel_frames, dtype=np.float64))
    out = np.empty((cfg.n_bins, mel.shape[1]))
    if mel.shape[1] == 1:
        _nnls_one_frame(mel[:, 0], basis.lo, basis.hi, basis.w, basis.col_sum, basis.row_sum, n_iter, out[:, 0])
    else:
        _nnls_frames(mel, basis.lo, basis.hi, basis.w, basis.col_sum, basis.row_sum, n_iter, out)
    return out


class StreamingLogMel:
    """Audio samples in, log-mel frames ``(n_mels, j)`` out, frame by frame;
    equal to :func:`log_mel` over any chunking (``n_fft/2`` samples of look-ahead)."""

    def __init__(self, cfg: AudioConfig):
        from .stft import StreamingSTFT

        self.cfg = cfg
        self._stft = StreamingSTFT(cfg)
        self.latency_samples = self._stft.latency_samples

    def reset(self) -> None:
        self._stft.reset()

    def _to_log_mel(self, spec: np.ndarray) -> np.ndarray:
        mel = magnitude_to_mel(np.abs(spec), self.cfg)
        return np.log(np.maximum(mel, self.cfg.log_floor)).astype(np.float32)

    def process(self, x: np.ndarray) -> np.ndarray:
        return self._to_log_mel(self._stft.process(x))

    def flush(self) -> np.ndarray:
        return self._to_log_mel(self._stft.flush())
