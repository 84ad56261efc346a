"""Training task of the PG vocoder for the shared loop (:mod:`rtengine.train.loop`).

Data: cached PG features (:func:`rtengine.train.features.pg_features`) of the
train split of one or more manifests, random crops of ``crop`` frames.
Statistics for the network's standardisation (per mel band and per linear bin
of the log-magnitude; offset scales) come from the training cache.
Validation: the eq. 11 loss on fixed crops of validation clips, and the
harmonic error (PG paper eq. 13, :func:`rtengine.metrics.harmonic_error`) of a
few notes and chords vocoded through the full pipeline (network → heap
integration → overlap-add).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import torch

from ..config import AudioConfig
from ..data.presets import sounding_pitches
from ..nn.pg_losses import dct_matrix, pg_loss
from ..nn.pgvoc import PGVocConfig, PGVocNet, count_parameters, save_weights
from .features import FeatureCache, FrameCropDataset


def feature_stats(cache: FeatureCache, max_frames: int = 200_000, seed: int = 0) -> dict:
    """Standardisation statistics of a training cache (a random subset of frames)."""
    n = cache.arrays["log_mel"].shape[0]
    rng = np.random.default_rng(seed)
    idx = np.sort(rng.choice(n, size=min(n, max_frames), replace=False))
    mel = np.asarray(cache.arrays["log_mel"][idx], dtype=np.float64)
    lm = np.asarray(cache.arrays["log_mag"][idx], dtype=np.float64)
    dm = np.asarray(cache.arrays["dm"][idx], dtype=np.float64)
    dn = np.asarray(cache.arrays["dn"][idx], dtype=np.float64)
    w = np.exp(2 * lm)                      # the offsets matter where the power is
    return {"mel_mean": mel.mean(0), "mel_std": np.maximum(mel.std(0), 1e-3),
            "mag_mean": lm.mean(0), "mag_std": np.maximum(lm.std(0), 1e-3),
            "dm_std": float(np.sqrt((w * dm ** 2).sum() / w.sum())),
            "dn_std": float(np.sqrt((w * dn ** 2).sum() / w.sum()))}


def warm_start(model: PGVocNet, path) -> dict:
    """Start ``model`` from the weights of another PG vocoder network of the
    same depth and kernel, computing the same function at the start.

    Tensors of equal shape are copied. A wider network (more channels, or the
    Δm prior's extra input channels) gets the other's weights in the leading
    block; the weights *reading* its new channels start at zero and those
    computing them keep their random start, so the new units change nothing
    until training uses them. If ``model`` takes the Δm prior and the other
    network does not, its Δm outputs start at zero too, so it begins as the
    other one's magnitude with PGHI's Δm. Returns what was done.
    """
    src = torch.load(str(path), map_location="cpu", weights_only=True)
    old = src["state_dict"]
    new = model.state_dict()
    copied, widened = [], []
    with torch.no_grad():
        for k, v in new.items():
            if k not in old:
                continue
            o = old[k]
            if o.shape == v.shape:
                v.copy_(o)
                copied.append(k)
            elif k.startswith("net.") and o.dim() == v.dim() and all(a <= b for a, b in zip(o.shape, v.shape)):
                if v.dim() == 3:                       # conv weight (out, in, kernel)
                    v[:, o.shape[1]:] = 0.0            # nothing reads the new inputs yet
                v[tuple(slice(0, n) for n in o.shape)] = o
                widened.append(k)
            else:
                raise ValueError(f"{path}: {k} has shape {tuple(o.shape)}, this network "
                                 f"{tuple(v.shape)}: not a narrower network of the same depth")
        if model.uses_prior and not src["config"].get("dm_prior_iter"):
            f = model.cfg.n_bins
            last = f"net.{len(model.net) - 1}"                       # the output convolution
            new[f"{last}.weight"][f:2 * f].zero_()
            new[f"{last}.bias"][f:2 * f].zero_()
    model.load_state_dict(new)
    return {"from": str(path), "copied": len(copied), "widened": widened,
            "steps_before": (src.get("extra") or {}).get("steps")}


def batch_targets(batch: dict) -> dict:
    """Cached features ``(B, D, T)`` → loss targets (adds the linear ``mag``)."""
    return {"log_mag": batch["log_mag"], "mag": torch.exp(batch["log_mag"]),
            "dm": batch["dm"], "dn": batch["dn"], "lam": batch["lam"]}


class PGVocTask:
    """The PG vocoder as a :class:`rtengine.train.loop.Task`."""

    def __init__(self, audio: AudioConfig, net_cfg: PGVocConfig, train_cache: FeatureCache,
                 val_cache: FeatureCache | None, crop: int = 96, samples_per_epoch: int = 8192,
                 seed: int = 0, val_herr: list[dict] | None = None, export_dir: str | None = None,
                 card: dict | None = None, init: str | None = None, pitch_offsets: bool = False):
        self.audio = audio
        self.train_cache = train_cache
        self.val_cache = val_cache
        self.crop = crop
        self.samples = samples_per_epoch
        self.seed = seed
        self.val_herr = val_herr or []
        self.export_dir = export_dir
        self.card = card or {}
        self.pitch_offsets = pitch_offsets
        self.model = PGVocNet(net_cfg, audio)
        self.stats = feature_stats(train_cache, seed=seed)
        self.model.set_stats(self.stats)
        if init:
            self.card["warm_start"] = warm_start(self.model, init)
        self.dct = dct_matrix(audio.n_bins)
        self._val_batches = self._fixed_val_batches() if val_cache is not None else []

    # ---------------------------------------------------------------- loop hooks
    def train_set(self):
        return FrameCropDataset(self.train_cache, self.crop, self.samples, self.seed)

    def loss(self, model, batch):
        dct = self.dct.to(batch["log_mel"].device)
        pred = model(batch["log_mel"], batch.get("dm_prior"))
        return pg_loss(pred, batch_targets(batch), dct, pitch_offsets=self.pitch_offsets)

    def _fixed_val_batches(self, n_clips: int = 32, batch: int = 8) -> list[dict]:
        c = self.val_cache
        order = np.random.default_rng(1234).permutation(len(c))[:n_clips]
        crops = []
        for i in order:
            n = int(min(c.lengths[i], 2 * self.crop))
            s = c.starts[i]
            crops.append({k: torch.from_numpy(np.asarray(a[s:s + n], dtype=np.float32).T.copy())
                          for k, a in c.arrays.items()})
        out = []
        by_len: dict[int, list] = {}
        for cr in crops:
            by_len.setdefault(cr["log_mel"].shape[1], []).append(cr)
        for group in by_len.values():
            for j in range(0, len(group), batch):
                g = group[j:j + batch]
                out.append({k: torch.stack([x[k] for x in g]) for k in g[0]})
        return out

    @torch.no_grad()
    def validate(self, model, device) -> dict:
        res: dict = {}
        if self._val_batches:
            tot, terms_sum, n = 0.0, {}, 0
            for b in self._val_batches:
                b = {k: v.to(device) for k, v in b.items()}
                loss, terms = self.loss(model, b)
                k = b["log_mel"].shape[0]
                tot += float(loss) * k
                for name, v in terms.items():
                    terms_sum[name] = terms_sum.get(name, 0.0) + float(v) * k
                n += k
            res["val_loss"] = tot / n
            res.update({f"val_{k}": v / n for k, v in terms_sum.items()})
        if self.val_herr:
            res.update(self.harmonic_error(model))
        res["_key"] = "val_loss"
        return res

    def harmonic_error(self, model) -> dict:
        """Mean H_err (semitones) of the validation notes and chords through the
        full vocoder: ``val_herr`` over all of them, ``val_herr_notes`` and
        ``val_herr_chords`` apart (the evaluation's two columns)."""
        from .. import metrics
        from ..dsp.mel import log_mel
        from ..io import read_audio
        from ..neural_vocoder import NeuralPGVocoder

        net = model
        was_training = net.training
        voc = NeuralPGVocoder(self.audio, net=net, device=str(next(net.parameters()).device))
        vals: dict[str, list[float]] = {}
        try:
            for row in self.val_herr:
                x = read_audio(row["abspath"], self.audio.sample_rate)
                y = voc.vocode_batch([log_mel(x, self.audio)])[0]
                n = min(len(x), len(y))
                h = metrics.harmonic_error(x[:n], y[:n], sounding_pitches(row["labels"]), self.audio.sample_rate)
                h = h[~np.isnan(h)]
                if len(h):
                    kind = metrics.clip_kind(row["labels"]) or "other"
                    vals.setdefault(kind, []).append(float(h.mean()))
        finally:
            net.set_streaming(False)
            net.train(was_training)
        every = [v for vs in vals.values() for v in vs]
        out = {"val_herr": float(np.mean(every)) if every else float("nan")}
        for kind in ("notes", "chords"):
            if vals.get(kind):
                out[f"val_herr_{kind}"] = float(np.mean(vals[kind]))
        return out

    def export(self, model, step: int, summary: dict) -> None:
        """Write the final weights (state dict + config + stats) and a run summary."""
        if not self.export_dir:
            return
        out = Path(self.export_dir)
        out.mkdir(parents=True, exist_ok=True)
        model = model.cpu().eval()
        save_weights(out / "weights.pt", model, self.audio,
                     extra={"steps": int(step), "params": count_parameters(model)})
        from ..data.manifest import atomic_write_text

        info = {"steps": int(step), "wall_s": summary["wall_s"], "params": count_parameters(model),
                "last": summary.get("last"), "val": summary.get("val"), "best": summary.get("best"),
                "stopped_early": summary.get("stopped_early"), "device": summary.get("device"),
                "world_size": summary.get("world_size"), "written": time.strftime("%Y-%m-%d %H:%M:%S"),
                **self.card}
        atomic_write_text(out / "train_summary.json", json.dumps(info, indent=2, default=float) + "\n")
        write_card(out, info, model=model, audio=self.audio)


def write_card(model_dir, info: dict, model=None, audio: AudioConfig | None = None,
               metrics: dict | None = None, performance: dict | None = None, notes: list | None = None) -> dict:
    """Write ``model_dir/card.yaml`` from a training summary (``train_summary.json``),
    keeping the ``metrics``, ``performance`` and ``notes`` of an existing card
    unless new ones are given. Returns the card."""
    import yaml

    from ..data.manifest import atomic_write_text
    from ..nn.pgvoc import load_weights

    model_dir = Path(model_dir)
    if model is None or audio is None:
        model, audio = load_weights(model_dir / "weights.pt")
    old = {}
    if (model_dir / "card.yaml").exists():
        old = yaml.safe_load((model_dir / "card.yaml").read_text()) or {}
    val = {k: v for k, v in (info.get("val") or {}).items() if not k.startswith("_")}
    card = {
        "name": model_dir.name,
        "type": "pgvoc",
        "paper": "Di Giorgi, Levy, Sharp: Mel spectrogram inversion with stable pitch (ISMIR 2022)",
        "audio": audio.to_dict(),
        "network": {**model.cfg.to_dict(), "parameters": count_parameters(model),
                    "lookahead_frames": model.lookahead,
                    "weights_mb": round((model_dir / "weights.pt").stat().st_size / 2 ** 20, 2)},
        "data": info.get("data"),
        "training": {"command": info.get("command"), "steps": info.get("steps"),
                     "wall_minutes": round(float(info.get("wall_s", 0)) / 60, 1),
                     "feature_seconds": info.get("feature_seconds"),
                     "device": info.get("device"), "world_size": info.get("world_size"),
                     "stopped_early": info.get("stopped_early"),
                     "optimizer": info.get("optimizer"),
                     "offset_loss": info.get("offset_loss", "bins"),
                     "warm_start": info.get("warm_start"),
                     "history": info.get("history"),
                     "paper_training": "Adam, lr 3e-5, batch 32, 1024 epochs (~2 days on 2 GPUs): "
                                       "not affordable here, hence the higher learning rate",
                     "final_train_loss": info.get("last"), "final_validation": val,
                     "best_validation": info.get("best")},
        "inference": old.get("inference"),
        "metrics": metrics if metrics is not None else old.get("metrics"),
        "performance": performance if performance is not None else old.get("performance"),
        "notes": notes if notes is not None else old.get("notes"),
    }
    atomic_write_text(model_dir / "card.yaml", yaml.safe_dump(card, sort_keys=False, width=100, allow_unicode=True))
    return card
