"""Plugin-style parameters: name, range, default, unit and smoothing time.

Threads: a control thread (OSC, the API) writes a parameter's *target* with
:meth:`Param.set`; the render thread reads the targets once per block
(:meth:`Param.begin_block`) and advances a per-frame linear ramp towards them
(:meth:`Param.frames`). Values are therefore piecewise linear in frame time
and never jump inside a frame; a stage that needs per-sample values
interpolates between consecutive frame values (see the gain of
:class:`rtengine.stages.output.OutputStage`).

A *list* parameter holds ``size`` values addressed by index
(``mel.eq[3]``, OSC ``/rtengine/mel/eq/3``).
"""

from __future__ import annotations

import math
import re

import numpy as np

from ..errors import UserError


class Param:
    """One parameter of a stage.

    Args:
        name: identifier, unique in its stage.
        lo, hi: range in ``unit``; values set from outside are clamped to it.
        default: initial value.
        unit: display unit (``"dB"``, ``"ms"``, ``""``).
        smoothing: ramp time in seconds for a change of target (0: jump at the
            next frame boundary).
        size: ``None`` for a scalar, else the length of a list parameter.
        description: one line for tables, OSCQuery and layouts.
    """

    def __init__(self, name: str, lo: float, hi: float, default: float, unit: str = "",
                 smoothing: float = 0.02, size: int | None = None, description: str = ""):
        if not lo < hi:
            raise ValueError(f"parameter {name}: empty range [{lo}, {hi}]")
        self.name = name
        self.lo = float(lo)
        self.hi = float(hi)
        self.default = float(default)
        self.unit = unit
        self.smoothing = float(smoothing)
        self.size = size
        self.description = description
        n = size or 1
        # written by control threads (single-element stores are atomic under the GIL)
        self._target = np.full(n, self.default)
        # render-thread state
        self._seen = self._target.copy()
        self._current = self._target.copy()
        self._step = np.zeros(n)
        self._left = np.zeros(n, dtype=np.int64)
        self._smooth_frames = 1
        self._frame_rate = 86.1328125
        self._out = np.empty((64, n))

    # -- configuration -------------------------------------------------------
    @property
    def count(self) -> int:
        return self.size or 1

    def prepare(self, frame_rate: float, max_frames: int) -> None:
        self._frame_rate = frame_rate
        self._smooth_frames = max(1, int(round(self.smoothing * frame_rate)))
        self._out = np.empty((max_frames, self.count))

    # -- control side (any thread) ------------------------------------------
    def clamp(self, value: float) -> float:
        v = float(value)
        if math.isnan(v):
            return self.default
        return min(self.hi, max(self.lo, v))

    def to_norm(self, value: float) -> float:
        return (value - self.lo) / (self.hi - self.lo)

    def from_norm(self, norm: float) -> float:
        return self.lo + min(1.0, max(0.0, float(norm))) * (self.hi - self.lo)

    def _check_index(self, index: int | None) -> int:
        if self.size is None:
            if index not in (None, 0):
                raise UserError(f"parameter {self.name} is not a list")
            return 0
        if index is None:
            raise UserError(f"parameter {self.name} is a list of {self.size}; give an index")
        if not 0 <= index < self.size:
            raise UserError(f"parameter {self.name}: index {index} outside 0..{self.size - 1}")
        return index

    def set(self, value: float, index: int | None = None) -> float:
        """Set the target (clamped); returns the value applied."""
        i = self._check_index(index)
        v = self.clamp(value)
        self._target[i] = v
        return v

    def set_all(self, values) -> None:
        if self.size is None:
            self.set(float(values))
        else:
            for i, v in enumerate(values):
                self.set(v, i)

    def get(self, index: int | None = None) -> float:
        return float(self._target[self._check_index(index)])

    def value(self):
        """Target value(s) as plain Python: a float, or a list for list parameters."""
        if self.size is None:
            return float(self._target[0])
        return [float(v) for v in self._target]

    # -- render side ---------------------------------------------------------
    def reset(self) -> None:
        """Jump to the targets (no ramp)."""
        self._seen[:] = self._target
        self._current[:] = self._target
        self._left[:] = 0

    def ramp_to(self, value: float, seconds: float, index: int | None = None) -> None:
        """Render thread only: ramp to ``value`` over ``seconds`` (at least the
        smoothing time) starting at the next frame (automation)."""
        i = self._check_index(index)
        v = self.clamp(value)
        self._target[i] = v
        self._start(i, v, max(self._smooth_frames, int(round(seconds * self._frame_rate))))

    def _start(self, i: int, v: float, n: int) -> None:
        self._seen[i] = v
        self._step[i] = (v - self._current[i]) / n
        self._left[i] = n

    def begin_block(self) -> None:
        """Render thread: read the targets once for the coming block."""
        t = self._target.copy() if self.size else self._target  # scalar: one read
        for i in range(self.count):
            v = t[i]
            if v != self._seen[i]:
                self._start(i, v, self._smooth_frames)

    def frames(self, k: int) -> np.ndarray:
        """Render thread: the next ``k`` per-frame values, shape ``(k, count)``.
        The view is valid until the next call."""
        if k > self._out.shape[0]:
            self._out = np.empty((k, self.count))
        out = self._out[:k]
        if not self._left.any():
            out[:] = self._current
            return out
        for j in range(k):
            active = self._left > 0
            if active.any():
                self._current += np.where(active, self._step, 0.0)
                self._left -= active
                done = active & (self._left == 0)
                if done.any():
                    self._current[done] = self._seen[done]
            out[j] = self._current
        return out


_PATH = re.compile(r"^([A-Za-z_][\w-]*)\.([A-Za-z_]\w*)(?:\[(\d+)\])?$")


def parse_param_path(text: str) -> tuple[str, str, int | None]:
    """``"stage.param"`` or ``"stage.param[3]"`` → ``(stage, param, index)``."""
    m = _PATH.match(str(text).strip())
    if not m:
        raise UserError(f"bad parameter path {text!r}; expected stage.param or stage.param[index]")
    return m.group(1), m.group(2), None if m.group(3) is None else int(m.group(3))


def format_value(v: float) -> str:
    return f"{v:g}"
