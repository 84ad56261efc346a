"""OSC server: addresses, clamping, norm, lists, aliases, echo rate, garbage,
panic, patch save, OSCQuery."""

from __future__ import annotations

import json
import socket
import time
import urllib.request

import numpy as np
import pytest
from pythonosc.osc_message import OscMessage
from pythonosc.osc_message_builder import OscMessageBuilder

from rtengine.control.osc import OSCServer
from rtengine.control.oscquery import OSCQueryServer
from rtengine.control.patch import build_engine, load_patch, save_patch

from conftest import REPO


def msg(address, *args):
    b = OscMessageBuilder(address=address)
    for a in args:
        b.add_arg(a)
    return b.build().dgram


@pytest.fixture()
def setup(tmp_path):
    patch = load_patch(REPO / "patches" / "vocode.yaml")
    engine = build_engine(patch)
    srv = OSCServer(engine, "127.0.0.1", 0, patch.aliases,
                    on_save=lambda p: save_patch(patch, engine, p)).start()
    client = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    client.bind(("127.0.0.1", 0))
    client.settimeout(0.5)
    yield engine, srv, client
    srv.stop()
    client.close()


def send(client, srv, data):
    client.sendto(data, ("127.0.0.1", srv.port))


def wait_for(cond, timeout=2.0):
    t = time.monotonic()
    while time.monotonic() - t < timeout:
        if cond():
            return True
        time.sleep(0.01)
    return False


def echoes(client, duration):
    got = []
    t = time.monotonic()
    while time.monotonic() - t < duration:
        try:
            data, _ = client.recvfrom(65536)
        except socket.timeout:
            break
        m = OscMessage(data)
        got.append((m.address, m.params[0]))
    return got


def test_set_units_norm_list_alias_and_clamp(setup):
    engine, srv, client = setup
    P = engine.params
    send(client, srv, msg("/rtengine/output/gain", -12.5))
    send(client, srv, msg("/rtengine/vocoder/gain/norm", 0.5))
    send(client, srv, msg("/rtengine/mel/eq/3", -6))
    send(client, srv, msg("/rtengine/mel/eq/4/norm", 1.0))
    send(client, srv, msg("/rtengine/output/ceiling", 50.0))  # clamped to -0.1
    send(client, srv, msg("/1/fader1", 0.0))
    assert wait_for(lambda: srv.stats["applied"] == 6)
    assert P["vocoder.gain"].get() == pytest.approx(-18.0)
    assert P["mel.eq"].get(3) == -6 and P["mel.eq"].get(4) == 12
    assert P["output.ceiling"].get() == pytest.approx(-0.1)
    assert P["output.gain"].get() == -60.0  # alias, normalised
    got = dict(echoes(client, 0.5))
    assert got["/rtengine/output/ceiling"] == pytest.approx(-0.1)
    assert got["/rtengine/vocoder/gain/norm"] == pytest.approx(0.5)
    assert got["/1/fader1"] == 0.0
    assert srv.malformed == 0


def test_echo_rate_limited_latest_wins(setup):
    engine, srv, client = setup
    for i in range(200):
        send(client, srv, msg("/rtengine/output/gain", float(-i % 60)))
        time.sleep(0.001)
    got = [v for a, v in echoes(client, 1.0) if a == "/rtengine/output/gain"]
    assert got[-1] == engine.params["output.gain"].get()
    span = max(0.25, 0.001 * 200)
    assert len(got) <= span * 30 * 2 + 2  # ≤ 30 Hz (with slack for sleep overshoot)
    assert len(got) < 100


def test_garbage_and_malformed_are_counted_and_survived(setup):
    engine, srv, client = setup
    rng = np.random.default_rng(0)
    bad = [b"", b"\x00\x01garbage", b"/rtengine/output/gain\x00\x00\x00,f\x00", b"#bundle\x00\xff",
           rng.bytes(64), rng.bytes(7), msg("/rtengine/output/gain", "loud"),
           msg("/rtengine/output/gain", 1.0, 2.0), msg("/rtengine/output/gain"),
           msg("/rtengine/nope", 1.0), msg("/rtengine/patch/save", 3)]
    for b in bad:
        send(client, srv, b)
    send(client, srv, msg("/rtengine/output/gain", -7.0))
    assert wait_for(lambda: srv.stats["applied"] == 1)
    assert srv.malformed >= len(bad) - 1
    assert engine.params["output.gain"].get() == -7.0


def test_panic_and_patch_save(setup, tmp_path):
    engine, srv, client = setup
    engine.prepare(4)
    engine.render_frames(10)
    send(client, srv, msg("/rtengine/panic"))
    assert wait_for(lambda: srv.stats["panic"] == 1)
    assert engine._panic
    engine.render_frames(1)
    assert not engine._panic
    send(client, srv, msg("/rtengine/output/gain", -21.0))
    path = tmp_path / "snap.yaml"
    assert wait_for(lambda: srv.stats["applied"] == 1)
    send(client, srv, msg("/rtengine/patch/save", str(path)))
    assert wait_for(path.exists)
    assert build_engine(load_patch(path)).params["output.gain"].get() == -21.0


def test_oscquery_json(setup):
    engine, srv, client = setup
    q = OSCQueryServer(engine, "127.0.0.1", 0, srv.port, {"/1/fader1": "output.gain"}).start()
    try:
        engine.set("output.gain", -9)
        root = json.load(urllib.request.urlopen(f"http://127.0.0.1:{q.port}/", timeout=5))
        node = root["CONTENTS"]["rtengine"]["CONTENTS"]["output"]["CONTENTS"]["gain"]
        assert node["FULL_PATH"] == "/rtengine/output/gain" and node["TYPE"] == "f"
        assert node["RANGE"] == [{"MIN": -60.0, "MAX": 12.0}] and node["VALUE"] == [-9.0]
        assert node["ACCESS"] == 3 and node["DESCRIPTION"]
        eq3 = json.load(urllib.request.urlopen(f"http://127.0.0.1:{q.port}/rtengine/mel/eq/3", timeout=5))
        assert eq3["FULL_PATH"] == "/rtengine/mel/eq/3"
        info = json.load(urllib.request.urlopen(f"http://127.0.0.1:{q.port}/?HOST_INFO", timeout=5))
        assert info["OSC_PORT"] == srv.port and info["OSC_TRANSPORT"] == "UDP"
    finally:
        q.stop()
