"""S3Storage against a real S3-compatible server (moto in server mode on 127.0.0.1): layout-free storage behaviour,
read-ahead, parallel reads, error mapping, bounded failure and recovery."""
from __future__ import annotations

import errno
import hashlib
import json
import logging
import os
import random
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor

import pytest

from client.storage import s3_http
from client.storage.s3 import S3Storage
from tests.support.s3server import BUCKET, MotoServer, fault_proxy, s3_env, s3_server  # noqa: F401

ATTRIBUTES = {"cas_raw": False, "cas_version": 1}


@pytest.fixture
def root(s3_env, s3_server) -> str:  # noqa: F811
    """A fresh prefix of the test bucket for one test."""
    return "s3://%s/%s" % (BUCKET, uuid.uuid4().hex)


def put(server: MotoServer, root: str, key: str, body: bytes, attributes: dict = None) -> None:
    prefix = root[len("s3://%s/" % BUCKET):]
    metadata = {"metaflow-user-attributes": json.dumps(attributes)} if attributes is not None else {}
    server.client().put_object(Bucket=BUCKET, Key=prefix + "/" + key, Body=body, Metadata=metadata)


def put_many(server: MotoServer, root: str, objects: dict) -> None:
    with ThreadPoolExecutor(16) as pool:
        list(pool.map(lambda item: put(server, root, *item), objects.items()))


class RequestCounter:
    """Counts S3 requests (per operation) and the most requests in flight at once, via the hooks every S3 client
    of the storage (ours or botocore's) calls."""

    def __init__(self, storage: S3Storage):
        self.calls = {}
        self.in_flight = 0
        self.max_in_flight = 0
        self._lock = threading.Lock()
        s3_http.request_hooks.append(self._hook)

    def _hook(self, stage, operation, params):
        with self._lock:
            if stage == "before":
                self.calls[operation] = self.calls.get(operation, 0) + 1
                self.in_flight += 1
                self.max_in_flight = max(self.max_in_flight, self.in_flight)
            else:
                self.in_flight -= 1

    def close(self):
        s3_http.request_hooks.remove(self._hook)


@pytest.fixture
def counter_for():
    counters = []

    def make(storage: S3Storage) -> RequestCounter:
        counters.append(RequestCounter(storage))
        return counters[-1]

    yield make
    for counter in counters:
        counter.close()


def test_read_size_exists_attributes_url(s3_server, root):  # noqa: F811
    sha = hashlib.sha1(b"blob").hexdigest()
    put(s3_server, root, "F/data/%s/%s" % (sha[:2], sha), b"blob", ATTRIBUTES)
    put(s3_server, root, "F/1/start/1/0.data.json", b'{"objects": {}}')
    storage = S3Storage(root + "/")  # a trailing slash on the root is ignored, as Metaflow does

    blob_key = "F/data/%s/%s" % (sha[:2], sha)
    assert storage.read(blob_key) == b"blob"
    assert storage.size(blob_key) == 4
    assert storage.exists(blob_key)
    assert not storage.exists("F/data/%s/missing" % sha[:2])
    assert not storage.exists("F/data")  # a "directory" is not an object
    assert storage.user_attributes(blob_key) == ATTRIBUTES
    assert storage.user_attributes("F/1/start/1/0.data.json") is None
    assert storage.url(blob_key) == root + "/" + blob_key
    assert storage.local_path(blob_key) is None
    assert storage.TYPE == "s3"


def test_attributes_come_with_a_full_read(s3_server, root, counter_for):  # noqa: F811
    put(s3_server, root, "F/data/aa/aa11", b"x", ATTRIBUTES)
    storage = S3Storage(root)
    counter = counter_for(storage)
    storage.read("F/data/aa/aa11")
    assert storage.user_attributes("F/data/aa/aa11") == ATTRIBUTES
    assert counter.calls == {"GetObject": 1}


