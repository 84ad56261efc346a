"""Shared training loop: checkpoints, resume, and a PG vocoder run that learns."""

import json

import numpy as np
import pytest
import soundfile as sf
import torch
from torch import nn
from torch.utils.data import TensorDataset

from rtengine.config import get_config
from rtengine.nn.pgvoc import PGVocConfig
from rtengine.train.checkpoint import load_checkpoint, save_checkpoint
from rtengine.train.features import FrameCropDataset, build_cache
from rtengine.train.loop import LoopConfig, resolve_device, train, warmup_cosine
from rtengine.train.pgvoc import PGVocTask


pytestmark = pytest.mark.usefixtures("one_torch_thread")


class LinearTask:
    """y = x·w: a task small enough to train in milliseconds."""

    def __init__(self):
        torch.manual_seed(0)
        self.model = nn.Linear(4, 1)
        g = torch.Generator().manual_seed(1)
        x = torch.randn(256, 4, generator=g)
        self.data = TensorDataset(x, x @ torch.tensor([[1.0], [-2.0], [0.5], [3.0]]))
        self.exported = None

    def train_set(self):
        return self.data

    def loss(self, model, batch):
        x, y = batch
        loss = torch.mean((model(x) - y) ** 2)
        return loss, {"mse": loss.detach()}

    def validate(self, model, device):
        x, y = self.data.tensors
        with torch.no_grad():
            return {"val_loss": float(torch.mean((model(x.to(device)) - y.to(device)) ** 2))}

    def export(self, model, step, summary):
        self.exported = (step, summary)


def _cfg(tmp_path, **kw):
    base = dict(run_dir=str(tmp_path / "run"), steps=40, batch_size=16, lr=0.1, warmup=2, grad_clip=0.0,
                val_every=20, ckpt_every=10, progress=False, device="cpu")
    base.update(kw)
    return LoopConfig(**base)


def test_loop_trains_logs_and_exports(tmp_path):
    task = LinearTask()
    before = task.validate(task.model, torch.device("cpu"))["val_loss"]
    summary = train(task, _cfg(tmp_path))
    assert summary["steps"] == 40
    assert summary["val"]["val_loss"] < 0.2 * before
    assert task.exported[0] == 40
    rows = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert any("val" in r for r in rows) and any("mse" in r for r in rows)
    assert (tmp_path / "run" / "last.pt").exists() and (tmp_path / "run" / "best.pt").exists()


def test_checkpoint_resume_restores_step_and_optimizer(tmp_path):
    task = LinearTask()
    train(task, _cfg(tmp_path, steps=20))
    state = load_checkpoint(tmp_path / "run" / "last.pt")
    assert state["step"] == 20
    saved_exp_avg = state["optimizer"]["state"][0]["exp_avg"].clone()
    saved_weight = state["model"]["weight"].clone()

    # a fresh process: new model, resumed from the run folder
    task2 = LinearTask()
    assert not torch.equal(task2.model.weight.detach(), saved_weight)
    seen = {}
    orig_loss = task2.loss

    def spy(model, batch):
        if "w" not in seen:   # first step after resuming: the restored weights
            seen["w"] = model.weight.detach().clone()
        return orig_loss(model, batch)

    task2.loss = spy
    summary = train(task2, _cfg(tmp_path, steps=25, resume=True))
    assert summary["steps"] == 25
    assert torch.equal(seen["w"], saved_weight)
    state2 = load_checkpoint(tmp_path / "run" / "last.pt")
    assert state2["step"] == 25
    # Adam's moments continued from the saved ones (not restarted from zero)
    assert state2["optimizer"]["state"][0]["step"] == 25
    assert not torch.equal(state2["optimizer"]["state"][0]["exp_avg"], saved_exp_avg)


def test_checkpoint_is_atomic_and_weights_only(tmp_path):
    p = tmp_path / "c.pt"
    save_checkpoint(p, {"a": torch.ones(2), "step": 3, "extra": {"x": None}})
    assert [f.name for f in tmp_path.iterdir()] == ["c.pt"]   # no temp file left
    assert load_checkpoint(p)["step"] == 3


def test_max_minutes_stops_with_a_checkpoint(tmp_path):
    summary = train(LinearTask(), _cfg(tmp_path, steps=10_000, max_minutes=0.0))
    assert summary["stopped_early"] and summary["steps"] == 1
    assert load_checkpoint(tmp_path / "run" / "last.pt")["step"] == 1


def test_schedule_and_device():
    f = warmup_cosine(10, 110, 0.1)
    assert f(0) == pytest.approx(0.1) and f(9) == pytest.approx(1.0)
    assert f(110) == pytest.approx(0.1) and f(60) == pytest.approx(0.55)
    assert resolve_device("cpu").type == "cpu"
    assert resolve_device("auto").type in ("cpu", "cuda", "mps")


