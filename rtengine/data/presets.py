"""Seeded plans of MIDI clips: the ``nc``, ``notes`` and ``phrases`` presets.

A plan is a list of :class:`ClipSpec`; clip ``i`` depends only on the seed and
``i`` (its own RNG), so a plan of ``count`` clips is a prefix of a longer one
and ``--limit`` / ``--count`` changes never reshuffle what was rendered.
Times inside a clip are in seconds from the clip start.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

import numpy as np

from . import gm
from .midi import DRUM_CHANNEL

NOTE_NAMES = ["C", "C#", "D", "D#", "E", "F", "F#", "G", "G#", "A", "A#", "B"]


def note_name(pitch: int) -> str:
    """``60 -> 'C4'``."""
    return f"{NOTE_NAMES[pitch % 12]}{pitch // 12 - 1}"


@dataclass
class ClipSpec:
    """One clip to render.

    notes: ``(t, dur, channel, pitch, velocity)``; programs: ``(t, channel,
    program)``; ``duration`` is the clip length in seconds (the cut), which
    includes the release after the last note-off.
    """

    id: str
    preset: str
    split: str
    duration: float
    notes: list[tuple[float, float, int, int, int]] = field(default_factory=list)
    programs: list[tuple[float, int, int]] = field(default_factory=list)
    labels: dict = field(default_factory=dict)
    group: str = ""  # clips with the same group are rendered together


def unit_hash(key: str, seed: int) -> float:
    """A deterministic number in [0, 1) from a key and a seed."""
    return int.from_bytes(hashlib.sha1(f"{seed}:{key}".encode()).digest()[:8], "big") / 2.0**64


def hash_split(key: str, seed: int, val: float = 0.1, test: float = 0.1) -> str:
    """Deterministic train/val/test assignment from a key (80/10/10 by default)."""
    h = unit_hash(key, seed)
    return "test" if h < test else "val" if h < test + val else "train"


# ---------------------------------------------------------------- nc
NC_INSTRUMENTS = [  # (label, 0-based GM program)
    ("rhodes", 4), ("church_organ", 19), ("string_ensemble", 48), ("nylon_guitar", 24),
]
NC_CHORDS = {  # chord type -> intervals above the root (semitones)
    "note": (0,),
    "octave": (0, 12),
    "twelfth": (0, 19),
    "fifth": (0, 7),
    "open_triad": (0, 7, 16),
    "close_triad": (0, 4, 7),
    "major_seventh": (0, 4, 7, 11),
}
NC_ROOTS = range(36, 97)  # C2..C7
NC_NOTE_SECONDS = 1.0
NC_CLIP_SECONDS = 1.5  # the note plus 0.5 s of its release
NC_VELOCITY = 100


def nc_split(root: int, seed: int) -> str:
    """Split by root pitch so every split spans C2..C7: one root in ten goes to
    test and one to val (which ones depends on the seed)."""
    phase = np.random.default_rng(seed).permutation(10)
    k = (root - NC_ROOTS.start) % 10
    return "test" if k == phase[0] else "val" if k == phase[1] else "train"


def plan_nc(seed: int, count: int | None = None) -> list[ClipSpec]:
    """The PG paper's pitch-stability set: 4 instruments x 7 combinations x
    61 roots (C2..C7) = 1708 one-second notes and chords. ``count`` is ignored
    (the set is fixed); use ``--limit`` for a subset."""
    clips = []
    for inst, program in NC_INSTRUMENTS:
        for chord, intervals in NC_CHORDS.items():
            for root in NC_ROOTS:
                pitches = [root + iv for iv in intervals]
                clips.append(ClipSpec(
                    id=f"nc-{inst}-{chord}-{root:03d}", preset="nc",
                    split=nc_split(root, seed), duration=NC_CLIP_SECONDS,
                    notes=[(0.0, NC_NOTE_SECONDS, 0, p, NC_VELOCITY) for p in pitches],
                    programs=[(0.0, 0, program)],
                    labels={"pitches": pitches, "root": root, "root_name": note_name(root),
                            "chord": chord, "intervals": list(intervals),
                            "program": program, "instrument": inst,
                            "program_name": gm.name(program), "family": gm.family(program),
                            "velocity": NC_VELOCITY, "note_seconds": NC_NOTE_SECONDS},
                    group=inst))
    return clips


# ---------------------------------------------------------------- notes
NOTES_PROGRAMS = [p for p in range(112) if not 96 <= p < 104]  # melodic, no synth FX
NOTES_VELOCITIES = (25, 50, 75, 100, 127)  # NSynth's velocities
NOTES_CLIP_SECONDS = 4.0
NOTES_HOLD_SECONDS = 3.0


def plan_notes(seed: int, count: int = 3000) -> list[ClipSpec]:
    """NSynth-like single notes: random melodic GM program, a pitch in its
    playable range, one of NSynth's five velocities; held 3 s, 4 s clip."""
    clips = []
    for i in range(count):
        rng = np.random.default_rng([seed, 1, i])
        program = int(rng.choice(NOTES_PROGRAMS))
        lo, hi = gm.pitch_range(program)
        pitch = int(rng.integers(lo, hi + 1))
        vel = int(rng.choice(NOTES_VELOCITIES))
        cid = f"notes-{i:05d}-p{program:03d}-m{pitch:03d}-v{vel:03d}"
        clips.append(ClipSpec(
            id=cid, preset="notes", split=hash_split(cid, seed), duration=NOTES_CLIP_SECONDS,
            notes=[(0.0, NOTES_HOLD_SECONDS, 0, pitch, vel)], programs=[(0.0, 0, program)],
            labels={"pitches": [pitch], "pitch_name": note_name(pitch), "program": program,
                    "program_name": gm.name(program), "family": gm.family(program),
                    "velocity": vel, "chord": "note", "note_seconds": NOTES_HOLD_SECONDS},
            group="notes"))
    return clips


