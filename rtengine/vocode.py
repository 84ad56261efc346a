"""The ``vocode`` job: audio or mel files in, audio files out, one vocoder.

Each file runs through the live engine's own chain (file or mel-file source →
mel analysis → vocoder stage) and block adapter, in host blocks of
``block_size`` samples, so the output does not depend on the block size and is
what ``rtengine play`` would send to the card.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .config import AudioConfig
from .engine import Engine
from .engine.render import render
from .errors import UserError
from .stages.mel import MelStage
from .stages.sources import FileSource, MelFileSource
from .stages.vocoder import VocoderStage

AUDIO_SUFFIXES = {".wav", ".flac", ".ogg", ".aiff", ".aif", ".mp3", ".opus", ".au", ".caf", ".w64"}


@dataclass
class Job:
    source: Path
    target: Path


def plan_jobs(inputs: list[str], output: str) -> list[Job]:
    """Pair each input file with its output path.

    One file in and ``output`` not a directory: ``output`` is the file. Else
    ``output`` is a directory; files found in an input directory keep their
    path relative to it (with ``.wav``)."""
    paths = [Path(p) for p in inputs]
    for p in paths:
        if not p.exists():
            raise UserError(f"{p}: no such file or directory")
    out = Path(output)
    if len(paths) == 1 and paths[0].is_file() and not out.is_dir():
        return [Job(paths[0], out if out.suffix else out.with_suffix(".wav"))]
    jobs = []
    for p in paths:
        if p.is_dir():
            found = sorted(f for f in p.rglob("*") if f.is_file()
                           and (f.suffix.lower() in AUDIO_SUFFIXES or f.suffix == ".npy"))
            if not found:
                raise UserError(f"{p}: no audio or .npy files in this directory")
            jobs += [Job(f, out / f.relative_to(p).with_suffix(".wav")) for f in found]
        else:
            jobs.append(Job(p, out / p.with_suffix(".wav").name))
    return jobs


def vocode_file(source: Path, cfg: AudioConfig, vocoder: VocoderStage, block: int | None) -> np.ndarray:
    """Vocode one audio or ``.npy`` mel file → float32 audio at ``cfg.sample_rate``,
    as long as the input (a mel of T frames gives ``(T - 1) * hop`` samples)."""
    block = block or 4096
    if source.suffix == ".npy":
        src = MelFileSource("source", cfg, {"path": str(source)})
        stages = [vocoder]
    else:
        src = FileSource("source", cfg, {"path": str(source)})
        stages = [MelStage("mel", cfg), vocoder]
    engine = Engine(cfg, src, stages)
    engine.prepare(max(1, min(64, -(-block // cfg.hop))))   # reads the file, resets the vocoder
    if source.suffix == ".npy":
        length = (src.mel.shape[1] - 1) * cfg.hop
    else:
        length = len(src.data)
    y = render(engine, length + engine.latency_samples, block)[engine.latency_samples:]
    return guard_output(y)


def guard_output(audio: np.ndarray) -> np.ndarray:
    """No NaN or infinite sample, none above 0 dBFS: non-finite samples become 0
    and peaks are clipped to ±1 (a vocoder fed a loud mel can overshoot)."""
    audio = np.nan_to_num(audio, nan=0.0, posinf=0.0, neginf=0.0)
    return np.clip(audio, -1.0, 1.0, out=audio)
