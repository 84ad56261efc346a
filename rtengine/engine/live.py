"""Live playback: a render thread, a lock-free ring and the sound-card callback.

::

    render thread ──render_frames──► Ring (preallocated) ──copy──► callback ──► card
                                                                     └─copy──► tap ring ──► --record

The render thread keeps the ring filled to ``target`` samples (the buffering
latency) by rendering whole frames; it releases the GIL inside numba/numpy.
Before the stream starts, every object alive (the models, torch, numpy: some
200 000) is moved out of the cyclic garbage collector's reach
(``gc.freeze``): a full collection over them holds the GIL for about 100 ms
on a small CPU, twice the default ring, and would starve the callback.
The sounddevice callback only copies from the ring into the card's buffer
(and into the tap ring for ``--record``); it allocates nothing sizeable, does
not log, takes no lock, and counts an underrun whenever the ring holds less
than a block (the rest of the block is silence).
"""

from __future__ import annotations

import gc
import json
import sys
import threading
import time
from pathlib import Path

import numpy as np

from ..errors import UserError
from .chain import Engine

STALL_S = 2.0       # seconds without a device callback after which play gives up
from .ring import Ring


class LivePlayer:
    """Play an engine on a sound card.

    Args:
        engine: a built (not necessarily prepared) engine.
        device: output device (index, or a name substring such as ``"JACK"``).
        block_size: samples per callback.
        latency_ms: ring fill target (buffering between render thread and
            callback); default max(4 hops, 3 blocks) plus the stages'
            ``burst_ms`` (measured when the engine is prepared).
        duration: stop after this many seconds of audio (None: until Ctrl-C).
        record: write exactly what was sent to the card to this file.
        status: print a live status line on stderr.
        stop_when: called every 50 ms; playing stops when it returns True
            (e.g. a stream's input has ended and been heard).
    """

    def __init__(self, engine: Engine, device=None, block_size: int = 256,
                 latency_ms: float | None = None, duration: float | None = None,
                 record: str | None = None, status: bool = True, osc=None, stop_when=None):
        if block_size < 1:
            raise UserError(f"--block-size must be at least 1, got {block_size}")
        self.engine = engine
        self.cfg = engine.cfg
        self.device = device
        self.block_size = int(block_size)
        sr, hop = self.cfg.sample_rate, self.cfg.hop
        if not engine.prepared:    # before the ring is sized: prepare measures the stages' bursts
            engine.prepare(8)
        if latency_ms is None:
            # plus the stages' bursts (a chunked decoder's whole chunk in one call)
            target = max(4 * hop, 3 * self.block_size) + int(np.ceil(engine.burst_ms * sr / 1000.0))
        else:
            if latency_ms <= 0:
                raise UserError(f"--latency must be positive (ms), got {latency_ms:g}")
            target = int(round(latency_ms * sr / 1000.0))
        target = max(target, self.block_size + hop)
        self.target = -(-target // hop) * hop  # whole frames
        self.duration = duration
        self.record = record
        self.status = status
        self.osc = osc
        self.stop_when = stop_when
        self.ring = Ring(self.target + 8 * hop + self.block_size)
        self.tap = Ring(sr * 4) if record else None
        self._tap_chunks: list[np.ndarray] = []
        self.blocks = 0
        self.underruns = 0
        self._underrun_blocks = np.zeros(64, dtype=np.int64)    # when the first 64 happened
        self.device_underflows = 0
        self.samples_out = 0
        self.busy = 0.0
        self.rendered = 0
        self.peak_load = 0.0
        self.tap_t0 = None
        self.gc_collections = 0
        self.gc_pause_max = 0.0
        self.gc_frozen = 0
        self._gc_t0 = 0.0
        self._stop = threading.Event()
        self._done = threading.Event()
        self._max_blocks = None if duration is None else -(-int(round(duration * sr)) // self.block_size)

    # -- threads ------------------------------------------------------------
    def _render_loop(self) -> None:
        hop = self.cfg.hop
        buf = np.zeros(8 * hop, dtype=np.float32)
        nap = hop / self.cfg.sample_rate / 4
        while not self._stop.is_set():
            free = self.target - self.ring.available
            if free >= hop:
                k = min(free // hop, 8)
                t0 = time.perf_counter()
                self.engine.render_frames(k, buf[:k * hop])
                dt = time.perf_counter() - t0
                self.ring.write(buf[:k * hop])
                self.busy += dt
                self.rendered += k * hop
                self.peak_load = max(self.peak_load, dt / (k * hop / self.cfg.sample_rate))
            else:
                time.sleep(nap)

    def _callback(self, outdata, frames, time_info, status) -> None:
        # audio thread: copy, count, nothing else
        if status.output_underflow:
            self.device_underflows += 1
        if self.tap_t0 is None:
            self.tap_t0 = time.monotonic()
        out = outdata[:, 0]
        n = self.ring.read_into(out)
        if n < frames:
            out[n:] = 0.0
            if self.underruns < len(self._underrun_blocks):
                self._underrun_blocks[self.underruns] = self.blocks
            self.underruns += 1
        if outdata.shape[1] > 1:
            outdata[:, 1:] = outdata[:, :1]
        if self.tap is not None:
            self.tap.write(out)
        self.blocks += 1
        self.samples_out += frames
        if self._max_blocks is not None and self.blocks >= self._max_blocks:
            self._done.set()

    def _gc_watch(self, phase: str, info: dict) -> None:
        # gc callback: count collections and their longest pause
        if phase == "start":
            self._gc_t0 = time.perf_counter()
        else:
            self.gc_collections += 1
            self.gc_pause_max = max(self.gc_pause_max, time.perf_counter() - self._gc_t0)

    def _drain_tap(self) -> None:
        if self.tap is not None and self.tap.available:
            chunk = np.empty(self.tap.available, dtype=np.float32)
            self.tap.read_into(chunk)
            self._tap_chunks.append(chunk)

    # -- run -------------------------------------------------------------------
    def run(self) -> dict:
        import sounddevice as sd

        sys.setswitchinterval(0.001)  # hand the GIL to the audio thread promptly
        eng = self.engine
        start_input = getattr(eng.source, "start", None)
        # prefill so the first callbacks find a full ring
        hop = self.cfg.hop
        while self.ring.available + hop <= self.target:
            self.ring.write(eng.render_frames(1))
        gc.collect()
        gc.freeze()                   # see the module docstring
        self.gc_frozen = gc.get_freeze_count()
        gc.callbacks.append(self._gc_watch)
        try:
            stream = sd.OutputStream(samplerate=self.cfg.sample_rate, blocksize=self.block_size,
                                     device=self.device, channels=1, dtype="float32",
                                     callback=self._callback, latency="low")
        except Exception as e:
            self._gc_release()
            raise UserError(f"cannot open output device {self.device!r}: {e}") from None
        if start_input is not None:
            start_input(device=self.device, blocksize=self.block_size)
        render = threading.Thread(target=self._render_loop, name="render", daemon=True)
        render.start()
        self.device_latency = float(stream.latency)
        t_start = time.monotonic()
        interrupted = False
        self.stalled_s = None
        # a device that stops calling back (its server or driver went away)
        # would leave the loop waiting for ever: give up after this long
        stall_limit = max(STALL_S, 20 * self.block_size / self.cfg.sample_rate)
        stream.start()
        try:
            last = 0.0
            seen, seen_t = -1, time.monotonic()
            while not self._done.is_set():
                self._done.wait(0.05)
                if self.stop_when is not None and self.stop_when():
                    self._done.set()
                self._drain_tap()
                now = time.monotonic()
                if self.blocks != seen:
                    seen, seen_t = self.blocks, now
                elif now - seen_t > stall_limit:
                    self.stalled_s = now - seen_t
                    self._done.set()
                if self.status and now - last >= 0.5:
                    last = now
                    self._print_status()
        except KeyboardInterrupt:
            interrupted = True
        finally:
            # a stalled stream is left as it is: stopping it waits on the
            # device that went away (PortAudio's JACK backend never returns)
            if self.stalled_s is None:
                stream.stop()
                stream.close()
            self._stop.set()
            render.join(timeout=2.0)
            eng.close()
            self._gc_release()
        self._drain_tap()
        if self.status:
            self._print_status()
            print(file=sys.stderr)
        self.wall = time.monotonic() - t_start
        if self.record:
            from ..io import write_audio
            audio = np.concatenate(self._tap_chunks) if self._tap_chunks else np.zeros(0, np.float32)
            write_audio(self.record, audio, self.cfg.sample_rate)
        st = self.stats()
        st["interrupted"] = interrupted
        st["stalled"] = self.stalled_s is not None
        return st

    def _gc_release(self) -> None:
        if self._gc_watch in gc.callbacks:
            gc.callbacks.remove(self._gc_watch)
        gc.unfreeze()

    def _print_status(self) -> None:
        sr = self.cfg.sample_rate
        t = self.samples_out / sr
        load = self.busy / max(self.rendered / sr, 1e-9)
        osc = ""
        if self.osc is not None:
            s = self.osc.stats
            osc = f"  osc {s['applied']} ok {s['malformed']} bad"
        sys.stderr.write(f"\r{t:7.1f} s  blocks {self.blocks}  underruns {self.underruns}  "
                         f"cpu {100 * load:4.1f}%  ring {self.ring.available:5d}/{self.target}{osc}  ")
        sys.stderr.flush()

    def stats(self) -> dict:
        sr = self.cfg.sample_rate
        dev_ms = 1000.0 * getattr(self, "device_latency", 0.0)
        st = {
            "sample_rate": sr,
            "block_size": self.block_size,
            "blocks": self.blocks,
            "seconds": self.samples_out / sr,
            "underruns": self.underruns,
            "underrun_at_s": [round(float(b) * self.block_size / sr, 4)
                              for b in self._underrun_blocks[:min(self.underruns, len(self._underrun_blocks))]],
            "device_underflows": self.device_underflows,
            "cpu_load": self.busy / max(self.rendered / sr, 1e-9),
            "cpu_load_peak": self.peak_load,
            "algorithmic_latency_ms": self.engine.latency_ms,
            "ring_target_ms": 1000.0 * self.target / sr,
            "burst_reserve_ms": self.engine.burst_ms,
            "block_ms": 1000.0 * self.block_size / sr,
            "device_latency_ms": dev_ms,
            "buffering_latency_ms": 1000.0 * (self.target + self.block_size) / sr + dev_ms,
            "nonfinite": self.engine.nonfinite,
            "tap_t0_monotonic": self.tap_t0,
            "gc": {"frozen_objects": self.gc_frozen, "collections": self.gc_collections,
                   "max_pause_ms": 1000.0 * self.gc_pause_max},
        }
        st["total_latency_ms"] = st["algorithmic_latency_ms"] + st["buffering_latency_ms"]
        if self.osc is not None:
            st["osc"] = self.osc.summary()
            st["osc_log"] = [{"t": t, "address": a, "value": v} for t, a, v in self.osc.log]
        return st


def stats_line(stats: dict) -> str:
    """The one-line summary ``play`` prints when it stops."""
    return (f"{stats['blocks']} blocks, {stats['underruns']} underruns, cpu {100 * stats['cpu_load']:.1f}%, "
            f"latency {stats['algorithmic_latency_ms']:.1f} ms algorithmic + "
            f"{stats['buffering_latency_ms']:.1f} ms buffering")


def write_stats(stats: dict, path) -> None:
    from ..io import atomic_path

    with atomic_path(Path(path)) as tmp:
        with open(tmp, "w") as f:
            json.dump(stats, f, indent=2)
