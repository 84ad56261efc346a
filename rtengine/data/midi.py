"""A tiny standard MIDI file (SMF) writer.

Only what the dataset renderer needs: one format-0 track, note on/off, program
and controller changes, with event times given in **seconds**. The file uses
1000 ticks per quarter note and a tempo of 1 000 000 µs per quarter note, so one
tick is exactly one millisecond and no tempo map is needed to place notes.

Channels are 0-based here (channel 9 is the General MIDI drum channel, shown as
"channel 10" in most software).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

TICKS_PER_QUARTER = 1000
US_PER_QUARTER = 1_000_000  # so 1 tick = 1 ms
DRUM_CHANNEL = 9


def _vlq(n: int) -> bytes:
    """MIDI variable-length quantity (7 bits per byte, high bit = more bytes follow)."""
    if n < 0:
        raise ValueError(f"negative delta time {n}")
    out = [n & 0x7F]
    n >>= 7
    while n:
        out.append(0x80 | (n & 0x7F))
        n >>= 7
    return bytes(reversed(out))


def _check(name: str, value: int, hi: int) -> int:
    value = int(value)
    if not 0 <= value <= hi:
        raise ValueError(f"MIDI {name} {value} out of range 0..{hi}")
    return value


@dataclass
class MidiFile:
    """Events collected in seconds, written as one SMF format-0 track.

    Events at the same tick are written in insertion order, except that
    note-offs come before note-ons (so a re-struck note is not cut short).
    """

    events: list[tuple[int, int, int, bytes]] = field(default_factory=list)
    _n: int = 0

    def _add(self, t: float, prio: int, data: bytes) -> None:
        tick = int(round(max(0.0, t) * 1000.0))
        self.events.append((tick, prio, self._n, data))
        self._n += 1

    def program(self, t: float, channel: int, program: int) -> None:
        """Program change (``program`` 0-based GM number)."""
        ch = _check("channel", channel, 15)
        self._add(t, 1, bytes([0xC0 | ch, _check("program", program, 127)]))

    def control(self, t: float, channel: int, controller: int, value: int) -> None:
        """Control change (e.g. 7 volume, 10 pan, 91 reverb send, 93 chorus send)."""
        ch = _check("channel", channel, 15)
        self._add(t, 1, bytes([0xB0 | ch, _check("controller", controller, 127),
                               _check("value", value, 127)]))

    def note(self, t: float, dur: float, channel: int, pitch: int, velocity: int) -> None:
        """A note from ``t`` to ``t + dur`` seconds (``pitch`` MIDI number, ``velocity`` 1..127)."""
        ch = _check("channel", channel, 15)
        p = _check("pitch", pitch, 127)
        v = _check("velocity", velocity, 127)
        if v == 0:
            return
        self._add(t, 2, bytes([0x90 | ch, p, v]))
        self._add(t + max(dur, 0.001), 0, bytes([0x80 | ch, p, 0]))

    def pitch_bend(self, t: float, channel: int, cents: float, bend_range: float = 2.0) -> None:
        """Pitch wheel set to ``cents`` (the GM default bend range is ±2
        semitones; ``bend_range`` says which the synthesiser uses)."""
        ch = _check("channel", channel, 15)
        v = int(round(8192 + 8192 * cents / (100.0 * bend_range)))
        v = min(max(v, 0), 16383)
        self._add(t, 1, bytes([0xE0 | ch, v & 0x7F, v >> 7]))

    def all_notes_off(self, t: float) -> None:
        """Controller 123 (all notes off) on every channel."""
        for ch in range(16):
            self._add(t, 0, bytes([0xB0 | ch, 123, 0]))

    def all_sound_off(self, t: float) -> None:
        """Controller 120 (all sound off: voices stop at once, releases
        included) on every channel."""
        for ch in range(16):
            self._add(t, 0, bytes([0xB0 | ch, 120, 0]))

    @property
    def end_time(self) -> float:
        return max((e[0] for e in self.events), default=0) / 1000.0

    def to_bytes(self) -> bytes:
        track = bytearray()
        track += _vlq(0) + bytes([0xFF, 0x51, 0x03]) + US_PER_QUARTER.to_bytes(3, "big")
        last = 0
        for tick, _, _, data in sorted(self.events, key=lambda e: (e[0], e[1], e[2])):
            track += _vlq(tick - last) + data
            last = tick
        track += _vlq(0) + b"\xFF\x2F\x00"  # end of track
        header = b"MThd" + struct.pack(">IHHH", 6, 0, 1, TICKS_PER_QUARTER)
        return header + b"MTrk" + struct.pack(">I", len(track)) + bytes(track)

    def save(self, path) -> None:
        with open(path, "wb") as f:
            f.write(self.to_bytes())


def read_notes(data: bytes) -> list[tuple[float, int, int, int]]:
    """Parse a file written by :class:`MidiFile` back into ``(t_seconds, channel,
    pitch, velocity)`` note-ons (for tests; handles format 0 with this file's
    fixed tempo only)."""
    if data[:4] != b"MThd":
        raise ValueError("not a standard MIDI file")
    division = struct.unpack(">H", data[12:14])[0]
    pos = 14
    if data[pos:pos + 4] != b"MTrk":
        raise ValueError("missing track chunk")
    length = struct.unpack(">I", data[pos + 4:pos + 8])[0]
    trk = data[pos + 8:pos + 8 + length]
    i, tick, notes, status = 0, 0, [], 0
    tempo = US_PER_QUARTER
    while i < len(trk):
        delta = 0
        while True:
            b = trk[i]
            i += 1
            delta = (delta << 7) | (b & 0x7F)
            if not b & 0x80:
                break
        tick += delta
        b = trk[i]
        if b == 0xFF:
            kind, n = trk[i + 1], trk[i + 2]
            if kind == 0x51:
                tempo = int.from_bytes(trk[i + 3:i + 3 + n], "big")
            i += 3 + n
            continue
        status = b
        i += 1
        kind = status & 0xF0
        nbytes = 1 if kind in (0xC0, 0xD0) else 2
        args = trk[i:i + nbytes]
        i += nbytes
        if kind == 0x90 and args[1] > 0:
            notes.append((tick * tempo / division / 1e6, status & 0x0F, args[0], args[1]))
    return notes
