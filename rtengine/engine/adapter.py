"""Block adapter: host blocks of any size from whole engine frames.

The host asks for ``n`` samples (1, 64, 100, 4096…); the adapter renders as
many whole frames as needed into a FIFO and serves the block from it. Because
the engine only ever computes whole frames on its own clock, the sample
stream is the same for every host block size.
"""

from __future__ import annotations

import numpy as np

from .chain import Engine


class BlockAdapter:
    def __init__(self, engine: Engine, max_block: int = 4096):
        self.engine = engine
        hop = engine.cfg.hop
        self._buf = np.zeros(max(max_block, hop) + hop, dtype=np.float32)
        self._start = 0
        self._end = 0

    @property
    def buffered(self) -> int:
        """Samples computed but not yet served (adds to latency, < one hop)."""
        return self._end - self._start

    def reset(self) -> None:
        self._start = self._end = 0

    def process(self, n: int) -> np.ndarray:
        out = np.empty(n, dtype=np.float32)
        self.process_into(out)
        return out

    def process_into(self, out: np.ndarray) -> None:
        n = len(out)
        hop = self.engine.cfg.hop
        have = self._end - self._start
        if have < n:
            frames = -(-(n - have) // hop)
            need = have + frames * hop
            if need > len(self._buf):  # a block larger than prepared: grow (not on a live path)
                nb = np.zeros(need + hop, dtype=np.float32)
                nb[:have] = self._buf[self._start:self._end]
                self._buf = nb
            elif self._start:
                self._buf[:have] = self._buf[self._start:self._end]
            self._start, self._end = 0, have
            self.engine.render_frames(frames, self._buf[have:have + frames * hop])
            self._end += frames * hop
        out[:] = self._buf[self._start:self._start + n]
        self._start += n
