#!/usr/bin/env python3
"""Render a training/evaluation dataset of General MIDI audio with FluidSynth,
or cut a folder of your own recordings into clips, and write a manifest."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from rtengine.data import presets as P  # noqa: E402
from rtengine.data.manifest import atomic_write_text, read_jsonl, write_jsonl  # noqa: E402
from rtengine.data.render import (DEFAULT_SOUNDFONT, RenderOptions, check_soundfont,  # noqa: E402
                                  fluidsynth_binary, folder_sources, ingest_file, render_batch)
from rtengine.errors import UserError  # noqa: E402

EPILOG = """\
presets:
  nc       the PG vocoder paper's pitch-stability set: 1 s notes and chords (note,
           octave, 12th, fifth, open triad, close triad, major seventh) on every
           root C2..C7, played by rhodes, church organ, string ensemble and nylon
           guitar: 1708 clips of 1.5 s (note + release). Split by root pitch, so
           test and val span the whole range. --count is ignored.
  notes    NSynth-like single notes: random melodic GM program, pitch in its
           range, velocity 25/50/75/100/127; held 3 s, 4 s clips (default 3000).
  phrases  6 s musical clips: chord progressions, arpeggios, melodies over a bass
           line, drum grooves; random tempo, key, mode and programs (default 1500).
  --from-folder DIR
           your own audio (any format soundfile reads), mono, resampled to
           22050 Hz, cut into --clip-seconds clips; silent clips dropped; every
           clip of a file lands in the same split.

examples:
  # the full notes-and-chords set (about 10 s on 2 cores)
  python tools/make_dataset.py --preset nc --out data/nc
  # a quick 20-clip look at the phrases
  python tools/make_dataset.py --preset phrases --limit 20 --out /tmp/phrases
  # 2000 single notes from another soundfont, 4 parallel renders
  python tools/make_dataset.py --preset notes --count 2000 --jobs 4 \\
      --soundfont ~/sf/MuseScore_General.sf3 --out data/notes-msg
  # your recordings, cut into 4 s clips
  python tools/make_dataset.py --from-folder ~/recordings --clip-seconds 4 --out data/mine

