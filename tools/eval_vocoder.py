#!/usr/bin/env python3
"""Evaluate mel vocoders on a manifest split, in the form of the PG vocoder
paper's Table 1 (harmonic error on notes and chords, spectral distances,
real-time factor) and Fig. 4 (harmonic error against pitch and per chord type)."""

from __future__ import annotations

import argparse
import io
import json
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from rtengine import metrics as M  # noqa: E402
from rtengine.metrics import clip_kind  # noqa: E402,F401  (also this tool's API)
from rtengine.config import AudioConfig, get_config  # noqa: E402
from rtengine.data.manifest import atomic_write_bytes, atomic_write_text, load_manifest  # noqa: E402
from rtengine.data.presets import sounding_pitches  # noqa: E402
from rtengine.errors import UserError  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]

# A system turns one clip into audio. It receives the reference audio ``x``
# ``(L,)`` and its log-mel ``(n_mels, T)``; vocoders must use only the log-mel
# (the oracle uses the audio). It returns float audio at cfg.sample_rate.
SystemFn = Callable[[np.ndarray, np.ndarray, AudioConfig], np.ndarray]


@dataclass
class System:
    name: str
    make: Callable[[AudioConfig], SystemFn]  # called once, before timing starts
    about: str


def _pghi_with(options: dict) -> Callable[[AudioConfig], SystemFn]:
    def make(cfg: AudioConfig) -> SystemFn:
        from rtengine.dsp.vocoder import PGHIVocoder, run_offline

        try:
            voc = PGHIVocoder(cfg, **options)
        except TypeError as e:
            raise UserError(f"pghi: {e}") from None

        def run(x, logmel, cfg):
            voc.reset()
            return run_offline(voc, logmel)
        return run
    return make


def _griffin_lim(n_iter: int) -> Callable[[AudioConfig], SystemFn]:
    def make(cfg: AudioConfig) -> SystemFn:
        import librosa

        from rtengine.dsp.mel import mel_to_magnitude

        def run(x, logmel, cfg):
            # librosa frames are window-start referenced, ours centre referenced;
            # magnitudes are the same, and GL makes its own phase.
            mag = mel_to_magnitude(logmel, cfg)
            return librosa.griffinlim(mag, n_iter=n_iter, hop_length=cfg.hop, win_length=cfg.n_fft,
                                      n_fft=cfg.n_fft, window="hann", center=True,
                                      length=(logmel.shape[1] - 1) * cfg.hop, random_state=0)
        return run
    return make


def _oracle(cfg: AudioConfig) -> SystemFn:
    from rtengine.dsp.stft import istft, stft

    return lambda x, logmel, cfg: istft(stft(x, cfg), cfg, (logmel.shape[1] - 1) * cfg.hop)


SYSTEMS: dict[str, System] = {
    "pghi": System("pghi", _pghi_with({}), "model-free phase-gradient heap integration (rtengine.dsp.vocoder)"),
    "gl32": System("gl32", _griffin_lim(32), "Griffin-Lim, 32 iterations, on the mel-inverted magnitude"),
    "gl100": System("gl100", _griffin_lim(100), "Griffin-Lim, 100 iterations, on the mel-inverted magnitude"),
    "oracle": System("oracle", _oracle, "true complex STFT -> inverse STFT (perfect reconstruction)"),
}

# Trained models: models/<name>/card.yaml names a ``type``; a loader for that type
# returns a SystemFn factory (options from a ``NAME:key=value,...`` system spec).
# Add one line here when a model type ships.
MODEL_LOADERS: dict[str, Callable[..., Callable[[AudioConfig], SystemFn]]] = {}


def _pgvoc_loader(model_dir: Path, **options):
    from rtengine.neural_vocoder import eval_system

    try:
        return eval_system(model_dir, **options)
    except TypeError as e:
        raise UserError(f"{model_dir.name}: {e}") from None


MODEL_LOADERS["pgvoc"] = _pgvoc_loader


def parse_spec(spec: str) -> tuple[str, dict]:
    """``NAME`` or ``NAME:key=value,key=value`` (values read as YAML scalars)."""
    import yaml

    name, _, rest = spec.partition(":")
    options = {}
    for item in filter(None, rest.split(",")):
        key, eq, value = item.partition("=")
        if not eq or not key:
            raise UserError(f"system {spec!r}: expected NAME:key=value,... (e.g. pgvoc-22k:lookahead=true)")
        options[key.strip()] = yaml.safe_load(value)
    return name, options


