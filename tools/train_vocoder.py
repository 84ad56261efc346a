#!/usr/bin/env python3
"""Train the PG vocoder network (mel → log-magnitude + bin offsets) on rendered datasets.

A thin script over the shared training loop (rtengine.train.loop) and the PG
vocoder task (rtengine.train.pgvoc)."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

EPILOG = """\
examples:
  # the datasets (tools/make_dataset.py)
  python tools/make_dataset.py --preset nc --out data/nc
  python tools/make_dataset.py --preset phrases --out data/phrases
  # train the shipped live model, stop after 40 minutes, export to models/pgvoc-22k
  python tools/train_vocoder.py --manifests data/nc/manifest.jsonl data/phrases/manifest.jsonl \\
      --layers 5 --channels 256 --steps 3000 --max-minutes 40 --out models/pgvoc-22k
  # the shipped network: PGHI's frequency offsets as a prior, warm-started from a plain network
  python tools/train_vocoder.py --manifests data/nc/manifest.jsonl data/phrases/manifest.jsonl \
      --layers 5 --channels 192 --dm-prior 100 --init runs/pgvoc-plain/weights.pt --out models/pgvoc-22k
  # continue the same run from runs/pgvoc/last.pt
  python tools/train_vocoder.py --manifests data/nc/manifest.jsonl --resume
  # the PG paper's network (8 x 1536) on its 44.1 kHz configuration
  python tools/train_vocoder.py --manifests data/nc/manifest.jsonl --config 44k --paper
  # four GPUs on one machine (DDP; --batch-size is per GPU)
  torchrun --nproc_per_node 4 tools/train_vocoder.py --manifests data/nc/manifest.jsonl --device auto

