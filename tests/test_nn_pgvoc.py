"""PG vocoder network: streaming == offline, the paper's size, losses eq. 7–12."""

import math

import numpy as np
import pytest
import torch

from rtengine.config import get_config
from rtengine.dsp.phase_gradient import lambda_map
from rtengine.nn.cached_conv import CachedConv1d
from rtengine.nn.pg_losses import (dct_matrix, lambda_from_offsets, loss_lambda, loss_lfcc,
                                   loss_magnitude, loss_offsets, pg_loss, power_weights)
from rtengine.nn.pgvoc import PGVocConfig, PGVocNet, paper_config, warp_matrix

A22 = get_config("22k")


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _randomised(net: PGVocNet, seed: int = 0) -> PGVocNet:
    """Non-trivial statistics so standardisation is exercised."""
    g = torch.Generator().manual_seed(seed)
    c = net.cfg
    net.set_stats({"mel_mean": torch.randn(c.n_mels, generator=g) - 3,
                   "mel_std": torch.rand(c.n_mels, generator=g) + 0.5,
                   "mag_mean": torch.randn(c.n_bins, generator=g) - 4,
                   "mag_std": torch.rand(c.n_bins, generator=g) + 0.5,
                   "dm_std": torch.tensor(0.7), "dn_std": torch.tensor(1.3)})
    return net.eval()


def _stream(net: PGVocNet, mel: torch.Tensor, chunk: int, prior: torch.Tensor | None = None):
    net.set_streaming(True)
    outs = [net.stream(mel[..., i:i + chunk], None if prior is None else prior[..., i:i + chunk])
            for i in range(0, mel.shape[-1], chunk)]
    if net.lookahead:
        outs.append(net.flush_stream(mel.shape[0]))
    net.set_streaming(False)
    d = net.lookahead
    return [torch.cat([o[j] for o in outs], dim=-1)[..., d:] for j in range(3)]


MODEL_CONFIGS = {
    "causal-small": PGVocConfig.for_audio(A22, channels=32, layers=3),
    "lookahead-2": PGVocConfig.for_audio(A22, channels=32, layers=4, lookahead_layers=2),
    "shipped-size": PGVocConfig.for_audio(A22, channels=256, layers=5),
    "prior-causal": PGVocConfig.for_audio(A22, channels=32, layers=3, dm_prior_iter=10),
    "prior-lookahead-1": PGVocConfig.for_audio(A22, channels=32, layers=3, lookahead_layers=1,
                                               dm_prior_iter=10),
    "prior-refiner-lookahead-1": PGVocConfig.for_audio(A22, channels=32, layers=3, lookahead_layers=1,
                                                       dm_prior_iter=10, refiner_channels=8),
}


@pytest.mark.parametrize("name", list(MODEL_CONFIGS))
def test_streaming_equals_offline_for_any_chunking(name):
    torch.manual_seed(0)
    net = _randomised(PGVocNet(MODEL_CONFIGS[name], A22))
    if net.refiner is not None:          # its last layer starts at zero: make it count
        torch.nn.init.normal_(net.refiner.net[-1].weight)
    mel = torch.randn(2, 80, 70) * 2 - 4
    prior = torch.randn(2, 513, 70) if net.uses_prior else None
    with torch.no_grad():
        ref = net(mel, prior)
        for chunk in (1, 3, 7, 64):
            got = _stream(net, mel, chunk, prior)
            for r, g in zip(ref, got):
                assert g.shape == r.shape
                assert torch.max(torch.abs(g - r)) < 1e-5, (name, chunk)


def test_lookahead_is_reported_and_changes_the_receptive_field():
    net = PGVocNet(MODEL_CONFIGS["lookahead-2"], A22).eval()
    assert net.lookahead == 2
    mel = torch.zeros(1, 80, 20)
    with torch.no_grad():
        base = net(mel)[0]
        bumped = mel.clone()
        bumped[..., 10] = 5.0
        diff = (net(bumped)[0] - base).abs().amax(dim=1)[0]
    # frame 10 reaches frames 8..(10+3) ... but never frames before 10 - 4 (kernel 3, 4 layers)
    # and, with 2 frames of look-ahead, frames 8 and 9 see the future bump.
    assert diff[8] > 0 and diff[9] > 0
    assert float(diff[:6].max()) == 0.0


