#!/usr/bin/env python
"""Evaluate LatentFT on phrases clips of one split (default test).

1. Conditional generation, one condition per band of the 2-, 4- and 8-band
   partitions (14 in all): the clip is streamed through the live operator
   (look-ahead D, chunks of H, ring of 512 frames) keeping only that band,
   decoded, and vocoded (PGHI). Adherence to the input in that band:
   loudness-curve correlation and rhythm (beat spectrum of the onset
   envelope, cosine), both band-passed to the band (rtengine.metrics). The
   loudness curve twice: the mean of A-weighted dB over bins (Morrison et
   al., which the paper cites) and 10·log10 of the mean A-weighted power
   (what the authors' evaluation code computes).
   Baseline "Spectrogram": the scaled log-mel itself DFT-masked along time
   with the same band (offline, two-sided, whole clip), then vocoded. And
   the same baseline as it would run live ("spectrogram_live"): the scaled
   log-mel through LatentFT's own one-sided operator (window W, look-ahead
   D, chunks of H), the like-for-like comparison for the streamed figures.
   ``--vocoder`` picks the vocoder of all outputs: PGHI (default) or a PG
   vocoder network (``pgvoc-22k``), as the paper vocodes with one (BigVGAN).
   ``--embed``: every method gets the same stream, the clip between the
   split's two clips after it (as on stage, where the stream goes on: the
   ring full of music and the look-ahead too), scored on the clip's span;
   by default each clip is a stream of its own between silences (the live
   methods start cold and see the stream end, which the offline baseline
   does not suffer the same way).
   Quality (the paper's FAD, here on log-mel frames): the Fréchet distance
   between the scaled log-mel frames of the vocoded outputs and those of the
   input clips (``mel_fd``, lower is better).
2. Blending: pairs of clips, A keeps the slow half (< 2.7 Hz), B the fast
   half, weights ½, ½, guidance 2 (the paper's; ``--blend-guidance``); adherence to A in A's
   band and to B in B's band, beside the spectrogram-domain blend.
3. The streaming operator alone, for several look-aheads D: how well the
   one-sided masked latent keeps a band's energy compared with the offline
   two-sided mask (no decoder involved).

    python tools/eval_latentft.py --data data/phrases/manifest.jsonl \
        --model models/latentft-22k --clips 12 --json reports/latentft-eval.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from rtengine.config import get_config  # noqa: E402
from rtengine.dsp.mel import log_mel  # noqa: E402
from rtengine.dsp.vocoder import vocode_pghi  # noqa: E402
from rtengine.data.manifest import atomic_write_text  # noqa: E402
from rtengine.io import read_audio  # noqa: E402
from rtengine.metrics import frechet_distance, loudness_correlation, rhythm_similarity  # noqa: E402
from rtengine.nn.latentft import (LOCK_REGIONS, LOG_MEL_MIN, apply_latent_mask, band_edges_hz,  # noqa: E402
                                  band_mask, load_model, one_sided_operator, scale_mel,
                                  stream_generate, unscale_mel)

PARTITIONS = (2, 4, 8)


def conditions():
    """The 14 single-band conditions: ``[(n_bands, band, (lo_hz, hi_hz))]``."""
    return [(n, b, band_edges_hz(n)[b]) for n in PARTITIONS for b in range(n)]


def spectrogram_baseline(mel: np.ndarray, masks_fn) -> np.ndarray:
    """The paper's "Spectrogram" baseline: DFT-mask the scaled log-mel along
    time (whole clip, zero-padded to ≥ 2T) and unscale. masks_fn(n_dft) →
    ``(B, n_dft/2+1)``. → ``(B, n_mels, T)`` log-mel."""
    T = mel.shape[1]
    n = int(2 ** np.ceil(np.log2(2 * T)))
    y = torch.from_numpy(scale_mel(mel).astype(np.float32))[None]
    m = torch.from_numpy(masks_fn(n))
    out = apply_latent_mask(y.expand(m.shape[0], -1, -1), m, n)
    return np.maximum(unscale_mel(out.numpy()), LOG_MEL_MIN)


def one_sided_mel(mel: np.ndarray, masks: torch.Tensor, lookahead: int, hop: int,
                  window: int) -> torch.Tensor:
    """The "Spectrogram" baseline through the live operator: the scaled
    log-mel streamed as LatentFT streams its latent (a ring of ``window``
    frames that starts as silence, masked every ``hop`` frames, frames
    ``lookahead`` behind the newest kept; :func:`one_sided_operator`), aligned
    with the input. masks ``(B, window+1)`` → ``(B, n_mels, T)`` scaled log-mel
    (:func:`scale_mel`; sources of a blend add in this domain)."""
    T = mel.shape[1]
    y = torch.from_numpy(scale_mel(mel).astype(np.float32))
    pad = torch.full((y.shape[0],), float(scale_mel(LOG_MEL_MIN)))
    stream = torch.cat([y, pad[:, None].expand(-1, lookahead + hop)], dim=1)    # silence after it
    return one_sided_operator(stream, masks, lookahead, hop, pad, window)[..., lookahead:lookahead + T]


def spectrogram_baseline_live(mel: np.ndarray, masks: torch.Tensor, lookahead: int, hop: int,
                              window: int) -> np.ndarray:
    """:func:`one_sided_mel` as log-mel ``(B, n_mels, T)``."""
    return np.maximum(unscale_mel(one_sided_mel(mel, masks, lookahead, hop, window).numpy()), LOG_MEL_MIN)


def embed(mel: np.ndarray, before: np.ndarray, after: np.ndarray) -> tuple[np.ndarray, int]:
    """The stream a clip is heard in: ``before`` + clip + ``after`` (log-mels
    ``(n_mels, T)``; empty ones for a clip alone) → (stream, frame where the
    clip starts)."""
    return np.concatenate([before, mel, after], axis=1), before.shape[1]


def make_vocoder(name: str, cfg):
    """``vocode(log_mel (n_mels, T), length) -> audio``: the model-free PGHI
    vocoder (``pghi``) or a PG vocoder network under ``models/`` (loaded once)."""
    if name == "pghi":
        return lambda m, length: vocode_pghi(m, cfg, length=length)
    from rtengine.dsp.vocoder import run_offline
    from rtengine.neural_vocoder import NeuralPGVocoder

    d = Path(name) if Path(name).is_dir() else REPO / "models" / name
    if not (d / "weights.pt").exists():
        raise SystemExit(f"--vocoder {name}: no PG vocoder at {d} (expected weights.pt)")
    voc = NeuralPGVocoder(cfg, d)

    def run(m, length):
        voc.reset()
        return run_offline(voc, m, length)
    return run


def adherence(ref, est, band, sr) -> tuple[float, float, float]:
    """(loudness correlation with the dB-mean loudness, rhythm similarity,
    loudness correlation with the power-mean loudness of the authors' code)."""
    return (loudness_correlation(ref, est, sr, band=band),
            rhythm_similarity(ref, est, sr, band=band),
            loudness_correlation(ref, est, sr, band=band, average="power"))


def operator_accuracy(model, mels, lookaheads, hop) -> dict:
    """Band-energy accuracy of the one-sided streaming operator against the
    offline two-sided mask, per look-ahead D (latent level, no decoder).

    For each clip and each of the 8 bands: ``acc = 1 - ‖z_D - z_ref‖² / ‖z_ref‖²``
    over the clip's frames, where ``z_ref`` is the latent masked offline
    (whole stream, silence before it, fine DFT) and ``z_D`` the streamed one;
    and ``in_band``: the fraction of ``z_D``'s energy that lies in the band.
    Returns ``{D: {"acc": mean, "in_band": mean}}``."""
    W = model.window
    sil = model.silence_latent()
    res = {}
    for D in lookaheads:
        accs, inb, inb_ref = [], [], []
        for mel in mels:
            with torch.no_grad():
                z = model.encode(torch.from_numpy(scale_mel(mel).astype(np.float32))[None])[0]
                T = z.shape[1]
                # what the stream holds before and after the clip: silence
                tail = sil[:, None].expand(-1, D + hop)
                zz = torch.cat([z, tail], dim=1)
                full = torch.cat([sil[:, None].expand(-1, W), zz], dim=1)
                n_ref = int(2 ** np.ceil(np.log2(2 * full.shape[1])))
                for b in range(8):
                    m_win = torch.from_numpy(band_mask(8, [b], 2 * W))
                    zs = one_sided_operator(zz, m_win, D, hop, sil, W)[:, D:D + T]
                    m_ref = torch.from_numpy(band_mask(8, [b], n_ref))
                    zr = apply_latent_mask(full[None], m_ref, n_ref)[0][:, W:W + T]
                    err = float(((zs - zr) ** 2).sum() / (zr ** 2).sum().clamp(min=1e-12))
                    accs.append(1.0 - err)
                    inside = torch.from_numpy(band_mask(8, [b], n_ref)).bool()
                    for v, lst in ((zs, inb), (zr, inb_ref)):
                        S = torch.fft.rfft(v, n=n_ref, dim=1).abs() ** 2
                        lst.append(float(S[:, inside].sum() / S.sum().clamp(min=1e-12)))
        res[int(D)] = {"acc": float(np.mean(accs)), "in_band": float(np.mean(inb)),
                       "in_band_offline": float(np.mean(inb_ref))}
    return res


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default="data/phrases/manifest.jsonl")
    ap.add_argument("--model", default="models/latentft-22k")
    ap.add_argument("--split", default="test", help="manifest split (choose settings on val, report test)")
    ap.add_argument("--clips", type=int, default=12, help="clips (spread over the split)")
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--guidance", type=float, default=1.0)
    ap.add_argument("--sigma-min", type=float, default=0.002, help="sampler's last noise level")
    ap.add_argument("--blend-pairs", type=int, default=6)
    ap.add_argument("--blend-guidance", type=float, default=2.0,
                    help="guidance scale of the blends (the paper's: 2)")
    ap.add_argument("--lookaheads", default="0,8,16,32,64,128")
    ap.add_argument("--operator", choices=("stream", "offline", "clip"), default="stream",
                    help="LatentFT's band selection: the live one-sided window (stream, default), the "
                         "whole stream masked at once (offline: the silence before it too), or the clip's "
                         "own frames masked at once, zero-padded, as the paper's experiments (clip)")
    ap.add_argument("--band-gain", type=float, default=1.0,
                    help="gain of the kept band in the conditional generation (1: the paper's binary "
                         "mask; > 1 boosts it, as a performer's fader can)")
    ap.add_argument("--vocoder", default="pghi",
                    help="vocoder of every output, LatentFT's and the baselines' alike: pghi (model-free, "
                         "default) or a PG vocoder network under models/ (e.g. pgvoc-22k; the paper vocodes "
                         "with a network, BigVGAN)")
    ap.add_argument("--lock", type=float, default=0.0,
                    help="level lock of LatentFT's outputs, 0..1 (the stage's lock: each frame's level "
                         "moved that far to the decoder's mean estimate; 0: off)")
    ap.add_argument("--lock-latent", type=float, default=0.0,
                    help="share of the lock's target read from the latent's level channels instead of the "
                         "mean path (the stage's lock_latent; models with level channels)")
    ap.add_argument("--lock-regions", type=int, default=LOCK_REGIONS,
                    help="groups of mel bands whose levels the lock sets (default %(default)s, the stage's)")
    ap.add_argument("--embed", action="store_true",
                    help="stream each clip between the split's two clips after it, for every method (as on "
                         "stage mid-performance), instead of between silences (a cold start and a stream end)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--json", default=None, help="write the results here")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    cfg = get_config("22k")
    sr = cfg.sample_rate
    model = load_model(Path(args.model) / "weights.pt" if Path(args.model).is_dir() else args.model)
    manifest = Path(args.data)
    rows = [json.loads(l) for l in manifest.read_text().splitlines() if l.strip()]
    rows = [r for r in rows if r["split"] == args.split]
    if not rows:
        raise SystemExit(f"{manifest}: no clips in split {args.split!r}")
    pick = np.linspace(0, len(rows) - 1, min(args.clips, len(rows))).astype(int)
    split_rows, rows = rows, [rows[i] for i in pick]
    audio = [read_audio(manifest.parent / r["path"], sr) for r in rows]
    mels = [log_mel(x, cfg) for x in audio]

    def neighbour(i: int, k: int) -> np.ndarray:
        """Log-mel of the split's k-th clip after clip i, or nothing without --embed."""
        if not args.embed:
            return np.zeros((cfg.n_mels, 0), np.float32)
        return log_mel(read_audio(manifest.parent / split_rows[(i + k) % len(split_rows)]["path"], sr), cfg)
    around = [(neighbour(i, 1), neighbour(i, 2)) for i in pick]
    conds = conditions()
    vocode = make_vocoder(args.vocoder, cfg)
    t0 = time.time()

    # 1. conditional generation ------------------------------------------------
    W = model.window
    bin_masks = torch.from_numpy(np.stack([band_mask(n, [b], 2 * W) for n, b, _ in conds]))
    masks = args.band_gain * bin_masks
    names = ("latentft", "spectrogram", "spectrogram_live")
    scores = {name: {"loudness": [], "rhythm": [], "loudness_power": []} for name in names}
    per_band = {f"{n}:{b}": {"hz": hz, **{name: [] for name in names}} for n, b, hz in conds}
    frames = {name: [] for name in names}     # log-mel frames of the outputs, for mel_fd
    for ci, (x, mel) in enumerate(zip(audio, mels)):
        T = mel.shape[1]
        stream, t0_clip = embed(mel, *around[ci])
        clip = slice(t0_clip, t0_clip + T)
        gen = stream_generate(model, [(stream, masks, 1.0)], stream.shape[1], args.steps, args.guidance,
                              seed=args.seed + ci, sigma_min=args.sigma_min, operator=args.operator,
                              lock=args.lock, lock_regions=args.lock_regions, lock_latent=args.lock_latent).numpy()[..., clip]
        base = spectrogram_baseline(stream, lambda n: np.stack([band_mask(nb, [b], n) for nb, b, _ in conds]))[..., clip]
        live = spectrogram_baseline_live(stream, bin_masks, model.lookahead, model.hop, W)[..., clip]
        for k, (n, b, hz) in enumerate(conds):
            for name, m in zip(names, (gen[k], base[k], live[k])):
                y = vocode(m.astype(np.float32), len(x))
                frames[name].append(scale_mel(log_mel(y, cfg)).T)
                lo, rh, lp = adherence(x, y, hz, sr)
                scores[name]["loudness"].append(lo)
                scores[name]["rhythm"].append(rh)
                scores[name]["loudness_power"].append(lp)
                per_band[f"{n}:{b}"][name].append((lo, rh, lp))
        print(f"clip {ci + 1}/{len(audio)} {rows[ci]['id']}: "
              f"latentft L {np.mean(scores['latentft']['loudness']):.3f} R {np.mean(scores['latentft']['rhythm']):.3f} | "
              f"spectrogram L {np.mean(scores['spectrogram']['loudness']):.3f} "
              f"R {np.mean(scores['spectrogram']['rhythm']):.3f} | "
              f"live L {np.mean(scores['spectrogram_live']['loudness']):.3f} "
              f"R {np.mean(scores['spectrogram_live']['rhythm']):.3f}  ({time.time() - t0:.0f} s)", flush=True)
    gen_table = {name: {k: float(np.mean(v)) for k, v in d.items()} for name, d in scores.items()}
    real = np.concatenate([scale_mel(m).T for m in mels])
    for name in gen_table:
        gen_table[name]["mel_fd"] = frechet_distance(real, np.concatenate(frames[name]))
    band_table = {k: {"hz": [round(v["hz"][0], 3), round(v["hz"][1], 3)],
                      **{name: {"loudness": float(np.mean([a for a, _, _ in v[name]])),
                                "rhythm": float(np.mean([r for _, r, _ in v[name]])),
                                "loudness_power": float(np.mean([p for _, _, p in v[name]]))}
                         for name in names}}
                  for k, v in per_band.items()}

    # 2. blending ---------------------------------------------------------------
    lo_m = torch.from_numpy(band_mask(2, [0], 2 * W))[None]
    hi_m = torch.from_numpy(band_mask(2, [1], 2 * W))[None]
    lo_hz, hi_hz = band_edges_hz(2)
    bl = {name: {f"{s}_{m}": [] for s in "AB" for m in ("loudness", "rhythm", "loudness_power")}
          for name in names}
    bl_frames = {name: [] for name in names}
    n_pairs = min(args.blend_pairs, len(audio) // 2)
    for p in range(n_pairs):
        ia, ib = 2 * p, 2 * p + 1
        xa, xb, ma, mb = audio[ia], audio[ib], mels[ia], mels[ib]
        T = min(ma.shape[1], mb.shape[1])
        # both streams cut to the same length before and after the clips, so they stay aligned
        pre = min(around[ia][0].shape[1], around[ib][0].shape[1])
        post = min(around[ia][1].shape[1], around[ib][1].shape[1])
        sa, t0_clip = embed(ma[:, :T], around[ia][0][:, around[ia][0].shape[1] - pre:], around[ia][1][:, :post])
        sb_, _ = embed(mb[:, :T], around[ib][0][:, around[ib][0].shape[1] - pre:], around[ib][1][:, :post])
        clip = slice(t0_clip, t0_clip + T)
        g = stream_generate(model, [(sa, lo_m, 0.5), (sb_, hi_m, 0.5)], sa.shape[1], args.steps,
                            args.blend_guidance, seed=args.seed + 100 + p, sigma_min=args.sigma_min,
                            operator=args.operator, lock=args.lock,
                            lock_regions=args.lock_regions, lock_latent=args.lock_latent).numpy()[0][..., clip]
        n = int(2 ** np.ceil(np.log2(2 * sa.shape[1])))
        ya = torch.from_numpy(scale_mel(sa).astype(np.float32))[None]
        yb = torch.from_numpy(scale_mel(sb_).astype(np.float32))[None]
        sb = apply_latent_mask(ya, torch.from_numpy(band_mask(2, [0], n)), n) + \
            apply_latent_mask(yb, torch.from_numpy(band_mask(2, [1], n)), n)
        sb = np.maximum(unscale_mel(sb[0].numpy()), LOG_MEL_MIN)[..., clip]
        # live: each source through the one-sided operator, summed in the scaled domain
        sl = sum(one_sided_mel(m, mk, model.lookahead, model.hop, W)[0] for m, mk in ((sa, lo_m), (sb_, hi_m)))
        sl = np.maximum(unscale_mel(sl.numpy()), LOG_MEL_MIN)[..., clip]
        L = min(len(xa), len(xb))
        for name, m in zip(names, (g, sb, sl)):
            y = vocode(m.astype(np.float32), L)
            bl_frames[name].append(scale_mel(log_mel(y, cfg)).T)
            a = adherence(xa[:L], y, lo_hz, sr)
            b = adherence(xb[:L], y, hi_hz, sr)
            for side, v in (("A", a), ("B", b)):
                for m, val in zip(("loudness", "rhythm", "loudness_power"), v):
                    bl[name][f"{side}_{m}"].append(val)
    blend_table = {name: {k: float(np.mean(v)) if v else None for k, v in d.items()} for name, d in bl.items()}
    for name in blend_table:
        blend_table[name]["mel_fd"] = (frechet_distance(real, np.concatenate(bl_frames[name]))
                                       if bl_frames[name] else None)

    # 3. the operator alone -------------------------------------------------------
    D_list = [int(v) for v in args.lookaheads.split(",") if v.strip()]
    op = operator_accuracy(model, mels[:6], D_list, model.hop)

    import shlex
    cmd = "python tools/eval_latentft.py " + " ".join(shlex.quote(a) for a in (sys.argv[1:] if argv is None else argv))
    res = {"command": cmd, "model": str(args.model), "split": args.split, "clips": [r["id"] for r in rows], "steps": args.steps,
           "guidance": args.guidance, "band_gain": args.band_gain, "blend_guidance": args.blend_guidance, "sigma_min": args.sigma_min, "lock": args.lock, "lock_regions": args.lock_regions, "lock_latent": args.lock_latent, "operator": args.operator, "embed": args.embed,
           "vocoder": args.vocoder, "lookahead": model.lookahead, "hop": model.hop,
           "conditional": gen_table, "per_band": band_table, "blend": blend_table,
           "blend_pairs": n_pairs, "operator_vs_lookahead": op, "seconds": time.time() - t0}
    print("\nconditional generation (mean over 14 bands x clips)")
    print(f"{'':18s}{'loudness':>10s}{'rhythm':>10s}{'loudness (power mean)':>24s}{'mel FD':>10s}")
    for name, d in gen_table.items():
        print(f"{name:18s}{d['loudness']:10.3f}{d['rhythm']:10.3f}{d['loudness_power']:24.3f}{d['mel_fd']:10.3f}")
    print("\nblending (A: < 2.7 Hz, B: > 2.7 Hz)")
    for name, d in blend_table.items():
        print(name, {k: (round(v, 3) if v is not None else None) for k, v in d.items()})
    print("\nstreaming operator vs look-ahead D (H = %d)" % model.hop)
    for D, d in op.items():
        print(f"D={D:4d} ({1000 * D / cfg.frame_rate:5.0f} ms): accuracy {d['acc']:.3f}, in-band energy {d['in_band']:.3f} "
              f"(offline {d['in_band_offline']:.3f})")
    if args.json:
        atomic_write_text(Path(args.json), json.dumps(res, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
