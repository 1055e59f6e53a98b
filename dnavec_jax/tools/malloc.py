"""glibc malloc settings for the tools' long runs (elsewhere this does nothing).

Measured on `dnavec classify` over 1 kb sequences (docs/classify.md, "Memory and time"): glibc gives each
thread that meets contention an arena of its own, up to 8 per core, and keeps what is freed in them; XLA's
threads allocating batch-sized buffers made the peak grow with the task (1.03 GB at 16k sequences, 0.75 GB
with 2 arenas, same time).
"""

from __future__ import annotations

import ctypes
import os
import platform

ARENAS = 2
_M_ARENA_MAX = -8  # malloc.h


def limit_arenas(arenas: int = ARENAS) -> bool:
    """Caps glibc's malloc arenas unless MALLOC_ARENA_MAX is set; True if it did. Call before threads start."""
    if "MALLOC_ARENA_MAX" in os.environ or platform.libc_ver()[0] != "glibc":
        return False
    return bool(ctypes.CDLL(None).mallopt(_M_ARENA_MAX, arenas))
