"""Streaming overlap-add inverse STFT: frames in, ``hop`` samples out per frame.

Frame ``n`` is centred on sample ``n * hop``; after it arrives, samples
``[n*hop - n_fft/2, n*hop - n_fft/2 + hop)`` receive no further contributions and
are emitted. So the stream is the signal delayed by ``n_fft/2`` samples (the
first ``n_fft/2`` output samples are the silence before time 0). Each sample is
divided by the summed squared window of the frames that actually reached it
(librosa's normalisation), so the first and last hops are exact too.

Two paths with the same output within 1e-6: :class:`OverlapAdd` (numpy FFT +
numba accumulate) and :class:`TorchOverlapAdd` (torch, on CUDA when present).
"""

from __future__ import annotations

import numpy as np
from numba import njit

from ..config import AudioConfig
from .stft import centre_sign, hann


@njit(cache=True, nogil=True)
def _accumulate(frames, w2, acc, wss, hop, n_done, out):
    # frames (k, N) windowed time frames; acc/wss (N,) state; out (k*hop,)
    n = frames.shape[1]
    half = n // 2
    for i in range(frames.shape[0]):
        for j in range(n):
            acc[j] += frames[i, j]
            wss[j] += w2[j]
        start = (n_done + i) * hop - half   # time of acc[0]
        for j in range(hop):
            if start + j >= 0 and wss[j] > 1e-10:
                out[i * hop + j] = acc[j] / wss[j]
            else:
                out[i * hop + j] = 0.0
        for j in range(n - hop):
            acc[j] = acc[j + hop]
            wss[j] = wss[j + hop]
        for j in range(n - hop, n):
            acc[j] = 0.0
            wss[j] = 0.0


class OverlapAdd:
    """Streaming iSTFT on the CPU. ``latency`` = ``n_fft/2`` samples."""

    def __init__(self, cfg: AudioConfig):
        self.cfg = cfg
        self.window = hann(cfg.n_fft)
        self._w2 = self.window ** 2
        self._sign = centre_sign(cfg.n_bins)
        self.latency_samples = cfg.n_fft // 2
        self.reset()

    def reset(self) -> None:
        self._acc = np.zeros(self.cfg.n_fft)
        self._wss = np.zeros(self.cfg.n_fft)
        self._n = 0

    def process(self, spec: np.ndarray) -> np.ndarray:
        """spec: ``(F, k)`` complex centre-referenced frames → ``(k * hop,)`` float64."""
        frames = np.fft.irfft(spec.T * self._sign, n=self.cfg.n_fft, axis=-1) * self.window
        return self._emit(frames, self._w2)

    def _emit(self, frames: np.ndarray, w2: np.ndarray) -> np.ndarray:
        k = frames.shape[0]
        out = np.empty(k * self.cfg.hop)
        _accumulate(np.ascontiguousarray(frames), w2, self._acc, self._wss,
                    self.cfg.hop, self._n, out)
        self._n += k
        return out

    def flush(self) -> np.ndarray:
        """Emit the samples still pending after the last frame (``n_fft/2`` of them),
        normalised by the frames that exist: no frame follows the last one."""
        k = self.latency_samples // self.cfg.hop
        return self._emit(np.zeros((k, self.cfg.n_fft)), np.zeros(self.cfg.n_fft))


class TorchOverlapAdd:
    """Streaming iSTFT in torch; runs on ``device`` (CUDA when present).

    Same arithmetic as :class:`OverlapAdd`, with the block's frames inverted in
    one batched ``irfft`` and summed with ``fold``.
    """

    def __init__(self, cfg: AudioConfig, device: str = "auto", dtype=None):
        import torch

        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        self.torch = torch
        self.cfg = cfg
        self.device = torch.device(device)
        self.dtype = dtype or torch.float64
        self.window = torch.as_tensor(hann(cfg.n_fft), dtype=self.dtype, device=self.device)
        self._w2 = self.window ** 2
        self._sign = torch.as_tensor(centre_sign(cfg.n_bins), dtype=self.dtype, device=self.device)
        self.latency_samples = cfg.n_fft // 2
        self.reset()

    def reset(self) -> None:
        t = self.torch
        # the part of the last frames that reaches past the samples emitted so far
        carry = self.cfg.n_fft - self.cfg.hop
        self._acc = t.zeros(carry, dtype=self.dtype, device=self.device)
        self._wss = t.zeros(carry, dtype=self.dtype, device=self.device)
        self._n = 0

    def process(self, spec):
        """spec: ``(F, k)`` complex (numpy or torch) → ``(k * hop,)`` torch tensor on the device."""
        t = self.torch
        spec = t.as_tensor(spec, device=self.device)
        frames = t.fft.irfft(spec.T * self._sign, n=self.cfg.n_fft, dim=-1).to(self.dtype) * self.window
        return self._emit(frames, self._w2)

    def _emit(self, frames, w2):
        t = self.torch
        n, hop = self.cfg.n_fft, self.cfg.hop
        k = frames.shape[0]
        # overlap-add the k frames and the carried state into one buffer
        total = (k - 1) * hop + n
        buf = t.nn.functional.fold(frames.T.unsqueeze(0), output_size=(1, total),
                                   kernel_size=(1, n), stride=(1, hop)).reshape(total)
        wbuf = t.nn.functional.fold(w2.unsqueeze(1).expand(n, k).unsqueeze(0),
                                    output_size=(1, total), kernel_size=(1, n),
                                    stride=(1, hop)).reshape(total)
        buf[:n - hop] += self._acc
        wbuf[:n - hop] += self._wss
        ready, wready = buf[:k * hop], wbuf[:k * hop]
        times = t.arange(k * hop, device=self.device) + (self._n * hop - n // 2)
        ok = (times >= 0) & (wready > 1e-10)
        out = t.where(ok, ready / t.where(ok, wready, t.ones_like(wready)), t.zeros_like(ready))
        self._acc = buf[k * hop:].clone()
        self._wss = wbuf[k * hop:].clone()
        self._n += k
        return out

    def flush(self):
        """Emit the ``n_fft/2`` pending samples (see :meth:`OverlapAdd.flush`)."""
        k = self.latency_samples // self.cfg.hop
        zeros = self.torch.zeros((k, self.cfg.n_fft), dtype=self.dtype, device=self.device)
        return self._emit(zeros, self.torch.zeros_like(self._w2))