# ---------------------------------------------------------------- phrases
PHRASE_SECONDS = 6.0
SCALES = {"major": (0, 2, 4, 5, 7, 9, 11), "minor": (0, 2, 3, 5, 7, 8, 10)}
PROGRESSIONS = {  # scale degrees (0-based) of the chord roots
    "major": [(0, 4, 5, 3), (0, 5, 3, 4), (1, 4, 0, 0), (0, 3, 4, 3), (0, 3, 0, 4), (5, 3, 0, 4)],
    "minor": [(0, 5, 2, 6), (0, 3, 4, 0), (0, 6, 5, 6), (0, 3, 6, 2), (0, 5, 3, 4)],
}
ROMAN = ["I", "II", "III", "IV", "V", "VI", "VII"]
CHORD_PROGRAMS = [0, 1, 4, 5, 16, 19, 24, 25, 48, 49, 50, 88, 89, 90, 94]
ARP_PROGRAMS = [0, 4, 6, 8, 11, 12, 24, 25, 27, 46, 80, 81, 108]
LEAD_PROGRAMS = [0, 11, 22, 26, 40, 56, 61, 64, 65, 68, 71, 73, 80, 81, 85]
BASS_PROGRAMS = [32, 33, 34, 35, 36, 38, 39, 42, 43]
STYLES = {  # style -> layers
    "progression": ("chords",), "progression_bass": ("chords", "bass"),
    "arpeggio": ("arpeggio",), "arpeggio_pad": ("arpeggio", "chords"),
    "melody_bass": ("melody", "bass"), "groove": ("drums",),
    "groove_bass": ("drums", "bass"), "band": ("drums", "bass", "chords", "melody"),
    "band_arp": ("drums", "bass", "arpeggio", "melody"),
}
CHANNELS = {"chords": 0, "arpeggio": 1, "melody": 2, "bass": 3, "drums": DRUM_CHANNEL}


def _triad(key: int, scale, degree: int, base: int) -> list[int]:
    """Diatonic triad on ``degree``, voiced at or above MIDI ``base``."""
    pcs = [(key + scale[(degree + k) % 7]) % 12 for k in (0, 2, 4)]
    root = base + (pcs[0] - base) % 12
    out, last = [], root - 1
    for pc in pcs:
        p = last + 1 + (pc - last - 1) % 12
        out.append(p)
        last = p
    return out


def _humanise(rng, vel: float, spread: float = 8) -> int:
    return int(np.clip(round(vel + rng.normal(0, spread)), 20, 127))


def plan_phrases(seed: int, count: int = 1500) -> list[ClipSpec]:
    """6 s clips with structure at several timescales: a chord progression
    (bars), a bass line (beats), arpeggios and melodies (sub-beats), drum grooves
    on GM channel 10; random tempo (70-150 BPM), key, mode, style and programs."""
    return [_phrase(seed, i) for i in range(count)]


