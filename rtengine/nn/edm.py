"""EDM diffusion (Karras et al. 2022) for the LatentFT decoder.

- :class:`EDMPrecond`: the preconditioned denoiser ``D(x; σ)`` (Table 1);
- :func:`edm_loss`: the training loss with ``ln σ ~ N(P_mean, P_std²)`` (eq. 8);
- :func:`sigma_steps`: the sampling schedule (eq. 5);
- :func:`heun_sample`: the deterministic 2nd-order sampler (Algorithm 1);
- :func:`combined_derivative`: classifier-free guidance and LatentFT blending
  through denoiser derivatives, ``d = s Σ_i w_i d_i + (1 - s) d_null``.

Shapes: ``x`` is ``(B, C, T)`` (the noisy frames); ``sigma`` is ``(B,)``;
``extra`` is whatever the network takes besides (condition, context).
"""

from __future__ import annotations

from typing import Callable, Sequence

import torch
from torch import nn

SIGMA_DATA = 0.5
P_MEAN, P_STD = -1.2, 1.2
SIGMA_MIN, SIGMA_MAX, RHO = 0.002, 80.0, 7.0


def precond_coefficients(sigma: torch.Tensor, sigma_data: float = SIGMA_DATA):
    """Karras Table 1 ("EDM" column):
    ``c_skip = σ_d² / (σ² + σ_d²)``, ``c_out = σ σ_d / sqrt(σ² + σ_d²)``,
    ``c_in = 1 / sqrt(σ² + σ_d²)``, ``c_noise = ¼ ln σ``."""
    s2 = sigma ** 2 + sigma_data ** 2
    c_skip = sigma_data ** 2 / s2
    c_out = sigma * sigma_data / s2.sqrt()
    c_in = 1.0 / s2.sqrt()
    c_noise = sigma.log() / 4.0
    return c_skip, c_out, c_in, c_noise


class EDMPrecond(nn.Module):
    """``D(x; σ, extra) = c_skip x + c_out F(c_in x, c_noise, extra)`` (Table 1).

    ``net(x_in (B, C, T), c_noise (B,), *extra) → (B, C, T)``. Only the noisy
    frames are scaled by ``c_in``; conditions are passed through unchanged."""

    def __init__(self, net: nn.Module, sigma_data: float = SIGMA_DATA):
        super().__init__()
        self.net = net
        self.sigma_data = sigma_data

    def forward(self, x: torch.Tensor, sigma: torch.Tensor, *extra) -> torch.Tensor:
        sigma = sigma.reshape(-1).to(x.dtype).expand(x.shape[0])
        c_skip, c_out, c_in, c_noise = precond_coefficients(sigma, self.sigma_data)
        b = (-1, 1, 1)
        F_x = self.net(c_in.view(b) * x, c_noise, *extra)
        return c_skip.view(b) * x + c_out.view(b) * F_x


class MeanPrecond(EDMPrecond):
    """EDM around a per-frame conditional mean: the diffusion models the
    residual ``x − μ(cond)`` and ``D = μ + c_skip (x − μ) + c_out F(c_in (x − μ), …)``.

    Beyond the paper (LatentFT's decoder): ``mean(cond)`` maps the masked
    latent over the ``P + H`` frames to a mel estimate; its first ``P`` frames
    are subtracted from the context too, so ``F`` sees residuals only. A
    deterministic per-frame path carries the band's pattern straight to the
    output, which a small U-Net conditioned on the latent alone followed only
    loosely. ``forward(x (B, C, H), σ, cond (B, C_lat, P+H), context (B, C, P))``.
    """

    def __init__(self, net: nn.Module, mean: nn.Module, sigma_data: float = SIGMA_DATA):
        super().__init__(net, sigma_data)
        self.mean = mean

    def forward(self, x, sigma, cond, context):
        mu = self.mean(cond)
        P = context.shape[-1]
        return mu[..., P:] + super().forward(x - mu[..., P:], sigma, cond, context - mu[..., :P])


def edm_loss(denoiser: EDMPrecond, y: torch.Tensor, *extra, p_mean: float = P_MEAN,
             p_std: float = P_STD, generator: torch.Generator | None = None,
             weight: torch.Tensor | None = None) -> torch.Tensor:
    """Karras eq. 8 with the EDM choices: ``ln σ ~ N(P_mean, P_std²)``,
    ``λ(σ) = (σ² + σ_d²) / (σ σ_d)²``, loss ``λ(σ) ‖D(y + n; σ) - y‖²``,
    ``n ~ N(0, σ² I)``. y: clean ``(B, C, T)``; ``weight`` ``(B, 1, T)``
    selects frames (0 = not in the loss). Returns a scalar."""
    B = y.shape[0]
    ln_sigma = torch.randn(B, generator=generator) * p_std + p_mean     # ln σ ~ N(P_mean, P_std²)
    sigma = ln_sigma.exp().to(y.dtype)
    sd = denoiser.sigma_data
    lam = (sigma ** 2 + sd ** 2) / (sigma * sd) ** 2                   # λ(σ)
    n = torch.randn(y.shape, generator=generator).to(y.dtype) * sigma.view(-1, 1, 1)
    D = denoiser(y + n, sigma, *extra)
    err = (D - y) ** 2
    if weight is not None:
        err = (err * weight).sum(dim=(1, 2)) / (weight.sum(dim=(1, 2)) * y.shape[1]).clamp(min=1)
    else:
        err = err.mean(dim=(1, 2))
    return (lam * err).mean()


