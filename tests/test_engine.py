"""Engine validation (pluginval style): block sizes, automation, threads, NaN."""

from __future__ import annotations

import threading
import time

import numpy as np

from rtengine.config import get_config
from rtengine.control.params import Param
from rtengine.control.patch import build_engine, validate_patch
from rtengine.engine import BlockAdapter, Engine
from rtengine.engine.render import render
from rtengine.stages import VOCODER_MODELS, register_vocoder
from rtengine.stages.base import MEL, Stage
from rtengine.stages.mel import MelStage
from rtengine.stages.output import HARD_CEILING, OutputStage
from rtengine.stages.sources import ExampleSource, MelFileSource, MelStreamSource
from rtengine.stages.vocoder import VocoderStage

CFG = get_config("22k")

PATCH = {
    "config": "22k",
    "source": {"type": "example", "seconds": 3, "loop": True},
    "stages": [{"type": "mel"}, {"type": "vocoder", "model": "pghi"}],
    "output": {"gain": 6},  # drive the limiter
    "automation": [
        {"t": 0.5, "param": "output.gain", "value": -12, "ramp": 0.3},
        {"t": 1.0, "param": "mel.eq[2]", "value": -20, "ramp": 0.0},
        {"t": 1.5, "param": "vocoder.gain", "value": 6, "ramp": 0.1},
    ],
}


def make_engine(data=PATCH, **kw):
    return build_engine(validate_patch(data, "test.yaml"), **kw)


def run_blocks(engine, n, bs):
    a = BlockAdapter(engine, max_block=bs)
    return np.concatenate([a.process(min(bs, n - i)) for i in range(0, n, bs)])


def test_block_sizes_give_identical_output():
    n = int(2.2 * CFG.sample_rate)
    ref = None
    for bs in (1, 32, 64, 100, 256, 512, 1024, 4096):
        e = make_engine()
        e.prepare(4)
        y = run_blocks(e, n, bs)
        assert np.all(np.isfinite(y))
        if ref is None:
            ref = y
            assert np.abs(ref).max() > 0.05
        else:
            np.testing.assert_allclose(y, ref, atol=1e-5, err_msg=f"block size {bs}")


def test_internal_chunking_does_not_matter():
    n = 22050
    a = make_engine(); a.prepare(1)
    b = make_engine(); b.prepare(64)
    np.testing.assert_array_equal(run_blocks(a, n, 777), run_blocks(b, n, 777))


def test_random_automation_every_32_samples_stays_finite_and_below_0dbfs():
    e = make_engine()
    e.prepare(2)
    rng = np.random.default_rng(1)
    a = BlockAdapter(e, 32)
    params = [(k, p) for k, p in e.params.items()]
    peak = 0.0
    for _ in range(2000):
        k, p = params[rng.integers(len(params))]
        v = rng.uniform(p.lo - 10, p.hi + 10)  # out of range too: clamped
        if p.size:
            p.set(v, int(rng.integers(p.size)))
        else:
            p.set(v)
        y = a.process(32)
        assert np.all(np.isfinite(y))
        peak = max(peak, float(np.abs(y).max()))
    assert peak <= HARD_CEILING < 1.0


def test_parameters_set_from_another_thread():
    e = make_engine()
    e.prepare(4)
    a = BlockAdapter(e, 256)
    stop = threading.Event()

    def twiddle():
        rng = np.random.default_rng(2)
        while not stop.is_set():
            e.set("output.gain", rng.uniform(-60, 12))
            e.set("mel.eq", rng.uniform(-24, 12, 8).tolist())
            e.params["vocoder.gain"].set(rng.uniform(-48, 12))
            e.panic() if rng.random() < 0.01 else None
            # an OSC thread waits on its socket between messages; a loop that
            # never sleeps would hold the GIL and starve the audio thread for
            # minutes on a slow CPU (10 000 changes a second is still far
            # more than any controller sends)
            time.sleep(1e-4)

    t = threading.Thread(target=twiddle)
    t.start()
    try:
        for _ in range(500):
            y = a.process(256)
            assert np.all(np.isfinite(y)) and np.abs(y).max() <= HARD_CEILING
    finally:
        stop.set()
        t.join()


def test_param_ramps_per_frame_without_jumps():
    p = Param("g", -60, 12, 0, "dB", smoothing=0.05)
    p.prepare(CFG.frame_rate, 16)
    p.set(-20)
    p.begin_block()
    v = np.concatenate([p.frames(3)[:, 0].copy(), p.frames(16)[:, 0].copy()])
    n = int(round(0.05 * CFG.frame_rate))
    steps = np.diff(np.concatenate([[0.0], v]))
    assert np.allclose(steps[:n], -20 / n) and v[n - 1] == -20 and np.all(v[n:] == -20)
    assert p.set(100) == 12 and p.get() == 12  # clamped


