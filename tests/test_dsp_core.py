"""STFT, mel, resampling and overlap-add against references and oracles."""

import numpy as np
import pytest

from rtengine.config import get_config
from rtengine.dsp.mel import StreamingLogMel, log_mel, mel_filterbank, mel_to_magnitude, magnitude_to_mel
from rtengine.dsp.ola import OverlapAdd, TorchOverlapAdd
from rtengine.dsp.resample import resample, transpose
from rtengine.dsp.stft import StreamingSTFT, centre_sign, istft, stft

CFG = get_config("22k")


@pytest.fixture(scope="module")
def noise():
    return np.random.default_rng(0).standard_normal(22050 * 2) * 0.1


def test_mel_filterbank_equals_librosa():
    librosa = pytest.importorskip("librosa")
    for name in ("22k", "44k"):
        cfg = get_config(name)
        ref = librosa.filters.mel(sr=cfg.sample_rate, n_fft=cfg.n_fft, n_mels=cfg.n_mels,
                                  norm="slaney", htk=False, dtype=np.float64)
        assert np.abs(mel_filterbank(cfg) - ref).max() < 1e-9


def test_log_mel_equals_librosa(noise):
    librosa = pytest.importorskip("librosa")
    ref = librosa.feature.melspectrogram(y=noise, sr=22050, n_fft=1024, hop_length=256, n_mels=80,
                                         power=1, norm="slaney", htk=False, pad_mode="constant")
    ours = log_mel(noise, CFG)
    assert ours.shape == ref.shape == (80, 1 + len(noise) // 256)
    assert np.abs(ours - np.log(np.maximum(ref, 1e-5))).max() < 1e-5


def test_stft_is_librosa_with_centre_phase(noise):
    librosa = pytest.importorskip("librosa")
    ref = librosa.stft(noise, n_fft=1024, hop_length=256, window="hann", pad_mode="constant")
    assert np.abs(stft(noise, CFG) - ref * centre_sign(513)[:, None]).max() < 1e-9


def test_click_at_frame_centre_has_zero_phase():
    x = np.zeros(8192)
    x[10 * 256] = 1.0
    frame = stft(x, CFG)[:, 10]
    assert np.allclose(frame.imag, 0, atol=1e-12) and np.all(frame.real > 0)


def test_istft_reconstructs_within_1e5(noise):
    y = istft(stft(noise, CFG), CFG, len(noise))
    assert np.abs(y - noise).max() < 1e-5


@pytest.mark.parametrize("chunk", [1, 3, 64])
def test_streaming_ola_equals_offline_and_torch(noise, chunk):
    spec = stft(noise, CFG)
    ola, tola = OverlapAdd(CFG), TorchOverlapAdd(CFG, device="cpu")
    a = np.concatenate([ola.process(spec[:, i:i + chunk]) for i in range(0, spec.shape[1], chunk)]
                       + [ola.flush()])
    b = np.concatenate([tola.process(spec[:, i:i + chunk]).numpy()
                        for i in range(0, spec.shape[1], chunk)] + [tola.flush().numpy()])
    assert np.abs(a - b).max() < 1e-6
    # the stream is the signal delayed by n_fft/2
    assert np.abs(a[512:512 + len(noise)] - noise).max() < 1e-5
    assert np.all(a[:512] == 0)


@pytest.mark.parametrize("block", [1, 100, 256, 4096])
def test_streaming_log_mel_equals_offline(noise, block):
    sm = StreamingLogMel(CFG)
    frames = [sm.process(noise[i:i + block]) for i in range(0, len(noise), block)] + [sm.flush()]
    assert np.array_equal(np.concatenate(frames, axis=1), log_mel(noise, CFG))


def test_streaming_stft_emits_frame_when_complete():
    st = StreamingSTFT(CFG)
    assert st.process(np.zeros(511)).shape[1] == 0   # frame 0 needs samples up to 511
    assert st.process(np.zeros(1)).shape[1] == 1


def test_mel_inverse_is_non_negative_and_consistent(noise):
    lm = log_mel(noise, CFG)
    mag = mel_to_magnitude(lm, CFG)
    assert mag.min() >= 0
    back = np.log(np.maximum(magnitude_to_mel(mag, CFG), 1e-5))
    assert np.abs(back - lm).mean() < 0.1
    # frame-local: the same frame inverted alone gives the same numbers
    assert np.array_equal(mel_to_magnitude(lm[:, 7:8], CFG)[:, 0], mag[:, 7])


def test_resample_sine():
    t = np.arange(44100) / 44100
    y = resample(np.sin(2 * np.pi * 1000 * t), 44100, 22050)
    ty = np.arange(len(y)) / 22050
    assert len(y) == 22050
    assert np.abs(y - np.sin(2 * np.pi * 1000 * ty))[200:-200].max() < 1e-4


@pytest.mark.parametrize("semitones", [5, -7, 12, 0.5])
def test_transpose_moves_every_frequency_by_the_interval(semitones):
    sr = 22050
    t = np.arange(sr) / sr
    y = transpose(np.sin(2 * np.pi * 440 * t) + 0.5 * np.sin(2 * np.pi * 1320 * t), semitones)
    r = 2 ** (semitones / 12)
    assert abs(len(y) * r / sr - 1) < 0.0012                # the ratio, within 2 cents
    spec = np.abs(np.fft.rfft(y * np.hanning(len(y)), 1 << 20))
    freqs = np.fft.rfftfreq(1 << 20, 1 / sr)
    for f in (440, 1320):                                    # each partial moved, within 2 cents
        band = (freqs > f * r * 0.97) & (freqs < f * r * 1.03)
        peak = freqs[band][np.argmax(spec[band])]
        assert abs(1200 * np.log2(peak / (f * r))) < 2
    assert spec[freqs < 400 * r].max() < 1e-3 * spec.max()  # nothing left at the old pitch below