def test_bucket_root_without_prefix(s3_server, s3_env):  # noqa: F811
    bucket = "mffs-noprefix-%s" % uuid.uuid4().hex[:8]
    s3_server.client().create_bucket(Bucket=bucket)
    s3_server.client().put_object(Bucket=bucket, Key="F/1/x", Body=b"1")
    storage = S3Storage("s3://%s" % bucket)
    assert storage.list("") == ["F"]
    assert storage.read("F/1/x") == b"1"


def test_list_gives_immediate_children_across_pages(s3_server, root):  # noqa: F811
    # 1001 tasks: more than one page of ListObjectsV2 (1000 keys), plus nested files that must not show up.
    objects = {"F/1/body/%d/0.data.json" % i: b"{}" for i in range(1001)}
    objects.update({"F/1/body/7/0.DONE.lock": b'""', "F/1/_parameters/0/0.data.json": b"{}", "F/latest_run": b"1"})
    put_many(s3_server, root, objects)
    storage = S3Storage(root)

    assert storage.list("F/1/body") == sorted(str(i) for i in range(1001))
    assert storage.list("F/1") == ["_parameters", "body"]
    assert storage.list("F") == ["1", "latest_run"]
    assert storage.list("F/1/body/7") == ["0.DONE.lock", "0.data.json"]
    assert storage.list("F/1/body/7/") == ["0.DONE.lock", "0.data.json"]
    assert storage.list("F/nothing/here") == []
    assert storage.list("F/1/bo") == []  # a partial name is not a directory


def test_read_many_is_parallel_and_reports_missing_as_none(s3_server, root, counter_for):  # noqa: F811
    objects = {"F/1/body/%d/0.data.json" % i: json.dumps({"i": i}).encode() for i in range(64)}
    put_many(s3_server, root, objects)
    storage = S3Storage(root)
    counter = counter_for(storage)
    wanted = list(objects) + ["F/1/body/999/0.data.json"]

    result = storage.read_many(wanted)

    assert result == {**objects, "F/1/body/999/0.data.json": None}
    assert counter.calls == {"GetObject": len(wanted)}
    assert counter.max_in_flight > 1


def test_read_many_of_one_key_and_of_none(s3_server, root):  # noqa: F811
    put(s3_server, root, "F/a", b"a")
    storage = S3Storage(root)
    assert storage.read_many(["F/a"]) == {"F/a": b"a"}
    assert storage.read_many(["F/b"]) == {"F/b": None}
    assert storage.read_many([]) == {}


def test_read_many_up_to_a_size_reads_no_more_of_a_larger_object(s3_server, root):  # noqa: F811
    objects = {"F/small": b"s" * 10, "F/exact": b"e" * 100, "F/large": b"l" * 5000}
    put_many(s3_server, root, objects)
    storage = S3Storage(root)
    ranges = []

    def note_range(stage, operation, params):
        if stage == "before" and operation == "GetObject":
            ranges.append(params.get("Range"))

    s3_http.request_hooks.append(note_range)
    try:
        for keys in (list(objects) + ["F/missing"], ["F/large"]):
            ranges.clear()
            found = storage.read_many(keys, then=lambda key, data: data.upper(), max_bytes=100)
            expected = {"F/small": b"S" * 10, "F/exact": b"E" * 100, "F/large": None, "F/missing": None}
            assert found == {key: expected[key] for key in keys}
            assert ranges == ["bytes=0-100"] * len(keys)
    finally:
        s3_http.request_hooks.remove(note_range)


def test_open_random_access_matches_the_object(s3_server, root):  # noqa: F811
    body = random.Random(5).randbytes(3 * 1024 * 1024 + 123)
    put(s3_server, root, "F/big", body)
    storage = S3Storage(root)
    rng = random.Random(7)
    with storage.open("F/big") as f:
        assert f.seekable() and f.readable()
        assert f.seek(0, os.SEEK_END) == len(body)
        for _ in range(40):
            offset = rng.randrange(len(body) + 10)
            length = rng.choice([1, 100, 4096, 300_000, 2_000_000])
            f.seek(offset)
            assert f.read(length) == body[offset:offset + length]
            assert f.tell() == min(offset + length, max(offset, len(body)))
        f.seek(-10, os.SEEK_END)
        assert f.read() == body[-10:]
        assert f.read(5) == b""
        with pytest.raises(OSError):
            f.seek(-1)


