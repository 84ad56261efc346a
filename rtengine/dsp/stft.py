"""Short-time Fourier transform in the engine's convention.

Convention (every stage and test relies on it):

* window: periodic Hann of ``n_fft`` samples;
* frame ``n`` is centred on sample ``n * hop``; the signal is zero-padded by
  ``n_fft/2`` on both sides, so a signal of ``L`` samples has ``1 + L // hop``
  frames (librosa's ``center=True, pad_mode="constant"`` framing);
* the phase of frame ``n`` is referenced to the window **centre**: a click at
  sample ``n * hop`` has zero phase in every bin of frame ``n``. This is
  librosa's STFT times ``(-1)^m``. With it, the phase step per bin (``tau``)
  of a click ``d`` samples after the frame centre is ``-2*pi*d/n_fft``, and the
  phase advance per hop (``omega``) of a sinusoid at ``f`` Hz is
  ``2*pi*f*hop/sample_rate``, both without a ``pi``-per-bin term;
* ``X = M * exp(1j * phi)``.
"""

from __future__ import annotations

import numpy as np

from ..config import AudioConfig


def hann(n: int) -> np.ndarray:
    """Periodic Hann window, shape ``(n,)``, float64."""
    return 0.5 - 0.5 * np.cos(2.0 * np.pi * np.arange(n) / n)


def centre_sign(n_bins: int) -> np.ndarray:
    """``(-1)^m`` for ``m < n_bins``: moves the phase reference from the window
    start to its centre (and back)."""
    return np.where(np.arange(n_bins) % 2 == 0, 1.0, -1.0)


def n_frames(n_samples: int, hop: int) -> int:
    """Frames of a signal of ``n_samples``: ``1 + n_samples // hop``."""
    return 1 + n_samples // hop


def frame_signal(x: np.ndarray, n_fft: int, hop: int) -> np.ndarray:
    """Centred frames of ``x`` (shape ``(L,)``) as a strided view, shape ``(T, n_fft)``."""
    pad = n_fft // 2
    xp = np.concatenate([np.zeros(pad), np.asarray(x, dtype=np.float64), np.zeros(pad)])
    t = n_frames(len(x), hop)
    return np.lib.stride_tricks.as_strided(
        xp, shape=(t, n_fft), strides=(hop * xp.strides[0], xp.strides[0]), writeable=False)


def spectrum_of_frames(frames: np.ndarray, window: np.ndarray) -> np.ndarray:
    """Centre-referenced spectra of windowed frames.

    frames: ``(T, N)`` real. Returns ``(F, T)`` complex128. Each row is
    transformed on its own, so the result for a frame does not depend on which
    other frames are in the batch (the streaming invariance needs this).
    """
    spec = np.fft.rfft(frames * window, axis=-1)
    spec *= centre_sign(spec.shape[-1])
    return spec.T


def stft(x: np.ndarray, cfg: AudioConfig, window: np.ndarray | None = None) -> np.ndarray:
    """STFT of a mono signal.

    x: ``(L,)``. window: ``(n_fft,)``, default periodic Hann (the reassignment
    analysis passes ``t*h`` and ``h'``). Returns ``(F, T)`` complex128 with
    ``F = n_fft/2 + 1`` and ``T = 1 + L // hop``.
    """
    w = hann(cfg.n_fft) if window is None else window
    return spectrum_of_frames(frame_signal(x, cfg.n_fft, cfg.hop), w)


def istft(spec: np.ndarray, cfg: AudioConfig, length: int | None = None) -> np.ndarray:
    """Inverse of :func:`stft` by weighted overlap-add.

    spec: ``(F, T)`` complex, centre-referenced. Returns ``(length,)`` float64,
    default ``length = (T - 1) * hop``. It runs the streaming
    :class:`rtengine.dsp.ola.OverlapAdd` and drops its ``n_fft/2`` samples of
    latency, so offline and streaming synthesis are one code path.
    """
    from .ola import OverlapAdd

    ola = OverlapAdd(cfg)
    out = np.concatenate([ola.process(spec), ola.flush()])[ola.latency_samples:]
    if length is None:
        length = (spec.shape[1] - 1) * cfg.hop
    if len(out) < length:
        out = np.pad(out, (0, length - len(out)))
    return out[:length]


class StreamingSTFT:
    """Audio samples in, centre-referenced spectra out, frame ``n`` as soon as
    sample ``n*hop + n_fft/2 - 1`` has arrived (``n_fft/2`` samples of look-ahead).

    :meth:`flush` pads the end with zeros and emits the frames :func:`stft`
    would, so streaming and offline analysis agree exactly.
    """

    def __init__(self, cfg: AudioConfig):
        self.cfg = cfg
        self.window = hann(cfg.n_fft)
        self.latency_samples = cfg.n_fft // 2
        self.reset()

    def reset(self) -> None:
        self._buf = np.zeros(self.cfg.n_fft // 2)   # the zero padding before time 0
        self._frames = 0
        self._samples = 0

    def process(self, x: np.ndarray) -> np.ndarray:
        """x: ``(k,)`` new samples → ``(F, j)`` spectra of the frames now complete."""
        self._samples += len(x)
        self._buf = np.concatenate([self._buf, np.asarray(x, dtype=np.float64)])
        return self._emit()

    def _emit(self) -> np.ndarray:
        n, hop = self.cfg.n_fft, self.cfg.hop
        j = max(0, (len(self._buf) - n) // hop + 1)
        if j == 0:
            return np.zeros((self.cfg.n_bins, 0), dtype=np.complex128)
        frames = np.lib.stride_tricks.as_strided(
            self._buf, shape=(j, n), strides=(hop * self._buf.strides[0], self._buf.strides[0]),
            writeable=False)
        spec = spectrum_of_frames(frames, self.window)
        self._buf = self._buf[j * hop:].copy()
        self._frames += j
        return spec

    def flush(self) -> np.ndarray:
        """Emit the remaining frames of a finished signal (``1 + L // hop`` in all)."""
        total = n_frames(self._samples, self.cfg.hop)
        missing = total - self._frames
        if missing <= 0:
            return np.zeros((self.cfg.n_bins, 0), dtype=np.complex128)
        need = (missing - 1) * self.cfg.hop + self.cfg.n_fft - len(self._buf)
        self._buf = np.concatenate([self._buf, np.zeros(max(need, 0))])
        return self._emit()[:, :missing]
