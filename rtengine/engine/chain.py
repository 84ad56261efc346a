"""The chain on the frame clock: source → stages → output, one hop per tick.

:class:`Engine` owns the stages and the frame counter. ``render_frames(k)``
advances the clock by ``k`` frames and returns ``k*R`` samples. Between
sub-blocks (at frame boundaries, in frame time) it

1. applies the automation events due at that frame,
2. honours a pending panic (reset every processing stage),
3. lets every parameter read its target once (``begin_block``),

then runs each stage on the sub-block. Sub-blocks end at the next automation
event and never exceed ``max_frames``; since every stage is frame-deterministic
and parameters ramp per frame, the samples do not depend on how a host groups
frames into blocks.

Each stage's output passes a finiteness check: non-finite values are replaced
by silence, counted in ``nonfinite``, and the stage is reset (its state may
hold the NaN).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..config import AudioConfig
from ..control.params import Param, parse_param_path
from ..errors import UserError
from ..stages.base import AUDIO, Source, Stage


@dataclass
class AutomationEvent:
    """At frame ``frame`` ramp ``stage.param[index]`` to ``value`` over ``ramp`` s."""

    frame: int
    stage: str
    param: str
    index: int | None
    value: float
    ramp: float = 0.0


class Engine:
    """A source and a list of stages on one frame clock.

    Args:
        cfg: the audio configuration every stage shares.
        source: the first stage (no input).
        stages: processing stages in order; the last one outputs audio.
        automation: events applied in frame time (offline render and live).
    """

    def __init__(self, cfg: AudioConfig, source: Source, stages: list[Stage],
                 automation: list[AutomationEvent] | None = None):
        self.cfg = cfg
        self.source = source
        self.stages = list(stages)
        self.chain: list[Stage] = [source] + self.stages
        names = [s.name for s in self.chain]
        dup = {n for n in names if names.count(n) > 1}
        if dup:
            raise UserError(f"stage names must be unique; repeated: {', '.join(sorted(dup))}")
        for a, b in zip(self.chain, self.chain[1:]):
            if a.output_type != b.input_type:
                raise UserError(f"stage {b.name!r} ({b.type_name}) takes {b.input_type} frames "
                                f"but {a.name!r} ({a.type_name}) gives {a.output_type}")
            a.cfg.check_same(b.cfg, f"stage {a.name!r}", f"stage {b.name!r}")
        if self.chain[-1].output_type != AUDIO:
            raise UserError(f"the last stage {self.chain[-1].name!r} gives "
                            f"{self.chain[-1].output_type} frames; the chain must end in audio "
                            f"(add a vocoder stage)")
        self.stage_by_name = {s.name: s for s in self.chain}
        self.automation = sorted(automation or [], key=lambda e: e.frame)
        self._next_event = 0
        self.frame = 0
        self.nonfinite = 0
        self._panic = False
        self.max_frames = 0
        self.prepared = False

    # -- parameters ----------------------------------------------------------
    @property
    def params(self) -> dict[str, Param]:
        """``"stage.param"`` → :class:`Param`, in chain order."""
        return {f"{s.name}.{p.name}": p for s in self.chain for p in s.params.values()}

    def param(self, path: str) -> tuple[Param, int | None]:
        stage, name, index = parse_param_path(path)
        st = self.stage_by_name.get(stage)
        if st is None:
            raise UserError(f"unknown stage {stage!r} in {path!r}; stages: "
                            f"{', '.join(self.stage_by_name)}")
        p = st.params.get(name)
        if p is None:
            raise UserError(f"stage {stage!r} has no parameter {name!r}; it has: "
                            f"{', '.join(st.params) or 'none'}")
        if index is not None and p.size is None:
            raise UserError(f"{stage}.{name} is not a list parameter; drop the [index]")
        if p.size is not None and index is not None and not 0 <= index < p.size:
            raise UserError(f"{path}: index outside 0..{p.size - 1}")
        return p, index

    def set(self, path: str, value, index: int | None = None) -> None:
        """Set a parameter from any thread (applied at the next frame boundary).
        ``value`` may be a list for a list parameter given without index."""
        p, i = self.param(path)
        i = index if index is not None else i
        if p.size is not None and i is None:
            vals = list(value) if isinstance(value, (list, tuple)) else [value] * p.size
            if len(vals) != p.size:
                raise UserError(f"{path} takes {p.size} values, got {len(vals)}")
            p.set_all(vals)
        else:
            p.set(float(value), i)

    def snapshot(self) -> dict[str, dict]:
        """Current parameter targets: ``{stage: {param: value or list}}``."""
        return {s.name: {p.name: p.value() for p in s.params.values()}
                for s in self.chain if s.params}

    # -- lifecycle -------------------------------------------------------------
    @property
    def latency_samples(self) -> int:
        """Algorithmic latency: the sum of the stages' reported latencies."""
        return int(sum(s.latency_samples for s in self.chain))

    @property
    def latency_ms(self) -> float:
        return 1000.0 * self.latency_samples / self.cfg.sample_rate

    @property
    def burst_ms(self) -> float:
        """The stages' heaviest single calls together (known after prepare):
        the extra audio the live ring must hold (chunks may fall on one frame)."""
        return float(sum(s.burst_ms for s in self.chain))

    def prepare(self, max_frames: int = 16) -> None:
        self.max_frames = max(1, int(max_frames))
        for s in self.chain:
            s.prepare(self.max_frames)
        self.frame = 0
        self._next_event = 0
        self.prepared = True

    def reset(self) -> None:
        """Back to frame 0 with parameters at their targets."""
        for s in self.chain:
            s.reset()
            for p in s.params.values():
                p.reset()
        self.frame = 0
        self._next_event = 0

    def panic(self) -> None:
        """Any thread: reset every processing stage at the next frame boundary."""
        self._panic = True

    def close(self) -> None:
        self.source.close()

    # -- processing ----------------------------------------------------------
    def _apply_events(self) -> None:
        ev = self.automation
        while self._next_event < len(ev) and ev[self._next_event].frame <= self.frame:
            e = ev[self._next_event]
            self.stage_by_name[e.stage].params[e.param].ramp_to(e.value, e.ramp, e.index)
            self._next_event += 1

    def _frames_to_next_event(self) -> int | None:
        if self._next_event < len(self.automation):
            return self.automation[self._next_event].frame - self.frame
        return None

    def render_frames(self, k: int, out: np.ndarray | None = None) -> np.ndarray:
        """Advance ``k`` frames; returns (or fills) ``k*R`` float32 samples."""
        if not self.prepared:
            self.prepare()
        hop = self.cfg.hop
        if out is None:
            out = np.empty(k * hop, dtype=np.float32)
        done = 0
        while done < k:
            self._apply_events()
            if self._panic:
                self._panic = False
                for s in self.stages:
                    s.reset()
            n = min(k - done, self.max_frames)
            nxt = self._frames_to_next_event()
            if nxt is not None and nxt > 0:
                n = min(n, nxt)
            for s in self.chain:
                for p in s.params.values():
                    p.begin_block()
            x = None
            for s in self.chain:
                x = s.process(x, n)
                if not np.isfinite(x).all():
                    self.nonfinite += int(np.size(x) - np.count_nonzero(np.isfinite(x)))
                    x = np.where(np.isfinite(x), x, s.silence(n))
                    s.reset()
            out[done * hop:(done + n) * hop] = x
            done += n
            self.frame += n
        return out
