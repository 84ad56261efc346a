"""Cached feature extraction for training.

Features are computed once per clip by an *extractor* (audio ``(L,)`` → a
dict of frame-major arrays ``(T, D_key)``) and stored, all clips concatenated,
one ``.npy`` per key in a cache folder under ``runs/``; training memory-maps
them. The folder name is a hash of the clip list, the audio config and the
extractor's name and version, so a change of any of them builds a new cache;
a cache is written to a temporary folder and renamed when complete.

:class:`FrameCropDataset` serves random crops of ``crop`` frames from the
cached clips (a clip is drawn with probability proportional to its length).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch.utils.data import Dataset

from ..config import AudioConfig

Extractor = Callable[[np.ndarray, AudioConfig], dict]


def pg_features(x: np.ndarray, cfg: AudioConfig) -> dict:
    """PG vocoder features of one clip, each frame-major ``(T, D)``:

    * ``log_mel`` ``(T, n_mels)`` float32: the engine's log-mel;
    * ``log_mag`` ``(T, F)`` float16: ``ln(max(|X|, 1e-5))`` of the Hann STFT;
    * ``dm``, ``dn`` ``(T, F)`` float16: reassignment bin offsets (clipped);
    * ``lam`` ``(T, F)`` float16: λ of the target offsets (PG paper eq. 12).
    The linear magnitude (the loss weights) is ``exp(log_mag)``.
    """
    from ..dsp.mel import magnitude_to_mel
    from ..dsp.phase_gradient import lambda_map, reassignment_offsets

    mag, dm, dn = reassignment_offsets(np.asarray(x, dtype=np.float64), cfg)
    mel = np.log(np.maximum(magnitude_to_mel(mag, cfg), cfg.log_floor)).astype(np.float32)
    lam = lambda_map(dm, dn)
    log_mag = np.log(np.maximum(mag, cfg.log_floor))
    return {"log_mel": mel.T.copy(),
            "log_mag": log_mag.T.astype(np.float16),
            "dm": dm.T.astype(np.float16),
            "dn": dn.T.astype(np.float16),
            "lam": lam.T.astype(np.float16)}


pg_features.version = "pg-1"  # type: ignore[attr-defined]


def dm_prior_features(n_iter: int) -> Extractor:
    """An extractor of the neural vocoder's Δm prior (``dm_prior`` ``(T, F)``
    float16, :func:`rtengine.dsp.pghi.frequency_offsets_from_mel` of the
    engine's log-mel), cached apart from :func:`pg_features` so the costly
    reassignment features are shared by networks with and without a prior."""
    def dm_prior(x: np.ndarray, cfg: AudioConfig) -> dict:
        from ..dsp.mel import log_mel
        from ..dsp.pghi import frequency_offsets_from_mel

        return {"dm_prior": frequency_offsets_from_mel(log_mel(x, cfg), cfg, n_iter).T.astype(np.float16)}

    dm_prior.version = f"prior-1-nnls{n_iter}"  # type: ignore[attr-defined]
    return dm_prior


def cache_key(paths: list[str], cfg: AudioConfig, extractor: Extractor) -> str:
    h = hashlib.sha1()
    h.update(json.dumps([sorted(paths), cfg.to_dict(), extractor.__name__,
                         getattr(extractor, "version", "")]).encode())
    return h.hexdigest()[:12]


class FeatureCache:
    """Memory-mapped features of many clips: ``arrays[key]`` ``(N_frames, D)``,
    clip ``i`` at rows ``starts[i]:starts[i] + lengths[i]``."""

    def __init__(self, folder: str | os.PathLike):
        self.folder = Path(folder)
        self.index = json.loads((self.folder / "index.json").read_text())
        self.starts = np.asarray(self.index["starts"], dtype=np.int64)
        self.lengths = np.asarray(self.index["lengths"], dtype=np.int64)
        self.paths = self.index["paths"]
        self.arrays = {k: np.load(self.folder / f"{k}.npy", mmap_mode="r") for k in self.index["keys"]}

    def __len__(self) -> int:
        return len(self.starts)

    def merge(self, other: "FeatureCache") -> "FeatureCache":
        """Add the arrays of another cache of the same clips (same frame counts)."""
        if other.paths != self.paths or not np.array_equal(other.lengths, self.lengths):
            raise ValueError(f"{other.folder} does not hold the clips of {self.folder}")
        self.arrays.update(other.arrays)
        return self

    def clip(self, i: int) -> dict:
        """All features of clip ``i``, each ``(T_i, D)`` (copies)."""
        s, n = self.starts[i], self.lengths[i]
        return {k: np.array(a[s:s + n]) for k, a in self.arrays.items()}


def build_cache(paths: list[str], cfg: AudioConfig, root: str | os.PathLike,
                extractor: Extractor = pg_features, progress: bool = True,
                extra: dict | None = None) -> FeatureCache:
    """Features of the audio files ``paths`` in ``root/<hash>/`` (built once)."""
    from ..io import read_audio

    folder = Path(root) / f"{extractor.__name__}-{cache_key(paths, cfg, extractor)}"
    if (folder / "index.json").exists():
        return FeatureCache(folder)
    tmp = folder.with_name(folder.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    parts: dict[str, list[np.ndarray]] = {}
    lengths = []
    it = paths
    if progress:
        from tqdm import tqdm

        it = tqdm(paths, desc=f"features {folder.name}", mininterval=5.0)
    for p in it:
        feats = extractor(read_audio(p, cfg.sample_rate), cfg)
        n = {v.shape[0] for v in feats.values()}
        assert len(n) == 1, f"{p}: features disagree on the frame count {n}"
        lengths.append(n.pop())
        for k, v in feats.items():
            parts.setdefault(k, []).append(v)
    for k, vs in parts.items():
        np.save(tmp / f"{k}.npy", np.concatenate(vs, axis=0))
        parts[k] = []
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(int).tolist()
    index = {"paths": list(paths), "starts": starts, "lengths": [int(n) for n in lengths],
             "keys": sorted(parts), "audio": cfg.to_dict(), "extractor": extractor.__name__,
             "version": getattr(extractor, "version", ""), "extra": extra or {}}
    (tmp / "index.json").write_text(json.dumps(index))
    shutil.rmtree(folder, ignore_errors=True)
    os.replace(tmp, folder)
    return FeatureCache(folder)


class FrameCropDataset(Dataset):
    """Random crops of ``crop`` frames from a :class:`FeatureCache`.

    ``len`` is ``samples_per_epoch``; item ``i`` of epoch ``e`` is a crop drawn
    from ``(seed, e, i)``, so a resumed run or another process reproduces it.
    Items are dicts of float32 tensors ``(D, crop)`` (feature-major, as
    ``Conv1d`` wants them).
    """

    def __init__(self, cache: FeatureCache, crop: int, samples_per_epoch: int = 4096, seed: int = 0):
        self.cache = cache
        self.crop = int(crop)
        self.samples = int(samples_per_epoch)
        self.seed = int(seed)
        self.epoch = 0
        ok = cache.lengths >= crop
        if not ok.any():
            raise ValueError(f"no clip has {crop} frames")
        self.clips = np.flatnonzero(ok)
        w = (cache.lengths[self.clips] - crop + 1).astype(np.float64)
        self.p = w / w.sum()

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return self.samples

    def __getitem__(self, i: int) -> dict:
        rng = np.random.default_rng([self.seed, self.epoch, int(i)])
        c = self.clips[rng.choice(len(self.clips), p=self.p)]
        start = self.cache.starts[c] + rng.integers(0, self.cache.lengths[c] - self.crop + 1)
        return {k: torch.from_numpy(np.asarray(a[start:start + self.crop], dtype=np.float32).T.copy())
                for k, a in self.cache.arrays.items()}
