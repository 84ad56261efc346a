"""A small 1-d U-Net over frames, the LatentFT diffusion decoder's network.

:class:`UNet1d` maps ``(B, C_in, T)`` → ``(B, C_out, T)`` with ``T`` a
multiple of ``2^(levels-1)``; each residual block gets the noise level through
a FiLM (scale, shift) from a sinusoidal embedding of ``c_noise``.

:class:`ChunkDecoder` is the network ``F`` that :class:`rtengine.nn.edm.EDMPrecond`
wraps: it denoises ``H`` new mel frames given ``P`` already decoded frames
before them (the previous chunk's output) and the masked latent over all
``P + H`` frames.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


class NoiseEmbedding(nn.Module):
    """``c_noise (B,)`` → ``(B, dim)``: sinusoidal features then an MLP."""

    def __init__(self, dim: int, n_freq: int = 16):
        super().__init__()
        self.register_buffer("freqs", torch.exp(torch.linspace(0, math.log(100.0), n_freq)))
        self.mlp = nn.Sequential(nn.Linear(2 * n_freq, dim), nn.SiLU(), nn.Linear(dim, dim))

    def forward(self, c_noise: torch.Tensor) -> torch.Tensor:
        a = c_noise[:, None] * self.freqs[None]
        return self.mlp(torch.cat([a.sin(), a.cos()], dim=1))


class ResBlock1d(nn.Module):
    """GroupNorm → SiLU → conv3 → FiLM(emb) → SiLU → conv3, plus a (1x1) skip.
    x: ``(B, C_in, T)``, emb: ``(B, E)`` → ``(B, C_out, T)``."""

    def __init__(self, cin: int, cout: int, emb: int, groups: int = 8):
        super().__init__()
        self.norm1 = nn.GroupNorm(min(groups, cin), cin)
        self.conv1 = nn.Conv1d(cin, cout, 3, padding=1)
        self.film = nn.Linear(emb, 2 * cout)
        self.norm2 = nn.GroupNorm(min(groups, cout), cout)
        self.conv2 = nn.Conv1d(cout, cout, 3, padding=1)
        self.skip = nn.Conv1d(cin, cout, 1) if cin != cout else nn.Identity()

    def forward(self, x, emb):
        h = self.conv1(F.silu(self.norm1(x)))
        scale, shift = self.film(emb)[:, :, None].chunk(2, dim=1)
        h = self.norm2(h) * (1 + scale) + shift
        h = self.conv2(F.silu(h))
        return self.skip(x) + h


class UNet1d(nn.Module):
    """Encoder–decoder over time with skip connections.

    Args:
        cin, cout: input / output channels.
        channels: width per level (each level halves the time resolution).
        blocks: residual blocks per level.
        emb: width of the noise embedding.
    x: ``(B, cin, T)``, c_noise: ``(B,)`` → ``(B, cout, T)``; ``T`` divisible
    by ``2^(len(channels)-1)``.
    """

    def __init__(self, cin: int, cout: int, channels=(64, 96, 128), blocks: int = 1, emb: int = 128):
        super().__init__()
        self.emb = NoiseEmbedding(emb)
        self.inp = nn.Conv1d(cin, channels[0], 3, padding=1)
        self.down = nn.ModuleList()
        self.downsample = nn.ModuleList()
        c = channels[0]
        skips = []
        for i, ch in enumerate(channels):
            lvl = nn.ModuleList()
            for _ in range(blocks):
                lvl.append(ResBlock1d(c, ch, emb))
                c = ch
            self.down.append(lvl)
            skips.append(c)
            if i < len(channels) - 1:
                self.downsample.append(nn.Conv1d(c, c, 3, stride=2, padding=1))
        self.mid = nn.ModuleList([ResBlock1d(c, c, emb), ResBlock1d(c, c, emb)])
        self.up = nn.ModuleList()
        for i, ch in reversed(list(enumerate(channels))):
            lvl = nn.ModuleList()
            for j in range(blocks):
                lvl.append(ResBlock1d(c + (skips[i] if j == 0 else 0), ch, emb))
                c = ch
            self.up.append(lvl)
        self.out_norm = nn.GroupNorm(8, c)
        self.out = nn.Conv1d(c, cout, 3, padding=1)
        self.levels = len(channels)

    def forward(self, x: torch.Tensor, c_noise: torch.Tensor) -> torch.Tensor:
        e = self.emb(c_noise)
        h = self.inp(x)
        hs = []
        for i, lvl in enumerate(self.down):
            for blk in lvl:
                h = blk(h, e)
            hs.append(h)
            if i < self.levels - 1:
                h = self.downsample[i](h)
        for blk in self.mid:
            h = blk(h, e)
        for k, lvl in enumerate(self.up):
            i = self.levels - 1 - k
            if i < self.levels - 1:
                h = F.interpolate(h, scale_factor=2, mode="nearest")
            h = torch.cat([h, hs[i]], dim=1)
            for blk in lvl:
                h = blk(h, e)
        return self.out(F.silu(self.out_norm(h)))


class ChunkDecoder(nn.Module):
    """The network ``F`` of the chunked diffusion decoder.

    Input over ``P + H`` frames: the mel channels hold the ``P`` known
    (previously decoded, scaled mel) frames followed by the ``H`` noisy ones
    (already multiplied by ``c_in``), one channel flags the known frames, and
    the masked latent ``(C_lat, P + H)`` is concatenated as the condition.

    forward(x_in ``(B, n_mels, H)``, c_noise ``(B,)``, cond ``(B, C_lat, P+H)``,
    context ``(B, n_mels, P)``) → ``(B, n_mels, H)``.
    """

    def __init__(self, n_mels: int = 80, latent: int = 32, channels=(64, 96, 128), blocks: int = 1,
                 emb: int = 128, in_skip: bool = False):
        super().__init__()
        self.unet = UNet1d(n_mels + 1 + latent, n_mels, channels, blocks, emb)
        # a per-frame linear path from the noisy mel to the output: F must
        # reproduce the noise to cancel it (F ≈ (y - c_skip x) / c_out), and
        # a U-Net narrower than n_mels at full resolution cannot carry it
        self.in_skip = nn.Conv1d(n_mels, n_mels, 1) if in_skip else None
        if self.in_skip is not None:
            nn.init.zeros_(self.in_skip.weight)
            nn.init.zeros_(self.in_skip.bias)

    def forward(self, x_in, c_noise, cond, context):
        B, _, H = x_in.shape
        P = context.shape[-1]
        mel = torch.cat([context, x_in], dim=-1)
        flag = torch.zeros(B, 1, P + H, dtype=x_in.dtype)
        flag[..., :P] = 1.0
        out = self.unet(torch.cat([mel, flag, cond], dim=1), c_noise)[..., P:]
        if self.in_skip is not None:
            out = out + self.in_skip(x_in)
        return out


class LatentMean(nn.Module):
    """Per-frame estimate of the scaled mel from the masked latent: 1x1
    convolutions ``latent → hidden → hidden → n_mels``, the last one
    zero-initialised (so a decoder trained without it is unchanged at first).
    cond ``(B, C_lat, T)`` → ``(B, n_mels, T)``."""

    def __init__(self, latent: int, n_mels: int, hidden: int):
        super().__init__()
        self.net = nn.Sequential(nn.Conv1d(latent, hidden, 1), nn.SiLU(),
                                 nn.Conv1d(hidden, hidden, 1), nn.SiLU(),
                                 nn.Conv1d(hidden, n_mels, 1))
        nn.init.zeros_(self.net[-1].weight)
        nn.init.zeros_(self.net[-1].bias)

    def forward(self, cond: torch.Tensor) -> torch.Tensor:
        return self.net(cond)
