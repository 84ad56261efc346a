"""Dataset synthesis: MIDI writer, plans, a real FluidSynth render, resuming."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from rtengine.data import presets as P
from rtengine.data.manifest import load_manifest, read_jsonl
from rtengine.data.midi import DRUM_CHANNEL, MidiFile, read_notes

ROOT = Path(__file__).resolve().parents[1]
TOOL = ROOT / "tools" / "make_dataset.py"
SOUNDFONT = Path("/usr/share/sounds/sf2/FluidR3_GM.sf2")
needs_fluidsynth = pytest.mark.skipif(
    shutil.which("fluidsynth") is None or not SOUNDFONT.exists(),
    reason="needs the fluidsynth command and FluidR3_GM.sf2")


def make_dataset(*args):
    return subprocess.run([sys.executable, str(TOOL), "--no-progress", *map(str, args)],
                          capture_output=True, text=True, timeout=120, cwd=ROOT)


def test_midi_round_trip():
    mid = MidiFile()
    mid.program(0.0, 0, 4)
    mid.note(0.5, 1.0, 0, 60, 100)
    mid.note(2.25, 0.5, DRUM_CHANNEL, 36, 90)
    mid.note(0.5, 1.0, 0, 64, 80)
    data = mid.to_bytes()
    assert data[:4] == b"MThd" and b"MTrk" in data
    assert read_notes(data) == [(0.5, 0, 60, 100), (0.5, 0, 64, 80), (2.25, 9, 36, 90)]
    with pytest.raises(ValueError):
        mid.note(0, 1, 0, 128, 100)


def test_plans_are_deterministic_prefixes_and_nc_test_split_spans_the_range():
    nc = P.plan_nc(0)
    assert len(nc) == 4 * 7 * 61
    assert [c.id for c in nc] == [c.id for c in P.plan_nc(0)]
    test_roots = sorted({c.labels["root"] for c in nc if c.split == "test"})
    assert test_roots[0] < 46 and test_roots[-1] > 85
    # a root's clips all share one split (no pitch leaks between splits)
    by_root = {}
    for c in nc:
        by_root.setdefault(c.labels["root"], set()).add(c.split)
    assert all(len(s) == 1 for s in by_root.values())
    assert [c.id for c in P.plan_notes(3, 10)] == [c.id for c in P.plan_notes(3, 30)[:10]]
    assert [c.id for c in P.plan_notes(3, 10)] != [c.id for c in P.plan_notes(4, 10)]
    splits = [c.split for c in P.plan_notes(0, 600)]
    assert 0.7 < splits.count("train") / 600 < 0.9


def test_phrases_have_structure_and_valid_midi():
    clips = P.plan_phrases(1, 40)
    assert any(c.labels["tempo_bpm"] != clips[0].labels["tempo_bpm"] for c in clips)
    drums = [c for c in clips if "drums" in c.labels["layers"]]
    assert drums and all(any(n[2] == DRUM_CHANNEL for n in c.notes) for c in drums)
    for c in clips:
        assert all(0 <= t < P.PHRASE_SECONDS and 0 <= p <= 127 for t, _, _, p, _ in c.notes)
        mid = MidiFile()
        for t, d, ch, p, v in c.notes:
            mid.note(t, d, ch, p, v)
        assert len(read_notes(mid.to_bytes())) == len(c.notes)


def median_pitch(x, sr):
    import librosa

    f = librosa.yin(x[int(0.1 * sr):int(0.9 * sr)], fmin=50, fmax=2500, sr=sr, frame_length=2048)
    return 69 + 12 * np.log2(np.median(f) / 440)


@pytest.fixture(scope="module")
def nc8(tmp_path_factory):
    out = tmp_path_factory.mktemp("nc8")
    res = make_dataset("--preset", "nc", "--limit", 8, "--out", out)
    assert res.returncode == 0, res.stderr
    return out


@needs_fluidsynth
def test_nc_render_manifest_and_pitch(nc8):
    rows = load_manifest(nc8 / "manifest.jsonl")
    assert len(rows) == 8
    for r in rows:
        assert r["preset"] == "nc" and r["sample_rate"] == 22050 and r["duration"] == 1.5
        assert r["split"] in ("train", "val", "test")
        lab = r["labels"]
        assert lab["chord"] == "note" and lab["program"] == 4 and lab["instrument"] == "rhodes"
        info = sf.info(r["abspath"])
        assert (info.samplerate, info.channels, info.frames) == (22050, 1, int(1.5 * 22050))
        x, sr = sf.read(r["abspath"])
        assert 0.5 < np.max(np.abs(x)) <= 10 ** (-1 / 20) + 1e-3  # normalised, no clipping
        est = median_pitch(x, sr)
        assert abs(est - lab["pitches"][0]) < 0.5, (r["id"], est)
    info = json.loads((nc8 / "dataset.json").read_text())
    assert info["clips"] == 8 and info["settings"]["preset"] == "nc"


def test_pitch_bend_bytes_and_detuned_plans():
    mid = MidiFile()
    mid.pitch_bend(0.0, 3, 0.0)
    mid.pitch_bend(0.1, 3, 100.0)       # +1 semitone of a ±2 semitone wheel
    mid.pitch_bend(0.2, 3, -500.0)      # beyond the wheel: clamped
    data = mid.to_bytes()
    assert bytes([0xE3, 0x00, 0x40]) in data          # centre 8192
    assert bytes([0xE3, 0x00, 0x60]) in data          # 8192 + 4096
    assert bytes([0xE3, 0x00, 0x00]) in data          # 0
    a = P.detune(P.plan_nc(0)[:50], 50.0, 0)
    b = P.detune(P.plan_nc(0)[10:30], 50.0, 0)
    cents = [c.labels["detune_cents"] for c in a]
    assert all(abs(v) <= 50 for v in cents) and np.std(cents) > 20
    assert [c.labels["detune_cents"] for c in b] == cents[10:30]    # per clip, not per plan
    assert [c.split for c in a] == [c.split for c in P.plan_nc(0)[:50]]   # same splits
    assert P.sounding_pitches({"pitches": [60, 64], "detune_cents": -25.0}) == [59.75, 63.75]
    assert P.sounding_pitches({"pitches": [60]}) == [60.0]


@needs_fluidsynth
def test_detuned_render_sounds_at_its_detune(tmp_path):
    res = make_dataset("--preset", "nc", "--limit", 6, "--detune", 50, "--out", tmp_path)
    assert res.returncode == 0, res.stderr
    rows = load_manifest(tmp_path / "manifest.jsonl")
    cents = [r["labels"]["detune_cents"] for r in rows]
    assert max(cents) - min(cents) > 20
    for r in rows:
        x, sr = sf.read(r["abspath"])
        est = median_pitch(x, sr)
        assert abs(est - P.sounding_pitches(r["labels"])[0]) < 0.1, (r["id"], est, r["labels"])
    info = json.loads((tmp_path / "dataset.json").read_text())
    assert info["settings"]["detune"] == 50
    # resuming with another detune is refused
    res = make_dataset("--preset", "nc", "--limit", 6, "--detune", 20, "--out", tmp_path)
    assert res.returncode == 2 and "detune" in res.stderr and "Traceback" not in res.stderr


@needs_fluidsynth
def test_rerun_resumes_without_rendering(nc8):
    wavs = sorted(nc8.glob("audio/*/*.wav"))
    mtimes = [w.stat().st_mtime_ns for w in wavs]
    res = make_dataset("--preset", "nc", "--limit", 8, "--out", nc8)
    assert res.returncode == 0, res.stderr
    assert "0 to render" in res.stderr
    assert [w.stat().st_mtime_ns for w in wavs] == mtimes
    assert len(read_jsonl(nc8 / "manifest.jsonl")) == 8
    # a different seed into the same folder is refused, without a traceback
    res = make_dataset("--preset", "nc", "--limit", 8, "--seed", 5, "--out", nc8)
    assert res.returncode == 2 and "seed" in res.stderr and "Traceback" not in res.stderr


@needs_fluidsynth
def test_resume_after_losing_a_clip(tmp_path):
    assert make_dataset("--preset", "notes", "--limit", 3, "--out", tmp_path).returncode == 0
    rows = read_jsonl(tmp_path / "manifest.jsonl")
    assert len(rows) == 3 and all(r["labels"]["family"] for r in rows)
    os.remove(tmp_path / rows[0]["path"])
    res = make_dataset("--preset", "notes", "--limit", 4, "--out", tmp_path)
    assert res.returncode == 0, res.stderr
    assert "2 already done, 2 to render" in res.stderr
    assert len(load_manifest(tmp_path / "manifest.jsonl")) == 4


def test_from_folder_resamples_cuts_and_drops_silence(tmp_path):
    src = tmp_path / "in"
    (src / "sub").mkdir(parents=True)
    sr = 44100
    t = np.arange(3 * sr) / sr
    tone = 0.3 * np.sin(2 * np.pi * 440 * t)
    x = np.concatenate([tone, np.zeros(2 * sr)])
    sf.write(src / "sub" / "take 1.flac", np.stack([x, x], axis=1), sr)
    (src / "notes.txt").write_text("not audio")
    out = tmp_path / "out"
    res = make_dataset("--from-folder", src, "--clip-seconds", 1, "--out", out)
    assert res.returncode == 0, res.stderr
    rows = load_manifest(out / "manifest.jsonl")
    assert len(rows) == 3 and len(read_jsonl(out / "skipped.jsonl")) == 2
    assert len({r["split"] for r in rows}) == 1  # one file, one split
    y, ysr = sf.read(rows[0]["abspath"])
    assert ysr == 22050 and y.ndim == 1 and len(y) == 22050
    spec = np.abs(np.fft.rfft(y))
    assert abs(np.argmax(spec) * 22050 / len(y) - 440) <= 1
    res = make_dataset("--from-folder", src, "--clip-seconds", 1, "--out", out)
    assert "0 to render" in res.stderr


def test_help_teaches():
    res = make_dataset("--help")
    assert res.returncode == 0
    for word in ("examples:", "--preset nc", "--from-folder", "--limit", "manifest.jsonl"):
        assert word in res.stdout


@needs_fluidsynth
def test_long_releases_do_not_bleed_into_the_next_clip(tmp_path):
    from rtengine.data.render import RenderOptions, render_batch

    pad = P.ClipSpec("a-pad", "notes", "train", 1.0, notes=[(0.0, 1.0, 0, 60, 127)],
                     programs=[(0.0, 0, 94)])  # Pad 7 (halo): a release of seconds
    quiet = P.ClipSpec("b-quiet", "notes", "train", 1.0, notes=[(0.1, 0.5, 0, 72, 25)],
                       programs=[(0.0, 0, 0)])
    rows, skipped, _ = render_batch([pad, quiet], RenderOptions(out_dir=str(tmp_path)))
    assert [r["id"] for r in rows] == ["a-pad", "b-quiet"] and not skipped
    x, _ = sf.read(tmp_path / rows[1]["path"])
    assert np.max(np.abs(x[:int(0.09 * 22050)])) < 1e-3  # silent until its note at 0.1 s
