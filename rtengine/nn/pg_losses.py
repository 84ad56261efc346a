"""The PG vocoder's training losses (PG paper §3.1.1, eq. 7–12).

Each term is one function, in the paper's order. ``M`` below is the target's
log-magnitude for eq. 7–8 (the magnitude channel the network predicts) and its
linear magnitude for the power weights ``M²`` of eq. 9–10. The power weights
are divided by their mean over the batch so the offset terms keep a stable
scale whatever the loudness of the batch.

Shapes: ``(B, F, T)`` for every map, ``F`` bins, ``T`` frames.
"""

from __future__ import annotations

import math

import torch

N_LFCC = 20        # DCT coefficients of eq. 8
ALPHA_LFCC = 0.1   # α2 of eq. 11; the other weights are 1
LAMBDA_S = 0.5     # eq. 9: λ > 0.5 → frequency offset term, else time offset term


def dct_matrix(n: int, k: int = N_LFCC, dtype=torch.float32, device=None) -> torch.Tensor:
    """First ``k`` rows of the orthonormal DCT-II of length ``n``: ``(k, n)``."""
    i = torch.arange(n, dtype=torch.float64)
    j = torch.arange(k, dtype=torch.float64)[:, None]
    d = torch.cos(math.pi * (i + 0.5) * j / n) * math.sqrt(2.0 / n)
    d[0] /= math.sqrt(2.0)
    return d.to(dtype=dtype, device=device)


def power_weights(mag: torch.Tensor) -> torch.Tensor:
    """``M²`` divided by its mean: ``(B, F, T)`` → ``(B, F, T)``, mean 1."""
    p = mag * mag
    return p / p.mean().clamp_min(1e-12)


def loss_magnitude(log_mag_hat: torch.Tensor, log_mag: torch.Tensor) -> torch.Tensor:
    """Eq. 7: ``L1 = mean (M̂ − M)²`` on log-magnitudes."""
    return torch.mean((log_mag_hat - log_mag) ** 2)


def loss_lfcc(log_mag_hat: torch.Tensor, log_mag: torch.Tensor, dct: torch.Tensor) -> torch.Tensor:
    """Eq. 8: ``L2 = mean (DCT_:20(M̂) − DCT_:20(M))²``, DCT along frequency.
    dct: ``(20, F)`` from :func:`dct_matrix`."""
    diff = torch.einsum("kf,bft->bkt", dct, log_mag_hat - log_mag)
    return torch.mean(diff ** 2)


SEMITONES_PER_UNIT = 12 / math.log(2)   # d(semitones) = 17.3 · df / f


def frequency_error_semitones(dm_hat: torch.Tensor, dm: torch.Tensor) -> torch.Tensor:
    """The error of a predicted frequency offset as a pitch error: the
    predicted frequency ``m + Δm̂`` against the target's ``m + Δm``, in
    semitones to first order, ``17.3 (Δm̂ − Δm) / max(m + Δm, 1)``; bin index
    ``m`` along dim 1 of ``(B, F, T)``."""
    m = torch.arange(dm.shape[1], device=dm.device, dtype=dm.dtype)[None, :, None]
    return SEMITONES_PER_UNIT * (dm_hat - dm) / torch.clamp(m + dm, min=1.0)


def loss_offsets(dm_hat, dn_hat, dm, dn, lam, weights, pitch: bool = False) -> torch.Tensor:
    """Eq. 9: ``L3 = M² (Δm̂ − Δm)²`` where ``λ > 0.5`` (sinusoidal), else
    ``M² (Δn̂ − Δn)²``; averaged over all bins. ``weights`` is ``M²``
    normalised (:func:`power_weights`).

    ``pitch=True`` (beyond the paper) measures the frequency term as a pitch
    error (:func:`frequency_error_semitones`) instead of in bins: the same
    error in bins is a larger pitch error the lower the partial (0.1 bin is
    37 cents at 110 Hz, 2 cents at 2 kHz), and pitch is what the harmonic
    error (eq. 13) and a listener measure."""
    fm = frequency_error_semitones(dm_hat, dm) if pitch else dm_hat - dm
    err = torch.where(lam > LAMBDA_S, fm ** 2, (dn_hat - dn) ** 2)
    return torch.mean(weights * err)


def lambda_from_offsets(dm: torch.Tensor, dn: torch.Tensor, max_exponent: float = 60.0) -> torch.Tensor:
    """Eq. 12 in torch, differentiable: ``λ = exp(−((dṁ/dm) / (dṅ/dn))²)`` with
    ``ṁ = m + Δm``, ``ṅ = n + Δn`` and centred finite differences (one-sided at
    the first and last bin and frame), as :func:`rtengine.dsp.phase_gradient.lambda_map`.

    dm, dn: ``(B, F, T)`` → λ ``(B, F, T)``. The exponent is capped at
    ``max_exponent`` (λ ≥ e⁻⁶⁰) so its gradient stays finite.
    """
    def centred(x: torch.Tensor, dim: int) -> torch.Tensor:
        # d(index + x)/d(index): centred inside, one-sided at the ends
        n = x.shape[dim]
        if n == 1:
            return torch.ones_like(x)
        inner = (2.0 + x.narrow(dim, 2, n - 2) - x.narrow(dim, 0, n - 2)) / 2.0
        first = 1.0 + x.narrow(dim, 1, 1) - x.narrow(dim, 0, 1)
        last = 1.0 + x.narrow(dim, n - 1, 1) - x.narrow(dim, n - 2, 1)
        return torch.cat([first, inner, last], dim=dim)

    dmdot_dm = centred(dm, 1)      # along bins
    dndot_dn = centred(dn, 2)      # along frames
    q = dmdot_dm ** 2 / (dndot_dn ** 2 + 1e-12)
    return torch.exp(-torch.clamp(q, max=max_exponent))


def loss_lambda(dm_hat, dn_hat, lam, weights) -> torch.Tensor:
    """Eq. 10: ``L4 = M² (λ̂ − λ)²`` with λ̂ from the predicted offsets (eq. 12)."""
    lam_hat = lambda_from_offsets(dm_hat, dn_hat)
    return torch.mean(weights * (lam_hat - lam) ** 2)


def pg_loss(pred, target, dct: torch.Tensor, alpha_lfcc: float = ALPHA_LFCC, pitch_offsets: bool = False):
    """Eq. 11: ``L = Σ α_l L_l`` with α2 = 0.1 and the other weights 1
    (``pitch_offsets``: eq. 9's frequency term as a pitch error, see
    :func:`loss_offsets`).

    pred: ``(log_mag_hat, dm_hat, dn_hat)``; target: dict with ``log_mag``,
    ``mag``, ``dm``, ``dn``, ``lam``; every map ``(B, F, T)``.
    Returns ``(total, {"mag", "lfcc", "offsets", "lambda"})`` (detached terms).
    """
    log_mag_hat, dm_hat, dn_hat = pred
    w = power_weights(target["mag"])
    l1 = loss_magnitude(log_mag_hat, target["log_mag"])                        # eq. 7
    l2 = loss_lfcc(log_mag_hat, target["log_mag"], dct)                        # eq. 8
    l3 = loss_offsets(dm_hat, dn_hat, target["dm"], target["dn"], target["lam"], w,  # eq. 9
                      pitch=pitch_offsets)
    l4 = loss_lambda(dm_hat, dn_hat, target["lam"], w)                         # eq. 10
    total = l1 + alpha_lfcc * l2 + l3 + l4                                     # eq. 11
    terms = {"mag": l1.detach(), "lfcc": l2.detach(), "offsets": l3.detach(), "lambda": l4.detach()}
    return total, terms
