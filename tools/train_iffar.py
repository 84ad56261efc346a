#!/usr/bin/env python
"""Train IFF-AR on the ``notes`` set with the shared loop (rtengine.train).

    python tools/train_iffar.py --data data/notes --run runs/iffar --out models/iffar-22k \\
        --steps 4000 --max-minutes 35

Teacher forcing over random crops of ``--frames`` frames; losses of §3
(log-magnitude L1, flow NLL, multi-resolution STFT and SI-SDR of the
teacher-forced audio); Adam; validation every ``--val-every`` steps with early
stopping after ``--patience`` validations without improvement;
``--self-feed p`` replaces a share ``p`` of the input frames' magnitudes by
the model's own teacher-forced prediction (parallel scheduled sampling), and
``--self-feed-if p`` their IF by the flow's own (at ``--self-feed-temp``);
``--free-run p`` gives a share ``p`` of the batches the model's own
teacher-free roll-out as input after a short prompt (no gradient
through it); with fed-back inputs every target, the flow's NLL included,
stays the true frame; ``--rollout K`` adds a roll-out loss: K chained passes in which every frame
after a true prompt is the model's own previous prediction, so the last pass
equals a teacher-free roll-out of K frames (and approximates deeper ones), and
its log-magnitude error is back-propagated through the whole chain;
``--w-phase-run`` scores the running phase of the free runs' roll-outs
(their summed advance errors), so the flow learns to pull a drift back;
``--snapshots`` keeps each checkpoint's weights and ``--average OUT SNAP…``
writes their mean (stage 8 of the shipped model is one). The best
weights are exported to ``--out`` (weights.pt + card.yaml) at every
improvement, so an interrupted run still ships. ``--resume`` continues from
``<run>/last.pt``; ``torchrun --nproc_per_node N tools/train_iffar.py …`` runs
DDP.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from rtengine.config import get_config  # noqa: E402
from rtengine.nn.iffar import (FAMILIES, IFFAR, IFFARConfig, export_state, iffar_from_state,  # noqa: E402
                                load_iffar, add_mag_base, weights_file, widen_for_history,
                                widen_for_template)
from rtengine.nn.iffar_features import compute_stats, if_from_phase, log_magnitude, stft  # noqa: E402
from rtengine.nn.iffar_losses import LossWeights, iffar_loss  # noqa: E402
from rtengine.train.checkpoint import load_checkpoint, save_checkpoint  # noqa: E402
from rtengine.train.loop import loop_config_from_args, train  # noqa: E402

DITHER = 1e-6      # keeps the phase of digital silence from being a constant
SWITCH_FRAMES = 3  # frames after a note change weighted by --switch-weight


def read_manifest(data: Path, split: str, limit: int | None = None) -> list[dict]:
    rows = [json.loads(line) for line in open(data / "manifest.jsonl")]
    rows = [r for r in rows if r["split"] == split]
    return rows[:limit] if limit else rows


def load_clip(data: Path, row: dict, sr: int) -> np.ndarray:
    from rtengine.io import read_audio

    return np.asarray(read_audio(data / row["path"], sr), dtype=np.float32)


def family_index(name: str | None) -> int:
    return FAMILIES.index(name) if name in FAMILIES else len(FAMILIES)


def clip_labels(row: dict) -> tuple[int, int]:
    lab = row.get("labels", {})
    p = lab.get("pitches") or [-1]
    return int(p[0]), family_index(lab.get("family"))


def crop(x: np.ndarray, start: int, frames: int, n_fft: int, hop: int) -> np.ndarray:
    """Samples whose ``center=False`` STFT gives frames ``start .. start+frames−1``
    of the clip's centred STFT (zero outside the clip)."""
    a = start * hop - n_fft // 2
    n = (frames - 1) * hop + n_fft
    out = np.zeros(n, dtype=np.float32)
    lo, hi = max(a, 0), min(a + n, len(x))
    if hi > lo:
        out[lo - a:hi - a] = x[lo:hi]
    return out


