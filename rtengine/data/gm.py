"""General MIDI level 1: program names (0-based numbers), families, ranges.

Families follow NSynth's instrument families where General MIDI has a match
(keyboard, mallet, organ, guitar, bass, string, brass, reed, flute, synth_lead,
vocal) and keep GM's own group names otherwise (synth_pad, synth_fx, ethnic,
percussive, sound_fx).
"""

from __future__ import annotations

PROGRAM_NAMES = [
    # 0-7 piano
    "Acoustic Grand Piano", "Bright Acoustic Piano", "Electric Grand Piano", "Honky-tonk Piano",
    "Electric Piano 1", "Electric Piano 2", "Harpsichord", "Clavinet",
    # 8-15 chromatic percussion
    "Celesta", "Glockenspiel", "Music Box", "Vibraphone", "Marimba", "Xylophone",
    "Tubular Bells", "Dulcimer",
    # 16-23 organ
    "Drawbar Organ", "Percussive Organ", "Rock Organ", "Church Organ", "Reed Organ",
    "Accordion", "Harmonica", "Tango Accordion",
    # 24-31 guitar
    "Acoustic Guitar (nylon)", "Acoustic Guitar (steel)", "Electric Guitar (jazz)",
    "Electric Guitar (clean)", "Electric Guitar (muted)", "Overdriven Guitar",
    "Distortion Guitar", "Guitar Harmonics",
    # 32-39 bass
    "Acoustic Bass", "Electric Bass (finger)", "Electric Bass (pick)", "Fretless Bass",
    "Slap Bass 1", "Slap Bass 2", "Synth Bass 1", "Synth Bass 2",
    # 40-47 strings
    "Violin", "Viola", "Cello", "Contrabass", "Tremolo Strings", "Pizzicato Strings",
    "Orchestral Harp", "Timpani",
    # 48-55 ensemble
    "String Ensemble 1", "String Ensemble 2", "Synth Strings 1", "Synth Strings 2",
    "Choir Aahs", "Voice Oohs", "Synth Voice", "Orchestra Hit",
    # 56-63 brass
    "Trumpet", "Trombone", "Tuba", "Muted Trumpet", "French Horn", "Brass Section",
    "Synth Brass 1", "Synth Brass 2",
    # 64-71 reed
    "Soprano Sax", "Alto Sax", "Tenor Sax", "Baritone Sax", "Oboe", "English Horn",
    "Bassoon", "Clarinet",
    # 72-79 pipe
    "Piccolo", "Flute", "Recorder", "Pan Flute", "Blown Bottle", "Shakuhachi", "Whistle",
    "Ocarina",
    # 80-87 synth lead
    "Lead 1 (square)", "Lead 2 (sawtooth)", "Lead 3 (calliope)", "Lead 4 (chiff)",
    "Lead 5 (charang)", "Lead 6 (voice)", "Lead 7 (fifths)", "Lead 8 (bass + lead)",
    # 88-95 synth pad
    "Pad 1 (new age)", "Pad 2 (warm)", "Pad 3 (polysynth)", "Pad 4 (choir)",
    "Pad 5 (bowed)", "Pad 6 (metallic)", "Pad 7 (halo)", "Pad 8 (sweep)",
    # 96-103 synth effects
    "FX 1 (rain)", "FX 2 (soundtrack)", "FX 3 (crystal)", "FX 4 (atmosphere)",
    "FX 5 (brightness)", "FX 6 (goblins)", "FX 7 (echoes)", "FX 8 (sci-fi)",
    # 104-111 ethnic
    "Sitar", "Banjo", "Shamisen", "Koto", "Kalimba", "Bagpipe", "Fiddle", "Shanai",
    # 112-119 percussive
    "Tinkle Bell", "Agogo", "Steel Drums", "Woodblock", "Taiko Drum", "Melodic Tom",
    "Synth Drum", "Reverse Cymbal",
    # 120-127 sound effects
    "Guitar Fret Noise", "Breath Noise", "Seashore", "Bird Tweet", "Telephone Ring",
    "Helicopter", "Applause", "Gunshot",
]
assert len(PROGRAM_NAMES) == 128

# (first program, family, lowest pitch, highest pitch) per group of 8 programs;
# the pitch range is where the instrument sounds like itself in FluidR3_GM.
_GROUPS = [
    (0, "keyboard", 21, 108), (8, "mallet", 48, 96), (16, "organ", 36, 96),
    (24, "guitar", 40, 84), (32, "bass", 28, 60), (40, "string", 36, 96),
    (48, "string", 36, 96), (56, "brass", 40, 84), (64, "reed", 40, 88),
    (72, "flute", 55, 96), (80, "synth_lead", 36, 96), (88, "synth_pad", 36, 96),
    (96, "synth_fx", 36, 96), (104, "ethnic", 40, 88), (112, "percussive", 40, 84),
    (120, "sound_fx", 48, 72),
]
# exceptions inside a group
_FAMILY_OVERRIDES = {52: "vocal", 53: "vocal", 54: "vocal", 85: "vocal", 91: "vocal"}
_RANGE_OVERRIDES = {
    9: (72, 108), 10: (60, 100), 13: (65, 108), 14: (60, 77),
    40: (55, 100), 41: (48, 88), 42: (36, 76), 43: (28, 55), 47: (36, 60),
    56: (52, 86), 57: (40, 74), 58: (28, 58), 60: (40, 76), 64: (56, 88),
    65: (49, 80), 66: (44, 76), 67: (36, 68), 68: (58, 92), 69: (52, 81),
    70: (34, 72), 71: (50, 92), 72: (74, 105),
}


def family(program: int) -> str:
    """Instrument family of a 0-based GM program."""
    if program in _FAMILY_OVERRIDES:
        return _FAMILY_OVERRIDES[program]
    return _GROUPS[program // 8][1]


def pitch_range(program: int) -> tuple[int, int]:
    """Playable MIDI pitch range ``(lo, hi)`` (inclusive) of a 0-based GM program."""
    if program in _RANGE_OVERRIDES:
        return _RANGE_OVERRIDES[program]
    _, _, lo, hi = _GROUPS[program // 8]
    return lo, hi


def name(program: int) -> str:
    """GM name of a 0-based program."""
    return PROGRAM_NAMES[program]


# General MIDI percussion keys (channel 9) used by the phrase grooves
KICK, SIDE_STICK, SNARE, CLAP, CLOSED_HAT, PEDAL_HAT, OPEN_HAT = 36, 37, 38, 39, 42, 44, 46
LOW_TOM, MID_TOM, HIGH_TOM, CRASH, RIDE, TAMBOURINE, COWBELL = 45, 47, 50, 49, 51, 54, 56
# GM drum kits are chosen by program change on channel 9 (FluidR3: 0 standard,
# 8 room, 16 power, 24 electronic, 25 TR-808, 32 jazz, 40 brush)
DRUM_KITS = {0: "Standard", 8: "Room", 16: "Power", 24: "Electronic", 25: "TR-808",
             32: "Jazz", 40: "Brush"}