Interrupted? Run the same command again: clips already listed in
manifest.jsonl (or skipped.jsonl, for silent ones) are not rendered again.
Output: OUT/audio/{train,val,test}/*.wav, OUT/manifest.jsonl (one JSON row per
clip: id, path, split, preset, duration, sample_rate, labels, peak_db, rms_db,
gain_db), OUT/skipped.jsonl, OUT/dataset.json (settings and totals).
"""

# settings that must match when resuming into an existing folder
_IDENTITY = ("preset", "seed", "from_folder", "clip_seconds", "normalize", "peak_dbfs",
             "subtype", "gain", "soundfont_name", "detune")


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(
        prog="make_dataset.py", description=__doc__, epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    src = ap.add_mutually_exclusive_group(required=True)
    src.add_argument("--preset", choices=sorted(P.PRESETS), help="what to synthesise")
    src.add_argument("--from-folder", metavar="DIR", help="cut your own audio files into clips")
    ap.add_argument("--out", metavar="DIR", help="output folder (default data/<preset>)")
    ap.add_argument("--seed", type=int, default=0, help="seed of the plan and the splits (default 0)")
    ap.add_argument("--count", type=int, metavar="N",
                    help="clips to plan (notes: 3000, phrases: 1500; nc is fixed at 1708)")
    ap.add_argument("--limit", type=int, metavar="N",
                    help="render only the first N clips of the plan (with --from-folder: "
                         "the first N files); rerun without it to complete the set")
    ap.add_argument("--jobs", type=int, default=2, help="parallel renders (default 2)")
    ap.add_argument("--batch-size", type=int, default=128, metavar="N",
                    help="clips per FluidSynth launch (default 128)")
    ap.add_argument("--soundfont", default=DEFAULT_SOUNDFONT, metavar="SF2",
                    help=f".sf2/.sf3 soundfont (default {DEFAULT_SOUNDFONT})")
    ap.add_argument("--gain", type=float, default=0.5, help="FluidSynth master gain -g (default 0.5)")
    ap.add_argument("--normalize", choices=("peak", "none"), default="peak",
                    help="peak: scale every clip to --peak-dbfs (default); none: keep the "
                         "rendered level (velocity stays audible), only scale down clips "
                         "that would exceed --peak-dbfs")
    ap.add_argument("--peak-dbfs", type=float, default=-1.0, help="target/maximum peak (default -1)")
    ap.add_argument("--subtype", choices=("PCM_16", "FLOAT"), default="PCM_16",
                    help="WAV sample format (default PCM_16)")
    ap.add_argument("--clip-seconds", type=float, default=6.0,
                    help="clip length for --from-folder (default 6)")
    ap.add_argument("--detune", type=float, default=0.0, metavar="CENTS",
                    help="detune each clip by a random amount within ±CENTS (pitch wheel; the labels "
                         "get detune_cents): training data off the semitone grid (default 0)")
    ap.add_argument("--no-progress", action="store_true", help="no progress bar")
    args = ap.parse_args(argv)
    if args.out is None:
        args.out = os.path.join("data", args.preset or "folder")
    for name in ("count", "limit", "jobs", "batch_size"):
        v = getattr(args, name)
        if v is not None and v < 1:
            ap.error(f"--{name.replace('_', '-')} must be at least 1")
    if args.clip_seconds <= 0:
        ap.error("--clip-seconds must be positive")
    if not 0 <= args.detune <= 200:
        ap.error("--detune must be between 0 and 200 cents (the pitch wheel's range)")
    if args.detune and args.from_folder:
        ap.error("--detune applies to the presets, not to --from-folder")
    return args


def _identity(args) -> dict:
    return {"preset": args.preset or "folder", "seed": args.seed,
            "from_folder": str(Path(args.from_folder).resolve()) if args.from_folder else None,
            "clip_seconds": args.clip_seconds if args.from_folder else None,
            "normalize": args.normalize, "peak_dbfs": args.peak_dbfs, "subtype": args.subtype,
            "gain": None if args.from_folder else args.gain,
            "soundfont_name": None if args.from_folder else Path(args.soundfont).name,
            "detune": args.detune or None}


def _check_resume(out: Path, ident: dict) -> dict:
    info_path = out / "dataset.json"
    if not info_path.exists():
        return {}
    try:
        old = json.loads(info_path.read_text())
    except json.JSONDecodeError:
        raise UserError(f"{info_path} is not valid JSON; remove it or pick another --out") from None
    diff = [k for k in _IDENTITY if old.get("settings", {}).get(k) != ident[k]]
    if diff:
        k = diff[0]
        raise UserError(f"{out} holds a dataset made with {k}={old['settings'].get(k)!r}, "
                        f"not {ident[k]!r}; pick another --out or the same settings")
    return old


def _task(kind: str, payload, opts: RenderOptions, args_tuple):
    if kind == "midi":
        return render_batch(payload, opts)
    folder, seed, clip_seconds = args_tuple
    return ingest_file(folder, payload, seed, clip_seconds, opts)


def _tasks(args, done: set[str], done_sources: set[str]):
    """(kind, payload, clip count) units of work still to do, in plan order."""
    if args.from_folder:
        files = folder_sources(args.from_folder)
        out = Path(args.out).resolve()
        files = [f for f in files  # never ingest our own output
                 if out not in (Path(args.from_folder).resolve() / f).parents]
        if args.limit:
            files = files[:args.limit]
        return [("folder", f, 1) for f in files if f not in done_sources], len(files), "files"
    count = args.count or P.DEFAULT_COUNTS[args.preset]
    plan = P.PRESETS[args.preset](args.seed, count) if count else P.PRESETS[args.preset](args.seed)
    if args.detune:
        plan = P.detune(plan, args.detune, args.seed)
    if args.limit:
        plan = plan[:args.limit]
    todo = [c for c in plan if c.id not in done]
    batches, cur = [], []
    for c in todo:  # one batch holds clips of one group, at most --batch-size
        if cur and (len(cur) >= args.batch_size or cur[-1].group != c.group):
            batches.append(cur)
            cur = []
        cur.append(c)
    if cur:
        batches.append(cur)
    return [("midi", b, len(b)) for b in batches], len(plan), "clips"


def _summary(out: Path, rows: list[dict]) -> dict:
    by_split = {s: sum(r["split"] == s for r in rows) for s in ("train", "val", "test")}
    size = sum((out / r["path"]).stat().st_size for r in rows if (out / r["path"]).exists())
    return {"clips": len(rows), "clips_per_split": by_split,
            "minutes": round(sum(r["duration"] for r in rows) / 60, 2),
            "megabytes": round(size / 1e6, 1)}


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        return run(args)
    except UserError as e:
        print(f"make_dataset.py: error: {e}", file=sys.stderr)
        return 2


def run(args) -> int:
    out = Path(args.out)
    ident = _identity(args)
    if not args.from_folder:
        fluidsynth_binary()
        soundfont = check_soundfont(args.soundfont)
    else:
        soundfont = ""
    out.mkdir(parents=True, exist_ok=True)
    old = _check_resume(out, ident)
    man_path, skip_path = out / "manifest.jsonl", out / "skipped.jsonl"
    rows = [r for r in read_jsonl(man_path) if (out / r["path"]).exists()]
    skipped = read_jsonl(skip_path)
    done = {r["id"] for r in rows} | {s["id"] for s in skipped}
    done_sources = {r["labels"].get("source") for r in rows} | {s.get("source") for s in skipped}
    tasks, planned, unit = _tasks(args, done, done_sources)
    # rewrite the (possibly torn or stale) lists before appending to them
    write_jsonl(man_path, rows)
    write_jsonl(skip_path, skipped)
    settings = dict(ident, soundfont=soundfont or None)
    n_todo = sum(n for _, _, n in tasks)
    print(f"{out}: {planned} {unit} planned, {planned - n_todo} already done, "
          f"{n_todo} to render with {args.jobs} job(s)", file=sys.stderr)

    opts = RenderOptions(out_dir=str(out), soundfont=soundfont, gain=args.gain,
                         normalize=args.normalize, peak_dbfs=args.peak_dbfs, subtype=args.subtype)
    extra = (args.from_folder, args.seed, args.clip_seconds)
    t0 = time.perf_counter()
    synth_s = 0.0
    if tasks:
        from tqdm import tqdm

        bar = tqdm(total=n_todo, unit=unit[:-1], disable=args.no_progress, desc=out.name)
        with ProcessPoolExecutor(max_workers=args.jobs) as pool, \
                open(man_path, "a", encoding="utf-8") as fm, open(skip_path, "a", encoding="utf-8") as fs:
            pending = {pool.submit(_task, k, p, opts, extra): n for k, p, n in tasks}
            try:
                while pending:
                    finished, _ = wait(pending, return_when=FIRST_COMPLETED)
                    for fut in finished:
                        n = pending.pop(fut)
                        new_rows, new_skipped, s = fut.result()
                        synth_s += s
                        for r in new_rows:
                            fm.write(json.dumps(r, sort_keys=True) + "\n")
                        for r in new_skipped:
                            fs.write(json.dumps(r, sort_keys=True) + "\n")
                        fm.flush()
                        fs.flush()
                        rows += new_rows
                        skipped += new_skipped
                        bar.update(n)
            except BaseException:
                for fut in pending:
                    fut.cancel()
                raise
            finally:
                bar.close()
    wall = time.perf_counter() - t0
    # final, ordered manifest (atomic)
    rows.sort(key=lambda r: r["id"])
    write_jsonl(man_path, rows)
    write_jsonl(skip_path, sorted(skipped, key=lambda r: r["id"]))
    summary = _summary(out, rows)
    history = old.get("runs", []) + [{"rendered": n_todo, "wall_seconds": round(wall, 2),
                                       "synth_seconds": round(synth_s, 2), "jobs": args.jobs,
                                       "limit": args.limit, "count": args.count}]
    info = {"settings": settings, **summary, "skipped": len(skipped), "runs": history}
    atomic_write_text(out / "dataset.json", json.dumps(info, indent=2) + "\n")
    print(f"{out}: {summary['clips']} clips {summary['clips_per_split']}, "
          f"{summary['minutes']} min, {summary['megabytes']} MB, {len(skipped)} skipped; "
          f"this run {n_todo} {unit} in {wall:.1f} s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