def resolve_system(spec: str, models_dir: Path = ROOT / "models") -> System:
    """A built-in system, a model under ``models/<name>/`` or a model folder
    given by its path, each optionally with ``:key=value,...`` options."""
    name, options = parse_spec(spec)
    if name in SYSTEMS and not options:
        return SYSTEMS[name]
    if name == "pghi":
        about = ", ".join(f"{k}={v}" for k, v in options.items())
        return System(spec, _pghi_with(options), f"{SYSTEMS['pghi'].about}, {about}")
    folder = models_dir / name
    if not (folder / "card.yaml").exists() and (Path(name) / "card.yaml").exists():
        folder = Path(name)
    card = folder / "card.yaml"
    if card.exists():
        import yaml

        meta = yaml.safe_load(card.read_text()) or {}
        kind = meta.get("type")
        if kind not in MODEL_LOADERS:
            raise UserError(f"{card}: no evaluation loader for model type {kind!r} yet "
                            f"(known: {', '.join(MODEL_LOADERS) or 'none'})")
        shown = folder.resolve().relative_to(ROOT) if folder.resolve().is_relative_to(ROOT) else folder
        about = f"model {shown} ({kind})" + "".join(f", {k}={v}" for k, v in options.items())
        return System(spec, MODEL_LOADERS[kind](folder, **options), about)
    avail = sorted(SYSTEMS) + sorted(p.parent.name for p in models_dir.glob("*/card.yaml"))
    raise UserError(f"unknown system {name!r}; expected one of {', '.join(avail)} or a model folder")


# ------------------------------------------------------------------ evaluation
def evaluate_clip(x: np.ndarray, y: np.ndarray, labels: dict, cfg: AudioConfig) -> dict:
    """Metrics of one reconstruction ``y`` against its reference ``x``."""
    n = min(len(x), len(y))
    x, y = x[:n], y[:n]
    res = {"lsd_db": M.log_spectral_distance(x, y, cfg.sample_rate, cfg.n_fft, cfg.hop),
           "sc_db": M.spectral_convergence(x, y, cfg.sample_rate, cfg.n_fft, cfg.hop),
           "logmel_l1": M.log_mel_l1(x, y, cfg)}
    if "chord" in labels and labels.get("pitches"):
        h = M.harmonic_error(x, y, sounding_pitches(labels), cfg.sample_rate)
        ok = ~np.isnan(h)
        res["herr_mean"] = float(np.mean(h[ok])) if ok.any() else None
        res["herr_max"] = float(np.max(h[ok])) if ok.any() else None
    return res


def _mean(v) -> float | None:
    v = [a for a in v if a is not None and not (isinstance(a, float) and math.isnan(a))]
    return float(np.mean(v)) if v else None


def summarise(clips: list[dict], systems: list[str]) -> dict:
    """Per system: H_err (notes, chords; mean of clip means and of clip maxima),
    LSD, SC, log-mel L1 (clip means) and RTF (audio seconds per second)."""
    out = {}
    for s in systems:
        rs = [c for c in clips if s in c["results"]]
        def col(key, kind=None):
            return _mean([c["results"][s].get(key) for c in rs if kind is None or c["kind"] == kind])
        audio = sum(c["seconds"] for c in rs)
        busy = sum(c["results"][s]["time_s"] for c in rs)
        out[s] = {"herr_notes_mean": col("herr_mean", "notes"), "herr_notes_max": col("herr_max", "notes"),
                  "herr_chords_mean": col("herr_mean", "chords"), "herr_chords_max": col("herr_max", "chords"),
                  "lsd_db": col("lsd_db"), "sc_db": col("sc_db"), "logmel_l1": col("logmel_l1"),
                  "rtf": audio / busy if busy > 0 else None, "clips": len(rs)}
    return out


def _fmt(v, nd=2):
    return "—" if v is None else f"{v:.{nd}f}"


def markdown_table(summary: dict, meta: dict) -> str:
    lines = [f"# Vocoder evaluation: {meta['manifest']} (split {meta['split']}, {meta['clips']} clips)", "",
             "| system | H_err notes mean | H_err notes max | H_err chords mean | H_err chords max "
             "| LSD (dB) | SC (dB) | log-mel L1 | RTF |",
             "|---|---|---|---|---|---|---|---|---|"]
    for s, r in summary.items():
        lines.append(f"| {s} | {_fmt(r['herr_notes_mean'], 3)} | {_fmt(r['herr_notes_max'], 3)} "
                     f"| {_fmt(r['herr_chords_mean'], 3)} | {_fmt(r['herr_chords_max'], 3)} "
                     f"| {_fmt(r['lsd_db'])} | {_fmt(r['sc_db'])} | {_fmt(r['logmel_l1'], 3)} "
                     f"| {_fmt(r['rtf'], 1)} |")
    lines += ["", "H_err: harmonic error (PG paper eq. 13) in semitones, fundamental + 4 harmonics, "
              "per frame averaged over notes and partials; *mean* is the mean over clips of the "
              "frame mean, *max* the mean over clips of the frame maximum. Notes: single notes; "
              "chords: combinations with more than one pitch class (octaves count in neither). "
              "LSD and SC on the 1024/256 STFT (SC floored at -200 dB). RTF: seconds of audio per second of vocoding "
              f"({meta['device']}, one process).", ""]
    for s in summary:
        lines.append(f"- `{s}`: {meta['about'][s]}")
    return "\n".join(lines) + "\n"


