"""glibc malloc set, at the CLI's start, to reuse multi-MB blocks instead of mapping them anew.

By default glibc serves each allocation above 128 KiB with a fresh ``mmap`` and unmaps it on
free, so every multi-MB numpy temporary (the CG products, rollouts) costs page faults and
zeroing in the kernel: ~1 s of system CPU in ``fit --l2 auto`` on the demo store. glibc raises
that threshold itself after the first large block is freed (up to 32 MiB mmap / 64 MiB trim),
so the cost depended on the order of allocations. The CLI sets those two values from the start
(``mallopt``); blocks above 32 MiB are still mapped and unmapped. Other C libraries, or
``SIMFLUENCE_MALLOC=default``: nothing is changed.
"""

from __future__ import annotations

import os
import sys

MMAP_THRESHOLD = 32 * 2**20  # glibc's own maximum for its dynamic threshold (64-bit)
TRIM_THRESHOLD = 2 * MMAP_THRESHOLD  # what glibc pairs with it
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # <malloc.h>


def tune_malloc() -> bool:
    """Set the glibc thresholds; True when they were set (glibc on Linux, not disabled)."""
    if not sys.platform.startswith("linux") or os.environ.get("SIMFLUENCE_MALLOC") == "default":
        return False
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # musl, or no glibc
        return False
    return bool(mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(
        mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD)
    )
