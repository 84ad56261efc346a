"""Rendering clips: FluidSynth batches and the user's own audio.

FluidSynth spends a noticeable time per launch loading the soundfont, so a
batch of clips is written as **one** MIDI file, clip ``k`` starting at
``LEAD + k * slot`` seconds, rendered in one run with reverb and chorus off
(``-R 0 -C 0``: no tail reaches the next clip) and cut afterwards. The slot is
the clip length plus a gap: the release after the cut sounds on in the gap
until an all-sound-off (controller 120), 0.2 s before the next clip, stops
every voice, so even multi-second pad releases never reach the next clip.

Each clip is mixed to mono, checked for silence, peak-normalised, faded out
over the last 10 ms (the cut may fall inside a release) and written to WAV
atomically.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass
from math import gcd
from pathlib import Path

import numpy as np
import soundfile as sf

from ..errors import UserError
from .midi import MidiFile
from .presets import ClipSpec, hash_split

SAMPLE_RATE = 22050
LEAD = 0.5          # seconds of silence before the first clip of a render
GAP = 0.5           # seconds between a clip's end and the next clip's start
KILL_BEFORE_NEXT = 0.2  # all-sound-off this long before the next clip starts
SILENT_PEAK = 1e-4  # -80 dBFS: a clip this quiet rendered nothing
FADE_OUT = 0.010    # seconds
DEFAULT_SOUNDFONT = "/usr/share/sounds/sf2/FluidR3_GM.sf2"


@dataclass
class RenderOptions:
    out_dir: str
    soundfont: str = DEFAULT_SOUNDFONT
    gain: float = 0.5
    normalize: str = "peak"      # "peak" (to peak_dbfs) or "none" (only avoid clipping)
    peak_dbfs: float = -1.0
    subtype: str = "PCM_16"      # or "FLOAT"
    sample_rate: int = SAMPLE_RATE


def fluidsynth_binary() -> str:
    exe = shutil.which("fluidsynth")
    if exe is None:
        raise UserError("the fluidsynth command was not found; install it "
                        "(Debian: apt install fluidsynth fluid-soundfont-gm)")
    return exe


def check_soundfont(path: str) -> str:
    p = Path(path)
    if not p.is_file():
        raise UserError(f"soundfont {path} does not exist (pass one with --soundfont)")
    if p.suffix.lower() not in (".sf2", ".sf3"):
        raise UserError(f"soundfont {path}: expected a .sf2 or .sf3 file")
    return str(p.resolve())


def batch_midi(clips: list[ClipSpec]) -> tuple[MidiFile, list[float]]:
    """One MIDI file for a batch; returns it and each clip's start time (s)."""
    mid = MidiFile()
    starts, t0 = [], LEAD
    for c in clips:
        starts.append(t0)
        for t, ch, prog in c.programs:
            mid.program(t0 + t, ch, prog)
        for ch in {ch for _, _, ch, _, _ in c.notes} | {ch for _, ch, _ in c.programs}:
            mid.control(t0, ch, 7, 100)    # volume
            mid.control(t0, ch, 10, 64)    # pan centre
            mid.control(t0, ch, 91, 0)     # reverb send
            mid.control(t0, ch, 93, 0)     # chorus send
            if "detune_cents" in c.labels:  # set for every clip of a detuned set
                mid.pitch_bend(t0, ch, c.labels["detune_cents"])
        for t, dur, ch, pitch, vel in c.notes:
            mid.note(t0 + t, min(dur, c.duration - t), ch, pitch, vel)
        mid.all_notes_off(t0 + c.duration)
        # long releases (pads, bells) would reach the next clip: silence them
        # inside the gap, after the cut
        mid.all_sound_off(t0 + c.duration + GAP - KILL_BEFORE_NEXT)
        t0 += c.duration + GAP
    return mid, starts


def run_fluidsynth(midi_path: str, wav_path: str, opts: RenderOptions) -> None:
    """``fluidsynth -ni -F out.wav -r SR -R 0 -C 0 -g GAIN -O float sf2 file.mid``."""
    cmd = [fluidsynth_binary(), "-ni", "-F", wav_path, "-r", str(opts.sample_rate),
           "-R", "0", "-C", "0", "-g", str(opts.gain), "-O", "float",
           opts.soundfont, midi_path]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=3600)
    if res.returncode != 0 or not Path(wav_path).exists():
        tail = (res.stderr or res.stdout).strip().splitlines()[-3:]
        raise RuntimeError(f"fluidsynth failed ({res.returncode}): {' | '.join(tail)}")


def finish_clip(x: np.ndarray, opts: RenderOptions) -> tuple[np.ndarray | None, dict]:
    """Silence check, normalisation and fade-out of one mono clip.

    Returns ``(audio or None if silent, info)`` with the clip's level before
    normalisation (``peak_db``, ``rms_db``, dBFS) and the gain applied (``gain_db``).
    """
    x = np.asarray(x, dtype=np.float64)
    peak = float(np.max(np.abs(x))) if len(x) else 0.0
    rms = float(np.sqrt(np.mean(x**2))) if len(x) else 0.0
    info = {"peak_db": round(20 * np.log10(max(peak, 1e-12)), 2),
            "rms_db": round(20 * np.log10(max(rms, 1e-12)), 2)}
    if peak < SILENT_PEAK:
        return None, info
    target = 10 ** (opts.peak_dbfs / 20)
    gain = target / peak if (opts.normalize == "peak" or peak > target) else 1.0
    y = x * gain
    n_fade = min(len(y), int(FADE_OUT * opts.sample_rate))
    if n_fade > 1:
        y[-n_fade:] *= 0.5 + 0.5 * np.cos(np.pi * np.arange(n_fade) / (n_fade - 1))
    info["gain_db"] = round(20 * np.log10(gain), 2)
    return y.astype(np.float32), info


