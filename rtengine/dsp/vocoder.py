"""The model-free vocoder: log-mel → magnitude → PGHI gradients → phase → audio.

Streaming: :class:`PGHIVocoder` takes log-mel frames and returns ``hop``
samples per frame, delayed by ``latency_samples``. Offline:
:func:`vocode_pghi` runs the same object over a whole mel and removes the delay.
"""

from __future__ import annotations

import numpy as np

from ..config import AudioConfig
from .integrator import PhaseIntegrator
from .mel import mel_to_magnitude
from .mel_sinusoids import check_fit_bins, fit_low_offsets
from .ola import OverlapAdd
from .pghi import PGHIGradients


class PGHIVocoder:
    """Log-mel frames ``(n_mels, k)`` in, audio ``(k*hop,)`` float32 out.

    Args:
        cfg: audio configuration of the mel.
        mode: integrator mode, ``"heap"`` or ``"lambda"``.
        lookahead: centred time differences for the gradients (one frame of
            latency) instead of causal backward differences.
        use_lambda: random phase on bins λ classifies as noise (heap mode).
        seed: seed of the integrator's random phases.
        nnls_iter: iterations of the non-negative mel inversion.
        sinusoid_fit: the instantaneous frequency of the bins below this bin
            from the sparse sinusoid fit of the mel
            (:mod:`rtengine.dsp.mel_sinusoids`) where it resolves a partial;
            0 (default): PGHI's everywhere.
    """

    def __init__(self, cfg: AudioConfig, mode: str = "heap", lookahead: bool = True,
                 use_lambda: bool = False, seed: int = 0, nnls_iter: int = 30, sinusoid_fit: int = 0):
        self.cfg = cfg
        self.nnls_iter = nnls_iter
        self.sinusoid_fit = check_fit_bins(sinusoid_fit, cfg)
        self.gradients = PGHIGradients(cfg, lookahead=lookahead)
        self.integrator = PhaseIntegrator(cfg.n_fft, cfg.hop, mode=mode, lookahead=lookahead,
                                          use_lambda=use_lambda, seed=seed)
        self.ola = OverlapAdd(cfg)
        self.latency_frames = self.gradients.latency_frames + self.integrator.latency_frames
        self.latency_samples = self.latency_frames * cfg.hop + self.ola.latency_samples
        self.reset()

    def reset(self) -> None:
        self.gradients.reset()
        self.integrator.reset()
        self.ola.reset()
        # the fitted offsets of the frames the gradients still hold (look-ahead),
        # starting with the silent frame they emit first
        held = self.gradients.latency_frames
        self._fits = (np.zeros((self.sinusoid_fit, held)), np.zeros((self.sinusoid_fit, held), dtype=bool))

    def process(self, log_mel: np.ndarray) -> np.ndarray:
        if log_mel.shape[1] == 0:
            return np.zeros(0, dtype=np.float32)
        mag = mel_to_magnitude(log_mel, self.cfg, self.nnls_iter)
        fit = fit_low_offsets(log_mel, self.cfg, self.sinusoid_fit) if self.sinusoid_fit else None
        return self.synthesize(mag, fit)

    def synthesize(self, mag: np.ndarray, fit: tuple[np.ndarray, np.ndarray] | None = None) -> np.ndarray:
        """Linear magnitude frames ``(F, k)`` (and their sinusoid fit
        :func:`~rtengine.dsp.mel_sinusoids.fit_low_offsets`, if any) → audio
        ``(k*hop,)`` float32."""
        m, omega, tau = self.gradients.process(mag)
        if self.sinusoid_fit:
            omega = self._fitted_omega(omega, fit)
        m, phase = self.integrator.process(m, omega, tau)
        return self.ola.process(m * np.exp(1j * phase)).astype(np.float32)

    def _fitted_omega(self, omega: np.ndarray, fit) -> np.ndarray:
        """``omega`` with the low bins that the fit of their own frame resolves
        set from it (eq. 6 of the PG paper: ω = 2π·hop·(m + Δm)/N)."""
        k, n = omega.shape[1], self.sinusoid_fit
        if fit is None:
            fit = (np.zeros((n, k)), np.zeros((n, k), dtype=bool))
        dm = np.concatenate([self._fits[0], fit[0]], axis=1)
        ok = np.concatenate([self._fits[1], fit[1]], axis=1)
        self._fits = (dm[:, k:], ok[:, k:])
        bins = np.arange(n)[:, None]
        omega = omega.copy()
        omega[:n] = np.where(ok[:, :k], 2 * np.pi * self.cfg.hop * (bins + dm[:, :k]) / self.cfg.n_fft, omega[:n])
        return omega

    def flush(self) -> np.ndarray:
        """Audio still held in the delay line: ``latency_samples`` samples."""
        frames = self.latency_frames
        tail = self.synthesize(np.zeros((self.cfg.n_bins, frames))) if frames else np.zeros(0, np.float32)
        return np.concatenate([tail, self.ola.flush().astype(np.float32)])


def run_offline(vocoder: PGHIVocoder, log_mel: np.ndarray, length: int | None = None) -> np.ndarray:
    """Run a streaming vocoder over a whole mel and remove its delay.

    Returns ``(length,)`` float32, default ``(T - 1) * hop`` samples."""
    out = np.concatenate([vocoder.process(log_mel), vocoder.flush()])[vocoder.latency_samples:]
    if length is None:
        length = (log_mel.shape[1] - 1) * vocoder.cfg.hop
    if len(out) < length:
        out = np.pad(out, (0, length - len(out)))
    return out[:length]


def vocode_pghi(log_mel: np.ndarray, cfg: AudioConfig, length: int | None = None, **kwargs) -> np.ndarray:
    """Offline model-free vocoding of a log-mel ``(n_mels, T)`` → audio float32."""
    return run_offline(PGHIVocoder(cfg, **kwargs), log_mel, length)