def _phrase(seed: int, i: int) -> ClipSpec:
    rng = np.random.default_rng([seed, 2, i])
    style = str(rng.choice(list(STYLES)))
    layers = STYLES[style]
    tempo = int(rng.integers(70, 151))
    beat = 60.0 / tempo
    key = int(rng.integers(0, 12))
    mode = str(rng.choice(["major", "minor"]))
    scale = SCALES[mode]
    prog = PROGRESSIONS[mode][int(rng.integers(len(PROGRESSIONS[mode])))]
    chord_beats = int(rng.choice([2, 4]))
    end = PHRASE_SECONDS - 0.05  # everything stops before the cut
    n_chords = int(np.ceil(PHRASE_SECONDS / (chord_beats * beat)))
    chords = []  # (t, dur, degree, triad)
    for c in range(n_chords):
        t = c * chord_beats * beat
        deg = prog[c % len(prog)]
        chords.append((t, min(chord_beats * beat, end - t), deg, _triad(key, scale, deg, 55)))

    notes, programs, layer_programs = [], [], {}
    for layer in layers:
        ch = CHANNELS[layer]
        if layer == "drums":
            kit = int(rng.choice(list(gm.DRUM_KITS)))
            programs.append((0.0, ch, kit))
            layer_programs[layer] = kit
            notes += _groove(rng, beat, end, ch)
            continue
        pool = {"chords": CHORD_PROGRAMS, "arpeggio": ARP_PROGRAMS,
                "melody": LEAD_PROGRAMS, "bass": BASS_PROGRAMS}[layer]
        program = int(rng.choice(pool))
        programs.append((0.0, ch, program))
        layer_programs[layer] = program
        if layer == "chords":
            vel = rng.integers(60, 95)
            for t, dur, _, triad in chords:
                notes += [(t, dur * 0.95, ch, p, _humanise(rng, vel, 5)) for p in triad]
        elif layer == "arpeggio":
            step = beat / int(rng.choice([2, 4]))
            shape = str(rng.choice(["up", "down", "updown"]))
            vel = rng.integers(60, 100)
            for t0, dur, _, triad in chords:
                tones = triad + [triad[0] + 12]
                seq = tones if shape == "up" else tones[::-1] if shape == "down" else tones + tones[-2:0:-1]
                n = int(round(dur / step))
                for k in range(n):
                    t = t0 + k * step
                    if t < end:
                        notes.append((t, step * 0.9, ch, seq[k % len(seq)] + 12,
                                      _humanise(rng, vel + (12 if k % 4 == 0 else 0))))
        elif layer == "bass":
            pattern = str(rng.choice(["roots", "root_fifth", "eighths"]))
            vel = rng.integers(75, 110)
            for t0, dur, deg, triad in chords:
                root = 28 + (triad[0] - 28) % 12
                n_beats = max(1, int(round(dur / beat)))
                for b in range(n_beats):
                    if pattern == "roots" and b % 2:
                        continue
                    p = root + 7 if pattern == "root_fifth" and b % 2 else root
                    sub = (0.0, 0.5) if pattern == "eighths" else (0.0,)
                    length = beat * (0.45 if pattern == "eighths" else 0.9 if pattern != "roots" else 1.8)
                    for s in sub:
                        t = t0 + (b + s) * beat
                        if t < end:
                            notes.append((t, min(length, end - t), ch, p, _humanise(rng, vel)))
        elif layer == "melody":
            notes += _melody(rng, key, scale, chords, beat, end, ch)
    pitches = sorted({n[3] for n in notes if n[2] != DRUM_CHANNEL})
    cid = f"phrases-{i:05d}-{style}"
    labels = {
        "style": style, "layers": list(layers), "tempo_bpm": tempo,
        "key": NOTE_NAMES[key], "mode": mode,
        # the chords actually played (the progression cycles if the clip is long)
        "progression": [ROMAN[c[2]] if mode == "major" else ROMAN[c[2]].lower() for c in chords],
        "chord_times": [round(c[0], 4) for c in chords],
        "chord_seconds": round(chord_beats * beat, 4),
        "programs": {k: v for k, v in layer_programs.items()},
        "program_names": {k: (gm.DRUM_KITS[v] + " kit" if k == "drums" else gm.name(v))
                          for k, v in layer_programs.items()},
        "families": sorted({gm.family(v) for k, v in layer_programs.items() if k != "drums"}
                           | ({"drums"} if "drums" in layer_programs else set())),
        "pitches": pitches, "n_notes": len(notes),
    }
    return ClipSpec(id=cid, preset="phrases", split=hash_split(cid, seed),
                    duration=PHRASE_SECONDS, notes=notes, programs=programs,
                    labels=labels, group="phrases")


