"""Dataset synthesis and manifests.

Data flow of ``tools/make_dataset.py``::

    preset plan (seeded ClipSpec list) ─ midi ─► .mid per batch
      ─ fluidsynth (one launch per batch) ─► long render ─ cut ─► clip WAVs
      ─► manifest.jsonl (one row per clip)

* :mod:`.midi`: a tiny standard-MIDI-file writer (times in seconds);
* :mod:`.gm`: General MIDI program names, families and playable ranges;
* :mod:`.presets`: the ``nc``, ``notes`` and ``phrases`` plans;
* :mod:`.render`: FluidSynth rendering, cutting, peak normalisation;
* :mod:`.manifest`: manifest rows, splits, atomic writes.
"""