Features (log-mel, log-magnitude, reassignment offsets and lambda) are computed
once per clip into --cache-dir and memory-mapped afterwards. Checkpoints:
RUN_DIR/last.pt (every --ckpt-every steps, at the end, on Ctrl-C or SIGTERM
and at --max-minutes), RUN_DIR/best.pt (lowest validation loss); RUN_DIR/log.jsonl
holds the losses and validation metrics.
"""


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, epilog=EPILOG,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--manifests", nargs="+", required=True, help="manifest.jsonl files (train/val splits are used)")
    p.add_argument("--config", default="22k", help="audio config (default 22k)")
    p.add_argument("--layers", type=int, default=5, help="convolution layers (default 5)")
    p.add_argument("--channels", type=int, default=256, help="hidden channels (default 256)")
    p.add_argument("--lookahead-layers", type=int, default=0,
                   help="centred layers, one frame of latency each (default 0: causal)")
    p.add_argument("--paper", action="store_true", help="the PG paper's 8 x 1536 network")
    p.add_argument("--dm-prior", type=int, default=0, metavar="ITER",
                   help="give the network PGHI's frequency offsets of the mel inversion (ITER iterations) "
                        "and let it predict the correction (default 0: the paper's network)")
    p.add_argument("--refiner", type=int, default=0, metavar="CH",
                   help="with --dm-prior: compute the correction by a per-frame convolution across "
                        "frequency with CH channels instead of the time convolutions (default 0: off)")
    p.add_argument("--offset-loss", choices=["bins", "semitones"], default="bins",
                   help="eq. 9's frequency-offset error in bins (the paper) or as a pitch error in "
                        "semitones, which weighs low partials more (default bins)")
    p.add_argument("--init", default=None, metavar="WEIGHTS",
                   help="warm start from another network's weights.pt (matching tensors are copied)")
    p.add_argument("--steps", type=int, default=3000)
    p.add_argument("--batch-size", type=int, default=16, help="crops per step (per process)")
    p.add_argument("--crop", type=int, default=96, help="frames per crop (default 96)")
    p.add_argument("--lr", type=float, default=1e-3, help="peak learning rate (cosine decay)")
    p.add_argument("--warmup", type=int, default=100)
    p.add_argument("--val-every", type=int, default=500)
    p.add_argument("--ckpt-every", type=int, default=100)
    p.add_argument("--herr-clips", type=int, default=48,
                   help="validation notes and chords vocoded for H_err at each validation (default 48; "
                        "pitch error varies a lot between clips, so few clips mislead)")
    p.add_argument("--limit", type=int, default=None, help="at most N training clips per manifest")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, mps")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--workers", type=int, default=0, help="data loader processes")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--max-minutes", type=float, default=None, help="stop (with a checkpoint) after this wall time")
    p.add_argument("--run-dir", default="runs/pgvoc", help="checkpoints and logs (default runs/pgvoc)")
    p.add_argument("--cache-dir", default="runs/cache", help="feature cache (default runs/cache)")
    p.add_argument("--out", default=None, help="export weights.pt and card.yaml here at the end")
    p.add_argument("--resume", action="store_true", help="continue from RUN_DIR/last.pt")
    p.add_argument("--no-progress", action="store_true")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    import numpy as np

    from rtengine.config import get_config
    from rtengine.data.manifest import load_manifest
    from rtengine.errors import UserError
    from rtengine.nn.pgvoc import PGVocConfig, paper_config
    from rtengine.train.features import build_cache, dm_prior_features, pg_features
    from rtengine.train.loop import (command_line, init_distributed, loop_config_from_args, resolve_device,
                                     summary_line, train)
    from rtengine.train.pgvoc import PGVocTask

    try:
        audio = get_config(args.config)
        train_rows, val_rows = [], []
        for m in args.manifests:
            tr = load_manifest(m, "train")
            train_rows += tr[:args.limit] if args.limit else tr
            val_rows += load_manifest(m, "val")
        if not train_rows:
            raise UserError("no training clips in " + ", ".join(args.manifests))
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2

    extractors = [pg_features] + ([dm_prior_features(args.dm_prior)] if args.dm_prior else [])

    def caches(rows, progress):
        """The features of ``rows``, one cache per extractor, merged."""
        if not rows:
            return None
        paths = [r["abspath"] for r in rows]
        cache = build_cache(paths, audio, args.cache_dir, extractors[0], progress=progress)
        for ex in extractors[1:]:
            cache.merge(build_cache(paths, audio, args.cache_dir, ex, progress=progress))
        return cache

    # only rank 0 builds the feature caches; the others wait and then read them
    dist_info = init_distributed(resolve_device(args.device))
    t0 = time.time()
    if dist_info.main:
        train_cache = caches(train_rows, not args.no_progress)
        val_cache = caches(val_rows, not args.no_progress)
    if dist_info.world > 1:
        import torch.distributed as dist

        dist.barrier()
        if not dist_info.main:
            train_cache, val_cache = caches(train_rows, False), caches(val_rows, False)
    feature_s = time.time() - t0

    net_cfg = paper_config(audio) if args.paper else PGVocConfig.for_audio(
        audio, channels=args.channels, layers=args.layers, lookahead_layers=args.lookahead_layers,
        dm_prior_iter=args.dm_prior, refiner_channels=args.refiner)
    # H_err clips: validation notes and chords (as the evaluation counts them), spread over the list
    from rtengine.metrics import clip_kind

    pitched = [r for r in val_rows if clip_kind(r.get("labels", {}))]
    herr_rows = [pitched[i] for i in np.linspace(0, len(pitched) - 1, min(args.herr_clips, len(pitched))).astype(int)] \
        if pitched and args.herr_clips else []

    presets = sorted({r.get("preset", "?") for r in train_rows})
    card = {"data": {"manifests": args.manifests, "presets": presets,
                     "train_clips": len(train_rows), "val_clips": len(val_rows),
                     "train_frames": int(train_cache.lengths.sum()),
                     "train_minutes": round(float(train_cache.lengths.sum()) / audio.frame_rate / 60, 1),
                     "seed": args.seed, "herr_val_clips": len(herr_rows)},
            "command": command_line(argv),
            "feature_seconds": round(feature_s, 1),
            "offset_loss": args.offset_loss,
            "optimizer": (f"Adam, peak lr {args.lr:g} after {args.warmup} warm-up steps, cosine decay to "
                          f"{args.lr * 0.05:g} over {args.steps} steps, gradient clip 1.0; batch "
                          f"{args.batch_size} random crops of {args.crop} frames per process")}
    task = PGVocTask(audio, net_cfg, train_cache, val_cache, crop=args.crop,
                     samples_per_epoch=max(args.batch_size * 200, 1024), seed=args.seed,
                     val_herr=herr_rows, export_dir=args.out, card=card, init=args.init,
                     pitch_offsets=args.offset_loss == "semitones")
    loop = loop_config_from_args(args, args.run_dir)
    summary = train(task, loop)
    if dist_info.main:
        print(summary_line(summary), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