def test_causal_conv_sees_no_future():
    conv = CachedConv1d(2, 3, 3, dilation=2)
    x = torch.randn(1, 2, 12)
    y = conv(x)
    x2 = x.clone()
    x2[..., 7:] += 1.0
    y2 = conv(x2)
    assert torch.equal(y[..., :7], y2[..., :7])
    assert not torch.equal(y[..., 7:], y2[..., 7:])


def test_paper_config_constructs_and_runs():
    a44 = get_config("44k")
    cfg = paper_config(a44)
    assert (cfg.layers, cfg.channels, cfg.kernel, cfg.n_mels, cfg.n_bins) == (8, 1536, 3, 96, 1025)
    net = PGVocNet(cfg, a44).eval()
    mel = torch.randn(1, 96, 6) - 4
    with torch.no_grad():
        lm, dm, dn = net(mel)
        assert lm.shape == dm.shape == dn.shape == (1, 1025, 6)
        assert torch.isfinite(lm).all() and torch.isfinite(dm).all()
        got = _stream(net, mel, 1)
    assert max(float((g - r).abs().max()) for g, r in zip(got, (lm, dm, dn))) < 1e-4


def test_magnitude_is_bounded_by_scaled_tanh():
    net = _randomised(PGVocNet(MODEL_CONFIGS["causal-small"], A22))
    with torch.no_grad():
        lm, _, _ = net(torch.randn(1, 80, 10) * 1e4)
    z = (lm - net.mag_mean[:, None]) / net.mag_std[:, None]
    assert float(z.abs().max()) <= 5.0 + 1e-4


def test_warp_matrix_is_normalised_transposed_filterbank():
    w = warp_matrix(A22)
    assert w.shape == (513, 80)
    assert np.allclose(w.sum(axis=1), 1.0)
    # a flat mel warps to a flat linear spectrum
    net = PGVocNet(MODEL_CONFIGS["causal-small"], A22)
    assert torch.allclose(net.warp.weight, torch.as_tensor(w, dtype=torch.float32))


# ---------------------------------------------------------------- losses

def _targets(b=2, f=16, t=9, seed=0):
    g = torch.Generator().manual_seed(seed)
    lm = torch.randn(b, f, t, generator=g)
    dm = (torch.rand(b, f, t, generator=g) - 0.5) * 2
    dn = (torch.rand(b, f, t, generator=g) - 0.5) * 2
    lam = lambda_from_offsets(dm, dn)
    return {"log_mag": lm, "mag": torch.exp(lm), "dm": dm, "dn": dn, "lam": lam}


def test_losses_are_zero_for_perfect_predictions_and_positive_otherwise():
    tg = _targets()
    dct = dct_matrix(16, 8)
    pred = (tg["log_mag"], tg["dm"], tg["dn"])
    total, terms = pg_loss(pred, tg, dct)
    assert float(total) == pytest.approx(0.0, abs=1e-12)
    assert all(float(v) == pytest.approx(0.0, abs=1e-12) for v in terms.values())
    for j in range(3):
        bad = list(pred)
        bad[j] = bad[j] + 0.3
        total, terms = pg_loss(tuple(bad), tg, dct)
        assert float(total) > 0
    # each term responds to its own output
    _, t = pg_loss((tg["log_mag"] + 0.3, tg["dm"], tg["dn"]), tg, dct)
    assert t["mag"] > 0 and t["lfcc"] > 0 and t["offsets"] == 0 and t["lambda"] == 0