def sigma_steps(n: int, sigma_min: float = SIGMA_MIN, sigma_max: float = SIGMA_MAX,
                rho: float = RHO) -> torch.Tensor:
    """Karras eq. 5: ``σ_i = (σ_max^{1/ρ} + i/(N-1) (σ_min^{1/ρ} - σ_max^{1/ρ}))^ρ``
    for ``i < N``, and ``σ_N = 0``. → ``(N + 1,)`` float64."""
    i = torch.arange(n, dtype=torch.float64)
    s = (sigma_max ** (1 / rho) + i / max(n - 1, 1) * (sigma_min ** (1 / rho) - sigma_max ** (1 / rho))) ** rho
    return torch.cat([s, torch.zeros(1, dtype=torch.float64)])


Derivative = Callable[[torch.Tensor, float], torch.Tensor]


@torch.no_grad()
def heun_sample(derivative: Derivative, noise: torch.Tensor, steps: int,
                sigma_min: float = SIGMA_MIN, sigma_max: float = SIGMA_MAX,
                rho: float = RHO) -> torch.Tensor:
    """Karras Algorithm 1 (deterministic Heun, no churn).

    derivative(x, σ) → ``dx/dσ = (x - D(x; σ)) / σ`` (possibly guided or
    blended, see :func:`combined_derivative`); noise: ``n ~ N(0, I)``, the
    same shape as the output. Deterministic for given noise."""
    t = sigma_steps(steps, sigma_min, sigma_max, rho)
    x = noise * float(t[0])                                   # x_0 = n σ_0
    for i in range(steps):
        t_cur, t_next = float(t[i]), float(t[i + 1])
        d = derivative(x, t_cur)                              # d_i = (x_i - D(x_i; t_i)) / t_i
        x_next = x + (t_next - t_cur) * d                     # Euler step
        if t_next > 0:                                        # 2nd-order correction
            d_next = derivative(x_next, t_next)
            x_next = x + (t_next - t_cur) * 0.5 * (d + d_next)
        x = x_next
    return x


def combined_derivative(denoiser: Callable, x: torch.Tensor, sigma: float, conds: Sequence,
                        weights: Sequence[float], scale: float, null) -> torch.Tensor:
    """LatentFT guidance and blending through denoiser derivatives.

    Each condition ``c_i`` gives ``d_i = (x - D(x; σ, c_i)) / σ``; the null
    condition (zero latent) gives ``d_null``. The combined derivative is
    ``d = s Σ_i w_i d_i + (1 - s) d_null`` with ``Σ w_i = 1`` (weights are
    normalised here). One condition with ``s`` is classifier-free guidance;
    ``s = 1`` skips the null pass; two sources are the paper's blending
    (Alg. 3), one source at two masks its isolation (A.8).

    ``denoiser(x_batch, sigma_batch, cond_batch)`` is called once with all
    conditions (and the null when ``s ≠ 1``) stacked along the batch:
    x: ``(B, C, T)``; each cond: a tensor with batch ``B``; null: same shape.
    """
    w = torch.tensor([float(v) for v in weights], dtype=x.dtype)
    w = w / w.sum().clamp(min=1e-8)
    use_null = abs(scale - 1.0) > 1e-6
    cs = list(conds) + ([null] if use_null else [])
    n = len(cs)
    B = x.shape[0]
    xb = x.repeat(n, *([1] * (x.dim() - 1)))
    cb = _cat_conds(cs)
    sig = torch.full((n * B,), float(sigma), dtype=x.dtype)
    D = denoiser(xb, sig, *cb) if isinstance(cb, tuple) else denoiser(xb, sig, cb)
    d_all = ((xb - D) / sigma).view(n, B, *x.shape[1:])       # d_i = (x - D_i) / σ
    d_cond = (w.view(-1, *([1] * x.dim())) * d_all[:len(conds)]).sum(0)   # Σ w_i d_i
    if not use_null:
        return d_cond
    return scale * d_cond + (1.0 - scale) * d_all[-1]         # s Σ w_i d_i + (1 - s) d_null


def _cat_conds(cs):
    if isinstance(cs[0], (tuple, list)):
        return tuple(torch.cat([c[j] for c in cs], dim=0) for j in range(len(cs[0])))
    return torch.cat(cs, dim=0)
