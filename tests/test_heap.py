"""`release_free_heap` hands freed heap pages back to the OS (glibc), which a plain `free` keeps."""

from __future__ import annotations

import ctypes.util

import pytest

from mmopd.heap import release_free_heap
from mmopd.rss import current_rss_mb


@pytest.mark.skipif(not ctypes.util.find_library("c"), reason="needs the C library")
def test_freed_heap_pages_go_back_to_the_os() -> None:
    if not release_free_heap():
        pytest.skip("not glibc")
    blocks = [bytes(2000) + bytes([i % 256]) for i in range(40_000)]  # ~80 MB of malloc'd 2 kB blocks
    kept = blocks[::32]  # the blocks kept alive pin the heap's top: free() alone cannot shrink it
    del blocks
    before = current_rss_mb()
    assert release_free_heap()
    assert before - current_rss_mb() > 30  # most of the ~78 MB between the kept blocks is returned
    assert len(kept) == 1250
