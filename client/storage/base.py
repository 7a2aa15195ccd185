"""The storage layer: one class per backend (local filesystem, S3) behind this small interface.

A `Storage` is bound to one datastore root (`/home/me/.metaflow` or `s3://bucket/prefix`) and addresses
objects by *keys*: '/'-joined paths relative to that root, e.g. `MyFlow/data/ab/ab12...` or
`MyFlow/12/train/4/0.data.json`. It knows nothing about Metaflow's layout; `client.datastore` does.

Every backend passes tests/test_storage_contract.py; client/storage/__init__.py registers it by scheme.

Errors are built-in exceptions, so every layer above maps them mechanically:
  FileNotFoundError  the key does not exist
  PermissionError    access denied
  OSError(EIO)       the backend failed after bounded retries / timeouts (never a hang)
  OutsideDatastore   the key (or a link it passes through) leads outside the root: refused
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from typing import TYPE_CHECKING, Any, BinaryIO, Callable, Dict, Iterable, List, Optional, Sequence

if TYPE_CHECKING:
    from concurrent.futures import Future


class OutsideDatastore(PermissionError):
    """A read that would leave the datastore: a key with `..`, an absolute key, a link out of the root, or a root
    the user did not configure. It carries no errno, so the mount answers EIO for that file and logs why."""


def check_key(key: str) -> str:
    """`key` when it is a relative path that stays below the root (no empty, `.` or `..` component); else
    OutsideDatastore. Lexical only: links are the backend's business."""
    if key.startswith("/") or "//" in key or ("/." in "/" + key and {".", ".."} & set(key.split("/"))):
        raise OutsideDatastore("key %r leaves the datastore" % key)
    return key


class Storage(ABC):
    #: the datastore type as Metaflow names it in `ds-type` metadata: 'local', 's3'
    TYPE: str = ""

    def __init__(self, root: str):
        self.root = root.rstrip("/") if root != "/" else root

    @abstractmethod
    def read(self, key: str) -> bytes:
        """The whole object."""

    def read_many(
        self, keys: Iterable[str], then: Optional[Callable[[str, bytes], Any]] = None, max_bytes: Optional[int] = None
    ) -> Dict[str, Any]:
        """Several objects at once (backends with latency fetch them in parallel); None for missing keys, and for
        objects longer than `max_bytes` when it is given (remote backends then read no more than that of them).
        `then(key, data)`, when given, is applied to each object found where it was fetched (on a backend's
        worker thread, so work such as decompressing and caching runs in parallel too) and its result is
        returned instead of the bytes."""
        out: Dict[str, Any] = {}
        for key in keys:
            try:
                data = self.read(key)
            except FileNotFoundError:
                data = None
            if data is None or (max_bytes is not None and len(data) > max_bytes):
                out[key] = None
                continue
            out[key] = then(key, data) if then is not None else data
        return out

    def start_reads(
        self, keys: Iterable[str], then: Optional[Callable[[str, bytes], Any]] = None, max_bytes: Optional[int] = None
    ) -> Dict[str, "Future"]:
        """`read_many` started in the background (a remote backend's prefetch), without waiting: per key, a Future
        of its answer. None started here: a backend without background reads reads each object when it is asked
        for (a prefetch is best effort)."""
        return {}

    def read_ahead(self, keys: Sequence[str]) -> None:
        """A hint that `keys` are about to be read one after the other: a backend may start reading them now. Best
        effort, and nothing by default (the reads report any error)."""
        return None

    @abstractmethod
    def open(self, key: str) -> BinaryIO:
        """A binary file object for streaming reads of large objects: sequential `read(n)`, `b""` at the end,
        and `seek`/`tell` when `seekable()`."""

    @abstractmethod
    def size(self, key: str) -> int:
        """Size in bytes of the stored object."""

    @abstractmethod
    def exists(self, key: str) -> bool:
        """Whether an object has this key (what a directory answers is the backend's: S3 has none)."""

    @abstractmethod
    def list(self, key: str) -> List[str]:
        """Names of the immediate children (files and sub-directories) under `key`, in no set order; [] when
        there are none or `key` is missing. A backend may list files of its own beside a blob (local `_meta`)."""

    @abstractmethod
    def user_attributes(self, key: str) -> Optional[dict]:
        """Metaflow's per-blob attributes ({"cas_raw": bool, "cas_version": 1}) of an existing object, or None
        when it has none."""

    def local_path(self, key: str) -> Optional[str]:
        """A local filesystem path holding exactly this object's bytes, when the backend has one."""
        return None

    def url(self, key: str) -> str:
        """Where `key` is, for messages and for Metaflow-style locations: the root, '/', the key."""
        return self.root + "/" + key
