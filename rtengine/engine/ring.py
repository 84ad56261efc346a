"""A preallocated single-producer single-consumer ring of float32 samples.

No locks: the producer only advances ``_w``, the consumer only ``_r``; both are
Python ints read and written atomically under the GIL, and the data region a
side touches is never touched by the other until the index moves. Reads and
writes copy with at most two slice assignments and allocate nothing sizeable.
"""

from __future__ import annotations

import numpy as np


class Ring:
    def __init__(self, capacity: int):
        self.buf = np.zeros(int(capacity), dtype=np.float32)
        self.cap = int(capacity)
        self._w = 0
        self._r = 0

    @property
    def available(self) -> int:
        """Samples ready to read."""
        return self._w - self._r

    @property
    def space(self) -> int:
        return self.cap - (self._w - self._r)

    def clear(self) -> None:
        self._r = self._w

    def write(self, x) -> int:
        """Producer: copy as much of ``x`` as fits; returns samples written."""
        n = min(len(x), self.cap - (self._w - self._r))
        if n <= 0:
            return 0
        s = self._w % self.cap
        m = min(n, self.cap - s)
        self.buf[s:s + m] = x[:m]
        if n > m:
            self.buf[:n - m] = x[m:n]
        self._w += n
        return n

    def read_into(self, out) -> int:
        """Consumer: fill ``out`` from the ring; returns samples copied (the
        rest of ``out`` is left as it was)."""
        n = min(len(out), self._w - self._r)
        if n <= 0:
            return 0
        s = self._r % self.cap
        m = min(n, self.cap - s)
        out[:m] = self.buf[s:s + m]
        if n > m:
            out[m:n] = self.buf[:n - m]
        self._r += n
        return n
