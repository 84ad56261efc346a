"""Vocoder stage: log-mel frames → audio frames, by a model from a registry.

``VOCODER_MODELS`` maps a model name (a patch's ``model:``) to a factory
``factory(cfg, options, seed) -> vocoder``; the vocoder has ``process(log_mel
(n_mels, k)) -> audio (k*R,)``, ``reset()`` and ``latency_samples``. The
model-free PGHI vocoder is ``pghi``; learned vocoders register themselves with
:func:`register_vocoder`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np

from ..control.params import Param
from ..errors import UserError
from .base import AUDIO, MEL, Stage, register_stage

LN10_20 = np.log(10.0) / 20.0

VOCODER_MODELS: dict[str, Callable] = {}
#: model name → option name → (python types, description)
VOCODER_OPTIONS: dict[str, dict] = {}


def register_vocoder(name: str, factory: Callable, options: dict | None = None) -> None:
    """Make ``model: name`` available to patches."""
    VOCODER_MODELS[name] = factory
    VOCODER_OPTIONS[name] = dict(options or {})


def _pghi(cfg, options, seed):
    from ..dsp.vocoder import PGHIVocoder

    mode = options.get("mode", "heap")
    if mode not in ("heap", "lambda"):
        raise UserError(f"pghi: mode must be 'heap' or 'lambda', got {mode!r}")
    return PGHIVocoder(cfg, mode=mode, lookahead=bool(options.get("lookahead", True)),
                       use_lambda=bool(options.get("use_lambda", False)), seed=seed,
                       nnls_iter=int(options.get("nnls_iter", 30)),
                       sinusoid_fit=int(options.get("sinusoid_fit", 0)))


register_vocoder("pghi", _pghi, {
    "mode": ((str,), "phase integration: heap (default) or lambda"),
    "lookahead": ((bool,), "one frame of look-ahead for the gradients (default true)"),
    "use_lambda": ((bool,), "random phase on noise bins"),
    "nnls_iter": ((int,), "iterations of the mel inversion (default 30)"),
    "sinusoid_fit": ((int,), "IF below this bin from the mel's sinusoid fit (64: low notes in tune; default 0, off)"),
})


MODELS_DIR = Path(__file__).resolve().parents[2] / "models"


def _pgvoc(name: str):
    """Factory of a shipped phase-gradient network under ``models/<name>/``."""
    def make(cfg, options, seed):
        from ..neural_vocoder import NeuralPGVocoder

        mode = options.get("mode", "heap")
        if mode not in ("heap", "lambda"):
            raise UserError(f"{name}: mode must be 'heap' or 'lambda', got {mode!r}")
        return NeuralPGVocoder(cfg, MODELS_DIR / name, mode=mode,
                               use_lambda=bool(options.get("use_lambda", False)), seed=seed,
                               device=str(options.get("device", "cpu")),
                               threads=options.get("threads"),
                               lookahead=options.get("lookahead"),
                               sinusoid_fit=options.get("sinusoid_fit"))
    return make


def shipped_pgvoc_models() -> list[str]:
    """Names of the PG vocoder models under ``models/`` (a ``card.yaml`` of
    type ``pgvoc`` beside ``weights.pt``)."""
    import yaml

    names = []
    for card in sorted(MODELS_DIR.glob("*/card.yaml")):
        if (card.parent / "weights.pt").exists():
            meta = yaml.safe_load(card.read_text()) or {}
            if isinstance(meta, dict) and meta.get("type") == "pgvoc":
                names.append(card.parent.name)
    return names


for _name in shipped_pgvoc_models():
    register_vocoder(_name, _pgvoc(_name), {
        "mode": ((str,), "phase integration: heap (default) or lambda"),
        "use_lambda": ((bool,), "random phase on noise bins"),
        "device": ((str,), "cpu, cuda or auto"),
        "threads": ((int,), "torch threads (1 for live use)"),
        "lookahead": ((bool,), "one frame of integrator look-ahead (default: the model card's)"),
        "sinusoid_fit": ((int,), "Δm below this bin from the mel's sinusoid fit, 0 = off (default: the model card's)"),
    })


#: the vocoder of ``rtengine vocode`` and of a vocoder stage that names none:
#: the shipped neural PG vocoder, or the model-free one where its weights are absent
DEFAULT_VOCODER = "pgvoc-22k" if "pgvoc-22k" in VOCODER_MODELS else "pghi"


@register_stage("vocoder")
class VocoderStage(Stage):
    """In: log-mel ``(n_mels, k)``; out: audio ``(k*R,)``.

    Params: ``gain`` (dB) scales the magnitudes before vocoding (an offset on
    the log-mel), smoothed per frame."""

    input_type = MEL
    output_type = AUDIO

    def __init__(self, name, cfg, options=None, seed=0, model: str = DEFAULT_VOCODER):
        super().__init__(name, cfg, options, seed)
        if model not in VOCODER_MODELS:
            raise UserError(f"unknown vocoder model {model!r}; available: "
                            f"{', '.join(sorted(VOCODER_MODELS))}")
        self.model = model
        self.add_param(Param("gain", -48.0, 12.0, 0.0, "dB", smoothing=0.05,
                             description="level of the mel fed to the vocoder"))
        self.vocoder = VOCODER_MODELS[model](cfg, self.options, seed)
        self.latency_samples = int(self.vocoder.latency_samples)

    def prepare(self, max_frames: int) -> None:
        super().prepare(max_frames)
        # warm up (numba JIT) and clear
        self.vocoder.process(np.full((self.cfg.n_mels, 2), -5.0, dtype=np.float32))
        self.vocoder.reset()

    def reset(self) -> None:
        self.vocoder.reset()

    def process(self, x, k: int):
        g = self.params["gain"].frames(k)[:, 0]
        if g.any():
            x = x + (g * LN10_20).astype(np.float32)[None, :]
        return np.asarray(self.vocoder.process(x), dtype=np.float32)

    def describe(self):
        return f"vocoder ({self.model})"
