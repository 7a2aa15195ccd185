"""The page cache seen from a test: drop files from it, ask whether it holds a file (neither reads the file)."""
from __future__ import annotations

import ctypes
import mmap
import os
import time
from pathlib import Path
from typing import Sequence

import pytest


def make_cold(paths: Sequence[Path]) -> None:
    """Drop `paths` from the page cache: skips the test where that cannot be done (a filesystem that keeps every
    file in memory, tmpfs), else drops again until mincore says none is there (a page just read can sit in another
    CPU's batch, which a drop skips), within 5 seconds."""
    _drop(paths[0])
    if in_page_cache(paths[0]):
        pytest.skip("%s keeps every file in the page cache (tmpfs?): nothing to read ahead" % paths[0].parent)
    deadline = time.monotonic() + 5
    while True:
        for path in paths:
            _drop(path)
        if not any(in_page_cache(path) for path in paths):
            return
        assert time.monotonic() < deadline, [str(path) for path in paths if in_page_cache(path)]
        time.sleep(0.05)


def _drop(path: Path) -> None:
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.fsync(descriptor)  # dirty pages stay until written
        os.posix_fadvise(descriptor, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(descriptor)


def in_page_cache(path: Path) -> bool:
    """Whether the first page of `path` is in the page cache, by mincore(2), which reads nothing (a read with
    RWF_NOWAIT would start reading the file ahead)."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.mmap.restype = ctypes.c_void_p
    libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long]
    libc.mincore.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_char_p]
    libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
    descriptor = os.open(path, os.O_RDONLY)
    try:
        address = libc.mmap(None, 1, mmap.PROT_READ, mmap.MAP_SHARED, descriptor, 0)
        assert address not in (None, ctypes.c_void_p(-1).value), os.strerror(ctypes.get_errno())
        try:
            vector = ctypes.create_string_buffer(1)
            assert libc.mincore(address, 1, vector) == 0, os.strerror(ctypes.get_errno())
            return bool(vector.raw[0] & 1)
        finally:
            libc.munmap(address, 1)
    finally:
        os.close(descriptor)
