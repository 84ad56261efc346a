"""IFF-AR losses (§3): spectral (log-magnitude error), phase (flow NLL) and
time domain (multi-resolution STFT loss and SI-SDR on audio rebuilt from the
teacher-forced predictions), weighted.

The audio of a teacher-forced prediction: frame ``t``'s magnitude is MagHead's
``M̂_t``; its phase is the true phase of frame ``t−1`` advanced by the flow's IF
at temperature 0, ``φ̂_t = φ_{t−1} + Δφ̂_t``; the frames go through the torch
iSTFT in the engine's centre-referenced convention
(:func:`rtengine.nn.iffar_features.istft`). The reference is the iSTFT of the
true frames over the same span.

Shapes: ``B`` batch, ``F`` bins, ``T`` frames, ``L`` samples.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch

from ..config import AudioConfig
from .iffar_features import istft, phase_advance

MR_RESOLUTIONS = ((512, 128), (1024, 256), (2048, 512))


@dataclass
class LossWeights:
    mag: float = 1.0       # log-magnitude error (standardised units)
    mag_p: float = 1.0     # its exponent: 1 = L1 (the median), 2 = squared error (the mean, what LSD scores)
    nll: float = 0.5       # flow NLL per dimension (nats)
    mrstft: float = 0.5    # multi-resolution STFT loss
    sisdr: float = 0.02    # −SI-SDR (dB)
    mag_loud: float = 0.0  # power-weighted log-magnitude error: the partials (beyond the paper)
    if_loud: float = 0.0   # power-weighted phase-advance error of the flow's z = 0 IF (beyond the paper)
    phase_run: float = 0.0  # the running phase's error over a free run (run_phase_error; beyond the paper)
    if_loud_flow_only: bool = False   # the two IF terms above train the flow alone (its condition detached)

    def to_dict(self) -> dict:
        return asdict(self)


def log_mag_error(pred: torch.Tensor, target: torch.Tensor, p: float = 1.0) -> torch.Tensor:
    """Per-frame mean ``|error|^p`` of standardised log-magnitudes ``(N, F)`` →
    ``(N,)`` (p = 1: absolute error, p = 2: squared error)."""
    return (pred - target).abs().pow(p).mean(-1)


def power_weights(model, tgt: torch.Tensor) -> torch.Tensor:
    """Each bin's share of its true frame's power, ``|X_b|² / Σ |X|²``:
    ``tgt`` ``(N, 2F)`` true features → ``(N, F)`` (no gradient)."""
    p = torch.exp(2 * model.denorm_mag(tgt[:, :model.cfg.n_bins])).detach()
    return p / p.sum(-1, keepdim=True)


def loud_if_error(model, if0: torch.Tensor, tgt: torch.Tensor) -> torch.Tensor:
    """Per-frame power-weighted phase error of the flow's IF at ``z = 0``:
    ``Σ_b p_b (1 − cos(Δφ̂_b − Δφ_b)) / Σ_b p_b``, ``p_b = |X_b|²`` of the true
    frame. ``if0`` ``(N, F)`` normalised IF, ``tgt`` ``(N, 2F)`` true features → ``(N,)``.

    The NLL weighs every bin alike, and most bins are noise whose IF is
    unpredictable; a partial's IF is nearly constant, and a small error there
    is what a roll-out's phase accumulates. 1 − cos is the wrap-aware squared
    error (≈ e²/2 for small e)."""
    f = model.cfg.n_bins
    err = model.denorm_if(if0) - model.denorm_if(tgt[:, f:])      # rad; hetero or raw alike
    return (power_weights(model, tgt) * (1 - torch.cos(err))).sum(-1)


def loud_mag_error(model, mag: torch.Tensor, tgt: torch.Tensor) -> torch.Tensor:
    """Per-frame power-weighted absolute error of the standardised
    log-magnitude: ``Σ_b p_b |m̂_b − m_b| / Σ_b p_b``, ``p_b = |X_b|²`` of the
    true frame. ``mag`` ``(N, F)``, ``tgt`` ``(N, 2F)`` true features → ``(N,)``.

    The plain error weighs the few partials like the many noise bins; in a
    roll-out the partials fade into the floor (eval_iffar's partials lost),
    so this term weighs them by their power, as :func:`loud_if_error` does
    for the IF."""
    return (power_weights(model, tgt) * (mag - tgt[:, :model.cfg.n_bins]).abs()).sum(-1)


def run_phase_error(model, if0: torch.Tensor, tgt: torch.Tensor, b: int, start: int,
                    frames: int | None = None) -> torch.Tensor:
    """Power-weighted error of the *running* phase over ``frames`` frames
    (default: all) from frame ``start`` on:
    per crop, ``e_j = Σ_{i=start..j} (Δφ̂_i − Δφ_i)`` is how far the phase of a
    roll-out that began at ``start`` has drifted by frame ``j``; returns the
    mean over those frames of ``Σ_b p_b (1 − cos e_j,b) / Σ_b p_b`` (scalar).
    ``if0`` ``(B·(T−1), F)`` normalised IF of the predicted frames ``1..T−1``,
    ``tgt`` ``(B·(T−1), 2F)`` their true features, ``start`` ≥ 1 a feature
    frame index. A horizon keeps the sum where it can still be held: once a
    running phase has drifted by more than π its ``1 − cos`` is as good as
    random and its gradient noise.

    Beyond the paper. :func:`loud_if_error` scores each frame's advance on
    its own; the phase a listener hears is their running sum, and a flow
    whose advances are each a little off in the same direction drifts away
    from the partials (eval_iffar's SI-SDR with the true magnitude). Scored on
    a free run's inputs (the model's own roll-out after a prompt), the sum
    is the roll-out's own phase error, and the flow learns to pull a drift
    back instead of only keeping each step small."""
    f = model.cfg.n_bins
    span = slice(start - 1, None if frames is None else start - 1 + frames)
    err = (model.denorm_if(if0) - model.denorm_if(tgt[:, f:])).reshape(b, -1, f)[:, span]
    w = power_weights(model, tgt).reshape(b, -1, f)[:, span]
    return (w * (1 - torch.cos(torch.cumsum(err, dim=1)))).sum(-1).mean()


def si_sdr(ref: torch.Tensor, est: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Scale-invariant SDR (dB) per signal, ``(B, L)`` → ``(B,)``:
    ``a = ⟨est, ref⟩ / ‖ref‖²``, ``10 log10(‖a·ref‖² / ‖est − a·ref‖²)``."""
    a = (est * ref).sum(-1, keepdim=True) / (ref.pow(2).sum(-1, keepdim=True) + eps)
    proj = a * ref
    return 10 * torch.log10((proj.pow(2).sum(-1) + eps) / ((est - proj).pow(2).sum(-1) + eps))


def mrstft_loss(ref: torch.Tensor, est: torch.Tensor,
                resolutions=MR_RESOLUTIONS, eps: float = 1e-7) -> torch.Tensor:
    """Multi-resolution STFT loss ``(B, L)`` × 2 → scalar: per resolution the
    spectral convergence ``‖|S|−|Ŝ|‖_F / ‖S‖_F`` plus the mean
    ``|log|S| − log|Ŝ||``, averaged over resolutions."""
    total = 0.0
    for n_fft, hop in resolutions:
        w = torch.hann_window(n_fft, dtype=ref.dtype, device=ref.device)
        S = torch.stft(ref, n_fft, hop, window=w, return_complex=True).abs()
        Sh = torch.stft(est, n_fft, hop, window=w, return_complex=True).abs()
        sc = torch.linalg.norm(S - Sh, dim=(-2, -1)) / (torch.linalg.norm(S, dim=(-2, -1)) + eps)
        lm = (torch.log(S + eps) - torch.log(Sh + eps)).abs().mean(dim=(-2, -1))
        total = total + (sc + lm).mean()
    return total / len(resolutions)


def teacher_forced_audio(model, out: dict, X: torch.Tensor, audio: AudioConfig):
    """Audio of the teacher-forced prediction and its reference.

    X ``(B, F, T)`` true complex STFT of the crop; ``out`` from
    :meth:`IFFAR.forward` (``N = B·(T−1)`` rows). Returns ``(ref, est)``,
    each ``(B, L)``, ``L = (T−2)·R``, over frames ``1..T−1``."""
    b, f, t = X.shape
    mag = model.denorm_mag(out["mag"]).reshape(b, t - 1, f).transpose(1, 2)
    d = model.denorm_if(out["if0"]).reshape(b, t - 1, f).transpose(1, 2)
    phi = torch.angle(X[..., :-1]) + phase_advance(d, audio, model.cfg.if_mode)   # φ_t = φ_{t−1} + Δφ_t
    Xh = torch.exp(mag) * torch.exp(1j * phi)                                      # X_t = M̂_t e^{iφ_t}
    return istft(X[..., 1:], audio), istft(Xh, audio)


def iffar_loss(model, out: dict, feats: torch.Tensor, X: torch.Tensor | None,
               audio: AudioConfig, w: LossWeights, skip: int = 0,
               frame_weight: torch.Tensor | None = None, run_start: int | None = None,
               run_frames: int | None = None) -> tuple[torch.Tensor, dict]:
    """The weighted total (§3) and its terms.

    feats ``(B, 2F, T)`` true features; ``skip`` leading target frames of each
    crop are left out of the frame losses (the encoder has not warmed up).
    ``frame_weight`` ``(B, T−1)``: optional weights of the predicted frames in
    the log-magnitude and NLL terms (a weighted mean; e.g. more weight on the
    frames just after a note change). ``run_start``: the first fed frame of a
    free run (None: no free run, no running-phase term), scored over
    ``run_frames`` frames."""
    f = model.cfg.n_bins
    b, _, t = feats.shape
    tgt = feats[..., 1:].transpose(1, 2).reshape(-1, 2 * f)
    keep = (torch.arange(t - 1, device=feats.device) >= skip).repeat(b)
    err = log_mag_error(out["mag"][keep], tgt[keep, :f], w.mag_p)
    if frame_weight is None:
        l_mag = err.mean()
        l_nll = out["nll"][keep].mean()
    else:
        fw = frame_weight.reshape(-1)[keep].to(out["mag"].dtype)
        fw = fw / fw.sum()
        l_mag = (err * fw).sum()
        l_nll = (out["nll"][keep] * fw).sum()
    terms = {"mag": l_mag, "nll": l_nll}
    total = w.mag * l_mag + w.nll * l_nll
    if w.mag_loud:
        l_ml = loud_mag_error(model, out["mag"][keep], tgt[keep]).mean()
        terms["mag_loud"] = l_ml
        total = total + w.mag_loud * l_ml
    run = w.phase_run and run_start is not None
    if (w.if_loud or run) and "if0" in out:
        if0 = out["if0"]
        if w.if_loud_flow_only:   # keep the encoder and MagHead out of these terms
            args = [a.detach() if a is not None else None for a in out["cond_inputs"]]
            if0 = model.flow.inverse(torch.zeros_like(if0), model.flow.condition(*args))
        if w.if_loud:
            l_ifl = loud_if_error(model, if0[keep], tgt[keep]).mean()
            terms["if_loud"] = l_ifl
            total = total + w.if_loud * l_ifl
        if run:
            l_run = run_phase_error(model, if0, tgt, b, run_start, run_frames)
            terms["phase_run"] = l_run
            total = total + w.phase_run * l_run
    if X is not None and "if0" in out and (w.mrstft or w.sisdr):
        ref, est = teacher_forced_audio(model, out, X, audio)
        l_mr = mrstft_loss(ref, est)
        sdr = si_sdr(ref, est).mean()
        terms |= {"mrstft": l_mr, "sisdr": sdr}
        total = total + w.mrstft * l_mr - w.sisdr * sdr
    with torch.no_grad():
        terms["if_mae"] = (out["if0"][keep] - tgt[keep, f:]).abs().mean() if "if0" in out \
            else torch.zeros(())
    return total, {k: v.detach() for k, v in terms.items()}
