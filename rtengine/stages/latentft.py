"""LatentFT stage: log-mel → latent EQ (band gains over the latent spectrum) →
streaming diffusion decoder → log-mel.

Per chunk of ``H`` frames (the model's ``hop``):

1. the ``H`` new mel frames are encoded frame by frame and pushed into a ring
   buffer of the last ``W = 512`` latent frames (filled with the latent of
   silence at start);
2. the window is masked in the latent-frequency domain (eq. 3, zero-padded to
   2W) with the band gains read at that frame, and the masked latent of
   frames ``[W-D-H-P, W-D)`` is kept (look-ahead ``D``, context ``P``);
3. the decoder samples ``H`` mel frames (EDM Heun, ``steps``), conditioned on
   that latent and on the previous chunk's output (so chunks join), with
   classifier-free guidance, a second source's blend or an isolation
   self-blend combined through the denoiser derivatives;
4. the frames are emitted one per tick during the next chunk.

Latency: ``D + H`` frames (input frame ``f`` comes out at ``f + D + H``).
A band-gain change reaches the output at the next chunk boundary: at most
``H`` frames plus the gain's smoothing time (see :func:`bench_latentft`).
Output depends only on frame counts, never on how frames are grouped into
blocks; noise is seeded per chunk from the stage seed and the variation count.

OSC (``/rtengine/latentft/...``): ``gain/<band>`` (8, 0..2), ``bands`` (2/4/8),
``guidance``, ``steps``, ``weight_a``, ``weight_b``, ``gain_b/<band>``,
``isolate``, ``variation`` (a rising edge past 0.5 draws new noise),
``lock`` (how far each frame's level follows the decoder's mean estimate).
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from ..control.params import Param
from ..errors import UserError
from .base import MEL, Stage, register_stage

DEFAULT_MODEL = "latentft-22k"


def find_model(name_or_path: str) -> Path:
    """``weights.pt`` of a model: a folder, a file, or a name under ``models/``."""
    p = Path(name_or_path)
    cands = [p, p / "weights.pt"]
    repo = Path(__file__).resolve().parents[2]
    cands += [repo / "models" / name_or_path / "weights.pt",
              Path(__file__).resolve().parents[1] / "models" / name_or_path / "weights.pt"]
    for c in cands:
        if c.is_file():
            return c
    raise UserError(f"latentft: cannot find model {name_or_path!r} (looked for weights.pt in "
                    f"{name_or_path} and models/{name_or_path}); train one with "
                    f"tools/train_latentft.py")


def inference_settings(weights: Path, arch: dict) -> dict:
    """The settings a model was evaluated with, from its card's ``inference``
    section, with the engine's defaults where it says nothing: ``steps``
    (8), ``sigma_min`` (0.002, the paper's), ``lock`` (``level_lock``, 0)
    and ``lock_latent`` (0; always 0 for a latent without the lock's level
    channels, which has no level to read)."""
    from ..neural_vocoder import inference_defaults
    from ..nn.latentft import LOCK_REGIONS

    card = inference_defaults(weights.parent)
    carries = int(arch.get("level_channels", 0)) == LOCK_REGIONS
    return {"steps": int(card.get("steps", 8)), "sigma_min": float(card.get("sigma_min", 0.002)),
            "lock": float(card.get("level_lock", 0.0)),
            "lock_latent": float(card.get("lock_latent", 0.0)) if carries else 0.0,
            "carries_levels": carries}


def _band_count(v: float) -> int:
    return 2 if v < 3 else (4 if v < 6 else 8)


@register_stage("latentft")
class LatentFTStage(Stage):
    """In: log-mel ``(n_mels, k)``; out: log-mel ``(n_mels, k)``, ``D + H``
    frames late. See the module docstring."""

    input_type = MEL
    output_type = MEL
    options_schema = {
        "model": ((str,), "model name under models/ or a folder (default latentft-22k)"),
        "blend_source": ((str,), "second source for blending: an audio file (looped)"),
        "threads": ((int,), "torch threads for the decoder (default 1)"),
        "sigma_min": ((int, float), "last noise level of the sampler (default: the model card's "
                                    "inference.sigma_min, else 0.002, the paper's)"),
    }
    n_gain = 8

    def __init__(self, name, cfg, options=None, seed=0):
        super().__init__(name, cfg, options, seed)
        self.model_name = str(self.options.get("model", DEFAULT_MODEL))
        # the model's geometry is needed for the latency before prepare, and
        # its card's inference section gives the defaults it was evaluated with
        self._weights = find_model(self.model_name)
        import torch
        arch = torch.load(self._weights, map_location="cpu", weights_only=True)["arch"]
        card = inference_settings(self._weights, arch)
        g = dict(lo=0.0, hi=2.0, default=1.0, smoothing=0.05, size=self.n_gain)
        self.add_param(Param("gain", **g, description="latent band gains of the source "
                                                      "(0 remove, 1 keep, >1 boost), low to high"))
        self.add_param(Param("bands", 2.0, 8.0, 8.0, smoothing=0.0,
                             description="band count: 2, 4 or 8 (gain[0..n-1] are used)"))
        self.add_param(Param("guidance", 0.0, 4.0, 1.0, smoothing=0.05,
                             description="classifier-free guidance scale s (1 = none)"))
        self.add_param(Param("steps", 1.0, 16.0, float(card["steps"]), smoothing=0.0,
                             description="Heun steps per chunk (default: the model card's)"))
        self.add_param(Param("weight_a", 0.0, 1.0, 1.0, smoothing=0.05,
                             description="blend weight of the main source"))
        self.add_param(Param("weight_b", 0.0, 1.0, 0.0, smoothing=0.05,
                             description="blend weight of the blend source"))
        self.add_param(Param("gain_b", **dict(g, default=1.0),
                             description="latent band gains of the blend source"))
        self.add_param(Param("isolate", 0.0, 1.0, 0.0, smoothing=0.0,
                             description="> 0.5: isolate the selected bands (self-blend)"))
        self.add_param(Param("variation", 0.0, 1.0, 0.0, smoothing=0.0,
                             description="trigger: a rise past 0.5 draws new noise"))
        self.blend_path = self.options.get("blend_source")
        self.model = None
        self.add_param(Param("lock", 0.0, 1.0, card["lock"], smoothing=0.05,
                             description="how far each frame's level follows the decoder's mean "
                                         "estimate (1: the bands' level contour exactly; 0: the "
                                         "diffusion's own; default: the model card's)"))
        # the lock can read its level from the latent only if it carries one per group
        self._level_channels = card["carries_levels"]
        self.add_param(Param("lock_latent", 0.0, 1.0, card["lock_latent"], smoothing=0.05,
                             description="share of the lock's level read from the latent's level "
                                         "channels, filtered by the bands exactly, instead of the mean "
                                         "estimate (models with level channels; default: the card's)"))
        self.sigma_min = float(self.options.get("sigma_min", card["sigma_min"]))
        if not 0 < self.sigma_min < 80:
            raise UserError(f"latentft: sigma_min must be in (0, 80), got {self.sigma_min:g}")
        self.H, self.D, self.P, self.W = arch["hop"], arch["lookahead"], arch["context"], arch["window"]
        self.latency_samples = (self.D + self.H) * cfg.hop
        if cfg.n_mels != arch["n_mels"]:
            raise UserError(f"latentft: model {self.model_name} has {arch['n_mels']} mels, "
                            f"the patch's config {cfg.describe()}")

    @staticmethod
    def _resolve(path: str) -> Path:
        """A path as given (absolute or from the working folder), else relative
        to the shipped ``patches/`` folder (the patch loader resolves only the
        source's path)."""
        p = Path(path)
        if p.exists() or p.is_absolute():
            return p
        alt = Path(__file__).resolve().parents[2] / "patches" / p
        return alt if alt.exists() else p

    # -- lifecycle -------------------------------------------------------------
    def prepare(self, max_frames: int) -> None:
        super().prepare(max_frames)
        import torch

        from ..nn.latentft import load_model

        torch.set_num_threads(int(self.options.get("threads", 1)))
        self.model = load_model(self._weights)
        with torch.no_grad():
            self._silence_z = self.model.silence_latent().numpy()
        self._blend_mel = None
        if self.blend_path:
            from ..dsp.mel import log_mel
            from ..io import read_audio
            x = read_audio(self._resolve(self.blend_path), self.cfg.sample_rate)
            self._blend_mel = log_mel(x, self.cfg)
        self.reset()
        # warm up: one chunk through every path (not kept); the second run,
        # warm, times the heaviest chunk (guided blend, 8 steps) for the live
        # ring's reserve: the whole chunk is decoded within one frame's call
        for _ in range(2):
            t0 = time.perf_counter()
            self._run_chunk(np.zeros(self.n_gain) + 1, 8, 2.0, 8, 1.0, 1.0, np.ones(self.n_gain), 0.0,
                            1.0, self.params["lock_latent"].get(), warm=True)
        self.burst_ms = 1000.0 * (time.perf_counter() - t0)
        self.reset()

    def reset(self) -> None:
        if self.model is None:
            return
        C = self.model.arch["latent"]
        n = self.cfg.n_mels
        from ..nn.latentft import LOG_MEL_MIN, scale_mel
        self._floor_scaled = float(scale_mel(LOG_MEL_MIN))
        self._ring_a = np.repeat(self._silence_z[:, None], self.W, 1).astype(np.float32) if C else None
        self._ring_b = None if self._ring_a is None else self._ring_a.copy()
        self._inbuf = np.zeros((n, self.H), np.float32)
        self._pos = 0
        self._out = np.full((n, self.H), np.log(self.cfg.log_floor), np.float32)
        self._context = np.full((n, self.P), self._floor_scaled, np.float32)
        self._chunk = 0
        self._variation = 0
        self._trig = False
        self._blend_pos = 0

    # -- the chunk ---------------------------------------------------------------
    def _encode(self, mel_log: np.ndarray) -> np.ndarray:
        import torch

        from ..nn.latentft import scale_mel
        with torch.no_grad():
            x = torch.from_numpy(scale_mel(mel_log).astype(np.float32))[None]
            return self.model.encode(x)[0].numpy()

    def _push(self, ring: np.ndarray, z: np.ndarray) -> None:
        h = z.shape[1]
        ring[:, :-h] = ring[:, h:]
        ring[:, -h:] = z

    def _masked(self, ring: np.ndarray, gains: np.ndarray, n_bands: int):
        import torch

        from ..nn.latentft import gains_to_mask, one_sided_chunk
        mask = torch.from_numpy(gains_to_mask(gains[:n_bands], n_bands, 2 * self.W))
        return one_sided_chunk(torch.from_numpy(ring)[None], mask, self.D, self.H, self.P)

    def _run_chunk(self, gains, n_bands, guidance, steps, wa, wb, gains_b, isolate, lock=0.0, lock_latent=0.0,
                   warm=False):
        import torch

        from ..nn.latentft import chunk_seed, unscale_mel
        if not warm:
            self._push(self._ring_a, self._encode(self._inbuf))
            if self._blend_mel is not None:
                T = self._blend_mel.shape[1]
                idx = (self._blend_pos + np.arange(self.H)) % T
                self._blend_pos = (self._blend_pos + self.H) % T
                self._push(self._ring_b, self._encode(self._blend_mel[:, idx]))
        conds, weights = [self._masked(self._ring_a, gains, n_bands)], [wa]
        if isolate > 0.5:  # A.8: self-blend of the full-spectrum and the band condition
            full = self._masked(self._ring_a, np.ones(self.n_gain), 8)
            conds, weights = [full, conds[0]], [0.1, 0.9]
        elif self._blend_mel is not None and wb > 0:
            conds.append(self._masked(self._ring_b, gains_b, n_bands))
            weights.append(wb)
            if wa <= 0:
                conds, weights = conds[1:], weights[1:]
        g = torch.Generator().manual_seed(chunk_seed(self.seed, self._variation, self._chunk))
        noise = torch.randn(1, self.cfg.n_mels, self.H, generator=g)
        ctx = torch.from_numpy(self._context)[None]
        y = self.model.decode_chunk(conds, weights, ctx, noise, int(steps), float(guidance),
                                    self.sigma_min, float(lock),
                                    lock_latent=float(lock_latent) if self._level_channels else 0.0)[0]
        y = y.clamp(-1.5, 1.2).numpy()
        if warm:
            return
        self._context = np.ascontiguousarray(y[:, -self.P:]) if self.P <= self.H else \
            np.concatenate([self._context[:, self.H:], y], axis=1)
        self._out = np.maximum(unscale_mel(y), np.log(self.cfg.log_floor)).astype(np.float32)
        self._chunk += 1

    # -- processing --------------------------------------------------------------
    def process(self, x, k: int):
        pr = self.params
        gain = pr["gain"].frames(k)
        gain_b = pr["gain_b"].frames(k)
        bands = pr["bands"].frames(k)[:, 0]
        guid = pr["guidance"].frames(k)[:, 0]
        steps = pr["steps"].frames(k)[:, 0]
        wa = pr["weight_a"].frames(k)[:, 0]
        wb = pr["weight_b"].frames(k)[:, 0]
        iso = pr["isolate"].frames(k)[:, 0]
        var = pr["variation"].frames(k)[:, 0]
        lock = pr["lock"].frames(k)[:, 0]
        lock_latent = pr["lock_latent"].frames(k)[:, 0]
        out = np.empty((self.cfg.n_mels, k), np.float32)
        x = np.asarray(x, np.float32)
        for i in range(k):
            if var[i] > 0.5 and not self._trig:
                self._variation += 1
            self._trig = var[i] > 0.5
            out[:, i] = self._out[:, self._pos]
            self._inbuf[:, self._pos] = x[:, i]
            self._pos += 1
            if self._pos == self.H:
                self._pos = 0
                self._last_gains = gain[i].copy()
                self._run_chunk(self._last_gains, _band_count(bands[i]), guid[i], round(steps[i]),
                                wa[i], wb[i], gain_b[i].copy(), iso[i], lock[i], lock_latent[i])
        return out

    def describe(self):
        return f"latentft ({self.model_name}, D={self.D}, H={self.H})"


# ---------------------------------------------------------------------------
def bench_latentft(model: str = DEFAULT_MODEL, steps: int | None = None, repeat: int = 5,
                   threads: int = 1) -> dict:
    """Decoder compute per chunk against the chunk's duration, and the time
    from a band-gain change to its effect at the stage output. ``steps``:
    Heun steps per chunk (default: the model card's, the shipped setting).

    Returns a dict: per mode (``plain`` s=1, ``guided`` s=2, ``blend`` two
    sources + null), the median chunk wall time (``ms``) and CPU time of this
    process (``cpu_ms``, what one free core takes when other processes share
    the machine), each with its ratio to the chunk duration (real time needs
    < 1; the target is ≤ 0.7); ``latency_ms`` (D+H);
    ``control_first_ms`` / ``control_full_ms`` (mean and max over the change's
    position in a chunk): from a band-gain change to the first changed output
    frame / to the first frame decoded with the gains fully ramped;
    ``control_audible_ms_max`` adds the vocoder's latency;
    ``control_bound_ms`` = H + smoothing + 1 frame + vocoder."""
    import torch

    from ..config import get_config
    torch.set_num_threads(threads)
    cfg = get_config("22k")
    st = LatentFTStage("latentft", cfg, {"model": model})
    st.prepare(64)
    steps = int(st.params["steps"].get()) if steps is None else steps     # the card's
    chunk_ms = 1000.0 * st.H / cfg.frame_rate
    res = {"model": model, "steps": steps, "threads": threads, "hop_frames": st.H,
           "lookahead_frames": st.D, "chunk_ms": chunk_ms,
           "latency_ms": 1000.0 * (st.D + st.H) / cfg.frame_rate}
    modes = {"plain": (1.0, False), "guided": (2.0, False), "blend": (2.0, True)}
    for name, (s, blend) in modes.items():
        if blend:
            st._blend_mel = np.full((cfg.n_mels, 64), -4.0, np.float32)
        times, cpu = [], []
        for _ in range(repeat):
            t, c = time.perf_counter(), time.process_time()
            st._run_chunk(np.ones(8), 8, s, steps, 1.0, 1.0 if blend else 0.0, np.ones(8), 0.0, 1.0,
                          st.params["lock_latent"].get())
            times.append(1000.0 * (time.perf_counter() - t))
            cpu.append(1000.0 * (time.process_time() - c))
        st._blend_mel = None
        ms, cms = float(np.median(times)), float(np.median(cpu))
        # wall time suffers from other processes on the machine; CPU time of this
        # (single-threaded) process is what one free core would take
        res[name] = {"ms": ms, "ratio": ms / chunk_ms, "cpu_ms": cms, "cpu_ratio": cms / chunk_ms}
    # control latency: render from the same state with and without a gain step
    # at every offset inside a chunk; the first output frame that differs is
    # the first effect, the first chunk whose gains reached the target the full
    # effect (the decoder's timing does not depend on steps: 2 here)
    n = 4 * st.H
    clip = Path(__file__).resolve().parents[2] / "patches" / "audio" / "latentft-band.wav"
    if clip.exists():
        from ..dsp.mel import log_mel
        from ..io import read_audio
        mel = log_mel(read_audio(clip, cfg.sample_rate), cfg)[:, :n]
    else:
        mel = (np.random.default_rng(0).standard_normal((cfg.n_mels, n)) - 4.0).astype(np.float32)
    st.params["steps"].set(2)

    def run(change_at):
        st.reset()
        st.params["gain"].set_all([1.0] * 8)
        for p in st.params.values():
            p.reset()
        o, full = [], None
        for i in range(n):
            if i == change_at:
                st.params["gain"].set_all([0.0] * 8)
            for p in st.params.values():
                p.begin_block()
            o.append(st.process(mel[:, i:i + 1], 1))
            if full is None and change_at is not None and i >= change_at and st._pos == 0 \
                    and np.all(st._last_gains == 0.0):
                full = i + 1        # this chunk's frames are emitted from the next tick
        return np.concatenate(o, axis=1), full

    ref, _ = run(None)
    first, full = [], []
    for off in range(0, st.H, 4):
        at = st.H + off
        out, f = run(at)
        d = np.abs(out - ref).max(axis=0) > 1e-6
        first.append(int(np.argmax(d)) - at if d.any() else n)
        full.append((f if f is not None else n) - at)
    from ..dsp.vocoder import PGHIVocoder
    voc_ms = 1000.0 * PGHIVocoder(cfg).latency_samples / cfg.sample_rate
    fr = 1000.0 / cfg.frame_rate
    res["gain_smoothing_ms"] = 1000.0 * st.params["gain"].smoothing
    res["vocoder_latency_ms"] = voc_ms
    res["control_first_ms"] = {"mean": fr * float(np.mean(first)), "max": fr * float(np.max(first))}
    res["control_full_ms"] = {"mean": fr * float(np.mean(full)), "max": fr * float(np.max(full))}
    res["control_audible_ms_max"] = fr * float(np.max(full)) + voc_ms
    res["control_bound_ms"] = fr * st.H + 1000.0 * st.params["gain"].smoothing + fr + voc_ms
    return res
