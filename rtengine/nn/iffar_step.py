"""IFF-AR one generated frame at a time: the streaming stage's arithmetic.

The modules of :mod:`rtengine.nn.iffar` run batches of whole sequences as
torch convolutions. The live stage generates one frame every 11.6 ms, where
the cost is mostly per-operation overhead (a few µs per torch call on a small
CPU, about a quarter of that per NumPy call), so here the same arithmetic
runs in NumPy with as few operations as the maths allows:

- the TCN encoder keeps a ring of the last ``d`` inputs per block (``d`` its
  dilation); both kernel taps are one product, the residual and skip
  projections one product;
- every convolution across frequency is one product of its flattened kernel
  with the unfolded input (:class:`_Unfold`: a strided view of a zero-padded
  buffer, copied once);
- the flow's condition: the context channels are the same at every bin, so
  their share of the convolution is one small product; all coupling layers'
  condition projections are one product, and the constant mask channel's
  share is computed once;
- each coupling layer updates only the bins it transforms (every other bin).

GELU is :func:`~rtengine.nn.gelu_kernel.gelu_` (exact, in place: torch's
costs 17 µs a call before it computes). Same results as
:meth:`IFFAR.rollout` up to rounding, in the model's dtype (tested).
"""

from __future__ import annotations

import math
import time

import numpy as np
import torch
import torch.nn.functional as Fn

from .gelu_kernel import gelu_
from .iffar import MAX_LOG_MAG, PARTIALS_LN
from .iffar_features import nominal_advance, wrap


def _np(t: torch.Tensor) -> np.ndarray:
    return t.detach().cpu().numpy().copy()


def _kernel(conv) -> tuple[np.ndarray, np.ndarray]:
    """A Conv1d's weight ``(O, C, k)`` as ``(O, C·k)`` (for :class:`_Unfold`'s
    columns) and its bias ``(O, 1)``."""
    w = conv.weight.detach()
    return _np(w.reshape(w.shape[0], -1)), _np(conv.bias)[:, None]


