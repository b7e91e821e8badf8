"""Keeping a serving process's native memory flat (glibc).

Measured with ``benchmarks/soak.py`` (docs/reliability.md): under a steady mixed
load the server's RSS grew by ~27 MB a minute for ten minutes while Python's own
heap did not grow (tracemalloc) — glibc's allocator, not a leak. glibc raises its
mmap threshold each time a large block is freed (up to 32 MB), so the next
tensors of every shape come from per-thread arenas, where freed space is
fragmented and never handed back. Fixing the threshold at 1 MB (tensors above it
are mapped and unmapped whole) and trimming the arenas once a second kept RSS
flat in the same test (600–630 MB over 150 s against 520 → 1,110 MB) at no
measurable throughput cost; a 64 KB threshold was flat too but 20% slower.

Not glibc (musl, macOS) or ``MALLOC_MMAP_THRESHOLD_`` set by the user: nothing
is changed.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
import threading
import time

from embedloom.offload import start_thread

__all__ = ["keep_native_memory_flat"]

logger = logging.getLogger(__name__)

_M_MMAP_THRESHOLD = -3  # mallopt parameter number, from glibc's malloc.h
_MMAP_THRESHOLD_BYTES = 1024 * 1024
_TRIM_INTERVAL_SECONDS = 1.0
_started = threading.Lock()
_trimming = False


def keep_native_memory_flat() -> bool:
    """Fix glibc's mmap threshold and start the once-a-second trim (once per process).
    True if this process is now tuned."""
    global _trimming
    with _started:
        if _trimming:
            return True
        if "MALLOC_MMAP_THRESHOLD_" in os.environ:
            return False  # the user's own choice
        libc = _glibc()
        if libc is None:
            return False
        if not libc.mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD_BYTES):
            return False
        start_thread(lambda: _trim_forever(libc), name="embedloom-malloc-trim")
        _trimming = True
    logger.debug(
        "glibc: mmap threshold %d bytes, arenas trimmed every %.0fs",
        _MMAP_THRESHOLD_BYTES,
        _TRIM_INTERVAL_SECONDS,
    )
    return True


def _glibc() -> ctypes.CDLL | None:
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        libc = ctypes.CDLL(name)
        libc.gnu_get_libc_version  # noqa: B018 - only glibc has it
    except (OSError, AttributeError):
        return None
    return libc


def _trim_forever(libc: ctypes.CDLL) -> None:
    while True:
        time.sleep(_TRIM_INTERVAL_SECONDS)
        libc.malloc_trim(0)
