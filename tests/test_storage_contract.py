"""The contract every `Storage` backend (client/storage/base.py) passes, checked from outside, like fsspec's abstract
test suite: each test runs once per backend, over the same objects, a slice of the standard datastore made by real
Metaflow runs (HelloFlow, and a large FailFlow blob for streamed reads): copied to a directory for `LocalStorage`,
uploaded to a fresh prefix of the moto server for `S3Storage` (blob attributes as S3 user metadata, as Metaflow
writes them). A new backend gets the suite by adding a fixture that returns a root holding the same objects and
naming it in `ROOT_FIXTURES`.

Then the scheme registry (client/storage/__init__.py): every scheme's class, and unknown schemes refused clearly.
"""
from __future__ import annotations

import io
import json
import shutil
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List

import pytest

from client.datastore import AllowedRoots
from client.storage import SCHEMES, UnknownScheme, get_storage, split_scheme, storage_class
from client.storage.base import OutsideDatastore, Storage
from tests.support.s3server import BUCKET, MotoServer, s3_env, s3_server  # noqa: F401

#: the flow of the standard datastore copied whole
COPIED_FLOW = "HelloFlow"
#: the flow whose largest blob (over 1 MB: streamed reads) is copied with its directory
LARGE_BLOB_FLOW = "FailFlow"
#: fixtures returning a datastore root that holds `Objects`; one per backend
ROOT_FIXTURES = ["local_copy_root", "s3_copy_root"]
MISSING_KEYS = ["HelloFlow/no-such-run/0.data.json", "HelloFlow/data/00/" + "0" * 40, "no-such-flow", "HelloFlow/x/"]
LEAVING_KEYS = ["../secret", "HelloFlow/../../secret", "HelloFlow/data/../../../secret", "/etc/hostname",
                "HelloFlow/./latest_run"]


@dataclass
class Objects:
    """What every backend's root holds: key -> bytes, and the user attributes of the blobs that have them."""

    data: Dict[str, bytes]
    attributes: Dict[str, dict]

    def directories(self) -> Dict[str, set]:
        """Every directory ('' is the root) -> the names of its immediate children."""
        children: Dict[str, set] = {}
        for key in self.data:
            parts = key.split("/")
            for depth in range(len(parts)):
                children.setdefault("/".join(parts[:depth]), set()).add(parts[depth])
        return children

    def largest(self) -> str:
        return max(self.data, key=lambda key: len(self.data[key]))


def _attribute_file(key: str) -> bool:
    """A local blob's attributes file, `<F>/data/<xx>/<sha>_meta` (S3 keeps them as the blob's user metadata)."""
    parts = key.split("/")
    return len(parts) == 4 and parts[1] == "data" and parts[3].endswith("_meta")


@pytest.fixture(scope="module")
def copied_tree(local_root: Path, tmp_path_factory) -> Path:
    """A `.metaflow` holding the copied parts of the standard datastore."""
    root = tmp_path_factory.mktemp("storage-contract") / ".metaflow"
    for part in (COPIED_FLOW, _large_blob_directory(local_root / ".metaflow")):
        shutil.copytree(local_root / ".metaflow" / part, root / part)
    return root


def _large_blob_directory(metaflow: Path) -> str:
    """The `<F>/data/<xx>` directory of LARGE_BLOB_FLOW's largest blob, looked up: its sha is not the same in every
    build of the standard datastore (one built under another MFFS_TESTDATA_DIR had another)."""
    blobs = [p for p in (metaflow / LARGE_BLOB_FLOW / "data").glob("*/*") if not p.name.endswith("_meta")]
    largest = max(blobs, key=lambda p: p.stat().st_size)
    assert largest.stat().st_size > 1 << 20, "the standard datastore's largest %s blob is under 1 MB" % LARGE_BLOB_FLOW
    return str(largest.parent.relative_to(metaflow))