def _groove(rng, beat: float, end: float, ch: int) -> list:
    """A 16-step drum groove repeated per bar, with a fill in the last bar."""
    step = beat / 4
    kick = {0, 8} | ({int(rng.choice([6, 10, 14]))} if rng.random() < 0.6 else set())
    snare = {4, 12}
    hat_every = int(rng.choice([1, 2, 4]))
    hat = gm.RIDE if rng.random() < 0.2 else gm.CLOSED_HAT
    out = []
    n_steps = int(end / step)
    last_bar = (n_steps // 16 - 1) * 16 if n_steps >= 32 else -1
    for s in range(n_steps):
        t, k = s * step, s % 16
        if s == 0:
            out.append((t, 0.2, ch, gm.CRASH, _humanise(rng, 100)))
        if k in kick:
            out.append((t, 0.1, ch, gm.KICK, _humanise(rng, 105)))
        if last_bar >= 0 and s >= last_bar + 8 and s < last_bar + 16 and rng.random() < 0.5:
            out.append((t, 0.1, ch, int(rng.choice([gm.HIGH_TOM, gm.MID_TOM, gm.LOW_TOM])),
                        _humanise(rng, 90)))
        elif k in snare:
            out.append((t, 0.1, ch, gm.SNARE, _humanise(rng, 100)))
        if k % hat_every == 0:
            out.append((t, 0.05, ch, hat, _humanise(rng, 85 if k % 4 == 0 else 65)))
    return out


def _melody(rng, key, scale, chords, beat, end, ch) -> list:
    """A one-bar rhythmic motif repeated per chord, its pitches walking the scale
    and landing on chord tones on strong beats."""
    pool = [p for p in range(60, 85) if (p - key) % 12 in scale]
    rhythms = [(1, 1, 1, 1), (1.5, 0.5, 1, 1), (0.5, 0.5, 1, 2), (1, 0.5, 0.5, 2), (2, 1, 1)]
    motif = rhythms[int(rng.integers(len(rhythms)))]
    idx = int(rng.integers(len(pool) // 3, 2 * len(pool) // 3))
    vel = rng.integers(70, 110)
    out = []
    t = 0.0
    while t < end:
        chord = next((c for c in reversed(chords) if c[0] <= t + 1e-9), chords[0])
        for k, dur_beats in enumerate(motif):
            if t >= end:
                break
            if k == 0:  # strong beat: nearest chord tone
                tones = [i for i, p in enumerate(pool) if p % 12 in {q % 12 for q in chord[3]}]
                idx = min(tones, key=lambda i: abs(i - idx)) if tones else idx
            else:
                idx = int(np.clip(idx + rng.choice([-2, -1, 1, 2]), 0, len(pool) - 1))
            dur = dur_beats * beat
            if rng.random() > 0.1:  # occasional rest
                out.append((t, min(dur * 0.9, end - t), ch, pool[idx], _humanise(rng, vel)))
            t += dur
    return out


PRESETS = {"nc": plan_nc, "notes": plan_notes, "phrases": plan_phrases}
DEFAULT_COUNTS = {"nc": None, "notes": 3000, "phrases": 1500}


def detune(plan: list[ClipSpec], cents: float, seed: int) -> list[ClipSpec]:
    """Detune each clip of a plan by a random amount, uniform in ``±cents``
    (seeded by the clip's id, so a clip's detune does not depend on the
    rest of the plan), through the pitch wheel. The labels keep the nominal
    ``pitches`` and add ``detune_cents``; :func:`sounding_pitches` combines
    them. Training data off the semitone grid keeps a model from learning
    where equal-tempered partials lie instead of reading them from its input."""
    for c in plan:
        c.labels["detune_cents"] = round(cents * (2.0 * unit_hash(f"detune:{c.id}", seed) - 1.0), 2)
    return plan


def sounding_pitches(labels: dict) -> list[float]:
    """A clip's pitches as sounded: the nominal MIDI ``pitches`` plus its
    ``detune_cents`` (fractional MIDI numbers)."""
    d = float(labels.get("detune_cents", 0.0)) / 100.0
    return [p + d for p in labels.get("pitches") or []]
