"""Real-time run on a JACK dummy server: `rtengine play` for 10 s at 256-sample
blocks while oscsend changes the output gain and sends malformed packets and a
python socket sends raw garbage. Checks: no underruns, the change is heard in
the --record tap at the right time, the echo comes back, the process survives."""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time

import numpy as np
import pytest
import soundfile as sf
from pythonosc.osc_message import OscMessage
from pythonosc.osc_message_builder import OscMessageBuilder

from conftest import REPO

SR = 22050


def free_port():
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


def osc(address, *args):
    b = OscMessageBuilder(address=address)
    for a in args:
        b.add_arg(a)
    return b.build().dgram


def looped_patch(tmp_path):
    text = (REPO / "patches" / "vocode.yaml").read_text().replace("loop: false", "loop: true")
    f = tmp_path / "live.yaml"
    f.write_text(text)
    return f


def gain_change_sample(tap, ref, block=128, drop=0.8):
    """First sample where the tap's level falls below ``drop`` × the reference's
    (the offline render of the same patch, sample-aligned)."""
    n = min(len(tap), len(ref)) // block * block
    t = np.abs(tap[:n]).reshape(-1, block)
    r = np.abs(ref[:n]).reshape(-1, block)
    ok = r.max(axis=1) > 1e-3
    ratio = np.where(ok, t.sum(axis=1) / np.maximum(r.sum(axis=1), 1e-12), 1.0)
    idx = np.nonzero(ok & (ratio < drop))[0]
    if not len(idx):
        return None
    j = idx[0]
    # refine inside the block sample by sample
    seg_t, seg_r = np.abs(tap[j * block:(j + 1) * block]), np.abs(ref[j * block:(j + 1) * block])
    return j * block + int(np.argmax(np.cumsum(seg_r - seg_t) > 0.05 * seg_r.sum()))


def start_play(tmp_path, env, patch, block_size=256, duration=10.0, extra=(), quiet=True):
    """`rtengine play PATCH` on JACK with OSC, the tap and stats, started and
    listening (with ``quiet=False`` it also prints its status line). Returns
    (process, OSC port, tap path, stats path, stderr file)."""
    port, qport = free_port(), free_port()
    rec, stats = tmp_path / f"rec{block_size}.wav", tmp_path / f"stats{block_size}.json"
    err = open(tmp_path / "play.err", "w")
    proc = subprocess.Popen([sys.executable, "-m", "rtengine.cli", "play", str(patch), "--device", "JACK",
                             "--block-size", str(block_size), "--duration", str(duration),
                             "--osc", f"127.0.0.1:{port}", "--query-port", str(qport),
                             "--record", str(rec), "--stats", str(stats), *(["-q"] if quiet else []), *extra],
                            stdout=subprocess.PIPE, stderr=err, env=dict(env, PYTHONPATH=str(REPO)))
    t0 = time.monotonic()
    while "OSC on" not in (tmp_path / "play.err").read_text():
        assert proc.poll() is None, (tmp_path / "play.err").read_text()
        assert time.monotonic() - t0 < 60
        time.sleep(0.05)
    return proc, port, rec, stats, err


def run_play(tmp_path, env, block_size=256, duration=10.0, change_at=3.0, extra=()):
    patch = looped_patch(tmp_path)
    proc, port, rec, stats, err = start_play(tmp_path, env, patch, block_size, duration, extra)
    client = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    client.bind(("127.0.0.1", 0))
    client.settimeout(0.5)
    time.sleep(change_at)
    oscsend = ["oscsend", "127.0.0.1", str(port)]
    t_send = time.monotonic()
    subprocess.run(oscsend + ["/rtengine/output/gain", "f", "-30"], check=True)
    t_sent = time.monotonic()
    # malformed packets through oscsend: wrong type, unknown address, wrong arg count
    subprocess.run(oscsend + ["/rtengine/output/gain", "s", "loud"], check=True)
    subprocess.run(oscsend + ["/rtengine/nowhere", "f", "1"], check=True)
    subprocess.run(oscsend + ["/rtengine/output/gain", "ff", "1", "2"], check=True)
    # raw garbage from python
    rng = np.random.default_rng(0)
    for _ in range(20):
        client.sendto(rng.bytes(int(rng.integers(1, 200))), ("127.0.0.1", port))
    client.sendto(b"#bundle\x00\x00", ("127.0.0.1", port))
    # a change from a socket that listens: its echo must come back
    client.sendto(osc("/rtengine/vocoder/gain", 0.0), ("127.0.0.1", port))
    echo = None
    try:
        data, _ = client.recvfrom(65536)
        echo = OscMessage(data)
    except socket.timeout:
        pass
    out, _ = proc.communicate(timeout=duration + 60)
    err.close()
    return proc.returncode, json.loads(stats.read_text()), rec, echo, (t_send, t_sent), patch