class NoteCrops(torch.utils.data.Dataset):
    """Random crops of ``frames + 1`` frames (one extra for the first IF) from
    the clips' sounding part; items ``{"audio", "note", "family", "switched"}``
    with one label per predicted frame (``(frames − 1,)``).

    ``switch``: the share of crops that hold a note change. Beyond the paper,
    so that the pitch label can steer: such a crop plays clip ``i`` until a
    random frame ``u`` (10 ms fade-out), then clip ``j`` (another note) from
    its onset; the label of every predicted frame that hears ``j`` is ``j``'s.
    At the change the model sees a context of one note and the label of
    another, and must start the new note — what a performer's note message
    asks of it live."""

    FADE_S = 0.01

    def __init__(self, clips, labels, frames, audio, seed=0, fixed=False, switch=0.0, skip=4):
        self.clips, self.labels, self.frames, self.audio = clips, labels, frames, audio
        self.seed, self.epoch, self.fixed = seed, 0, fixed
        self.switch, self.skip = switch, skip

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self):
        return len(self.clips)

    def _start(self, i, rng):
        total = 1 + len(self.clips[i]) // self.audio.hop
        hi = max(1, min(total, int(3.4 * self.audio.frame_rate)) - self.frames)
        return (i * 37) % hi if self.fixed else int(rng.integers(0, hi))

    def __getitem__(self, i):
        rng = np.random.default_rng((self.seed, self.epoch, i))
        x, (note, fam) = self.clips[i], self.labels[i]
        start = self._start(i, rng)
        notes = np.full(self.frames - 1, note)      # one per predicted frame
        fams = np.full(self.frames - 1, fam)
        switched = not self.fixed and self.switch > 0 and rng.random() < self.switch
        if switched:
            j = int(rng.integers(0, len(self.clips)))
            if self.labels[j][0] == note:
                j = (j + 1) % len(self.clips)
            u = int(rng.integers(self.skip + 3, self.frames - 7))
            cut = (start + u) * self.audio.hop
            head = x[:cut].copy()
            n_fade = min(len(head), int(self.FADE_S * self.audio.sample_rate))
            head[len(head) - n_fade:] *= np.linspace(1.0, 0.0, n_fade, dtype=np.float32)
            x = np.concatenate([head, self.clips[j]])
            # crop frame 0 only gives frame 1 its IF, frame 1 is the first
            # input: predicted frame k is crop frame k+2. Crop frame t hears
            # clip j once its window reaches the cut: t ≥ u−1.
            notes[u - 3:] = self.labels[j][0]
            fams[u - 3:] = self.labels[j][1]
        a = crop(x, start, self.frames + 1, self.audio.n_fft, self.audio.hop)
        return {"audio": torch.from_numpy(a), "note": torch.from_numpy(notes),
                "family": torch.from_numpy(fams), "switched": torch.tensor(switched),
                "switch_at": torch.tensor(u - 3 if switched else -1)}


def batch_features(model: IFFAR, audio_batch: torch.Tensor, gen: torch.Generator | None = None):
    """Crops ``(B, L)`` → true STFT ``X (B, F, T)`` and features ``(B, 2F, T)``."""
    cfg = model.audio
    x = audio_batch + DITHER * torch.randn(audio_batch.shape, generator=gen)
    X = stft(x, cfg, center=False)
    feats = model.normalise(log_magnitude(X), if_from_phase(torch.angle(X), cfg, model.cfg.if_mode))
    return X[..., 1:], feats[..., 1:]


