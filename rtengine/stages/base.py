"""The stage lifecycle (after JUCE's AudioProcessor).

A stage moves *frames* on the engine's clock (one frame = one hop ``R``):

- ``prepare(cfg, max_frames)`` allocates and warms up (JIT, first call);
- ``process(x, k)`` consumes and returns ``k`` frames; ``x`` is audio
  ``(k*R,)`` float32 or log-mel ``(n_mels, k)`` float32 depending on
  ``input_type``; a source ignores ``x``;
- ``reset()`` clears internal state (delay lines, phases) but keeps parameters;
- ``latency_samples`` is the delay the stage adds (``latency`` in frames);
- ``burst_ms`` is the wall time of the stage's heaviest single call beyond
  its ordinary ones (a chunked stage decoding a whole chunk at once),
  measured in ``prepare``; the live player keeps that much more audio in its
  ring so the burst does not underrun;
- ``params`` maps a name to a :class:`~rtengine.control.params.Param`.

Every stage returns exactly ``k`` frames for ``k`` frames in, so the whole
chain runs on one clock and its output does not depend on how the frames are
grouped into blocks.
"""

from __future__ import annotations

import importlib

import numpy as np

from ..config import AudioConfig
from ..control.params import Param

AUDIO = "audio"
MEL = "mel"

class Registry(dict):
    """Name → class. An entry may be a ``"module:Class"`` string, imported on
    first lookup, so a stage that needs torch costs nothing until a patch
    uses it."""

    def __getitem__(self, key):
        v = super().__getitem__(key)
        if isinstance(v, str):
            module, attr = v.split(":")
            v = getattr(importlib.import_module(module), attr)
            super().__setitem__(key, v)
        return v

    def get(self, key, default=None):
        return self[key] if key in self else default


STAGE_TYPES: Registry = Registry()
SOURCE_TYPES: Registry = Registry()


def _registrar(registry: Registry):
    def register(name: str):
        """Class decorator: make ``type: name`` available to patches."""
        def deco(cls):
            registry[name] = cls
            cls.type_name = name
            return cls
        return deco
    return register


register_stage = _registrar(STAGE_TYPES)
register_source = _registrar(SOURCE_TYPES)


class Stage:
    """Base class; subclasses set ``input_type``, ``output_type`` and params."""

    type_name = "stage"
    input_type: str | None = AUDIO
    output_type: str = AUDIO
    #: option name → (python types, description); validated by the patch loader
    options_schema: dict[str, tuple[tuple, str]] = {}

    def __init__(self, name: str, cfg: AudioConfig, options: dict | None = None, seed: int = 0):
        self.name = name
        self.cfg = cfg
        self.options = dict(options or {})
        self.seed = seed
        self.params: dict[str, Param] = {}
        self.max_frames = 0
        self.latency_samples = 0
        self.burst_ms = 0.0

    @property
    def latency(self) -> float:
        """Latency in frames (may be fractional)."""
        return self.latency_samples / self.cfg.hop

    def add_param(self, p: Param) -> Param:
        self.params[p.name] = p
        return p

    def prepare(self, max_frames: int) -> None:
        self.max_frames = max_frames
        for p in self.params.values():
            p.prepare(self.cfg.frame_rate, max_frames)
            p.reset()

    def process(self, x, k: int):
        raise NotImplementedError

    def reset(self) -> None:
        pass

    def silence(self, k: int):
        """``k`` frames of silence of this stage's output type."""
        if self.output_type == MEL:
            return np.full((self.cfg.n_mels, k), np.log(self.cfg.log_floor), dtype=np.float32)
        return np.zeros(k * self.cfg.hop, dtype=np.float32)

    def describe(self) -> str:
        return self.type_name


class Source(Stage):
    """A stage with no input. ``length_frames`` is the natural length of a
    finite source (``None`` when endless, e.g. looped or live)."""

    input_type = None
    live_only = False

    @property
    def length_frames(self) -> int | None:
        return None

    def close(self) -> None:
        pass
