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
        s_in = log_magnitude(mag)
        k = mag.shape[1]
        out_s = np.empty_like(s_in)
        ds = np.empty_like(s_in)
        out_mag = np.empty_like(s_in)
        for j in range(k):
            s_new = s_in[:, j]
            if not self.lookahead:
                ds[:, j] = s_new - self._s_prev if self._seen > 0 else 0.0
                out_s[:, j], out_mag[:, j] = s_new, mag[:, j]
                self._s_prev = s_new
            else:
                if self._seen == 0:          # nothing to emit yet: silence
                    ds[:, j] = 0.0
                    out_s[:, j] = log_magnitude(np.zeros(self.cfg.n_bins))
                    out_mag[:, j] = 0.0
                elif self._seen == 1:        # first frame: forward difference
                    ds[:, j] = s_new - self._s_cur
                    out_s[:, j], out_mag[:, j] = self._s_cur, self._m_cur
                else:                        # centred difference
                    ds[:, j] = 0.5 * (s_new - self._s_prev)
                    out_s[:, j], out_mag[:, j] = self._s_cur, self._m_cur
                self._s_prev, self._s_cur, self._m_cur = self._s_cur, s_new, mag[:, j]
            self._seen += 1
        return out_mag, omega_from_logmag(out_s, self.cfg), tau_from_time_derivative(ds, self.cfg)

    def flush(self):
        """Emit the frame held back for look-ahead (followed by silence)."""
        return self.process(np.zeros((self.cfg.n_bins, self.latency_frames)))
