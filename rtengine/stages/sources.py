"""Sources: the built-in example signal, audio files, live input, mel files and
mel streams (stdin or the Python :meth:`MelStreamSource.push` API)."""

from __future__ import annotations

import sys
import threading
from pathlib import Path

import numpy as np

from ..errors import UserError
from .base import AUDIO, MEL, Source, register_source


class _BufferSource(Source):
    """Serves a preloaded buffer frame by frame, looped or padded with silence."""

    output_type = AUDIO
    loop = False

    def _load(self) -> np.ndarray:
        raise NotImplementedError

    def prepare(self, max_frames: int) -> None:
        super().prepare(max_frames)
        self.data = self._load()
        self.pos = 0

    def reset(self) -> None:
        self.pos = 0

    @property
    def length_frames(self):
        if self.loop:
            return None
        data = self.data if hasattr(self, "data") else self._load()
        return -(-len(data) // self.cfg.hop)

    def process(self, x, k: int):
        n = k * self.cfg.hop
        out = np.zeros(n, dtype=np.float32)
        data = self.data
        L = len(data)
        filled = 0
        while filled < n:
            if self.pos >= L:
                if not self.loop or L == 0:
                    break
                self.pos = 0
            m = min(n - filled, L - self.pos)
            out[filled:filled + m] = data[self.pos:self.pos + m]
            filled += m
            self.pos += m
        return out


@register_source("example")
class ExampleSource(_BufferSource):
    """The engine's built-in example signal (:func:`rtengine.signals.test_signal`):
    tones with vibrato, clicks and noise, deterministic from the seed."""

    options_schema = {"seconds": ((int, float), "length in seconds (default 8)"),
                      "loop": ((bool,), "repeat forever"),
                      "seed": ((int,), "seed of the signal (default: the render seed)")}

    def __init__(self, name, cfg, options=None, seed=0):
        super().__init__(name, cfg, options, seed)
        self.loop = bool(self.options.get("loop", False))

    def _load(self):
        from ..signals import test_signal
        seconds = float(self.options.get("seconds", 8.0))
        n = int(round(seconds * self.cfg.sample_rate))
        # the generator lays out its events over at least 10 s; cut to length
        x = test_signal(self.cfg.sample_rate, max(seconds, 10.0),
                        int(self.options.get("seed", self.seed)))
        return np.ascontiguousarray(x[:n], dtype=np.float32)

    def describe(self):
        return f"example signal ({self.options.get('seconds', 8.0)} s)"


@register_source("file")
class FileSource(_BufferSource):
    """An audio file, resampled to the patch's rate, mono, optionally looped."""

    options_schema = {"path": ((str,), "audio file (relative to the patch)"),
                      "loop": ((bool,), "repeat forever")}
    required_options = ("path",)

    def __init__(self, name, cfg, options=None, seed=0):
        super().__init__(name, cfg, options, seed)
        self.loop = bool(self.options.get("loop", False))
        self.path = Path(self.options["path"])

    def _load(self):
        from ..io import read_audio
        return read_audio(self.path, self.cfg.sample_rate)

    def describe(self):
        return f"file {self.path}" + (" (looped)" if self.loop else "")


@register_source("input")
class InputSource(Source):
    """Live sound-card input (sounddevice InputStream, opened on ``start``).

    The input callback writes into a ring buffer; :meth:`process` takes one
    hop per frame from it, or silence (counted in ``starved``) when the card
    has not delivered yet."""

    output_type = AUDIO
    live_only = True
    options_schema = {"device": ((str, int), "input device name or index"),
                      "channel": ((int,), "input channel (0-based, default 0)")}

    def prepare(self, max_frames: int) -> None:
        super().prepare(max_frames)
        from ..engine.ring import Ring
        self.ring = Ring(self.cfg.sample_rate * 2)
        self.starved = 0
        self.stream = None

    def start(self, device=None, blocksize: int = 0) -> None:
        import sounddevice as sd

        channel = int(self.options.get("channel", 0))
        dev = self.options.get("device", device)
        ring = self.ring

        def callback(indata, frames, time_info, status):  # audio thread: copy only
            ring.write(indata[:, channel])

        try:
            self.stream = sd.InputStream(samplerate=self.cfg.sample_rate, device=dev,
                                         channels=channel + 1, dtype="float32",
                                         blocksize=blocksize, callback=callback)
            self.stream.start()
        except Exception as e:
            raise UserError(f"cannot open input device {dev!r}: {e}") from None

    def process(self, x, k: int):
        n = k * self.cfg.hop
        out = np.zeros(n, dtype=np.float32)
        if self.ring.read_into(out) < n:
            self.starved += 1
        return out

    def reset(self) -> None:
        self.ring.clear()

    def close(self) -> None:
        if self.stream is not None:
            self.stream.stop()
            self.stream.close()
            self.stream = None

    def describe(self):
        return f"sound-card input {self.options.get('device', '(default)')}"


@register_source("mel_file")
class MelFileSource(Source):
    """A log-mel ``.npy`` of shape ``(n_mels, T)``, one column per frame."""

    output_type = MEL
    options_schema = {"path": ((str,), ".npy file (relative to the patch)"),
                      "loop": ((bool,), "repeat forever")}
    required_options = ("path",)

    def __init__(self, name, cfg, options=None, seed=0):
        super().__init__(name, cfg, options, seed)
        self.path = Path(self.options["path"])
        self.loop = bool(self.options.get("loop", False))

    def prepare(self, max_frames: int) -> None:
        super().prepare(max_frames)
        from ..io import read_mel
        self.mel = read_mel(self.path, self.cfg)
        self.pos = 0

    @property
    def length_frames(self):
        if self.loop:
            return None
        if not hasattr(self, "mel"):
            from ..io import read_mel
            self.mel = read_mel(self.path, self.cfg)
        return self.mel.shape[1]

    def reset(self) -> None:
        self.pos = 0

    def process(self, x, k: int):
        out = self.silence(k)
        T = self.mel.shape[1]
        for j in range(k):
            if self.pos >= T and self.loop:
                self.pos = 0
            if self.pos < T:
                out[:, j] = self.mel[:, self.pos]
                self.pos += 1
        return out

    def describe(self):
        return f"mel file {self.path}"


@register_source("mel_stream")
class MelStreamSource(Source):
    """Log-mel frames pushed by another program: raw float32 from stdin
    (``n_mels`` values per frame, native byte order) or :meth:`push` from Python.

    When no frame is waiting the source emits silence (log floor) and counts
    it in ``starved``; the engine's clock never waits for the producer."""

    output_type = MEL
    options_schema = {"stdin": ((bool,), "read raw float32 frames from standard input"),
                      "buffer_frames": ((int,), "frames the queue holds (default 4096)")}

    def __init__(self, name, cfg, options=None, seed=0):
        super().__init__(name, cfg, options, seed)
        cap = int(self.options.get("buffer_frames", 4096))
        self._q = np.zeros((cap, cfg.n_mels), dtype=np.float32)
        self._w = 0
        self._r = 0
        self._lock = threading.Lock()  # producers only; the render side never blocks on it
        self.starved = 0
        self.dropped = 0
        self.eof = False
        self._thread = None

    @property
    def queued(self) -> int:
        return self._w - self._r

    @property
    def pushed(self) -> int:
        """Frames accepted so far."""
        return self._w

    def push(self, frames: np.ndarray) -> int:
        """Queue log-mel frames ``(n_mels, k)``; returns frames accepted
        (frames that do not fit are dropped and counted)."""
        frames = np.asarray(frames, dtype=np.float32)
        if frames.ndim == 1:
            frames = frames[:, None]
        if frames.shape[0] != self.cfg.n_mels:
            raise UserError(f"mel stream: frames have {frames.shape[0]} bands, "
                            f"expected {self.cfg.n_mels} ({self.cfg.describe()})")
        with self._lock:
            cap = len(self._q)
            k = min(frames.shape[1], cap - (self._w - self._r))
            for j in range(k):
                self._q[(self._w + j) % cap] = frames[:, j]
            self._w += k
            self.dropped += frames.shape[1] - k
        return k

    def read_stdin(self, stream=None, block_until_eof: bool = False) -> None:
        """Read frames from a binary stream (default stdin) in a thread, or
        here until EOF when ``block_until_eof``."""
        stream = stream or sys.stdin.buffer
        size = 4 * self.cfg.n_mels

        def loop():
            while True:
                while self.queued >= len(self._q) - 1:
                    if block_until_eof:
                        break
                    threading.Event().wait(0.005)
                data = stream.read(size * 16)
                if not data:
                    break
                while len(data) % size:
                    more = stream.read(size - len(data) % size)
                    if not more:
                        data = data[:len(data) - len(data) % size]
                        break
                    data += more
                if data:
                    f = np.frombuffer(data, dtype=np.float32).reshape(-1, self.cfg.n_mels).T
                    self.push(np.nan_to_num(f, nan=np.log(self.cfg.log_floor)))
            self.eof = True

        if block_until_eof:
            loop()
        else:
            self._thread = threading.Thread(target=loop, daemon=True, name="mel-stdin")
            self._thread.start()

    def process(self, x, k: int):
        out = self.silence(k)
        cap = len(self._q)
        n = min(k, self._w - self._r)
        for j in range(n):
            out[:, j] = self._q[(self._r + j) % cap]
        self._r += n
        if n < k and not self.eof:
            self.starved += 1
        return out

    @property
    def length_frames(self):
        return self.queued if self.eof else None

    def describe(self):
        return "mel stream" + (" (stdin)" if self.options.get("stdin") else "")


@register_source("silence")
class SilenceSource(Source):
    """Silence for ``seconds`` (or endless): the input of a generator stage."""

    output_type = AUDIO
    options_schema = {"seconds": ((int, float), "length in seconds (default: endless)")}

    @property
    def length_frames(self):
        s = self.options.get("seconds")
        return None if s is None else int(round(float(s) * self.cfg.frame_rate))

    def process(self, x, k: int):
        return np.zeros(k * self.cfg.hop, dtype=np.float32)

    def describe(self):
        return "silence"
