"""Objective metrics for vocoders and generators (numpy only).

Signals are mono float arrays ``(L,)`` at ``sr`` Hz; a pair ``(ref, est)`` is
cut to the shorter length first (vocoders may drop a partial last hop).
Spectra use the engine's STFT (:func:`rtengine.dsp.stft.stft`: periodic Hann,
centred frames, centre-referenced phase).

* pitch stability: :func:`harmonic_error` (PG vocoder paper, eq. 13);
* spectral distances: :func:`log_spectral_distance`, :func:`spectral_convergence`,
  :func:`log_mel_l1`, :func:`multi_resolution_stft`;
* waveform: :func:`si_sdr`;
* phase: :func:`instantaneous_frequency`, :func:`if_error`, :func:`if_error_signals`;
* LatentFT adherence (§4.2): :func:`loudness_curve`, :func:`onset_envelope`,
  :func:`bandpass_descriptor`, :func:`beat_spectrum`,
  :func:`loudness_correlation`, :func:`rhythm_similarity`.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

from .config import AudioConfig, get_config
from .dsp.mel import log_mel, mel_basis
from .dsp.stft import stft

EPS = 1e-10


def _align(ref: np.ndarray, est: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Both signals as float64, cut to the shorter length."""
    ref = np.asarray(ref, dtype=np.float64).reshape(-1)
    est = np.asarray(est, dtype=np.float64).reshape(-1)
    n = min(len(ref), len(est))
    return ref[:n], est[:n]


@lru_cache(maxsize=32)
def _cfg(sr: int, n_fft: int, hop: int) -> AudioConfig:
    """An ad-hoc analysis configuration (only the STFT fields matter)."""
    return AudioConfig(f"metric-{n_fft}-{hop}", int(sr), int(n_fft), int(hop), 80)


def magnitude(x: np.ndarray, sr: int = 22050, n_fft: int = 1024, hop: int = 256) -> np.ndarray:
    """|STFT| of ``x``: ``(L,)`` → ``(n_fft/2+1, 1 + L//hop)`` float64."""
    return np.abs(stft(np.asarray(x, dtype=np.float64), _cfg(sr, n_fft, hop)))


# ------------------------------------------------------------------ harmonic error
def midi_to_hz(p) -> np.ndarray:
    """MIDI pitch → Hz (A4 = 69 = 440 Hz)."""
    return 440.0 * 2.0 ** ((np.asarray(p, dtype=np.float64) - 69.0) / 12.0)


def harmonic_frame(sr: int) -> tuple[int, int]:
    """Frame and hop of the harmonic-error analysis: the paper's 4096/256 at
    44.1 kHz scaled to ``sr`` (2048/128 at 22.05 kHz), the frame rounded to a
    power of two."""
    n_fft = int(2 ** round(np.log2(4096 * sr / 44100)))
    hop = max(1, int(round(256 * sr / 44100)))
    return n_fft, hop


