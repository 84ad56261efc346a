"""The variation job: a LatentFT variation of a whole audio file, offline.

audio → log-mel → LatentFT (band gains over the latent spectrum) → PGHI →
peak-safe audio. By default the file's latent is masked as a whole, as the
paper conditions on a clip (``operator="clip"``), which the live stage
cannot do; ``live=True`` runs the live stage's one-sided operator instead
(what ``rtengine render`` of a LatentFT patch plays, without automation).
"""

from __future__ import annotations

from typing import Callable

import numpy as np

from .errors import UserError

CEILING_DB = -1.0


def parse_gains(n_bands: int, keep: str | None, gains: str | None) -> np.ndarray:
    """Band gains from ``--keep`` (band indices, e.g. ``0,1``) or ``--gains``
    (one value per band, 0 remove … 1 keep … 2 boost); neither: keep all."""
    if n_bands not in (2, 4, 8):
        raise UserError(f"--bands must be 2, 4 or 8, got {n_bands}")
    if keep is not None and gains is not None:
        raise UserError("give --keep or --gains, not both")
    if gains is not None:
        try:
            g = np.array([float(v) for v in gains.split(",")])
        except ValueError:
            raise UserError(f"--gains: expected {n_bands} numbers separated by commas, got {gains!r}") from None
        if len(g) != n_bands or not np.all((g >= 0) & (g <= 2)):
            raise UserError(f"--gains: expected {n_bands} values in 0..2, got {gains!r}")
        return g
    g = np.ones(n_bands)
    if keep is not None:
        try:
            idx = [int(v) for v in keep.split(",") if v.strip()]
        except ValueError:
            raise UserError(f"--keep: expected band indices 0..{n_bands - 1}, got {keep!r}") from None
        if not idx or not all(0 <= i < n_bands for i in idx):
            raise UserError(f"--keep: expected band indices 0..{n_bands - 1}, got {keep!r}")
        g = np.zeros(n_bands)
        g[idx] = 1.0
    return g


def latent_variation(audio: np.ndarray, cfg, gains: np.ndarray, model: str = "latentft-22k",
                     steps: int | None = None, guidance: float = 1.0, seed: int = 0, live: bool = False,
                     lock: float | None = None, lock_latent: float | None = None,
                     progress: Callable[[int, int], None] | None = None) -> np.ndarray:
    """A variation of ``audio`` (mono, ``cfg``'s rate) that keeps the latent
    bands as ``gains`` says (one per band of a 2-, 4- or 8-band partition).
    Unset settings come from the model card's ``inference`` section, as the
    stage's do. ``progress(done, total)`` is called once per decoder chunk.
    Returns audio of the same length, finite, peak at most −1 dBFS."""
    import torch

    from .dsp.mel import log_mel
    from .dsp.vocoder import vocode_pghi
    from .nn.latentft import LOG_MEL_MIN, gains_to_mask, load_model, stream_generate
    from .stages.latentft import find_model, inference_settings

    weights = find_model(model)
    net = load_model(weights)
    card = inference_settings(weights, net.arch)          # the stage's defaults
    if lock_latent and not card["carries_levels"]:
        raise UserError(f"--lock-latent: model {model} has no level channels in its latent")
    mel = log_mel(np.asarray(audio, np.float32), cfg)
    mask = torch.from_numpy(gains_to_mask(np.asarray(gains, float), len(gains), 2 * net.window))[None]
    out = stream_generate(
        net, [(mel, mask, 1.0)], mel.shape[1], steps=card["steps"] if steps is None else int(steps),
        scale=guidance, seed=seed, sigma_min=card["sigma_min"], operator="stream" if live else "clip",
        lock=card["lock"] if lock is None else float(lock),
        lock_latent=card["lock_latent"] if lock_latent is None else float(lock_latent),
        on_chunk=progress)[0].numpy()
    y = vocode_pghi(np.maximum(out, LOG_MEL_MIN).astype(np.float32), cfg, length=len(audio))
    y = np.nan_to_num(y, nan=0.0, posinf=0.0, neginf=0.0)
    peak, ceiling = float(np.abs(y).max(initial=0.0)), 10 ** (CEILING_DB / 20)
    return (y * (ceiling / peak) if peak > ceiling else y).astype(np.float32)
