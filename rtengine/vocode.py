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


def read_frames(stream, n_mels: int, max_frames: int = 16):
    """Yield log-mel frames ``(n_mels, k)`` float32 from a binary stream of raw
    float32 values (``n_mels`` per frame, native byte order) as they arrive:
    each read returns what the pipe holds (up to ``max_frames`` frames), so a
    producer's frames are vocoded without waiting for more. A trailing partial
    frame at the end of the stream is an error."""
    size = 4 * n_mels
    read = getattr(stream, "read1", stream.read)
    pending = b""
    while True:
        data = read(size * max_frames)
        if not data:
            break
        pending += data
        whole = len(pending) - len(pending) % size
        if whole:
            yield np.frombuffer(pending[:whole], dtype=np.float32).reshape(-1, n_mels).T
            pending = pending[whole:]
    if pending:
        raise UserError(f"standard input ended inside a frame ({len(pending)} of {size} bytes): "
                        f"expected raw float32 frames of {n_mels} values")


class StreamVocoder:
    """Log-mel frames in as they come, audio out as soon as it is ready:
    the engine's chain (mel stream source → vocoder stage) run frame-synchronously.

    ``feed(frames)`` returns the audio those frames complete (the vocoder's
    latency is removed, so the first call returns less); ``finish()`` returns
    the rest. The concatenation is the same audio ``rtengine vocode mel.npy``
    writes for the same frames: ``(T - 1) * hop`` samples for ``T`` frames.
    """

    def __init__(self, cfg: AudioConfig, vocoder: VocoderStage):
        from .stages.sources import MelStreamSource

        self.cfg = cfg
        self.source = MelStreamSource("source", cfg, {"buffer_frames": 64})
        self.engine = Engine(cfg, self.source, [vocoder])
        self.engine.prepare(16)
        self.latency = self.engine.latency_samples
        self.frames = 0           # frames fed
        self._skip = self.latency
        self._written = 0

    def _emit(self, audio: np.ndarray, limit: int | None = None) -> np.ndarray:
        drop = min(self._skip, len(audio))
        self._skip -= drop
        audio = audio[drop:]
        if limit is not None:
            audio = audio[:max(0, limit - self._written)]
        self._written += len(audio)
        return guard_output(audio)

    def feed(self, frames: np.ndarray) -> np.ndarray:
        frames = np.nan_to_num(np.asarray(frames, dtype=np.float32), nan=np.log(self.cfg.log_floor))
        parts = []
        for j in range(0, frames.shape[1], 16):
            chunk = frames[:, j:j + 16]
            self.source.push(chunk)
            parts.append(self._emit(self.engine.render_frames(chunk.shape[1])))
        self.frames += frames.shape[1]
        return np.concatenate(parts) if parts else np.zeros(0, np.float32)

    def finish(self) -> np.ndarray:
        """The tail held by the vocoder's latency (silence follows the last frame)."""
        self.source.eof = True
        total = max(0, (self.frames - 1) * self.cfg.hop)
        extra = -(-max(0, total + self.latency - self.frames * self.cfg.hop) // self.cfg.hop)
        tail = self.engine.render_frames(extra) if extra else np.zeros(0, np.float32)
        return self._emit(tail, limit=total)


def vocode_stdin(cfg: AudioConfig, vocoder: VocoderStage, output: str, stream=None) -> tuple[int, float]:
    """Vocode raw float32 log-mel frames from ``stream`` (default stdin) into
    ``output``: an audio file (written as the audio comes, renamed into place
    at the end) or ``-`` (raw float32 samples on stdout). Returns
    ``(frames, seconds of audio)``."""
    import sys
    from contextlib import contextmanager

    @contextmanager
    def sink():
        """A ``write(samples)`` for the output, open while the stream runs."""
        if output == "-":
            out = sys.stdout.buffer

            def write(y):
                out.write(y.tobytes())
                out.flush()
            yield write
            return
        import soundfile as sf

        from .io import atomic_path, check_audio_suffix

        fmt, subtype = check_audio_suffix(Path(output))
        with atomic_path(output) as tmp, sf.SoundFile(tmp, "w", cfg.sample_rate, 1, subtype=subtype,
                                                     format=fmt) as f:
            yield f.write

    sv = StreamVocoder(cfg, vocoder)
    n = 0
    with sink() as write:
        for frames in read_frames(stream or sys.stdin.buffer, cfg.n_mels):
            y = sv.feed(frames)
            write(y)
            n += len(y)
        y = sv.finish()
        write(y)
        n += len(y)
    return sv.frames, n / cfg.sample_rate


def play_stdin(cfg: AudioConfig, vocoder: VocoderStage, device=None, block_size: int = 256,
               latency_ms: float | None = None, record: str | None = None, status: bool = True) -> dict:
    """Vocode raw float32 log-mel frames from stdin to the sound card, as they
    arrive, through the output stage's limiter; stops once the input has ended
    and its last frame has been heard. Returns the player's statistics."""
    from .engine.live import LivePlayer
    from .stages.output import OutputStage
    from .stages.sources import MelStreamSource

    src = MelStreamSource("source", cfg, {"stdin": True})
    engine = Engine(cfg, src, [vocoder, OutputStage("output", cfg)])
    tail = -(-engine.latency_samples // cfg.hop) + 1
    player = None
    end = []    # the engine sample at which the last frame and its latency tail are out

    def heard() -> bool:
        if not end and src.eof and src.queued == 0 and engine.frame >= src.pushed + tail:
            end.append(engine.frame * cfg.hop)
        return bool(end) and player.samples_out >= end[0]

    player = LivePlayer(engine, device=device, block_size=block_size, latency_ms=latency_ms,
                        record=record, status=status, stop_when=heard)
    src.read_stdin()
    return player.run()
