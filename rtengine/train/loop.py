"""The shared training loop of every trainer (``tools/train_*.py``).

A trainer describes its model as a :class:`Task` (the network, a map-style
dataset of training examples, a loss, a validation and an export) and calls
:func:`train`. The loop brings, for every model alike:

* a progress bar (tqdm; sparse when the output is not a terminal) and a
  ``log.jsonl`` of losses and validation metrics in the run folder;
* Adam with linear warm-up and cosine decay, gradient clipping;
* periodic validation on rank 0, with the best result's weights kept;
* atomic checkpoints every ``ckpt_every`` steps and at the end (also on
  SIGTERM/SIGINT and when ``max_minutes`` runs out), and ``resume`` from the
  run folder's ``last.pt`` (step, model, optimizer, scheduler, RNG);
* ``device="auto"``: CUDA, then Apple MPS, then the CPU;
* multi-GPU through ``torchrun`` (DDP, one process per GPU): when
  ``WORLD_SIZE`` > 1 the model is wrapped in ``DistributedDataParallel``, each
  rank reads its share of the dataset through a ``DistributedSampler``, and only
  rank 0 logs, validates and writes files. ``batch_size`` is per process.
"""

from __future__ import annotations

import json
import math
import os
import signal
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Protocol

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, DistributedSampler, RandomSampler

from .checkpoint import LAST, last_checkpoint, load_checkpoint, restore_state, save_checkpoint, training_state


@dataclass
class LoopConfig:
    """Settings of one training run (all plain data: they go in the checkpoint)."""

    run_dir: str
    steps: int = 1000
    batch_size: int = 16
    lr: float = 1e-3
    lr_min_ratio: float = 0.05      # cosine decays to lr * lr_min_ratio
    warmup: int = 100
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    log_every: int = 25
    val_every: int = 500
    ckpt_every: int = 200
    device: str = "auto"
    seed: int = 0
    num_workers: int = 0
    resume: bool = False
    max_minutes: float | None = None   # stop (with a checkpoint) after this wall time
    progress: bool = True
    threads: int | None = None          # torch CPU threads (None: torch's default)
    snapshots: bool = False             # also keep each checkpoint's weights as snapshots/step-N.pt
    extra: dict = field(default_factory=dict)


# command-line names (argparse dests) of the LoopConfig fields the trainers share
_ARG_FIELDS = ("steps", "batch_size", "lr", "warmup", "val_every", "ckpt_every", "device",
               "seed", "resume", "max_minutes", "threads", "snapshots")


def command_line(argv=None) -> str:
    """The command that is running, as a card records it: ``python SCRIPT ARGS``
    (``argv``: the arguments given to ``main`` instead of ``sys.argv[1:]``)."""
    import shlex
    import sys

    args = [sys.argv[0]] + list(sys.argv[1:] if argv is None else argv)
    return "python " + " ".join(shlex.quote(a) for a in args)


def summary_line(summary: dict) -> str:
    """One line for the end of a training run."""
    return f"done: {summary['steps']} steps in {summary['wall_s'] / 60:.1f} min; val {summary['val']}"


def loop_config_from_args(args, run_dir, **overrides) -> "LoopConfig":
    """A :class:`LoopConfig` from a trainer's parsed arguments: the shared
    options it defines (``--steps``, ``--batch-size``, ``--lr``, ``--warmup``,
    ``--val-every``, ``--ckpt-every``, ``--device``, ``--seed``, ``--resume``,
    ``--max-minutes``, ``--threads``, ``--workers``, ``--no-progress``), then
    ``overrides``."""
    kw = {k: getattr(args, k) for k in _ARG_FIELDS if hasattr(args, k)}
    if hasattr(args, "workers"):
        kw["num_workers"] = args.workers
    kw["progress"] = not getattr(args, "no_progress", False)
    kw.update(overrides)
    return LoopConfig(run_dir=str(run_dir), **kw)


class Task(Protocol):
    """What a trainer provides to :func:`train`."""

    model: nn.Module

    def train_set(self) -> Dataset: ...
    def loss(self, model: nn.Module, batch: Any) -> tuple[torch.Tensor, dict]: ...
    def validate(self, model: nn.Module, device: torch.device) -> dict: ...
    def export(self, model: nn.Module, step: int, metrics: dict) -> None: ...


# ---------------------------------------------------------------------- devices
def resolve_device(name: str = "auto") -> torch.device:
    """``auto`` → ``cuda[:LOCAL_RANK]`` if present, else ``mps``, else ``cpu``."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    dev = torch.device(name)
    if dev.type == "cuda" and dev.index is None and "LOCAL_RANK" in os.environ:
        dev = torch.device("cuda", int(os.environ["LOCAL_RANK"]))
    return dev


@dataclass
class Dist:
    """This process's place in a (possibly one-process) run."""

    world: int = 1
    rank: int = 0
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0


