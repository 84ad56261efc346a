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
from .dsp.integrator import PhaseIntegrator
from .dsp.ola import OverlapAdd, TorchOverlapAdd
from .dsp.phase_gradient import phase_gradients
from .dsp.pghi import pghi_gradients
from .dsp.stft import centre_sign, istft, stft
from .signals import test_signal


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


# integrator settings compared: the default heap, heap with λ noise bins, the paper's λ mode
INTEGRATORS = {
    "heap": dict(mode="heap", use_lambda=False),
    "heap+lambda": dict(mode="heap", use_lambda=True),
    "lambda": dict(mode="lambda", use_lambda=True),
}


def bench_integrator(cfg: AudioConfig, x: np.ndarray, repeat: int) -> dict:
    """µs per frame and spectral convergence of each integrator setting, with
    exact gradients (reassignment) and with PGHI gradients from the magnitude."""
    mag, omega, tau = phase_gradients(x, cfg)
    p_omega, p_tau = pghi_gradients(mag, cfg, lookahead=True)
    frames = mag.shape[1]
    res = {"bins": cfg.n_bins, "frames": frames}
    for name, kw in INTEGRATORS.items():
        integ = PhaseIntegrator(cfg.n_fft, cfg.hop, **kw)
        integ.process(mag[:, :4], omega[:, :4], tau[:, :4])        # compile
        for grads, label in (((omega, tau), "exact"), ((p_omega, p_tau), "pghi")):
            integ.reset()
            phase = integ.process(mag, *grads)[1]
            y = istft(mag * np.exp(1j * phase), cfg, len(x))
            res[f"{name}_sc_{label}_db"] = spectral_convergence(y, mag, cfg)
        t = _best_time(lambda: (integ.reset(), integ.process(mag, omega, tau)), repeat)
        res[f"{name}_us_per_frame"] = t / frames * 1e6
    return res


def bench_pghipy(cfg: AudioConfig, x: np.ndarray, repeat: int) -> dict | None:
    try:
        import pghipy
    except ImportError:
        return None
    mag = np.abs(stft(x, cfg))
    gamma = 0.25645 * cfg.n_fft ** 2
    spec = np.ascontiguousarray(mag.T)
    pghipy.pghi(spec[:8], cfg.n_fft, cfg.hop, gamma)            # compile
    t = _best_time(lambda: pghipy.pghi(spec, cfg.n_fft, cfg.hop, gamma), repeat)
    phase = pghipy.pghi(spec, cfg.n_fft, cfg.hop, gamma).T
    # pghipy references phase to the window start: move it to the centre
    y = istft(mag * np.exp(1j * phase) * centre_sign(cfg.n_bins)[:, None], cfg, len(x))
    return {"us_per_frame": t / mag.shape[1] * 1e6, "sc_db": spectral_convergence(y, mag, cfg)}


def bench_griffin_lim(cfg: AudioConfig, x: np.ndarray, n_iter: int = 32) -> dict | None:
    try:
        import librosa
    except ImportError:
        return None
    mag = np.abs(stft(x, cfg))
    t0 = time.perf_counter()
    y = librosa.griffinlim(mag, n_iter=n_iter, hop_length=cfg.hop, n_fft=cfg.n_fft,
                           window="hann", center=True, pad_mode="constant", length=len(x),
                           random_state=0)
    dt = time.perf_counter() - t0
    return {"seconds": dt, "us_per_frame": dt / mag.shape[1] * 1e6,
            "sc_db": spectral_convergence(y, mag, cfg)}


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


def run_bench(json_out: str | None = None, seconds: float = 10.0, quick: bool = False) -> int:
    repeat = 1 if quick else 3
    cfg = get_config("22k")
    x = test_signal(cfg.sample_rate, seconds).astype(np.float64)
    cfg_1025 = replace(cfg, name="22k-nfft2048", n_fft=2048)
    results = {
        "signal": f"test_signal({cfg.sample_rate}, {seconds}) — tones with vibrato, clicks, noise",
        "integrator_513": bench_integrator(cfg, x, repeat),
        "integrator_1025": bench_integrator(cfg_1025, x, repeat),
        "pghipy_513": bench_pghipy(cfg, x, repeat),
        "griffin_lim_32": bench_griffin_lim(cfg, x),
        "ola": bench_ola(cfg, x, repeat),
        "vocode_pghi": bench_vocode(cfg, x, repeat),
    }
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
    def line(*cols):
        print("  ".join(str(c) for c in cols), file=out)

    frame_s = 256 / 22050
    print(f"signal: {r['signal']}", file=out)
    print("\nphase integrator (exact gradients by reassignment unless noted)", file=out)
    line(f"{'':30s}", f"{'us/frame':>9s}", f"{'x real time':>11s}", f"{'SC exact':>9s}", f"{'SC pghi':>8s}")
    for key in ("integrator_513", "integrator_1025"):
        res = r[key]
        for mode in INTEGRATORS:
            us = res[f"{mode}_us_per_frame"]
            line(f"{mode + ' @ ' + str(res['bins']) + ' bins':30s}", f"{us:9.1f}", f"{frame_s * 1e6 / us:11.0f}",
                 f"{res[f'{mode}_sc_exact_db']:8.1f}dB", f"{res[f'{mode}_sc_pghi_db']:7.1f}dB")
    pg, gl = r["pghipy_513"], r["griffin_lim_32"]
    ours = r["integrator_513"]
    if pg:
        line(f"{'pghipy (offline PGHI) @ 513':30s}", f"{pg['us_per_frame']:9.1f}",
             f"{frame_s * 1e6 / pg['us_per_frame']:11.0f}", f"{'':>9s}", f"{pg['sc_db']:7.1f}dB")
        print(f"  -> heap integrator is {pg['us_per_frame'] / ours['heap_us_per_frame']:.1f}x faster than pghipy; "
              f"PGHI-from-magnitude SC {ours['heap_sc_pghi_db'] - pg['sc_db']:+.1f} dB vs pghipy", file=out)
    else:
        print("  pghipy: not installed (pip install pghipy)", file=out)
    if gl:
        line(f"{'librosa Griffin-Lim, 32 iter':30s}", f"{gl['us_per_frame']:9.1f}",
             f"{frame_s * 1e6 / gl['us_per_frame']:11.0f}", f"{'':>9s}", f"{gl['sc_db']:7.1f}dB")
        print(f"  -> heap + PGHI is {gl['us_per_frame'] / ours['heap_us_per_frame']:.0f}x faster than "
              f"Griffin-Lim-32; SC {ours['heap_sc_pghi_db'] - gl['sc_db']:+.1f} dB vs Griffin-Lim-32", file=out)
    else:
        print("  librosa: not installed (pip install librosa)", file=out)
    print("\noverlap-add iSTFT", file=out)
    for k, v in r["ola"].items():
        line(f"{k:30s}", f"{v:9.1f}")
    v = r["vocode_pghi"]
    print(f"\nvocode --model pghi, in process (mel analysis + vocoder): {v['seconds'] * 1e3:.0f} ms for "
          f"{len_s(r)} s = {v['x_real_time']:.0f}x real time; SC vs input {v['sc_db_vs_input']:.1f} dB", file=out)


def len_s(r: dict) -> str:
    return r["signal"].split(", ")[1].split(")")[0]
