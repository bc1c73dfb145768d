"""The C allocator's settings for a training process: keep freed memory for the next step.

Every training step allocates and frees the same large buffers (the loss's 512 x 8000 chunks, the
attention scores, the activations kept for backward). By default glibc's malloc hands such blocks back
to the kernel when they are freed: blocks above its mmap threshold are unmapped, and free memory at the
top of the heap beyond its trim threshold is trimmed. The next step then faults the same pages in
again, each one zero-filled by the kernel: thousands of page faults per step at the default shape, a
step measurably slower (docs/PERFORMANCE_HISTORY.md). The process keeps its peak memory instead, which a
training process reaches every step anyway.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import sys

log = logging.getLogger(__name__)

M_TRIM_THRESHOLD = -1  # mallopt parameters, from glibc's <malloc.h>
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 32 << 20  # glibc's maximum on 64-bit systems; larger blocks are still mapped and unmapped
TRIM_THRESHOLD = 1 << 30


def keep_freed_memory() -> bool:
    """Raise glibc's mmap and trim thresholds for this process; False where that is not possible.

    Elsewhere (macOS, musl) nothing changes: those allocators have their own policies, and training is
    just slower by what the page faults cost there.
    """
    if not sys.platform.startswith("linux"):
        return False
    try:
        mallopt = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    kept = mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD) == 1 and mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD) == 1
    if not kept:
        log.info("the C library refused the allocator settings; training runs with its defaults")
    return kept
