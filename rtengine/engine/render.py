"""Offline render: the live engine without a sound card.

The host loop asks the :class:`BlockAdapter` for blocks of ``block_size``
samples exactly as the sound-card callback would; the result does not depend
on ``block_size``. It runs as fast as the CPU allows.
"""

from __future__ import annotations

import sys

import numpy as np

from ..errors import UserError
from .adapter import BlockAdapter
from .chain import Engine


def default_length(engine: Engine, seconds: float | None) -> int:
    """Samples to render: ``seconds`` if given, else the source's length plus
    the engine's latency (so the tail is heard); endless sources need seconds."""
    sr = engine.cfg.sample_rate
    if seconds is not None:
        if seconds <= 0:
            raise UserError(f"--duration must be positive, got {seconds:g}")
        return int(round(seconds * sr))
    frames = engine.source.length_frames
    if frames is None:
        raise UserError(f"the source ({engine.source.describe()}) has no end; give --duration")
    return frames * engine.cfg.hop + engine.latency_samples


def render(engine: Engine, n_samples: int, block_size: int = 256, progress: bool = False) -> np.ndarray:
    """Render ``n_samples`` through the block adapter in host blocks of ``block_size``."""
    if engine.source.live_only:
        raise UserError(f"the source ({engine.source.describe()}) needs a sound card; "
                        f"use 'rtengine play'")
    if block_size < 1:
        raise UserError(f"--block-size must be at least 1, got {block_size}")
    if not engine.prepared:
        engine.prepare(max(1, min(64, -(-block_size // engine.cfg.hop))))
    adapter = BlockAdapter(engine, max_block=block_size)
    out = np.empty(n_samples, dtype=np.float32)
    bar = None
    if progress:
        from tqdm import tqdm
        bar = tqdm(total=n_samples, unit="sample", unit_scale=True, file=sys.stderr,
                   desc="render", mininterval=0.2)
    pos = 0
    while pos < n_samples:
        n = min(block_size, n_samples - pos)
        adapter.process_into(out[pos:pos + n])
        pos += n
        if bar is not None:
            bar.update(n)
    if bar is not None:
        bar.close()
    return out


def plot_spectrogram(audio: np.ndarray, sample_rate: int, path, title: str = "") -> None:
    """Write a log-magnitude spectrogram PNG (time in s, frequency in Hz)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from ..io import atomic_path

    n_fft, hop = 1024, 256
    x = np.asarray(audio, dtype=np.float64)
    if len(x) < n_fft:
        x = np.pad(x, (0, n_fft - len(x)))
    frames = np.lib.stride_tricks.sliding_window_view(x, n_fft)[::hop]
    spec = np.abs(np.fft.rfft(frames * np.hanning(n_fft), axis=1)).T
    db = 20 * np.log10(np.maximum(spec, 1e-6))
    t = (np.arange(spec.shape[1]) * hop + n_fft / 2) / sample_rate
    f = np.fft.rfftfreq(n_fft, 1 / sample_rate)
    fig, ax = plt.subplots(figsize=(10, 4), dpi=100)
    im = ax.pcolormesh(t, f, db, shading="auto", vmin=db.max() - 90, vmax=db.max(), cmap="magma")
    ax.set_xlabel("time (s)")
    ax.set_ylabel("frequency (Hz)")
    ax.set_title(title or "spectrogram")
    fig.colorbar(im, ax=ax, label="dB")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