def moving_average(pitch: np.ndarray, val: np.ndarray, size: float = 12, stride: float = 6):
    """Mean of ``val`` in windows of ``size`` semitones every ``stride``
    semitones (Fig. 4's smoothing). Returns window centres and means (windows
    without data are left out)."""
    if len(pitch) == 0:
        return np.array([]), np.array([])
    starts = np.arange(pitch.min() - size / 2, pitch.max() - size / 2 + stride, stride)
    cs, ms = [], []
    for a in starts:
        sel = (pitch >= a) & (pitch < a + size)
        if sel.any():
            cs.append(a + size / 2)
            ms.append(float(np.mean(val[sel])))
    return np.array(cs), np.array(ms)


def figure(clips: list[dict], systems: list[str]) -> bytes:
    """Fig. 4: top, H_err of single notes against pitch (moving average 12/6
    semitones), mean and max; bottom, H_err per chord type, averaged over pitch."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 2, figsize=(12, 8))
    order = ["note", "octave", "fifth", "twelfth", "close_triad", "open_triad", "major_seventh"]
    chords = [c for c in order if any(k["labels"].get("chord") == c for k in clips)]
    chords += sorted({k["labels"].get("chord") for k in clips if k["labels"].get("chord")} - set(chords))
    width = 0.8 / max(len(systems), 1)
    for j, stat in enumerate(("mean", "max")):
        ax = axes[0, j]
        for s in systems:
            pts = [(k["labels"]["pitches"][0], k["results"][s].get(f"herr_{stat}")) for k in clips
                   if k["kind"] == "notes" and s in k["results"]
                   and k["results"][s].get(f"herr_{stat}") is not None]
            if pts:
                p, v = np.array(pts, dtype=float).T
                c, m = moving_average(p, v)
                ax.plot(c, m, marker="o", label=s)
        ax.set_title(f"single notes: {stat} harmonic error (moving average 12/6 st)")
        ax.set_xlabel("pitch")
        ticks = [p for p in range(24, 121, 12) if ax.get_xlim()[0] <= p <= ax.get_xlim()[1]]
        ax.set_xticks(ticks, [f"C{p // 12 - 1}" for p in ticks])
        ax.set_ylabel("H_err (semitones)")
        ax.set_ylim(bottom=0)
        ax.grid(alpha=0.3)
        ax = axes[1, j]
        for i, s in enumerate(systems):
            vals = [_mean([k["results"][s].get(f"herr_{stat}") for k in clips
                           if k["labels"].get("chord") == ch and s in k["results"]]) for ch in chords]
            ax.bar(np.arange(len(chords)) + (i - (len(systems) - 1) / 2) * width,
                   [v if v is not None else 0 for v in vals], width, label=s)
        ivs = {k["labels"]["chord"]: k["labels"].get("intervals") for k in clips if k["labels"].get("chord")}
        ax.set_xticks(np.arange(len(chords)),
                      [",".join(map(str, ivs[c])) if ivs.get(c) else c for c in chords])
        ax.set_title(f"per chord type (intervals in semitones): {stat} harmonic error")
        ax.set_ylabel("H_err (semitones)")
        ax.set_ylim(bottom=0)
        ax.grid(alpha=0.3, axis="y")
    # one legend for all four panels, below them (ten systems do not fit inside one)
    handles, labels = axes[0, 0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=min(len(labels), 5), fontsize="small")
    fig.tight_layout(rect=(0, 0.04 * (1 + (len(labels) - 1) // 5), 1, 1))
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    return buf.getvalue()


EPILOG = """\
systems: pghi (model-free phase-gradient vocoder), gl32 / gl100 (Griffin-Lim on the
mel-inverted magnitude), oracle (the reference's own STFT, inverted), or the
name of a folder under models/ with a card.yaml (or the path of one). Add
options after a colon: pghi:nnls_iter=100, pgvoc-22k:mode=lambda,
pgvoc-22k:lookahead=true (one frame of integrator look-ahead).

examples:
  python tools/make_dataset.py --preset nc --out data/nc
  python tools/eval_vocoder.py --manifest data/nc/manifest.jsonl --split test \\
      --systems pghi gl32 gl100 oracle --out reports/eval-nc
  # the shipped neural vocoder, causal and with one frame of integrator look-ahead
  python tools/eval_vocoder.py --manifest data/nc/manifest.jsonl \
      --systems pgvoc-22k pgvoc-22k:lookahead=true pghi gl32 --out reports/eval-pgvoc
  # a quick look at 10 clips
  python tools/eval_vocoder.py --manifest data/nc/manifest.jsonl --limit 10 --out /tmp/ev

Writes OUT/table.md, OUT/results.json (summary + per-clip metrics) and, when the
split has labelled notes or chords, OUT/fig4.png.
"""


def parse_args(argv=None):
    ap = argparse.ArgumentParser(prog="eval_vocoder.py", description=__doc__, epilog=EPILOG,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--manifest", required=True, help="manifest.jsonl from tools/make_dataset.py")
    ap.add_argument("--split", default="test", choices=("train", "val", "test", "all"),
                    help="which split to evaluate (default test)")
    ap.add_argument("--systems", nargs="+", default=["pghi", "gl32", "gl100", "oracle"],
                    help="systems to run (default: pghi gl32 gl100 oracle)")
    ap.add_argument("--limit", type=int, help="first N clips of the split")
    ap.add_argument("--config", default="22k", help="audio config (default 22k)")
    ap.add_argument("--out", default="reports/eval", help="output folder (default reports/eval)")
    ap.add_argument("--no-progress", action="store_true")
    return ap.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        return run(args)
    except UserError as e:
        print(f"eval_vocoder.py: error: {e}", file=sys.stderr)
        return 2


def run(args) -> int:
    import platform

    import soundfile as sf
    from tqdm import tqdm

    from rtengine.dsp.mel import log_mel

    cfg = get_config(args.config)
    rows = load_manifest(args.manifest, None if args.split == "all" else args.split, args.limit)
    if not rows:
        raise UserError(f"{args.manifest}: no clips in split {args.split!r}")
    systems = [resolve_system(s) for s in dict.fromkeys(args.systems)]
    fns = {s.name: s.make(cfg) for s in systems}
    # warm-up (numba compilation, caches) outside the timed calls
    warm = np.random.default_rng(0).standard_normal(cfg.sample_rate // 2) * 0.1
    for fn in fns.values():
        fn(warm, log_mel(warm, cfg), cfg)
    clips = []
    t_start = time.perf_counter()
    for r in tqdm(rows, desc="eval", unit="clip", disable=args.no_progress):
        x, sr = sf.read(r["abspath"], dtype="float64", always_2d=True)
        x = x.mean(axis=1)
        if sr != cfg.sample_rate:
            raise UserError(f"{r['abspath']}: {sr} Hz, config {cfg.name} expects {cfg.sample_rate}")
        logmel = log_mel(x, cfg)
        clip = {"id": r["id"], "labels": r["labels"], "kind": clip_kind(r["labels"]),
                "seconds": len(x) / sr, "results": {}}
        for name, fn in fns.items():
            t = time.perf_counter()
            y = np.asarray(fn(x, logmel, cfg), dtype=np.float64)
            dt = time.perf_counter() - t
            if not np.all(np.isfinite(y)):
                raise RuntimeError(f"system {name} produced non-finite samples on {r['id']}")
            clip["results"][name] = {**evaluate_clip(x, y, r["labels"], cfg), "time_s": dt}
        clips.append(clip)
    names = [s.name for s in systems]
    summary = summarise(clips, names)
    meta = {"manifest": str(args.manifest), "split": args.split, "clips": len(clips),
            "systems": names, "about": {s.name: s.about for s in systems},
            "device": f"{platform.processor() or platform.machine()} CPU",
            "config": cfg.to_dict(), "wall_seconds": round(time.perf_counter() - t_start, 2)}
    out = Path(args.out)
    atomic_write_text(out / "results.json",
                      json.dumps({"meta": meta, "summary": summary, "clips": clips}, indent=1) + "\n")
    table = markdown_table(summary, meta)
    atomic_write_text(out / "table.md", table)
    written = ["table.md", "results.json"]
    if any(k["kind"] in ("notes", "chords") for k in clips):     # Fig. 4 plots H_err: notes and chords only
        atomic_write_bytes(out / "fig4.png", figure(clips, names))
        written.append("fig4.png")
    print(table)
    print(f"wrote {', '.join(f'{out}/{w}' for w in written)} in {meta['wall_seconds']} s"
          + ("" if "fig4.png" in written else " (no notes or chords: no Fig. 4)"), file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
