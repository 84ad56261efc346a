"""Metrics against cases with known values."""

import numpy as np
import pytest

from rtengine import metrics as M

SR = 22050


def tone(f0, seconds=1.0, n_harm=6, sr=SR):
    """Additive harmonic tone: partial h at h*f0 with amplitude 1/h."""
    t = np.arange(int(sr * seconds)) / sr
    return 0.2 * sum(np.sin(2 * np.pi * h * f0 * t + 0.3 * h) / h for h in range(1, n_harm + 1))


def noise(n=SR, seed=0):
    return np.random.default_rng(seed).standard_normal(n) * 0.1


@pytest.mark.parametrize("pitch", [45, 60, 76])
def test_harmonic_error_self_is_zero(pitch):
    x = tone(M.midi_to_hz(pitch))
    h = M.harmonic_error(x, x, [pitch], SR)
    assert h.shape == (1 + SR // 128,)
    assert np.nanmax(h) == 0.0


@pytest.mark.parametrize("pitch", [45, 60, 76])
def test_harmonic_error_of_50_cents_sharp_copy(pitch):
    f = M.midi_to_hz(pitch)
    h = M.harmonic_error(tone(f), tone(f * 2 ** (0.5 / 12)), [pitch], SR)
    assert abs(np.nanmean(h) - 0.5) < 0.05
    assert np.nanmax(h) < 0.6


def test_harmonic_error_chord_and_frame_layout():
    pitches = [60, 64, 67]
    x = sum(tone(M.midi_to_hz(p)) for p in pitches)
    y = sum(tone(M.midi_to_hz(p) * 2 ** (0.2 / 12)) for p in pitches)
    parts = M.harmonic_error_partials(x, y, pitches, SR)
    assert parts.shape[:2] == (3, 5)
    assert abs(np.nanmean(M.harmonic_error(x, y, pitches, SR)) - 0.2) < 0.05


def test_harmonic_error_skips_partials_above_nyquist():
    p = 105  # A7, 3520 Hz: harmonics 4 and 5 lie above 11025 Hz
    x = tone(M.midi_to_hz(p), n_harm=3)
    parts = M.harmonic_error_partials(x, x, [p], SR)
    assert np.all(np.isnan(parts[0, 3:]))
    assert np.any(~np.isnan(parts[0, 0]))


def test_harmonic_error_ignores_silence():
    x = np.concatenate([tone(220.0), np.zeros(SR)])
    h = M.harmonic_error(x, x * 0.5, [57], SR)
    assert np.all(np.isnan(h[-50:]))  # nothing scored in the silent second
    assert np.nanmax(h) == pytest.approx(0.0, abs=1e-9)


def test_harmonic_frame_scales_with_sample_rate():
    assert M.harmonic_frame(44100) == (4096, 256)
    assert M.harmonic_frame(22050) == (2048, 128)


def test_spectral_convergence_of_scaled_signal():
    x = noise()
    assert M.spectral_convergence(x, 0.5 * x) == pytest.approx(20 * np.log10(0.5), abs=1e-9)
    assert M.spectral_convergence(x, 0.5 * x, db=False) == pytest.approx(0.5)


def test_log_spectral_distance_of_doubled_signal():
    x = noise()
    assert M.log_spectral_distance(x, x) == 0.0
    assert M.log_spectral_distance(x, 2 * x) == pytest.approx(20 * np.log10(2), abs=1e-6)


def test_log_mel_l1_and_multi_resolution():
    x = noise()
    assert M.log_mel_l1(x, x) == 0.0
    assert M.log_mel_l1(x, 2 * x) == pytest.approx(np.log(2), abs=1e-4)
    mr = M.multi_resolution_stft(x, 2 * x)
    assert mr["sc"] == pytest.approx(1.0)
    assert mr["log_mag_l1"] == pytest.approx(np.log(2), abs=1e-6)
    assert M.multi_resolution_stft(x, x)["total"] == 0.0


def test_si_sdr_known_snr_and_scale_invariance():
    x = tone(220.0)
    n = noise(len(x), seed=1)
    n -= (n @ x) / (x @ x) * x  # orthogonal to x
    n *= np.linalg.norm(x) / np.linalg.norm(n) * 10 ** (-20 / 20)
    assert M.si_sdr(x, x + n) == pytest.approx(20.0, abs=1e-6)
    assert M.si_sdr(x, 3 * (x + n)) == pytest.approx(20.0, abs=1e-6)
    assert M.si_sdr(x, x) > 100


def test_instantaneous_frequency_of_sine():
    f = 1000.0
    x = np.sin(2 * np.pi * f * np.arange(SR) / SR)
    inst, power = M.instantaneous_frequency(x, SR)
    k = int(round(f * 1024 / SR))
    assert np.allclose(inst[k - 1:k + 2, 5:-5], f, atol=0.1)
    e = M.if_error_signals(x, np.sin(2 * np.pi * (f + 2) * np.arange(SR) / SR), SR)
    assert e["mae"] == pytest.approx(2.0, abs=0.2)
    assert M.if_error(inst, inst)["rmse"] == 0.0
    assert M.if_error(inst, inst + 3.0, power)["mae"] == pytest.approx(3.0)


def test_bandpass_descriptor_keeps_only_the_band():
    rate = 86.13
    t = np.arange(1024) / rate
    slow, fast = np.sin(2 * np.pi * 1.0 * t), np.sin(2 * np.pi * 8.0 * t)
    out = M.bandpass_descriptor(slow + fast, rate, (0.5, 3.0))
    mid = slice(200, 800)  # away from the edges
    assert np.max(np.abs(out[mid] - slow[mid])) < 0.1
    assert np.allclose(M.bandpass_descriptor(slow, rate, None), slow)


def clicks(period_s, seconds=6.0):
    x = np.zeros(int(seconds * SR))
    x[::int(period_s * SR)] = 1.0
    return x + noise(len(x), 3) * 1e-3


def test_beat_spectrum_peaks_at_the_period():
    env = M.onset_envelope(clicks(0.5), SR)
    b = M.beat_spectrum(env)
    lag = np.argmax(b[10:]) + 10
    assert abs(lag - 0.5 * SR / 256) <= 2


def test_adherence_self_is_one_and_different_is_lower():
    x, y = clicks(0.5), clicks(0.37)
    band = (0.5, 10.0)
    assert M.rhythm_similarity(x, x, SR, band) == pytest.approx(1.0)
    assert M.loudness_correlation(x, x, SR, band) == pytest.approx(1.0)
    assert M.loudness_correlation(x, 0.5 * x, SR) == pytest.approx(1.0, abs=1e-3)
    assert M.rhythm_similarity(x, y, SR, band) < 0.9
    assert M.loudness_correlation(x, y, SR, band) < 0.5


def test_power_mean_loudness_follows_the_loudest_bins():
    rng = np.random.default_rng(0)
    t = np.arange(SR) / SR
    tone = 0.5 * np.sin(2 * np.pi * 1000 * t)
    noise = 1e-3 * rng.standard_normal(SR)
    quiet, louder_noise = tone + noise, tone + 10 * noise
    db = [np.median(M.loudness_curve(v, SR)) for v in (quiet, louder_noise)]
    pw = [np.median(M.loudness_curve(v, SR, average="power")) for v in (quiet, louder_noise)]
    assert db[1] - db[0] > 15            # every bin counts alike: +20 dB of noise shows
    assert abs(pw[1] - pw[0]) < 0.5      # the tone's power dominates
    # 6 dB more of everything is 6 dB more either way
    assert np.median(M.loudness_curve(2 * quiet, SR, average="power")) - pw[0] == pytest.approx(6.02, abs=0.05)
    with pytest.raises(ValueError):
        M.loudness_curve(quiet, SR, average="rms")



def test_frechet_distance_matches_the_gaussian_closed_form():
    from rtengine.metrics import frechet_distance

    r = np.random.default_rng(0)
    a = r.standard_normal((20000, 3))
    # N(0, I) against N(1, diag(4, 1, 0.25)): 3 + Σ (1 + s² − 2 s) = 3 + 1 + 0 + 0.25
    b = a * np.array([2.0, 1.0, 0.5]) + 1.0
    assert abs(frechet_distance(a, b) - 4.25) < 0.1
    assert abs(frechet_distance(a, a)) < 1e-9
    # correlated covariances: symmetric in its arguments
    c = a @ np.array([[1.0, 0.5, 0.0], [0.0, 1.0, 0.3], [0.0, 0.0, 1.0]])
    assert abs(frechet_distance(a, c) - frechet_distance(c, a)) < 1e-9