def chained_rollout(net: IFFAR, feats: torch.Tensor, note, fam, out: dict, prompt: int,
                    passes: int) -> torch.Tensor:
    """The model's own roll-out after ``prompt`` true frames, in parallel passes.

    Pass ``k`` feeds every input frame from ``prompt`` on with pass ``k−1``'s
    prediction of that frame (magnitude, clamped as in generation, and the
    flow's IF at ``z = 0``), so after ``passes`` passes the frames
    ``prompt … prompt+passes−1`` are exactly a teacher-free roll-out at
    temperature 0 (without the calibration bias, which is set after training)
    and later frames a ``passes``-deep approximation of one. Gradients flow
    through the fed-back magnitudes (back-propagation through the roll-out);
    the IF is fed back without gradient. ``out`` is the teacher-forced pass
    (``mag``, and ``if0`` unless it was run with ``sample_tf=False``).
    feats ``(B, 2F, T)`` → the last pass's magnitudes of frames ``1…T−1``,
    ``(B, T−1, F)`` (standardised)."""
    f = net.cfg.n_bins
    b, _, t = feats.shape
    mag, if0 = out["mag"], out.get("if0")
    for k in range(passes - 1):
        m = net.clamp_mag(mag.reshape(b, t - 1, f)).transpose(1, 2)       # frames 1..T-1
        inputs = feats.clone()
        inputs[:, :f, prompt:] = m[..., prompt - 1:]
        if if0 is not None:
            d = net.renorm_if(if0.detach()).reshape(b, t - 1, f).transpose(1, 2)
            inputs[:, f:, prompt:] = d[..., prompt - 1:]
        o = net(inputs, note, fam, sample_tf=if0 is not None and k < passes - 2)
        mag, if0 = o["mag"], o.get("if0")
    return mag.reshape(b, t - 1, f)


