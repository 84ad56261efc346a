"""Streaming 1-d convolutions over frames: the cached-conv idea.

A :class:`CachedConv1d` is an ``nn.Conv1d`` with no built-in padding that can
run two ways on the same weights:

* **offline** (default): the whole sequence at once, left-padded with
  ``(k-1)·dilation`` zero frames, so output frame ``t`` sees input frames
  ``t-(k-1)·d … t`` (causal);
* **streaming** (``streaming=True``): any number of new frames per call; the
  layer keeps the last ``(k-1)·dilation`` input frames of the previous call in
  a cache and prepends them, so a chunked run gives the offline output.

A *centred* layer (``lookahead=True``) is the same causal arithmetic with its
output labelled one frame earlier: output frame ``t`` then sees
``t-1 … t+1`` (kernel 3). Streaming cannot see the future, so the centred
layer's output arrives one frame late; :class:`CachedSequential` sums these
look-aheads into the model's ``lookahead`` (frames of latency), and its offline
``forward`` removes the delay by feeding that many silent frames at the end.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class CachedConv1d(nn.Conv1d):
    """Causal (or centred) conv over frames with a streaming cache.

    Args:
        in_channels, out_channels, kernel_size, dilation: as ``nn.Conv1d``
            (stride 1, no padding argument: padding is the cache).
        lookahead: centred layer; adds ``(k-1)·d // 2`` frames to the latency.

    Shapes: input ``(B, C_in, T)`` → output ``(B, C_out, T)`` in both modes.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3,
                 dilation: int = 1, bias: bool = True, lookahead: bool = False):
        super().__init__(in_channels, out_channels, kernel_size, dilation=dilation, bias=bias)
        self.context = (kernel_size - 1) * dilation
        self.lookahead = self.context // 2 if lookahead else 0
        self.streaming = False
        self._cache: torch.Tensor | None = None

    def reset_cache(self) -> None:
        """Forget the frames seen so far (the next call starts from silence)."""
        self._cache = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: ``(B, C_in, T)`` → ``(B, C_out, T)``."""
        if self.context == 0:
            return super().forward(x)
        if not self.streaming:
            return super().forward(F.pad(x, (self.context, 0)))
        if self._cache is None or self._cache.shape[0] != x.shape[0]:
            self._cache = x.new_zeros(x.shape[0], x.shape[1], self.context)
        xc = torch.cat([self._cache, x], dim=-1)
        self._cache = xc[..., -self.context:].detach()
        return self._matmul_conv(xc, x.shape[-1])

    def _matmul_conv(self, xc: torch.Tensor, t: int) -> torch.Tensor:
        """The convolution as one matrix product over the gathered taps (im2col):
        for the few frames of a live block this is several times cheaper than a
        convolution call. xc ``(B, C_in, context + t)`` → ``(B, C_out, t)``."""
        d = self.dilation[0]
        taps = xc.unfold(-1, self.context + 1, 1)[..., ::d]                   # (B, C_in, t, k)
        taps = taps.permute(0, 2, 1, 3).reshape(xc.shape[0], t, -1)           # (B, t, C_in*k)
        w = self.weight.reshape(self.out_channels, -1)                        # (C_out, C_in*k)
        return F.linear(taps, w, self.bias).transpose(1, 2)


class CachedSequential(nn.Sequential):
    """A sequence of modules some of which are :class:`CachedConv1d`.

    ``lookahead`` is the summed look-ahead of its centred layers (frames).
    Offline, :meth:`forward` returns frames aligned with the input;
    :meth:`stream` returns each frame ``lookahead`` frames late and
    :meth:`flush` the last ``lookahead`` frames.
    """

    def cached_convs(self):
        return [m for m in self.modules() if isinstance(m, CachedConv1d)]

    @property
    def lookahead(self) -> int:
        return sum(m.lookahead for m in self.cached_convs())

    def set_streaming(self, on: bool) -> None:
        for m in self.cached_convs():
            m.streaming = on
            m.reset_cache()

    def reset_cache(self) -> None:
        for m in self.cached_convs():
            m.reset_cache()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Offline: x ``(B, C, T)`` → ``(B, C_out, T)``, output frame ``t`` aligned with input frame ``t``."""
        d = self.lookahead
        if d:
            x = F.pad(x, (0, d))
        y = super().forward(x)
        return y[..., d:] if d else y

    def stream(self, x: torch.Tensor) -> torch.Tensor:
        """Streaming: ``k`` new frames ``(B, C, k)`` → ``(B, C_out, k)``, the
        output frames ``t - lookahead`` (zeros-in before the first frame).
        Call :meth:`set_streaming` first."""
        self._last_shape = (x.shape[0], x.shape[1])
        return super().forward(x)

    def flush(self) -> torch.Tensor:
        """The last ``lookahead`` output frames ``(B, C_out, lookahead)``, computed
        by streaming that many silent frames."""
        b, c = getattr(self, "_last_shape", (1, self[0].in_channels))
        p = next(self.parameters())
        return self.stream(p.new_zeros(b, c, self.lookahead))
