"""IFF-AR: coupling layer (eq. 1), cached TCN, features, streaming vs offline
roll-out, the stage in the engine, the OSC-facing parameters."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from rtengine.config import get_config
from rtengine.nn.iffar import IFFAR, CouplingLayer, IFConditionalFlow, IFFARConfig, export_state
from rtengine.nn import iffar_features as feat

REPO = Path(__file__).resolve().parent.parent
A22 = get_config("22k")


def tiny_config(**kw) -> IFFARConfig:
    d = dict(n_bins=513, channels=16, layers=3, mag_channels=2, mag_hidden=4, flow_layers=2,
             flow_hidden=8, cond_channels=2)
    d.update(kw)
    return IFFARConfig(**d)


def tiny_model(seed=0, dtype=torch.float64) -> IFFAR:
    """A small random IFF-AR whose zero-initialised outputs are randomised (so
    the flow is not the identity and MagHead is not a copy)."""
    torch.manual_seed(seed)
    m = IFFAR(tiny_config(), A22)
    for mod in m.modules():
        if isinstance(mod, CouplingLayer):
            torch.nn.init.normal_(mod.out.weight, std=0.2)
            torch.nn.init.normal_(mod.out.bias, std=0.2)
    torch.nn.init.normal_(m.flow.base.proj.weight, std=0.2)
    torch.nn.init.normal_(m.mag_head.conv2.weight, std=0.05)
    torch.nn.init.normal_(m.note_emb.weight, std=0.5)
    m.set_stats({"mag_mean": torch.full((513,), -6.0), "mag_std": torch.full((513,), 3.0),
                 "if_median": torch.zeros(513), "if_mad": torch.full((513,), 0.8)})
    return m.to(dtype).eval()


# ------------------------------------------------------------------ eq. 1
def test_coupling_invertible_and_logdet_matches_autograd_jacobian():
    torch.manual_seed(0)
    cfg = IFFARConfig(n_bins=9, channels=4, flow_layers=3, flow_hidden=5, cond_channels=2)
    flow = IFConditionalFlow(cfg).double()
    for layer in flow.layers:
        torch.nn.init.normal_(layer.out.weight, std=0.5)
        torch.nn.init.normal_(layer.out.bias, std=0.5)
    torch.nn.init.normal_(flow.base.proj.weight, std=0.5)
    c = torch.randn(1, 4, dtype=torch.float64)
    mag, pm, pi = (torch.randn(1, 9, dtype=torch.float64) for _ in range(3))
    cond = flow.condition(c, mag, pm, pi)
    x = torch.randn(1, 9, dtype=torch.float64)
    # one coupling layer: y_a = x_a, y_b = x_b·exp(s) + t (eq. 1)
    h = cond[0]                     # per-bin condition features (N, H, F)
    layer = flow.layers[0]
    y, ld = layer(x, h)
    a = layer.mask.bool()
    assert torch.equal(y[0, a], x[0, a])
    assert torch.allclose(layer.inverse(y, h), x, atol=1e-12)
    jac = torch.autograd.functional.jacobian(lambda v: layer(v[None], h)[0][0], x[0])
    assert abs(torch.linalg.slogdet(jac)[1].item() - ld.item()) < 1e-10
    # the whole flow
    z, ld_all = flow(x, cond)
    assert torch.allclose(flow.inverse(z, cond), x, atol=1e-10)
    jac = torch.autograd.functional.jacobian(lambda v: flow(v[None], cond)[0][0], x[0])
    assert abs(torch.linalg.slogdet(jac)[1].item() - ld_all.item()) < 1e-9
    assert abs(ld_all.item()) > 1e-3            # a non-trivial transform was tested
    # NLL = ½‖z‖² + ½F log 2π − log|det|, per dimension
    nll = flow.nll(x, cond)
    ref = (0.5 * (z ** 2).sum() + 4.5 * math.log(2 * math.pi) - ld_all) / 9
    assert torch.allclose(nll, ref)


# ------------------------------------------------------------------ TCN cache
def test_cached_tcn_one_frame_at_a_time_equals_full_sequence():
    m = tiny_model(dtype=torch.float32)
    x = torch.randn(2, 2 * 513, 40)
    full = m.encoder(x)
    m.encoder.set_streaming(True)
    steps = torch.cat([m.encoder(x[..., t:t + 1]) for t in range(40)], dim=-1)
    m.encoder.set_streaming(True)     # also uneven chunks
    chunks = torch.cat([m.encoder(x[..., a:b]) for a, b in ((0, 3), (3, 4), (4, 17), (17, 40))], -1)
    m.encoder.set_streaming(False)
    assert (steps - full).abs().max().item() < 1e-5
    assert (chunks - full).abs().max().item() < 1e-5
    # causal: the future does not change the past
    x2 = x.clone()
    x2[..., 30:] += 1.0
    assert torch.allclose(m.encoder(x2)[..., :30], full[..., :30], atol=1e-6)
    assert not torch.allclose(m.encoder(x2)[..., 30:], full[..., 30:], atol=1e-3)


# ------------------------------------------------------------------ features
@pytest.mark.parametrize("mode", feat.IF_MODES)
def test_features_round_trip_if_to_phase(mode):
    rng = np.random.default_rng(1)
    phi = torch.as_tensor(rng.uniform(-np.pi, np.pi, (2, 513, 30)))
    if_ = feat.if_from_phase(phi, A22, mode)
    back = feat.phase_from_if(if_, A22, mode)
    d0 = feat.phase_differences(phi)
    d1 = feat.phase_differences(back)
    assert feat.wrap(d1 - d0).abs().max().item() < 1e-9
    assert feat.wrap(back - phi).abs().max().item() < 1e-9


def test_heterodyned_if_of_a_sine_is_its_bin_offset_and_stft_matches_engine():
    from rtengine.dsp.stft import stft as np_stft

    sr, hop, n = A22.sample_rate, A22.hop, A22.n_fft
    f0 = 440.0
    x = np.sin(2 * np.pi * f0 * np.arange(sr // 2) / sr)
    X = feat.stft(torch.as_tensor(x)[None], A22)[0]
    assert np.abs(X.numpy() - np_stft(x, A22)).max() < 1e-8          # same convention
    m = int(round(f0 * n / sr))
    d = feat.if_from_phase(torch.angle(X), A22, "hetero")[m, 5:-5]
    expect = 2 * np.pi * hop * (f0 * n / sr - m) / n
    assert np.abs(d.numpy() - expect).max() < 1e-3
    y = feat.istft(X[None], A22, len(x))[0].numpy()
    assert np.abs(y - x).max() < 1e-8


# ------------------------------------------------------------------ note changes
def test_per_frame_labels_are_causal_and_match_constant_labels():
    m = tiny_model()
    torch.manual_seed(1)
    feats = torch.randn(1, 2 * 513, 12, dtype=torch.float64)
    const = m(feats, torch.tensor([60]), torch.tensor([2]), sample_tf=False)["mag"]
    per = m(feats, torch.full((1, 11), 60), torch.full((1, 11), 2), sample_tf=False)["mag"]
    assert torch.allclose(const, per)
    notes = torch.full((1, 11), 60)
    notes[0, 6:] = 67                       # the label changes at predicted frame 6
    changed = m(feats, notes, torch.full((1, 11), 2), sample_tf=False)["mag"]
    assert torch.allclose(changed[:6], const[:6])
    assert (changed[6:] - const[6:]).abs().amax(dim=1).min() > 1e-6


def test_pitch_templates_and_function_preserving_widening():
    from rtengine.nn.iffar import pitch_templates, widen_for_template

    cfg = tiny_config(pitch_template=True)
    t = pitch_templates(cfg, A22)
    assert t.shape == (129, 513) and float(t[128].abs().max()) == 0.0
    binhz = A22.sample_rate / A22.n_fft
    f0 = 440.0
    for h in (1, 2, 3, 7):
        b = h * f0 / binhz
        assert t[69, int(round(b))] > 0.85                 # a bump at every harmonic of A4
    assert t[69, int(round(1.5 * f0 / binhz))] < 1e-3      # nothing between them
    # a model without templates, widened, computes the same; templates then change it
    old = tiny_model()
    new = IFFAR(cfg, A22).to(torch.float64).eval()
    new.load_state_dict(widen_for_template(old.state_dict(), cfg))
    torch.manual_seed(3)
    feats = torch.randn(1, 2 * 513, 8, dtype=torch.float64)
    a = old(feats, torch.tensor([60]), torch.tensor([1]), sample_tf=True)
    b = new(feats, torch.tensor([60]), torch.tensor([1]), sample_tf=True)
    assert torch.allclose(a["mag"], b["mag"]) and torch.allclose(a["if0"], b["if0"])
    with torch.no_grad():
        new.mag_head.conv1.weight[:, -1].normal_()
    c = new(feats, torch.tensor([60]), torch.tensor([1]), sample_tf=False)["mag"]
    d = new(feats, torch.tensor([67]), torch.tensor([1]), sample_tf=False)["mag"]
    assert (c - d).abs().max() > 1e-3


def test_frame_weights_of_the_loss():
    from rtengine.nn.iffar_losses import LossWeights, iffar_loss

    m = tiny_model()
    torch.manual_seed(2)
    feats = torch.randn(2, 2 * 513, 10, dtype=torch.float64)
    out = m(feats, torch.tensor([60, 62]), torch.tensor([1, 1]), sample_tf=False)
    w = LossWeights(mrstft=0.0, sisdr=0.0)
    plain, _ = iffar_loss(m, out, feats, None, A22, w, skip=2)
    ones, _ = iffar_loss(m, out, feats, None, A22, w, skip=2, frame_weight=torch.ones(2, 9))
    assert torch.allclose(plain, ones)
    # all the weight on one frame: the loss of that frame alone
    fw = torch.zeros(2, 9)
    fw[1, 5] = 1.0
    one, terms = iffar_loss(m, out, feats, None, A22, w, skip=2, frame_weight=fw)
    row = 9 + 5
    tgt = feats[1, :513, 6]
    assert torch.isclose(terms["mag"], (out["mag"][row] - tgt).abs().mean())
    assert torch.isclose(terms["nll"], out["nll"][row])
    # squared error (mag_p = 2), weighted and plain
    w2 = LossWeights(mag_p=2.0, mrstft=0.0, sisdr=0.0)
    _, terms2 = iffar_loss(m, out, feats, None, A22, w2, skip=2, frame_weight=fw)
    assert torch.isclose(terms2["mag"], ((out["mag"][row] - tgt) ** 2).mean())
    _, t_plain = iffar_loss(m, out, feats, None, A22, w2, skip=2)
    rows = torch.cat([torch.arange(2, 9), torch.arange(11, 18)])
    tgts = feats[:, :513, 3:].transpose(1, 2).reshape(-1, 513)
    assert torch.isclose(t_plain["mag"], ((out["mag"][rows] - tgts) ** 2).mean())


def test_note_change_crops_label_the_first_frame_that_hears_the_new_note():
    import sys
    sys.path.insert(0, str(REPO / "tools"))
    import train_iffar as T

    sr = A22.sample_rate
    t = np.arange(4 * sr) / sr
    a = (0.5 * np.sin(2 * np.pi * 440.0 * t)).astype(np.float32)
    b = (0.5 * np.sin(2 * np.pi * 1000.0 * t)).astype(np.float32)
    ds = T.NoteCrops([a, b], [(69, 0), (83, 4)], 32, A22, seed=3, switch=1.0)
    bin_b = int(round(1000.0 * A22.n_fft / sr))
    for epoch in range(4):
        ds.set_epoch(epoch)
        it = ds[0]
        assert bool(it["switched"]) and it["note"].shape == (31,)
        k0 = int(np.argmax(it["note"].numpy() == 83))
        assert int(it["switch_at"]) == k0
        assert 4 <= k0 and set(it["note"][:k0].tolist()) == {69} and set(it["note"][k0:].tolist()) == {83}
        assert set(it["family"][k0:].tolist()) == {4}
        X = np.abs(feat.stft(it["audio"][None].double(), A22, center=False)[0].numpy())
        level = 20 * np.log10(X[bin_b] + 1e-12)
        # predicted frame k is crop frame k + 2: crop frame k0 + 2 is the first
        # to hear clip b (before it: only the cut's splatter, 40 dB lower)
        assert level[k0 + 2] > 0 and level[k0 + 2] - level[k0 + 1] > 40, (k0, level[k0:k0 + 4])
    plain = T.NoteCrops([a, b], [(69, 0), (83, 4)], 32, A22, seed=3, switch=0.0)[0]
    assert not bool(plain["switched"]) and set(plain["note"].tolist()) == {69}
    assert int(plain["switch_at"]) == -1


@pytest.mark.parametrize("history,base", [(0, 1), (3, 1), (3, 4)])
def test_chained_rollout_passes_equal_a_teacher_free_rollout_at_temperature_zero(history, base):
    """The roll-out loss's K parallel passes reproduce, for the first K frames
    after the prompt, exactly what IFFAR.rollout generates at T = 0."""
    import sys
    sys.path.insert(0, str(REPO / "tools"))
    import train_iffar as T

    m = history_model(seed=4, base=base) if history else tiny_model(seed=4)
    torch.manual_seed(1)
    sr = A22.sample_rate
    t = torch.arange(14 * 256 + 1024, dtype=torch.float64) / sr
    x = 0.3 * torch.sin(2 * math.pi * 330.0 * t) + 0.1 * torch.sin(2 * math.pi * 990.0 * t + 0.4)
    X = feat.stft(x[None], A22, center=False)
    feats = m.normalise(feat.log_magnitude(X), feat.if_from_phase(torch.angle(X), A22, m.cfg.if_mode))
    note, fam = torch.tensor([64]), torch.tensor([2])
    prompt, passes = 6, 4
    with torch.no_grad():
        out = m(feats, note, fam)
        pred = T.chained_rollout(m, feats, note, fam, out, prompt, passes)     # (1, T-1, F)
        ref = m.rollout(feats[..., :prompt], passes, temperature=0.0, note=64, family=2)
    got = m.clamp_mag(pred[0, prompt - 1:prompt - 1 + passes]).T              # frames prompt…
    # the first frame exactly; later ones to 1e-3: generation conditions the
    # flow on the clamped magnitude, teacher forcing on the raw one (this
    # random model predicts below the log floor in the top bins)
    assert torch.allclose(got[:, 0], ref[0, :m.cfg.n_bins, 0], atol=1e-12)
    assert torch.allclose(got, ref[0, :m.cfg.n_bins], atol=1e-3)
    # one pass fewer: the last frame of the span is no longer the roll-out's
    short = m.clamp_mag(T.chained_rollout(m, feats, note, fam, out, prompt, passes - 1)[0, prompt - 1:prompt - 1 + passes]).T
    assert torch.allclose(short[:, :-1], ref[0, :m.cfg.n_bins, :-1], atol=1e-3)
    assert (short[:, -1] - ref[0, :m.cfg.n_bins, -1]).abs().max() > 0.05


# ------------------------------------------------------------------ streaming
def history_model(seed=0, history=3, base=1) -> IFFAR:
    """tiny_model widened with ``mag_history`` frames (and a ``mag_base`` mix
    of the last ``base`` frames), the new weights randomised."""
    from rtengine.nn.iffar import add_mag_base, widen_for_history

    cfg = tiny_config(mag_history=history, mag_base=base)
    m = IFFAR(cfg, A22)
    state = widen_for_history(tiny_model(seed).state_dict(), cfg)
    m.load_state_dict(add_mag_base(state, cfg) if base > 1 else state)
    m = m.to(torch.float64).eval()
    with torch.no_grad():
        m.mag_head.conv1.weight[:, -history:].normal_(std=0.3)
        if base > 1:
            m.mag_head.base_logits.normal_(std=1.0)
    return m


def test_mag_base_starts_at_the_mean_of_the_last_frames_and_learns_its_mix():
    from rtengine.nn.iffar import add_mag_base, widen_for_history

    old = tiny_model(seed=3)
    cfg = tiny_config(mag_history=3, mag_base=4)
    new = IFFAR(cfg, A22).to(torch.float64)
    new.load_state_dict(add_mag_base(widen_for_history(old.state_dict(), cfg), cfg))
    torch.manual_seed(2)
    c = torch.randn(4, 16, dtype=torch.float64)
    prev = torch.randn(4, 513, dtype=torch.float64)
    hist = torch.randn(4, 3, 513, dtype=torch.float64)
    # the residual now sits on the mean of prev and the 3 frames before it
    got = new.mag_head(c, prev, None, hist)
    want = old.mag_head(c, prev) - prev + (prev + hist.sum(1)) / 4
    assert torch.allclose(got, want, atol=1e-12)
    # the mixing weights are trained: the loss reaches them
    got.square().mean().backward()
    assert new.mag_head.base_logits.grad.abs().max() > 0
    # a base wider than the history is refused
    with pytest.raises(ValueError, match="mag_history"):
        IFFAR(tiny_config(mag_history=1, mag_base=4), A22)


def test_mag_history_widening_is_function_preserving_and_the_history_is_causal():
    from rtengine.nn.iffar import widen_for_history

    old = tiny_model(seed=2)
    cfg = tiny_config(mag_history=3)
    new = IFFAR(cfg, A22).to(torch.float64).eval()
    new.load_state_dict(widen_for_history(old.state_dict(), cfg))
    torch.manual_seed(5)
    feats = torch.randn(1, 2 * 513, 12, dtype=torch.float64)
    note, fam = torch.tensor([60]), torch.tensor([1])
    a = old(feats, note, fam, sample_tf=True)
    b = new(feats, note, fam, sample_tf=True)
    assert torch.allclose(a["mag"], b["mag"]) and torch.allclose(a["if0"], b["if0"])
    # the history of frame t holds frames t-1, t-2, t-3 (frame 0 repeated before the start)
    h = new.mag_history_of(feats[:, :513])
    assert h.shape == (1, 12, 3, 513)
    assert torch.equal(h[0, 7, 0], feats[0, :513, 6]) and torch.equal(h[0, 7, 2], feats[0, :513, 4])
    assert torch.equal(h[0, 1, 1], feats[0, :513, 0]) and torch.equal(h[0, 0, 0], feats[0, :513, 0])
    # with trained history weights MagHead reads it: the same context and last
    # frame with another history give another prediction
    m = history_model(seed=2)
    c = torch.randn(1, m.cfg.channels, dtype=torch.float64)
    prev = feats[:, :513, 5]
    with torch.no_grad():
        pa = m.mag_head(c, prev, None, h[:, 5])
        pb = m.mag_head(c, prev, None, h[:, 5] + 1.0)
    assert (pa - pb).abs().max() > 1e-3


@pytest.mark.parametrize("guard,template,history,base,partial_temp",
                         [(False, False, 0, 1, 1.0), (True, False, 0, 1, 1.0), (False, True, 0, 1, 1.0),
                          (False, False, 3, 1, 1.0), (False, False, 3, 4, 1.0), (False, False, 3, 4, 0.2)])
def test_streaming_generation_equals_offline_rollout_for_a_seed(guard, template, history, base, partial_temp):
    from rtengine.stages.iffar import IFFARStream, harmonic_tone

    m = history_model(history=history, base=base) if history else tiny_model()
    if template:
        from rtengine.nn.iffar import widen_for_template

        cfg = tiny_config(pitch_template=True)
        mt = IFFAR(cfg, A22)
        mt.load_state_dict(widen_for_template(m.state_dict(), cfg))
        m = mt.to(torch.float64).eval()
        with torch.no_grad():
            m.mag_head.conv1.weight[:, -1].normal_(std=0.3)
            m.flow.cond_net.weight[:, -1].normal_(std=0.3)
    prompt = harmonic_tone(57, 0.25, A22.sample_rate)
    st = IFFARStream(m, seed=7, play_prompt=False, guard=guard)
    st.prime(prompt)
    k, temp = 16, 0.9
    mags, phases = zip(*[(a.copy(), b.copy()) for a, b in
                         (st.next_frame(note=60, temperature=temp, partial_temp=partial_temp)
                          for _ in range(k))])
    gen = m.rollout(st.prompt_feats, k, temperature=temp, seed=7, note=60, cached=False,
                    guard=guard, partial_temp=partial_temp)[0]
    f = 513
    mag_off = torch.exp(m.denorm_mag(gen[:f].T)).numpy()
    if_off = m.denorm_if(gen[f:].T).T
    phi0 = torch.as_tensor(np.angle(st.prompt_X[:, -1]))
    ph_off = feat.phase_from_if(if_off, A22, m.cfg.if_mode, phi0).numpy()
    assert np.abs(np.stack(mags) - mag_off).max() < 1e-6 * mag_off.max()
    dphi = np.stack(phases).T - ph_off
    assert np.abs(np.angle(np.exp(1j * dphi))).max() < 1e-6
    # the cached roll-out gives the same frames too; another seed does not
    gen_c = m.rollout(st.prompt_feats, k, temperature=temp, seed=7, note=60, cached=True,
                      guard=guard, partial_temp=partial_temp)[0]
    assert (gen_c - gen).abs().max().item() < 1e-8
    gen_s = m.rollout(st.prompt_feats, k, temperature=temp, seed=8, note=60, cached=True,
                      guard=guard, partial_temp=partial_temp)[0]
    assert (gen_s - gen).abs().max().item() > 1e-3
    if partial_temp != 1.0:      # and the partials' temperature changed the frames
        gen_1 = m.rollout(st.prompt_feats, k, temperature=temp, seed=7, note=60, cached=True, guard=guard)[0]
        assert (gen_1 - gen).abs().max().item() > 1e-3


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_gelu_kernel_is_torchs_exact_gelu_in_place(dtype):
    from rtengine.nn.gelu_kernel import gelu_

    rng = np.random.default_rng(0)
    x = np.concatenate([np.linspace(-12, 12, 24001), 4 * rng.standard_normal(12312),
                        [0.0, -0.0, 1e-30, -6.0, 40.0, -40.0]]).astype(dtype)
    ref = torch.nn.functional.gelu(torch.from_numpy(x)).numpy()
    y = x.copy()
    assert gelu_(y) is y                                   # in place
    if dtype == np.float64:
        assert np.abs(y - ref).max() <= 1e-15 * np.abs(ref).max()
    else:
        # within a float32 rounding of the exact GELU, and nearer to it than
        # torch's own float32 GELU (1e-6 off near x = −3.4)
        exact = np.array([0.5 * v * (1 + math.erf(v / math.sqrt(2))) for v in x.astype(np.float64)])
        err = np.abs(y - exact)
        assert (err <= np.spacing(np.abs(exact).astype(np.float32)) + 1e-7).all()
        assert err.max() < np.abs(ref - exact).max()
    # 2-d, strided rows, and a 1-d view: each in place, the rest untouched
    buf = np.tile(x[:4000].reshape(8, 500), (1, 2))
    view = buf[:, 3:503]
    gelu_(view)
    assert np.allclose(view, y[:4000].reshape(8, 500), rtol=1e-6, atol=1e-12)
    assert np.array_equal(buf[:, :3], x[:4000].reshape(8, 500)[:, :3])
    col = buf[:, 0].copy()
    gelu_(buf[:, 0])
    assert np.allclose(buf[:, 0], gelu_(col), rtol=1e-6, atol=1e-12)
    with pytest.raises(ValueError, match="1-d or 2-d"):
        gelu_(np.zeros((2, 2, 2), dtype=dtype))


def test_float32_stream_follows_the_shipped_models_offline_rollout():
    """The live path in the shipped model's own dtype (float32, the rational
    erf of the GELU kernel): 32 frames at T = 0.7 stay within float32's
    rounding of the torch roll-out."""
    from rtengine.stages.iffar import DEFAULT_WEIGHTS, IFFARStream, harmonic_tone, load_model

    m = load_model(DEFAULT_WEIGHTS)
    assert m.mag_mean.dtype == torch.float32
    st = IFFARStream(m, seed=7, play_prompt=False)
    st.prime(harmonic_tone(57, 0.25, A22.sample_rate))
    k, temp = 32, 0.7
    mags, phases = zip(*[(a.copy(), b.copy()) for a, b in
                         (st.next_frame(temperature=temp, partial_temp=0.0) for _ in range(k))])
    gen = m.rollout(st.prompt_feats, k, temperature=temp, seed=7, cached=False, partial_temp=0.0)[0]
    mag_off = torch.exp(m.denorm_mag(gen[:513].T)).numpy()
    ph_off = feat.phase_from_if(m.denorm_if(gen[513:].T).T, A22, m.cfg.if_mode,
                                torch.as_tensor(np.angle(st.prompt_X[:, -1]))).numpy()
    assert np.abs(np.stack(mags) - mag_off).max() < 1e-5 * mag_off.max()
    assert np.abs(np.angle(np.exp(1j * (np.stack(phases).T - ph_off)))).max() < 1e-3


def test_partial_temp_lowers_the_temperature_on_the_bins_within_40_db_of_the_frames_loudest():
    from rtengine.nn.iffar import PARTIALS_DB

    m = tiny_model()
    ln = torch.full((2, 513), -5.0, dtype=torch.float64)
    ln[0, [10, 20, 30]] = torch.tensor([0.0, -0.5, -1.2], dtype=ln.dtype) * PARTIALS_DB / 8.686   # 0, -20, -48 dB
    ln[1, 100] = 2.0                                                 # row 1: one loud bin, the rest 60 dB down
    mag = (ln - m.mag_mean) / m.mag_std
    assert m.temperatures(mag, 0.7) == 0.7                           # 1: the paper's, one temperature
    t = m.temperatures(mag, 0.7, 0.25)
    assert t.shape == (2, 513)
    loud = torch.isclose(t, torch.tensor(0.7 * 0.25, dtype=t.dtype))
    assert loud[0].nonzero().flatten().tolist() == [10, 20]
    assert loud[1].nonzero().flatten().tolist() == [100]
    assert torch.allclose(t[~loud], torch.tensor(0.7, dtype=t.dtype))


@pytest.fixture(scope="module")
def tiny_weights(tmp_path_factory):
    d = tmp_path_factory.mktemp("iffar")
    torch.save(export_state(tiny_model(dtype=torch.float32)), d / "weights.pt")
    return d


def _engine(weights, seconds=2.0, stage_params=None, prompt="note", options=None, automation=None):
    import rtengine.stages.iffar  # noqa: F401  (registers the stage)
    from rtengine.control.patch import build_engine, validate_patch

    data = {"config": "22k", "seed": 3,
            "source": {"type": "silence", "seconds": seconds},
            "stages": [{"type": "iffar", "options": {"weights": str(weights), "prompt": prompt,
                                                     "prompt_seconds": 0.3, **(options or {})},
                        "params": stage_params or {"temperature": 0.8}}],
            "output": {"gain": 0, "ceiling": -1},
            "automation": automation or []}
    return build_engine(validate_patch(data, "<test>"))


def _f0(y, sr=22050):
    import librosa

    f = librosa.yin(y, fmin=80, fmax=1000, sr=sr, frame_length=2048)
    return float(np.median(f))


def test_retrigger_restarts_at_each_new_note(tiny_weights):
    from rtengine.engine.render import render

    auto = [{"t": 0.0, "param": "iffar.note", "value": 60}, {"t": 1.0, "param": "iffar.note", "value": 67}]
    sr = A22.sample_rate
    y = render(_engine(tiny_weights, 2.0, {"temperature": 0.5}, options={"retrigger": True},
                       automation=auto), 2 * sr, block_size=256)
    # the re-made prompt (0.3 s) plays from the change: G4, whatever the model does after it
    lat = 512
    seg = y[int(1.03 * sr) + lat:int(1.25 * sr) + lat]
    assert abs(12 * np.log2(_f0(seg) / 392.0)) < 0.3
    assert abs(12 * np.log2(_f0(y[int(0.03 * sr) + lat:int(0.25 * sr) + lat]) / 261.63)) < 0.3
    # without retrigger the note change alone does not restart the prompt
    y2 = render(_engine(tiny_weights, 2.0, {"temperature": 0.5}, automation=auto), 2 * sr, block_size=256)
    assert np.abs(y2[:sr - 2 * lat] - y[:sr - 2 * lat]).max() < 1e-6   # the same until the change
    assert np.abs(y2[int(1.03 * sr):int(1.25 * sr)] - y[int(1.03 * sr):int(1.25 * sr)]).max() > 1e-3


def _rms_db(y):
    return 20 * np.log10(np.sqrt(np.mean(np.square(y, dtype=np.float64))) + 1e-12)


def test_legato_glides_to_each_new_note_without_a_new_attack(tiny_weights):
    """A held (frozen) sound glides from note to note: the pitch follows, the
    level does not jump as a retrigger's new attack does; the same for any
    block size; a prime afterwards restarts from the prompt."""
    from rtengine.engine.render import render

    sr, lat = A22.sample_rate, 512
    auto = [{"t": 0.0, "param": "iffar.note", "value": 60}, {"t": 0.4, "param": "iffar.freeze", "value": 1},
            {"t": 1.0, "param": "iffar.note", "value": 65}, {"t": 1.5, "param": "iffar.note", "value": 58},
            {"t": 2.0, "param": "iffar.prime", "value": 1}]
    out = {}
    for mode, block in (("legato", 256), ("legato", 3000), ("retrigger", 256)):
        params, options = ({"temperature": 0.5, "legato": 1}, {}) if mode == "legato" \
            else ({"temperature": 0.5}, {"retrigger": True})
        eng = _engine(tiny_weights, 2.5, params, options=options, automation=auto)
        out[mode, block] = render(eng, int(2.5 * sr), block_size=block)
    y = out["legato", 256]
    assert np.isfinite(y).all() and np.abs(y).max() <= 10 ** (-1 / 20) + 1e-6
    assert np.abs(y - out["legato", 3000]).max() < 1e-5
    seg = lambda a, b: y[int(a * sr) + lat:int(b * sr) + lat]          # noqa: E731
    semis = lambda a, b: 12 * np.log2(_f0(seg(a, b)) / 440) + 69        # noqa: E731
    held = semis(0.6, 0.95)          # (this untrained model has drifted off 60 before the freeze)
    assert abs(semis(1.1, 1.45) - held - 5) < 0.15 and abs(semis(1.6, 1.95) - held + 2) < 0.15
    before = _rms_db(seg(0.8, 0.95))
    assert abs(_rms_db(seg(1.05, 1.2)) - before) < 3
    r = out["retrigger", 256]
    assert abs(_rms_db(r[int(1.05 * sr) + lat:int(1.2 * sr) + lat]) - before) > 3  # a restart
    # the prime re-makes the prompt at the current note: the tone itself plays again
    assert abs(semis(2.03, 2.25) - 58) < 0.1 and abs(_rms_db(seg(2.03, 2.2)) - before) > 3


def test_held_glides_up_and_back_keep_the_band_above_nyquist_over_ratio(tiny_weights):
    """Frozen, glides transpose the sound held before the first of them: up a
    fifth and back, the band a fifth up would push past Nyquist is still there."""
    from rtengine.engine.render import render

    sr, lat = A22.sample_rate, 512
    auto = [{"t": 0.0, "param": "iffar.note", "value": 84}, {"t": 0.4, "param": "iffar.freeze", "value": 1},
            {"t": 1.0, "param": "iffar.note", "value": 91}, {"t": 1.5, "param": "iffar.note", "value": 84}]
    y = render(_engine(tiny_weights, 2.0, {"temperature": 0.5, "legato": 1}, options={"prompt_note": 84},
                       automation=auto), 2 * sr, block_size=256)     # C6: partials up to 10.4 kHz

    def high_db(a, b):                     # energy above Nyquist / 1.5, relative to the whole
        s = y[int(a * sr) + lat:int(b * sr) + lat]
        p = np.abs(np.fft.rfft(s * np.hanning(len(s)))) ** 2
        return 10 * np.log10(p[np.fft.rfftfreq(len(s), 1 / sr) > sr / 2 / 1.5].sum() / p.sum())

    before, back = high_db(0.6, 0.95), high_db(1.6, 1.95)
    assert abs(back - before) < 3          # (a glide back from the fifth's own sound: empty)


def test_a_frame_frozen_right_after_the_prompt_keeps_its_pitch(tiny_weights):
    """Frozen from the first generated frame, the held frame advances by the
    prompt's own last phase step, not by nothing (which would buzz at the frame rate)."""
    from rtengine.engine.render import render

    auto = [{"t": 0.0, "param": "iffar.freeze", "value": 1}]
    eng = _engine(tiny_weights, 1.0, options={"play_prompt": False, "prompt_note": 57},
                  stage_params={"note": 57}, automation=auto)
    y = render(eng, 22050, block_size=256)
    assert abs(12 * np.log2(_f0(y[2048:]) / 220.0)) < 0.3