def init_distributed(device: torch.device) -> Dist:
    """Join the ``torchrun`` process group when ``WORLD_SIZE`` > 1."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Dist()
    import torch.distributed as dist

    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    if device.type == "cuda":
        torch.cuda.set_device(device)
    return Dist(world, dist.get_rank(), int(os.environ.get("LOCAL_RANK", 0)))


def unwrap(model: nn.Module) -> nn.Module:
    """The module inside a DDP wrapper (or the module itself)."""
    return model.module if hasattr(model, "module") else model


# ---------------------------------------------------------------------- schedule
def warmup_cosine(warmup: int, total: int, min_ratio: float) -> Callable[[int], float]:
    """Learning-rate factor: linear warm-up over ``warmup`` steps, then cosine to ``min_ratio``."""
    def f(step: int) -> float:
        if step < warmup:
            return (step + 1) / max(1, warmup)
        t = min(1.0, (step - warmup) / max(1, total - warmup))
        return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * t))
    return f


def to_device(batch: Any, device: torch.device) -> Any:
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, dict):
        return {k: to_device(v, device) for k, v in batch.items()}
    if isinstance(batch, (list, tuple)):
        return type(batch)(to_device(v, device) for v in batch)
    return batch


def _batches(loader: DataLoader, sampler, start_epoch: int):
    """Endless batches; sets the epoch on the sampler and the dataset."""
    epoch = start_epoch
    while True:
        if hasattr(sampler, "set_epoch"):
            sampler.set_epoch(epoch)
        if hasattr(loader.dataset, "set_epoch"):
            loader.dataset.set_epoch(epoch)
        for b in loader:
            yield b
        epoch += 1


class _Stop:
    """Turns SIGTERM/SIGINT into a request to checkpoint and stop."""

    def __init__(self):
        self.requested = False
        self._old = {}

    def __enter__(self):
        for s in (signal.SIGTERM, signal.SIGINT):
            try:
                self._old[s] = signal.signal(s, self._handle)
            except ValueError:   # not the main thread
                pass
        return self

    def _handle(self, signum, frame):
        self.requested = True

    def __exit__(self, *exc):
        for s, h in self._old.items():
            signal.signal(s, h)


# ---------------------------------------------------------------------- the loop
def train(task: Task, cfg: LoopConfig) -> dict:
    """Train ``task.model`` for ``cfg.steps`` optimizer steps (or until
    ``max_minutes``). Returns a summary: steps done, wall time, last losses,
    last and best validation metrics."""
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    device = resolve_device(cfg.device)
    dist_info = init_distributed(device)
    run_dir = Path(cfg.run_dir)
    if dist_info.main:
        run_dir.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(cfg.seed + dist_info.rank)

    model = task.model.to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, warmup_cosine(cfg.warmup, cfg.steps, cfg.lr_min_ratio))

    step, best, history_wall = 0, None, 0.0
    ckpt = last_checkpoint(run_dir) if cfg.resume else None
    if ckpt is not None:
        state = load_checkpoint(ckpt, map_location="cpu")
        step = restore_state(state, model, optimizer, scheduler)
        best = state["extra"].get("best")
        history_wall = float(state["extra"].get("wall_s", 0.0))
        if dist_info.main:
            print(f"resumed from {ckpt} at step {step}", flush=True)

    if dist_info.world > 1:
        from torch.nn.parallel import DistributedDataParallel as DDP

        model = DDP(model, device_ids=[device.index] if device.type == "cuda" else None)

    dataset = task.train_set()
    if dist_info.world > 1:
        sampler = DistributedSampler(dataset, num_replicas=dist_info.world, rank=dist_info.rank,
                                     shuffle=True, seed=cfg.seed)
    else:
        sampler = RandomSampler(dataset, generator=torch.Generator().manual_seed(cfg.seed + step))
    loader = DataLoader(dataset, batch_size=cfg.batch_size, sampler=sampler, drop_last=True,
                        num_workers=cfg.num_workers, pin_memory=device.type == "cuda",
                        persistent_workers=cfg.num_workers > 0)
    per_epoch = max(1, len(loader))
    batches = _batches(loader, sampler, start_epoch=step // per_epoch)

    log_path = run_dir / "log.jsonl"
    bar = None
    if dist_info.main and cfg.progress:
        from tqdm import tqdm

        tty = sys.stderr.isatty()
        bar = tqdm(total=cfg.steps, initial=step, desc=run_dir.name, dynamic_ncols=True,
                   mininterval=0.5 if tty else 60.0)

    def log(row: dict) -> None:
        if dist_info.main:
            with open(log_path, "a") as f:
                f.write(json.dumps(row) + "\n")

    def checkpoint() -> None:
        if dist_info.main:
            extra = {"best": best, "wall_s": history_wall + time.time() - t0,
                     "loop": {k: v for k, v in asdict(cfg).items() if k != "extra"}}
            save_checkpoint(run_dir / LAST, training_state(unwrap(model), optimizer, scheduler, step, extra))
            if cfg.snapshots:   # weights only: for choosing or averaging snapshots after the run
                save_checkpoint(run_dir / "snapshots" / f"step-{step:06d}.pt",
                                {"model": {k: v.detach().cpu() for k, v in unwrap(model).state_dict().items()},
                                 "step": int(step)})

    def validate() -> dict:
        nonlocal best
        if not dist_info.main:
            return {}
        net = unwrap(model)
        net.eval()
        with torch.no_grad():
            metrics = task.validate(net, device)
        net.train()
        key = metrics.get("_key", "val_loss")
        value = metrics.get(key)
        if value is not None and (best is None or value < best["value"]):
            best = {"step": step, "key": key, "value": float(value)}
            save_checkpoint(run_dir / "best.pt", {"model": {k: v.detach().cpu() for k, v in net.state_dict().items()},
                                                  "step": step, "metrics": _plain(metrics)})
        log({"step": step, "val": _plain(metrics), "wall_s": history_wall + time.time() - t0})
        if bar is not None:
            bar.write(f"step {step}: " + ", ".join(f"{k} {v:.4g}" for k, v in metrics.items()
                                                  if isinstance(v, (int, float)) and not k.startswith("_")))
        return metrics

    t0 = time.time()
    last_terms: dict = {}
    last_val: dict = {}
    model.train()
    stopped_early = False
    with _Stop() as stop:
        while step < cfg.steps:
            batch = to_device(next(batches), device)
            loss, terms = task.loss(model, batch)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if cfg.grad_clip:
                torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            optimizer.step()
            scheduler.step()
            step += 1
            if bar is not None:
                bar.update(1)
            if step % cfg.log_every == 0 or step == cfg.steps:
                last_terms = {"loss": float(loss.detach())} | {k: float(v) for k, v in terms.items()}
                log({"step": step, "lr": scheduler.get_last_lr()[0], **last_terms,
                     "wall_s": history_wall + time.time() - t0})
                if bar is not None:
                    bar.set_postfix(loss=f"{last_terms['loss']:.4f}", refresh=False)
            if cfg.val_every and step % cfg.val_every == 0:
                last_val = validate()
            out_of_time = cfg.max_minutes is not None and (time.time() - t0) > cfg.max_minutes * 60
            if dist_info.world > 1:   # every rank stops at the same step
                import torch.distributed as dist

                flag = torch.tensor([float(stop.requested or out_of_time)], device=device)
                dist.all_reduce(flag, op=dist.ReduceOp.MAX)
                out_of_time = bool(flag.item()) and not stop.requested
            if step % cfg.ckpt_every == 0 or stop.requested or out_of_time:
                checkpoint()
            if stop.requested or out_of_time:
                stopped_early = True
                if dist_info.main:
                    print(f"stopping at step {step} ({'signal' if stop.requested else 'time limit'})", flush=True)
                break
        if step % cfg.ckpt_every != 0 and not stopped_early:
            checkpoint()
    if bar is not None:
        bar.close()
    if not last_val or (cfg.val_every and step % cfg.val_every != 0):
        last_val = validate()
    wall = history_wall + time.time() - t0
    summary = {"steps": step, "wall_s": wall, "last": last_terms, "val": _plain(last_val), "best": best,
               "stopped_early": stopped_early, "device": str(device), "world_size": dist_info.world}
    if dist_info.main:
        task.export(unwrap(model), step, summary)
    if dist_info.world > 1:
        import torch.distributed as dist

        dist.barrier()
        dist.destroy_process_group()
    return summary


def _plain(d: dict) -> dict:
    """Metrics as JSON-friendly numbers."""
    out = {}
    for k, v in (d or {}).items():
        if isinstance(v, torch.Tensor):
            v = v.item() if v.numel() == 1 else v.tolist()
        if hasattr(v, "item") and not isinstance(v, (list, dict)):
            try:
                v = v.item()
            except (ValueError, AttributeError):
                pass
        out[k] = v
    return out