@pytest.fixture(scope="module")
def tone_clips(tmp_path_factory):
    """Four 1-s harmonic tones with a click: a tiny synthetic training set."""
    d = tmp_path_factory.mktemp("tones")
    sr = 22050
    t = np.arange(sr) / sr
    paths = []
    for i, f0 in enumerate((110.0, 196.0, 330.0, 440.0)):
        x = sum(0.3 / k * np.sin(2 * np.pi * k * f0 * t) for k in range(1, 5))
        x[sr // 2] += 0.5
        p = d / f"tone{i}.wav"
        sf.write(p, x.astype(np.float32), sr)
        paths.append(str(p))
    return paths


def test_feature_cache_and_crops(tone_clips, tmp_path):
    cfg = get_config("22k")
    cache = build_cache(tone_clips, cfg, tmp_path, progress=False)
    assert len(cache) == 4 and cache.lengths.tolist() == [87] * 4
    assert cache.arrays["log_mag"].shape == (4 * 87, 513)
    again = build_cache(tone_clips, cfg, tmp_path, progress=False)   # reused, not rebuilt
    assert again.folder == cache.folder
    ds = FrameCropDataset(cache, 32, samples_per_epoch=8, seed=0)
    item = ds[3]
    assert item["log_mel"].shape == (80, 32) and item["dm"].shape == (513, 32)
    assert torch.equal(ds[3]["log_mag"], item["log_mag"])          # reproducible
    ds.set_epoch(1)
    assert not torch.equal(ds[3]["log_mag"], item["log_mag"])


def test_pg_training_reduces_the_loss(tone_clips, tmp_path):
    cfg = get_config("22k")
    cache = build_cache(tone_clips, cfg, tmp_path / "cache", progress=False)
    torch.manual_seed(0)
    task = PGVocTask(cfg, PGVocConfig.for_audio(cfg, channels=32, layers=3), cache, cache,
                     crop=24, samples_per_epoch=64, seed=0, export_dir=str(tmp_path / "model"))
    before = task.validate(task.model, torch.device("cpu"))["val_loss"]
    summary = train(task, _cfg(tmp_path, steps=20, batch_size=4, lr=3e-3, val_every=20, ckpt_every=20))
    assert summary["val"]["val_loss"] < 0.7 * before
    from rtengine.neural_vocoder import load_pgvoc

    net, audio = load_pgvoc(tmp_path / "model")
    assert audio == cfg and net.cfg.channels == 32
    assert torch.allclose(net.mag_mean, task.model.mag_mean)


def _tone_manifest(tone_clips, folder):
    """A manifest of the tone clips: three for training, one for validation
    (a note with pitch labels, so the H_err validation runs too)."""
    import os

    rows = []
    for i, p in enumerate(tone_clips):
        rows.append({"id": f"tone{i}", "path": os.path.relpath(p, folder), "split": "val" if i == 3 else "train",
                     "duration": 1.0, "sample_rate": 22050, "preset": "tones",
                     "labels": {"chord": "note", "pitches": [45 + 12 * (i == 3)]}})
    path = folder / "manifest.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.mark.parametrize("processes", [1, 2])
def test_train_vocoder_with_prior_runs_alone_and_under_torchrun(tone_clips, tmp_path, processes):
    """The trainer as a user runs it, with the Δm prior and a warm start; with
    2 processes, DDP through torchrun (gloo on the CPU): only rank 0 exports."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    from rtengine.neural_vocoder import load_pgvoc
    from rtengine.nn.pgvoc import PGVocNet, save_weights

    root = Path(__file__).resolve().parents[1]
    manifest = _tone_manifest(tone_clips, tmp_path)
    cfg = get_config("22k")
    plain = PGVocNet(PGVocConfig.for_audio(cfg, channels=16, layers=3), cfg)
    save_weights(tmp_path / "plain.pt", plain, cfg)
    args = ["tools/train_vocoder.py", "--manifests", str(manifest), "--layers", "3", "--channels", "16",
            "--dm-prior", "10", "--init", str(tmp_path / "plain.pt"), "--steps", "4", "--batch-size", "2",
            "--crop", "24", "--val-every", "4", "--herr-clips", "1", "--device", "cpu", "--no-progress",
            "--run-dir", str(tmp_path / "run"), "--cache-dir", str(tmp_path / "cache"),
            "--out", str(tmp_path / "model")]
    if processes == 1:
        cmd = [sys.executable] + args
    else:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"] + args
    env = dict(os.environ, OMP_NUM_THREADS="1")
    r = subprocess.run(cmd, cwd=root, capture_output=True, text=True, timeout=300, env=env)
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.count("done: 4 steps") == 1                   # rank 0 reports
    net, audio = load_pgvoc(tmp_path / "model")
    assert net.uses_prior and net.cfg.dm_prior_iter == 10 and audio == cfg
    summary = json.loads((tmp_path / "model" / "train_summary.json").read_text())
    assert summary["world_size"] == processes and summary["warm_start"]["widened"] == ["net.0.weight"]
    assert np.isfinite(summary["val"]["val_herr"]) and summary["val"]["val_herr_notes"] == summary["val"]["val_herr"]


def test_snapshots_keep_each_checkpoints_weights_for_choosing_or_averaging_later(tmp_path):
    task = LinearTask()
    train(task, _cfg(tmp_path, steps=30, ckpt_every=10, snapshots=True))
    snaps = sorted((tmp_path / "run" / "snapshots").glob("step-*.pt"))
    assert [p.name for p in snaps] == ["step-000010.pt", "step-000020.pt", "step-000030.pt"]
    first, last = (load_checkpoint(p) for p in (snaps[0], snaps[-1]))
    assert first["step"] == 10 and last["step"] == 30
    assert not torch.equal(first["model"]["weight"], last["model"]["weight"])     # it trained between
    assert torch.equal(last["model"]["weight"], task.model.weight.detach())
    assert "optimizer" not in first                                                # weights only
    plain = tmp_path / "plain"
    train(LinearTask(), _cfg(plain, steps=10))
    assert not (plain / "run" / "snapshots").exists()
