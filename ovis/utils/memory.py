r"""Process memory settings that matter for speed on the CPU.

:func:`retain_freed_memory` keeps the memory of freed tensors in the process for the next ones.
glibc serves an allocation above its mmap threshold (128 KiB at first, raised as mapped chunks are
freed; a ``[120, 784]`` float tensor is 376 KiB) with a fresh ``mmap`` that ``free`` gives back to the
system, and it trims the top of its heap as soon as more than twice that threshold is free there.
Either way the next tensor of that size page-faults on every 4 KiB page it touches.  A training step
allocates and frees the same tensors again and again, so on a virtual machine, where a page fault is
expensive, the faults can cost more than the arithmetic.  With the freed memory retained, the next
tensors reuse pages that are already mapped (``benchmarks/bench_step.py`` counts the faults).

The setting is process-wide, and once set glibc no longer adjusts its thresholds by itself (there
is no query to restore the previous state), so it is applied by the entry points that own their
process: ``run.py`` on the CPU, in the queue's workers too (turned off with
``run.py --no_retain_memory``), and the speed benchmarks ``bench_step.py`` and ``bench_run.py``.
The cost is resident memory: up to ``trim_threshold`` bytes of freed heap stay mapped instead of
being returned to the system.
Allocations above glibc's ceiling for the threshold (32 MiB) are still mapped and returned one by
one, so a large chunk of an ``L_5000`` evaluation does not stay resident.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import functools
import sys
from typing import Optional

__all__ = ["retain_freed_memory", "set_malloc_thresholds", "MAX_MMAP_THRESHOLD", "GLIBC_INITIAL_THRESHOLDS"]

# mallopt parameter numbers of glibc's <malloc.h>
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
#: glibc's largest accepted ``M_MMAP_THRESHOLD`` on a 64-bit system (``4 MiB * sizeof(long)``)
MAX_MMAP_THRESHOLD = 32 * 1024 * 1024
#: glibc's initial ``(M_MMAP_THRESHOLD, M_TRIM_THRESHOLD)``, before its dynamic adjustment
GLIBC_INITIAL_THRESHOLDS = (128 * 1024, 128 * 1024)


@functools.lru_cache(maxsize=1)
def _libc() -> Optional[ctypes.CDLL]:
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    except OSError:
        return None
    if not hasattr(libc, "mallopt") or not hasattr(libc, "gnu_get_libc_version"):
        return None  # not glibc (musl has no tunable mallopt)
    libc.mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    libc.mallopt.restype = ctypes.c_int
    return libc


def set_malloc_thresholds(mmap_threshold: int, trim_threshold: int) -> bool:
    r"""Set glibc's ``M_MMAP_THRESHOLD`` and ``M_TRIM_THRESHOLD`` (bytes); ``True`` when applied,
    ``False`` where it cannot be (not Linux with glibc).  Setting them turns off glibc's dynamic
    adjustment of the thresholds; :data:`GLIBC_INITIAL_THRESHOLDS` are its starting values.

    Raises:
        ValueError: ``mmap_threshold`` outside ``[0, 32 MiB]`` (glibc's range) or
            ``trim_threshold`` outside ``[0, 2 GiB)``.
    """
    if not 0 <= mmap_threshold <= MAX_MMAP_THRESHOLD:
        raise ValueError(f"mmap_threshold must lie in [0, 32 MiB] (glibc's range), got {mmap_threshold}")
    if not 0 <= trim_threshold < 2 ** 31:
        raise ValueError(f"trim_threshold must lie in [0, 2 GiB), got {trim_threshold}")
    libc = _libc()
    if libc is None:
        return False
    return (bool(libc.mallopt(_M_MMAP_THRESHOLD, mmap_threshold))
            and bool(libc.mallopt(_M_TRIM_THRESHOLD, trim_threshold)))


def retain_freed_memory(mmap_threshold: int = MAX_MMAP_THRESHOLD,
                        trim_threshold: int = 256 * 1024 * 1024) -> bool:
    r"""Serve allocations up to ``mmap_threshold`` bytes from the heap and keep up to
    ``trim_threshold`` bytes of freed heap memory in the process (:func:`set_malloc_thresholds`).

    Returns ``True`` when applied, ``False`` where it cannot be (not Linux with glibc).  See the
    module docstring for why and what it costs.

    Raises:
        ValueError: ``trim_threshold < mmap_threshold``, or a threshold out of glibc's range.
    """
    if trim_threshold < mmap_threshold:
        raise ValueError(f"trim_threshold ({trim_threshold}) must be at least mmap_threshold ({mmap_threshold})")
    return set_malloc_thresholds(mmap_threshold, trim_threshold)
