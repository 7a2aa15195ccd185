"""The process's decompressed blobs by sha, and the blobs a prefetch is fetching (remote storage): a read of one of
those waits for that blob alone, not for the prefetch's whole batch (client.datastore.FlowDatastore.prefetch)."""
from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Dict, Optional, Tuple

from cachetools import LRUCache

if TYPE_CHECKING:
    from concurrent.futures import Future


class BlobCache:
    """Decompressed blobs by sha, shared by every datastore of the process, bounded in bytes."""

    def __init__(self, max_bytes: int):
        self.max_bytes = max_bytes
        self._lru: LRUCache = LRUCache(maxsize=max_bytes, getsizeof=len)
        self._lock = threading.Lock()
        #: sha -> (the prefetch's fetch of it, the most stored bytes that fetch reads), while it runs
        self._fetching: Dict[str, Tuple[Future, int]] = {}

    def get(self, sha: str, wait: bool = True) -> Optional[bytes]:
        """The blob's bytes, if cached; when a prefetch is fetching it, after that fetch ends (`wait`)."""
        with self._lock:
            fetch = self._fetching.get(sha) if wait else None
        if fetch is not None:
            from concurrent.futures import wait as wait_for  # imported already by whatever started the fetch

            wait_for([fetch[0]])  # bounded like any request; its failure is the read's to meet and report
        with self._lock:
            return self._lru.get(sha)

    def put(self, sha: str, data: bytes) -> None:
        if len(data) <= self.max_bytes // 8:  # one large blob must not flush everything else
            with self._lock:
                self._lru[sha] = data

    def fetching(self, sha: str, max_stored: int) -> bool:
        """Whether a prefetch reading at least `max_stored` stored bytes of the blob is fetching it."""
        with self._lock:
            fetch = self._fetching.get(sha)
        return fetch is not None and fetch[1] >= max_stored

    def track(self, sha: str, future: Future, max_stored: int) -> None:
        """Note that `future`, of a prefetch reading at most `max_stored` stored bytes, fetches the blob (into this
        cache) until it is done."""
        with self._lock:
            if future.done():
                return
            self._fetching[sha] = (future, max_stored)
        future.add_done_callback(lambda done: self._untrack(sha, done))

    def _untrack(self, sha: str, future: Future) -> None:
        with self._lock:
            if self._fetching.get(sha, (None, 0))[0] is future:
                del self._fetching[sha]
