"""LatentFT: mask (eq. 4), bands, latent DFT, streaming operator, EDM, the
chunked decoder and the live stage."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from rtengine.config import get_config
from rtengine.nn import edm
from rtengine.nn.latentft import (BAND_EDGES, LOG_MEL_MIN, N_BINS, LatentFTModel, TrainingMask,
                                  apply_latent_mask, band_edges, band_edges_hz, band_index,
                                  band_mask, correlated_scores, gains_to_mask, log_frequency_axis,
                                  one_sided_operator, rbf_kernel, save_weights, scale_mel,
                                  stream_generate, unscale_mel)

ROOT = Path(__file__).resolve().parent.parent
SHIPPED = ROOT / "models" / "latentft-22k" / "weights.pt"
TINY = {"hidden": 16, "enc_blocks": 1, "latent": 4, "channels": [8, 8, 8], "emb": 16,
        "hop": 8, "context": 8, "lookahead": 8, "window": 64}


@pytest.fixture(scope="module")
def tiny_weights(tmp_path_factory):
    torch.manual_seed(0)
    m = LatentFTModel(TINY)
    path = tmp_path_factory.mktemp("lft") / "weights.pt"
    save_weights(m, path)
    return path


# -- eq. 4 ---------------------------------------------------------------------
def test_rbf_kernel_columns_unit_norm_and_correlation_by_log_distance():
    u = log_frequency_axis()
    K = rbf_kernel(u)
    assert K.shape == (N_BINS, N_BINS)
    np.testing.assert_allclose(np.linalg.norm(K, axis=0), 1.0, atol=1e-12)
    # scores: unit variance, neighbours on the log axis correlated, far bins not
    torch.manual_seed(0)
    g = torch.randn(4000, N_BINS)
    s = correlated_scores(g, torch.from_numpy(K).float()).numpy()
    assert abs(s.var(axis=0).mean() - 1.0) < 0.05
    c = np.corrcoef(s[:, [200, 210, 3]].T)
    assert c[0, 1] > 0.9          # 200 and 210: nearly the same log frequency
    assert abs(c[0, 2]) < 0.1     # bin 3 is ~4 octaves away


def test_training_mask_fraction_follows_threshold():
    gen = torch.Generator().manual_seed(0)
    tm = TrainingMask()
    fr = [float(tm.sample(200, gen, torch.full((200,), t)).mean()) for t in (-1.0, 0.0, 1.0)]
    assert fr[0] > 0.75 and 0.4 < fr[1] < 0.6 and fr[2] < 0.25
    m = tm.sample(500, gen)                      # random thresholds t ~ N(0, 1)
    assert set(np.unique(m.numpy())) <= {0.0, 1.0}
    per = m.mean(dim=1).numpy()
    assert per.std() > 0.2                       # widely spread, not binomial around ½
    assert (per < 0.1).mean() > 0.05 and (per > 0.9).mean() > 0.05


# -- bands ---------------------------------------------------------------------
def test_band_training_masks_are_non_empty_unions_of_one_partitions_bands():
    from rtengine.nn.latentft import band_training_mask

    m = band_training_mask(300, 1024, torch.Generator().manual_seed(0)).numpy()
    assert set(np.unique(m)) <= {0.0, 1.0} and (m.sum(1) > 0).all()
    sizes = {2: set(), 4: set(), 8: set()}
    for row in m:
        # some partition explains the row: every band wholly kept or wholly dropped
        fits = [n for n in (2, 4, 8)
                if all(len(set(row[band_index(n, 1024) == b])) == 1 for b in range(n))]
        assert fits
        n = max(fits)
        sizes[n].add(int(sum(row[band_index(n, 1024) == b][0] for b in range(n))))
    assert 1 in sizes[8] and len(sizes[8]) >= 5       # single bands and larger subsets occur


@pytest.mark.parametrize("n", [2, 4, 8])
def test_band_partitions_cover_unit_interval(n):
    e = np.asarray(band_edges(n))
    assert len(e) == n + 1 and e[0] == 0.0 and e[-1] == 1.0 and np.all(np.diff(e) > 0)
    assert set(e) <= set(BAND_EDGES[8])          # coarser partitions merge the 8 bands
    idx = band_index(n)
    assert idx.shape == (N_BINS,) and np.all(np.diff(idx) >= 0)
    assert set(idx) == set(range(n))            # every band has bins, every bin a band
    total = sum(band_mask(n, [b]) for b in range(n))
    np.testing.assert_array_equal(total, 1.0)
    hz = band_edges_hz(n)
    assert hz[0][0] == 0 and abs(hz[-1][1] - 22050 / 512) < 1e-9
    assert all(abs(a[1] - b[0]) < 1e-12 for a, b in zip(hz, hz[1:]))


def test_two_band_split_at_2_7_hz():
    assert abs(band_edges_hz(2)[0][1] - 2.696) < 0.01


# -- latent DFT and gains ------------------------------------------------------------
def test_all_ones_gains_reproduce_latent_exactly():
    z = torch.randn(3, 16, 512, dtype=torch.float64)
    m = torch.from_numpy(gains_to_mask(np.ones(8))).double()
    np.testing.assert_allclose(apply_latent_mask(z, m).numpy(), z.numpy(), atol=1e-12)
    # bands are a partition: the band parts add back to the latent; gains are linear
    parts = [apply_latent_mask(z, torch.from_numpy(band_mask(8, [b])).double()) for b in range(8)]
    np.testing.assert_allclose(sum(parts).numpy(), z.numpy(), atol=1e-10)
    g = np.array([0, 1, 2, 0.5, 1, 1, 0, 1.5])
    boosted = apply_latent_mask(z, torch.from_numpy(gains_to_mask(g)).double())
    np.testing.assert_allclose(boosted.numpy(), sum(gi * p for gi, p in zip(g, parts)).numpy(), atol=1e-10)
    zero = apply_latent_mask(z, torch.zeros(N_BINS, dtype=torch.float64))
    assert float(zero.abs().max()) == 0.0


def test_mel_scaling_round_trip():
    L = np.array([LOG_MEL_MIN, 0.0, 2.1922])
    np.testing.assert_allclose(scale_mel(L)[[0, 2]], [-1.0, 1.0], atol=1e-4)
    np.testing.assert_allclose(unscale_mel(scale_mel(L)), L, atol=1e-9)


# -- streaming operator ----------------------------------------------------------
def test_stage_ring_buffer_equals_offline_one_sided_operator(tiny_weights):
    from rtengine.stages.latentft import LatentFTStage

    st = LatentFTStage("latentft", get_config("22k"), {"model": str(tiny_weights)})
    st.prepare(16)
    H, D, W = st.H, st.D, st.W
    rng = np.random.default_rng(0)
    z = torch.from_numpy(rng.standard_normal((4, 10 * H)).astype(np.float32))
    gains = rng.uniform(0, 2, 8)
    mask = torch.from_numpy(gains_to_mask(gains, 8, 2 * W))
    sil = torch.from_numpy(st._silence_z)
    ref = one_sided_operator(z, mask, D, H, sil, W)
    ring = np.repeat(st._silence_z[:, None], W, 1).astype(np.float32)
    got = []
    for j in range(10):
        st._push(ring, z[:, j * H:(j + 1) * H].numpy())
        got.append(st._masked(ring, gains, 8)[0, :, st.P:])
    np.testing.assert_allclose(torch.cat(got, 1).numpy(), ref.numpy(), atol=1e-5)
    # frame i of the operator is the masked latent of stream frame i - D: with the
    # identity mask it is the input itself
    ident = one_sided_operator(z, torch.ones(2 * W // 2 + 1), D, H, sil, W)
    np.testing.assert_allclose(ident[:, D:].numpy(), z[:, :-D].numpy(), atol=1e-5)


def test_stage_equals_offline_stream_and_block_size_does_not_matter(tiny_weights):
    from rtengine.stages.latentft import LatentFTStage

    cfg = get_config("22k")
    rng = np.random.default_rng(1)
    T = 6 * 8
    mel = (rng.standard_normal((80, T)) - 4).astype(np.float32)
    outs = []
    for blocks in ([1] * T, [5, 11, 3, 16, 13]):
        st = LatentFTStage("latentft", cfg, {"model": str(tiny_weights)}, seed=3)
        st.prepare(16)
        st.params["steps"].set(2)
        st.params["gain"].set_all([1, 0, 1, 2, 0.5, 1, 0, 1])
        for p in st.params.values():
            p.reset()
        o, pos = [], 0
        for k in blocks:
            for p in st.params.values():
                p.begin_block()
            o.append(st.process(mel[:, pos:pos + k], k))
            pos += k
        outs.append(np.concatenate(o, axis=1))
    np.testing.assert_allclose(outs[0], outs[1], atol=1e-5)
    st_lat = st.D + st.H
    model = st.model
    m = torch.from_numpy(gains_to_mask(np.array([1, 0, 1, 2, 0.5, 1, 0, 1]), 8, 2 * st.W))[None]
    ref = stream_generate(model, [(mel, m, 1.0)], T - st_lat, steps=2, seed=3)[0].numpy()
    np.testing.assert_allclose(outs[0][:, st_lat:], ref, atol=1e-4)


def test_stage_takes_sigma_min_steps_and_lock_from_the_model_card_unless_the_patch_sets_them(tiny_weights, tmp_path):
    import shutil

    from rtengine.errors import UserError
    from rtengine.stages.latentft import LatentFTStage

    cfg = get_config("22k")
    folder = tmp_path / "m"
    folder.mkdir()
    shutil.copy(tiny_weights, folder / "weights.pt")
    bare = LatentFTStage("latentft", cfg, {"model": str(folder)})      # no card
    assert bare.sigma_min == 0.002 and bare.params["steps"].get() == 8 and bare.params["lock"].get() == 0
    (folder / "card.yaml").write_text("inference:\n  sigma_min: 1.5\n  steps: 4\n  level_lock: 0.75\n"
                                      "  lock_latent: 0.5\n")
    carded = LatentFTStage("latentft", cfg, {"model": str(folder)})
    assert carded.sigma_min == 1.5 and carded.params["steps"].get() == 4 and carded.params["lock"].get() == 0.75
    # a latent without level channels has none to lock to, whatever the card says
    assert carded.params["lock_latent"].get() == 0
    assert LatentFTStage("latentft", cfg, {"model": str(folder), "sigma_min": 0.3}).sigma_min == 0.3
    with pytest.raises(UserError, match="sigma_min"):
        LatentFTStage("latentft", cfg, {"model": str(folder), "sigma_min": 0})


# -- EDM -----------------------------------------------------------------------------
def test_edm_preconditioning_values():
    sd = 0.5
    for s in (0.002, 0.1, 0.5, 1.0, 80.0):
        c_skip, c_out, c_in, c_noise = edm.precond_coefficients(torch.tensor([s], dtype=torch.float64), sd)
        assert abs(float(c_skip) - sd ** 2 / (s ** 2 + sd ** 2)) < 1e-12
        assert abs(float(c_out) - s * sd / np.sqrt(s ** 2 + sd ** 2)) < 1e-12
        assert abs(float(c_in) - 1 / np.sqrt(s ** 2 + sd ** 2)) < 1e-12
        assert abs(float(c_noise) - np.log(s) / 4) < 1e-12

    class Const(torch.nn.Module):
        def __init__(self, v):
            super().__init__()
            self.v = v

        def forward(self, x, c_noise):
            self.seen = x
            return torch.full_like(x, self.v)

    x = torch.randn(2, 3, 5, dtype=torch.float64)
    sigma = torch.tensor([0.3, 2.0], dtype=torch.float64)
    net = Const(1.0)
    D = edm.EDMPrecond(net)(x, sigma)
    c_skip, c_out, c_in, _ = edm.precond_coefficients(sigma)
    np.testing.assert_allclose(D.numpy(), (c_skip.view(-1, 1, 1) * x + c_out.view(-1, 1, 1)).numpy())
    np.testing.assert_allclose(net.seen.numpy(), (c_in.view(-1, 1, 1) * x).numpy())


def test_mean_path_shifts_the_diffusion_to_the_residual_and_starts_as_a_no_op():
    from rtengine.nn.unet1d import LatentMean

    torch.manual_seed(0)
    a = dict(TINY)
    plain = LatentFTModel(a)
    meaned = LatentFTModel(dict(a, mean_hidden=8))
    # weights of a model without the path load (strict=False) and give its output
    missing, unexpected = meaned.load_state_dict(plain.state_dict(), strict=False)
    assert not unexpected and all(k.startswith("denoiser.mean.") for k in missing)
    P, H, C = a["context"], a["hop"], a["latent"]
    x, ctx = torch.randn(2, 80, H), torch.randn(2, 80, P)
    cond, sigma = torch.randn(2, C, P + H), torch.tensor([0.2, 5.0])
    with torch.no_grad():
        assert torch.equal(meaned.denoiser(x, sigma, cond, ctx), plain.denoiser(x, sigma, cond, ctx))
        # a trained mean: D = μ + EDM(x − μ; context − μ)
        torch.nn.init.normal_(meaned.denoiser.mean.net[-1].weight)
        mu = meaned.denoiser.mean(cond)
        want = mu[..., P:] + plain.denoiser(x - mu[..., P:], sigma, cond, ctx - mu[..., :P])
        assert torch.allclose(meaned.denoiser(x, sigma, cond, ctx), want, atol=1e-6)
        assert not torch.allclose(want, plain.denoiser(x, sigma, cond, ctx), atol=1e-3)
    assert isinstance(meaned.denoiser.mean, LatentMean)


def test_level_lock_moves_each_frames_level_to_the_mean_estimate_and_keeps_its_shape():
    from rtengine.nn.latentft import level_weights, lock_level, region_levels

    w = level_weights(80)
    assert w.shape == (80,) and abs(float(w.sum()) - 1) < 1e-6 and float(w[-1]) > 5 * float(w[0])
    g = torch.Generator().manual_seed(0)
    y, mu = torch.randn(2, 80, 12, generator=g), torch.randn(2, 80, 12, generator=g)
    level = lambda v: torch.einsum("m,bmt->bt", w, v)       # noqa: E731
    full, half = lock_level(y, mu, 1.0), lock_level(y, mu, 0.5)
    assert torch.allclose(level(full), level(mu), atol=1e-5)
    assert torch.allclose(level(half), 0.5 * (level(y) + level(mu)), atol=1e-5)
    assert torch.equal(lock_level(y, mu, 0.0), y)
    # one shift per frame: the shape across mel bands is the sample's
    d = full - y
    assert torch.allclose(d, d[:, :1].expand_as(d), atol=1e-6)
    # by regions: each region's level is mu's, one shift per region and frame
    R = region_levels(80, 4)
    four = lock_level(y, mu, 1.0, regions=4)
    assert torch.allclose(torch.einsum("nm,bmt->bnt", R, four), torch.einsum("nm,bmt->bnt", R, mu), atol=1e-5)
    assert torch.allclose(level(four), level(mu), atol=1e-5)
    d = four - y
    for lo in (0, 20, 40, 60):
        assert torch.allclose(d[:, lo:lo + 20], d[:, lo:lo + 1].expand(-1, 20, -1), atol=1e-5)
    assert (d[:, 0] - d[:, 79]).abs().max() > 1e-2


@pytest.mark.skipif(not SHIPPED.exists(), reason="models/latentft-22k not shipped")
def test_locked_chunk_has_the_level_of_the_mean_path_for_one_source_guided_or_blended():
    from rtengine.nn.latentft import LOCK_REGIONS, load_model, region_levels

    model = load_model(SHIPPED)
    P, H, C = model.context, model.hop, model.arch["latent"] + model.arch["level_channels"]
    g = torch.Generator().manual_seed(1)
    ca, cb = torch.randn(1, C, P + H, generator=g), torch.randn(1, C, P + H, generator=g)
    ctx, noise = torch.full((1, 80, P), -0.3), torch.randn(1, 80, H, generator=g)
    R = region_levels(80, LOCK_REGIONS)
    level = lambda v: torch.einsum("nm,bmt->bnt", R, v)                     # noqa: E731
    mean = lambda c: model.denoiser.mean(c)[..., P:]                        # noqa: E731
    with torch.no_grad():
        for conds, weights, s, mu in (
                ([ca], [1.0], 1.0, mean(ca)),
                ([ca], [1.0], 2.0, 2 * mean(ca) - mean(torch.zeros_like(ca))),
                ([ca, cb], [0.6, 0.2], 1.0, 0.75 * mean(ca) + 0.25 * mean(cb))):
            free = model.decode_chunk(conds, weights, ctx, noise, 4, s, 2.0)
            locked = model.decode_chunk(conds, weights, ctx, noise, 4, s, 2.0, lock=1.0)
            assert torch.allclose(level(locked), level(mu), atol=1e-4)
            assert (level(free) - level(mu)).abs().max() > 1e-2       # the lock did something
            d = locked - free                          # and only the regions' levels moved
            assert torch.allclose(level(d), d, atol=1e-5)


@pytest.mark.skipif(not SHIPPED.exists(), reason="models/latentft-22k not shipped")
def test_lock_latent_mixes_the_mean_paths_level_with_the_level_the_masked_latent_carries():
    from rtengine.nn.latentft import LOCK_REGIONS, load_model, region_levels

    model = load_model(SHIPPED)
    assert model.arch["level_channels"] == LOCK_REGIONS      # the shipped latent carries them
    P, H, C = model.context, model.hop, model.arch["latent"] + LOCK_REGIONS
    g = torch.Generator().manual_seed(2)
    ca, cb = torch.randn(1, C, P + H, generator=g), torch.randn(1, C, P + H, generator=g)
    ctx, noise = torch.full((1, 80, P), -0.3), torch.randn(1, 80, H, generator=g)
    R = region_levels(80, LOCK_REGIONS)
    level = lambda v: torch.einsum("nm,bmt->bnt", R, v)[:, ::20]             # noqa: E731  one row per group
    mean = lambda c: level(model.denoiser.mean(c)[..., P:])                 # noqa: E731
    carried = lambda c: c[:, -LOCK_REGIONS:, P:]                            # noqa: E731
    with torch.no_grad():
        for conds, weights in (([ca], [1.0]), ([ca, cb], [0.6, 0.2])):
            mu = sum(w / sum(weights) * mean(c) for c, w in zip(conds, weights))
            lat = sum(w / sum(weights) * carried(c) for c, w in zip(conds, weights))
            for share in (1.0, 0.5):
                y = model.decode_chunk(conds, weights, ctx, noise, 4, 1.0, 2.0, lock=1.0, lock_latent=share)
                assert torch.allclose(level(y), share * lat + (1 - share) * mu, atol=1e-4)
            assert (lat - mu).abs().max() > 1e-2          # the two targets differ
    tiny = LatentFTModel(dict(TINY, mean_hidden=8))      # a mean path, no level channels
    c = torch.zeros(1, TINY["latent"], TINY["context"] + TINY["hop"])
    with pytest.raises(ValueError, match="level channels"):
        tiny.decode_chunk([c], [1.0], torch.zeros(1, 80, TINY["context"]), torch.zeros(1, 80, TINY["hop"]),
                          2, lock=1.0, lock_latent=0.5)


def test_level_channels_append_each_regions_level_and_widened_weights_keep_the_decoder():
    import importlib
    import sys

    from rtengine.nn.latentft import region_levels

    sys.path.insert(0, str(ROOT / "tools"))
    trainer = importlib.import_module("train_latentft")
    widen_inputs = trainer.widen_inputs
    torch.manual_seed(0)
    old = LatentFTModel(dict(TINY, mean_hidden=8)).eval()
    torch.nn.init.normal_(old.denoiser.mean.net[-1].weight)
    new = LatentFTModel(dict(TINY, mean_hidden=8, level_channels=4)).eval()
    new.load_state_dict(widen_inputs(old.state_dict(), new.state_dict()))
    x = torch.randn(2, 80, 30)
    with torch.no_grad():
        za, zb = old.encode(x), new.encode(x)
        C = TINY["latent"]
        assert zb.shape == (2, C + 4, 30) and torch.equal(zb[:, :C], za)
        levels = torch.einsum("nm,bmt->bnt", region_levels(80, 4), x)[:, ::20]     # one row per region
        assert torch.allclose(zb[:, C:], levels, atol=1e-5)
        P, H = TINY["context"], TINY["hop"]
        ctx, noise = torch.randn(2, 80, P), torch.randn(2, 80, H)
        ya = old.decode_chunk([za[..., :P + H]], [1.0], ctx, noise, 3, 1.0, 1.0, 1.0)
        yb = new.decode_chunk([zb[..., :P + H]], [1.0], ctx, noise, 3, 1.0, 1.0, 1.0)
        assert torch.allclose(ya, yb, atol=1e-6)     # the new inputs start with zero weights
    # the trainer's EMA copy leaves the (unsaved) level rows to the model
    ema = trainer.Trainable(dict(TINY, level_channels=4), 2, 0.999).ema_model()
    assert ema.encode(x).shape == (2, TINY["latent"] + 4, 30)


def test_encoder_skip_starts_as_a_no_op_and_adds_a_per_frame_linear_path():
    torch.manual_seed(0)
    plain = LatentFTModel(dict(TINY))
    skipped = LatentFTModel(dict(TINY, enc_skip=True))
    missing, unexpected = skipped.load_state_dict(plain.state_dict(), strict=False)
    assert not unexpected and missing == ["encoder.skip.weight"]
    x = torch.randn(2, 80, 12)
    with torch.no_grad():
        assert torch.equal(skipped.encode(x), plain.encode(x))
        torch.nn.init.normal_(skipped.encoder.skip.weight)
        W = skipped.encoder.skip.weight[..., 0]                     # (latent, n_mels)
        want = plain.encode(x) + torch.einsum("lm,bmt->blt", W, x)
        assert torch.allclose(skipped.encode(x), want, atol=1e-5)
        # still frame by frame: changing one frame changes only its latent
        y = x.clone()
        y[..., 5] += 1.0
        diff = (skipped.encode(y) - skipped.encode(x)).abs().sum(dim=(0, 1))
        assert diff[5] > 0 and torch.count_nonzero(diff) == 1


def test_sigma_schedule_and_heun_recovers_a_point():
    t = edm.sigma_steps(8)
    assert abs(float(t[0]) - 80.0) < 1e-9 and abs(float(t[7]) - 0.002) < 1e-12 and float(t[8]) == 0
    assert torch.all(torch.diff(t) < 0)
    y0 = torch.linspace(-1, 1, 10).view(1, 1, 10)
    out = edm.heun_sample(lambda x, s: (x - y0) / s, torch.randn(1, 1, 10), 6)   # ideal denoiser
    np.testing.assert_allclose(out.numpy(), y0.numpy(), atol=1e-6)


def test_sampler_deterministic_for_a_seed(tiny_weights):
    from rtengine.nn.latentft import load_model

    m = load_model(tiny_weights)
    mel = (np.random.default_rng(0).standard_normal((80, 40)) - 4).astype(np.float32)
    mask = torch.ones(1, 65)
    a = stream_generate(m, [(mel, mask, 1.0)], 40, steps=3, scale=2.0, seed=5)
    b = stream_generate(m, [(mel, mask, 1.0)], 40, steps=3, scale=2.0, seed=5)
    c = stream_generate(m, [(mel, mask, 1.0)], 40, steps=3, scale=2.0, seed=6)
    assert torch.equal(a, b)
    assert float((a - c).abs().max()) > 1e-3


def test_offline_operator_masks_the_whole_stream_at_once(tiny_weights):
    """An all-pass mask: the offline and live operators give the same latent;
    a low band: the offline one is the whole stream masked at once, the live
    one differs (its window is one-sided); the resampled mask keeps the band."""
    from rtengine.nn.latentft import band_mask, chunk_conditions, load_model, resample_mask

    m = load_model(tiny_weights)
    mel = (np.random.default_rng(1).standard_normal((80, 40)) - 4).astype(np.float32)
    n_chunks = 6
    ones = torch.ones(1, m.window + 1)
    live = torch.cat(chunk_conditions(m, mel, ones, n_chunks), dim=-1)
    off = torch.cat(chunk_conditions(m, mel, ones, n_chunks, "offline"), dim=-1)
    assert float((live - off).abs().max()) < 1e-5
    low = torch.from_numpy(band_mask(2, [0], 2 * m.window))[None]
    live = torch.stack(chunk_conditions(m, mel, low, n_chunks))
    off = torch.stack(chunk_conditions(m, mel, low, n_chunks, "offline"))
    assert float((live - off).abs().max()) > 1e-3
    for n_bands, band in ((2, 0), (8, 3)):          # a band moves by at most one coarse bin
        coarse = torch.from_numpy(band_mask(n_bands, [band], 1024))
        fine = resample_mask(coarse, 4096)
        assert int((fine != torch.from_numpy(band_mask(n_bands, [band], 4096))).sum()) <= 8
        assert fine.sum() > 0
    with pytest.raises(ValueError, match="operator"):
        stream_generate(m, [(mel, ones, 1.0)], 40, steps=2, operator="two-sided")


def test_clip_operator_masks_the_clips_own_latent_as_the_paper_and_silence_by_the_dc_gain(tiny_weights):
    from rtengine.nn.latentft import band_mask, chunk_conditions, load_model, resample_mask

    m = load_model(tiny_weights)
    W, H, D, P = m.window, m.hop, m.lookahead, m.context
    T, n_chunks = 40, 8                      # the stream: 40 clip frames, then silence
    mel = (np.random.default_rng(3).standard_normal((80, T)) - 4).astype(np.float32)
    y = torch.from_numpy(scale_mel(mel).astype(np.float32))[None]
    with torch.no_grad():
        z = torch.cat([m.encode(y[..., j:j + H]) for j in range(0, T, H)], dim=-1)[..., :T]
        sil = m.silence_latent()
    for keep_dc, mask in ((True, band_mask(2, [0], 2 * W)), (False, band_mask(4, [2], 2 * W))):
        mask = torch.from_numpy(mask)[None]
        conds = chunk_conditions(m, mel, mask, n_chunks, "clip")
        # stream frame t sits at position t - ((j+1)H - D - H - P) of chunk j
        got = torch.cat([c[..., P:] for c in conds], dim=-1)[0]            # frames -D .. n_chunks*H - D
        want = apply_latent_mask(z, resample_mask(mask, 128), 128)[0]      # the clip alone, zero-padded
        np.testing.assert_allclose(got[:, D:D + T].numpy(), want.numpy(), atol=1e-5)
        outside = got[:, :D] if D else got[:, T + D:]
        np.testing.assert_allclose(outside.numpy(), (sil if keep_dc else 0 * sil)[:, None].expand_as(outside).numpy(),
                                   atol=1e-6)
    # the clip operator is not the stream masked at once (the silence before it does not leak in)
    low = torch.from_numpy(band_mask(2, [0], 2 * W))[None]
    clip = torch.cat(chunk_conditions(m, mel, low, n_chunks, "clip"), dim=-1)
    off = torch.cat(chunk_conditions(m, mel, low, n_chunks, "offline"), dim=-1)
    assert float((clip - off).abs().max()) > 1e-3


def test_guidance_and_blend_combine_derivatives():
    # a fake denoiser: D(x; σ, c) = c (the condition itself)
    x = torch.zeros(1, 2, 3)
    ca, cb, null = torch.ones(1, 2, 3), 3 * torch.ones(1, 2, 3), torch.zeros(1, 2, 3)
    den = lambda xb, sb, cb_: cb_  # noqa: E731
    sigma = 2.0
    d = edm.combined_derivative(den, x, sigma, [ca, cb], [0.25, 0.75], 2.0, null)
    da, db, dn = (x - ca) / sigma, (x - cb) / sigma, (x - null) / sigma
    np.testing.assert_allclose(d.numpy(), (2.0 * (0.25 * da + 0.75 * db) - 1.0 * dn).numpy())
    d1 = edm.combined_derivative(den, x, sigma, [ca], [1.0], 1.0, null)
    np.testing.assert_allclose(d1.numpy(), da.numpy())


# -- the shipped model -----------------------------------------------------------
@pytest.mark.skipif(not SHIPPED.exists(), reason="models/latentft-22k not trained")
def test_live_ring_reserves_the_decoders_chunk_burst_unless_latency_is_given():
    import rtengine.stages.latentft  # noqa: F401  (registers the stage)
    from rtengine.control.patch import build_engine, load_patch
    from rtengine.engine.live import LivePlayer

    eng = build_engine(load_patch(ROOT / "patches" / "latent-eq.yaml"))
    assert eng.burst_ms == 0.0                      # measured when prepared
    player = LivePlayer(eng, block_size=256, status=False)
    hop, sr = eng.cfg.hop, eng.cfg.sample_rate
    lft = next(s for s in eng.chain if s.type_name == "latentft")
    assert eng.prepared and lft.burst_ms > 1.0 and eng.burst_ms == lft.burst_ms
    plain = max(4 * hop, 3 * 256)
    assert player.target >= plain + lft.burst_ms * sr / 1000.0
    assert player.target < plain + lft.burst_ms * sr / 1000.0 + hop
    # an explicit --latency is taken as given
    assert LivePlayer(eng, block_size=256, latency_ms=50, status=False).target == 5 * hop


@pytest.mark.skipif(not SHIPPED.exists(), reason="models/latentft-22k not trained")
def test_chunk_joins_are_continuous():
    from rtengine.dsp.mel import log_mel
    from rtengine.io import read_audio
    from rtengine.nn.latentft import load_model

    m = load_model(SHIPPED)
    x = read_audio(ROOT / "patches" / "audio" / "latentft-band.wav", 22050)[:22050 * 3]
    mel = log_mel(x, get_config("22k"))
    T = mel.shape[1]
    y = stream_generate(m, [(mel, torch.ones(1, m.window + 1), 1.0)], T, steps=6)[0].numpy()
    jump = np.abs(np.diff(y, axis=1)).mean(axis=0)        # jump[i]: frame i -> i+1
    # chunk j covers output frames [jH - D, (j+1)H - D): joins after frames jH - D - 1
    joins = np.zeros(T - 1, bool)
    for j in range(1, T // m.hop + 2):
        i = j * m.hop - m.lookahead - 1
        if 0 <= i < T - 1:
            joins[i] = True
    assert joins.sum() >= 4
    assert jump[joins].max() <= jump[~joins].max()
    assert jump[joins].mean() <= 2.0 * jump[~joins].mean()


@pytest.mark.skipif(not SHIPPED.exists(), reason="models/latentft-22k not trained")
def test_stage_renders_in_patch(tmp_path):
    import yaml

    import rtengine.stages.latentft  # noqa: F401  (registers the stage)
    from rtengine.control.patch import build_engine, load_patch
    from rtengine.engine.render import render

    data = yaml.safe_load((ROOT / "patches" / "latent-eq.yaml").read_text())
    data["source"]["path"] = str(ROOT / "patches" / "audio" / "latentft-band.wav")
    data["automation"] = [{"t": 0.5, "param": "latentft.gain[7]", "value": 0.0},
                          {"t": 1.0, "param": "latentft.variation", "value": 1.0}]
    data["stages"][1]["params"]["steps"] = 3
    p = tmp_path / "p.yaml"
    p.write_text(yaml.safe_dump(data))
    eng = build_engine(load_patch(p))
    assert abs(eng.latency_ms - 1000 * (32 + 32) / (22050 / 256) - 0) < 200
    y = render(eng, 22050 * 2, block_size=300)
    assert np.isfinite(y).all() and np.abs(y).max() <= 1.0
    assert np.abs(y[22050:]).max() > 1e-3      # sound after the latency
    p_gain, idx = eng.param("latentft.gain[3]")
    assert p_gain.size == 8 and idx == 3


@pytest.mark.skipif(not SHIPPED.exists(), reason="models/latentft-22k not trained")
def test_blend_patch_loads_and_touchosc_has_a_fader_per_band():
    import rtengine.stages.latentft  # noqa: F401
    from rtengine.control.patch import build_engine, load_patch
    from rtengine.control.touchosc import layout_xml

    eng = build_engine(load_patch(ROOT / "patches" / "latent-blend.yaml"))
    xml = layout_xml(eng)
    for b in range(8):
        assert f"/rtengine/latentft/gain/{b}/norm" in xml
        assert f"/rtengine/latentft/gain_b/{b}/norm" in xml


# -- tools/eval_latentft.py ------------------------------------------------------
def _eval_tool():
    import importlib
    import sys

    sys.path.insert(0, str(ROOT / "tools"))
    return importlib.import_module("eval_latentft")


def test_spectrogram_baseline_keeps_the_mel_with_every_band_and_removes_its_pattern_with_none():
    ev = _eval_tool()
    rng = np.random.default_rng(0)
    mel = np.log(rng.uniform(1e-3, 1.0, (80, 100)))
    both = ev.spectrogram_baseline(mel, lambda n: np.stack([band_mask(2, [0, 1], n), band_mask(2, [1], n)]))
    np.testing.assert_allclose(both[0], np.maximum(mel, LOG_MEL_MIN), atol=1e-4)
    # without the band holding DC each mel bin loses its mean over time
    fast = scale_mel(both[1])
    assert np.abs(fast.mean(axis=1)).max() < 0.05 < np.abs(scale_mel(mel).mean(axis=1)).max()


def test_live_spectrogram_baseline_is_the_one_sided_operator_on_the_mel_aligned_with_the_input():
    ev = _eval_tool()
    rng = np.random.default_rng(1)
    mel = np.log(rng.uniform(1e-3, 1.0, (80, 150)))
    W, D, H = 128, 16, 24
    masks = torch.from_numpy(np.stack([band_mask(2, [0, 1], 2 * W), band_mask(4, [2], 2 * W)]))
    live = ev.spectrogram_baseline_live(mel, masks, D, H, W)
    assert live.shape == (2, 80, 150)
    # every band kept: the mel itself, frame for frame (no delay left)
    np.testing.assert_allclose(live[0], np.maximum(mel, LOG_MEL_MIN), atol=1e-4)
    # one band: the operator the stage runs on its latent, here on the scaled mel
    y = torch.from_numpy(scale_mel(mel).astype(np.float32))
    pad = torch.full((80,), float(scale_mel(LOG_MEL_MIN)))
    ref = one_sided_operator(torch.cat([y, pad[:, None].expand(-1, D + H)], 1), masks[1], D, H, pad, W)
    np.testing.assert_allclose(scale_mel(live[1]), np.maximum(ref[:, D:D + 150].numpy(), float(scale_mel(LOG_MEL_MIN))),
                               atol=1e-4)
    # and it is not the offline, two-sided mask
    off = ev.spectrogram_baseline(mel, lambda n: band_mask(4, [2], n)[None])[0]
    assert np.abs(off - live[1]).mean() > 0.05


def test_inside_a_stream_the_live_operator_follows_the_clips_band_closer_than_from_silence():
    """--embed: the clip between other music, so the one-sided window holds
    music, not the silence→music step, and the look-ahead is not silence."""
    ev = _eval_tool()
    rng = np.random.default_rng(2)
    W, D, H = 128, 16, 24
    # a level random walk plus a beat, as log-mels, in three clips
    clips = [np.log(np.exp(np.cumsum(rng.normal(0, 0.05, (1, 150)), axis=1))
                    * (1.2 + np.sin(2 * np.pi * np.arange(150) / 12)) * rng.uniform(0.05, 1, (80, 1)))
             for _ in range(3)]
    stream, start = ev.embed(clips[1], clips[0], clips[2])
    assert stream.shape == (80, 450) and start == 150
    np.testing.assert_array_equal(stream[:, start:start + 150], clips[1])
    mask = torch.from_numpy(band_mask(4, [1], 2 * W))[None]
    truth = ev.spectrogram_baseline(stream, lambda n: band_mask(4, [1], n)[None])[0, :, start:start + 150]
    inside = ev.spectrogram_baseline_live(stream, mask, D, H, W)[0, :, start:start + 150]
    alone = ev.spectrogram_baseline_live(clips[1], mask, D, H, W)[0]
    err = lambda m: np.abs(m - truth).mean()          # noqa: E731
    assert err(inside) < 0.5 * err(alone)


def test_eval_vocoder_choice_pghi_or_the_pg_network():
    ev = _eval_tool()
    cfg = get_config("22k")
    t = np.arange(cfg.sample_rate) / cfg.sample_rate
    from rtengine.dsp.mel import log_mel

    mel = log_mel((0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32), cfg)
    outs = {name: ev.make_vocoder(name, cfg)(mel, 20000) for name in ("pghi", "pgvoc-22k")}
    for y in outs.values():
        assert y.shape == (20000,) and np.isfinite(y).all() and np.sqrt(np.mean(y ** 2)) > 0.05
    assert np.abs(outs["pghi"] - outs["pgvoc-22k"]).max() > 1e-3
    with pytest.raises(SystemExit, match="no PG vocoder"):
        ev.make_vocoder("no-such-vocoder", cfg)


# -- tools/train_latentft.py -----------------------------------------------------
def _tiny_phrases(tmp_path, n_train=3, seconds=2.0):
    """A manifest of short amplitude-modulated chords (train and val clips)."""
    import json

    import soundfile as sf

    sr = get_config("22k").sample_rate
    t = np.arange(int(seconds * sr)) / sr
    rows = []
    for i in range(n_train + 1):
        split = "train" if i < n_train else "val"
        x = sum(np.sin(2 * np.pi * f * (1 + 0.25 * i) * t) for f in (220, 277, 330))
        x = 0.2 * x * (0.6 + 0.4 * np.sin(2 * np.pi * (1 + i) * t))
        path = f"audio/{split}/c{i}.wav"
        (tmp_path / path).parent.mkdir(parents=True, exist_ok=True)
        sf.write(tmp_path / path, x.astype(np.float32), sr)
        rows.append({"id": f"c{i}", "path": path, "split": split, "sample_rate": sr})
    (tmp_path / "manifest.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return tmp_path / "manifest.jsonl"


def test_level_readout_term_trains_a_linear_level_direction_in_the_latent():
    import sys

    sys.path.insert(0, str(ROOT / "tools"))
    from train_latentft import Trainable

    torch.manual_seed(0)
    arch = dict(TINY, enc_skip=True)
    streams = torch.randn(2, 80, 64 + 3 * 8) * 0.3
    losses = {}
    for w in (0.0, 4.0):
        torch.manual_seed(1)
        m = Trainable(arch, windows=4, ema=0.999, w_level=w).eval()
        torch.manual_seed(2)
        losses[w] = m(streams)
    assert losses[4.0] > losses[0.0]          # same model, batch and noise: the read-out adds its error
    losses[4.0].backward()
    assert m.level_probe.weight.grad.abs().sum() > 0
    assert m.net.encoder.skip.weight.grad.abs().sum() > 0
    assert abs(float(m.level_w.sum()) - 1.0) < 1e-6 and float(m.level_w.min()) > 0


def test_train_latentft_runs_validates_and_exports(tmp_path):
    import json
    import subprocess
    import sys

    from rtengine.nn.latentft import load_model

    manifest = _tiny_phrases(tmp_path)
    out = tmp_path / "export"
    r = subprocess.run([sys.executable, str(ROOT / "tools" / "train_latentft.py"), "--data", str(manifest),
                        "--run-dir", str(tmp_path / "run"), "--out", str(out), "--steps", "6",
                        "--val-every", "3", "--warmup", "2", "--batch-size", "2",
                        "--arch", json.dumps(dict(TINY, enc_skip=True)), "--w-level", "4", "--no-progress"],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "done: 6 steps" in r.stdout
    m = load_model(out / "weights.pt")
    assert m.arch["enc_skip"] and float(m.encoder.skip.weight.detach().abs().sum()) > 0   # trained from zero
    vals = [json.loads(l) for l in (tmp_path / "run" / "log.jsonl").read_text().splitlines() if '"val"' in l]
    assert len(vals) >= 2 and all(np.isfinite(v["val"]["val_loss"]) for v in vals)
