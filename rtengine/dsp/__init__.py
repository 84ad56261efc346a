"""Spectral DSP core: numpy and numba only, no torch.

Data flow of the model-free vocoder::

    audio ─ stft ─► |X| ─ mel ─► log-mel ─ mel_to_magnitude ─► M
    M ─ pghi ─► (omega, tau) ─ integrator ─► phi ─ ola ─► audio
"""