def test_output_gain_is_interpolated_per_sample():
    st = OutputStage("output", CFG)
    st.prepare(4)
    st.params["ceiling"].set(-0.1)
    st.reset()
    x = np.full(4 * CFG.hop, 0.1, np.float32)
    st.process(x, 4)
    st.params["gain"].set(-20)
    for p in st.params.values():
        p.begin_block()
    y = st.process(x, 4)
    d = np.abs(np.diff(y))
    assert d.max() < 0.1 * (1 - 10 ** (-1)) / CFG.hop * 1.5  # no step larger than the ramp


class NaNStage(Stage):
    """Test stage: passes mel through but emits NaN/Inf on some frames."""

    input_type = MEL
    output_type = MEL

    def __init__(self, name, cfg, options=None, seed=0):
        super().__init__(name, cfg, options, seed)
        self.count = 0

    def process(self, x, k):
        x = x.copy()
        for j in range(k):
            if self.count % 37 in (5, 6):
                x[:, j] = np.nan
            if self.count % 53 == 7:
                x[3, j] = np.inf
            self.count += 1
        return x


def test_stage_forced_to_emit_nan_gives_finite_output():
    src = ExampleSource("source", CFG, {"seconds": 3})
    e = Engine(CFG, src, [MelStage("mel", CFG), NaNStage("nan", CFG), VocoderStage("vocoder", CFG),
                          OutputStage("output", CFG)])
    e.prepare(8)
    y = render(e, 2 * CFG.sample_rate, 100)
    assert np.all(np.isfinite(y)) and np.abs(y).max() <= HARD_CEILING
    assert e.nonfinite > 0 and np.abs(y).max() > 0.01


def test_output_stage_guards_nan_directly():
    st = OutputStage("output", CFG)
    st.prepare(2)
    x = np.ones(2 * CFG.hop, np.float32) * 5
    x[10] = np.nan
    x[20] = -np.inf
    y = st.process(x, 2)
    assert np.all(np.isfinite(y)) and np.abs(y).max() <= HARD_CEILING and st.nonfinite == 2


def test_block_larger_than_prepared():
    e = make_engine()
    e.prepare(1)
    a = BlockAdapter(e, max_block=64)
    y = np.concatenate([a.process(64), a.process(10000), a.process(3)])
    ref = make_engine()
    ref.prepare(8)
    np.testing.assert_array_equal(y, run_blocks(ref, len(y), 256))


def test_mel_stream_push_matches_mel_file(tmp_path):
    rng = np.random.default_rng(0)
    mel = (rng.standard_normal((CFG.n_mels, 60)) - 4).astype(np.float32)
    np.save(tmp_path / "m.npy", mel)

    def eng(src):
        e = Engine(CFG, src, [VocoderStage("vocoder", CFG), OutputStage("output", CFG)])
        e.prepare(4)
        return e

    a = eng(MelFileSource("source", CFG, {"path": str(tmp_path / "m.npy")}))
    stream = MelStreamSource("source", CFG, {})
    b = eng(stream)
    assert stream.push(mel[:, :25]) == 25
    out_b = [b.render_frames(20)]
    stream.push(mel[:, 25:])
    out_b.append(b.render_frames(50))
    np.testing.assert_array_equal(a.render_frames(70), np.concatenate(out_b))
    assert stream.starved > 0  # ran dry at the end: silence, counted


def test_mel_stream_stdin_reader():
    import io
    mel = np.full((CFG.n_mels, 10), -3.0, np.float32)
    s = MelStreamSource("source", CFG, {"stdin": True})
    s.read_stdin(io.BytesIO(mel.T.tobytes()), block_until_eof=True)
    assert s.queued == 10 and s.eof and s.length_frames == 10


def test_vocoder_registry_accepts_new_models():
    from rtengine.dsp.vocoder import PGHIVocoder
    register_vocoder("pghi-causal-test", lambda cfg, opts, seed: PGHIVocoder(cfg, lookahead=False, seed=seed))
    try:
        data = dict(PATCH, stages=[{"type": "mel"}, {"type": "vocoder", "model": "pghi-causal-test"}])
        e = make_engine(data)
        e.prepare(4)
        assert e.stage_by_name["vocoder"].latency_samples < make_engine().stage_by_name["vocoder"].latency_samples
        assert np.all(np.isfinite(e.render_frames(10)))
    finally:
        VOCODER_MODELS.pop("pghi-causal-test")


def test_reported_latency_matches_a_click():
    """A click at sample c comes out around c + latency (the vocoder smears it)."""
    from rtengine.stages.sources import _BufferSource

    class Click(_BufferSource):
        type_name = "click"

        def _load(self):
            x = np.zeros(CFG.sample_rate, np.float32)
            x[5000] = 0.9
            return x

    e = Engine(CFG, Click("source", CFG), [MelStage("mel", CFG), VocoderStage("vocoder", CFG),
                                           OutputStage("output", CFG)])
    e.prepare(4)
    y = render(e, CFG.sample_rate, 256)
    env = np.convolve(np.abs(y), np.ones(64) / 64, mode="same")
    peak = int(np.argmax(env))
    assert abs(peak - (5000 + e.latency_samples)) <= CFG.hop, (peak, e.latency_samples)