class _Unfold:
    """The input of a kernel-``k`` convolution across ``F`` bins (zero
    padding ``k//2``): write the ``(C, F)`` input into :attr:`x`; :meth:`cols`
    returns it unfolded, ``(C·k, n)``, row ``c·k + j`` holding bin
    ``f + j − k//2`` of channel ``c`` for the output bins ``f = start,
    start + step, …``, so that ``kernel @ cols + bias`` is the convolution
    there (:func:`_kernel`)."""

    def __init__(self, c: int, f: int, k: int, dtype, start: int = 0, step: int = 1):
        buf = np.zeros((c, f + k - 1), dtype=dtype)
        self.x = buf[:, k // 2:k // 2 + f]
        n = len(range(start, f, step))
        s0, s1 = buf.strides
        self._view = np.lib.stride_tricks.as_strided(buf[:, start:], (c, k, n), (s0, s1, s1 * step),
                                                     writeable=False)
        self.shape = (c * k, n)

    def cols(self) -> np.ndarray:
        return self._view.reshape(self.shape)


class EncoderStep:
    """:class:`~rtengine.nn.iffar.TCNContextEncoder` on one new frame.
    Kernel 2 only (the taps: the block's input ``d`` frames ago, and now)."""

    def __init__(self, encoder):
        blocks = list(encoder.blocks)
        if any(b.conv.kernel_size[0] != 2 for b in blocks):
            raise ValueError("EncoderStep needs kernel 2")
        self.encoder = encoder
        self.c = encoder.inp.out_channels
        w = lambda conv: conv.weight.detach()[..., 0]          # noqa: E731
        self.w_in, self.b_in = _np(w(encoder.inp).T), _np(encoder.inp.bias)
        self.w_out, self.b_out = _np(w(encoder.out).T), _np(encoder.out.bias)
        self.blocks = []
        for b in blocks:
            wt = b.conv.weight.detach()                                     # (2C, C, 2)
            w_taps = _np(torch.cat([wt[..., 0], wt[..., 1]], dim=1).T)      # (2C_in, 2C)
            w_rs = _np(torch.cat([w(b.res), w(b.skip)], dim=0).T)           # (C, 2C)
            b_rs = _np(torch.cat([b.res.bias.detach(), b.skip.bias.detach()]))
            self.blocks.append((b.conv.dilation[0], w_taps, _np(b.conv.bias), w_rs, b_rs))
        self.rings: list[np.ndarray] = []
        self.pos: list[int] = []

    @torch.no_grad()
    def start(self, feats: torch.Tensor) -> np.ndarray:
        """Run the prompt ``(1, 2F, P)`` offline; fill the rings; return the
        last frame's embedding ``(C,)``."""
        enc = self.encoder
        enc.set_streaming(False)
        h = enc.inp(feats)
        skip = 0.0
        self.rings, self.pos = [], []
        for blk, (d, *_) in zip(enc.blocks, self.blocks):
            self.rings.append(_np(Fn.pad(h, (max(0, d - h.shape[-1]), 0))[0, :, -d:].T))   # (d, C)
            self.pos.append(0)
            h, s_ = blk(h)
            skip = skip + s_
        return _np(enc.out(Fn.gelu(skip))[0, :, -1])

    def step(self, x: np.ndarray) -> np.ndarray:
        """One new frame ``(2F,)`` → its embedding ``(C,)``."""
        c = self.c
        h = x @ self.w_in + self.b_in
        skip = None
        for i, (d, w_taps, b_taps, w_rs, b_rs) in enumerate(self.blocks):
            ring, p = self.rings[i], self.pos[i]
            z = np.concatenate([ring[p], h]) @ w_taps + b_taps
            ring[p] = h
            self.pos[i] = (p + 1) % d
            g = np.tanh(z[:c]) * (0.5 + 0.5 * np.tanh(0.5 * z[c:]))       # tanh(a) · σ(b)
            rs = g @ w_rs + b_rs
            h = (h + rs[:c]) * math.sqrt(0.5)
            skip = rs[c:] if skip is None else skip + rs[c:]
        return gelu_(skip) @ self.w_out + self.b_out


class MagHeadStep:
    """:class:`~rtengine.nn.iffar.MagHead` for one frame."""

    def __init__(self, head):
        self.head = head
        self.f, self.k = head.f, head.k
        self.w1, self.b1 = _np(head.fc1.weight.T), _np(head.fc1.bias)
        self.w2, self.b2 = _np(head.fc2.weight.T), _np(head.fc2.bias)
        self.w_c1, self.b_c1 = _kernel(head.conv1)
        self.w_c2, self.b_c2 = _kernel(head.conv2)
        dt = self.w1.dtype
        self.in1 = _Unfold(head.conv1.in_channels, self.f, head.conv1.kernel_size[0], dt)
        self.in2 = _Unfold(head.conv2.in_channels, self.f, head.conv2.kernel_size[0], dt)
        self.base_w = _np(torch.softmax(head.base_logits.detach(), 0)) if head.base > 1 else None

    def __call__(self, c: np.ndarray, prev: np.ndarray, template: np.ndarray | None,
                 hist: np.ndarray | None) -> np.ndarray:
        """c ``(C,)``, prev ``(F,)``, template ``(F,)`` or None, hist
        ``(h, F)`` or None → ``(F,)``, as ``MagHead.forward``."""
        hd = self.head
        k = self.k
        x = self.in1.x
        x[:k] = (gelu_(c @ self.w1 + self.b1) @ self.w2 + self.b2).reshape(k, self.f)
        x[k] = prev
        j = k + 1
        if hd.template:
            x[j] = template if template is not None else 0.0
            j += 1
        if hd.history:
            x[j:] = hist if hist is not None else prev
        self.in2.x[:] = gelu_(self.w_c1 @ self.in1.cols() + self.b_c1)
        d = (self.w_c2 @ self.in2.cols() + self.b_c2)[0]
        if not hd.residual:
            return d
        if self.base_w is None:
            return prev + d
        return self.base_w[0] * prev + self.base_w[1:] @ hist[:hd.base - 1] + d


class FlowStep:
    """:class:`~rtengine.nn.iffar.IFConditionalFlow`'s condition and inverse
    (sampling) for one frame."""

    def __init__(self, flow):
        self.flow = flow
        self.f = f = flow.f
        layers = list(flow.layers)
        self.hidden = layers[0].inp.out_channels
        self.wg, self.bg = _np(flow.glob.weight.T), _np(flow.glob.bias)
        dt = self.wg.dtype
        # the condition network's kernel over the per-bin channels (mag, prev
        # mag, prev IF, template) and, apart, over the context channels, which
        # are the same at every bin: their share is one small product per tap
        w = flow.cond_net.weight.detach()
        cc, k = flow.glob.out_features, flow.cond_net.kernel_size[0]
        per_bin = [0, 1, 2] + ([3 + cc] if flow.template else [])
        self.w_cn, self.b_cn = _np(w[:, per_bin].reshape(w.shape[0], -1)), _np(flow.cond_net.bias)[:, None]
        self.w_cn_glob = _np(w[:, 3:3 + cc].permute(2, 0, 1))              # (k, H, cc)
        self.cond_in = _Unfold(len(per_bin), f, k, dt)
        # at bin f the context channels meet the kernel's taps j with
        # 0 <= f + j − k//2 < F: all of them but near the edges
        self.glob_taps = np.zeros((k, f), dtype=self.w_cn.dtype)
        for j in range(k):
            lo, hi = max(0, k // 2 - j), min(f, f + k // 2 - j)
            self.glob_taps[j, lo:hi] = 1.0
        # all layers' 1×1 condition projections, and their constant part: the
        # mask channel through the input kernel, plus both biases
        self.w_cond = _np(torch.cat([la.cond.weight.detach()[..., 0] for la in layers], dim=0))
        const = [Fn.conv1d(la.mask[None, None].to(flow.glob.weight.dtype), la.inp.weight.detach()[:, 1:2], padding=2)[0]
                 + la.inp.bias.detach()[:, None] + la.cond.bias.detach()[:, None] for la in layers]
        self.const = _np(torch.cat(const, dim=0))                           # (L·H, F)
        self.layers = []
        for la in layers:
            first = int(la.mask[0].item())                                  # first transformed bin
            self.layers.append((_np(la.mask), _Unfold(1, f, la.inp.kernel_size[0], dt),
                                _np(la.inp.weight[:, 0]),
                                _np(la.hid.weight[..., 0]), _np(la.hid.bias)[:, None],
                                _kernel(la.out),
                                _Unfold(self.hidden, f, la.out.kernel_size[0], dt, first, 2),
                                slice(first, None, 2), la.s_max))
        base = flow.base
        if base is not None:
            self.wp, self.bp = _np(base.proj.weight[..., 0]), _np(base.proj.bias)[:, None]

    def condition(self, c, mag, prev_mag, prev_if, template=None) -> np.ndarray:
        """c ``(C,)``, the rest ``(F,)`` → per-bin condition features ``(H, F)``."""
        x = self.cond_in.x
        x[0], x[1], x[2] = mag, prev_mag, prev_if
        if self.flow.template:
            x[3] = template if template is not None else 0.0
        g = np.einsum("jhc,c->hj", self.w_cn_glob, c @ self.wg + self.bg)  # (H, k)
        return gelu_(self.w_cn @ self.cond_in.cols() + g @ self.glob_taps + self.b_cn)

    def inverse(self, z: np.ndarray, h: np.ndarray, prev_if: np.ndarray) -> np.ndarray:
        """Latent ``(F,)`` → IF ``(F,)`` given the condition ``h`` ``(H, F)``."""
        z = z.copy()
        hs = self.hidden
        pre = self.w_cond @ h + self.const                                   # (L·H, F)
        for i in reversed(range(len(self.layers))):
            mask, inp, wx, wh, bh, (wo, bo), out, trans, s_max = self.layers[i]
            np.multiply(z, mask, out=inp.x[0])
            a = wx @ inp.cols() + pre[i * hs:(i + 1) * hs]
            out.x[:] = gelu_(wh @ gelu_(a) + bh)
            s_, t = wo @ out.cols() + bo                                     # at the transformed bins
            z[trans] = (z[trans] - t) * np.exp(-s_max * np.tanh(s_ / s_max))
        if self.flow.base is not None:
            p = self.wp @ h + self.bp
            s_max = self.flow.base.s_max
            z = z * np.exp(s_max * np.tanh(p[1] / s_max)) + (prev_if + p[0])
        return z


class FrameStep:
    """The whole generated frame: MagHead, the flow, the encoder's step on
    the frame, and the frame's magnitude and phase advance. Holds the stream's
    state (last embedding, last frame's features, magnitude history).

    :meth:`start` primes it from a prompt's features ``(1, 2F, P)``;
    :meth:`__call__` generates one frame."""

    def __init__(self, model):
        m = model
        self.model = m
        self.f = m.cfg.n_bins
        self.encoder = EncoderStep(m.encoder)
        self.mag_head = MagHeadStep(m.mag_head)
        self.flow = FlowStep(m.flow)
        self.hetero = m.cfg.if_mode == "hetero"
        with torch.no_grad():
            self.lo, self.hi = (_np(b) for b in m.mag_bounds())
            self.mag_bias = _np(m.mag_bias)
            self.mag_mean, self.mag_std = _np(m.mag_mean), _np(m.mag_std)
            self.if_median, self.if_mad = _np(m.if_median), _np(m.if_mad)
            self.if_valid = _np(m.if_valid)
            self.nominal = _np(nominal_advance(m.audio, m.mag_mean.dtype))
        self.e = self.prev = self.hist = None
        self.level_ref = 0.0

    @torch.no_grad()
    def start(self, feats: torch.Tensor) -> None:
        f = self.f
        self.e = self.encoder.start(feats)
        self.prev = _np(feats[0, :, -1])
        hist = self.model.history_after(feats[:, :f])
        self.hist = _np(hist[0]) if hist is not None else None
        self.level_ref = self.prev[:f].mean()

    def __call__(self, emb: np.ndarray, template: np.ndarray | None, z: np.ndarray,
                 guard: bool = False, timing: dict | None = None,
                 partial_temp: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
        """One frame from the label embedding ``emb`` ``(C,)``, the note's
        template (or None) and the flow's latent ``z`` ``(F,)`` (already times
        the temperature) → ``(magnitude (F,), phase advance Δφ (F,) rad)``,
        both float64 (the phase path's precision). ``guard``:
        :meth:`IFFAR.level_guard` at the prompt's level. ``timing``: per-part
        seconds are added to it. ``partial_temp``: :meth:`IFFAR.temperatures`
        (``z`` is scaled by it on the frame's partials)."""
        clock = time.perf_counter
        t0 = clock()
        f = self.f
        c = self.e + emb
        pm, pi = self.prev[:f], self.prev[f:]
        mag = np.minimum(np.maximum(self.mag_head(c, pm, template, self.hist) - self.mag_bias,
                                    self.lo), self.hi)
        if guard:
            mag = mag - max(mag.mean() - self.level_ref, 0.0)
        ln = np.minimum(mag * self.mag_std + self.mag_mean, MAX_LOG_MAG)    # natural log-magnitude
        if partial_temp != 1.0:
            z = np.where(ln > ln.max() - PARTIALS_LN, z * partial_temp, z)
        t1 = clock()
        d = self.flow.inverse(z, self.flow.condition(c, mag, pm, pi, template), pi)
        t2 = clock()
        if self.hist is not None:
            self.hist = np.concatenate([pm[None], self.hist[:-1]])
        if_ = (d * self.if_mad + self.if_median) * self.if_valid            # rad per hop
        wrapped = wrap(if_)
        self.prev = np.concatenate([mag, (wrapped - self.if_median) / self.if_mad * self.if_valid])
        self.e = self.encoder.step(self.prev)
        t3 = clock()
        magnitude = np.exp(ln).astype(np.float64)
        advance = (if_ + self.nominal if self.hetero else if_).astype(np.float64)
        if timing is not None:
            for k, v in (("maghead", t1 - t0), ("flow", t2 - t1), ("encoder", t3 - t2),
                         ("phase", clock() - t3)):
                timing[k] = timing.get(k, 0.0) + v
        return magnitude, advance
