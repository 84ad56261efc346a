#!/usr/bin/env python
"""Train LatentFT (frame-wise encoder + chunked EDM diffusion decoder) on the
phrases clips, with the live one-sided masking operator.

Every example is one live step: a window of the last W = 512 latent frames
(the clip, preceded by another clip or by silence, as a stream would be) is
masked with an eq. 4 training mask, and the decoder denoises the H frames
``[W-D-H, W-D)`` given the P ground-truth frames before them (the previous
chunk) and the masked latent. The same D, H, P run in the stage.

    python tools/train_latentft.py --data data/phrases/manifest.jsonl \
        --run-dir runs/latentft --max-minutes 35 --out models/latentft-22k

Runs on the shared loop (:mod:`rtengine.train.loop`): progress bar, log.jsonl,
validation loss (EMA weights, fixed streams, masks and noise), atomic
checkpoints (``--resume``), EMA weights exported to ``--out`` at every
validation and at the end. Multi-process: ``torchrun --nproc_per_node N
tools/train_latentft.py ...`` (DDP).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import numpy as np
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from rtengine.config import get_config  # noqa: E402
from rtengine.nn.edm import edm_loss  # noqa: E402
from rtengine.nn.latentft import (LOG_MEL_MIN, LatentFTModel, TrainingMask,  # noqa: E402
                                  apply_latent_mask, band_training_mask, level_weights, save_weights,
                                  scale_mel)


# ---------------------------------------------------------------------------
# data
def load_mels(manifest: Path, split: str, cache_dir: Path, limit: int | None = None) -> list[np.ndarray]:
    """Scaled log-mel of every clip of ``split``: list of ``(80, T)`` float16,
    cached as one ``.npz`` per split in ``cache_dir``."""
    cache = cache_dir / f"mels-{split}.npz"
    if cache.exists():
        d = np.load(cache)
        mels = [d[k] for k in sorted(d.files, key=int)]
        return mels[:limit] if limit else mels
    from rtengine.dsp.mel import log_mel
    from rtengine.io import read_audio

    cfg = get_config("22k")
    rows = [json.loads(l) for l in manifest.read_text().splitlines() if l.strip()]
    rows = [r for r in rows if r["split"] == split]
    mels = []
    for r in rows:
        x = read_audio(manifest.parent / r["path"], cfg.sample_rate)
        mels.append(scale_mel(log_mel(x, cfg)).astype(np.float16))
    cache_dir.mkdir(parents=True, exist_ok=True)
    tmp = cache.with_suffix(".tmp.npz")
    np.savez(tmp, **{str(i): m for i, m in enumerate(mels)})
    os.replace(tmp, cache)
    return mels[:limit] if limit else mels


class StreamSampler:
    """Random stream excerpts: ``(80, W + (k-1)H)`` scaled mels whose last
    frames come from one clip and whose earlier frames come from another clip
    (p = 0.7) or silence, with a random level offset."""

    def __init__(self, mels, length: int, min_end: int, rng: np.random.Generator):
        self.mels = mels
        self.length = length
        self.min_end = min_end
        self.rng = rng
        self.silence = float(scale_mel(LOG_MEL_MIN))

    def sample(self) -> np.ndarray:
        r = self.rng
        b = self.mels[r.integers(len(self.mels))].astype(np.float32)
        if r.random() < 0.7:
            a = self.mels[r.integers(len(self.mels))].astype(np.float32)
        else:
            a = np.full((b.shape[0], 1), self.silence, np.float32)
        pad = np.full((b.shape[0], self.length), self.silence, np.float32)
        s = np.concatenate([pad, a, b], axis=1)
        start_b = pad.shape[1] + a.shape[1]
        end = int(r.integers(start_b + self.min_end, s.shape[1] + 1))
        x = s[:, end - self.length:end]
        # level offset (dB-like shift of the log-mel), floored like the analysis
        off = r.uniform(-1.5, 0.3) * 2.0 / (2.1922 - LOG_MEL_MIN)
        return np.maximum(x + off, self.silence)


def make_batch(model: LatentFTModel, xs: torch.Tensor, mask_gen: TrainingMask, k: int,
               gen: torch.Generator, p_uncond: float = 0.1, p_context_drop: float = 0.0,
               context_noise: float = 0.0, band_share: float = 0.0):
    """Streams ``(S, 80, W+(k-1)H)`` → training examples of the live operator.

    Returns cond ``(S·k, C, P+H)``, context ``(S·k, 80, P)``, target
    ``(S·k, 80, H)``."""
    W, H, P, D = model.window, model.hop, model.context, model.lookahead
    z = model.encode(xs)                                         # (S, C, L) latent (eq. 2)
    wins, ctx, tgt = [], [], []
    for j in range(k):
        end = xs.shape[-1] - (k - 1 - j) * H                      # window end
        wins.append(z[..., end - W:end])
        ctx.append(xs[..., end - D - H - P:end - D - H])
        tgt.append(xs[..., end - D - H:end - D])
    win = torch.cat(wins, 0)
    mask = mask_gen.sample(win.shape[0], generator=gen)           # eq. 4
    if band_share > 0:   # a share of the live kind of mask: bands of a 2/4/8 partition
        pick = torch.rand(win.shape[0], generator=gen) < band_share
        if pick.any():
            mask[pick] = band_training_mask(int(pick.sum()), 2 * W, gen)
    zm = apply_latent_mask(win, mask, 2 * W)                      # eq. 3, mask, inverse
    cond = zm[..., W - D - H - P:W - D]                          # one-sided operator
    drop = (torch.rand(win.shape[0], generator=gen) < p_uncond).float()[:, None, None]
    cond = cond * (1 - drop)                                      # null condition for CFG
    ctx = torch.cat(ctx, 0)
    if p_context_drop > 0:
        # without this the decoder learns to continue the previous chunk and
        # ignores the latent; silence is what the stage's context holds at start
        cdrop = (torch.rand(ctx.shape[0], generator=gen) < p_context_drop)[:, None, None]
        ctx = torch.where(cdrop, torch.full_like(ctx, float(scale_mel(LOG_MEL_MIN))), ctx)
    if context_noise > 0:   # the live context is the decoder's own (imperfect) output
        ctx = ctx + context_noise * torch.randn(ctx.shape, generator=gen)
    return cond, ctx, torch.cat(tgt, 0)


def widen_inputs(old: dict, new: dict) -> dict:
    """``old`` weights for a model whose layers read more input channels
    (``level_channels`` appended to the latent): a tensor whose dim 1 grew
    keeps its weights for the first channels and gets zeros for the new
    ones, so the widened model computes what the old one did."""
    out = dict(old)
    for k, v in old.items():
        t = new.get(k)
        if t is not None and v.dim() >= 2 and t.shape != v.shape and t.shape[0] == v.shape[0] \
                and t.shape[2:] == v.shape[2:] and t.shape[1] > v.shape[1]:
            w = torch.zeros(t.shape, dtype=v.dtype)
            w[:, :v.shape[1]] = v
            out[k] = w
    return out


# ---------------------------------------------------------------------------
# the task for the shared loop (rtengine.train.loop)
class StreamDataset(torch.utils.data.Dataset):
    """Map-style view of :class:`StreamSampler`: item ``i`` of epoch ``e`` is a
    stream excerpt drawn from a generator seeded by ``(seed, e, i)``, so runs
    and resumed runs see the same data. → ``(80, W + (k-1)H)`` float32."""

    def __init__(self, mels, length: int, min_end: int, items: int, seed: int = 0):
        self.mels, self.length, self.min_end, self.items, self.seed = mels, length, min_end, items, seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.items

    def __getitem__(self, i: int):
        rng = np.random.default_rng([self.seed, self.epoch, i])
        return torch.from_numpy(StreamSampler(self.mels, self.length, self.min_end, rng).sample())


class Trainable(nn.Module):
    """The model plus its EMA (kept as buffers, so the loop checkpoints it).
    ``forward(streams)`` → the EDM loss of the live operator's examples."""

    def __init__(self, arch: dict | None, windows: int, ema: float, context_drop: float = 0.5,
                 context_noise: float = 0.05, p_mean: float = -1.2, p_std: float = 1.2,
                 w_mean: float = 1.0, band_share: float = 0.0, w_level: float = 0.0):
        super().__init__()
        self.band_share = band_share
        self.w_level = w_level
        self.w_mean = w_mean
        self.p_mean, self.p_std = p_mean, p_std
        self.context_drop, self.context_noise = context_drop, context_noise
        self.net = LatentFTModel(arch)
        self.windows = windows
        self.ema_decay = ema
        for n, p in self.net.named_parameters():
            self.register_buffer("ema_" + n.replace(".", "__"), p.detach().clone())
        self.register_buffer("ema_updates", torch.zeros((), dtype=torch.long))
        self.mask_gen = TrainingMask(2 * self.net.window)
        if w_level > 0:
            # a linear read-out of each frame's level from the latent (trained
            # with it, not exported); the level: the scaled log-mel's mean over
            # mel bands weighted by their width in STFT bins, as the loudness
            # metrics average over STFT bins (the level lock's level)
            self.register_buffer("level_w", level_weights(self.net.arch["n_mels"]).clone())
            self.level_probe = nn.Linear(self.net.arch["latent"], 1)

    @torch.no_grad()
    def update_ema(self) -> None:
        n = int(self.ema_updates)
        d = min(self.ema_decay, (1 + n) / (10 + n))
        for name, p in self.net.named_parameters():
            getattr(self, "ema_" + name.replace(".", "__")).mul_(d).add_(p.detach(), alpha=1 - d)
        self.ema_updates += 1

    def ema_model(self) -> LatentFTModel:
        m = LatentFTModel(self.net.arch)
        sd = {n: getattr(self, "ema_" + n.replace(".", "__")).clone() for n, _ in self.net.named_parameters()}
        keep = self.net.state_dict().keys()          # persistent buffers only
        sd.update({n: b for n, b in self.net.named_buffers() if n in keep})
        m.load_state_dict(sd)
        return m.eval()

    def forward(self, streams: torch.Tensor) -> torch.Tensor:
        if self.training:
            self.update_ema()   # the weights of the previous optimizer step
        cond, ctx, tgt = make_batch(self.net, streams, self.mask_gen, self.windows, None,
                                    p_context_drop=self.context_drop, context_noise=self.context_noise,
                                    band_share=self.band_share)
        loss = edm_loss(self.net.denoiser, tgt, cond, ctx, p_mean=self.p_mean, p_std=self.p_std)
        mean = getattr(self.net.denoiser, "mean", None)
        if mean is not None and self.w_mean > 0:
            # the mean path's own regression target: the chunk's mel
            loss = loss + self.w_mean * ((mean(cond)[..., ctx.shape[-1]:] - tgt) ** 2).mean()
        if self.w_level > 0:
            # the latent must carry each frame's level linearly, so that a band
            # mask on the latent is a band mask on the level (beyond the paper)
            z = self.net.encode(streams).transpose(1, 2)                    # (S, L, C)
            level = torch.einsum("m,sml->sl", self.level_w, streams)
            loss = loss + self.w_level * ((self.level_probe(z)[..., 0] - level) ** 2).mean()
        return loss


