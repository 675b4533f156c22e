"""The process's heap settings for training and evaluation: keep freed memory instead of returning it.

PyTorch's CPU tensors come from glibc's malloc. A block of at least ``M_MMAP_THRESHOLD`` bytes is a
fresh ``mmap`` each time, unmapped again when freed; glibc raises the threshold to the size of the
largest block freed so far, but an equal request is still at the threshold, so the training step's
~26 MB buffers (100 x 64 x 32 x 32 float32: conv1's output and its gradient) are mapped and unmapped
every step, and every page of them faults in again. Smaller blocks come from the heap, whose top glibc
trims (returns to the OS) once more than ``M_TRIM_THRESHOLD`` bytes are free there. Measured on the
2-core CPU, one thread, batch 100, channels_last (bench/train_precision.py): 6,000-8,200 minor faults
and 15 ms of system time a step (fp32 at 2 threads, bf16 at 1 and 2), 0-240 with these settings. How
often glibc's default maps them depends on the order of the process's first frees: from one process to the
next the same bf16 step measured 80 to 8,200 faults a step.

:func:`keep_freed_memory` sets, once for the process: no block from ``mmap`` (``M_MMAP_MAX`` 0; the
threshold cannot be raised above 32 MiB, less than a CPU fleet's or a 250-image evaluation batch's
activations) and no trimming (``M_TRIM_THRESHOLD`` at its maximum), so every block comes from the heap
and the next step reuses the same pages. The cost: the process keeps the peak of what it has freed
(about the step's peak, a few hundred MB; the resident size measured the same) until it exits.
(glibc still maps a block that no heap of a thread's arena can hold.) ``train`` and ``eval`` call it
when they start; elsewhere (musl, macOS, Windows: no ``mallopt``) it does nothing and returns False.
tests/test_precision.py checks the faults of 20 training steps with and without it.
"""

from __future__ import annotations

import ctypes
import ctypes.util

M_TRIM_THRESHOLD = -1  # glibc's malloc.h
M_MMAP_THRESHOLD = -3  # not set here: the heap test's control holds it fixed
M_MMAP_MAX = -4
TRIM_THRESHOLD = 2**31 - 1  # the largest int mallopt takes: never trim

_applied: bool | None = None


def _mallopt():
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        fn = libc.mallopt
    except (OSError, AttributeError):
        return None
    fn.argtypes, fn.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    return fn


def keep_freed_memory() -> bool:
    """Apply the settings above once per process (later calls return the first call's answer): True when glibc
    took both, False where there is no ``mallopt`` or it refused."""
    global _applied
    if _applied is None:
        fn = _mallopt()
        _applied = fn is not None and bool(fn(M_MMAP_MAX, 0)) and bool(fn(M_TRIM_THRESHOLD, TRIM_THRESHOLD))
    return _applied
