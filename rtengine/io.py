"""Reading and writing audio and mel files, with errors that name the file.

Outputs are written atomically: to a temporary file in the destination folder,
then renamed, so an interrupted run never leaves a half-written file.
"""

from __future__ import annotations

import functools
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from .config import AudioConfig
from .dsp.resample import resample
from .errors import UserError


def read_audio(path: str | os.PathLike, sample_rate: int) -> np.ndarray:
    """Mono float32 audio at ``sample_rate`` from any file soundfile reads."""
    import soundfile as sf

    path = Path(path)
    if not path.exists():
        raise UserError(f"{path}: no such file")
    try:
        data, sr = sf.read(str(path), dtype="float32", always_2d=True)
    except Exception as e:  # soundfile raises several types for bad files
        raise UserError(f"{path}: not a readable audio file ({_first_line(e)})") from None
    if data.shape[0] == 0:
        raise UserError(f"{path}: the audio file is empty")
    mono = data.mean(axis=1)
    if not np.all(np.isfinite(mono)):
        raise UserError(f"{path}: the audio contains NaN or infinite samples")
    if sr != sample_rate:
        mono = resample(mono, sr, sample_rate).astype(np.float32)
    return mono


def read_mel(path: str | os.PathLike, cfg: AudioConfig) -> np.ndarray:
    """A log-mel ``.npy`` of shape ``(n_mels, frames)``, checked against ``cfg``."""
    path = Path(path)
    if not path.exists():
        raise UserError(f"{path}: no such file")
    try:
        mel = np.load(str(path), allow_pickle=False)
    except Exception as e:
        raise UserError(f"{path}: not a readable .npy file ({_first_line(e)})") from None
    if mel.ndim != 2 or mel.shape[0] != cfg.n_mels:
        raise UserError(f"{path}: mel has shape {mel.shape}, expected ({cfg.n_mels}, frames) "
                        f"for audio config {cfg.describe()}")
    if mel.shape[1] < 1:
        raise UserError(f"{path}: mel has no frames")
    if not np.all(np.isfinite(mel)):
        raise UserError(f"{path}: mel contains NaN or infinite values")
    return mel.astype(np.float32)


@functools.lru_cache(maxsize=None)
def _umask() -> int:
    """The process's umask, read once (reading it means setting it, which
    would race with other threads creating files)."""
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextmanager
def atomic_path(path: str | os.PathLike):
    """Yield a temporary path beside ``path``; rename it over ``path`` on success."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=path.suffix or ".tmp",
                               dir=str(path.parent))
    os.close(fd)
    try:
        yield tmp
        # mkstemp creates the file private (0600); the result gets the mode any
        # new file gets here (0666 less the umask), as a plain open() would
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def check_audio_suffix(path: Path) -> tuple[str, str | None]:
    """soundfile's ``(format, subtype)`` for an output path's extension
    (``.wav`` is 32-bit float); a clear error for an unknown one."""
    import soundfile as sf

    fmt = sf.check_format(path.suffix[1:].upper()) if path.suffix else False
    if not fmt:
        raise UserError(f"{path}: unknown audio format {path.suffix!r} (use .wav, .flac or .ogg)")
    return path.suffix[1:].upper(), ("FLOAT" if path.suffix.lower() == ".wav" else None)


def write_audio(path: str | os.PathLike, audio: np.ndarray, sample_rate: int) -> None:
    """Write mono float audio atomically; the format follows the extension
    (``.wav`` is written as 32-bit float)."""
    import soundfile as sf

    path = Path(path)
    fmt, subtype = check_audio_suffix(path)
    with atomic_path(path) as tmp:
        sf.write(tmp, np.asarray(audio, dtype=np.float32), sample_rate, subtype=subtype, format=fmt)


def write_npy(path: str | os.PathLike, array: np.ndarray) -> None:
    """Save a ``.npy`` atomically."""
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            np.save(f, array)


def _first_line(e: Exception) -> str:
    text = str(e).strip().splitlines()
    return text[0] if text else type(e).__name__