class LatentFTTask:
    """:class:`rtengine.train.loop.Task` for LatentFT."""

    def __init__(self, model: Trainable, train_mels, val_mels, items: int, seed: int,
                 export_dir: str | None, card: dict):
        self.model = model
        self.train_mels, self.val_mels = train_mels, val_mels
        self.items, self.seed = items, seed
        self.export_dir = export_dir
        self.card = card
        net = model.net
        self.length = net.window + (model.windows - 1) * net.hop
        self.min_end = net.lookahead + net.hop

    def train_set(self):
        return StreamDataset(self.train_mels, self.length, self.min_end, self.items, self.seed)

    def loss(self, model, batch):
        return model(batch), {}

    def validate(self, model, device) -> dict:
        ema = model.ema_model()
        v = validate(ema, self.val_mels, model.mask_gen, model.windows, 8, 4)
        # export as we go, so a partial run still ships
        self._write(ema, int(model.ema_updates), {"val_loss": v})
        return {"val_loss": v}

    def export(self, model, step: int, metrics: dict) -> None:
        self._write(model.ema_model(), step, metrics)

    def _write(self, ema: LatentFTModel, step: int, metrics: dict) -> None:
        if not self.export_dir:
            return
        out = Path(self.export_dir)
        out.mkdir(parents=True, exist_ok=True)
        tmp = out / "weights.pt.tmp"
        save_weights(ema, tmp, {"step": int(step)})
        os.replace(tmp, out / "weights.pt")
        info = dict(self.card, steps=int(step),
                    metrics={k: v for k, v in metrics.items() if isinstance(v, (int, float))})
        (out / "train-info.json").write_text(json.dumps(info, indent=1, default=str))


