"""Keep freed memory in the process's heap, so that batched runs do not pay for fresh pages.

A batched member stack makes tensors 16× larger than one model's (an lm proxy step allocates
and frees many of 0.5–4 MB). glibc's malloc serves blocks above its mmap threshold with fresh
``mmap`` pages and gives a heap top above its trim threshold back to the kernel, so every such
allocation faults its pages in again: about 2,000 page faults per lm proxy step and 1,000 per
digits step, 25% of a digits step's time. Raising both thresholds keeps freed blocks for reuse,
which is what the jemalloc/tcmalloc preload of PyTorch's CPU tuning guide achieves. Process-wide
and applied once; only on Linux with glibc, elsewhere a no-op.
"""

from __future__ import annotations

import ctypes
import platform

M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
THRESHOLD = 256 << 20
"""Bytes: blocks up to this size come from the heap; up to this much free heap top is kept."""

_applied: bool | None = None


def retain_freed_memory() -> bool:
    """Raise glibc's mmap and trim thresholds to ``THRESHOLD`` (once). True if they are set."""
    global _applied
    if _applied is None:
        _applied = False
        if platform.system() == "Linux" and platform.libc_ver()[0] == "glibc":
            try:
                libc = ctypes.CDLL(None)
                _applied = bool(libc.mallopt(M_MMAP_THRESHOLD, THRESHOLD)) and bool(
                    libc.mallopt(M_TRIM_THRESHOLD, THRESHOLD)
                )
            except (OSError, AttributeError):
                _applied = False
    return _applied
