"""Give the C heap's free memory back to the OS after a load or a step that left much of it free.

glibc keeps freed small blocks in its arenas: loading a 151k-token `tokenizer.json` parses and frees
~180 MB that stays resident until `malloc_trim` returns it. A no-op off glibc (macOS, musl).
"""

from __future__ import annotations

import ctypes
import ctypes.util
from functools import cache


@cache
def _libc_trim():
    name = ctypes.util.find_library("c")
    try:
        return ctypes.CDLL(name).malloc_trim if name else None
    except (OSError, AttributeError):
        return None


def release_free_heap() -> bool:
    """Return the heap's free pages to the OS (glibc `malloc_trim(0)`); False where there is no glibc."""
    trim = _libc_trim()
    if trim is None:
        return False
    trim(0)
    return True
