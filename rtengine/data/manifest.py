"""The dataset manifest: one JSON object per clip, one per line.

``manifest.jsonl`` row (paths relative to the manifest's folder)::

    {"id": "nc-rhodes-note-060", "path": "audio/test/nc-rhodes-note-060.wav",
     "split": "test", "preset": "nc", "duration": 1.5, "sample_rate": 22050,
     "peak_db": -14.2, "gain_db": 13.2,
     "labels": {"pitches": [60], "chord": "note", "program": 4, ...}}

``skipped.jsonl`` lists clips that rendered silent (``{"id", "reason"}``), so a
resumed run neither re-renders nor lists them.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from ..errors import UserError

REQUIRED = ("id", "path", "split", "preset", "duration", "sample_rate", "labels")
SPLITS = ("train", "val", "test")


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to a temporary file beside ``path``, then rename over it
    (:func:`rtengine.io.atomic_path`: the usual file mode, no torn file)."""
    from ..io import atomic_path

    with atomic_path(path) as tmp:
        Path(tmp).write_bytes(data)


def atomic_write_text(path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def write_jsonl(path, rows) -> None:
    """Atomically write rows as JSON lines."""
    atomic_write_text(path, "".join(json.dumps(r, sort_keys=True) + "\n" for r in rows))


def read_jsonl(path, strict: bool = False) -> list[dict]:
    """Rows of a JSON-lines file; ``[]`` if it does not exist. A torn last line
    (an interrupted append) is ignored unless ``strict``."""
    path = Path(path)
    if not path.exists():
        return []
    rows = []
    lines = path.read_text(encoding="utf-8").splitlines()
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError as e:
            if strict or n < len(lines):
                raise UserError(f"{path}:{n}: not valid JSON ({e.msg})") from None
    return rows


def validate_row(row: dict, where: str = "manifest") -> None:
    """Raise :class:`UserError` if a row lacks a field or has a bad split/type."""
    missing = [k for k in REQUIRED if k not in row]
    if missing:
        raise UserError(f"{where}: row {row.get('id', '?')!r} lacks {', '.join(missing)}")
    if row["split"] not in SPLITS:
        raise UserError(f"{where}: row {row['id']!r} has split {row['split']!r}, "
                        f"expected one of {', '.join(SPLITS)}")
    if not isinstance(row["labels"], dict):
        raise UserError(f"{where}: row {row['id']!r}: labels must be an object")


def load_manifest(path, split: str | None = None, limit: int | None = None) -> list[dict]:
    """Validated rows of a manifest (optionally one split, first ``limit`` rows),
    each with an added ``abspath`` to its audio file."""
    path = Path(path)
    if not path.exists():
        raise UserError(f"manifest {path} does not exist (make one with tools/make_dataset.py)")
    rows = read_jsonl(path, strict=True)
    for r in rows:
        validate_row(r, str(path))
        r["abspath"] = str((path.parent / r["path"]).resolve())
    if split is not None:
        rows = [r for r in rows if r["split"] == split]
    if limit is not None:
        rows = rows[:limit]
    return rows
