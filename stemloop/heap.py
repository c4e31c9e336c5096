"""Give freed memory back to the operating system between the stages of an adaptation."""

from __future__ import annotations

import ctypes
import functools


@functools.cache
def _libc():
    try:
        return ctypes.CDLL("libc.so.6")
    except OSError:  # not glibc: nothing to trim
        return None


def trim() -> None:
    """Ask glibc to return its freed heap pages (``malloc_trim``). After a fine-tuning it
    kept ~0.6 GB of freed tensors that the next stage's forked pool workers then shared
    in their accounting (bench/RESULTS.md, issue 22). A no-op elsewhere."""
    libc = _libc()
    if libc is not None and hasattr(libc, "malloc_trim"):
        libc.malloc_trim(0)