# The JACK tests play with a 250 ms ring: this virtual machine stalls now and
# then (a render call measured at up to 4x real time), which the default ring
# (46 ms) cannot ride out. Whether the default ring holds is a measurement
# (docs/engine.md, `--stats`), not a test; the tests check what must hold on
# any machine: no underrun with room to spare, so the tap equals the offline
# render until the change, which is heard within the buffering.
SAFE_LATENCY = ("--latency", "250")


@pytest.mark.skipif(shutil.which("oscsend") is None, reason="oscsend (liblo-tools) is not installed")
def test_play_on_jack_with_osc_changes_and_garbage(tmp_path, jackd):
    rc, st, rec, echo, (t_send, t_sent), patch = run_play(tmp_path, jackd, extra=SAFE_LATENCY)
    assert rc == 0
    assert st["underruns"] == 0, {k: st[k] for k in ("underrun_at_s", "cpu_load_peak", "tap_t0_monotonic",
                                                     "gc", "osc_log")}
    assert st["underrun_at_s"] == []
    assert st["blocks"] >= 10 * SR // 256
    assert st["osc"]["malformed"] >= 23, st["osc"]
    assert st["osc"]["applied"] >= 2
    assert echo is not None and echo.address == "/rtengine/vocoder/gain" and echo.params == [0.0]
    assert st["algorithmic_latency_ms"] > 0 and st["buffering_latency_ms"] > 0
    # the models and libraries were out of the garbage collector's reach while playing
    assert st["gc"]["frozen_objects"] > 10_000, st["gc"]

    # the tap is the live engine's output: before the change it equals the
    # offline render of the same patch sample for sample
    tap, sr = sf.read(rec, dtype="float32")
    from rtengine.control.patch import build_engine, load_patch
    from rtengine.engine.render import render
    ref = render(build_engine(load_patch(patch)), len(tap), 256)
    s = gain_change_sample(tap, ref)
    assert s is not None, "the gain change is not heard in the tap"
    np.testing.assert_allclose(tap[:s - 256], ref[:s - 256], atol=1e-5)
    # after the change the level is about 27 dB lower
    later = slice(s + SR // 2, s + SR)
    drop = 20 * np.log10(np.abs(tap[later]).sum() / np.abs(ref[later]).sum())
    assert -32 < drop < -22, drop
    # heard at about the right time: sent → tap within the buffering + one block + slack
    heard = st["tap_t0_monotonic"] + s / sr
    latency = heard - t_send
    assert 0 < latency < (st["buffering_latency_ms"] + 150) / 1000.0 + (t_sent - t_send), latency


LATENTFT = REPO / "models" / "latentft-22k" / "weights.pt"


@pytest.mark.skipif(shutil.which("oscsend") is None, reason="oscsend (liblo-tools) is not installed")
@pytest.mark.skipif(not LATENTFT.exists(), reason="models/latentft-22k not shipped")
def test_latentft_band_change_over_osc_is_heard_in_the_tap_by_the_next_chunk(tmp_path, jackd):
    """latent-eq.yaml live: all 8 band gains to 0 over OSC at about 3 s. The
    tap equals the offline render until the change, the change is heard by the
    next chunk plus the buffering, and the decoder's chunk bursts cause no
    underrun."""
    import yaml

    data = yaml.safe_load((REPO / "patches" / "latent-eq.yaml").read_text())
    data["source"]["path"] = str(REPO / "patches" / "audio" / "latentft-band.wav")
    data.pop("automation", None)
    patch = tmp_path / "eq.yaml"
    patch.write_text(yaml.safe_dump(data))
    proc, port, rec, stats, err = start_play(tmp_path, jackd, patch, duration=7.0, extra=SAFE_LATENCY)
    time.sleep(3.0)
    t_send = time.monotonic()
    for b in range(8):
        subprocess.run(["oscsend", "127.0.0.1", str(port), f"/rtengine/latentft/gain/{b}", "f", "0"], check=True)
    proc.communicate(timeout=90)
    err.close()
    assert proc.returncode == 0, (tmp_path / "play.err").read_text()
    st = json.loads(stats.read_text())
    if st["underruns"] and st["cpu_load"] > 0.9:
        # no buffer helps when rendering takes longer than real time on
        # average: 1.03 was measured in a slow period of a shared 2-core VM
        # (0.56-0.58 normally)
        pytest.skip(f"the machine rendered at {st['cpu_load']:.2f}x real time during the run: "
                    f"too slow to judge underruns ({st['underruns']})")
    assert st["underruns"] == 0, st
    assert st["burst_reserve_ms"] > 0 and st["osc"]["applied"] >= 8

    tap, sr = sf.read(rec, dtype="float32")
    from rtengine.control.patch import build_engine, load_patch
    from rtengine.engine.render import render
    ref = render(build_engine(load_patch(patch)), len(tap), 256)
    changed = np.nonzero(np.abs(tap - ref) > 1e-3)[0]
    assert len(changed), "the band change is not heard in the tap"
    s = changed[0]
    np.testing.assert_allclose(tap[:s], ref[:s], atol=1e-3)
    # heard within the bound the geometry gives: the next chunk boundary (the
    # model's H frames), the PGHI vocoder's 4 frames, the ring and one block,
    # plus slack for the messages (the measured distribution is in docs/latentft.md)
    heard = st["tap_t0_monotonic"] + s / sr - t_send
    H = yaml.safe_load((LATENTFT.parent / "card.yaml").read_text())["arch"]["hop"]
    bound = (H + 4) * 256 / sr + st["buffering_latency_ms"] / 1000 + 0.1
    assert 0 < heard <= bound, (heard, bound)
    assert np.isfinite(tap).all() and np.abs(tap).max() <= 10 ** (-1 / 20) + 1e-4   # the patch's -1 dBFS ceiling


def test_play_gives_up_with_a_clear_error_when_the_audio_server_dies(tmp_path):
    """A JACK server of its own, killed while playing: play must not hang on
    the lost device; it exits 1 within seconds, saying so, with the stats and
    the recording written."""
    exe = shutil.which("jackd")
    if exe is None:
        pytest.skip("jackd is not installed (Debian package jackd2)")
    # one fixed name: JACK's registry holds 8 server names and a killed
    # server keeps its entry, which a new server of the same name reclaims
    # (a name per run filled the registry on a long-lived machine)
    name = "rtengine-stall-test"
    env = dict(os.environ, JACK_NO_AUDIO_RESERVATION="1", JACK_NO_START_SERVER="1", JACK_DEFAULT_SERVER=name)
    server = subprocess.Popen([exe, "-n", name, "--no-realtime", "-d", "dummy", "-r", "22050", "-p", "256"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    try:
        time.sleep(1.5)
        if server.poll() is not None:
            pytest.skip("a second jackd could not start (JACK's 8-name registry in /dev/shm may be "
                        "full of killed servers' entries)")
        proc, _, rec, stats, err = start_play(tmp_path, env, REPO / "patches" / "vocode.yaml", duration=60.0,
                                              quiet=False)
        # "OSC on" comes before the stream opens; on a loaded machine opening
        # it can take seconds, so wait for its status line to show 1 s played
        t0 = time.monotonic()
        while not any(float(t) >= 1.0 for t in re.findall(r"([\d.]+) s  blocks", (tmp_path / "play.err").read_text())):
            assert proc.poll() is None, (tmp_path / "play.err").read_text()
            assert time.monotonic() - t0 < 60, "the stream did not start"
            time.sleep(0.1)
        server.kill()
        server.wait(timeout=5)
        t_kill = time.monotonic()
        rc = proc.wait(timeout=30)
        took = time.monotonic() - t_kill
    finally:
        if server.poll() is None:
            server.kill()
    text = (tmp_path / "play.err").read_text()
    assert rc == 1 and "stopped calling back" in text and "Traceback" not in text
    assert took < 15
    st = json.loads(stats.read_text())
    assert st["stalled"] is True and st["seconds"] > 0.5
    assert rec.exists()