def write_wav(path: Path, y: np.ndarray, opts: RenderOptions) -> None:
    """Write mono WAV atomically (temp file in the same folder, then rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}.", suffix=".wav")
    os.close(fd)
    try:
        sf.write(tmp, y, opts.sample_rate, subtype=opts.subtype, format="WAV")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def clip_path(split: str, clip_id: str) -> str:
    return f"audio/{split}/{clip_id}.wav"


def _row(clip_id, split, preset, n, opts, labels, info) -> dict:
    return {"id": clip_id, "path": clip_path(split, clip_id), "split": split, "preset": preset,
            "duration": round(n / opts.sample_rate, 6), "sample_rate": opts.sample_rate,
            "labels": labels, **info}


def render_batch(clips: list[ClipSpec], opts: RenderOptions) -> tuple[list[dict], list[dict], float]:
    """Render a batch in one FluidSynth run and cut it into clips.

    Returns ``(manifest rows, skipped rows, seconds spent in fluidsynth)``.
    """
    out = Path(opts.out_dir)
    tmp_dir = out / ".tmp"
    tmp_dir.mkdir(parents=True, exist_ok=True)
    mid, starts = batch_midi(clips)
    with tempfile.TemporaryDirectory(dir=tmp_dir) as td:
        midi_path, wav_path = os.path.join(td, "batch.mid"), os.path.join(td, "batch.wav")
        mid.save(midi_path)
        t = time.perf_counter()
        run_fluidsynth(midi_path, wav_path, opts)
        synth_s = time.perf_counter() - t
        audio, sr = sf.read(wav_path, dtype="float32", always_2d=True)
    if sr != opts.sample_rate:
        raise RuntimeError(f"fluidsynth wrote {sr} Hz, expected {opts.sample_rate}")
    mono = audio.mean(axis=1)
    rows, skipped = [], []
    for c, t0 in zip(clips, starts):
        a = int(round(t0 * sr))
        n = int(round(c.duration * sr))
        seg = mono[a:a + n]
        if len(seg) < n:
            seg = np.pad(seg, (0, n - len(seg)))
        y, info = finish_clip(seg, opts)
        if y is None:
            skipped.append({"id": c.id, "reason": "silent", **info})
            continue
        write_wav(out / clip_path(c.split, c.id), y, opts)
        rows.append(_row(c.id, c.split, c.preset, n, opts, c.labels, info))
    return rows, skipped, synth_s


# ---------------------------------------------------------------- user audio
_SAFE = re.compile(r"[^A-Za-z0-9_.-]+")


def folder_sources(folder: str) -> list[str]:
    """Audio files soundfile can read under ``folder`` (recursive, sorted,
    relative paths)."""
    root = Path(folder)
    if not root.is_dir():
        raise UserError(f"--from-folder {folder}: not a folder")
    out = []
    for p in sorted(root.rglob("*")):
        if not p.is_file() or any(part.startswith(".") for part in p.relative_to(root).parts):
            continue
        try:
            sf.info(str(p))  # readable by soundfile (libsndfile): wav, flac, ogg, mp3, aiff...
        except Exception:
            continue
        out.append(str(p.relative_to(root)))
    return out


def resample(x: np.ndarray, sr_in: int, sr_out: int) -> np.ndarray:
    """Polyphase resampling (scipy's Kaiser-windowed FIR)."""
    if sr_in == sr_out:
        return x
    from scipy.signal import resample_poly

    g = gcd(sr_in, sr_out)
    return resample_poly(x, sr_out // g, sr_in // g)


def ingest_file(folder: str, rel: str, seed: int, clip_seconds: float, opts: RenderOptions,
                silence_db: float = -60.0) -> tuple[list[dict], list[dict], float]:
    """Cut one of the user's files into non-overlapping mono 22050 Hz clips.

    All clips of a file go to the same split (hash of its relative path), so no
    recording leaks across splits. A clip whose RMS is below ``silence_db``
    dBFS, or a tail shorter than half a clip, is dropped.
    """
    t = time.perf_counter()
    try:
        x, sr = sf.read(os.path.join(folder, rel), dtype="float32", always_2d=True)
    except Exception as e:  # unreadable file: flag it, keep going
        return [], [{"id": rel, "source": rel, "reason": f"unreadable: {e}"}], 0.0
    x = resample(x.mean(axis=1).astype(np.float64), sr, opts.sample_rate)
    split = hash_split(rel, seed)
    stem = _SAFE.sub("_", str(Path(rel).with_suffix(""))).strip("_")[:80]
    n = int(round(clip_seconds * opts.sample_rate))
    rows, skipped = [], []
    for k, a in enumerate(range(0, len(x), n)):
        seg = x[a:a + n]
        cid = f"folder-{stem}-{k:04d}"
        if len(seg) < n // 2:
            break
        seg = np.pad(seg, (0, n - len(seg)))
        rms_db = 20 * np.log10(max(float(np.sqrt(np.mean(seg**2))), 1e-12))
        y, info = finish_clip(seg, opts) if rms_db >= silence_db else (None, {"rms_db": round(rms_db, 2)})
        if y is None:
            skipped.append({"id": cid, "source": rel, "reason": "silent", **info})
            continue
        write_wav(Path(opts.out_dir) / clip_path(split, cid), y, opts)
        labels = {"source": rel, "source_sample_rate": sr, "offset_seconds": round(a / opts.sample_rate, 4)}
        rows.append(_row(cid, split, "folder", n, opts, labels, info))
    if not rows and not skipped:
        skipped.append({"id": f"folder-{stem}", "source": rel, "reason": "shorter than half a clip"})
    return rows, skipped, time.perf_counter() - t