@torch.no_grad()
def validate(model, val_mels, mask_gen, k, n_batches: int, streams: int) -> float:
    """EDM loss of the EMA model on fixed validation streams, masks and noise."""
    rng = np.random.default_rng(1234)
    state = torch.get_rng_state()
    torch.manual_seed(1234)
    L = model.window + (k - 1) * model.hop
    sampler = StreamSampler(val_mels, L, model.lookahead + model.hop, rng)
    tot = 0.0
    for _ in range(n_batches):
        xs = torch.from_numpy(np.stack([sampler.sample() for _ in range(streams)]))
        cond, ctx, tgt = make_batch(model, xs, mask_gen, k, None, p_uncond=0.0)
        tot += float(edm_loss(model.denoiser, tgt, cond, ctx))
    torch.set_rng_state(state)
    return tot / n_batches


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default="data/phrases/manifest.jsonl", help="phrases manifest")
    ap.add_argument("--run-dir", default="runs/latentft", help="checkpoints, logs, mel cache")
    ap.add_argument("--out", default=None, help="model folder for weights.pt (written at every validation)")
    ap.add_argument("--steps", type=int, default=12000)
    ap.add_argument("--max-minutes", type=float, default=None, help="stop (with a checkpoint) after this wall time")
    ap.add_argument("--batch-size", type=int, default=4, help="stream excerpts per batch (per process)")
    ap.add_argument("--windows", type=int, default=4, help="live windows (examples) per excerpt")
    ap.add_argument("--lr", type=float, default=3e-4)
    ap.add_argument("--warmup", type=int, default=300)
    ap.add_argument("--ema", type=float, default=0.999)
    ap.add_argument("--ckpt-every", type=int, default=250)
    ap.add_argument("--val-every", type=int, default=500)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--device", default="cpu", help="cpu (tested), cuda or auto")
    ap.add_argument("--arch", default=None, help="JSON overrides of rtengine.nn.latentft.DEFAULT_ARCH")
    ap.add_argument("--context-drop", type=float, default=0.5,
                    help="probability of replacing the previous-chunk context by silence")
    ap.add_argument("--context-noise", type=float, default=0.05, help="noise added to the context")
    ap.add_argument("--p-mean", type=float, default=-1.2, help="training ln σ mean (EDM P_mean)")
    ap.add_argument("--p-std", type=float, default=1.2, help="training ln σ std (EDM P_std)")
    ap.add_argument("--w-mean", type=float, default=1.0,
                    help="weight of the mean path's own MSE (arch mean_hidden > 0)")
    ap.add_argument("--band-masks", type=float, default=0.0, metavar="P",
                    help="share of training masks drawn as band selections of a 2/4/8-band partition "
                         "(what the faders set) instead of eq. 4; validation stays on eq. 4")
    ap.add_argument("--w-level", type=float, default=0.0,
                    help="weight of a linear read-out of each frame's level from the latent (0: off): "
                         "teaches the latent to carry the level linearly; use with --arch '{\"enc_skip\": true}'")
    ap.add_argument("--init", default=None, help="start from these weights.pt (model and EMA)")
    ap.add_argument("--resume", action="store_true", help="continue from RUN_DIR/last.pt")
    ap.add_argument("--no-progress", action="store_true")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    from rtengine.train.loop import (command_line, init_distributed, loop_config_from_args, resolve_device,
                                     summary_line, train)

    dist_info = init_distributed(resolve_device(args.device))
    run = Path(args.run_dir)
    manifest = Path(args.data)
    if dist_info.main:
        train_mels = load_mels(manifest, "train", run)
        val_mels = load_mels(manifest, "val", run)
    if dist_info.world > 1:
        import torch.distributed as dist
        dist.barrier()
        if not dist_info.main:
            train_mels = load_mels(manifest, "train", run)
            val_mels = load_mels(manifest, "val", run)
    torch.manual_seed(args.seed)
    arch = json.loads(args.arch) if args.arch else None
    init = None
    if args.init:
        init = torch.load(args.init, map_location="cpu", weights_only=True)
        arch = dict(init["arch"], **(json.loads(args.arch) if args.arch else {}))
    model = Trainable(arch, args.windows, args.ema, args.context_drop, args.context_noise,
                      args.p_mean, args.p_std, args.w_mean, args.band_masks, args.w_level)
    if init is not None:
        sd = widen_inputs(init["state_dict"], model.net.state_dict())
        missing, unexpected = model.net.load_state_dict(sd, strict=False)
        if unexpected or missing:   # only layers added by --arch may be missing (zero-initialised)
            print(f"init: new {missing}, dropped {unexpected}", flush=True)
        for n, p in model.net.named_parameters():
            getattr(model, "ema_" + n.replace(".", "__")).copy_(p.detach())
    card = {"data": {"manifest": str(manifest), "train_clips": len(train_mels), "val_clips": len(val_mels)},
            "command": command_line(argv),
            "arch": model.net.arch,
            "params": sum(p.numel() for p in model.net.parameters())}
    task = LatentFTTask(model, train_mels, val_mels, items=len(train_mels) * 4, seed=args.seed,
                        export_dir=args.out, card=card)
    loop = loop_config_from_args(args, run)
    summary = train(task, loop)
    if dist_info.main:
        print(summary_line(summary), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