@pytest.fixture(scope="module")
def objects(copied_tree: Path) -> Objects:
    files = {str(path.relative_to(copied_tree)): path.read_bytes() for path in copied_tree.rglob("*") if path.is_file()}
    attributes = {key[:-len("_meta")]: json.loads(body) for key, body in files.items() if _attribute_file(key)}
    return Objects({key: body for key, body in files.items() if not _attribute_file(key)}, attributes)


@pytest.fixture
def local_copy_root(copied_tree: Path) -> str:
    return str(copied_tree)


@pytest.fixture(scope="module")
def s3_copy_prefix(s3_server: MotoServer, objects: Objects) -> str:  # noqa: F811
    """A fresh prefix of the test bucket holding `objects`, uploaded once for the module."""
    prefix = "contract-%s" % uuid.uuid4().hex
    client = s3_server.client()

    def put(key: str) -> None:
        attributes = objects.attributes.get(key)
        metadata = {"metaflow-user-attributes": json.dumps(attributes)} if attributes is not None else {}
        client.put_object(Bucket=BUCKET, Key=prefix + "/" + key, Body=objects.data[key], Metadata=metadata)

    with ThreadPoolExecutor(16) as pool:
        list(pool.map(put, objects.data))
    return prefix


@pytest.fixture
def s3_copy_root(s3_env, s3_copy_prefix: str) -> str:  # noqa: F811
    return "s3://%s/%s" % (BUCKET, s3_copy_prefix)


@pytest.fixture(params=ROOT_FIXTURES)
def storage(request) -> Storage:
    """The backend under test, found through the scheme registry as the client finds it."""
    return get_storage(request.getfixturevalue(request.param))


# -- reading --------------------------------------------------------------------------------------------------------

def test_read_gives_the_stored_bytes(storage: Storage, objects: Objects) -> None:
    for key, body in objects.data.items():
        assert storage.read(key) == body, key


def test_read_many_gives_bytes_or_none_and_applies_then(storage: Storage, objects: Objects) -> None:
    keys = sorted(objects.data)[:20] + MISSING_KEYS[:2]
    found = storage.read_many(keys)
    assert found == {key: objects.data.get(key) for key in keys}
    sizes = storage.read_many(keys, then=lambda key, data: (key, len(data)))
    assert sizes == {key: (key, len(objects.data[key])) if key in objects.data else None for key in keys}


def test_read_ahead_is_a_hint_that_changes_no_answer(storage: Storage, objects: Objects) -> None:
    keys = sorted(objects.data)[:20]
    storage.read_ahead(keys + MISSING_KEYS[:2])
    assert [storage.read(key) for key in keys] == [objects.data[key] for key in keys]


def test_open_streams_sequential_reads(storage: Storage, objects: Objects) -> None:
    key = objects.largest()
    body = objects.data[key]
    assert len(body) > 1 << 20
    with storage.open(key) as f:
        assert f.readable()
        chunks = [f.read(100_003) for _ in range(3)]
        chunks.append(f.read())
        assert f.read(10) == b""  # at the end: empty, not an error
    assert b"".join(chunks) == body