def test_stage_output_does_not_depend_on_block_size(tiny_weights):
    from rtengine.engine.render import render

    outs = []
    for block in (256, 64 * 7, 3000):
        eng = _engine(tiny_weights, 1.0)
        outs.append(render(eng, 22050, block_size=block))
    assert np.abs(outs[0] - outs[1]).max() < 1e-5
    assert np.abs(outs[0] - outs[2]).max() < 1e-5


def test_stage_generates_with_its_thread_bound_on_numpys_blas_too(tiny_weights, monkeypatch):
    """The frame step's products are NumPy's: a stage that keeps one core must
    bound NumPy's OpenBLAS pool too, not torch alone, and give the caller's back."""
    from rtengine.compute_threads import blas_threads, set_blas_threads
    from rtengine.engine.render import render
    from rtengine.nn.iffar_step import FrameStep

    if blas_threads() is None:
        pytest.skip("NumPy's BLAS pool is not reachable here (not OpenBLAS on Linux)")
    seen = []
    step = FrameStep.__call__

    def watched(self, *a, **k):
        seen.append((blas_threads(), torch.get_num_threads()))
        return step(self, *a, **k)

    monkeypatch.setattr(FrameStep, "__call__", watched)
    before = blas_threads()
    set_blas_threads(3)
    try:
        y = render(_engine(tiny_weights, 0.5, options={"play_prompt": False}), 11025, block_size=256)
        assert blas_threads() == 3                       # the caller's pool, restored
    finally:
        set_blas_threads(before)
    assert np.isfinite(y).all() and len(seen) > 30
    assert set(seen) == {(1, 1)}


