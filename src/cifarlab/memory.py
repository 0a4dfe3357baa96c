"""Process-wide memory settings, without importing torch (the CLI sets them before any command runs)."""

from __future__ import annotations

import ctypes

_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # glibc's mallopt parameters (malloc.h)


def keep_freed_memory() -> bool:
    """Ask glibc to serve blocks up to 32 MB (its limit) from the heap and to keep up to 1 GiB of freed heap
    for reuse, instead of returning it to the OS: by default a batch's large activations are fresh mmaps
    whose pages fault in again on every batch (benchmarks/embed_alloc.py: page faults and kernel time of
    the frozen MobileNet pass at 128 px). Blocks over 32 MB are still mmapped. Process-wide; False where
    the C library is not glibc (macOS, musl), which then keeps its own defaults."""
    try:
        libc = ctypes.CDLL("libc.so.6")
        return bool(libc.mallopt(_M_MMAP_THRESHOLD, 32 << 20)) and bool(libc.mallopt(_M_TRIM_THRESHOLD, 1 << 30))
    except (OSError, AttributeError):
        return False