class IFFARTask:
    def __init__(self, args):
        self.args = args
        self.audio = get_config("22k")
        data = Path(args.data)
        self.cfg = IFFARConfig(channels=args.channels, layers=args.layers,
                               flow_layers=args.flow_layers, flow_hidden=args.flow_hidden,
                               if_mode=args.if_mode, pitch_template=args.pitch_template,
                               mag_history=args.mag_history, mag_base=args.mag_base)
        self.model = IFFAR(self.cfg, self.audio)
        if args.init:
            # warm start: weights and feature statistics of a trained model
            init = load_iffar(args.init)
            state, init_cfg = init.state_dict(), init.cfg
            # new inputs of a warm start get zero weights (function-preserving)
            if self.cfg.pitch_template and not init_cfg.pitch_template:
                if init_cfg.mag_history:
                    raise SystemExit(f"--init {args.init}: add --pitch-template before --mag-history")
                state = widen_for_template(state, self.cfg)
                init_cfg = IFFARConfig.from_dict({**init_cfg.to_dict(), "pitch_template": True})
            if self.cfg.mag_history > init_cfg.mag_history:
                state = widen_for_history(state, self.cfg, init_cfg.mag_history)
                init_cfg = IFFARConfig.from_dict({**init_cfg.to_dict(), "mag_history": self.cfg.mag_history})
            if self.cfg.mag_base > 1 and init_cfg.mag_base == 1:
                state = add_mag_base(state, self.cfg)
                init_cfg = IFFARConfig.from_dict({**init_cfg.to_dict(), "mag_base": self.cfg.mag_base})
            if init_cfg != self.cfg:
                raise SystemExit(f"--init {args.init}: its config {init.cfg} differs from this run's")
            self.model.load_state_dict(state)
        if args.train == "flow":
            # the encoder, labels and MagHead keep their weights: the flow
            # learns on a fixed context, and the magnitudes (and their
            # calibration) stay those of the --init model
            if not args.init:
                raise SystemExit("--train flow needs --init: it trains the flow of a trained model")
            for name, param in self.model.named_parameters():
                param.requires_grad_(name.startswith("flow."))
        rows = read_manifest(data, "train", args.limit)
        t0 = time.time()
        self.clips = [load_clip(data, r, self.audio.sample_rate) for r in rows]
        self.labels = [clip_labels(r) for r in rows]
        vrows = read_manifest(data, "val", args.val_clips)
        self.val_clips = [load_clip(data, r, self.audio.sample_rate) for r in vrows]
        self.val_labels = [clip_labels(r) for r in vrows]
        stats_path = Path(args.run) / "stats.pt"
        if args.init:
            stats = {k: getattr(self.model, k).clone() for k in ("mag_mean", "mag_std", "if_median",
                                                                    "if_mad", "mag_max")}
        elif stats_path.exists():
            stats = torch.load(stats_path, weights_only=True)
        else:
            stats = compute_stats(self.clips[:args.stats_clips], self.audio, args.if_mode)
            stats_path.parent.mkdir(parents=True, exist_ok=True)
            torch.save(stats, stats_path)
        self.model.set_stats(stats)
        print(f"loaded {len(self.clips)} train / {len(self.val_clips)} val clips "
              f"in {time.time() - t0:.1f} s", flush=True)
        self.weights = LossWeights(mag=args.w_mag, mag_p=args.mag_p, nll=args.w_nll,
                                   mrstft=args.w_mrstft, sisdr=args.w_sisdr, if_loud=args.w_if_loud,
                                   mag_loud=args.w_mag_loud, phase_run=args.w_phase_run,
                                   if_loud_flow_only=args.if_loud_flow_only)
        self.best = None
        self.bad = 0
        self.t0 = time.time()

    def train_set(self):
        return NoteCrops(self.clips, self.labels, self.args.frames, self.audio, self.args.seed,
                         switch=self.args.switch, skip=self.args.skip)

    def loss(self, model, batch):
        net = model.module if hasattr(model, "module") else model
        X, feats = batch_features(net, batch["audio"])
        note, fam = batch["note"].clone(), batch["family"].clone()
        # label dropout per crop (not on note changes: unlabelled, a change
        # could not be predicted), so both labelled and free continuation work
        drop = self.args.label_dropout
        keep = batch["switched"]
        note[(torch.rand(note.shape[0]) < drop) & ~keep] = self.cfg.n_notes
        fam[(torch.rand(fam.shape[0]) < drop) & ~keep] = self.cfg.n_families
        inputs = self.self_fed(net, feats, note, fam)
        prompt = None
        if self.args.free_run > 0:
            inputs, prompt = self.free_run(net, inputs, note, fam)
        out = model(inputs, note, fam, targets=feats)
        weight = None
        if self.args.switch_weight != 1.0:
            # the first frames of a new note: where the label has to do the work
            k = torch.arange(note.shape[1])[None]
            at = batch["switch_at"][:, None]
            weight = torch.where((at >= 0) & (k >= at) & (k < at + SWITCH_FRAMES),
                                 self.args.switch_weight, 1.0)
        total, terms = iffar_loss(net, out, feats, X, self.audio, self.weights, skip=self.args.skip,
                                  frame_weight=weight, run_start=prompt,
                                  run_frames=self.args.phase_run_frames)
        if self.args.rollout > 0:
            prompt = int(torch.randint(self.args.skip + 1, feats.shape[-1] // 2 + 1, ()))
            pred = chained_rollout(net, feats, note, fam, out, prompt, self.args.rollout)
            roll = (pred[:, prompt - 1:] - feats[:, :self.cfg.n_bins, prompt:].transpose(1, 2)).abs().mean()
            total = total + self.args.w_rollout * roll
            terms["rollout"] = roll.detach()
        return total, terms

    def self_fed(self, net, feats, note, fam):
        """Parallel scheduled sampling: a random share of the input frames
        carries the model's own teacher-forced prediction (magnitude with
        ``--self-feed``, IF with ``--self-feed-if``, the same frames where
        both), so it learns to correct its errors instead of compounding them
        in a roll-out. Targets stay true.

        Why the IF too: the flow reads the last frame's IF per bin (its base
        ``μ = prev IF + Δμ``) and, trained on true IF only, never sees its own
        errors there. In a roll-out its IF then drifts off the partials (power-
        weighted phase-advance error at the 32nd frame 0.46 rad against
        repeat-last's 0.31 on 12 validation clips at T = 0), and the phase,
        the running sum of the IF, drifts with it."""
        p_mag, p_if = self.args.self_feed, self.args.self_feed_if
        if p_mag <= 0 and p_if <= 0:
            return feats
        f = self.cfg.n_bins
        b, _, t = feats.shape
        with torch.no_grad():
            out = net(feats, note, fam, sample_tf=False)
            u = torch.rand(b, 1, t - 1)
            inputs = feats.clone()
            if p_mag > 0:
                mag0 = out["mag"].reshape(b, t - 1, f).transpose(1, 2)
                inputs[:, :f, 1:] = torch.where(u < p_mag, mag0, feats[:, :f, 1:])
            if p_if > 0:
                cond = net.flow.condition(*out["cond_inputs"])
                d = net.flow.sample(cond, self.args.self_feed_temp)
                d = net.renorm_if(d).reshape(b, t - 1, f).transpose(1, 2)
                inputs[:, f:, 1:] = torch.where(u < p_if, d, feats[:, f:, 1:])
        return inputs

    def free_run(self, net, feats, note, fam):
        """The model's own teacher-free roll-out as input (DAgger-style): in a
        share ``--free-run`` of the batches, every input frame after a prompt
        (random, 1 to ``--free-run-prompt`` frames after the skipped ones; the
        true frames, with ``--self-feed`` partly the model's own one-step
        magnitudes) is the model's own roll-out from that prompt, as generation
        makes it (calibration bias, clamp, IF sampled at ``--free-run-temp``,
        on the partials times ``--free-run-partial-temp``, the encoder
        streamed), computed without gradient. Targets stay true.

        Why: ``--self-feed`` shows the model its errors one step deep, and the
        chained ``--rollout`` loss at most a few; the partials of a free
        roll-out sink into the floor over tens of frames (see docs/iffar.md,
        *Partials lost*). Here the context is as far off as the roll-out has
        drifted by then, and the target asks to come back to the note."""
        if float(torch.rand(())) >= self.args.free_run:
            return feats, None
        t = feats.shape[-1]
        lo = self.args.skip + 1
        prompt = int(torch.randint(lo, max(lo + 1, min(t - 1, lo + self.args.free_run_prompt)), ()))
        if note.dim() == 2:             # per-frame labels: the roll-out plays the first
            note, fam = note[:, 0], fam[:, 0]
        seed = int(torch.randint(0, 2 ** 31 - 1, ()))
        gen = net.rollout(feats[..., :prompt], t - prompt, self.args.free_run_temp, seed, note, fam,
                          partial_temp=self.args.free_run_partial_temp)
        inputs = feats.clone()
        inputs[..., prompt:] = net.feedback(gen.transpose(1, 2)).transpose(1, 2)
        return inputs, prompt

    def validate(self, model, device):
        ds = NoteCrops(self.val_clips, self.val_labels, self.args.frames, self.audio, fixed=True)
        g = torch.Generator().manual_seed(0)
        sums: dict = {}
        n = 0
        for i in range(0, len(ds), 16):
            items = [ds[j] for j in range(i, min(i + 16, len(ds)))]
            a = torch.stack([it["audio"] for it in items]).to(device)
            note = torch.stack([it["note"] for it in items]).to(device)
            fam = torch.stack([it["family"] for it in items]).to(device)
            X, feats = batch_features(model, a, g)
            out = model(feats, note, fam)
            total, terms = iffar_loss(model, out, feats, X, self.audio, self.weights,
                                      skip=self.args.skip)
            for k, v in ({"val_loss": total} | terms).items():
                sums[k] = sums.get(k, 0.0) + float(v) * len(items)
            n += len(items)
        m = {k: v / n for k, v in sums.items()}
        # early stopping and export of the best weights
        if self.best is None or m["val_loss"] < self.best:
            self.best, self.bad = m["val_loss"], 0
            self.export(model, -1, {"val": m}, partial=True)
        else:
            self.bad += 1
            if self.bad >= self.args.patience:
                print(f"early stopping: no improvement in {self.bad} validations", flush=True)
                os.kill(os.getpid(), signal.SIGTERM)
        return m

    def export(self, model, step, metrics, partial=False):
        if not self.args.out:
            return
        out = Path(self.args.out)
        out.mkdir(parents=True, exist_ok=True)
        best = Path(self.args.run) / "best.pt"
        state_model = model
        if not partial and best.exists():
            net = IFFAR(self.cfg, self.audio)
            net.load_state_dict(load_checkpoint(best)["model"])
            state_model = net
        tmp = out / "weights.pt.tmp"
        torch.save(export_state(state_model, {"train": {
            "val": {k: float(v) for k, v in (metrics.get("val") or {}).items()
                    if isinstance(v, (int, float))},
            "steps": int(step) if step >= 0 else None,
            "wall_s": time.time() - self.t0}}), tmp)
        os.replace(tmp, out / "weights.pt")
        if not partial:
            calibrate(str(out), self.args.data, self.args.val_clips)
        summary = {k: v for k, v in metrics.items() if k != "val"}
        (out / "train_summary.json").write_text(json.dumps(
            {"args": vars(self.args), "summary": summary if not partial else None,
             "val": metrics.get("val")}, indent=1, default=float))


def rollout_lsd(model, feats: list, labels: list, prompt: int = 40, k: int = 32,
                temperature: float = 0.7) -> float:
    """Mean LSD (dB) of ``k``-frame roll-outs after ``prompt`` true frames,
    generated with the model's current MagHead calibration."""
    from rtengine.metrics import log_spectral_distance_mag

    f = model.cfg.n_bins
    out = []
    with torch.no_grad():
        for i, (x, (note, fam)) in enumerate(zip(feats, labels)):
            if x.shape[-1] < prompt + k:
                continue
            gen = model.rollout(x[..., :prompt], k, temperature=temperature, seed=i, note=note, family=fam)
            est = torch.exp(model.denorm_mag(gen[0, :f].T)).T
            ref = torch.exp(model.denorm_mag(x[0, :f, prompt:prompt + k].T)).T
            out.append(log_spectral_distance_mag(ref.numpy(), est.numpy()))
    return float(np.mean(out))


def average_snapshots(out: str, init: str, snapshots: list[str]) -> dict:
    """Write ``out/weights.pt``: the mean of the snapshots' weights (``--snapshots``
    of a run from ``init``, whose architecture and feature statistics they
    share). Why: a flow trained on its own free runs moves by a few dB of
    roll-out SI-SDR from one snapshot to the next; the mean of a stretch of
    them sits where the steps agree (averaged weights, as in SWA)."""
    if len(snapshots) < 2:
        raise SystemExit("--average needs two snapshots or more")
    init_state = torch.load(weights_file(init), map_location="cpu", weights_only=True)
    model = iffar_from_state(init_state)
    states, steps = [], []
    for path in snapshots:
        try:
            snap = load_checkpoint(path)
        except (OSError, RuntimeError) as e:
            raise SystemExit(f"--average: cannot read {path}: {e}") from None
        states.append(snap["model"])
        steps.append(int(snap.get("step", -1)))
    mean = {k: torch.stack([s[k].double() for s in states]).mean(0).to(v.dtype) if v.is_floating_point() else v
            for k, v in states[0].items()}
    before = model.mag_bias.clone()
    model.load_state_dict(mean)
    report = {"init": str(init), "snapshots": [str(p) for p in snapshots], "steps": steps}
    extra = {"average": report}
    calibration = init_state.get("calibration")
    if calibration is not None and torch.equal(model.mag_bias, before):
        extra["calibration"] = calibration      # a flow-only run: MagHead's calibration is the init's
    save_checkpoint(Path(out) / "weights.pt", export_state(model, extra))   # atomic
    print(f"averaged {len(states)} snapshots (steps {steps}) into {Path(out) / 'weights.pt'}")
    return report


def calibrate(weights: str, data: str, clips: int = 48, frames: int = 260,
              scales: tuple[float, ...] = (), rollout_clips: int = 16) -> dict:
    """Set the MagHead calibration (``IFFAR.calibrate``) of an exported model
    from the validation split; rewrites ``weights.pt``.

    ``scales``: also choose the share ``α`` of the teacher-forced bias that is
    subtracted, by the LSD of 32-frame roll-outs (T = 0.7) on the first
    ``rollout_clips`` clips. Why: the bias is measured on true inputs, but a
    roll-out feeds back the model's own frames, and how much of it compounds
    depends on them (a flow with coherent IF makes the partials fade more
    than one whose IF is noise)."""
    from rtengine.nn.iffar import load_iffar

    torch.set_num_threads(1)
    model = load_iffar(weights)
    audio = model.audio
    rows = read_manifest(Path(data), "val", clips)
    g = torch.Generator().manual_seed(0)
    feats, labels = [], []
    for r in rows:
        x = torch.as_tensor(load_clip(Path(data), r, audio.sample_rate))[None]
        x = x + DITHER * torch.randn(x.shape, generator=g)
        X = stft(x, audio)[0][:, :frames]
        feats.append(model.normalise(log_magnitude(X)[None],
                                     if_from_phase(torch.angle(X), audio, model.cfg.if_mode)[None]))
        labels.append(clip_labels(r))
    bias = model.calibrate(feats, labels).clone()
    report = {"split": "val", "clips": len(rows), "frames": frames,
              "mean_bias": float(bias.mean()), "max_bias": float(bias.max())}
    if scales:
        lsd = {}
        for a in scales:
            model.mag_bias.copy_(bias * a)
            lsd[a] = rollout_lsd(model, feats[:rollout_clips], labels)
        best = min(lsd, key=lsd.get)
        bias = bias * best
        report.update(scale=best, rollout_clips=min(rollout_clips, len(feats)),
                      rollout_lsd={f"{a:g}": round(v, 3) for a, v in lsd.items()})
    p = weights_file(weights)
    state = torch.load(p, weights_only=True)
    state["model"]["mag_bias"] = bias.detach().float().clone()
    state["calibration"] = report
    tmp = p.with_suffix(".tmp")
    torch.save(state, tmp)
    os.replace(tmp, p)
    print(json.dumps(state["calibration"]))
    return state["calibration"]


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default="data/notes")
    p.add_argument("--run", default="runs/iffar")
    p.add_argument("--out", default="", help="export folder for weights.pt and card.yaml, e.g. models/iffar-22k (default: none)")
    p.add_argument("--steps", type=int, default=4000)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--frames", type=int, default=32, help="frames per training crop")
    p.add_argument("--skip", type=int, default=4, help="leading target frames left out of the loss")
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--limit", type=int, default=1200, help="train clips loaded")
    p.add_argument("--val-clips", type=int, default=48)
    p.add_argument("--stats-clips", type=int, default=200)
    p.add_argument("--val-every", type=int, default=100)
    p.add_argument("--ckpt-every", type=int, default=100)
    p.add_argument("--patience", type=int, default=8)
    p.add_argument("--max-minutes", type=float, default=None)
    p.add_argument("--if-mode", choices=("hetero", "raw"), default="hetero")
    p.add_argument("--channels", type=int, default=128)
    p.add_argument("--layers", type=int, default=6)
    p.add_argument("--flow-layers", type=int, default=4)
    p.add_argument("--flow-hidden", type=int, default=24)
    p.add_argument("--label-dropout", type=float, default=0.3)
    p.add_argument("--switch", type=float, default=0.0,
                   help="share of crops with a note change inside (teaches the pitch label to steer)")
    p.add_argument("--pitch-template", action="store_true",
                   help="give MagHead and the flow the requested note's partials per bin (with --init "
                        "from a model without: its weights are widened, function-preserving)")
    p.add_argument("--mag-history", type=int, default=0, metavar="H",
                   help="MagHead also reads the H frames before the last, per bin (with --init from a "
                        "model with fewer: its weights are widened, function-preserving)")
    p.add_argument("--mag-base", type=int, default=1, metavar="K",
                   help="MagHead's residual is added to a learned mix of the last K frames (uniform at "
                        "first; needs --mag-history >= K-1); 1: the last frame, as shipped")
    p.add_argument("--switch-weight", type=float, default=1.0,
                   help=f"loss weight of the first {SWITCH_FRAMES} frames after a note change (default 1)")
    p.add_argument("--init", metavar="MODEL", default=None,
                   help="start from a trained model (folder or weights.pt; same sizes), its statistics included")
    p.add_argument("--self-feed", type=float, default=0.0,
                   help="share of input frames given the model's own magnitude (scheduled sampling)")
    p.add_argument("--self-feed-if", type=float, default=0.0,
                   help="share of input frames given the flow's own IF (scheduled sampling; with "
                        "--self-feed the same frames get both)")
    p.add_argument("--self-feed-temp", type=float, default=0.0,
                   help="temperature of the self-fed IF (0: the flow's most likely IF, z = 0)")
    p.add_argument("--free-run", type=float, default=0.0, metavar="P",
                   help="share of batches whose input frames after a short prompt are the "
                        "model's own teacher-free roll-out (no gradient through it; targets true)")
    p.add_argument("--free-run-prompt", type=int, default=8, metavar="N",
                   help="with --free-run: the prompt is 1 to N frames after the skipped ones")
    p.add_argument("--free-run-temp", type=float, default=0.7,
                   help="with --free-run: temperature of the roll-out's IF")
    p.add_argument("--free-run-partial-temp", type=float, default=1.0,
                   help="with --free-run: the roll-out's partial_temp (IFFAR.temperatures; 0 draws "
                        "the partials' IF at T = 0, as the patches play)")
    p.add_argument("--rollout", type=int, default=0, metavar="K",
                   help="add the roll-out loss over K chained passes (0: off; see above)")
    p.add_argument("--w-rollout", type=float, default=1.0, help="weight of the roll-out loss")
    p.add_argument("--w-phase-run", type=float, default=0.0, metavar="W",
                   help="with --free-run: weight of the running phase's error over the roll-out "
                        "(rtengine.nn.iffar_losses.run_phase_error; with --if-loud-flow-only it "
                        "trains the flow alone); use --free-run-temp 0 to score the T = 0 roll-out")
    p.add_argument("--phase-run-frames", type=int, default=32, metavar="H",
                   help="frames after the free run's prompt that --w-phase-run scores")
    p.add_argument("--w-mag", type=float, default=1.0)
    p.add_argument("--mag-p", type=float, default=1.0,
                   help="exponent of the log-magnitude error: 1 = L1 (default), 2 = squared error "
                        "(its optimum is the mean, which LSD scores; L1's is the median)")
    p.add_argument("--w-nll", type=float, default=0.5)
    p.add_argument("--w-mrstft", type=float, default=0.5)
    p.add_argument("--w-sisdr", type=float, default=0.02)
    p.add_argument("--w-mag-loud", type=float, default=0.0,
                   help="weight of the power-weighted log-magnitude error (the partials, which fade "
                        "into the floor in a roll-out; 0: off, as in the paper)")
    p.add_argument("--w-if-loud", type=float, default=0.0,
                   help="weight of the power-weighted phase-advance error of the flow's IF at z = 0 "
                        "(the loud bins, where a roll-out's phase must hold; 0: off, as in the paper)")
    p.add_argument("--if-loud-flow-only", action="store_true",
                   help="let --w-if-loud train the flow only (its condition detached), so the encoder "
                        "and MagHead see the paper's losses alone")
    p.add_argument("--train", choices=("all", "flow"), default="all",
                   help="which parameters train: all, or the IF flow alone (with --init; "
                        "the encoder and MagHead stay frozen)")
    p.add_argument("--device", default="auto")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--resume", action="store_true")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--calibrate", metavar="MODEL", default=None,
                   help="only set the MagHead calibration of MODEL from the validation split")
    p.add_argument("--calibrate-scales", metavar="A,B,…", default="",
                   help="with --calibrate: the shares of the bias to try; the one whose "
                        "validation roll-outs have the lowest LSD is kept (e.g. 0.5,0.75,1)")
    p.add_argument("--snapshots", action="store_true",
                   help="keep each checkpoint's weights as <run>/snapshots/step-N.pt (for --average)")
    p.add_argument("--average", nargs="+", metavar=("OUT", "SNAPSHOT"), default=None,
                   help="only write OUT/weights.pt, the mean of the SNAPSHOT files' weights "
                        "(a run's --snapshots; --init gives the model they came from)")
    args = p.parse_args(argv)
    if args.average:
        if not args.init:
            raise SystemExit("--average needs --init: the model the snapshots' run started from")
        return average_snapshots(args.average[0], args.init, args.average[1:])
    if args.calibrate:
        scales = tuple(float(a) for a in args.calibrate_scales.split(",")) if args.calibrate_scales else ()
        return calibrate(args.calibrate, args.data, args.val_clips, scales=scales)
    torch.set_num_threads(args.threads)
    task = IFFARTask(args)
    loop = loop_config_from_args(args, args.run, warmup=min(100, args.steps // 10), log_every=10,
                                 extra={"if_mode": args.if_mode})
    summary = train(task, loop)
    print(json.dumps(summary, default=float))
    return summary


if __name__ == "__main__":
    main()
