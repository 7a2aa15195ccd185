"""MemoryBudget: the mount's memory (`--memory-mb`) split between the caches of its processes.

Its own module, importing nothing: the daemon sets the client's cache sizes from it before the client is imported.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict

#: what the daemon and its readahead worker take before caching anything (interpreters, imports, libfuse; see
#: docs/benchmarks.md), left out of the share `MemoryBudget` splits
BASE_MB = 80
#: the readahead worker's part of BASE_MB: a fresh image takes 19-20 MB here (bench_scale's peak of the worker in
#: a mount that reads nothing ahead, 100,000 tasks); what passes it and the worker's caches makes the worker start
#: afresh (mffs/readahead.py)
WORKER_BASE_MB = 24
#: the least share the caches get, whatever `memory_mb` says
MIN_CACHE_MB = 16


@dataclass(frozen=True)
class MemoryBudget:
    """`TreeSettings.memory_mb` split between the caches of the mount's processes, in bytes. Each cache is an LRU
    bounded by the (estimated) bytes of what it holds, so memory follows the budget, not the size of a run."""

    nodes: int  # the daemon's stable nodes (mffs/tree/tree.py)
    content: int  # rendered file contents
    prepared_listings: int  # listings converted for libfuse (mffs/fuse_ops.py)
    readahead_listings: int  # listings the readahead worker sent that the walk has not taken yet
    client_metadata: int  # the client's metadata cache in the daemon (MFFS_METADATA_CACHE_MB)
    client_blobs: int  # the client's blob cache in the daemon (MFFS_BLOB_CACHE_MB)
    client_indexes: int  # the client's parsed attempt indexes in the daemon (MFFS_INDEX_CACHE_MB)
    kernel_tasks: int  # libfuse's nodes of the task directories the kernel keeps entries of (mffs/fuse_ops.py)
    worker_nodes: int  # the readahead worker's stable nodes: a window of tasks, not a walk
    worker_client: int  # the readahead worker's client metadata, blob and index caches, each
    worker_rss: int  # the worker's resident size above which it starts afresh (mffs/readahead.py)

    @classmethod
    def split(cls, memory_mb: int) -> "MemoryBudget":
        share = max(memory_mb - BASE_MB, MIN_CACHE_MB) << 20
        parts = {"nodes": 29, "kernel_tasks": 1, "content": 12, "prepared_listings": 15, "readahead_listings": 5,
                 "client_metadata": 10, "client_blobs": 7, "client_indexes": 3, "worker_nodes": 9, "worker_client": 3}
        sizes = {name: share * percent // 100 for name, percent in parts.items()}
        worker_share = sizes["worker_nodes"] + 3 * sizes["worker_client"]  # its metadata, blob and index caches
        return cls(**sizes, worker_rss=(WORKER_BASE_MB << 20) + worker_share)

    def client_environment(self, worker: bool) -> Dict[str, str]:
        """The client's cache sizes for the daemon's or the worker's process, as the client reads them (whole MB,
        at least 1: the client's caches refuse anything larger than their bound)."""
        sizes = {"METADATA": self.client_metadata, "BLOB": self.client_blobs, "INDEX": self.client_indexes}
        if worker:
            sizes = dict.fromkeys(sizes, self.worker_client)
        return {"MFFS_%s_CACHE_MB" % name: str(max(size >> 20, 1)) for name, size in sizes.items()}
