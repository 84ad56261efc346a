"""``rtengine vocode --stdin``: raw float32 log-mel frames from a pipe, audio out
as they arrive (file, stdout, or the sound card through JACK)."""

import re
import subprocess
import sys
import time

import numpy as np
import pytest
import soundfile as sf

from conftest import REPO, run_cli
from rtengine.config import get_config
from rtengine.dsp.mel import log_mel
from rtengine.signals import test_signal as make_signal

CFG = get_config("22k")


@pytest.fixture(scope="module")
def mel(tmp_path_factory):
    d = tmp_path_factory.mktemp("mel")
    m = log_mel(make_signal(CFG.sample_rate, 1.5), CFG)
    np.save(d / "m.npy", m)
    return d / "m.npy", m


def raw(m: np.ndarray) -> bytes:
    return np.ascontiguousarray(m.T, dtype=np.float32).tobytes()


@pytest.mark.parametrize("model", ["pghi", "pgvoc-22k"])
def test_stdin_file_equals_npy_file(mel, tmp_path, model):
    path, m = mel
    r = run_cli("vocode", path, "-o", tmp_path / "ref.wav", "--model", model)
    assert r.returncode == 0, r.stderr
    r = run_cli("vocode", "--stdin", "-o", tmp_path / "s.wav", "--model", model, input=raw(m))
    assert r.returncode == 0, r.stderr.decode()
    ref, sr = sf.read(tmp_path / "ref.wav")
    y, _ = sf.read(tmp_path / "s.wav")
    assert sr == CFG.sample_rate and len(y) == len(ref) == (m.shape[1] - 1) * CFG.hop
    # pghi is exact; the network's float32 sums depend on how frames arrive (rounding only)
    assert np.abs(y - ref).max() <= (0.0 if model == "pghi" else 1e-4)
    assert np.sqrt(np.mean(y ** 2)) > 0.02


def test_stdout_streams_while_the_producer_is_still_writing(mel, tmp_path):
    """Frames written slowly come back as audio before the producer has finished."""
    path, m = mel
    proc = subprocess.Popen([sys.executable, "-m", "rtengine.cli", "vocode", "--stdin", "-o", "-"],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            cwd=REPO)
    half = m.shape[1] // 2
    proc.stdin.write(raw(m[:, :half]))
    proc.stdin.flush()
    want = (half - 10) * CFG.hop * 4          # bytes of audio the first half must already give
    got = b""
    t0 = time.time()
    while len(got) < want and time.time() - t0 < 60:
        got += proc.stdout.read1(65536)
    assert len(got) >= want, "no audio before the input ended"
    proc.stdin.write(raw(m[:, half:]))
    proc.stdin.close()
    got += proc.stdout.read()
    assert proc.wait(60) == 0, proc.stderr.read().decode()
    y = np.frombuffer(got, dtype=np.float32)
    r = run_cli("vocode", path, "-o", tmp_path / "ref.wav")
    assert r.returncode == 0, r.stderr
    ref, _ = sf.read(tmp_path / "ref.wav")
    # frames arrive in the chunks the pipe delivers: equal up to the network's float32 rounding
    assert len(y) == len(ref) and np.abs(y - ref).max() <= 1e-4


def test_truncated_frame_is_a_clear_error_and_writes_nothing(mel, tmp_path):
    _, m = mel
    r = run_cli("vocode", "--stdin", "-o", tmp_path / "x.wav", input=raw(m)[:-6])
    assert r.returncode == 2
    err = r.stderr.decode()
    assert "ended inside a frame" in err and "Traceback" not in err
    assert not (tmp_path / "x.wav").exists()


def test_play_needs_stdin_and_an_output_is_required(tmp_path):
    r = run_cli("vocode", "--play")
    assert r.returncode == 2 and "--stdin" in r.stderr
    r = run_cli("vocode", "--stdin")
    assert r.returncode == 2 and "no output" in r.stderr


def test_play_from_stdin_on_jack_stops_after_the_input(mel, tmp_path, jackd):
    """Through a real PortAudio stream: plays the piped mel and ends by itself."""
    path, m = mel
    # a 250 ms ring, as the JACK tests of test_live.py (this machine stalls now and then)
    r = run_cli("vocode", "--stdin", "--play", "--device", "JACK", "-o", tmp_path / "rec.wav",
                "--model", "pgvoc-22k", "--latency", "250", input=raw(m), env=jackd, timeout=60)
    err = r.stderr.decode()
    assert r.returncode == 0, err
    assert " 0 underruns" in err
    buffering = re.search(r"\+ ([0-9.]+) ms buffering", err)
    assert buffering and float(buffering.group(1)) >= 250, err      # --latency reached the player
    rec, sr = sf.read(tmp_path / "rec.wav")
    ref_r = run_cli("vocode", path, "-o", tmp_path / "ref.wav", "--model", "pgvoc-22k")
    assert ref_r.returncode == 0
    ref, _ = sf.read(tmp_path / "ref.wav")
    # everything was heard: the recording holds at least the whole input, and about its energy
    assert len(rec) >= len(ref)
    e_rec, e_ref = np.sum(rec ** 2), np.sum(ref ** 2)
    assert 0.5 < e_rec / e_ref < 1.5
    assert np.abs(rec).max() <= 1.0
