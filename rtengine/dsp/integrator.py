"""Incremental phase integration from phase gradients (numba, ``nogil``).

Two modes:

* ``heap`` (default): RTPGHI-style heap integration (Průša & Holighaus). Each
  frame starts from a max-heap of the previous frame's bins; popping the loudest
  entry either steps a bin forward in time with the trapezoid rule
  ``phi[m,n] = phi[m,n-1] + (omega[m,n-1] + omega[m,n]) / 2`` or spreads a
  current-frame bin to its neighbours in frequency
  ``phi[m±1,n] = phi[m,n] ± (tau[m,n] + tau[m±1,n]) / 2``. When the heap empties
  before the frame is done, the loudest unassigned bin is seeded by the time
  step and pushed. With ``use_lambda``, bins the PG paper's λ classifies as
  noise (λI ≤ λ ≤ λS) get a random phase.
* ``lambda``: the PG paper's per-class integration (§3.2): λ > λS integrates
  along time (eq. 3), λ < λI along frequency (eq. 4), else a random phase.

Bins quieter than ``tol`` times the loudest bin of this and the previous frame
get a random phase. λ uses the causal backward time difference, or the centred
one with ``lookahead`` (output delayed by one frame, the first frame silent).

The priority queue is a bucket queue on log-magnitude (1/32 octave), so
equal-within-0.19 dB bins pop in last-in first-out order. All state is
preallocated; a block of frames is one numba call; the result is
bit-identical whether frames arrive one at a time or all at once.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from .phase_gradient import Q_IMPULSIVE, Q_SINUSOIDAL, lambda_exponent_frame

MODES = ("heap", "lambda")
TWO_PI = 2.0 * np.pi


@njit(cache=True, nogil=True, inline="always")
def _rand_phase(rng):
    # xorshift64*: a small, seedable generator private to one integrator
    x = rng[0]
    x ^= x >> np.uint64(12)
    x ^= x << np.uint64(25)
    x ^= x >> np.uint64(27)
    rng[0] = x
    r = (x * np.uint64(2685821657736338717)) >> np.uint64(11)
    return (r * (1.0 / 9007199254740992.0)) * TWO_PI - np.pi


BUCKET_SHIFT = 47        # float64 bits >> 47: 32 priority levels per octave (0.19 dB)
LEVELS_PER_OCTAVE = 32


def n_buckets(tol: float) -> int:
    """Priority levels needed to span magnitudes from ``tol`` × peak to the peak."""
    return int(np.ceil(np.log2(1.0 / tol) * LEVELS_PER_OCTAVE)) + 4


@njit(cache=True, nogil=True, inline="always")
def _level(x, base):
    # The bit pattern of a positive float64 grows with its value, so its top bits
    # are a log-magnitude quantised to 1/32 octave: a priority queue of buckets
    # with O(1) push and pop replaces a binary heap (ties within 0.19 dB pop
    # last-in first-out).
    return (np.int64(np.float64(x).view(np.int64)) >> BUCKET_SHIFT) - base


@njit(cache=True, nogil=True, inline="always")
def _push(head, link, top, e, key, base):
    nb = head.shape[0]
    b = min(_level(key, base), nb - 1)
    link[e] = head[b]
    head[b] = e
    return b if b > top else top


@njit(cache=True, nogil=True)
def _heap_frame(mag, omega, tau, lam, use_lambda, thr, prev_mag, prev_phase, prev_omega,
                has_next, next_mag, next_omega, next_tau, next_phase, next_done,
                phase, done, head, link, rng):
    """Integrate one frame. Queue entries: ``m`` is bin m of the previous frame,
    ``f + m`` of this frame, ``2f + m`` of the next frame (look-ahead only: its
    phases are provisional, used to reach this frame's bins backwards in time)."""
    f = mag.shape[0]
    base = np.int64(np.float64(thr).view(np.int64)) >> BUCKET_SHIFT
    head[:] = -1
    n_undone = 0
    for m in range(f):
        if mag[m] < thr or (use_lambda and Q_SINUSOIDAL <= lam[m] <= Q_IMPULSIVE):
            phase[m] = _rand_phase(rng)
            done[m] = 1
        else:
            done[m] = 0
            n_undone += 1
        next_done[m] = 0 if (has_next and next_mag[m] >= thr) else 1
    top = -1
    for m in range(f):
        if prev_mag[m] >= thr:
            top = _push(head, link, top, m, prev_mag[m], base)
    while n_undone > 0:
        while top >= 0 and head[top] < 0:
            top -= 1
        if top < 0:
            # nothing left to spread from: seed the loudest unassigned bin in time
            best = -1
            for m in range(f):
                if done[m] == 0 and (best < 0 or mag[m] > mag[best]):
                    best = m
            phase[best] = prev_phase[best] + 0.5 * (prev_omega[best] + omega[best])
            done[best] = 1
            n_undone -= 1
            top = _push(head, link, top, best + f, mag[best], base)
            continue
        e = head[top]
        head[top] = link[e]
        if e < f:              # previous frame: step forward in time (trapezoid rule)
            if done[e] == 0:
                phase[e] = prev_phase[e] + 0.5 * (prev_omega[e] + omega[e])
                done[e] = 1
                n_undone -= 1
                top = _push(head, link, top, e + f, mag[e], base)
        elif e < 2 * f:        # this frame: spread in frequency, and forward to the next
            m = e - f
            for nbr in (m + 1, m - 1):
                if 0 <= nbr < f and done[nbr] == 0:
                    phase[nbr] = phase[m] + (0.5 if nbr > m else -0.5) * (tau[m] + tau[nbr])
                    done[nbr] = 1
                    n_undone -= 1
                    top = _push(head, link, top, nbr + f, mag[nbr], base)
            if next_done[m] == 0:
                next_phase[m] = phase[m] + 0.5 * (omega[m] + next_omega[m])
                next_done[m] = 1
                top = _push(head, link, top, m + 2 * f, next_mag[m], base)
        else:                  # next frame: spread in frequency, and back to this frame
            m = e - 2 * f
            for nbr in (m + 1, m - 1):
                if 0 <= nbr < f and next_done[nbr] == 0:
                    next_phase[nbr] = next_phase[m] + (0.5 if nbr > m else -0.5) * (next_tau[m] + next_tau[nbr])
                    next_done[nbr] = 1
                    top = _push(head, link, top, nbr + 2 * f, next_mag[nbr], base)
            if done[m] == 0:
                phase[m] = next_phase[m] - 0.5 * (omega[m] + next_omega[m])
                done[m] = 1
                n_undone -= 1
                top = _push(head, link, top, m + f, mag[m], base)


@njit(cache=True, nogil=True)
def _lambda_frame_integrate(mag, omega, tau, lam, thr, prev_phase, prev_omega, phase, rng):
    f = mag.shape[0]
    for m in range(f):
        if mag[m] < thr:
            phase[m] = _rand_phase(rng)
        elif lam[m] < Q_SINUSOIDAL:          # eq. 3: along time
            phase[m] = prev_phase[m] + prev_omega[m]
        elif lam[m] > Q_IMPULSIVE:           # eq. 4: along frequency
            if m > 0:
                phase[m] = phase[m - 1] + tau[m - 1]
            else:
                phase[m] = prev_phase[m] + prev_omega[m]
        else:                                      # noise
            phase[m] = _rand_phase(rng)


@njit(cache=True, nogil=True)
def _integrate_block(mag, omega, tau, out_mag, out_phase, heap_mode, lookahead, use_lambda,
                     tol, bins_per_rad, st_prev_mag, st_prev_phase, st_prev_omega, st_prev_dn,
                     st_pend_mag, st_pend_omega, st_pend_tau, st_seen, dm, dn, dn_next, lam,
                     phase, done, head, link, next_phase, next_done, rng):
    f = mag.shape[1]
    need_lambda = use_lambda or not heap_mode
    for j in range(mag.shape[0]):
        # choose the frame to integrate now: this one (causal) or the held one
        if lookahead:
            if st_seen[0] == 0:
                for m in range(f):
                    st_pend_mag[m] = mag[j, m]
                    st_pend_omega[m] = omega[j, m]
                    st_pend_tau[m] = tau[j, m]
                    out_mag[j, m] = 0.0
                    out_phase[j, m] = 0.0
                st_seen[0] += 1
                continue
            cm, co, ct = st_pend_mag, st_pend_omega, st_pend_tau
        else:
            cm, co, ct = mag[j], omega[j], tau[j]
        if need_lambda:
            for m in range(f):
                dm[m] = co[m] * bins_per_rad - m
                dn[m] = -ct[m] * bins_per_rad
            if lookahead:
                for m in range(f):
                    dn_next[m] = -tau[j, m] * bins_per_rad
                if st_seen[0] >= 2:
                    lambda_exponent_frame(dm, st_prev_dn, dn_next, 2.0, lam)
                else:
                    lambda_exponent_frame(dm, dn, dn_next, 1.0, lam)
            else:
                if st_seen[0] >= 1:
                    lambda_exponent_frame(dm, st_prev_dn, dn, 1.0, lam)
                else:
                    lambda_exponent_frame(dm, dn, dn, 1.0, lam)
        peak = 0.0
        for m in range(f):
            if cm[m] > peak:
                peak = cm[m]
            if st_prev_mag[m] > peak:
                peak = st_prev_mag[m]
            if lookahead and mag[j, m] > peak:
                peak = mag[j, m]
        thr = max(tol * peak, 1e-12)
        if heap_mode:
            if lookahead:
                _heap_frame(cm, co, ct, lam, use_lambda, thr, st_prev_mag, st_prev_phase,
                            st_prev_omega, True, mag[j], omega[j], tau[j], next_phase,
                            next_done, phase, done, head, link, rng)
            else:
                _heap_frame(cm, co, ct, lam, use_lambda, thr, st_prev_mag, st_prev_phase,
                            st_prev_omega, False, cm, co, ct, next_phase, next_done,
                            phase, done, head, link, rng)
        else:
            _lambda_frame_integrate(cm, co, ct, lam, thr, st_prev_phase, st_prev_omega, phase, rng)
        for m in range(f):
            p = phase[m]
            p -= TWO_PI * np.floor((p + np.pi) / TWO_PI)   # wrap to [-pi, pi)
            out_phase[j, m] = p
            out_mag[j, m] = cm[m]
            st_prev_phase[m] = p
            st_prev_mag[m] = cm[m]
            st_prev_omega[m] = co[m]
            if need_lambda:
                st_prev_dn[m] = dn[m]
        if lookahead:
            for m in range(f):
                st_pend_mag[m] = mag[j, m]
                st_pend_omega[m] = omega[j, m]
                st_pend_tau[m] = tau[j, m]
        st_seen[0] += 1


class PhaseIntegrator:
    """Streaming phase integrator: ``(mag, omega, tau)`` frames in, phases out.

    Args:
        n_fft, hop: the STFT the gradients belong to.
        mode: ``"heap"`` (default) or ``"lambda"`` (see the module docstring).
        lookahead: one frame of look-ahead for λ's centred time difference;
            ``latency_frames`` is then 1.
        use_lambda: in heap mode, give noise bins (λI ≤ λ ≤ λS) a random phase.
        tol: bins below ``tol`` × the loudest bin get a random phase.
        seed: seed of the private random generator.
    """

    def __init__(self, n_fft: int, hop: int, mode: str = "heap", lookahead: bool = False,
                 use_lambda: bool = True, tol: float = 1e-5, seed: int = 0):
        if mode not in MODES:
            raise ValueError(f"integrator mode must be one of {MODES}, got {mode!r}")
        self.n_bins = n_fft // 2 + 1
        self.mode = mode
        self.lookahead = bool(lookahead)
        self.use_lambda = bool(use_lambda)
        self.tol = float(tol)
        self.seed = int(seed)
        self.latency_frames = 1 if lookahead else 0
        self._bins_per_rad = n_fft / (2 * np.pi * hop)
        f = self.n_bins
        self._prev = np.zeros((4, f))     # mag, phase, omega, dn
        self._pend = np.zeros((3, f))     # mag, omega, tau of the held frame
        self._work = np.zeros((5, f))     # dm, dn, dn_next, lam, phase
        self._done = np.zeros(f, dtype=np.uint8)
        self._head = np.zeros(n_buckets(self.tol), dtype=np.int64)   # bucket queue
        self._link = np.zeros(3 * f, dtype=np.int64)
        self._next_phase = np.zeros(f)
        self._next_done = np.zeros(f, dtype=np.uint8)
        self._seen = np.zeros(1, dtype=np.int64)
        self._rng = np.zeros(1, dtype=np.uint64)
        self.reset()

    def reset(self) -> None:
        self._prev[:] = 0.0
        self._pend[:] = 0.0
        self._seen[0] = 0
        # splitmix64 of the seed: distinct, non-zero start states
        z = (self.seed + 0x9E3779B97F4A7C15) & 0xFFFFFFFFFFFFFFFF
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & 0xFFFFFFFFFFFFFFFF
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & 0xFFFFFFFFFFFFFFFF
        self._rng[0] = (z ^ (z >> 31)) or 1

    def process(self, mag: np.ndarray, omega: np.ndarray, tau: np.ndarray):
        """mag, omega, tau: ``(F, k)``. Returns ``(mag_out, phase)``, each ``(F, k)``:
        the magnitudes the phases belong to (delayed by ``latency_frames``) and the
        phases wrapped to ``[-pi, pi)``."""
        # frame-major copies: the kernel walks each frame's bins contiguously
        mag_t = np.ascontiguousarray(mag.T, dtype=np.float64)
        omega_t = np.ascontiguousarray(omega.T, dtype=np.float64)
        tau_t = np.ascontiguousarray(tau.T, dtype=np.float64)
        out_mag_t = np.empty_like(mag_t)
        out_phase_t = np.empty_like(mag_t)
        p, q, w = self._prev, self._pend, self._work
        _integrate_block(mag_t, omega_t, tau_t, out_mag_t, out_phase_t, self.mode == "heap",
                         self.lookahead, self.use_lambda, self.tol, self._bins_per_rad,
                         p[0], p[1], p[2], p[3], q[0], q[1], q[2], self._seen,
                         w[0], w[1], w[2], w[3], w[4], self._done, self._head, self._link, self._next_phase, self._next_done,
                         self._rng)
        return out_mag_t.T, out_phase_t.T

    def flush(self):
        """Emit the frame held for look-ahead, followed by a silent frame."""
        z = np.zeros((self.n_bins, self.latency_frames))
        return self.process(z, z, z)


def integrate_offline(mag: np.ndarray, omega: np.ndarray, tau: np.ndarray, n_fft: int, hop: int,
                      **options) -> np.ndarray:
    """Phases of a whole spectrogram ``(F, T)``, aligned with its frames: a
    :class:`PhaseIntegrator` (``options`` as its keywords) run over the sequence,
    its look-ahead delay removed."""
    integ = PhaseIntegrator(n_fft, hop, **options)
    _, phase = integ.process(mag, omega, tau)
    if integ.latency_frames:
        phase = np.concatenate([phase[:, integ.latency_frames:], integ.flush()[1]], axis=1)
    return phase
