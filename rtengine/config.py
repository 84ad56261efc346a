"""Audio configurations shared by every stage and model.

A configuration fixes the sample rate, the STFT and the mel analysis. Stages and
model cards record theirs; the engine refuses to chain stages whose
configurations differ.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from .errors import UserError


@dataclass(frozen=True)
class AudioConfig:
    """Sample rate, STFT and mel conventions.

    The STFT uses a periodic Hann window of ``n_fft`` samples, hop ``hop``; frame
    ``n`` is centred on sample ``n * hop`` and its phase is referenced to the
    window centre (see :mod:`rtengine.dsp.stft`). Log-mel is
    ``ln(max(mel_magnitude, log_floor))`` with Slaney-normalised bands.
    """

    name: str
    sample_rate: int
    n_fft: int
    hop: int
    n_mels: int
    fmin: float = 0.0
    fmax: float | None = None
    log_floor: float = 1e-5

    @property
    def n_bins(self) -> int:
        """Number of one-sided frequency bins F = n_fft/2 + 1."""
        return self.n_fft // 2 + 1

    @property
    def mel_fmax(self) -> float:
        return self.sample_rate / 2 if self.fmax is None else self.fmax

    @property
    def frame_rate(self) -> float:
        """Frames per second (one frame per hop)."""
        return self.sample_rate / self.hop

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "AudioConfig":
        try:
            return cls(**d)
        except TypeError as e:
            raise UserError(f"bad audio config {d!r}: {e}") from None

    def check_same(self, other: "AudioConfig", what: str, other_what: str) -> None:
        """Raise a :class:`UserError` naming both sides if the configs differ."""
        if self != other:
            raise UserError(
                f"audio configs differ: {what} uses {self.describe()}, "
                f"{other_what} uses {other.describe()}"
            )

    def describe(self) -> str:
        return (f"'{self.name}' ({self.sample_rate} Hz, n_fft {self.n_fft}, "
                f"hop {self.hop}, {self.n_mels} mels)")


CONFIGS = {
    # the engine's default family
    "22k": AudioConfig("22k", 22050, 1024, 256, 80),
    # the PG vocoder paper's configuration
    "44k": AudioConfig("44k", 44100, 2048, 256, 96),
}


def get_config(name: str | AudioConfig) -> AudioConfig:
    """Look up a named configuration (``'22k'`` or ``'44k'``)."""
    if isinstance(name, AudioConfig):
        return name
    try:
        return CONFIGS[name]
    except KeyError:
        raise UserError(
            f"unknown audio config {name!r}; expected one of {', '.join(CONFIGS)}"
        ) from None
