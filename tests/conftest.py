"""Shared fixtures: a JACK dummy server for the real-time tests, CLI runner."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


def run_cli(*args, timeout=120, env=None, input=None):
    """Run ``python -m rtengine.cli ARGS`` as a subprocess; returns CompletedProcess."""
    e = dict(os.environ)
    e["PYTHONPATH"] = str(REPO) + os.pathsep + e.get("PYTHONPATH", "")
    if env:
        e.update(env)
    return subprocess.run([sys.executable, "-m", "rtengine.cli", *map(str, args)],
                          capture_output=True, text=input is None or isinstance(input, str),
                          timeout=timeout, env=e, input=input)


def _jack_visible(env) -> bool:
    probe = subprocess.run([sys.executable, "-c",
                            "import sounddevice as sd; print(any('JACK' in h['name'] and "
                            "h['devices'] for h in sd.query_hostapis()))"],
                           capture_output=True, text=True, env=env, timeout=20)
    return probe.stdout.strip() == "True"


@pytest.fixture(scope="session")
def jackd():
    """A JACK server with the dummy driver at 22050 Hz, 256-frame periods
    (no sound card, no real-time privileges needed). Yields its environment."""
    exe = shutil.which("jackd")
    if exe is None:
        pytest.skip("jackd is not installed (Debian package jackd2)")
    env = dict(os.environ, JACK_NO_AUDIO_RESERVATION="1", JACK_NO_START_SERVER="1")
    if _jack_visible(env):  # a server is already running: use it
        yield env
        return
    proc = subprocess.Popen([exe, "--no-realtime", "-d", "dummy", "-r", "22050", "-p", "256"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env)
    try:
        ok = False
        for _ in range(50):
            time.sleep(0.1)
            if proc.poll() is not None:
                break
            if _jack_visible(env):
                ok = True
                break
        if not ok:
            out = proc.stdout.read().decode(errors="replace") if proc.poll() is not None else ""
            pytest.skip(f"jackd did not start or PortAudio cannot see JACK: {out[-300:]}")
        yield env
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()


@pytest.fixture
def one_torch_thread():
    """One torch thread: small ops are faster, and timing does not depend on the load."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
