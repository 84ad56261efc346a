#!/usr/bin/env python
"""Evaluate IFF-AR on the test split: one-step teacher-forced predictions and
K-step teacher-free roll-outs, beside a "repeat the last frame" baseline.

    python tools/eval_iffar.py --weights models/iffar-22k --data data/notes \\
        --clips 40 --context 32 --k 32 --json reports/iffar_eval.json --card models/iffar-22k/card.yaml

For each test clip, frames ``[s, s+L)`` are the context and ``[s+L, s+L+K)``
the targets. Metrics on the target frames (rtengine.metrics where it has them):

* LSD (dB), also with both spectra floored 80 dB below the target's peak
  (``lsd_db_floor80``), spectral convergence (linear ratio), complex MSE
  (mean |X − X̂|²);
* log-magnitude MAE/RMSE (dB);
* IF MAE/RMSE on the normalised scale (circular error / MAD, all bins, as the
  paper), IF MAE in rad on the loud bins (within 40 dB of the frame's peak)
  and weighted by each bin's true power (the partials, where a roll-out's
  phase must hold);
* SI-SDR of the target span's audio, with the predicted magnitude and phase,
  with the ground-truth phase (``phase GT``) and with the ground-truth
  magnitude (``mag GT``);
* roll-outs at each ``--temperatures`` value, and at the last one with the
  stage's level guard (:meth:`IFFAR.level_guard`) and with ``partial_temp``
  0 (:meth:`IFFAR.temperatures`: the partials drawn at T = 0);
* the partials lost (dB): how much less the note's partials (within 1.5 bins
  of each harmonic of the clip's note, below 5 kHz) stand out of the rest of
  the band than in the truth, over the last quarter of the frames; in the
  magnitudes and in the re-analysed audio, where a drifting phase also
  smears a partial over its neighbours (notes from MIDI 45, 108 Hz);
* spectral consistency of the generated phase: SC between ``M̂`` and the
  magnitude of the re-analysed iSTFT of ``M̂ e^{iφ̂}`` (dB), for the direct phase
  ``φ_t = φ_{t−1} + Δφ_t`` and for the engine's heap integrator.

One-step rows: the raw teacher-forced MagHead (``one-step``), the same
with the calibration bias subtracted and the clamp that generation applies
(``one-step calibrated``: what the instrument plays), and two trivial
predictors: the last frame (``repeat-last``, the baseline) and each bin's
mean log-magnitude over the last 4 frames (``last-4 mean``, with the last
frame's phase advance). ``oracle t±1`` is no predictor but a reference of
what the data allow: each frame's magnitude from the true frames on both
sides (their geometric mean; the last frame's phase advance). The quiet
bins of these clips are the 16-bit floor's noise, whose log-magnitude no
model follows from frame to frame; the oracle's unfloored LSD shows what
that costs even with the next frame known.

Phases: one-step frames advance the *true* previous phase by the predicted
Δφ; roll-outs advance the last context frame's true phase cumulatively.
Between the two, ``K-step teacher-forced`` takes the calibrated one-step
frames (each predicted from the true frames before it: the paper's "teacher
forcing ... on the actual target sequences") and sums their phase as a
roll-out does, so each advance's error stays in every later frame; beside it
the same for the last true frame's advance (``teacher-forced repeat-last``,
whose summed errors telescope: the phase error at frame t is the difference
of two true advances, bounded however long the span).
With ``--pitch`` the model is also asked for the clip's own note and a note
``+5`` semitones away (roll-outs at T = 0.7 with the level guard, as the
stage plays), and plays note ``+5`` as the stage's ``retrigger`` does (a
restart from a generated tone at that note) and as its ``legato`` does (the
clip's own sound transposed and continued); the generated note's f0
(harmonic sum over the generated magnitudes) is compared with the requested
one, in cents.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from rtengine import metrics  # noqa: E402
from rtengine.compute_threads import set_blas_threads  # noqa: E402
from rtengine.data.manifest import atomic_write_text  # noqa: E402
from rtengine.nn.iffar import load_iffar  # noqa: E402
from rtengine.nn.iffar_features import (if_from_phase, istft, log_magnitude, phase_advance,  # noqa: E402
                                        stft, wrap)

PAPER = {"lsd_db": 3.36, "spec_conv": 6.28, "complex_mse": 180.37, "logmag_mae": 44.77,
         "logmag_rmse": 49.33, "if_mae": 1.39, "if_rmse": 1.73, "si_sdr": -15.21,
         "si_sdr_phase_gt": -9.67, "si_sdr_mag_gt": -4.81}
COLUMNS = [("lsd_db", "LSD dB"), ("lsd_db_floor80", "LSD dB floor -80"), ("spec_conv", "SpecConv"),
           ("complex_mse", "Complex MSE"),
           ("logmag_mae", "LogMag MAE dB"), ("logmag_rmse", "LogMag RMSE dB"),
           ("if_mae", "IF MAE"), ("if_rmse", "IF RMSE"), ("if_mae_rad_loud", "IF MAE rad (loud)"),
           ("if_mae_rad_power", "IF MAE rad (power-weighted)"),
           ("si_sdr", "SI-SDR"), ("si_sdr_phase_gt", "SI-SDR phase GT"),
           ("si_sdr_mag_gt", "SI-SDR mag GT"), ("consistency_db", "consistency dB"),
           ("consistency_heap_db", "consistency heap dB"), ("si_sdr_mag_gt_heap", "SI-SDR mag GT heap"),
           ("level_end_db", "level end dB"), ("partials_lost_db", "partials lost dB"),
           ("partials_lost_audio_db", "partials lost (audio) dB")]


def heap_phases(mag: np.ndarray, omega: np.ndarray, phi0: np.ndarray, mag0: np.ndarray, cfg,
                seed: int = 0) -> np.ndarray:
    """Phases of frames ``(F, K)`` from the engine's heap integrator driven by
    ``omega`` (the generated Δφ, rad per hop) and PGHI's ``tau`` (backward
    time difference of the log-magnitude), started from the context's last
    frame (``phi0``, ``mag0``)."""
    from rtengine.dsp.integrator import PhaseIntegrator
    from rtengine.dsp.pghi import log_magnitude as lm, tau_from_time_derivative
    from rtengine.stages.iffar import _seed_integrator

    integ = PhaseIntegrator(cfg.n_fft, cfg.hop, mode="heap", use_lambda=False, seed=seed)
    _seed_integrator(integ, mag0, phi0, omega[:, 0])
    s = lm(np.concatenate([mag0[:, None], mag], axis=1))
    tau = tau_from_time_derivative(np.diff(s, axis=1), cfg)
    return integ.process(mag, omega, tau)[1]


def harmonic_to_rest_db(M: np.ndarray, f0: float, cfg, fmax: float = 5000.0) -> float | None:
    """Power at the partials of ``f0`` (the bins within 1.5 bins of each
    harmonic below ``fmax``: most of a Hann window's main lobe) against the
    rest of the band, dB, over frames ``M (F, K)``; None when ``f0`` is below
    five bins (harmonics too close to tell apart)."""
    bin_hz = cfg.sample_rate / cfg.n_fft
    if f0 < 5 * bin_hz:
        return None
    k = np.arange(M.shape[0])
    band = k * bin_hz < fmax
    h = np.zeros(M.shape[0], bool)
    for c in np.arange(f0, fmax, f0) / bin_hz:
        h |= np.abs(k - c) <= 1.5
    P = M ** 2
    return float(10 * np.log10(max(P[h & band].sum(), 1e-20) / max(P[~h & band].sum(), 1e-20)))


def partials_db(M: np.ndarray, R: np.ndarray, f0: float, cfg) -> tuple[float, float] | None:
    """:func:`harmonic_to_rest_db` over the last quarter of the frames of a
    magnitude ``M`` and of its re-analysis ``R`` (:func:`reanalysed`; its
    last 2 frames, which lack overlapping frames, left out); None for a low
    ``f0``."""
    q = max(1, M.shape[1] // 4)
    mag = harmonic_to_rest_db(M[:, -q:], f0, cfg)
    return None if mag is None else (mag, harmonic_to_rest_db(R[:, -q - 2:-2], f0, cfg))


def frame_metrics(X: np.ndarray, M: np.ndarray, phi: np.ndarray, d_true: np.ndarray,
                  d_est: np.ndarray, mad: float, cfg, phi_heap: np.ndarray | None = None,
                  f0: float | None = None, truth_partials: tuple | None = None) -> dict:
    """Metrics of a prediction over target frames. X ``(F, K)`` true STFT;
    M, phi ``(F, K)`` predicted magnitude and phase; d_true, d_est ``(F, K)``
    true and predicted Δφ (rad); f0 the note's (Hz), for the partials' share;
    truth_partials the truth's :func:`partials_db` (computed here when not
    given: a caller scoring several predictions of one span computes it once)."""
    Mt = np.abs(X)
    Xh = M * np.exp(1j * phi)
    q = max(1, X.shape[1] // 4)
    ldb = 20 * np.log10(np.maximum(Mt, 1e-5))
    ldb_h = 20 * np.log10(np.maximum(M, 1e-5))
    err = np.abs(wrap(d_est - d_true))
    loud = ldb > ldb.max(axis=0, keepdims=True) - 40
    k = X.shape[1]
    L = (k - 1) * cfg.hop

    def audio(S):
        return istft(torch.as_tensor(S)[None], cfg, L)[0].numpy()

    ref = audio(X)
    R = reanalysed(M, phi, cfg)
    floor = Mt.max() * 10 ** (-80 / 20)
    out = {
        "lsd_db": metrics.log_spectral_distance_mag(Mt, M),
        # the same with both spectra floored 80 dB below the target's peak: the
        # dither's noise floor (whose log-power a predictor cannot follow: its
        # std is 5.6 dB for any complex Gaussian bin) then weighs nothing
        "lsd_db_floor80": metrics.log_spectral_distance_mag(np.maximum(Mt, floor), np.maximum(M, floor)),
        "spec_conv": metrics.spectral_convergence_mag(Mt, M, db=False),
        "complex_mse": float(np.mean(np.abs(X - Xh) ** 2)),
        "logmag_mae": float(np.mean(np.abs(ldb - ldb_h))),
        "logmag_rmse": float(np.sqrt(np.mean((ldb - ldb_h) ** 2))),
        "if_mae": float(np.mean(err[1:-1]) / mad),
        "if_rmse": float(np.sqrt(np.mean(err[1:-1] ** 2)) / mad),
        "if_mae_rad_loud": float(np.mean(err[loud])),
        "if_mae_rad_power": float(np.sum(err * Mt ** 2) / max(np.sum(Mt ** 2), 1e-20)),
        "si_sdr": metrics.si_sdr(ref, audio(Xh)),
        "si_sdr_phase_gt": metrics.si_sdr(ref, audio(M * np.exp(1j * np.angle(X)))),
        "si_sdr_mag_gt": metrics.si_sdr(ref, audio(Mt * np.exp(1j * phi))),
        "consistency_db": consistency(M, R),
        # power of the last quarter of the frames against the truth's: a
        # roll-out whose partials fade (or swell) shows here, not in LSD alone
        "level_end_db": float(10 * np.log10(max(np.sum(M[:, -q:] ** 2), 1e-20)
                                            / max(np.sum(Mt[:, -q:] ** 2), 1e-20))),
    }
    if f0 is not None:
        # how much of the partials' prominence the last quarter lost against
        # the truth: in the magnitudes, and in the audio (re-analyses of both),
        # where a drifting phase also smears a partial over its neighbours
        truth = truth_partials if truth_partials is not None else \
            partials_db(Mt, reanalysed(Mt, np.angle(X), cfg), f0, cfg)
        pred = partials_db(M, R, f0, cfg)
        if truth is not None:
            out["partials_lost_db"] = truth[0] - pred[0]
            out["partials_lost_audio_db"] = truth[1] - pred[1]
    if phi_heap is not None:
        out["consistency_heap_db"] = consistency(M, reanalysed(M, phi_heap, cfg))
        out["si_sdr_mag_gt_heap"] = metrics.si_sdr(ref, audio(Mt * np.exp(1j * phi_heap)))
    return out


def reanalysed(M: np.ndarray, phi: np.ndarray, cfg) -> np.ndarray:
    """The magnitude ``(F, K)`` of the STFT of the iSTFT of ``M e^{iφ}``."""
    y = istft(torch.as_tensor(M * np.exp(1j * phi))[None], cfg)
    return np.abs(stft(y, cfg)[0].numpy()[:, :M.shape[1]])


def consistency(M: np.ndarray, R: np.ndarray) -> float:
    """Spectral convergence (dB) between ``M`` and its re-analysis ``R``
    (:func:`reanalysed` with the generated phase): how well the phases fit
    the magnitudes."""
    a, b = M[:, 2:-2], R[:, 2:-2]          # the edges lack overlapping frames
    return metrics.spectral_convergence_mag(a, b)


def f0_harmonic_sum(M: np.ndarray, cfg, fmin=30.0, fmax=2000.0, harmonics=5) -> float:
    """f0 (Hz) maximising the summed log-magnitude of the first harmonics
    (1/h weighted) of the frame-averaged spectrum ``M (F, K)``."""
    spec = np.log(np.maximum(M.mean(axis=1), 1e-6))
    spec = spec - spec.min()
    freqs = np.arange(len(spec)) * cfg.sample_rate / cfg.n_fft
    cands = fmin * 2 ** (np.arange(0, 1200 * math.log2(fmax / fmin), 10) / 1200)
    score = np.zeros_like(cands)
    for h in range(1, harmonics + 1):
        f = cands * h
        ok = f < freqs[-1]
        score[ok] += np.interp(f[ok], freqs, spec) / h
    return float(cands[np.argmax(score)])


def cents(f: float, ref: float) -> float:
    return 1200 * math.log2(f / ref)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--weights", default="models/iffar-22k")
    p.add_argument("--data", default="data/notes")
    p.add_argument("--split", default="test")
    p.add_argument("--clips", type=int, default=40)
    p.add_argument("--start", type=int, default=8, help="first context frame")
    p.add_argument("--context", type=int, default=32, help="context frames L")
    p.add_argument("--k", type=int, default=32, help="roll-out frames K")
    p.add_argument("--temperatures", default="0,0.7")
    p.add_argument("--labels", choices=("true", "none"), default="true")
    p.add_argument("--pitch", type=int, default=20, help="clips for the pitch test (0: none)")
    p.add_argument("--pitch-frames", type=int, default=86)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", default=None)
    p.add_argument("--card", default=None, help="write the metrics into this card.yaml")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    set_blas_threads(1)              # the stage's frame step (pitch test) computes in NumPy
    from train_iffar import DITHER, clip_labels, load_clip, read_manifest

    model = load_iffar(args.weights).double()
    cfg = model.audio
    f = cfg.n_bins
    mad = float(model.if_mad[1])
    mode = model.cfg.if_mode
    data = Path(args.data)
    rows = read_manifest(data, args.split, args.clips)
    temps = [float(t) for t in args.temperatures.split(",")]
    results: dict[str, list[dict]] = {}
    t0 = time.time()
    g = torch.Generator().manual_seed(args.seed)
    s, L, K = args.start, args.context, args.k
    for ci, row in enumerate(rows):
        x = torch.as_tensor(load_clip(data, row, cfg.sample_rate), dtype=torch.float64)[None]
        x = x + DITHER * torch.randn(x.shape, generator=g, dtype=torch.float64)
        X = stft(x, cfg)[0]                                   # (F, T)
        lm = log_magnitude(X)
        phi = torch.angle(X)
        d = if_from_phase(phi, cfg, mode)                      # (F, T)
        feats = model.normalise(lm[None], d[None])             # (1, 2F, T)
        note, fam = clip_labels(row)
        f0 = 440.0 * 2 ** ((note - 69) / 12) if note >= 0 else None
        if args.labels == "none":
            note, fam = -1, -1
        n_idx, f_idx = model.labels(note, fam, 1, "cpu")
        a, b = s + L, s + L + K
        if X.shape[1] < b + 1:
            p.error(f"--start + --context + --k + 1 = {b + 1} frames, but test clip {row['path']} "
                    f"has {X.shape[1]}")
        Xt = X[:, a:b].numpy()
        truth = partials_db(np.abs(Xt), reanalysed(np.abs(Xt), np.angle(Xt), cfg), f0, cfg) if f0 else None
        part = {"f0": f0, "truth_partials": truth} if truth else {}   # a low note: no partials figures
        d_true = phase_advance(d[:, a:b], cfg, mode).numpy()
        prev_phi = phi[:, a - 1:b - 1].numpy()
        with torch.no_grad():
            # one step, teacher forced (z = 0: the flow's most likely region)
            out = model(feats[..., :b], n_idx, f_idx)
            mag1 = torch.exp(model.denorm_mag(out["mag"][a - 1:b - 1])).T.numpy()
            d1 = phase_advance(model.denorm_if(out["if0"][a - 1:b - 1]).T, cfg, mode).numpy()
        rec = results.setdefault("one-step", [])
        rec.append(frame_metrics(Xt, mag1, prev_phi + d1, d_true, d1, mad, cfg, **part))
        # as the instrument generates: calibration bias subtracted, clamped
        with torch.no_grad():
            magc = torch.exp(model.denorm_mag(model.clamp_mag(out["mag"][a - 1:b - 1] - model.mag_bias))).T.numpy()
        results.setdefault("one-step calibrated", []).append(
            frame_metrics(Xt, magc, prev_phi + d1, d_true, d1, mad, cfg, **part))
        # baseline, one step: repeat the previous true frame
        M_prev = np.abs(X[:, a - 1:b - 1].numpy())
        d_prev = phase_advance(d[:, a - 1:b - 1], cfg, mode).numpy()
        results.setdefault("one-step repeat-last", []).append(
            frame_metrics(Xt, M_prev, prev_phi + d_prev, d_true, d_prev, mad, cfg, **part))
        # a second trivial baseline: each bin's mean log-magnitude over the last 4 frames
        lm_np = lm.numpy()
        M_avg = np.exp(np.stack([lm_np[:, i - 4:i].mean(1) for i in range(a, b)], axis=1))
        results.setdefault("one-step last-4 mean", []).append(
            frame_metrics(Xt, M_avg, prev_phi + d_prev, d_true, d_prev, mad, cfg, **part))
        # not a predictor: what the data allow. Each target frame's magnitude
        # from the true frames on both sides (geometric mean of t−1 and t+1),
        # which no causal model sees; its LSD is what the frame-to-frame
        # randomness of the quiet bins (the 16-bit floor's noise) costs even so
        M_next = np.abs(X[:, a + 1:b + 1].numpy())
        results.setdefault("one-step oracle t±1 (non-causal)", []).append(
            frame_metrics(Xt, np.sqrt(M_prev * M_next), prev_phi + d_prev, d_true, d_prev, mad, cfg, **part))
        # the same teacher-forced frames with their phase summed from the
        # last context frame's, as a K-step roll-out sums it: each advance is
        # predicted from the true frames before it, but its error stays in
        # the phase of every frame after it
        phi0 = phi[:, a - 1].numpy()
        mag0 = np.abs(X[:, a - 1].numpy())
        results.setdefault(f"{K}-step teacher-forced", []).append(
            frame_metrics(Xt, magc, phi0[:, None] + np.cumsum(d1, axis=1), d_true, d1, mad, cfg,
                          heap_phases(magc, d1, phi0, mag0, cfg, seed=ci), **part))
        results.setdefault(f"{K}-step teacher-forced repeat-last", []).append(
            frame_metrics(Xt, M_prev, phi0[:, None] + np.cumsum(d_prev, axis=1), d_true, d_prev, mad, cfg,
                          heap_phases(M_prev, d_prev, phi0, mag0, cfg, seed=ci), **part))
        # K-step roll-outs
        runs = [(T, False, 1.0) for T in temps] + [(temps[-1], True, 1.0), (temps[-1], False, 0.0)]
        for T, guard, partial_temp in runs:
            gen = model.rollout(feats[..., :a], K, temperature=T, seed=args.seed + ci,
                                note=note, family=fam, guard=guard, partial_temp=partial_temp)[0]
            Mk = torch.exp(model.denorm_mag(gen[:f].T)).T.numpy()
            dk = phase_advance(model.denorm_if(gen[f:].T).T, cfg, mode).numpy()
            phk = phi0[:, None] + np.cumsum(dk, axis=1)
            ph_heap = heap_phases(Mk, dk, phi0, mag0, cfg, seed=ci)
            name = f"{K}-step T={T:g}" + (" level guard" if guard else "") + \
                (f" partial_temp {partial_temp:g}" if partial_temp != 1.0 else "")
            results.setdefault(name, []).append(
                frame_metrics(Xt, Mk, phk, d_true, dk, mad, cfg, ph_heap, **part))
        d_last = phase_advance(d[:, a - 1:a], cfg, mode).numpy()
        Mr = np.repeat(mag0[:, None], K, axis=1)
        dr = np.repeat(d_last, K, axis=1)
        results.setdefault(f"{K}-step repeat-last", []).append(
            frame_metrics(Xt, Mr, phi0[:, None] + np.cumsum(dr, axis=1), d_true, dr, mad, cfg,
                          heap_phases(Mr, dr, phi0, mag0, cfg, seed=ci), **part))
        print(f"\r{ci + 1}/{len(rows)} clips ({time.time() - t0:.0f} s)", end="", file=sys.stderr)
    print(file=sys.stderr)
    table = {k: {m: float(np.mean([r[m] for r in v if m in r])) for m in dict.fromkeys(m for r in v for m in r)}
             for k, v in results.items()}

    pitch = None
    if args.pitch:
        pitch = pitch_test(model, data, rows[:args.pitch], args, cfg)

    lines = ["| | " + " | ".join(c[1] for c in COLUMNS) + " |",
             "|---|" + "---|" * len(COLUMNS)]
    for name, row in list(table.items()) + [("paper (NSynth valid.)", PAPER)]:
        lines.append(f"| {name} | " + " | ".join(
            (f"{row[c]:.2f}" if c in row else "–") for c, _ in COLUMNS) + " |")
    print("\n".join(lines))
    if pitch:
        print(json.dumps(pitch, indent=1))
    summary = {"weights": args.weights, "split": args.split, "clips": len(rows),
               "context_frames": L, "rollout_frames": K, "start_frame": s, "labels": args.labels,
               "table": table, "paper": PAPER, "pitch": pitch, "wall_s": time.time() - t0,
               "markdown": "\n".join(lines)}
    if args.json:
        atomic_write_text(Path(args.json), json.dumps(summary, indent=1))
    if args.card:
        import yaml

        cp = Path(args.card)
        card = yaml.safe_load(cp.read_text()) if cp.exists() else {}
        card["metrics"] = {"eval_command": "python tools/eval_iffar.py " + " ".join(argv or sys.argv[1:]),
                           "split": args.split, "clips": len(rows), "context_frames": L,
                           "rollout_frames": K,
                           "table": {k: {m: round(v, 3) for m, v in r.items()} for k, r in table.items()},
                           "pitch": pitch}
        atomic_write_text(cp, yaml.safe_dump(card, sort_keys=False, allow_unicode=True))
    return summary


def pitch_test(model, data, rows, args, cfg) -> dict:
    """Generate ``--pitch-frames`` frames after a context with the clip's own
    note requested, and with a note 5 semitones higher; f0 error in cents."""
    from train_iffar import DITHER, clip_labels, load_clip

    from rtengine.stages.iffar import IFFARStream, harmonic_tone

    out = {"own": [], "plus5": [], "none": [], "retrigger": [], "legato": [], "truth": []}
    f = cfg.n_bins
    s, L = args.start, args.context
    for ci, row in enumerate(rows):
        x = torch.as_tensor(load_clip(data, row, cfg.sample_rate), dtype=torch.float64)[None]
        x = x + DITHER * torch.randn(x.shape, dtype=torch.float64)
        X = stft(x, cfg)[0]
        feats = model.normalise(log_magnitude(X)[None],
                                if_from_phase(torch.angle(X), cfg, model.cfg.if_mode)[None])
        note, fam = clip_labels(row)
        if note < 0:
            continue
        f_note = float(metrics.midi_to_hz(note))
        a = s + L
        out["truth"].append(abs(cents(f0_harmonic_sum(np.abs(X[:, a:a + args.pitch_frames].numpy()),
                                                      cfg), f_note)))
        for key, req in (("own", note), ("plus5", note + 5), ("none", None)):
            gen = model.rollout(feats[..., :a], args.pitch_frames, temperature=0.7, seed=ci,
                                note=req, family=fam, guard=True)[0]
            M = torch.exp(model.denorm_mag(gen[:f].T)).T.numpy()
            target = float(metrics.midi_to_hz(req)) if req is not None else f_note
            out[key].append(abs(cents(f0_harmonic_sum(M, cfg), target)))
        # the stage's `retrigger`: restart from a generated prompt at note + 5
        st = IFFARStream(model, seed=ci, play_prompt=False, guard=True)
        st.prime(harmonic_tone(note + 5, 0.5, cfg.sample_rate))
        M = np.stack([st.next_frame(note + 5, fam, 0.7)[0] for _ in range(args.pitch_frames)], axis=1)
        out["retrigger"].append(abs(cents(f0_harmonic_sum(M, cfg), float(metrics.midi_to_hz(note + 5)))))
        # the stage's `legato`: from the clip's own audio up to the context's
        # end, glide the running sound up 5 semitones and go on generating
        st = IFFARStream(model, seed=ci, play_prompt=False, guard=True)
        st.prime(x[0, :(a + 1) * cfg.hop].numpy())
        st.glide(5.0)
        M = np.stack([st.next_frame(note + 5, fam, 0.7)[0] for _ in range(args.pitch_frames)], axis=1)
        out["legato"].append(abs(cents(f0_harmonic_sum(M, cfg), float(metrics.midi_to_hz(note + 5)))))
    res = {}
    for k, v in out.items():
        v = np.asarray(v)
        res[k] = {"median_abs_cents": float(np.median(v)), "within_50_cents": float(np.mean(v < 50)),
                  "n": int(len(v))}
    res["note"] = ("own: requested = the clip's note; plus5: requested = note + 5 semitones "
                   "(error against the request); none: no pitch label (error against the "
                   "prompt's note); retrigger: note + 5 as the stage's retrigger plays it, "
                   "restarted from a generated 0.5 s tone at that note; legato: note + 5 as the "
                   "stage's legato plays it, the clip's last 0.5 s before the generated frames "
                   "transposed by +5 and continued; truth: the estimator "
                   "on the real continuation")
    return res


if __name__ == "__main__":
    main()