def test_losses_match_hand_computation():
    # one batch, 2 bins, 1 frame: λ = [0.9, 0.1]
    lm = torch.tensor([[[0.0], [math.log(3.0)]]])              # M = [1, 3]
    mag = torch.exp(lm)
    dm = torch.tensor([[[0.5], [-0.5]]])
    dn = torch.tensor([[[0.2], [0.4]]])
    lam = torch.tensor([[[0.9], [0.1]]])
    lm_hat = lm + torch.tensor([[[1.0], [-2.0]]])
    dm_hat = dm + torch.tensor([[[0.1], [1.0]]])               # bin 1 is impulsive: its Δm error does not count
    dn_hat = dn + torch.tensor([[[5.0], [0.2]]])               # bin 0 is sinusoidal: its Δn error does not count
    # eq. 7: mean of (1, 4)
    assert float(loss_magnitude(lm_hat, lm)) == pytest.approx(2.5)
    # eq. 8 with a 2-point orthonormal DCT: c0 = (a+b)/√2, c1 = (a−b)/√2 of the error (1, −2)
    dct = dct_matrix(2, 2)
    c0, c1 = (1 - 2) / math.sqrt(2), (1 + 2) / math.sqrt(2)
    assert float(loss_lfcc(lm_hat, lm, dct)) == pytest.approx((c0 ** 2 + c1 ** 2) / 2, rel=1e-6)
    # eq. 9: weights M² = (1, 9) / mean 5 = (0.2, 1.8); errors (0.1², 0.2²)
    w = power_weights(mag)
    assert torch.allclose(w.flatten(), torch.tensor([0.2, 1.8]))
    assert float(loss_offsets(dm_hat, dn_hat, dm, dn, lam, w)) == pytest.approx(
        (0.2 * 0.01 + 1.8 * 0.04) / 2, rel=1e-5)
    # eq. 10: λ̂ of one frame: dṅ/dn = 1; dṁ/dm = 1 + Δm̂[1] − Δm̂[0] on both bins
    s = 1 + float(dm_hat[0, 1, 0] - dm_hat[0, 0, 0])
    lam_hat = math.exp(-s * s)
    expect = (0.2 * (lam_hat - 0.9) ** 2 + 1.8 * (lam_hat - 0.1) ** 2) / 2
    assert float(loss_lambda(dm_hat, dn_hat, lam, w)) == pytest.approx(expect, rel=1e-5)
    # eq. 11
    total, _ = pg_loss((lm_hat, dm_hat, dn_hat), {"log_mag": lm, "mag": mag, "dm": dm, "dn": dn, "lam": lam}, dct)
    assert float(total) == pytest.approx(2.5 + 0.1 * (c0 ** 2 + c1 ** 2) / 2
                                         + (0.2 * 0.01 + 1.8 * 0.04) / 2 + expect, rel=1e-5)


def test_dct_is_orthonormal():
    d = dct_matrix(32, 32, dtype=torch.float64)
    assert torch.allclose(d @ d.T, torch.eye(32, dtype=torch.float64), atol=1e-12)


@pytest.mark.parametrize("t", [1, 2, 9])
def test_torch_lambda_equals_dsp_lambda_map(t):
    rng = np.random.default_rng(t)
    dm = np.clip(rng.normal(0, 1.5, (40, t)), -4, 4)
    dn = np.clip(rng.normal(0, 1.0, (40, t)), -2, 2)
    ref = lambda_map(dm, dn)
    got = lambda_from_offsets(torch.tensor(dm)[None], torch.tensor(dn)[None])[0].numpy()
    assert np.max(np.abs(ref - got)) < 1e-9


def test_lambda_gradient_is_finite():
    dm = torch.zeros(1, 8, 6, requires_grad=True)
    dn = torch.full((1, 8, 6), 0.0)
    dn[..., 3] = -1.0     # dṅ/dn = 0 at frames 2 and 4
    dn.requires_grad_(True)
    lam = lambda_from_offsets(dm, dn)
    lam.sum().backward()
    assert torch.isfinite(dm.grad).all() and torch.isfinite(dn.grad).all()


