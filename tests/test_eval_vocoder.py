"""eval_vocoder on a tiny hand-made manifest (no FluidSynth needed)."""

import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

ROOT = Path(__file__).resolve().parents[1]
SR = 22050


def load_tool():
    spec = importlib.util.spec_from_file_location("eval_vocoder", ROOT / "tools" / "eval_vocoder.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules["eval_vocoder"] = mod  # dataclasses look their module up
    spec.loader.exec_module(mod)
    return mod


def tone(pitches, seconds=1.0):
    t = np.arange(int(SR * seconds)) / SR
    x = sum(np.sin(2 * np.pi * 440 * 2 ** ((p - 69) / 12) * h * t) / h
            for p in pitches for h in range(1, 6))
    return (0.5 * x / np.max(np.abs(x)) * np.minimum(1, (len(t) - np.arange(len(t))) / 2000)).astype(np.float32)


@pytest.fixture()
def manifest(tmp_path):
    rows = []
    for cid, pitches, chord in (("a", [57], "note"), ("b", [60, 64, 67], "close_triad")):
        path = f"audio/test/{cid}.wav"
        (tmp_path / "audio" / "test").mkdir(parents=True, exist_ok=True)
        sf.write(tmp_path / path, tone(pitches), SR)
        rows.append({"id": cid, "path": path, "split": "test", "preset": "nc", "duration": 1.0,
                     "sample_rate": SR, "labels": {"pitches": pitches, "chord": chord,
                                                   "intervals": [p - pitches[0] for p in pitches]}})
    rows.append({**rows[0], "id": "c", "split": "train"})
    (tmp_path / "manifest.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return tmp_path / "manifest.jsonl"


def test_eval_writes_table_json_and_figure(manifest, tmp_path):
    tool = load_tool()
    systems = ["gl32", "oracle"]
    try:
        import rtengine.dsp.vocoder  # noqa: F401
        systems.insert(0, "pghi")
    except ImportError:
        pass
    out = tmp_path / "report"
    rc = tool.main(["--manifest", str(manifest), "--split", "test", "--systems", *systems,
                    "--out", str(out), "--no-progress"])
    assert rc == 0
    res = json.loads((out / "results.json").read_text())
    assert res["meta"]["clips"] == 2 and [c["id"] for c in res["clips"]] == ["a", "b"]
    s = res["summary"]
    assert s["oracle"]["herr_notes_mean"] == pytest.approx(0.0, abs=1e-6)
    assert s["oracle"]["sc_db"] < -100 and s["oracle"]["lsd_db"] < 0.01
    assert s["gl32"]["sc_db"] > s["oracle"]["sc_db"]
    assert 0 <= s["gl32"]["herr_chords_mean"] < 1
    assert s["gl32"]["rtf"] > 0
    table = (out / "table.md").read_text()
    assert all(f"| {name} |" in table for name in systems) and "H_err notes mean" in table
    png = (out / "fig4.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000
    assert not list(out.glob(".*tmp"))  # atomic writes leave no temporaries


def test_clips_without_note_labels_get_a_table_and_no_figure(manifest, tmp_path, capsys):
    """A `phrases` split has no notes or chords: LSD and SC, no Fig. 4, exit 0."""
    rows = [json.loads(line) for line in manifest.read_text().splitlines()]
    for r in rows:
        r["labels"] = {"pitches": r["labels"]["pitches"]}
    manifest.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "report"
    assert load_tool().main(["--manifest", str(manifest), "--systems", "oracle", "--out", str(out),
                             "--no-progress"]) == 0
    assert (out / "table.md").exists() and not (out / "fig4.png").exists()
    assert "no Fig. 4" in capsys.readouterr().err


def test_unknown_system_and_missing_manifest_are_user_errors(manifest, tmp_path, capsys):
    tool = load_tool()
    assert tool.main(["--manifest", str(manifest), "--systems", "nope", "--out", str(tmp_path)]) == 2
    assert "unknown system 'nope'" in capsys.readouterr().err
    assert tool.main(["--manifest", str(tmp_path / "none.jsonl"), "--out", str(tmp_path)]) == 2


def test_moving_average_windows():
    tool = load_tool()
    c, m = tool.moving_average(np.array([36.0, 40, 50, 60]), np.array([1.0, 3, 5, 7]))
    assert np.all(np.diff(c) == 6)
    assert m[0] == pytest.approx(2.0)  # window [30, 42) holds 36 and 40


def test_clip_kind_follows_the_paper():
    tool = load_tool()
    assert tool.clip_kind({"pitches": [60], "chord": "note"}) == "notes"
    assert tool.clip_kind({"pitches": [60, 72], "chord": "octave"}) is None
    assert tool.clip_kind({"pitches": [60, 67], "chord": "fifth"}) == "chords"
    assert tool.clip_kind({"pitches": [60, 67]}) is None  # phrases: no chord label


def test_system_options_and_model_folders(manifest, tmp_path):
    """``NAME:key=value`` options reach the system; a model folder works by path;
    a wrong option or name is one clear error."""
    tool = load_tool()
    from rtengine.config import get_config
    from rtengine.errors import UserError
    from rtengine.nn.pgvoc import PGVocConfig, PGVocNet, save_weights

    assert tool.parse_spec("pgvoc-22k:lookahead=true,mode=lambda") == \
        ("pgvoc-22k", {"lookahead": True, "mode": "lambda"})
    cfg = get_config("22k")
    model = tmp_path / "tiny"
    model.mkdir()
    save_weights(model / "weights.pt", PGVocNet(PGVocConfig.for_audio(cfg, channels=8, layers=2), cfg), cfg)
    (model / "card.yaml").write_text("type: pgvoc\n")
    out = tmp_path / "report"
    rc = tool.main(["--manifest", str(manifest), "--systems", "pghi", "pghi:nnls_iter=5", str(model),
                    f"{model}:lookahead=true", "--out", str(out), "--no-progress"])
    assert rc == 0
    s = json.loads((out / "results.json").read_text())["summary"]
    assert set(s) == {"pghi", "pghi:nnls_iter=5", str(model), f"{model}:lookahead=true"}
    # fewer mel-inverse iterations give another (here: worse) magnitude
    assert s["pghi:nnls_iter=5"]["lsd_db"] != s["pghi"]["lsd_db"]
    with pytest.raises(UserError, match="bogus"):
        tool.resolve_system(f"{model}:bogus=1").make(cfg)
    with pytest.raises(UserError, match="unknown system"):
        tool.resolve_system("wavenet")
