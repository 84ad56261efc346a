"""IFF-AR as a live stage: a causal frame-level generator, primed from a prompt.

``type: iffar`` in a patch. The stage is a generator: it ignores its audio
input (put any source before it; ``type: silence`` is registered here for
that) and emits, one hop per frame,

1. the prompt's frames (an audio file, a generated harmonic tone, or silence;
   resynthesised from their STFT, so the continuation joins without a seam),
2. then generated frames: the TCN encoder consumes the previous frame
   (per-layer caches, O(layers) per frame), MagHead predicts the log-magnitude,
   the flow samples the IF at the ``temperature``, the phase advances
   (``φ_t = φ_{t−1} + Δφ_t``, or the engine's heap integrator with
   ``omega = Δφ`` and PGHI's ``tau``: option ``phase: heap``), and the engine's
   overlap-add turns ``X = M e^{iφ}`` into audio.

Parameters (OSC ``/rtengine/<stage>/<param>``): ``note`` (MIDI; −1: none, the
model continues its context), ``family`` (index into
:data:`rtengine.nn.iffar.FAMILIES`; −1: none), ``temperature``, ``freeze``
(≥ 0.5: hold the last frame, its phase still advancing: a drone), ``prime``
(a rising edge through 0.5 restarts from the prompt; with ``prompt: note`` the
generated prompt is re-made at the current ``note``), ``legato`` (≥ 0.5: a new
``note`` glides: the last ``prompt_seconds`` of output, transposed by the
interval, become the prompt and generation goes on from them, without a new
attack; with any prompt, ``prompt_note`` being its pitch; frozen, the held
drone moves to the note), ``gain`` (dB).

The model keeps its prompt's pitch far better than it follows the ``note``
label, so a note change moves the pitch by re-priming: ``legato`` from the
sound itself, option ``retrigger`` from a new attack at the note.

The generated frames for a seed are those of :meth:`IFFAR.rollout` (tested);
the random latent of generated frame ``j`` is the ``j``-th draw of a generator
seeded with the stage's seed, so output does not depend on block sizes.
"""

from __future__ import annotations

import copy
import os
import time
from pathlib import Path

import numpy as np
import torch

from ..compute_threads import blas_threads, compute_threads
from ..control.params import Param
from ..dsp.ola import OverlapAdd
from ..dsp.phase_lock import lock_to_peaks
from ..dsp.stft import stft as np_stft
from ..errors import UserError
from ..nn.iffar_step import FrameStep
from .base import AUDIO, Stage, register_stage

PHASE_MODES = ("direct", "heap")
REPO = Path(__file__).resolve().parent.parent.parent
DEFAULT_WEIGHTS = "models/iffar-22k"
LN10_20 = np.log(10.0) / 20.0
GLIDE_HISTORY_S = 2.0       # output kept for a legato glide (a 1 s prompt up to +12 semitones)


def _resolve(path: str) -> Path:
    p = Path(path)
    if p.is_absolute() or p.exists():
        return p
    return REPO / p


def harmonic_tone(note: float, seconds: float, sr: int, harmonics: int = 12,
                  seed: int = 0) -> np.ndarray:
    """A generated prompt: harmonics ``1/h`` of MIDI ``note`` with a 10 ms
    attack and an exponential decay, random start phases, peak −6 dBFS."""
    f0 = 440.0 * 2 ** ((note - 69) / 12)
    t = np.arange(int(seconds * sr)) / sr
    rng = np.random.default_rng(seed)
    x = np.zeros_like(t)
    for h in range(1, harmonics + 1):
        if h * f0 < sr / 2 - 200:
            x += np.sin(2 * np.pi * h * f0 * t + rng.uniform(0, 2 * np.pi)) / h
    x *= np.minimum(1.0, t / 0.01) * np.exp(-t / 2.0)
    return (0.5 * x / max(np.abs(x).max(), 1e-9)).astype(np.float32)