# ------------------------------------------------------------------ engine + OSC
def test_shipped_patch_renders_two_seconds_finite_below_0dbfs():
    import rtengine.stages.iffar  # noqa: F401
    from rtengine.control.patch import build_engine, load_patch
    from rtengine.engine.render import render

    if not (REPO / "models/iffar-22k/weights.pt").exists():
        pytest.fail("models/iffar-22k/weights.pt is missing")
    eng = build_engine(load_patch(REPO / "patches/iffar-drone.yaml"))
    y = render(eng, 2 * 22050, block_size=512)
    assert np.isfinite(y).all()
    assert np.abs(y).max() <= 1.0
    assert np.sqrt(np.mean(y[22050:] ** 2)) > 1e-4          # it plays something
    assert eng.nonfinite == 0


def test_osc_facing_params_exist_and_drive_the_stage(tiny_weights):
    import rtengine.stages.iffar  # noqa: F401
    from rtengine.control.osc import address_table
    from rtengine.control.patch import build_engine, load_patch

    eng = build_engine(load_patch(REPO / "patches/iffar-perform.yaml"))
    table = address_table(eng, load_patch(REPO / "patches/iffar-perform.yaml").aliases)
    for p in ("note", "temperature", "partial_temp", "freeze", "prime"):
        assert f"/rtengine/iffar/{p}" in table
        assert f"/rtengine/iffar/{p}/norm" in table
    assert any(a.alias and a.target == "iffar.note" for a in table.values())
    # freeze holds the spectrum; prime restarts from the prompt (same audio as the start)
    eng = _engine(tiny_weights, 1.0, prompt="note")
    eng.prepare(4)
    st = eng.stage_by_name["iffar"]
    outs = []
    process = st.process
    st.process = lambda x, k: outs.append(process(x, k)) or outs[-1]   # the stage's own output
    eng.render_frames(40)
    first = np.concatenate(outs)
    outs.clear()
    eng.set("iffar.prime", 1.0)
    eng.render_frames(40)
    again = np.concatenate(outs)
    # after a restart the OLA tail of the old stream is gone after n_fft/hop frames
    assert np.abs(first[4 * 256:] - again[4 * 256:]).max() < 1e-5 * np.abs(first).max()
    assert np.abs(first[:2 * 256] - again[:2 * 256]).max() > 1e-4     # the tail was there
    # partial_temp drives the generator: the same restart with it at 0 plays other frames
    eng.set("iffar.prime", 0.0)
    eng.render_frames(1)
    eng.set("iffar.partial_temp", 0.0)
    eng.set("iffar.prime", 1.0)
    outs.clear()
    eng.render_frames(40)
    steady = np.concatenate(outs)
    assert np.abs(steady[4 * 256:] - first[4 * 256:]).max() > 1e-3 * np.abs(first).max()
    eng.set("iffar.freeze", 1.0)
    eng.render_frames(2)
    m0 = st.stream.mag.copy()
    eng.render_frames(10)
    assert np.array_equal(st.stream.mag, m0)


