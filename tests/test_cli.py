"""The mel, vocode and variation commands as a user runs them."""

import os
import subprocess
import sys

import numpy as np
import pytest
import soundfile as sf

from rtengine.signals import test_signal as make_signal

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def rtengine(*args, cwd=None):
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return subprocess.run([sys.executable, "-m", "rtengine.cli", *map(str, args)],
                          capture_output=True, text=True, env=env, cwd=cwd, timeout=300)


@pytest.fixture(scope="module")
def wav(tmp_path_factory):
    path = tmp_path_factory.mktemp("in") / "tone.wav"
    sf.write(path, make_signal(44100, 2.0), 44100)   # not the model rate: gets resampled
    return path


def test_outputs_get_the_usual_file_mode_not_the_temporary_files_private_one(wav, tmp_path):
    r = rtengine("mel", wav, "-o", tmp_path / "m.npy")
    assert r.returncode == 0, r.stderr
    umask = os.umask(0)
    os.umask(umask)
    assert (tmp_path / "m.npy").stat().st_mode & 0o777 == 0o666 & ~umask
    # the text and bytes writer of manifests, reports, cards and exported weights too
    from rtengine.data.manifest import atomic_write_text

    atomic_write_text(tmp_path / "card.yaml", "a: 1\n")
    assert (tmp_path / "card.yaml").stat().st_mode & 0o777 == 0o666 & ~umask
    assert (tmp_path / "card.yaml").read_text() == "a: 1\n"
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_mel_command_shape(wav, tmp_path):
    r = rtengine("mel", wav, "-o", tmp_path / "m.npy")
    assert r.returncode == 0, r.stderr
    mel = np.load(tmp_path / "m.npy")
    assert mel.shape == (80, 1 + 44100 // 256)


def test_vocode_block_size_does_not_change_output(wav, tmp_path):
    outs = []
    for b in (1, 64, 100, 256, 4096):
        r = rtengine("vocode", wav, "-o", tmp_path / f"b{b}.wav", "--block-size", b)
        assert r.returncode == 0, r.stderr
        y, sr = sf.read(tmp_path / f"b{b}.wav")
        assert sr == 22050 and len(y) == 44100
        outs.append(y)
    # float32 convolutions over 1 frame or 16 frames at once round apart by
    # about 1e-5 (-100 dBFS) on some CPUs; a chunking error would be far larger
    for y in outs[1:]:
        assert np.abs(y - outs[0]).max() <= 5e-5
    assert np.all(np.isfinite(outs[0])) and np.abs(outs[0]).max() <= 1.0
    assert np.sqrt(np.mean(outs[0] ** 2)) > 0.05   # it is sound, not silence


def test_vocode_sinusoid_fit_option(wav, tmp_path):
    """--sinusoid-fit reaches the model-free vocoder (its low partials change),
    and a bin out of range is one clear error with no output."""
    outs = {}
    for fit in (0, 64):
        r = rtengine("vocode", wav, "--model", "pghi", "--sinusoid-fit", fit, "-o", tmp_path / f"f{fit}.wav")
        assert r.returncode == 0, r.stderr
        outs[fit] = sf.read(tmp_path / f"f{fit}.wav")[0]
    assert np.abs(outs[64] - outs[0]).max() > 1e-3
    r = rtengine("vocode", wav, "--sinusoid-fit", 900, "-o", tmp_path / "bad.wav")
    assert r.returncode == 2 and "sinusoid_fit must be between" in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "bad.wav").exists()


def test_vocode_mel_input_and_directories(wav, tmp_path):
    src = tmp_path / "src"
    (src / "sub").mkdir(parents=True)
    assert rtengine("mel", wav, "-o", src / "sub" / "a.npy").returncode == 0
    sf.write(src / "b.flac", make_signal(22050, 1.0), 22050)
    r = rtengine("vocode", src, "-o", tmp_path / "out")
    assert r.returncode == 0, r.stderr
    a, _ = sf.read(tmp_path / "out" / "sub" / "a.wav")
    b, _ = sf.read(tmp_path / "out" / "b.wav")
    assert len(a) == (1 + 44100 // 256 - 1) * 256 and len(b) == 22050


def test_example_writes_input_and_output(tmp_path):
    r = rtengine("vocode", "--example", "-o", tmp_path / "ex.wav")
    assert r.returncode == 0, r.stderr
    x, _ = sf.read(tmp_path / "ex.input.wav")
    y, _ = sf.read(tmp_path / "ex.wav")
    assert len(x) == len(y) == 220500


@pytest.mark.parametrize("case", ["missing", "corrupt", "bad_mel", "empty_dir"])
def test_bad_input_one_clear_line(tmp_path, case):
    if case == "missing":
        path, expect = tmp_path / "nope.wav", "no such file"
    elif case == "corrupt":
        path, expect = tmp_path / "bad.wav", "not a readable audio file"
        path.write_bytes(b"RIFF\x24\x00\x00\x00WAVEfmt garbage" + bytes(range(64)))
    elif case == "bad_mel":
        path, expect = tmp_path / "m.npy", "expected (80, frames)"
        np.save(path, np.zeros((64, 10), np.float32))
    else:
        path, expect = tmp_path / "empty", "no audio or .npy files"
        path.mkdir()
    r = rtengine("vocode", path, "-o", tmp_path / "o.wav")
    assert r.returncode != 0
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in r.stderr
    assert expect in lines[0] and str(path.name) in lines[0]
    assert not (tmp_path / "o.wav").exists()


def test_help_teaches():
    r = rtengine("vocode", "--help")
    assert r.returncode == 0 and "--block-size" in r.stdout and "examples" in r.stdout


def test_variation_keeps_the_chosen_timescales_and_rejects_bad_bands(tmp_path):
    """rtengine variation: the slow bands kept, the output follows the input's
    slow loudness contour far better than its fast one; same length, peak-safe."""
    from rtengine.metrics import loudness_correlation

    loop = os.path.join(ROOT, "patches", "audio", "latentft-band.wav")
    x, sr = sf.read(loop)
    out = tmp_path / "slow.wav"
    r = rtengine("variation", loop, "-o", out, "--keep", "0,1,2,3", "--quiet")
    assert r.returncode == 0, r.stderr
    y, sr_out = sf.read(out)
    assert sr_out == 22050 and len(y) == len(x) and np.isfinite(y).all()
    assert np.abs(y).max() <= 10 ** (-1 / 20) + 1e-6
    slow, fast = loudness_correlation(x, y, sr, band=(0, 2.7)), loudness_correlation(x, y, sr, band=(2.7, 43))
    assert slow > 0.9 and fast < 0.6
    for bad, expect in ((["--keep", "9"], "--keep"), (["--gains", "1,1"], "--gains"),
                        (["--keep", "0", "--gains", "1,1,1,1,1,1,1,1"], "not both")):
        r = rtengine("variation", loop, "-o", tmp_path / "bad.wav", *bad)
        assert r.returncode == 2 and expect in r.stderr and "Traceback" not in r.stderr
    r = rtengine("variation", tmp_path / "nope.wav", "-o", tmp_path / "bad.wav")
    assert r.returncode == 2 and "nope.wav" in r.stderr and "no such file" in r.stderr
    assert not (tmp_path / "bad.wav").exists()
