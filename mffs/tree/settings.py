"""TreeSettings: everything that decides what a Tree shows and how, as one value.

Built once from the CLI's arguments (mffs/cli.py), by the fsspec filesystem from its options, and sent as JSON to
the readahead worker so that it builds the tree the daemon has (mffs/readahead.py).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

from ..budget import MemoryBudget
from ..sandbox import Limits

#: the `namespace` that leaves the process's client namespace as it is
KEEP_NAMESPACE: Any = object()


@dataclass(frozen=True)
class TreeSettings:
    #: the flow, run, step or task shown at the root; None: every flow
    pathspec: Optional[str] = None
    #: passed to `client.namespace` (None: every namespace); KEEP_NAMESPACE: the process's namespace
    namespace: Any = KEEP_NAMESPACE
    #: passed to `client.metadata` (a provider spec); None: the process's provider
    metadata: Optional[str] = None
    #: seconds before anything that can still change is re-read
    refresh: float = 0.5
    #: memory for the mount's processes and their caches (`MemoryBudget`)
    memory_mb: int = 256
    #: the tree of a readahead worker (its caches hold a window of tasks: `MemoryBudget.worker_nodes`)
    readahead_worker: bool = False
    #: artifacts whose pickle is larger have their repr.txt and exports sized only when opened
    render_threshold: int = 1 << 20
    #: steps with more tasks have their step.json sized only when opened
    step_json_eager_tasks: int = 100
    #: repr.txt is cut after this many characters
    repr_limit: int = 64 << 10
    #: load artifact values with the full unpickler (else the restricted one)
    trust_pickles: bool = False
    #: tasks a walk's readahead worker lists ahead (0: none; attached by the front end, mffs/readahead.py)
    readahead: int = 0
    #: what rendering one untrusted value may use (mffs/sandbox.py)
    render_memory_mb: int = Limits.memory_mb
    render_cpu_seconds: float = Limits.cpu_seconds
    render_wall_seconds: float = Limits.wall_seconds

    @property
    def budget(self) -> MemoryBudget:
        return MemoryBudget.split(self.memory_mb)

    @property
    def render_limits(self) -> Limits:
        return Limits(self.render_memory_mb, self.render_cpu_seconds, self.render_wall_seconds)
