"""BlobDiskCache: the persistent, size-bounded blob cache that backs offset reads of S3 blobs."""
from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import textwrap
import time

import pytest

from client.diskcache import BlobDiskCache

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def blob(seed: int, size: int) -> tuple:
    data = (b"%d-" % seed) * (size // 3 + 1)
    data = data[:size]
    return hashlib.sha1(data).hexdigest(), data


def cached_files(directory: str) -> list:
    return sorted(name for _, _, files in os.walk(directory) for name in files)


def test_put_then_path_holds_the_bytes(tmp_path):
    cache = BlobDiskCache(str(tmp_path / "c"), 10 * 1024 * 1024)
    key, data = blob(1, 100_000)
    assert cache.path(key) is None
    path = cache.put_stream(key, (data[i:i + 4096] for i in range(0, len(data), 4096)))
    assert cache.path(key) == path
    with open(path, "rb") as f:
        f.seek(50_000)
        assert f.read(10) == data[50_000:50_010]
    # A second cache object on the same directory (another process, a later session) sees it.
    assert BlobDiskCache(str(tmp_path / "c"), 10 * 1024 * 1024).path(key) == path


def test_a_failing_stream_stores_nothing(tmp_path):
    cache = BlobDiskCache(str(tmp_path), 10 * 1024 * 1024)
    key, data = blob(2, 10_000)

    def broken():
        yield data[:5000]
        raise ConnectionError("download cut")

    with pytest.raises(ConnectionError):
        cache.put_stream(key, broken())
    assert cache.path(key) is None
    assert cached_files(str(tmp_path)) == []


@pytest.mark.parametrize("key", ["", "a", "../../etc/passwd", "ab/cd", ".hidden", "x" * 200])
def test_bad_keys_are_refused(tmp_path, key):
    cache = BlobDiskCache(str(tmp_path), 1024)
    with pytest.raises(ValueError, match="not a valid blob key"):
        cache.path(key)
    with pytest.raises(ValueError, match="not a valid blob key"):
        cache.put_stream(key, [b"x"])


def test_budget_must_be_positive(tmp_path):
    with pytest.raises(ValueError, match="budget"):
        BlobDiskCache(str(tmp_path), 0)


def test_eviction_keeps_the_budget_and_the_recently_used(tmp_path):
    cache = BlobDiskCache(str(tmp_path), 100_000)
    blobs = [blob(i, 20_000) for i in range(4)]
    for key, data in blobs:
        cache.put_stream(key, [data])
    # Use the first blob: it becomes the most recently used (mtime resolution is fine-grained, but make it clear).
    time.sleep(0.01)
    assert cache.path(blobs[0][0]) is not None

    for key, data in (blob(i, 20_000) for i in range(4, 8)):
        time.sleep(0.01)
        cache.put_stream(key, [data])

    total = sum(os.path.getsize(os.path.join(root, f)) for root, _, files in os.walk(tmp_path) for f in files)
    assert total <= 100_000
    assert cache.path(blobs[0][0]) is not None  # recently used: kept
    assert cache.path(blobs[1][0]) is None  # least recently used: evicted
    assert cache.path(blob(7, 20_000)[0]) is not None  # just written: kept


def test_a_blob_larger_than_the_budget_is_still_served(tmp_path):
    cache = BlobDiskCache(str(tmp_path), 1000)
    key, data = blob(9, 5000)
    path = cache.put_stream(key, [data])
    with open(path, "rb") as f:
        assert f.read() == data


def test_from_settings(tmp_path, monkeypatch):
    monkeypatch.setenv("MFFS_CACHE_DIR", str(tmp_path))
    monkeypatch.setenv("MFFS_DISK_CACHE_MB", "3")
    cache = BlobDiskCache.from_settings()
    assert cache.directory == str(tmp_path / "blobs")
    assert cache.max_bytes == 3 * 1024 * 1024


WRITER = textwrap.dedent(
    """
    import hashlib, sys
    from client.diskcache import BlobDiskCache

    directory, worker = sys.argv[1], int(sys.argv[2])
    cache = BlobDiskCache(directory, 600_000)
    for round_ in range(30):
        # Every worker writes the shared blobs (same key, same bytes) and some of its own.
        for seed in [round_ % 5, 1000 * (worker + 1) + round_]:
            data = (b"%d-" % seed) * 10_000
            key = hashlib.sha1(data).hexdigest()
            path = cache.path(key) or cache.put_stream(key, (data[i:i + 7000] for i in range(0, len(data), 7000)))
            try:
                with open(path, "rb") as f:
                    got = f.read()
            except FileNotFoundError:  # evicted by another process in between: a miss, not an error
                continue
            assert got == data, (key, len(got))
    """
)


def test_several_processes_share_one_cache(tmp_path):
    directory = str(tmp_path / "shared")
    workers = [
        subprocess.Popen([sys.executable, "-c", WRITER, directory, str(i)], cwd=REPO, stderr=subprocess.PIPE)
        for i in range(4)
    ]
    errors = [w.communicate(timeout=120)[1].decode() for w in workers]
    assert [w.returncode for w in workers] == [0] * 4, errors

    # Whatever survived is complete (its name is the sha of its content) and no temp file is left behind.
    for root, _, files in os.walk(directory):
        for name in files:
            assert not name.startswith(".tmp-"), name
            with open(os.path.join(root, name), "rb") as f:
                assert hashlib.sha1(f.read()).hexdigest() == name
    total = sum(os.path.getsize(os.path.join(r, f)) for r, _, files in os.walk(directory) for f in files)
    # Each process enforces the budget on its own view; overshoot is bounded by what the others add meanwhile.
    assert total <= 600_000 + 4 * 2 * 30_000