class IFFARStream:
    """The streaming generator behind the stage: prompt → spectral frames.

    ``prime(audio)`` analyses a prompt; ``next_frame(...)`` returns one frame's
    ``(magnitude (F,), phase (F,))`` float64: the prompt's own frames first
    (when ``play_prompt``), then generated ones."""

    def __init__(self, model, seed: int = 0, phase: str = "direct", play_prompt: bool = True,
                 guard: bool = False):
        if phase not in PHASE_MODES:
            raise UserError(f"iffar: phase must be one of {', '.join(PHASE_MODES)}, got {phase!r}")
        self.model = model.eval()
        self.audio = model.audio
        self.seed = int(seed)
        self.phase_mode = phase
        self.play_prompt = play_prompt
        self.guard = guard
        self.dtype = next(model.parameters()).dtype
        f = self.audio.n_bins
        self.phase = np.zeros(f)
        self.integrator = None
        if phase == "heap":
            from ..dsp.integrator import PhaseIntegrator
            self.integrator = PhaseIntegrator(self.audio.n_fft, self.audio.hop, mode="heap",
                                              lookahead=False, use_lambda=False, seed=self.seed)
        self.prompt_feats = None
        # the last output frames' magnitude and phase, oldest first after
        # ``_recent_at``: what glide() transposes (two copies per frame; the
        # complex frames are made only when gliding)
        n_recent = int(np.ceil(GLIDE_HISTORY_S * self.audio.frame_rate))
        self._recent_mag, self._recent_phase = np.zeros((f, n_recent)), np.zeros((f, n_recent))
        self._recent_at = 0
        self.step = FrameStep(self.model)
        self._labels: dict = {}
        self.timing = None          # dict of per-part seconds when set to {} by the caller

    # -- prompt ------------------------------------------------------------------
    def prime(self, audio: np.ndarray | None) -> None:
        """Restart from a prompt (``(L,)`` audio; ``None`` or empty: silence)."""
        from ..nn.iffar_features import if_from_phase, log_magnitude

        cfg = self.audio
        if audio is None or len(audio) < cfg.hop:
            audio = np.zeros(cfg.hop, dtype=np.float32)
        X = np_stft(np.asarray(audio, dtype=np.float64), cfg)     # (F, P)
        X = X[:, :max(1, X.shape[1] - (cfg.n_fft // 2) // cfg.hop)]   # drop frames past the end
        # a tiny dither, as in training: digital silence has no defined phase
        rng = np.random.default_rng(self.seed)
        X = X + 1e-6 * np.sqrt(cfg.n_fft * 0.375) * (rng.standard_normal(X.shape)
                                                    + 1j * rng.standard_normal(X.shape))
        Xt = torch.as_tensor(X)[None]
        with torch.no_grad():
            feats = self.model.normalise(log_magnitude(Xt).to(self.dtype),
                                         if_from_phase(torch.angle(Xt), cfg,
                                                       self.model.cfg.if_mode).to(self.dtype))
        self.prompt_X = X
        self.prompt_feats = feats
        self.reset()

    def glide(self, semitones: float, seconds: float = 0.5) -> None:
        """Legato: move the sound by ``semitones`` without a new attack. The
        last ``seconds`` of output, resynthesised and transposed (a tape-speed
        change: :func:`~rtengine.dsp.resample.transpose`), become the prompt,
        and generation continues from it at once (it is not played). The
        model keeps its prompt's pitch, so the pitch moves with it.

        Glides with nothing generated in between (a held drone) all transpose
        the sound held before the first of them, by their summed interval: a
        glide up and back down then loses no band above Nyquist / ratio."""
        from ..dsp.resample import transpose
        from ..dsp.stft import istft

        cfg = self.audio
        if self._glide_base is None:
            frames = np.roll(self._recent_mag * np.exp(1j * self._recent_phase), -self._recent_at, axis=1)
            base = (istft(frames, cfg), 0.0)
        else:
            base = self._glide_base
        audio, shift = base[0], base[1] + semitones
        span = min(seconds * 2.0 ** (shift / 12.0), GLIDE_HISTORY_S)     # source seconds
        self.prime(transpose(audio[-int(span * cfg.sample_rate):], shift))
        self.pos = self.prompt_frames
        self._glide_base = (audio, shift)

    def reset(self) -> None:
        """Back to the start of the prompt (same seed, same output)."""
        if self.prompt_feats is None:
            self.prime(None)
            return
        self.gen = torch.Generator().manual_seed(self.seed)
        self.step.start(self.prompt_feats)
        self.pos = 0
        self.phase = np.angle(self.prompt_X[:, -1]).copy()
        self.mag = np.abs(self.prompt_X[:, -1]).copy()
        # the prompt's last phase advance: a frame frozen at once keeps moving
        self.omega = np.angle(self.prompt_X[:, -1] * np.conj(self.prompt_X[:, -2])) \
            if self.prompt_frames > 1 else np.zeros_like(self.mag)
        self._locked = False
        self._glide_base = None            # (audio held before the glides, their summed interval)
        keep = min(self.prompt_frames, self._recent_mag.shape[1])
        self._recent_mag[:] = 0.0
        self._recent_mag[:, -keep:] = np.abs(self.prompt_X[:, -keep:])
        self._recent_phase[:, -keep:] = np.angle(self.prompt_X[:, -keep:])
        self._recent_at = 0
        if self.integrator is not None:
            self.integrator.reset()
            _seed_integrator(self.integrator, self.mag, self.phase, self.omega)

    @property
    def prompt_frames(self) -> int:
        return self.prompt_X.shape[1]

    # -- one frame ---------------------------------------------------------------
    def next_frame(self, note=None, family=None, temperature: float = 1.0, freeze: bool = False,
                   partial_temp: float = 1.0):
        """→ ``(mag (F,), phase (F,))`` of the next output frame
        (``partial_temp``: :meth:`IFFAR.temperatures`)."""
        if self.play_prompt and self.pos < self.prompt_frames:
            X = self.prompt_X[:, self.pos]
            self.pos += 1
            return np.abs(X), np.angle(X)
        self.pos += 1
        if not freeze:
            self._generate(note, family, temperature, partial_temp)
            self._locked = False
            self._glide_base = None
        elif not self._locked:                   # held: each partial's bins turn as one
            self.omega = lock_to_peaks(self.mag, self.omega)
            self._locked = True
        phase = self._integrate()
        self._recent_mag[:, self._recent_at] = self.mag
        self._recent_phase[:, self._recent_at] = phase
        self._recent_at = (self._recent_at + 1) % self._recent_mag.shape[1]
        return self.mag, phase

    def _label_embedding(self, note, family):
        """→ (label embedding ``(C,)``, pitch template ``(F,)`` or None), cached."""
        key = (note, family)
        v = self._labels.get(key)
        if v is None:
            m = self.model
            with torch.no_grad():
                n_idx, f_idx = m.labels(note, family, 1, "cpu")
                tmpl = m.template(n_idx)
                v = self._labels[key] = ((m.note_emb(n_idx) + m.family_emb(f_idx))[0].numpy(),
                                         tmpl[0].numpy() if tmpl is not None else None)
        return v

    def _generate(self, note, family, temperature, partial_temp=1.0) -> None:
        emb, tmpl = self._label_embedding(note, family)
        z = torch.randn((1, self.audio.n_bins), generator=self.gen, dtype=self.dtype)[0].numpy()
        self.mag, self.omega = self.step(emb, tmpl, z * temperature, self.guard, self.timing, partial_temp)

    def _integrate(self) -> np.ndarray:
        t0 = time.perf_counter()
        if self.integrator is None:
            self.phase = self.phase + self.omega                 # φ_t = φ_{t−1} + Δφ_t
            self.phase -= 2 * np.pi * np.floor((self.phase + np.pi) / (2 * np.pi))
        else:
            from ..dsp.pghi import log_magnitude, tau_from_time_derivative

            s = log_magnitude(self.mag)
            tau = tau_from_time_derivative(s - self._prev_s, self.audio) \
                if hasattr(self, "_prev_s") else np.zeros_like(s)
            self._prev_s = s
            _, ph = self.integrator.process(self.mag[:, None], self.omega[:, None], tau[:, None])
            self.phase = ph[:, 0]
        if self.timing is not None:
            self.timing["phase"] = self.timing.get("phase", 0.0) + time.perf_counter() - t0
        return self.phase


def _seed_integrator(integ, mag, phase, omega) -> None:
    """Start a :class:`~rtengine.dsp.integrator.PhaseIntegrator` as if it had
    just produced ``phase`` for ``mag`` (the prompt's last frame), so the
    generated continuation joins the prompt's true phases."""
    integ._prev[0] = mag
    integ._prev[1] = phase
    integ._prev[2] = omega
    integ._seen[0] = 1


_MODEL_CACHE: dict = {}


def load_model(path: str = DEFAULT_WEIGHTS):
    from ..nn.iffar import load_iffar

    p = _resolve(path)
    if not (p / "weights.pt").exists() and not p.is_file():
        raise UserError(f"iffar: no model at {p} (expected weights.pt; train with "
                        f"tools/train_iffar.py)")
    key = str(p.resolve())
    if key not in _MODEL_CACHE:
        _MODEL_CACHE[key] = load_iffar(p)
    # a private copy: the encoder's streaming caches live in the modules
    return copy.deepcopy(_MODEL_CACHE[key])


@register_stage("iffar")
class IFFARStage(Stage):
    """In: audio (ignored); out: audio ``(k*R,)`` generated by IFF-AR."""

    input_type = AUDIO
    output_type = AUDIO
    options_schema = {
        "weights": ((str,), f"model folder (default {DEFAULT_WEIGHTS})"),
        "prompt": ((str,), "audio file, 'note' (a generated tone at prompt_note) or 'silence'"),
        "prompt_note": ((int, float), "MIDI note of the generated prompt (default 60)"),
        "prompt_seconds": ((int, float), "length of the prompt (default 0.5 s)"),
        "prompt_offset": ((int, float), "start of the prompt in the file (default 0 s)"),
        "play_prompt": ((bool,), "play the prompt before the continuation (default true)"),
        "phase": ((str,), "direct (φ_t = φ_{t−1} + Δφ_t, default) or heap (the engine's integrator)"),
        "level_guard": ((bool,), "cap the generated mean level at the prompt's (default false)"),
        "retrigger": ((bool,), "with prompt 'note': a new note restarts from a prompt re-made at "
                               "that note, as prime does (default false: the label alone steers)"),
        "threads": ((int,), "CPU threads of torch and NumPy's BLAS while generating (default 1: "
                            "one frame is too small to share, and extra threads only contend)"),
    }

    def __init__(self, name, cfg, options=None, seed=0):
        super().__init__(name, cfg, options, seed)
        o = self.options
        self.phase_mode = o.get("phase", "direct")
        if self.phase_mode not in PHASE_MODES:
            raise UserError(f"phase must be one of {', '.join(PHASE_MODES)}, got {self.phase_mode!r}")
        self.prompt = o.get("prompt", "note")
        self.retrigger = bool(o.get("retrigger", False))
        if self.prompt not in ("note", "silence") and not _resolve(self.prompt).exists():
            raise UserError(f"prompt: no such audio file {self.prompt!r} "
                            f"(or use 'note' or 'silence')")
        self.add_param(Param("note", -1, 127, -1, "MIDI", smoothing=0.0,
                             description="pitch to play (-1: continue the prompt)"))
        self.add_param(Param("family", -1, 12, -1, "", smoothing=0.0,
                             description="instrument family index (-1: none)"))
        self.add_param(Param("temperature", 0.0, 2.0, 0.7, "", smoothing=0.05,
                             description="flow sampling temperature"))
        self.add_param(Param("partial_temp", 0.0, 1.0, 1.0, "", smoothing=0.05,
                             description="the temperature's share at the partials (bins within 40 dB "
                                         "of the frame's loudest): 1 as the paper; 0 keeps their phase "
                                         "steady while the rest stays random"))
        self.add_param(Param("freeze", 0.0, 1.0, 0.0, "", smoothing=0.0,
                             description="hold the current frame (>= 0.5)"))
        self.add_param(Param("prime", 0.0, 1.0, 0.0, "", smoothing=0.0,
                             description="restart from the prompt (rising edge through 0.5)"))
        self.add_param(Param("legato", 0.0, 1.0, 0.0, "", smoothing=0.0,
                             description="a new note glides from the sound, no new attack (>= 0.5)"))
        self.add_param(Param("gain", -48.0, 12.0, 0.0, "dB", smoothing=0.05,
                             description="output level"))
        self.latency_samples = cfg.n_fft // 2
        self.stream = None

    def _prompt_audio(self) -> np.ndarray | None:
        o, sr = self.options, self.cfg.sample_rate
        secs = float(o.get("prompt_seconds", 0.5))
        if self.prompt == "silence":
            return None
        if self.prompt == "note":
            return self._note_prompt(float(o.get("prompt_note", 60)))
        from ..io import read_audio
        x = read_audio(_resolve(self.prompt), sr)
        a = int(float(o.get("prompt_offset", 0.0)) * sr)
        return x[a:a + int(secs * sr)]

    def _note_prompt(self, note: float) -> np.ndarray:
        secs = float(self.options.get("prompt_seconds", 0.5))
        return harmonic_tone(note, secs, self.cfg.sample_rate, seed=self.seed)

    def _reprime_at(self, note: int) -> None:
        """Restart from a generated prompt at ``note``."""
        self._prompt_pitch = note
        self._glided = False
        self.stream.prime(self._note_prompt(note))

    def _restart(self) -> None:
        """Back to the configured prompt (after glides, the stream's prompt
        is its own transposed output)."""
        self._prompt_pitch = float(self.options.get("prompt_note", 60))
        self._glided = False
        self.stream.prime(self._prompt_audio())

    def _glide_to(self, note: int) -> None:
        self.stream.glide(note - self._prompt_pitch, float(self.options.get("prompt_seconds", 0.5)))
        self._prompt_pitch = note
        self._glided = True

    def prepare(self, max_frames: int) -> None:
        super().prepare(max_frames)
        model = load_model(self.options.get("weights", DEFAULT_WEIGHTS))
        if model.audio != self.cfg:
            model.audio.check_same(self.cfg, "the iffar model", "the patch")
        self.stream = IFFARStream(model, self.seed, self.phase_mode,
                                  bool(self.options.get("play_prompt", True)),
                                  bool(self.options.get("level_guard", False)))
        self._restart()
        self.ola = OverlapAdd(self.cfg)
        self._spec = np.zeros((self.cfg.n_bins, max(1, max_frames)), dtype=np.complex128)
        self._prime_high = False
        # warm up (numba JIT of the OLA, first inference), then start clean
        self.process(None, 2)
        self.burst_ms = self._time_restart()
        self.reset()

    def _time_restart(self) -> float:
        """Wall milliseconds of the heaviest restart a control can ask for
        within one frame's call (a prime, a retrigger, a legato glide of an
        octave: the prompt's analysis and the encoder over it), warm: the
        live player keeps that much more audio buffered."""
        ms = 0.0
        with compute_threads(int(self.options.get("threads", 1))):
            for _ in range(2):
                t0 = time.perf_counter()
                self._restart()
                ms = 1000.0 * (time.perf_counter() - t0)
                t0 = time.perf_counter()
                self.stream.glide(12.0, float(self.options.get("prompt_seconds", 0.5)))
                ms = max(ms, 1000.0 * (time.perf_counter() - t0))
        self._restart()
        return ms

    def reset(self) -> None:
        if self.stream is not None:
            if self._glided or self._prompt_pitch != float(self.options.get("prompt_note", 60)):
                self._restart()                  # priming resets the stream
            else:
                self.stream.reset()
            self.ola.reset()
        self._prime_high = False

    def process(self, x, k: int):
        with compute_threads(int(self.options.get("threads", 1))):
            return self._process(k)

    def _process(self, k: int):
        if self._spec.shape[1] < k:
            self._spec = np.zeros((self.cfg.n_bins, k), dtype=np.complex128)
        note = self.params["note"].frames(k)[:, 0]
        fam = self.params["family"].frames(k)[:, 0]
        temp = self.params["temperature"].frames(k)[:, 0]
        partial_temp = self.params["partial_temp"].frames(k)[:, 0]
        freeze = self.params["freeze"].frames(k)[:, 0]
        prime = self.params["prime"].frames(k)[:, 0]
        legato = self.params["legato"].frames(k)[:, 0]
        gain = self.params["gain"].frames(k)[:, 0].copy()
        for j in range(k):
            high = prime[j] >= 0.5
            n = int(round(note[j]))
            glide = legato[j] >= 0.5
            new_note = n >= 0 and n != self._prompt_pitch and (self.prompt == "note" or glide)
            if high and not self._prime_high:
                if self.prompt == "note" and n >= 0 and (new_note or self._glided):
                    # a generated prompt follows the note: the model keeps its
                    # prompt's pitch far better than it follows the label
                    self._reprime_at(n)
                elif self._glided:
                    self._restart()
                else:
                    self.stream.reset()
            elif new_note and glide:
                self._glide_to(n)
            elif new_note and self.retrigger:
                self._reprime_at(n)
            self._prime_high = high
            mag, ph = self.stream.next_frame(n if n >= 0 else None,
                                             int(round(fam[j])) if fam[j] >= 0 else None,
                                             float(temp[j]), freeze[j] >= 0.5, float(partial_temp[j]))
            self._spec[:, j] = mag * np.exp(1j * ph)
        y = self.ola.process(self._spec[:, :k])
        g = np.repeat(np.exp(gain * LN10_20), self.cfg.hop)
        return (y * g).astype(np.float32)

    def describe(self):
        return f"iffar ({self.prompt} prompt, {self.phase_mode} phase)"


# ------------------------------------------------------------------ benchmark
def bench_iffar(weights: str = DEFAULT_WEIGHTS, frames: int = 400, threads: int | None = 1,
                phase: str = "direct", partial_temp: float = 1.0) -> dict:
    """Time one generated frame, per part: MagHead (with the label embedding
    and the magnitude safeguard), flow (condition + sampling), encoder (one
    cached step on the new frame), phase (de-normalising, Δφ and the phase
    update), OLA. Returns wall-clock milliseconds per frame per part, the
    thread's CPU time per frame, the real-time factor (frame period / wall
    total) and the 1-minute load average (on a shared machine the wall time
    includes waiting for a core). ``partial_temp``: as the stage's param (the
    patches play at 0)."""
    from ..config import get_config
    from ..nn.iffar import IFFAR, IFFARConfig

    with compute_threads(threads):
        try:
            model = load_model(weights)
        except UserError:
            model = IFFAR(IFFARConfig(), get_config("22k")).eval()   # untrained, same cost
        cfg = model.audio
        st = IFFARStream(model, 0, phase, play_prompt=False)
        st.prime(harmonic_tone(60, 0.5, cfg.sample_rate))
        ola = OverlapAdd(cfg)
        for _ in range(20):                       # warm-up
            m, p = st.next_frame(None, None, 0.7, partial_temp=partial_temp)
            ola.process((m * np.exp(1j * p))[:, None])
        st.timing = {}
        t_ola = 0.0
        t0 = time.perf_counter()
        c0 = time.thread_time()
        for _ in range(frames):
            m, p = st.next_frame(None, None, 0.7, partial_temp=partial_temp)
            t1 = time.perf_counter()
            ola.process((m * np.exp(1j * p))[:, None])
            t_ola += time.perf_counter() - t1
        total = time.perf_counter() - t0
        cpu = time.thread_time() - c0
        ms = {k: 1000 * v / frames for k, v in st.timing.items()}
        ms["ola"] = 1000 * t_ola / frames
        ms["total"] = 1000 * total / frames
        period = 1000 * cfg.hop / cfg.sample_rate
        return {"model": "iffar", "phase": phase, "partial_temp": partial_temp,
                "threads": torch.get_num_threads(),
                "blas_threads": blas_threads(),
                "ms_per_frame": {k: round(v, 4) for k, v in ms.items()},
                "cpu_ms_per_frame": round(1000 * cpu / frames, 4),
                "frame_period_ms": round(period, 3),
                "realtime_factor": round(period / ms["total"], 2),
                "load_average_1min": round(os.getloadavg()[0], 2), "cpus": os.cpu_count()}