def _frames_with_a_loud_bin():
    """A tiny model and 3 random true frames ``(3, 2F)`` whose bin 100 is 20
    standard deviations louder than the rest."""
    m = tiny_model(seed=1)
    torch.manual_seed(0)
    tgt = torch.randn(3, 2 * 513, dtype=torch.float64)
    tgt[:, 100] += 20.0
    return m, tgt


def test_loud_if_error_weighs_bins_by_their_power_and_wraps():
    from rtengine.nn.iffar_losses import loud_if_error

    m, tgt = _frames_with_a_loud_bin()
    f = 513
    mad = m.if_mad
    assert float(loud_if_error(m, tgt[:, f:].clone(), tgt).abs().max()) < 1e-12
    quiet = tgt[:, f:].clone()
    quiet[:, 300] += 1.0 / mad[300]          # 1 rad off in a quiet bin
    loud = tgt[:, f:].clone()
    loud[:, 100] += 1.0 / mad[100]           # 1 rad off in the loud bin
    wrapped = tgt[:, f:].clone()
    wrapped[:, 100] += (1.0 + 2 * math.pi) / mad[100]   # the same phase advance, one turn on
    e_q, e_l, e_w = (loud_if_error(m, x, tgt) for x in (quiet, loud, wrapped))
    assert (e_l > 0.4).all() and (e_q < 1e-6).all()
    assert torch.allclose(e_l, e_w, atol=1e-9)


