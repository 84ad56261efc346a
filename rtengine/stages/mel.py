"""Mel analysis stage: audio frames → log-mel frames, with a band EQ."""

from __future__ import annotations

import numpy as np

from ..control.params import Param
from .base import AUDIO, MEL, Stage, register_stage

LN10_20 = np.log(10.0) / 20.0


@register_stage("mel")
class MelStage(Stage):
    """Streaming log-mel analysis (:class:`rtengine.dsp.mel.StreamingLogMel`).

    In: audio ``(k*R,)``; out: log-mel ``(n_mels, k)``. The analysis window of
    frame ``n`` is centred on sample ``n*R`` and needs ``n_fft/2`` samples of
    look-ahead, of which one hop arrives with the tick itself: the first frames
    are silence (log floor) and the stage reports ``n_fft/2 - R`` samples of
    latency.

    Params: ``eq`` — 8 gains in dB over equal groups of mel bands, low to high.
    """

    input_type = AUDIO
    output_type = MEL
    n_eq = 8

    def __init__(self, name, cfg, options=None, seed=0):
        super().__init__(name, cfg, options, seed)
        self.add_param(Param("eq", -24.0, 12.0, 0.0, "dB", smoothing=0.05, size=self.n_eq,
                             description="mel band EQ, 8 groups of bands from low to high"))
        self.band_group = (np.arange(cfg.n_mels) * self.n_eq) // cfg.n_mels
        # frame n (centred on n*R) is complete once sample n*R + n_fft/2 - 1 has
        # arrived, i.e. at the end of tick n + n_fft/(2R) - 1
        self.latency_samples = cfg.n_fft // 2 - cfg.hop

    def prepare(self, max_frames: int) -> None:
        super().prepare(max_frames)
        from ..dsp.mel import StreamingLogMel
        self.analysis = StreamingLogMel(self.cfg)
        self.reset()
        # warm up the JIT on a throwaway analyser
        StreamingLogMel(self.cfg).process(np.zeros(self.cfg.n_fft * 2, dtype=np.float32))

    def reset(self) -> None:
        self.analysis.reset()
        self._pending = np.zeros((self.cfg.n_mels, 0), dtype=np.float32)

    def process(self, x, k: int):
        new = self.analysis.process(np.asarray(x, dtype=np.float32))
        frames = np.concatenate([self._pending, new], axis=1) if self._pending.shape[1] else new
        if frames.shape[1] < k:  # start-up: the analysis has not caught up yet
            frames = np.concatenate([self.silence(k - frames.shape[1]), frames], axis=1)
        out, self._pending = frames[:, :k], frames[:, k:]
        eq = self.params["eq"].frames(k)  # (k, 8) dB
        if eq.any():
            out = out + (eq.T[self.band_group] * LN10_20).astype(np.float32)
        return np.ascontiguousarray(out, dtype=np.float32)
