"""Output stage: gain, NaN/Inf guard and limiter with a hard ceiling.

The limiter has no look-ahead (zero latency): the gain drops instantly to
whatever keeps the sample at the threshold (``ceiling``) and recovers with the
``release`` time constant. A final hard clip at -0.1 dBFS guarantees that no
sample ever exceeds 0 dBFS.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from ..control.params import Param
from .base import AUDIO, Stage, register_stage

HARD_CEILING_DB = -0.1
HARD_CEILING = float(10.0 ** (HARD_CEILING_DB / 20.0))


@njit(nogil=True, cache=True)
def _gain_limit(x, gain_db, thr_db, release_ms, hop, sr, state, hard):
    """In place over ``k`` frames of ``hop`` samples.

    gain_db, thr_db, release_ms: per-frame values (k,). state: [previous frame
    gain (linear), limiter gain, non-finite count]. Gain is interpolated
    linearly sample by sample from the previous frame's value (no zipper)."""
    k = gain_db.shape[0]
    g_prev = state[0]
    lg = state[1]
    bad = 0
    for j in range(k):
        g_new = 10.0 ** (gain_db[j] / 20.0)
        thr = 10.0 ** (thr_db[j] / 20.0)
        rel = np.exp(-1.0 / (max(release_ms[j], 0.1) * 1e-3 * sr))
        for i in range(hop):
            n = j * hop + i
            v = x[n]
            if not np.isfinite(v):
                v = 0.0
                bad += 1
            g = g_prev + (g_new - g_prev) * (i + 1) / hop
            v = v * g
            a = abs(v)
            target = thr / a if a > thr else 1.0
            if target < lg:
                lg = target
            else:
                lg = target + (lg - target) * rel
            v = v * lg
            if v > hard:
                v = hard
            elif v < -hard:
                v = -hard
            x[n] = v
        g_prev = g_new
    state[0] = g_prev
    state[1] = lg
    state[2] += bad


@register_stage("output")
class OutputStage(Stage):
    """Audio in, audio out: gain, NaN/Inf guard, limiter, hard ceiling."""

    input_type = AUDIO
    output_type = AUDIO

    def __init__(self, name, cfg, options=None, seed=0):
        super().__init__(name, cfg, options, seed)
        self.add_param(Param("gain", -60.0, 12.0, 0.0, "dB", smoothing=0.02,
                             description="output level"))
        self.add_param(Param("ceiling", -24.0, HARD_CEILING_DB, -1.0, "dB", smoothing=0.05,
                             description="limiter threshold"))
        self.add_param(Param("release", 5.0, 2000.0, 150.0, "ms", smoothing=0.0,
                             description="limiter release time"))
        self.state = np.zeros(3)

    def prepare(self, max_frames: int) -> None:
        super().prepare(max_frames)
        self.reset()
        _gain_limit(np.zeros(self.cfg.hop), np.zeros(1), np.zeros(1), np.ones(1),
                    self.cfg.hop, float(self.cfg.sample_rate), np.zeros(3), HARD_CEILING)

    def reset(self) -> None:
        self.state[0] = 10.0 ** (self.params["gain"].get() / 20.0)
        self.state[1] = 1.0

    @property
    def nonfinite(self) -> int:
        return int(self.state[2])

    def process(self, x, k: int):
        y = np.array(x, dtype=np.float64)
        _gain_limit(y, self.params["gain"].frames(k)[:, 0].copy(),
                    self.params["ceiling"].frames(k)[:, 0].copy(),
                    self.params["release"].frames(k)[:, 0].copy(),
                    self.cfg.hop, float(self.cfg.sample_rate), self.state, HARD_CEILING)
        return y.astype(np.float32)
