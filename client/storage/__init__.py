"""Storage backends, chosen by the scheme of the datastore root: the one registry of storage schemes.

`SCHEMES` maps a URL scheme to the module (below `client.storage`) and the `Storage` subclass serving roots of that
scheme; a root without a scheme is a local path. A backend's module is imported only when a root of its scheme is
first used, so a local datastore never imports boto3. `get_storage`, IncludeFile urls (`datastore.read_url`) and
the confinement of roots named by records (`datastore.AllowedRoots`) all learn the schemes here, so adding a
backend is one module with a `Storage` subclass plus one line below; it must pass tests/test_storage_contract.py.
"""
from __future__ import annotations

import importlib
import os
import threading
from typing import Dict, Optional, Tuple, Type

from .base import Storage

#: scheme -> (module below client.storage, its Storage subclass). Add a backend here.
SCHEMES: Dict[str, Tuple[str, str]] = {
    "local": ("local", "LocalStorage"),
    "s3": ("s3", "S3Storage"),
}
#: the scheme of a root written as a plain filesystem path
LOCAL_SCHEME = "local"

_instances: Dict[str, Storage] = {}
_lock = threading.Lock()


class UnknownScheme(ValueError):
    """A datastore root or url whose scheme (`gs://`, `azure://`, ...) no registered backend serves."""


def split_scheme(root: str) -> Tuple[str, str]:
    """(scheme, root as its backend takes it) of a root or url: `s3://b/p` -> ('s3', 's3://b/p'); a plain path and
    `local:///path` -> ('local', '/path'). UnknownScheme for a scheme not in SCHEMES."""
    scheme, sep, rest = root.partition("://")
    if not sep or not scheme.isalnum():  # a path such as `/data/a://b` has no scheme
        return LOCAL_SCHEME, root
    if scheme not in SCHEMES:
        raise UnknownScheme("no storage backend for %r (known schemes: %s)" % (root, ", ".join(sorted(SCHEMES))))
    return scheme, rest if scheme == LOCAL_SCHEME else root


def storage_class(scheme: str) -> Type[Storage]:
    """The Storage subclass registered for `scheme`, its module imported now."""
    module, name = SCHEMES[scheme]
    return getattr(importlib.import_module("." + module, __name__), name)


def normal_root(root: str) -> Optional[str]:
    """A root as roots are compared: `scheme://bucket/prefix` without a trailing '/', a local path resolved (links
    followed); None for anything else (a relative path, empty, an unknown scheme, `..` or empty components in a
    bucket root)."""
    try:
        scheme, path = split_scheme(root)
    except UnknownScheme:
        return None
    if scheme == LOCAL_SCHEME:
        return os.path.realpath(path) if os.path.isabs(path) else None
    body = path[len(scheme) + len("://"):].rstrip("/")
    parts = body.split("/")
    return None if not parts[0] or {"", ".", ".."} & set(parts) else scheme + "://" + body


def get_storage(root: str) -> Storage:
    """The (shared) storage object for a datastore root: `s3://bucket/prefix` or a local `.metaflow` path (a root
    of any scheme in SCHEMES). UnknownScheme for any other scheme."""
    with _lock:
        storage = _instances.get(root)
        if storage is None:
            scheme, backend_root = split_scheme(root)
            storage = _instances[root] = storage_class(scheme)(backend_root)
        return storage
