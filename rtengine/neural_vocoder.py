"""The streaming neural phase-gradient vocoder (PG paper, with the engine's integrator).

log-mel frames → :class:`~rtengine.nn.pgvoc.PGVocNet` (cached convolutions,
frame by frame) → log-magnitude and bin offsets (Δm, Δn) → ``(mag, omega, tau)``
(eq. 6, :func:`~rtengine.dsp.phase_gradient.offsets_to_gradients`) →
:class:`~rtengine.dsp.integrator.PhaseIntegrator` (``heap`` or ``lambda``) →
overlap-add inverse STFT.

:class:`NeuralPGVocoder` has the interface of
:class:`rtengine.dsp.vocoder.PGHIVocoder` (``process``, ``flush``, ``reset``,
``latency_frames``, ``latency_samples``, ``cfg``), so
:func:`rtengine.dsp.vocoder.run_offline` and the engine stream it the same
way. The output does not depend on how the frames are chunked.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from .config import AudioConfig, get_config
from .dsp.integrator import PhaseIntegrator
from .dsp.mel_sinusoids import StreamingFit, check_fit_bins, replace_low, sinusoid_offsets
from .dsp.ola import OverlapAdd, TorchOverlapAdd
from .dsp.phase_gradient import offsets_to_gradients
from .errors import UserError
from .nn.pgvoc import MAX_LOG_MAG, PGVocNet, load_weights

WEIGHTS = "weights.pt"


def inference_defaults(model_dir: str | Path | None) -> dict:
    """The ``inference:`` section of a model's ``card.yaml`` (e.g.
    ``integrator_lookahead: true`` for a model evaluated and shipped with one
    frame of integrator look-ahead); empty if there is none."""
    if model_dir is None or not (Path(model_dir) / "card.yaml").exists():
        return {}
    import yaml

    card = yaml.safe_load((Path(model_dir) / "card.yaml").read_text()) or {}
    return dict(card.get("inference") or {})


def load_pgvoc(model_dir: str | Path, device: str | torch.device = "cpu") -> tuple[PGVocNet, AudioConfig]:
    """The network in ``model_dir/weights.pt`` and its audio config."""
    path = Path(model_dir) / WEIGHTS
    if not path.exists():
        raise UserError(f"{path}: no such file (a PG vocoder model folder holds weights.pt and card.yaml)")
    net, audio = load_weights(path, map_location="cpu")
    return net.to(device), audio


class NeuralPGVocoder:
    """Log-mel frames ``(n_mels, k)`` in, audio ``(k*hop,)`` float32 out.

    Args:
        cfg: audio configuration of the incoming mel (must equal the model's).
        model_dir: folder with ``weights.pt`` (e.g. ``models/pgvoc-22k``).
        mode: integrator mode, ``"heap"`` (default) or ``"lambda"`` (PG paper §3.2).
        use_lambda: in heap mode, random phase on the bins λ classifies as noise.
        seed: seed of the integrator's random phases.
        device: where the network runs (``"cpu"``, ``"cuda"``, ``"auto"``).
        threads: ``torch.set_num_threads`` for live use (1 keeps one core).
        ola: ``"auto"`` (torch overlap-add on CUDA, numpy/numba on the CPU),
            ``"numpy"`` or ``"torch"``.
        net: an already loaded :class:`PGVocNet` instead of ``model_dir``.
        lookahead: one frame of integrator look-ahead (the next frame's bins
            join the heap); None: the model card's ``integrator_lookahead``
            (default false).
        sinusoid_fit: Δm of the bins below this bin from the sparse sinusoid
            fit of the mel (:mod:`rtengine.dsp.mel_sinusoids`) instead of the
            network, where a fitted partial reaches them; 0: the network's
            everywhere; None: the model card's ``sinusoid_fit_bins`` (default 0).
    """

    def __init__(self, cfg: AudioConfig | str, model_dir: str | Path | None = None, mode: str = "heap",
                 use_lambda: bool = False, seed: int = 0, device: str = "cpu",
                 threads: int | None = None, ola: str = "auto", net: PGVocNet | None = None,
                 lookahead: bool | None = None, sinusoid_fit: int | None = None):
        cfg = get_config(cfg)
        defaults = inference_defaults(model_dir)
        if lookahead is None:
            lookahead = bool(defaults.get("integrator_lookahead", False))
        if sinusoid_fit is None:
            sinusoid_fit = int(defaults.get("sinusoid_fit_bins", 0))
        self.sinusoid_fit = check_fit_bins(sinusoid_fit, cfg)
        if threads:
            torch.set_num_threads(int(threads))
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        self.device = torch.device(device)
        if net is None:
            if model_dir is None:
                raise UserError("NeuralPGVocoder needs model_dir (a folder with weights.pt) or net")
            net, audio = load_pgvoc(model_dir, self.device)
            cfg.check_same(audio, "the mel", f"model {model_dir}")
        self.cfg = cfg
        self.net = net.to(self.device).eval()
        self.net.set_streaming(True)
        self.integrator = PhaseIntegrator(cfg.n_fft, cfg.hop, mode=mode, lookahead=lookahead,
                                          use_lambda=use_lambda, seed=seed)
        if ola == "auto":
            ola = "torch" if self.device.type == "cuda" else "numpy"
        self.ola = TorchOverlapAdd(cfg, device=str(self.device)) if ola == "torch" else OverlapAdd(cfg)
        self.latency_frames = self.net.lookahead + self.integrator.latency_frames
        self.latency_samples = self.latency_frames * cfg.hop + self.ola.latency_samples
        self._emitted = 0
        # the network's outputs lag its input by its look-ahead; so does the fit
        self.fit = StreamingFit(cfg, self.sinusoid_fit, self.net.lookahead) if self.sinusoid_fit else None

    # ------------------------------------------------------------------ lifecycle
    def reset(self) -> None:
        self.net.reset_stream()
        self.integrator.reset()
        self.ola.reset()
        self._emitted = 0
        if self.fit is not None:
            self.fit.reset()

    @torch.inference_mode()
    def predict(self, log_mel: np.ndarray):
        """Stream frames through the network: ``(n_mels, k)`` → ``(log_mag, dm, dn)``,
        each ``(F, k)`` float64 numpy, delayed by the network's look-ahead."""
        x = torch.as_tensor(np.asarray(log_mel, dtype=np.float32), device=self.device)[None]
        lm, dm, dn = self.net.stream(x, self._prior([log_mel], log_mel.shape[1]))
        if self.fit is not None:
            self.fit.push(log_mel)
        return _numpy(lm[0]), self._fitted(_numpy(dm[0])), _numpy(dn[0])

    def _fitted(self, dm: np.ndarray) -> np.ndarray:
        """Streamed ``dm`` with its low bins from the sinusoid fit of the same frames."""
        return dm if self.fit is None else replace_low(dm, *self.fit.pop(dm.shape[1]))

    def _prior(self, log_mels: list[np.ndarray], t_max: int) -> torch.Tensor | None:
        """The network's Δm prior for each mel, zero-padded to ``t_max`` frames
        (zero is the standardised padding the offline forward uses):
        ``(B, F, t_max)`` float32, or None for a network without one."""
        if not self.net.uses_prior:
            return None
        out = np.zeros((len(log_mels), self.cfg.n_bins, t_max), dtype=np.float32)
        for i, m in enumerate(log_mels):
            out[i, :, :m.shape[1]] = self.net.prior(m, self.cfg)
        return torch.as_tensor(out, device=self.device)

    def process(self, log_mel: np.ndarray) -> np.ndarray:
        """log_mel ``(n_mels, k)`` → audio ``(k*hop,)`` float32, ``latency_samples`` late."""
        if log_mel.shape[1] == 0:
            return np.zeros(0, dtype=np.float32)
        return self.synthesize(*self.predict(log_mel))

    def synthesize(self, log_mag: np.ndarray, dm: np.ndarray, dn: np.ndarray) -> np.ndarray:
        """Network outputs ``(F, k)`` each, in stream order → audio ``(k*hop,)`` float32.
        The first ``lookahead`` frames after a reset are the network's view of
        the time before the start: they are synthesised as silence."""
        mag = np.exp(np.minimum(log_mag, MAX_LOG_MAG))               # clamped exp, as log_mag_to_mag
        silent = max(0, min(self.net.lookahead - self._emitted, mag.shape[1]))
        if silent:
            mag[:, :silent] = 0.0
            dm[:, :silent] = 0.0
            dn[:, :silent] = 0.0
        self._emitted += mag.shape[1]
        omega, tau = offsets_to_gradients(dm, dn, self.cfg)           # eq. 6
        m, phase = self.integrator.process(mag, omega, tau)
        return _audio(self.ola.process(m * np.exp(1j * phase)))

    @torch.inference_mode()
    def flush(self) -> np.ndarray:
        """Audio still held in the delay line: ``latency_samples`` samples."""
        parts = []
        if self.net.lookahead:
            lm, dm, dn = self.net.flush_stream()
            parts.append(self.synthesize(_numpy(lm[0]), self._fitted(_numpy(dm[0])), _numpy(dn[0])))
        parts.append(self._flush_phase_and_ola())
        return np.concatenate(parts)

    def _flush_phase_and_ola(self) -> np.ndarray:
        """The frame the integrator holds for look-ahead (if any), then the OLA tail."""
        parts = []
        if self.integrator.latency_frames:
            m, phase = self.integrator.flush()
            parts.append(_audio(self.ola.process(m * np.exp(1j * phase))))
        parts.append(_audio(self.ola.flush()))
        return np.concatenate(parts)

    # ------------------------------------------------------------------ offline / batched
    @torch.inference_mode()
    def predict_batch(self, log_mels: list[np.ndarray]) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        """Offline network outputs for several mels in one batched forward pass
        (the GPU path): each ``(n_mels, T_i)`` → ``(log_mag, dm, dn)`` ``(F, T_i)``.
        Equal to streaming each mel (the convolutions are causal, so padding
        shorter mels at the end does not change their frames). Resets the stream."""
        t_max = max(m.shape[1] for m in log_mels)
        # pad with the mean mel (zero once standardised, as the offline forward pads)
        pad = self.net.mel_mean.detach().cpu().numpy()[:, None]
        x = np.repeat(np.repeat(pad[None], len(log_mels), 0), t_max, 2).astype(np.float32)
        for i, m in enumerate(log_mels):
            x[i, :, :m.shape[1]] = m
        self.net.set_streaming(False)
        try:
            lm, dm, dn = self.net(torch.as_tensor(x, device=self.device), self._prior(log_mels, t_max))
        finally:
            self.net.set_streaming(True)
        out = []
        for i, m in enumerate(log_mels):
            d = _numpy(dm[i, :, :m.shape[1]])
            if self.sinusoid_fit:
                d = sinusoid_offsets(m, self.cfg, d, self.sinusoid_fit)
            out.append((_numpy(lm[i, :, :m.shape[1]]), d, _numpy(dn[i, :, :m.shape[1]])))
        return out

    def vocode_batch(self, log_mels: list[np.ndarray]) -> list[np.ndarray]:
        """Offline vocoding of several mels: one batched network pass, then the
        integrator and overlap-add per mel. Each ``(n_mels, T)`` → ``((T-1)*hop,)`` float32."""
        outs = []
        d = self.net.lookahead
        for (lm, dm, dn), mel in zip(self.predict_batch(log_mels), log_mels):
            self.reset()
            # the same frames a stream sees: ``d`` silent frames first
            pre = np.zeros((lm.shape[0], d))
            y = np.concatenate([self.synthesize(*(np.concatenate([pre, a], axis=1) for a in (lm, dm, dn))),
                                self._flush_phase_and_ola()])
            y = y[self.latency_samples:]
            outs.append(y[:(mel.shape[1] - 1) * self.cfg.hop])
        self.reset()
        return outs


def _numpy(t: torch.Tensor) -> np.ndarray:
    return t.detach().to("cpu", torch.float64).numpy()


def _audio(y) -> np.ndarray:
    if isinstance(y, torch.Tensor):
        y = y.detach().cpu().numpy()
    return np.asarray(y, dtype=np.float32)


def vocode_neural(log_mel: np.ndarray, cfg: AudioConfig, model_dir: str | Path, length: int | None = None,
                  **kwargs) -> np.ndarray:
    """Offline neural PG vocoding of a log-mel ``(n_mels, T)`` → audio float32."""
    from .dsp.vocoder import run_offline

    return run_offline(NeuralPGVocoder(cfg, model_dir, **kwargs), log_mel, length)


def eval_system(model_dir: str | Path, mode: str = "heap", use_lambda: bool = False,
                lookahead: bool | None = None, sinusoid_fit: int | None = None):
    """A system factory for ``tools/eval_vocoder.py``: ``make(cfg)`` loads the
    model once and returns ``fn(x, log_mel, cfg) -> audio``, offline vocoding
    through the streaming object (:func:`rtengine.dsp.vocoder.run_offline`)."""
    def make(cfg: AudioConfig):
        from .dsp.vocoder import run_offline

        voc = NeuralPGVocoder(cfg, model_dir, mode=mode, use_lambda=use_lambda, lookahead=lookahead,
                              sinusoid_fit=sinusoid_fit)

        def run(x, log_mel, cfg):
            voc.reset()
            return run_offline(voc, log_mel)
        return run
    return make


def measure_performance(model_dir: str | Path, cfg: AudioConfig | str = "22k", seconds: float = 10.0,
                        mode: str = "heap", threads: int | None = 1, repeat: int = 3,
                        lookahead: bool | None = None, sinusoid_fit: int | None = None) -> dict:
    """Speed of the vocoder on :func:`rtengine.signals.test_signal`.

    Returns the offline real-time factor (audio seconds per second, best of
    ``repeat``), the streaming cost of one frame per call (a 256-sample host
    block: median and 99th percentile µs, and the share of one core this takes
    in real time), the network's share of it (with the sinusoid fit), the
    fit's own share, and the algorithmic latency.
    """
    import time

    from .dsp.mel import log_mel
    from .dsp.vocoder import run_offline
    from .signals import test_signal

    cfg = get_config(cfg)
    x = test_signal(cfg.sample_rate, seconds)
    mel = log_mel(np.asarray(x, dtype=np.float64), cfg)
    voc = NeuralPGVocoder(cfg, model_dir, mode=mode, threads=threads, lookahead=lookahead,
                          sinusoid_fit=sinusoid_fit)
    run_offline(voc, mel[:, :20])                                       # warm-up (numba, torch)
    audio_s = (mel.shape[1] - 1) * cfg.hop / cfg.sample_rate
    best = float("inf")
    for _ in range(repeat):
        voc.reset()
        t = time.perf_counter()
        run_offline(voc, mel)
        best = min(best, time.perf_counter() - t)
    per_frame, net_only = [], []
    voc.reset()
    for j in range(mel.shape[1]):
        t = time.perf_counter()
        voc.process(mel[:, j:j + 1])
        per_frame.append(time.perf_counter() - t)
    voc.reset()
    for j in range(mel.shape[1]):
        t = time.perf_counter()
        voc.predict(mel[:, j:j + 1])
        net_only.append(time.perf_counter() - t)
    fit_only = [0.0]
    if voc.sinusoid_fit:
        fallback = np.zeros((cfg.n_bins, 1))
        fit_only = []
        for j in range(mel.shape[1]):
            t = time.perf_counter()
            sinusoid_offsets(mel[:, j:j + 1], cfg, fallback, voc.sinusoid_fit)
            fit_only.append(time.perf_counter() - t)
    hop_s = cfg.hop / cfg.sample_rate
    med = float(np.median(per_frame))
    return {"signal_seconds": round(audio_s, 2), "threads": threads, "mode": mode,
            "network_lookahead_frames": voc.net.lookahead,
            "integrator_lookahead_frames": voc.integrator.latency_frames,
            "offline_rtf": round(audio_s / best, 1),
            "stream_us_per_frame_median": round(med * 1e6, 1),
            "stream_us_per_frame_p99": round(float(np.percentile(per_frame, 99)) * 1e6, 1),
            "stream_net_us_per_frame_median": round(float(np.median(net_only)) * 1e6, 1),
            "sinusoid_fit_bins": voc.sinusoid_fit,
            "stream_fit_us_per_frame_median": round(float(np.median(fit_only)) * 1e6, 1),
            "stream_core_share_percent": round(100 * med / hop_s, 2),
            "latency_frames": voc.latency_frames, "latency_samples": voc.latency_samples,
            "latency_ms": round(1000 * voc.latency_samples / cfg.sample_rate, 2)}