def test_open_seeks_where_supported(storage: Storage, objects: Objects) -> None:
    key = objects.largest()
    body = objects.data[key]
    with storage.open(key) as f:
        if not f.seekable():  # a backend may stream without seeking: then it says so, and refuses
            with pytest.raises((OSError, io.UnsupportedOperation)):
                f.seek(1)
            return
        for offset, length in [(len(body) - 10, 100), (0, 10), (len(body) // 2, 65_537), (1 << 20, 1), (7, 0)]:
            assert f.seek(offset) == offset
            assert f.read(length) == body[offset:offset + length], (offset, length)
            assert f.tell() == min(offset + length, len(body))
        f.seek(-5, 2)
        assert f.read() == body[-5:]


def test_size_is_the_stored_length(storage: Storage, objects: Objects) -> None:
    for key, body in objects.data.items():
        assert storage.size(key) == len(body), key


def test_exists_for_objects_only(storage: Storage, objects: Objects) -> None:
    for key in objects.data:
        assert storage.exists(key), key
    for key in MISSING_KEYS[:2]:
        assert not storage.exists(key), key


def test_list_names_the_immediate_children(storage: Storage, objects: Objects) -> None:
    """Every object and sub-directory by name (a backend may keep blob attributes beside the blob, as local does
    in `<sha>_meta`); a missing prefix lists as []."""
    for directory, expected in objects.directories().items():
        listed = storage.list(directory)
        assert all(isinstance(name, str) and "/" not in name for name in listed), directory
        assert expected <= set(listed), directory
        assert set(listed) - expected <= {name + "_meta" for name in expected}, directory
    for key in MISSING_KEYS[:3]:
        assert storage.list(key) == [], key


def test_user_attributes_of_blobs(storage: Storage, objects: Objects) -> None:
    assert objects.attributes, "the copied flow has blobs"
    for key, attributes in objects.attributes.items():
        assert storage.user_attributes(key) == attributes, key
    plain = next(key for key in objects.data if key.endswith(".data.json"))
    assert storage.user_attributes(plain) is None


def test_local_path_holds_exactly_the_bytes_or_is_none(storage: Storage, objects: Objects) -> None:
    for key in sorted(objects.data)[:20] + [objects.largest()]:
        path = storage.local_path(key)
        if path is not None:
            assert Path(path).read_bytes() == objects.data[key], key


def test_url_names_the_key_below_the_root(storage: Storage, objects: Objects) -> None:
    key = objects.largest()
    assert storage.url(key) == storage.root + "/" + key
    assert not storage.root.endswith("/")


# -- errors ---------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("key", MISSING_KEYS[:2])
def test_missing_keys_raise_file_not_found(storage: Storage, key: str) -> None:
    for read in (storage.read, storage.open, storage.size):
        with pytest.raises(FileNotFoundError):
            read(key)


@pytest.mark.parametrize("key", LEAVING_KEYS)
def test_keys_leaving_the_root_are_refused(storage: Storage, key: str) -> None:
    for read in (storage.read, storage.open, storage.size, storage.list, storage.exists):
        with pytest.raises(OutsideDatastore):
            read(key)


# -- across backends ------------------------------------------------------------------------------------------------

def test_every_backend_serves_the_same_bytes(request, objects: Objects) -> None:
    backends: List[Storage] = [get_storage(request.getfixturevalue(name)) for name in ROOT_FIXTURES]
    for key in objects.data:
        blobs = {type(backend).__name__: backend.read(key) for backend in backends}
        assert len(set(blobs.values())) == 1, (key, {name: len(blob) for name, blob in blobs.items()})


# -- the scheme registry --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("scheme", sorted(SCHEMES))
def test_every_registered_scheme_names_its_storage_class(scheme: str) -> None:
    cls = storage_class(scheme)
    assert issubclass(cls, Storage) and cls.TYPE == scheme


@pytest.mark.parametrize("root, expected", [
    ("/home/me/.metaflow", ("local", "/home/me/.metaflow")),
    ("local:///home/me/.metaflow", ("local", "/home/me/.metaflow")),
    ("/data/odd://name", ("local", "/data/odd://name")),
    ("s3://bucket/prefix", ("s3", "s3://bucket/prefix")),
])
def test_split_scheme(root: str, expected: tuple) -> None:
    assert split_scheme(root) == expected


def test_unknown_schemes_are_a_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("MFFS_ALLOWED_ROOTS", "METAFLOW_DATATOOLS_LOCALROOT", "METAFLOW_DATASTORE_SYSROOT_S3"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("MFFS_ALLOWED_ROOTS", "gs://team-bucket")
    with pytest.raises(UnknownScheme, match="no storage backend for 'gs://team-bucket/metaflow'"):
        get_storage("gs://team-bucket/metaflow")
    roots = AllowedRoots(str(tmp_path / ".metaflow"))
    with pytest.raises(OutsideDatastore, match="no storage backend"):
        roots.check("gs://team-bucket/metaflow")
    with pytest.raises(OutsideDatastore, match="no storage backend"):
        roots.read_url("azure://container/data/F/" + "ab" * 20)