def partial_peaks(log_mag: np.ndarray, freqs: np.ndarray, sr: int, n_fft: int,
                  half_width: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Frequency and level of the spectral peak closest to each nominal frequency.

    log_mag: ``(F, T)`` log magnitude (any log base). freqs: ``(K,)`` nominal
    partial frequencies (Hz). half_width: ``(K,)`` search half-width (Hz); the
    search always covers at least the nearest bin and one bin either side.

    A peak is a bin not lower than its two neighbours; its frequency is refined
    by quadratic (parabolic) interpolation of the log magnitude over the three
    bins. Returns ``(f_hat, level)``, both ``(K, T)``: Hz (NaN where the range
    holds no peak) and the interpolated log magnitude at the peak.
    """
    n_bins, n_t = log_mag.shape
    binhz = sr / n_fft
    is_peak = np.zeros_like(log_mag, dtype=bool)
    is_peak[1:-1] = (log_mag[1:-1] >= log_mag[:-2]) & (log_mag[1:-1] >= log_mag[2:])
    f_hat = np.full((len(freqs), n_t), np.nan)
    level = np.full((len(freqs), n_t), -np.inf)
    for k, (f, w) in enumerate(zip(freqs, half_width)):
        centre = f / binhz
        lo = max(1, min(int(np.floor((f - w) / binhz)), int(round(centre)) - 1))
        hi = min(n_bins - 2, max(int(np.ceil((f + w) / binhz)), int(round(centre)) + 1))
        if hi < lo:
            continue
        bins = np.arange(lo, hi + 1)
        dist = np.where(is_peak[lo:hi + 1], np.abs(bins - centre)[:, None], np.inf)  # (B, T)
        j = np.argmin(dist, axis=0)
        found = np.isfinite(dist[j, np.arange(n_t)])
        m = lo + j
        a, b, c = log_mag[m - 1, np.arange(n_t)], log_mag[m, np.arange(n_t)], log_mag[m + 1, np.arange(n_t)]
        den = a - 2 * b + c
        delta = np.where(np.abs(den) > 1e-12, 0.5 * (a - c) / np.where(den == 0, 1, den), 0.0)
        delta = np.clip(delta, -0.5, 0.5)
        f_hat[k] = np.where(found, (m + delta) * binhz, np.nan)
        level[k] = np.where(found, b - 0.25 * (a - c) * delta, -np.inf)
    return f_hat, level


def harmonic_error_partials(ref: np.ndarray, est: np.ndarray, pitches, sr: int,
                            n_harmonics: int = 5, search_semitones: float = 0.75,
                            floor_db: float = 60.0) -> np.ndarray:
    """Per-partial harmonic error ``H_err[p, h, n]`` of the PG vocoder paper, eq. 13.

    ref, est: ``(L,)`` audio at ``sr`` Hz. pitches: MIDI numbers of the notes
    ``p`` (a chord lists several). For harmonic ``h = 1..n_harmonics`` (the
    fundamental and 4 harmonics by default) at nominal ``f = h * f0(p)``:

    * magnitude spectrum with frame/hop 4096/256 at 44.1 kHz, scaled to ``sr``
      (:func:`harmonic_frame`), Hann window;
    * ``f[p,h,n]`` (reference) and ``f̂[p,h,n]`` (estimate) are the peaks
      closest to the nominal frequency within ``±search_semitones`` (default
      0.75 semitone) but never more than ``±f0/2`` (so a neighbouring harmonic
      cannot be taken), refined by quadratic interpolation of the log magnitude;
    * ``H_err = 12 |log2(f̂ / f)|`` in semitones (eq. 13).

    Partials whose search range reaches Nyquist are skipped (NaN). A partial is
    scored in frame ``n`` only if the reference has a peak there no more than
    ``floor_db`` below the loudest reference partial of the clip (silence and
    the noise floor carry no pitch); if the estimate has no peak in the range,
    the error is the search half-width (the largest error the search can see).

    Returns ``(P, n_harmonics, T)`` float64, semitones, NaN where not scored.
    """
    ref, est = _align(ref, est)
    n_fft, hop = harmonic_frame(sr)
    pitches = np.atleast_1d(np.asarray(pitches, dtype=np.float64))
    f0 = midi_to_hz(pitches)                                    # (P,)
    h = np.arange(1, n_harmonics + 1)
    freqs = (f0[:, None] * h[None, :]).reshape(-1)              # (P*H,)
    half = np.minimum(freqs * (2 ** (search_semitones / 12) - 1), np.repeat(f0 / 2, n_harmonics))
    valid = freqs + half < sr / 2 - sr / n_fft                  # skip partials at/above Nyquist

    def logmag(x):
        return 20 * np.log10(magnitude(x, sr, n_fft, hop) + EPS)

    f_ref, lv_ref = partial_peaks(logmag(ref), freqs, sr, n_fft, half)
    f_est, _ = partial_peaks(logmag(est), freqs, sr, n_fft, half)
    top = np.max(lv_ref[valid]) if valid.any() and np.isfinite(lv_ref[valid]).any() else 0.0
    scored = valid[:, None] & np.isfinite(f_ref) & (lv_ref >= top - floor_db)
    max_err = 12 * np.log2((freqs + half) / freqs)              # (K,) semitones
    with np.errstate(invalid="ignore", divide="ignore"):
        err = 12 * np.abs(np.log2(f_est / f_ref))               # eq. 13
    err = np.where(np.isnan(f_est), max_err[:, None], err)
    err = np.where(scored, err, np.nan)
    return err.reshape(len(pitches), n_harmonics, -1)


def clip_kind(labels: dict) -> str | None:
    """'notes' (one pitch), 'chords' (more than one pitch class, as in the paper),
    or None (octaves, or clips without note labels)."""
    pitches = labels.get("pitches") or []
    if "chord" not in labels or not pitches:
        return None
    if len(pitches) == 1:
        return "notes"
    return "chords" if len({p % 12 for p in pitches}) > 1 else None


def harmonic_error(ref: np.ndarray, est: np.ndarray, pitches, sr: int, **kw) -> np.ndarray:
    """Harmonic error per frame: eq. 13 averaged over notes and partials.

    Same arguments as :func:`harmonic_error_partials`. Returns ``(T,)`` float64
    semitones (frame rate ``sr / hop``, hop from :func:`harmonic_frame`), NaN in
    frames where no partial is scored; take ``np.nanmean`` / ``np.nanmax``.
    """
    err = harmonic_error_partials(ref, est, pitches, sr, **kw)
    flat = err.reshape(-1, err.shape[-1])
    n = np.sum(~np.isnan(flat), axis=0)
    with np.errstate(invalid="ignore"):
        return np.where(n > 0, np.nansum(flat, axis=0) / np.maximum(n, 1), np.nan)


# ------------------------------------------------------------------ spectral distances
def log_spectral_distance_mag(ref_mag: np.ndarray, est_mag: np.ndarray) -> float:
    """LSD in dB between magnitudes ``(F, T)``: the frame mean of
    ``sqrt(mean_f (10 log10(|S_ref|² / |S_est|²))²)`` (powers floored at 1e-10)."""
    t = min(ref_mag.shape[-1], est_mag.shape[-1])
    p_ref = np.maximum(ref_mag[..., :t] ** 2, EPS)
    p_est = np.maximum(est_mag[..., :t] ** 2, EPS)
    d = 10 * np.log10(p_ref / p_est)
    return float(np.mean(np.sqrt(np.mean(d**2, axis=0))))


def log_spectral_distance(ref, est, sr: int = 22050, n_fft: int = 1024, hop: int = 256) -> float:
    """LSD (dB) between two signals ``(L,)``; see :func:`log_spectral_distance_mag`."""
    ref, est = _align(ref, est)
    return log_spectral_distance_mag(magnitude(ref, sr, n_fft, hop), magnitude(est, sr, n_fft, hop))


def spectral_convergence_mag(ref_mag: np.ndarray, est_mag: np.ndarray, db: bool = True) -> float:
    """``||S_ref − S_est||_F / ||S_ref||_F`` on magnitudes ``(F, T)``; in dB
    (``20 log10``) unless ``db=False``."""
    t = min(ref_mag.shape[-1], est_mag.shape[-1])
    r = np.linalg.norm(ref_mag[..., :t] - est_mag[..., :t]) / max(np.linalg.norm(ref_mag[..., :t]), EPS)
    return float(20 * np.log10(max(r, EPS))) if db else float(r)


def spectral_convergence(ref, est, sr: int = 22050, n_fft: int = 1024, hop: int = 256,
                         db: bool = True) -> float:
    """Spectral convergence (dB) between two signals ``(L,)``."""
    ref, est = _align(ref, est)
    return spectral_convergence_mag(magnitude(ref, sr, n_fft, hop), magnitude(est, sr, n_fft, hop), db)


def log_mel_l1(ref, est, cfg: str | AudioConfig = "22k") -> float:
    """Mean absolute difference of the engine's log-mel spectrograms (natural
    log units), ``(n_mels, T)`` each, as :func:`rtengine.dsp.mel.log_mel`."""
    cfg = get_config(cfg)
    ref, est = _align(ref, est)
    return float(np.mean(np.abs(log_mel(ref, cfg).astype(np.float64) - log_mel(est, cfg))))


def multi_resolution_stft(ref, est, sr: int = 22050,
                          resolutions=((512, 128), (1024, 256), (2048, 512))) -> dict:
    """Multi-resolution STFT distance.

    For each ``(n_fft, hop)``: spectral convergence as a ratio
    (:func:`spectral_convergence_mag` with ``db=False``) and the mean absolute
    difference of natural-log magnitudes (floored at 1e-7). Returns
    ``{"sc": mean ratio, "log_mag_l1": mean, "total": sc + log_mag_l1}``.
    """
    ref, est = _align(ref, est)
    sc, lm = [], []
    for n_fft, hop in resolutions:
        a, b = magnitude(ref, sr, n_fft, hop), magnitude(est, sr, n_fft, hop)
        sc.append(spectral_convergence_mag(a, b, db=False))
        lm.append(float(np.mean(np.abs(np.log(np.maximum(a, 1e-7)) - np.log(np.maximum(b, 1e-7))))))
    return {"sc": float(np.mean(sc)), "log_mag_l1": float(np.mean(lm)),
            "total": float(np.mean(sc) + np.mean(lm))}


def si_sdr(ref, est) -> float:
    """Scale-invariant signal-to-distortion ratio (dB): with ``a = <est, ref> /
    ||ref||²``, ``10 log10(||a ref||² / ||est − a ref||²)``."""
    ref, est = _align(ref, est)
    a = np.dot(est, ref) / max(np.dot(ref, ref), EPS)
    target = a * ref
    noise = est - target
    return float(10 * np.log10(max(np.dot(target, target), EPS) / max(np.dot(noise, noise), EPS)))


# ------------------------------------------------------------------ instantaneous frequency
def instantaneous_frequency(x, sr: int = 22050, n_fft: int = 1024, hop: int = 256):
    """Instantaneous frequency (Hz) from the phase advance between frames.

    With the centre-referenced STFT a sinusoid at ``f`` advances by
    ``2π f hop / sr`` per hop, so ``IF[m, n] = m sr/N + princarg(φ[m,n] − φ[m,n−1]
    − 2π m hop/N) · sr / (2π hop)``. x: ``(L,)``. Returns ``(IF, power)``, both
    ``(F, T−1)``: IF in Hz, and ``|X[m,n]|²`` (for weighting).
    """
    spec = stft(np.asarray(x, dtype=np.float64), _cfg(sr, n_fft, hop))
    m = np.arange(spec.shape[0])[:, None]
    dphi = np.angle(spec[:, 1:] * np.conj(spec[:, :-1]))         # φ[n] − φ[n−1], wrapped
    dev = np.angle(np.exp(1j * (dphi - 2 * np.pi * m * hop / n_fft)))
    inst = m * sr / n_fft + dev * sr / (2 * np.pi * hop)
    return inst, np.abs(spec[:, 1:]) ** 2


def if_error(if_ref: np.ndarray, if_est: np.ndarray, weights: np.ndarray | None = None) -> dict:
    """MAE and RMSE between two IF arrays (same shape, e.g. ``(F, T)``, Hz).
    ``weights`` (same shape, ≥ 0, e.g. the reference power) weights the mean.
    Returns ``{"mae": Hz, "rmse": Hz}``."""
    t = min(if_ref.shape[-1], if_est.shape[-1])
    d = np.asarray(if_est[..., :t], dtype=np.float64) - if_ref[..., :t]
    w = np.ones_like(d) if weights is None else np.asarray(weights, dtype=np.float64)[..., :t]
    w = w / max(w.sum(), EPS)
    return {"mae": float(np.sum(w * np.abs(d))), "rmse": float(np.sqrt(np.sum(w * d**2)))}


def if_error_signals(ref, est, sr: int = 22050, n_fft: int = 1024, hop: int = 256,
                     power_weighted: bool = True) -> dict:
    """IF error between two signals (:func:`instantaneous_frequency`, then
    :func:`if_error`), weighted by the reference power unless ``power_weighted``
    is False (then every bin counts the same, noise included)."""
    ref, est = _align(ref, est)
    if_r, p_r = instantaneous_frequency(ref, sr, n_fft, hop)
    if_e, _ = instantaneous_frequency(est, sr, n_fft, hop)
    return if_error(if_r, if_e, p_r if power_weighted else None)


# ------------------------------------------------------------------ LatentFT adherence (§4.2)
def a_weighting_db(freqs: np.ndarray) -> np.ndarray:
    """IEC 61672 A-weighting (dB) at ``freqs`` Hz (0 dB at 1 kHz)."""
    f2 = np.maximum(np.asarray(freqs, dtype=np.float64), 1e-6) ** 2
    ra = (12194.0**2 * f2**2) / ((f2 + 20.6**2) * np.sqrt((f2 + 107.7**2) * (f2 + 737.9**2))
                                 * (f2 + 12194.0**2))
    return 20 * np.log10(ra) + 2.0


def loudness_curve(x, sr: int = 22050, n_fft: int = 1024, hop: int = 256,
                   min_db: float = -100.0, average: str = "db") -> np.ndarray:
    """Loudness per frame (dB) of the A-weighted magnitude spectrum.

    ``average="db"``: the mean over bins of the weighted level in dB, each bin
    floored at ``min_db`` (the definition of Morrison et al. 2024, which the
    LatentFT paper cites). ``average="power"``: ``10 log10`` of the mean over
    bins of the A-weighted power (what the LatentFT authors' evaluation code
    computes): dominated by the loudest bins, so a spectrum whose level is
    right but whose shape is wrong does not pass for loud.
    x: ``(L,)`` → ``(1 + L//hop,)``, at ``sr/hop`` frames per second (86.13 Hz
    by default, the latent rate)."""
    mag = magnitude(x, sr, n_fft, hop)
    w = a_weighting_db(np.arange(mag.shape[0]) * sr / n_fft)[:, None]
    if average == "power":
        power = (mag ** 2 * 10 ** (w / 10)).mean(axis=0)
        return 10 * np.log10(np.maximum(power, 10 ** (min_db / 10)))
    if average != "db":
        raise ValueError(f"average must be 'db' or 'power', got {average!r}")
    db = np.maximum(20 * np.log10(mag + EPS) + w, min_db)
    return db.mean(axis=0)


def onset_envelope(x, sr: int = 22050, n_fft: int = 1024, hop: int = 256, lag: int = 1,
                   max_size: int = 3) -> np.ndarray:
    """Onset strength per frame: spectral flux of the log-mel spectrogram with
    vibrato suppression (the previous frame is max-filtered over ``max_size``
    mel bands before the difference). x: ``(L,)`` → ``(1 + L//hop,)``, ≥ 0;
    the first ``lag`` frames are 0."""
    cfg = _cfg(sr, n_fft, hop)
    mel = mel_basis(cfg).dense @ magnitude(x, sr, n_fft, hop)
    lm = np.log(np.maximum(mel, 1e-5))
    r = max_size // 2
    padded = np.pad(lm, ((r, r), (0, 0)), mode="edge")
    ref = np.max(np.stack([padded[i:i + lm.shape[0]] for i in range(max_size)]), axis=0)
    flux = np.maximum(lm[:, lag:] - ref[:, :-lag], 0.0).mean(axis=0)
    return np.concatenate([np.zeros(lag), flux])


def bandpass_descriptor(d: np.ndarray, frame_rate: float, band: tuple[float, float] | None,
                        n_fft: int | None = None) -> np.ndarray:
    """Keep a descriptor's modulation frequencies in ``band = (lo, hi)`` Hz.

    d: ``(..., T)`` descriptor sampled at ``frame_rate`` Hz. The DFT along time
    (zero-padded to ``n_fft``, default the next power of two ≥ 2T, so the mask
    does not wrap around) is zeroed outside ``lo ≤ f ≤ hi`` and inverted;
    ``lo = 0`` keeps the mean. ``band=None`` returns ``d`` unchanged.
    Returns ``(..., T)`` float64.
    """
    d = np.asarray(d, dtype=np.float64)
    if band is None:
        return d
    t = d.shape[-1]
    n = n_fft or int(2 ** np.ceil(np.log2(max(2 * t, 2))))
    spec = np.fft.rfft(d, n=n, axis=-1)
    f = np.fft.rfftfreq(n, 1.0 / frame_rate)
    spec *= (f >= band[0]) & (f <= band[1])
    return np.fft.irfft(spec, n=n, axis=-1)[..., :t]


def beat_spectrum(d: np.ndarray, max_lag: int | None = None) -> np.ndarray:
    """Beat spectrum of a 1-D descriptor: the sum along each diagonal of its
    self-similarity matrix ``S[i, j] = d[i] d[j]``, i.e. the autocorrelation
    ``B[l] = Σ_t d[t] d[t+l]`` for ``l = 0..max_lag`` (default ``T//2``).
    d: ``(T,)`` → ``(max_lag + 1,)``."""
    d = np.asarray(d, dtype=np.float64)
    t = len(d)
    max_lag = t // 2 if max_lag is None else min(max_lag, t - 1)
    n = int(2 ** np.ceil(np.log2(2 * t)))
    spec = np.fft.rfft(d, n=n)
    return np.fft.irfft(spec * np.conj(spec), n=n)[:max_lag + 1]


def _cosine(a, b) -> float:
    return float(np.dot(a, b) / max(np.linalg.norm(a) * np.linalg.norm(b), EPS))


def loudness_correlation(ref, est, sr: int = 22050, band: tuple[float, float] | None = None,
                         hop: int = 256, average: str = "db") -> float:
    """Pearson correlation of the two loudness curves (:func:`loudness_curve`
    with ``average``) after band-passing them to ``band`` (Hz of modulation
    frequency, e.g. a latent band). 1 = same shape."""
    ref, est = _align(ref, est)
    a = bandpass_descriptor(loudness_curve(ref, sr, hop=hop, average=average), sr / hop, band)
    b = bandpass_descriptor(loudness_curve(est, sr, hop=hop, average=average), sr / hop, band)
    a, b = a - a.mean(), b - b.mean()
    return _cosine(a, b)


def rhythm_similarity(ref, est, sr: int = 22050, band: tuple[float, float] | None = None,
                      hop: int = 256, max_lag: int | None = None) -> float:
    """Cosine similarity of the beat spectra of the two onset envelopes, each
    band-passed to ``band`` (Hz) first. 1 = same rhythm."""
    ref, est = _align(ref, est)
    a = bandpass_descriptor(onset_envelope(ref, sr, hop=hop), sr / hop, band)
    b = bandpass_descriptor(onset_envelope(est, sr, hop=hop), sr / hop, band)
    return _cosine(beat_spectrum(a, max_lag), beat_spectrum(b, max_lag))


# ------------------------------------------------------------------ quality
def frechet_distance(a: np.ndarray, b: np.ndarray) -> float:
    """Fréchet distance between Gaussians fitted to two sets of feature
    vectors ``(N, D)`` and ``(M, D)``: ``‖μ_a − μ_b‖² + Tr(Σ_a + Σ_b − 2 (Σ_a Σ_b)^½)``
    (the statistic of FAD, Kilgour et al., which LatentFT reports for quality).
    The trace of the matrix square root is taken from the eigenvalues of
    ``Σ_a^½ Σ_b Σ_a^½`` (symmetric, so no general ``sqrtm`` is needed)."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    mu_a, mu_b = a.mean(0), b.mean(0)
    s_a, s_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    w, v = np.linalg.eigh(s_a)
    root_a = (v * np.sqrt(np.clip(w, 0, None))) @ v.T
    cross = np.linalg.eigvalsh(root_a @ s_b @ root_a)
    tr_root = float(np.sqrt(np.clip(cross, 0, None)).sum())
    return float(((mu_a - mu_b) ** 2).sum() + np.trace(s_a) + np.trace(s_b) - 2 * tr_root)
