"""One bound on the threads of both libraries the engine computes with.

``torch.set_num_threads`` bounds PyTorch only. NumPy's OpenBLAS keeps a pool
of its own, one thread per core by default, and IFF-AR's frame step
(:mod:`rtengine.nn.iffar_step`) runs its layers as NumPy products. A live
stage is meant to hold one core; with the other core busy (the audio
callback, another stage, another program), each two-thread BLAS call waits for
a core that is not free. Measured on the 2-core machine with a trainer on the
other core: one IFF-AR frame took 5.8-7.2 ms with NumPy's default pool and
2.2-3.0 ms with one BLAS thread, in alternating runs.

OpenBLAS has no Python API, so its own ``set_num_threads`` is called through
ctypes on the library NumPy loaded (found in ``/proc/self/maps``). Where that
is impossible (not Linux, another BLAS), the BLAS bound is a no-op and only
torch is bounded; setting ``OPENBLAS_NUM_THREADS=1`` before start does the same
job there.
"""
from __future__ import annotations

import contextlib
import ctypes
import functools
import importlib
from typing import Iterator

# OpenBLAS's own names; NumPy's wheels rename theirs (scipy-openblas, 64-bit ints)
_SETTERS = ("scipy_openblas_set_num_threads64_", "openblas_set_num_threads64_",
            "scipy_openblas_set_num_threads", "openblas_set_num_threads")
_GETTERS = ("scipy_openblas_get_num_threads64_", "openblas_get_num_threads64_",
            "scipy_openblas_get_num_threads", "openblas_get_num_threads")


@functools.cache
def _openblas() -> tuple:
    """(get, set) ctypes functions for each OpenBLAS loaded in this process."""
    importlib.import_module("numpy")     # maps NumPy's OpenBLAS into the process
    try:
        with open("/proc/self/maps") as maps:
            paths = sorted({line.split()[-1] for line in maps
                            if "openblas" in line.rsplit("/", 1)[-1].lower()})
    except OSError:
        return ()
    found = []
    for path in paths:
        try:
            lib = ctypes.CDLL(path)
        except OSError:
            continue
        get = next((getattr(lib, n) for n in _GETTERS if hasattr(lib, n)), None)
        put = next((getattr(lib, n) for n in _SETTERS if hasattr(lib, n)), None)
        if get is None or put is None:
            continue
        get.restype, get.argtypes = ctypes.c_int, []
        put.restype, put.argtypes = None, [ctypes.c_int]
        found.append((get, put))
    return tuple(found)


def blas_threads() -> int | None:
    """Threads of NumPy's OpenBLAS pool, or None where it cannot be reached."""
    libs = _openblas()
    return int(libs[0][0]()) if libs else None


def set_blas_threads(n: int) -> None:
    """Bound NumPy's OpenBLAS pool to ``n`` threads (a no-op where unreachable)."""
    for _get, put in _openblas():
        put(int(n))


@contextlib.contextmanager
def compute_threads(n: int | None) -> Iterator[None]:
    """torch and NumPy's BLAS bounded to ``n`` threads inside the block, each
    restored after it; ``n`` of None or ≤ 0 leaves both as they are."""
    if not n or n <= 0:
        yield
        return
    import torch

    old_torch, old_blas = torch.get_num_threads(), blas_threads()
    if old_torch != n:
        torch.set_num_threads(n)
    if old_blas is not None and old_blas != n:
        set_blas_threads(n)
    try:
        yield
    finally:
        if old_torch != n:
            torch.set_num_threads(old_torch)
        if old_blas is not None and old_blas != n:
            set_blas_threads(old_blas)
