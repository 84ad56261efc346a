"""The sparse sinusoid fit of the mel: its NNLS, the partial frequencies it
reads from low notes, where it declines, and frame locality."""

import numpy as np
import pytest

from rtengine.config import get_config
from rtengine.dsp import mel_sinusoids as MS
from rtengine.dsp.mel import log_mel
from rtengine.dsp.phase_gradient import reassignment_offsets

CFG = get_config("22k")
SR = CFG.sample_rate


def _harmonic(f0, n=8, seconds=1.0):
    t = np.arange(int(seconds * SR)) / SR
    return sum(0.3 / k * np.sin(2 * np.pi * k * f0 * t + k) for k in range(1, n + 1))


def test_nnls_reaches_the_least_squares_optimum():
    scipy_opt = pytest.importorskip("scipy.optimize")
    d = MS.sinusoid_dictionary(CFG)
    rng = np.random.default_rng(0)
    n = d.gram.shape[0]
    work = (np.zeros(n), np.empty((n, n)), np.zeros(n, dtype=np.int64), np.empty(n), np.empty(n),
            np.zeros(n, dtype=bool))
    for _ in range(5):
        truth = rng.random(n) * (rng.random(n) < 0.05)
        y = d.mel_atoms @ truth + 1e-3 * rng.random(d.mel_atoms.shape[0])
        x = MS._nnls_gram(d.gram, d.mel_atoms.T @ y, 3 * len(d.bands), 1e-12, *work).copy()
        _, best = scipy_opt.nnls(d.mel_atoms, y, maxiter=2000)
        assert np.all(x >= 0)
        assert np.linalg.norm(d.mel_atoms @ x - y) <= best + 1e-6 * np.linalg.norm(y)


@pytest.mark.parametrize("f0", [82.4, 110.0, 146.8])
def test_low_partials_get_the_reassigned_frequency(f0):
    x = _harmonic(f0)
    dm, reached = MS.fit_low_offsets(log_mel(x, CFG), CFG)
    _, true_dm, _ = reassignment_offsets(x, CFG)
    peaks = [round(k * f0 / SR * CFG.n_fft) for k in range(1, 9) if k * f0 / SR * CFG.n_fft < 60]
    frames = slice(10, -10)                               # away from the onset and the end
    assert reached[peaks, frames].all()
    err = np.abs(dm[peaks, frames] - true_dm[peaks, frames])
    assert err.mean() < 0.05 and err.max() < 0.15          # in bins; a partial sits ±0.5 from its bin


def test_partials_closer_than_their_main_lobes_are_left_to_the_fallback():
    t = np.arange(SR) / SR
    x = 0.3 * np.sin(2 * np.pi * 200 * t) + 0.3 * np.sin(2 * np.pi * 240 * t)   # 1.9 bins apart
    dm, reached = MS.fit_low_offsets(log_mel(x, CFG), CFG)
    assert not reached[8:12, 10:-10].any()
    fallback = np.full((CFG.n_bins, dm.shape[1]), 0.25)
    out = MS.sinusoid_offsets(log_mel(x, CFG), CFG, fallback)
    assert np.all(out[8:12, 10:-10] == 0.25) and np.all(out[64:] == 0.25)


def test_frames_are_fitted_independently():
    lm = log_mel(_harmonic(98.0, seconds=0.5), CFG)
    whole = MS.fit_low_offsets(lm, CFG)
    for chunk in (1, 7):
        parts = [MS.fit_low_offsets(lm[:, i:i + chunk], CFG) for i in range(0, lm.shape[1], chunk)]
        assert np.array_equal(np.concatenate([p[0] for p in parts], axis=1), whole[0])
        assert np.array_equal(np.concatenate([p[1] for p in parts], axis=1), whole[1])


@pytest.mark.parametrize("lookahead", [True, False])
def test_model_free_vocoder_with_the_fit_streams_and_keeps_a_low_note_in_tune(lookahead):
    from rtengine.dsp.vocoder import PGHIVocoder, run_offline

    f0 = 110.0
    x = _harmonic(f0, n=5)
    lm = log_mel(x, CFG)
    voc = PGHIVocoder(CFG, lookahead=lookahead, sinusoid_fit=64)
    whole = run_offline(voc, lm, len(x))
    for chunk in (1, 5):
        voc.reset()
        parts = [voc.process(lm[:, i:i + chunk]) for i in range(0, lm.shape[1], chunk)] + [voc.flush()]
        y = np.concatenate(parts)[voc.latency_samples:][:len(x)]
        assert np.array_equal(y, whole), chunk
    mid = whole[len(x) // 4: 3 * len(x) // 4]
    spec = np.abs(np.fft.rfft(mid * np.hanning(len(mid)), 1 << 18))
    freqs = np.fft.rfftfreq(1 << 18, 1 / SR)
    for k in (1, 2, 3):
        band = (freqs > 0.97 * k * f0) & (freqs < 1.03 * k * f0)
        peak = freqs[band][np.argmax(spec[band])]
        assert abs(1200 * np.log2(peak / (k * f0))) < 10, k
    from rtengine.errors import UserError

    with pytest.raises(UserError, match="sinusoid_fit"):
        PGHIVocoder(CFG, sinusoid_fit=600)
