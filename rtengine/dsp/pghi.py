"""Phase gradient from log-magnitude alone (PGHI, Průša et al.).

For a Gaussian window ``exp(-pi t² / γ)`` the STFT phase gradient follows from
the log-magnitude ``s``:

* ``omega = hop * (2*pi*m/N + (N/γ) ∂s/∂m)``   (phase advance per hop)
* ``tau   = -(γ / (N * hop)) ∂s/∂n``           (phase step per bin)

A Hann window of length N is treated as the Gaussian with ``γ = 0.25645 N²``.
``∂s/∂m`` is a centred difference within the frame; ``∂s/∂n`` is either the
causal backward difference or the centred one, which needs one frame of
look-ahead. This is the engine's model-free vocoder and the baseline every
learned model must beat.
"""

from __future__ import annotations

import numpy as np

from ..config import AudioConfig
from .mel import mel_to_magnitude
from .phase_gradient import MAX_DM

HANN_GAMMA = 0.25645


def gamma(cfg: AudioConfig) -> float:
    """γ of the Gaussian equivalent to a Hann window of ``n_fft`` samples."""
    return HANN_GAMMA * cfg.n_fft ** 2


def log_magnitude(mag: np.ndarray, floor: float = 1e-10) -> np.ndarray:
    return np.log(np.maximum(mag, floor))


def freq_derivative(s: np.ndarray) -> np.ndarray:
    """Centred difference along bins (axis 0), one-sided at the edges."""
    d = np.empty_like(s)
    d[1:-1] = 0.5 * (s[2:] - s[:-2])
    d[0] = s[1] - s[0]
    d[-1] = s[-1] - s[-2]
    return d


def omega_from_logmag(s: np.ndarray, cfg: AudioConfig) -> np.ndarray:
    """Instantaneous frequency (rad per hop) from log-magnitude ``(F, T)``."""
    m = np.arange(s.shape[0]).reshape(-1, *([1] * (s.ndim - 1)))
    return cfg.hop * (2 * np.pi * m / cfg.n_fft + (cfg.n_fft / gamma(cfg)) * freq_derivative(s))


def tau_from_time_derivative(ds_dn: np.ndarray, cfg: AudioConfig) -> np.ndarray:
    """Local group delay (rad per bin) from ``∂s/∂n`` (per frame)."""
    return -(gamma(cfg) / (cfg.n_fft * cfg.hop)) * ds_dn


def pghi_gradients(mag: np.ndarray, cfg: AudioConfig, lookahead: bool = True):
    """Offline PGHI gradients of a magnitude spectrogram ``(F, T)``.

    Returns ``(omega, tau)``, each ``(F, T)``: :class:`PGHIGradients` run over
    the whole sequence, with its look-ahead delay removed (the last frame's time
    difference then sees a silent frame after it, as a stream that stops does).
    """
    est = PGHIGradients(cfg, lookahead)
    _, omega, tau = est.process(mag)
    if lookahead:
        _, o2, t2 = est.flush()
        omega = np.concatenate([omega[:, 1:], o2], axis=1)
        tau = np.concatenate([tau[:, 1:], t2], axis=1)
    return omega, tau


class PGHIGradients:
    """Streaming PGHI: magnitude frames in, ``(mag, omega, tau)`` frames out.

    ``latency_frames`` is 1 with ``lookahead`` (the centred time difference
    needs the next frame; the first output frame is silence) and 0 without
    (backward difference, zero on the first frame). Frame by frame, so the
    output does not depend on how the stream is chunked.
    """

    def __init__(self, cfg: AudioConfig, lookahead: bool = True):
        self.cfg = cfg
        self.lookahead = lookahead
        self.latency_frames = 1 if lookahead else 0
        self.reset()

    def reset(self) -> None:
        f = self.cfg.n_bins
        self._seen = 0
        self._s_prev = np.zeros(f)   # log-mag of frame n-1 (causal) / n-2 (look-ahead)
        self._s_cur = np.zeros(f)    # look-ahead: log-mag of the frame waiting for its successor
        self._m_cur = np.zeros(f)

    def process(self, mag: np.ndarray):
        """mag: ``(F, k)`` → ``(mag_out, omega, tau)``, each ``(F, k)``."""
        k = mag.shape[1]
        if k == 0:
            return mag, mag.copy(), mag.copy()
        s_in = log_magnitude(mag)
        if not self.lookahead:
            a = np.concatenate([self._s_prev[:, None], s_in], axis=1)
            ds = a[:, 1:] - a[:, :-1]
            if self._seen == 0:
                ds[:, 0] = 0.0
            out_s, out_mag = s_in, mag
            self._s_prev = s_in[:, -1].copy()
        else:
            # a[:, j+1] is the frame emitted at step j, a[:, j] and a[:, j+2] its neighbours
            a = np.concatenate([self._s_prev[:, None], self._s_cur[:, None], s_in], axis=1)
            ds = 0.5 * (a[:, 2:] - a[:, :-2])
            out_s = a[:, 1:-1].copy()
            out_mag = np.concatenate([self._m_cur[:, None], mag[:, :-1]], axis=1)
            first = 1 - self._seen                # step j emits frame seen - 1 + j
            if 0 <= first < k:                    # frame 0: forward difference
                ds[:, first] = a[:, first + 2] - a[:, first + 1]
            if self._seen == 0:                   # nothing to emit yet: silence
                ds[:, 0] = 0.0
                out_s[:, 0] = log_magnitude(np.zeros(self.cfg.n_bins))
                out_mag[:, 0] = 0.0
            self._s_prev, self._s_cur = a[:, -2].copy(), a[:, -1].copy()
            self._m_cur = mag[:, -1].copy()
        self._seen += k
        return out_mag, omega_from_logmag(out_s, self.cfg), tau_from_time_derivative(ds, self.cfg)

    def flush(self):
        """Emit the frame held back for look-ahead (followed by silence)."""
        return self.process(np.zeros((self.cfg.n_bins, self.latency_frames)))


def frequency_offsets_from_mel(log_mel: np.ndarray, cfg: AudioConfig, n_iter: int = 100) -> np.ndarray:
    """PGHI's frequency bin offsets Δm ``(F, T)`` of the magnitude a log-mel
    ``(n_mels, T)`` implies (non-negative mel inversion, ``n_iter`` iterations).

    ``omega`` of :func:`omega_from_logmag` written as an offset from each bin's
    centre (PG paper eq. 6), clipped to ±4 bins as the reassignment targets
    are. Frame-local, so it streams with no latency. The neural vocoder uses
    it as a prior: the network predicts the correction to it.
    """
    s = log_magnitude(mel_to_magnitude(log_mel, cfg, n_iter))
    dm = (cfg.n_fft / gamma(cfg)) * (cfg.n_fft / (2 * np.pi)) * freq_derivative(s)
    return np.clip(dm, -MAX_DM, MAX_DM)