def test_loud_mag_error_weighs_bins_by_their_power():
    from rtengine.nn.iffar_losses import LossWeights, iffar_loss, loud_mag_error

    m, tgt = _frames_with_a_loud_bin()
    f = 513
    mag = tgt[:, :f].clone()
    assert float(loud_mag_error(m, mag, tgt).abs().max()) < 1e-12
    quiet, loud = mag.clone(), mag.clone()
    quiet[:, 300] -= 1.0
    loud[:, 100] -= 1.0                      # the partial 1 std down
    e_q, e_l = loud_mag_error(m, quiet, tgt), loud_mag_error(m, loud, tgt)
    assert (e_l > 0.99).all() and (e_q < 1e-6).all()
    # in the total, with its weight, and named in the terms
    feats = tgt.T[None].contiguous()         # (1, 2F, 3): frames 1, 2 are the targets
    out = {"mag": loud[1:], "nll": torch.zeros(2, dtype=torch.float64)}
    t0, _ = iffar_loss(m, out, feats, None, A22, LossWeights(mrstft=0, sisdr=0))
    t1, terms = iffar_loss(m, out, feats, None, A22, LossWeights(mrstft=0, sisdr=0, mag_loud=3.0))
    assert torch.isclose(t1 - t0, 3.0 * terms["mag_loud"]) and float(terms["mag_loud"]) > 0.99