def test_warm_start_from_a_plain_network_begins_at_its_magnitude_and_the_prior(tmp_path):
    """A prior network warm-started from a plain one: the same magnitude, and
    Δm equal to the prior (its correction starts at zero); Δn unchanged."""
    from rtengine.nn.pgvoc import save_weights
    from rtengine.train.pgvoc import warm_start

    torch.manual_seed(1)
    plain = _randomised(PGVocNet(PGVocConfig.for_audio(A22, channels=32, layers=3), A22))
    save_weights(tmp_path / "w.pt", plain, A22)
    net = PGVocNet(PGVocConfig.for_audio(A22, channels=32, layers=3, dm_prior_iter=10), A22).eval()
    info = warm_start(net, tmp_path / "w.pt")
    assert info["widened"] == ["net.0.weight"]
    mel = torch.randn(1, 80, 30) * 2 - 4
    prior = torch.randn(1, 513, 30)
    with torch.no_grad():
        lm0, dm0, dn0 = plain(mel)
        lm, dm, dn = net(mel, prior)
    assert torch.allclose(lm, lm0, atol=1e-5) and torch.allclose(dn, dn0, atol=1e-5)
    assert torch.allclose(dm, prior, atol=1e-5) and not torch.allclose(dm0, prior, atol=1e-2)
    with pytest.raises(ValueError, match="dm_prior"):
        net(mel)


def test_warm_start_into_a_wider_network_computes_the_same_function(tmp_path):
    from rtengine.nn.pgvoc import save_weights
    from rtengine.train.pgvoc import warm_start

    torch.manual_seed(2)
    cfg = PGVocConfig.for_audio(A22, channels=16, layers=3, dm_prior_iter=10)
    small = _randomised(PGVocNet(cfg, A22))
    save_weights(tmp_path / "w.pt", small, A22)
    wide = PGVocNet(PGVocConfig.for_audio(A22, channels=40, layers=3, dm_prior_iter=10), A22).eval()
    info = warm_start(wide, tmp_path / "w.pt")
    assert "net.2.weight" in info["widened"]
    mel, prior = torch.randn(1, 80, 25) * 2 - 4, torch.randn(1, 513, 25)
    with torch.no_grad():
        for a, b in zip(small(mel, prior), wide(mel, prior)):
            assert torch.allclose(a, b, atol=1e-5)
    deeper = PGVocNet(PGVocConfig.for_audio(A22, channels=16, layers=4, dm_prior_iter=10), A22)
    with pytest.raises(ValueError, match="same depth"):
        warm_start(deeper, tmp_path / "w.pt")


def test_refiner_is_frequency_equivariant_and_starts_at_the_prior():
    """The refiner's correction moves with the spectrum: shifting the prior and
    magnitude up by 7 bins shifts the correction by 7 bins (away from the edges)."""
    from rtengine.nn.pgvoc import FrequencyRefiner

    torch.manual_seed(3)
    ref = FrequencyRefiner(8, 5)
    prior, z = torch.randn(1, 100, 4), torch.randn(1, 100, 4)
    assert torch.count_nonzero(ref(prior, z)) == 0            # starts as the prior alone
    torch.nn.init.normal_(ref.net[-1].weight)
    a = ref(prior, z)
    b = ref(torch.roll(prior, 7, dims=1), torch.roll(z, 7, dims=1))
    assert torch.allclose(b[:, 20:80], a[:, 13:73], atol=1e-6)
    with pytest.raises(ValueError, match="dm_prior_iter"):
        PGVocNet(PGVocConfig.for_audio(A22, channels=8, layers=2, refiner_channels=4), A22)


def test_pitch_offset_loss_is_the_semitone_error():
    from rtengine.nn.pg_losses import frequency_error_semitones

    dm = torch.zeros(1, 513, 1)
    dm_hat = torch.full((1, 513, 1), 0.1)
    e = frequency_error_semitones(dm_hat, dm)[0, :, 0]
    # bin 5 (107.7 Hz) + 0.1 bin: 12 log2(5.1 / 5) = 0.343 semitones; first order 0.346
    assert abs(float(e[5]) - 12 * math.log2(5.1 / 5)) < 0.01
    assert float(e[100]) < float(e[10]) < float(e[5])         # the lower, the larger the pitch error
    w = torch.ones(1, 513, 1)
    lam = torch.ones(1, 513, 1)
    plain = loss_offsets(dm_hat, dm, dm, dm, lam, w)
    pitch = loss_offsets(dm_hat, dm, dm, dm, lam, w, pitch=True)
    assert abs(float(plain) - 0.01) < 1e-6 and float(pitch) > 0
