"""Process-wide tuning for megaclass's steps: an explicit call (``tune_process``), made by the
command line and open to a library user; importing megaclass changes nothing in the process.

Keeping freed memory in the process, so that the large tensors a step frees are reused:

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

Transparent huge pages for PyTorch's large CPU allocations (``THP_MEM_ALLOC_ENABLE=1``): a step
copies tens of MB of class rows, and with 4 KB pages their page faults cost more than the copy
(measured with ``index_select`` of 100,000 x 128 rows of a 10^6-row table; torch reads the
variable at its first large allocation, so the call must come before it).
"""

from __future__ import annotations

import ctypes
import os
import sys

import torch

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


def tune_process(threads: int = 0, keep_freed: bool = True, huge_pages: bool = True) -> dict:
    """Tune this whole process for megaclass, from now on: torch's threads (when > 0),
    glibc keeping freed memory (``keep_freed``, see ``keep_freed_memory``) and transparent huge
    pages for torch's large CPU allocations (``huge_pages``, unless ``THP_MEM_ALLOC_ENABLE`` is
    set already; effective only before torch's first large allocation). Returns what it set."""
    applied: dict = {}
    if threads:
        torch.set_num_threads(threads)
        applied["threads"] = threads
    if huge_pages and "THP_MEM_ALLOC_ENABLE" not in os.environ:
        os.environ["THP_MEM_ALLOC_ENABLE"] = "1"
        applied["huge_pages"] = True
    if keep_freed:
        applied["keep_freed_memory"] = keep_freed_memory()
    return applied
