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
from .mel_sinusoids import StreamingFit, check_fit_bins, replace_low
from .ola import OverlapAdd
from .pghi import PGHIGradients
from .phase_gradient import offsets_to_gradients


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
        # the gradients' outputs lag the mel by their look-ahead; so does the fit
        self.fit = StreamingFit(cfg, self.sinusoid_fit, self.gradients.latency_frames) if self.sinusoid_fit else None

    def reset(self) -> None:
        self.gradients.reset()
        self.integrator.reset()
        self.ola.reset()
        if self.fit is not None:
            self.fit.reset()

    def process(self, log_mel: np.ndarray) -> np.ndarray:
        if log_mel.shape[1] == 0:
            return np.zeros(0, dtype=np.float32)
        mag = mel_to_magnitude(log_mel, self.cfg, self.nnls_iter)
        if self.fit is not None:
            self.fit.push(log_mel)
        return self.synthesize(mag)

    def synthesize(self, mag: np.ndarray) -> np.ndarray:
        """Linear magnitude frames ``(F, k)`` → audio ``(k*hop,)`` float32."""
        m, omega, tau = self.gradients.process(mag)
        if self.fit is not None:       # the low bins' ω from the fit of their own frame (eq. 6)
            dm, reached = self.fit.pop(omega.shape[1])
            omega = replace_low(omega, offsets_to_gradients(dm, np.zeros_like(dm), self.cfg)[0], reached)
        m, phase = self.integrator.process(m, omega, tau)
        return self.ola.process(m * np.exp(1j * phase)).astype(np.float32)

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
