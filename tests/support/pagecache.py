"""The page cache seen from a test: drop a file from it, ask whether it holds a file (neither reads the file)."""
from __future__ import annotations

import ctypes
import mmap
import os
from pathlib import Path


def drop_from_page_cache(path: Path) -> None:
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
