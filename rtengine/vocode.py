"""The ``vocode`` job: audio or mel files in, audio files out, one vocoder.

Inputs are streamed through the same objects a live engine runs, in host blocks
of ``block_size`` output samples; since every frame is computed the same way
whatever block it falls in, the output does not depend on the block size.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np

from .config import AudioConfig
from .dsp.mel import StreamingLogMel
from .errors import UserError
from .io import read_audio, read_mel

AUDIO_SUFFIXES = {".wav", ".flac", ".ogg", ".aiff", ".aif", ".mp3", ".opus", ".au", ".caf", ".w64"}


def make_vocoder(model: str, cfg: AudioConfig, seed: int = 0, **options):
    """A streaming vocoder by name, from the vocoder stage's model registry
    (``pghi``, and every learned model that registered itself)."""
    from .stages.vocoder import VOCODER_MODELS

    if model not in VOCODER_MODELS:
        raise UserError(f"unknown vocoder model {model!r}; available: {', '.join(sorted(VOCODER_MODELS))}")
    return VOCODER_MODELS[model](cfg, options, seed)


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


def mel_frames_from_audio(audio: np.ndarray, cfg: AudioConfig, block: int) -> Iterator[np.ndarray]:
    """Log-mel frames of ``audio`` analysed in blocks of ``block`` input samples."""
    analysis = StreamingLogMel(cfg)
    for i in range(0, len(audio), block):
        frames = analysis.process(audio[i:i + block])
        if frames.shape[1]:
            yield frames
    tail = analysis.flush()
    if tail.shape[1]:
        yield tail


def stream_vocode(frames: Iterator[np.ndarray], vocoder, length: int, block: int) -> np.ndarray:
    """Pull ``block`` output samples at a time from ``vocoder`` fed by ``frames``.

    The output is the vocoder's stream with its latency removed, ``length`` samples."""
    hop = vocoder.cfg.hop
    pending = np.zeros((vocoder.cfg.n_mels, 0), dtype=np.float32)
    fifo: list[np.ndarray] = []
    have = 0
    total = length + vocoder.latency_samples
    out = np.empty(total, dtype=np.float32)
    written = 0
    source_done = False
    while written < total:
        n = min(block, total - written)
        while have < n:                       # render whole frames until the block is ready
            need = -(-(n - have) // hop)
            while pending.shape[1] < need and not source_done:
                nxt = next(frames, None)
                if nxt is None:
                    source_done = True
                else:
                    pending = np.concatenate([pending, nxt], axis=1)
            if pending.shape[1]:
                k = min(need, pending.shape[1])
                chunk = vocoder.process(pending[:, :k])
                pending = pending[:, k:]
            else:
                chunk = vocoder.flush()
                if len(chunk) == 0:
                    chunk = np.zeros(n - have, dtype=np.float32)
            fifo.append(chunk)
            have += len(chunk)
        buf = np.concatenate(fifo)
        out[written:written + n] = buf[:n]
        fifo, have = [buf[n:]], len(buf) - n
        written += n
    return out[vocoder.latency_samples:]


def vocode_file(source: Path, cfg: AudioConfig, vocoder, block: int | None) -> np.ndarray:
    """Vocode one audio or ``.npy`` mel file → float32 audio at ``cfg.sample_rate``."""
    if source.suffix == ".npy":
        mel = read_mel(source, cfg)
        length = (mel.shape[1] - 1) * cfg.hop
        frames = iter([mel[:, i:i + 64] for i in range(0, mel.shape[1], 64)])
    else:
        audio = read_audio(source, cfg.sample_rate)
        length = len(audio)
        frames = mel_frames_from_audio(audio, cfg, block or 4096)
    vocoder.reset()
    return guard_output(stream_vocode(frames, vocoder, length, block or 4096))


def guard_output(audio: np.ndarray) -> np.ndarray:
    """No NaN or infinite sample, none above 0 dBFS: non-finite samples become 0
    and peaks are clipped to ±1 (a vocoder fed a loud mel can overshoot)."""
    audio = np.nan_to_num(audio, nan=0.0, posinf=0.0, neginf=0.0)
    return np.clip(audio, -1.0, 1.0, out=audio)