@pytest.mark.parametrize("flow_only", [False, True])
def test_loud_if_term_reaches_the_encoder_only_when_asked(flow_only):
    from rtengine.nn.iffar_losses import LossWeights, iffar_loss

    m = tiny_model(seed=2)
    torch.manual_seed(3)
    feats = torch.randn(2, 2 * 513, 10, dtype=torch.float64)
    out = m(feats, torch.tensor([60, 61]), torch.tensor([1, 1]))
    w = LossWeights(mag=0.0, nll=0.0, mrstft=0.0, sisdr=0.0, if_loud=1.0, if_loud_flow_only=flow_only)
    total, terms = iffar_loss(m, out, feats, None, A22, w)
    assert float(terms["if_loud"]) > 0
    total.backward()
    enc = sum(float(p.grad.abs().sum()) for p in m.encoder.parameters() if p.grad is not None)
    flow = sum(float(p.grad.abs().sum()) for p in m.flow.parameters() if p.grad is not None)
    assert flow > 0
    assert (enc == 0) if flow_only else (enc > 0)


def _notes_set(folder):
    """Three 1-s harmonic notes with a manifest (two train, one val) and a
    small untrained model saved as ``init.pt``, for the trainer as a user runs it."""
    import json

    import soundfile as sf

    sr = A22.sample_rate
    t = np.arange(sr) / sr
    rows = []
    for i, (f0, split) in enumerate(((110.0, "train"), (196.0, "train"), (330.0, "val"))):
        x = sum(0.3 / k * np.sin(2 * np.pi * k * f0 * t) for k in range(1, 5)).astype(np.float32)
        sf.write(folder / f"n{i}.wav", x, sr)
        rows.append({"id": f"n{i}", "path": f"n{i}.wav", "split": split,
                     "labels": {"pitches": [45 + 7 * i], "family": "organ"}})
    (folder / "manifest.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    torch.manual_seed(0)
    init = IFFAR(IFFARConfig(channels=16, layers=2, flow_layers=2, flow_hidden=8), A22)
    init.set_stats({"mag_mean": torch.full((513,), -6.0), "mag_std": torch.full((513,), 3.0),
                    "if_median": torch.zeros(513), "if_mad": torch.full((513,), 0.5)})
    torch.nn.init.normal_(init.mag_head.conv2.weight, std=0.05)   # a MagHead with a bias to calibrate
    torch.save(export_state(init), folder / "init.pt")
    return init


def test_trainer_with_train_flow_changes_the_flow_alone(tmp_path):
    """``--train flow`` from a trained model (here on free runs with the
    running-phase loss): the exported flow moves, the encoder, label
    embeddings and MagHead keep their weights exactly; ``--snapshots`` keeps
    each checkpoint, and ``--average`` writes the mean of chosen ones."""
    import os
    import subprocess
    import sys

    from rtengine.nn.iffar import load_iffar

    init = _notes_set(tmp_path)
    args = ["tools/train_iffar.py", "--data", str(tmp_path), "--init", str(tmp_path / "init.pt"),
            "--train", "flow", "--w-if-loud", "1", "--channels", "16", "--layers", "2",
            "--flow-layers", "2", "--flow-hidden", "8", "--steps", "3", "--batch-size", "2",
            "--frames", "12", "--skip", "2", "--val-every", "3", "--val-clips", "1", "--lr", "1e-2",
            "--free-run", "1", "--free-run-temp", "0", "--w-phase-run", "1", "--phase-run-frames", "4",
            "--free-run-partial-temp", "0",
            "--snapshots", "--ckpt-every", "1",
            "--no-progress", "--run", str(tmp_path / "run"), "--out", str(tmp_path / "out")]
    r = subprocess.run([sys.executable] + args, cwd=REPO, capture_output=True, text=True, timeout=300,
                       env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert r.returncode == 0, r.stderr[-2000:]
    before, after = init.state_dict(), load_iffar(tmp_path / "out").state_dict()
    moved = {k for k in before if k != "mag_bias" and not torch.equal(before[k], after[k])}
    assert moved and all(k.startswith("flow.") for k in moved), moved
    assert '"phase_run"' in (tmp_path / "run" / "log.jsonl").read_text()
    snaps = sorted((tmp_path / "run" / "snapshots").glob("step-*.pt"))
    assert len(snaps) == 3
    r = subprocess.run([sys.executable, "tools/train_iffar.py", "--init", str(tmp_path / "init.pt"),
                        "--average", str(tmp_path / "avg"), *map(str, snaps[1:])],
                       cwd=REPO, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    avg = load_iffar(tmp_path / "avg").state_dict()
    two = [torch.load(p, weights_only=True)["model"] for p in snaps[1:]]
    for k in moved:
        assert torch.allclose(avg[k], (two[0][k] + two[1][k]) / 2, atol=1e-6), k
    assert all(torch.equal(avg[k], before[k]) for k in before if k not in moved and k != "mag_bias")
    r = subprocess.run([sys.executable, "tools/train_iffar.py", "--init", str(tmp_path / "init.pt"),
                        "--average", str(tmp_path / "avg2"), str(snaps[0]), str(tmp_path / "missing.pt")],
                       cwd=REPO, capture_output=True, text=True, timeout=120)
    assert r.returncode != 0 and "missing.pt" in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "avg2" / "weights.pt").exists()
    r = subprocess.run([sys.executable, "tools/train_iffar.py", "--data", str(tmp_path), "--train", "flow",
                        "--run", str(tmp_path / "run2")], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert r.returncode != 0 and "--train flow needs --init" in r.stderr and "Traceback" not in r.stderr


def test_calibration_scale_is_chosen_by_rollout_lsd(tmp_path):
    """``--calibrate M --calibrate-scales``: the stored bias is the chosen
    share of the teacher-forced one, and the choice is the scale whose
    roll-outs score the lowest LSD (recomputed here)."""
    import sys

    sys.path.insert(0, str(REPO / "tools"))
    import train_iffar as T
    from rtengine.nn.iffar import load_iffar

    _notes_set(tmp_path)
    plain = T.calibrate(str(tmp_path / "init.pt"), str(tmp_path), clips=1)
    bias = load_iffar(tmp_path / "init.pt").mag_bias.clone()
    assert "scale" not in plain and bias.abs().max() > 0
    rep = T.main(["--calibrate", str(tmp_path / "init.pt"), "--data", str(tmp_path), "--val-clips", "1",
                  "--calibrate-scales", "0,0.5,1,3"])
    lsd = {float(a): v for a, v in rep["rollout_lsd"].items()}
    assert set(lsd) == {0.0, 0.5, 1.0, 3.0} and len(set(lsd.values())) > 1   # the scale matters
    assert rep["scale"] == min(lsd, key=lsd.get)
    got = load_iffar(tmp_path / "init.pt").mag_bias
    assert torch.allclose(got, rep["scale"] * bias, atol=1e-6)


def test_self_feed_gives_the_same_frames_the_models_own_magnitude_and_if():
    """``--self-feed`` / ``--self-feed-if``: the chosen input frames carry the
    model's own teacher-forced magnitude and (wrapped) IF at z = 0, the same
    frames both where both are on, frame 0 and the other frames stay true."""
    import sys
    from types import SimpleNamespace
    sys.path.insert(0, str(REPO / "tools"))
    import train_iffar as T

    m = tiny_model(seed=2)
    torch.manual_seed(0)
    feats = torch.randn(3, 2 * 513, 10, dtype=torch.float64)
    note, fam = m.labels(None, None, 3, "cpu")

    def fed(p_mag, p_if):
        task = SimpleNamespace(cfg=m.cfg, args=SimpleNamespace(self_feed=p_mag, self_feed_if=p_if,
                                                              self_feed_temp=0.0))
        torch.manual_seed(5)
        return T.IFFARTask.self_fed(task, m, feats, note, fam)

    assert fed(0.0, 0.0) is feats
    with torch.no_grad():
        out = m(feats, note, fam)
    own_mag = out["mag"].reshape(3, 9, 513).transpose(1, 2)
    own_if = m.renorm_if(out["if0"]).reshape(3, 9, 513).transpose(1, 2)
    both = fed(1.0, 1.0)
    assert torch.equal(both[..., 0], feats[..., 0])
    assert torch.allclose(both[:, :513, 1:], own_mag) and torch.allclose(both[:, 513:, 1:], own_if)
    assert not torch.allclose(own_if, feats[:, 513:, 1:])
    half = fed(0.5, 0.5)
    is_own_mag = (half[:, :513, 1:] != feats[:, :513, 1:]).any(1)
    is_own_if = (half[:, 513:, 1:] != feats[:, 513:, 1:]).any(1)
    assert torch.equal(is_own_mag, is_own_if) and 0 < int(is_own_if.sum()) < 27
    only_if = fed(0.0, 1.0)
    assert torch.equal(only_if[:, :513], feats[:, :513]) and torch.allclose(only_if[:, 513:, 1:], own_if)


def test_nll_scores_the_true_targets_when_the_inputs_are_fed_back():
    """With fed-back inputs (scheduled sampling, free runs) the flow's NLL is
    that of the true next IF under the condition the fed inputs give, not of
    the fed frames themselves (which would teach the flow its own samples)."""
    m = tiny_model(seed=5)
    torch.manual_seed(0)
    true = torch.randn(2, 2 * 513, 9, dtype=torch.float64)
    fed = true.clone()
    fed[:, 513:, 4:] = torch.randn(2, 513, 5, dtype=torch.float64)
    note, fam = m.labels(None, None, 2, "cpu")
    with torch.no_grad():
        torch.manual_seed(1)
        out = m(fed, note, fam, sample_tf=False, targets=true)
        torch.manual_seed(1)
        own = m(fed, note, fam, sample_tf=False)
        cond = m.flow.condition(*out["cond_inputs"])
        torch.manual_seed(1)
        x = true[..., 1:].transpose(1, 2).reshape(-1, 2 * 513)[:, 513:]
        x = x * m.if_valid + torch.randn_like(x) * (1 - m.if_valid)
        ref = m.flow.nll(x, cond)
    assert torch.allclose(out["nll"], ref)
    assert torch.equal(out["mag"], own["mag"])                     # the inputs alone predict
    assert torch.allclose(out["nll"][:3], own["nll"][:3])          # frames 1-3: inputs true
    assert not torch.allclose(out["nll"][4:8], own["nll"][4:8])


@pytest.mark.parametrize("partial_temp", [1.0, 0.0])
def test_free_run_feeds_the_models_own_rollout_after_a_true_prompt(partial_temp):
    """``--free-run``: after a true prompt the input frames are exactly what
    IFFAR.rollout generates from that prompt (same seed: IF sampled, with
    ``--free-run-partial-temp`` on the partials, fed back wrapped), the
    prompt stays true, and the model is left in training mode."""
    import sys
    from types import SimpleNamespace
    sys.path.insert(0, str(REPO / "tools"))
    import train_iffar as T

    m = history_model(seed=3, base=4)
    torch.manual_seed(0)
    feats = torch.randn(2, 2 * 513, 12, dtype=torch.float64)
    note, fam = torch.tensor([[60] * 11, [70] * 11]), torch.tensor([[1] * 11, [2] * 11])
    task = SimpleNamespace(cfg=m.cfg, args=SimpleNamespace(free_run=1.0, free_run_prompt=3,
                                                          free_run_temp=0.7, skip=2,
                                                          free_run_partial_temp=partial_temp))
    m.train()
    torch.manual_seed(7)
    got, prompt = T.IFFARTask.free_run(task, m, feats, note, fam)
    assert m.training
    assert prompt == int((got != feats).any(1).any(0).nonzero()[0])   # the first fed frame
    assert 3 <= prompt < 6
    assert torch.equal(got[..., :prompt], feats[..., :prompt])
    # replay the same draws: the prompt length, then the roll-out's seed
    torch.manual_seed(7)
    torch.rand(())
    assert int(torch.randint(3, 6, ())) == prompt
    seed = int(torch.randint(0, 2 ** 31 - 1, ()))
    ref = m.rollout(feats[..., :prompt], 12 - prompt, 0.7, seed, torch.tensor([60, 70]), torch.tensor([1, 2]),
                    partial_temp=partial_temp)
    assert torch.allclose(got[:, :513, prompt:], ref[:, :513])
    if partial_temp != 1.0:
        plain = m.rollout(feats[..., :prompt], 12 - prompt, 0.7, seed, torch.tensor([60, 70]), torch.tensor([1, 2]))
        assert not torch.allclose(plain[:, 513:], ref[:, 513:])
    fed_if = m.renorm_if(ref[:, 513:].transpose(1, 2)).transpose(1, 2)
    assert torch.allclose(got[:, 513:, prompt:], fed_if)
    assert not torch.allclose(got[:, 513:, prompt:], ref[:, 513:])       # wrapped as fed back
    off = SimpleNamespace(cfg=m.cfg, args=SimpleNamespace(free_run=0.0, free_run_prompt=3,
                                                         free_run_temp=0.7, skip=2, free_run_partial_temp=1.0))
    same, none = T.IFFARTask.free_run(off, m, feats, note, fam)
    assert same is feats and none is None


def test_run_phase_error_scores_the_running_sum_of_the_advance_errors_from_the_start_frame():
    """``--w-phase-run``: a constant small advance error per frame adds up to
    a large running phase error, while errors that cancel frame by frame
    leave none; frames before ``start`` are not scored; power-weighted."""
    from rtengine.nn.iffar_losses import loud_if_error, run_phase_error

    m = history_model(seed=1)
    f, b, t = m.cfg.n_bins, 2, 9
    torch.manual_seed(0)
    tgt = torch.randn(b * (t - 1), 2 * f, dtype=torch.float64)
    tgt[:, :f] = -5.0
    tgt[:, 100] = 3.0                                  # one loud bin carries the power
    eps = 0.3 / float(m.if_mad[100])                   # 0.3 rad per frame at bin 100
    steady = tgt[:, f:].clone()
    steady[:, 100] += eps
    alternating = tgt[:, f:].clone()
    alternating[:, 100] += eps * torch.tensor([1.0, -1.0]).repeat(b * (t - 1) // 2)
    drift = run_phase_error(m, steady, tgt, b, start=1)
    cancel = run_phase_error(m, alternating, tgt, b, start=1)
    per_frame = loud_if_error(m, steady, tgt).mean()
    # the running sum reaches 0.3·8 = 2.4 rad: mean of 1 − cos(0.3 k), k = 1..8
    expect = float(np.mean(1 - np.cos(0.3 * np.arange(1, 9))))
    assert abs(float(drift) - expect) < 0.02
    assert float(drift) > 10 * float(per_frame)
    assert float(cancel) < float(per_frame)
    late = run_phase_error(m, steady, tgt, b, start=5)          # frames 5..8: sums 0.3..1.2 rad
    assert abs(float(late) - float(np.mean(1 - np.cos(0.3 * np.arange(1, 5))))) < 0.02
    short = run_phase_error(m, steady, tgt, b, start=1, frames=3)   # a horizon of 3 frames
    assert abs(float(short) - float(np.mean(1 - np.cos(0.3 * np.arange(1, 4))))) < 0.02


def test_eval_table_sums_the_teacher_forced_phase_from_the_last_context_frame(tmp_path):
    """eval_iffar as a user runs it: the table holds the one-step, summed
    teacher-forced and roll-out rows. The summed teacher-forced row keeps the
    calibrated one-step magnitudes and IF (same LSD and IF error) and only
    sums the phase; on a steady note the last true advance, summed from the
    last context frame's phase, rebuilds the audio (a phase one frame off
    would shift every partial by a hop)."""
    import json
    import subprocess
    import sys

    _notes_set(tmp_path)
    out = tmp_path / "eval.json"
    r = subprocess.run([sys.executable, "tools/eval_iffar.py", "--weights", str(tmp_path / "init.pt"),
                        "--data", str(tmp_path), "--split", "val", "--clips", "1", "--context", "16",
                        "--k", "16", "--temperatures", "0", "--pitch", "0", "--json", str(out)],
                       cwd=REPO, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    table = json.loads(out.read_text())["table"]
    for row in ("one-step calibrated", "16-step teacher-forced", "16-step teacher-forced repeat-last",
                "16-step T=0", "16-step T=0 partial_temp 0", "16-step repeat-last"):
        assert row in table, sorted(table)
    tf, one = table["16-step teacher-forced"], table["one-step calibrated"]
    assert tf["lsd_db"] == one["lsd_db"] and tf["if_mae"] == one["if_mae"]
    assert tf["si_sdr_mag_gt"] != one["si_sdr_mag_gt"]
    assert table["16-step teacher-forced repeat-last"]["si_sdr_mag_gt"] > 20, table
    # the non-causal reference (true frames on both sides) follows the quiet
    # bins' noise better than the last frame does
    assert table["one-step oracle t±1 (non-causal)"]["lsd_db"] < table["one-step repeat-last"]["lsd_db"]
    # a span longer than the clips: said plainly, no traceback
    r = subprocess.run([sys.executable, "tools/eval_iffar.py", "--weights", str(tmp_path / "init.pt"),
                        "--data", str(tmp_path), "--split", "val", "--clips", "1", "--k", "4000",
                        "--pitch", "0"], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert r.returncode == 2 and "has" in r.stderr and "Traceback" not in r.stderr, r.stderr[-2000:]


def test_partials_lost_sees_faded_partials_in_magnitude_and_smeared_phase_in_audio():
    """eval_iffar's partials-lost figures: zero for the truth itself; the
    magnitude figure grows when the partials fade into the floor; the audio
    figure also when only the phase is scrambled (the partials smear)."""
    import sys
    sys.path.insert(0, str(REPO / "tools"))
    import eval_iffar as E

    sr, f0 = A22.sample_rate, 220.0
    t = np.arange(int(0.6 * sr)) / sr
    rng = np.random.default_rng(0)
    x = sum(0.3 / h * np.sin(2 * np.pi * h * f0 * t) for h in range(1, 12)) + 1e-3 * rng.standard_normal(t.size)
    X = feat.stft(torch.as_tensor(x)[None], A22)[0].numpy()[:, 4:36]
    M, phi = np.abs(X), np.angle(X)
    d = np.zeros_like(M)
    assert E.harmonic_to_rest_db(M, f0, A22) > 20, E.harmonic_to_rest_db(M, f0, A22)
    assert E.harmonic_to_rest_db(M, 100.0, A22) is None         # below 5 bins: not measured

    def lost(M2, phi2):
        m = E.frame_metrics(X, M2, phi2, d, d, 1.0, A22, f0=f0)
        return m["partials_lost_db"], m["partials_lost_audio_db"]

    same = lost(M, phi)
    assert abs(same[0]) < 1e-9 and abs(same[1]) < 1.0
    faded = M.copy()
    k = np.arange(M.shape[0]) * sr / A22.n_fft
    near = np.min(np.abs(k[:, None] - f0 * np.arange(1, 12)[None]), axis=1) < 30
    faded[near] *= 0.1                                            # partials 20 dB down
    assert lost(faded, phi)[0] > 15
    scrambled = lost(M, rng.uniform(-np.pi, np.pi, M.shape))
    assert abs(scrambled[0]) < 1e-9 and scrambled[1] > 3
