"""Keeping freed memory in the process, so that the large tensors a step frees are reused.

glibc's malloc serves allocations above 32 MB with fresh ``mmap`` pages and unmaps them when
they are freed; the next step's tensor of that size then takes a page fault on every 4 KB page
it first writes. A sampled step at 10^6 classes allocates and frees tens of [100,000, 128]
tensors (51 MB each in fp32: the scored rows, their bf16 copies, the gradient rows, the
optimizer's rows), and on the 2-core benchmark machine those faults cost about a quarter of the
knn step (``benchmarks/results/knn.md``). Serving every allocation from the heap and never
trimming it avoids them, at the price that freed memory stays with the process and the heap can
fragment: the peak of the knn step at 10^7 classes with SparseSGD rose from 13.1 to 15.8 GB, and
plain PyTorch's step at 10^6 classes (4 GB blocks of several lifetimes) grew past 24 GB, which
is why ``megaclass bench heads`` leaves its ``naive`` head alone.
"""

from __future__ import annotations

import ctypes
import sys

_M_TRIM_THRESHOLD = -1  # mallopt parameters, from glibc's malloc.h
_M_MMAP_MAX = -4
_NEVER_TRIM = 2**31 - 1  # bytes (the largest value mallopt takes)


def keep_freed_memory() -> bool:
    """Make glibc's malloc keep freed memory for reuse (process-wide, from now on); False where
    the C library is not glibc (nothing changed)."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):
        return False
    return bool(mallopt(_M_MMAP_MAX, 0)) and bool(mallopt(_M_TRIM_THRESHOLD, _NEVER_TRIM))