def test_open_streams_with_growing_read_ahead(s3_server, root, counter_for):  # noqa: F811
    body = random.Random(3).randbytes(6 * 1024 * 1024)
    put(s3_server, root, "F/big", body)
    storage = S3Storage(root)
    counter = counter_for(storage)
    chunks = []
    with storage.open("F/big") as f:
        while True:
            chunk = f.read(64 * 1024)
            if not chunk:
                break
            chunks.append(chunk)
    assert b"".join(chunks) == body
    # 96 reads of 64 KiB; windows doubling from 256 KiB need far fewer GETs (256K+512K+1M+2M+4M covers 6 MiB).
    assert counter.calls["GetObject"] <= 6
    assert counter.calls["HeadObject"] == 1


def test_open_works_with_io_wrappers(s3_server, root):  # noqa: F811
    import gzip
    import io

    payload = "\n".join("line %d é" % i for i in range(20000)).encode()
    put(s3_server, root, "F/data/gz", gzip.compress(payload))
    storage = S3Storage(root)
    with storage.open("F/data/gz") as raw, gzip.GzipFile(fileobj=io.BufferedReader(raw)) as unzipped:
        assert unzipped.read() == payload


def test_open_empty_object(s3_server, root):  # noqa: F811
    put(s3_server, root, "F/empty", b"")
    with S3Storage(root).open("F/empty") as f:
        assert f.read() == b""
        assert f.read(10) == b""


def test_object_replaced_while_open_gives_estale(s3_server, root):  # noqa: F811
    put(s3_server, root, "F/log", b"a" * 1_000_000)
    storage = S3Storage(root)
    with storage.open("F/log") as f:
        assert f.read(10) == b"a" * 10
        put(s3_server, root, "F/log", b"b" * 1_000_000)
        f.seek(900_000)  # outside what was fetched so far: a new ranged GET
        with pytest.raises(OSError) as info:
            f.read(10)
    assert info.value.errno == errno.ESTALE


def test_missing_objects_raise_file_not_found(s3_server, root):  # noqa: F811
    storage = S3Storage(root)
    for operation in (storage.read, storage.size, storage.open, storage.user_attributes):
        with pytest.raises(FileNotFoundError) as info:
            operation("F/data/00/0000")
        assert info.value.errno == errno.ENOENT
        assert info.value.filename == root + "/F/data/00/0000"


def test_missing_bucket_is_a_clear_not_found(s3_env):  # noqa: F811
    storage = S3Storage("s3://mffs-no-such-bucket/prefix")
    with pytest.raises(FileNotFoundError, match="No such S3 bucket: mffs-no-such-bucket"):
        storage.list("F")
    with pytest.raises(FileNotFoundError):
        storage.read("F/x")


def test_bad_root_is_rejected():
    with pytest.raises(ValueError, match="s3://bucket/prefix"):
        S3Storage("s3://")
    with pytest.raises(ValueError):
        S3Storage("/local/.metaflow")


