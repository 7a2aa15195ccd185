"""Storage backends, chosen by the form of the datastore root."""
from __future__ import annotations

import threading
from typing import Dict

from .base import Storage

_instances: Dict[str, Storage] = {}
_lock = threading.Lock()


def get_storage(root: str) -> Storage:
    """The (shared) storage object for a datastore root: `s3://bucket/prefix` or a local `.metaflow` path."""
    with _lock:
        storage = _instances.get(root)
        if storage is None:
            if root.startswith("s3://"):
                from .s3 import S3Storage  # boto3 is imported only when an S3 root is used

                storage = S3Storage(root)
            else:
                from .local import LocalStorage

                storage = LocalStorage(root)
            _instances[root] = storage
        return storage
