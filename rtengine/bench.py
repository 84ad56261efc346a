"""``rtengine bench``: speed and quality on one fixed signal, beside peers.

Every figure is measured in this run on :func:`rtengine.signals.test_signal`
(tones with vibrato, clicks, noise), and each of ours is given as a ratio
against a reference implementation run on the same input in the same process:
librosa's Griffin-Lim and pghipy's PGHI. Peers that are not installed are
reported as missing rather than failing the run.
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import replace

import numpy as np

from .config import AudioConfig, get_config
from .dsp.integrator import PhaseIntegrator, integrate_offline
from .dsp.ola import OverlapAdd, TorchOverlapAdd
from .dsp.phase_gradient import phase_gradients
from .dsp.pghi import pghi_gradients
from .dsp.stft import centre_sign, istft, stft
from .signals import chord_signal, test_signal


def spectral_convergence(y: np.ndarray, mag: np.ndarray, cfg: AudioConfig) -> float:
    """``20 log10(|| |STFT(y)| - M ||_F / ||M||_F)`` in dB (lower is better)."""
    est = np.abs(stft(y, cfg))
    t = min(est.shape[1], mag.shape[1])
    return float(20 * np.log10(np.linalg.norm(est[:, :t] - mag[:, :t]) / np.linalg.norm(mag[:, :t])))


def _best_time(fn, repeat: int) -> float:
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


# integrator settings compared: the default heap (with and without one frame of
# look-ahead), heap with λ noise bins, and the PG paper's per-class λ mode
INTEGRATORS = {
    "heap": dict(mode="heap", use_lambda=False),
    "heap look-ahead": dict(mode="heap", use_lambda=False, lookahead=True),
    "heap+lambda": dict(mode="heap", use_lambda=True),
    "lambda": dict(mode="lambda", use_lambda=True),
}


def bench_integrator(cfg: AudioConfig, signals: dict, repeat: int) -> dict:
    """µs per frame of each integrator setting (on the first signal), and its
    spectral convergence on each signal with exact gradients (reassignment) and
    with PGHI gradients from the magnitude (centred in time)."""
    res = {"bins": cfg.n_bins}
    for sig_name, x in signals.items():
        mag, omega, tau = phase_gradients(x, cfg)
        p_omega, p_tau = pghi_gradients(mag, cfg, lookahead=True)
        for name, kw in INTEGRATORS.items():
            for grads, label in (((omega, tau), "exact"), ((p_omega, p_tau), "pghi")):
                phase = integrate_offline(mag, *grads, cfg.n_fft, cfg.hop, **kw)
                y = istft(mag * np.exp(1j * phase), cfg, len(x))
                res[f"{name}|sc_{label}_{sig_name}_db"] = spectral_convergence(y, mag, cfg)
            if sig_name == "test":
                integ = PhaseIntegrator(cfg.n_fft, cfg.hop, **kw)
                integ.process(mag[:, :4], omega[:, :4], tau[:, :4])    # compile
                t = _best_time(lambda: (integ.reset(), integ.process(mag, omega, tau)), repeat)
                res[f"{name}|us_per_frame"] = t / mag.shape[1] * 1e6
    return res


def bench_pghipy(cfg: AudioConfig, signals: dict, repeat: int) -> dict | None:
    try:
        import pghipy
    except ImportError:
        return None
    res = {}
    gamma = 0.25645 * cfg.n_fft ** 2
    for sig_name, x in signals.items():
        mag = np.abs(stft(x, cfg))
        spec = np.ascontiguousarray(mag.T)
        pghipy.pghi(spec[:8], cfg.n_fft, cfg.hop, gamma)            # compile
        if sig_name == "test":
            t = _best_time(lambda: pghipy.pghi(spec, cfg.n_fft, cfg.hop, gamma), repeat)
            res["us_per_frame"] = t / mag.shape[1] * 1e6
        phase = pghipy.pghi(spec, cfg.n_fft, cfg.hop, gamma).T
        # pghipy references phase to the window start: move it to the centre
        y = istft(mag * np.exp(1j * phase) * centre_sign(cfg.n_bins)[:, None], cfg, len(x))
        res[f"sc_{sig_name}_db"] = spectral_convergence(y, mag, cfg)
    return res


def bench_griffin_lim(cfg: AudioConfig, signals: dict, n_iter: int = 32) -> dict | None:
    try:
        import librosa
    except ImportError:
        return None
    res = {}
    for sig_name, x in signals.items():
        mag = np.abs(stft(x, cfg))
        t0 = time.perf_counter()
        y = librosa.griffinlim(mag, n_iter=n_iter, hop_length=cfg.hop, n_fft=cfg.n_fft,
                               window="hann", center=True, pad_mode="constant", length=len(x),
                               random_state=0)
        if sig_name == "test":
            res["us_per_frame"] = (time.perf_counter() - t0) / mag.shape[1] * 1e6
        res[f"sc_{sig_name}_db"] = spectral_convergence(y, mag, cfg)
    return res


def bench_ola(cfg: AudioConfig, x: np.ndarray, repeat: int) -> dict:
    spec = stft(x, cfg)
    frames = spec.shape[1]
    res = {}
    ola = OverlapAdd(cfg)
    res["numpy_us_per_frame"] = _best_time(lambda: (ola.reset(), ola.process(spec)), repeat) / frames * 1e6
    res["numpy_us_per_frame_streaming"] = _best_time(
        lambda: (ola.reset(), [ola.process(spec[:, i:i + 1]) for i in range(frames)]), 1) / frames * 1e6
    try:
        import torch
    except ImportError:
        return res
    for device in ["cpu"] + (["cuda"] if torch.cuda.is_available() else []):
        tola = TorchOverlapAdd(cfg, device=device)
        tspec = torch.as_tensor(spec, device=device)

        def run():
            tola.reset()
            out = tola.process(tspec)
            if device == "cuda":
                torch.cuda.synchronize()
            return out
        run()
        res[f"torch_{device}_us_per_frame"] = _best_time(run, repeat) / frames * 1e6
    return res


def bench_vocode(cfg: AudioConfig, x: np.ndarray, repeat: int) -> dict:
    """The whole model-free path on audio: mel analysis → vocoder → audio, in process."""
    from .dsp.mel import log_mel
    from .dsp.vocoder import PGHIVocoder, run_offline

    voc = PGHIVocoder(cfg)
    run_offline(voc, log_mel(x[:4096], cfg))                     # compile

    def run():
        voc.reset()
        return run_offline(voc, log_mel(x, cfg), len(x))
    t = _best_time(run, repeat)
    y = run()
    mag = np.abs(stft(x, cfg))
    return {"seconds": t, "x_real_time": len(x) / cfg.sample_rate / t,
            "sc_db_vs_input": spectral_convergence(y, mag, cfg)}


def bench_models(repeat: int) -> dict:
    """The shipped models' own benchmarks (each measures itself with one torch
    thread, as the live engine runs them)."""
    from .stages.vocoder import MODELS_DIR, shipped_pgvoc_models

    res = {}
    for name in shipped_pgvoc_models():
        from .neural_vocoder import measure_performance
        res[name] = measure_performance(MODELS_DIR / name, repeat=repeat)
    if (MODELS_DIR / "iffar-22k" / "weights.pt").exists():
        from .stages.iffar import bench_iffar
        res["iffar-22k"] = bench_iffar()
        res["iffar-22k partial_temp 0"] = bench_iffar(partial_temp=0.0)     # as the patches play
    if (MODELS_DIR / "latentft-22k" / "weights.pt").exists():
        from .stages.latentft import bench_latentft
        res["latentft-22k"] = bench_latentft()
    return res


def run_bench(json_out: str | None = None, seconds: float = 10.0, quick: bool = False,
              models: bool = True) -> int:
    repeat = 1 if quick else 3
    cfg = get_config("22k")
    x = test_signal(cfg.sample_rate, seconds).astype(np.float64)
    signals = {"test": x, "chord": chord_signal(cfg.sample_rate).astype(np.float64)}
    cfg_1025 = replace(cfg, name="22k-nfft2048", n_fft=2048)
    results = {
        "signal": f"test_signal({cfg.sample_rate}, {seconds}) — tones with vibrato, clicks, noise; "
                  f"chord_signal: an E major triad, 3 s",
        "integrator_513": bench_integrator(cfg, signals, repeat),
        "integrator_1025": bench_integrator(cfg_1025, {"test": x}, repeat),
        "pghipy_513": bench_pghipy(cfg, signals, repeat),
        "griffin_lim_32": bench_griffin_lim(cfg, signals),
        "ola": bench_ola(cfg, x, repeat),
        "vocode_pghi": bench_vocode(cfg, x, repeat),
    }
    if models:
        results["models"] = bench_models(repeat)
    print_report(results, sys.stdout if json_out != "-" else sys.stderr)
    if json_out:
        text = json.dumps(results, indent=2)
        if json_out == "-":
            print(text)
        else:
            from .io import atomic_path
            with atomic_path(json_out) as tmp:
                with open(tmp, "w") as f:
                    f.write(text + "\n")
    return 0


def print_report(r: dict, out) -> None:
    frame_us = 256 / 22050 * 1e6

    def row(name, us, *scs):
        speed = f"{us:9.1f}  {frame_us / us:6.0f}x" if us else f"{'':9s}  {'':7s}"
        print(f"  {name:34s}{speed}" + "".join(f"{v:9.1f}" if v is not None else f"{'-':>9s}"
                                             for v in scs), file=out)

    print(f"signals: {r['signal']}", file=out)
    print("\nphase reconstruction, spectral convergence in dB (lower is better)", file=out)
    print(f"  {'':34s}{'us/frame':>9s}  {'x RT':>7s}{'exact':>9s}{'PGHI':>9s}"
          f"{'chord ex':>9s}{'chord PG':>9s}", file=out)
    for key in ("integrator_513", "integrator_1025"):
        res = r[key]
        for name in INTEGRATORS:
            row(f"{name} @ {res['bins']} bins", res[f"{name}|us_per_frame"],
                res[f"{name}|sc_exact_test_db"], res[f"{name}|sc_pghi_test_db"],
                res.get(f"{name}|sc_exact_chord_db"), res.get(f"{name}|sc_pghi_chord_db"))
    pg, gl, ours = r["pghipy_513"], r["griffin_lim_32"], r["integrator_513"]
    if pg:
        row("pghipy (offline PGHI) @ 513 bins", pg["us_per_frame"], None, pg["sc_test_db"], None,
            pg["sc_chord_db"])
    if gl:
        row("librosa Griffin-Lim 32 @ 513 bins", gl["us_per_frame"], None, gl["sc_test_db"], None,
            gl["sc_chord_db"])
    print("\nratios (same run, same input):", file=out)
    if pg:
        print(f"  heap is {pg['us_per_frame'] / ours['heap|us_per_frame']:.1f}x faster than pghipy "
              f"(heap look-ahead {pg['us_per_frame'] / ours['heap look-ahead|us_per_frame']:.1f}x); "
              f"PGHI-from-magnitude SC vs pghipy: "
              f"{ours['heap look-ahead|sc_pghi_test_db'] - pg['sc_test_db']:+.1f} dB (look-ahead), "
              f"{ours['heap|sc_pghi_test_db'] - pg['sc_test_db']:+.1f} dB (causal)", file=out)
    else:
        print("  pghipy: not installed (pip install pghipy)", file=out)
    if gl:
        print(f"  heap look-ahead + PGHI vs Griffin-Lim-32: "
              f"{gl['us_per_frame'] / ours['heap look-ahead|us_per_frame']:.0f}x faster, SC "
              f"{ours['heap look-ahead|sc_pghi_test_db'] - gl['sc_test_db']:+.1f} dB on the test signal, "
              f"{ours['heap look-ahead|sc_pghi_chord_db'] - gl['sc_chord_db']:+.1f} dB on the chord",
              file=out)
    else:
        print("  librosa: not installed (pip install librosa)", file=out)
    print("\noverlap-add iSTFT, us per frame", file=out)
    for k, v in r["ola"].items():
        print(f"  {k:34s}{v:9.1f}", file=out)
    v = r["vocode_pghi"]
    print(f"\nvocode --model pghi in process (mel analysis + mel inverse + PGHI + heap + OLA): "
          f"{v['seconds'] * 1e3:.0f} ms for the test signal = {v['x_real_time']:.0f}x real time; "
          f"SC vs input {v['sc_db_vs_input']:.1f} dB", file=out)
    for name, m in r.get("models", {}).items():
        print(f"\n{name}:", file=out)
        for k, val in m.items():
            print(f"  {k}: {val}", file=out)