def test_access_denied_is_a_permission_error(monkeypatch):
    """moto with IAM enforcement on: a user without any policy is denied by the server itself."""
    server = MotoServer({"INITIAL_NO_AUTH_ACTION_COUNT": "4"})
    try:
        admin = server.client()
        admin.create_bucket(Bucket=BUCKET)
        admin.put_object(Bucket=BUCKET, Key="p/F/x", Body=b"secret")
        iam = server.client("iam")
        iam.create_user(UserName="nobody")
        key = iam.create_access_key(UserName="nobody")["AccessKey"]  # the 4th unauthenticated request
        monkeypatch.setenv("METAFLOW_S3_ENDPOINT_URL", server.endpoint_url)
        monkeypatch.setenv("AWS_ACCESS_KEY_ID", key["AccessKeyId"])
        monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", key["SecretAccessKey"])
        monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
        storage = S3Storage("s3://%s/p" % BUCKET)
        for operation in (storage.read, storage.size, storage.list, storage.user_attributes):
            with pytest.raises(PermissionError) as info:
                operation("F/x")
            assert info.value.errno == errno.EACCES
            assert "denied" in str(info.value)
        with pytest.raises(PermissionError):
            storage.read_many(["F/x", "F/y"])
    finally:
        server.stop()


@pytest.fixture
def fast_failing(monkeypatch):
    """Short timeouts so fault tests finish quickly; the bound they check is derived from these values."""
    settings = {"S3_CONNECT_TIMEOUT": "1", "S3_READ_TIMEOUT": "1", "S3_MAX_ATTEMPTS": "2", "S3_FAILFAST_SECONDS": "2"}
    for name, value in settings.items():
        monkeypatch.setenv("MFFS_" + name, value)
    # attempts x (connect or read timeout) + standard-mode backoff (at most 2 s for the second attempt) + slack
    return 2 * 1 + 2 + 3


def proxied_storage(root: str, proxy, monkeypatch) -> S3Storage:
    monkeypatch.setenv("METAFLOW_S3_ENDPOINT_URL", proxy.endpoint_url)
    return S3Storage(root)


def test_throttling_becomes_eio_after_retries_with_a_log_line(
    s3_server, root, fault_proxy, fast_failing, monkeypatch, caplog  # noqa: F811
):
    put(s3_server, root, "F/x", b"x")
    storage = proxied_storage(root, fault_proxy, monkeypatch)
    counter = RequestCounter(storage)
    fault_proxy.mode = "throttle"
    with caplog.at_level(logging.WARNING, logger="client.storage.s3"):
        with pytest.raises(OSError) as info:
            storage.read("F/x")
    counter.close()
    assert info.value.errno == errno.EIO
    assert "SlowDown" in str(info.value)
    assert any("SlowDown" in record.getMessage() for record in caplog.records)
    assert counter.calls == {"GetObject": 1}  # one call, retried inside the client...
    fault_proxy.mode = "forward"
    assert storage.read("F/x") == b"x"  # ...and the server answered, so no fail-fast window


@pytest.mark.parametrize("fault", ["hang", "reset"])
def test_server_down_gives_eio_within_the_bound_then_recovers(
    s3_server, root, fault_proxy, fast_failing, monkeypatch, fault  # noqa: F811
):
    objects = {"F/1/body/%d/0.data.json" % i: b"%d" % i for i in range(200)}
    put_many(s3_server, root, objects)
    storage = proxied_storage(root, fault_proxy, monkeypatch)
    keys = sorted(objects)
    assert storage.read(keys[0]) == objects[keys[0]]

    fault_proxy.mode = fault
    started = time.monotonic()
    with pytest.raises(OSError) as info:
        storage.read_many(keys)  # 200 keys: one failure must end the whole call, not 200 timeouts
    assert info.value.errno == errno.EIO
    assert time.monotonic() - started < fast_failing

    # Within the fail-fast window every call fails at once instead of waiting for its own timeout.
    started = time.monotonic()
    for key in keys[:50]:
        with pytest.raises(OSError) as info:
            storage.size(key)
        assert info.value.errno == errno.EIO
    assert time.monotonic() - started < 1.0

    fault_proxy.mode = "forward"
    deadline = time.monotonic() + 10
    while True:  # the first call after the window reaches the server again
        try:
            assert storage.read_many(keys) == objects
            break
        except OSError:
            assert time.monotonic() < deadline, "storage did not recover after the server came back"
            time.sleep(0.5)
