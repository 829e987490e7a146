"""Giving memory back to the system after a burst (a large room joined): collect, then trim the C heap."""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
from typing import Any, Optional

_libc: Optional[Any] = None
_looked_up = False


def _malloc_trim() -> Optional[Any]:
    global _libc, _looked_up
    if not _looked_up:
        _looked_up = True
        name = ctypes.util.find_library("c")
        try:
            lib = ctypes.CDLL(name) if name else None
            _libc = lib if lib is not None and hasattr(lib, "malloc_trim") else None
        except OSError:
            _libc = None
    return _libc


def release_free_memory() -> None:
    """Run a full garbage collection, then ask the C allocator (glibc's ``malloc_trim``,
    where there is one) to return its free pages: after tens of thousands of events were
    parsed, checked and stored, the freed memory otherwise stays counted in the process's
    resident size. Cheap (milliseconds); call it after bursts, not per request."""
    gc.collect()
    libc = _malloc_trim()
    if libc is not None:
        libc.malloc_trim(0)
