"""Deterministic test and example signals.

:func:`test_signal` is the benchmark's fixed input: harmonic tones with vibrato
(sustained notes and a chord), clicks, and noise bursts, so every part of phase
reconstruction is exercised: horizontal coherence (partials), vertical
coherence (clicks) and noise.
"""

from __future__ import annotations

import numpy as np


def _tone(t: np.ndarray, f0: float, n_harm: int, vib_depth: float, vib_rate: float,
          decay: float) -> np.ndarray:
    # phase of f0 * (1 + depth * sin(2 pi rate t)): integrate the frequency
    phase = 2 * np.pi * f0 * (t - vib_depth * np.cos(2 * np.pi * vib_rate * t) / (2 * np.pi * vib_rate))
    x = sum(np.sin(h * phase) / h ** 1.2 for h in range(1, n_harm + 1) if h * f0 < 10000)
    return x * np.exp(-decay * t)


def test_signal(sample_rate: int = 22050, seconds: float = 10.0, seed: int = 0) -> np.ndarray:
    """10 s of harmonic tones with vibrato, clicks and noise, peak 0.9, float32."""
    notes = [  # (start s, dur s, f0 Hz, harmonics, vibrato depth, rate Hz)
        (0.0, 2.5, 110.0, 20, 0.0, 5.0), (2.5, 2.5, 220.0, 12, 0.006, 5.5),
        (5.0, 2.5, 164.8, 15, 0.008, 4.5), (7.5, 2.5, 440.0, 8, 0.01, 6.0),
    ]
    return _render(notes, sample_rate, seconds, seed, clicks=True, noise=True)


def chord_signal(sample_rate: int = 22050, seconds: float = 3.0, seed: int = 0) -> np.ndarray:
    """An E major triad (164.8, 207.7, 246.9 Hz) with slight vibrato, float32.
    Its 5th/4th partials (824 and 831 Hz) beat inside one bin of a 1024 STFT."""
    notes = [(0.0, seconds, 164.8, 15, 0.003, 4.5), (0.0, seconds, 207.7, 12, 0.003, 5.0),
             (0.0, seconds, 246.9, 10, 0.003, 5.5)]
    return _render(notes, sample_rate, seconds, seed, clicks=False, noise=False)


def _render(notes, sample_rate: int, seconds: float, seed: int, clicks: bool, noise: bool):
    rng = np.random.default_rng(seed)
    n = int(round(seconds * sample_rate))
    x = np.zeros(n)
    for start, dur, f0, nh, depth, rate in notes:
        i0, i1 = int(start * sample_rate), min(n, int((start + dur) * sample_rate))
        if i1 <= i0:
            continue
        t = np.arange(i1 - i0) / sample_rate
        env = np.minimum(1.0, t / 0.02) * np.minimum(1.0, (dur - t) / 0.05)
        x[i0:i1] += 0.25 * env * _tone(t, f0, nh, depth, rate, 0.3)
    for c in np.arange(0.25, seconds, 0.5) if clicks else []:   # clicks every half second
        i = int(c * sample_rate)
        x[i:i + 3] += np.array([0.8, -0.5, 0.2])
    for start in (1.0, 4.0, 8.5) if noise else []:       # noise bursts, 0.5 s each
        i0 = int(start * sample_rate)
        burst = rng.standard_normal(int(0.5 * sample_rate)) * 0.05
        burst *= np.hanning(len(burst))
        x[i0:i0 + len(burst)] += burst[:max(0, n - i0)]
    if noise:
        x += 0.002 * rng.standard_normal(n)              # a low noise floor
    return (0.9 * x / np.max(np.abs(x))).astype(np.float32)
