"""The client's caching layer (client/cache.py) over a real local metadata provider."""
from __future__ import annotations

import os
from pathlib import Path

from client.cache import CachingProvider
from client.metadata.local import LocalMetadataProvider
from client.recent import Recent


def test_short_lived_answers_are_read_again_after_the_ttl(local_root: Path, manifest: dict) -> None:
    """A run list can change: it is served from memory for the TTL, then read again (and never fails in between,
    as a `key in store` then `store[key]` on an expiring store once did)."""
    flow = manifest["runs"]["kitchen"]["flow"]
    provider = CachingProvider(LocalMetadataProvider(os.path.join(local_root, ".metaflow")), ttl=1.0)
    now = [0.0]
    provider._fresh = Recent(1.0, clock=lambda: now[0])
    reads = []
    source_runs = provider.source.runs
    provider.source.runs = lambda flow: reads.append(flow) or source_runs(flow)  # count the provider's reads
    runs = provider.runs(flow)
    now[0] = 0.99
    assert provider.runs(flow) == runs and len(reads) == 1
    now[0] = 1.0
    assert provider.runs(flow) == runs and len(reads) == 2


def test_an_answer_larger_than_the_cache_is_served_not_refused(local_root: Path, manifest: dict) -> None:
    """The task list of a huge step may be larger than the whole immutable cache (a small mount budget): it is
    served and kept for the TTL, never refused with an error."""
    run = manifest["runs"]["kitchen"]
    provider = CachingProvider(LocalMetadataProvider(os.path.join(local_root, ".metaflow")), max_bytes=100)
    provider.mark_run_final(run["flow"], run["run_id"])  # its step list is kept for good, if it fits
    steps = provider.steps(run["flow"], run["run_id"])
    assert steps and provider.steps(run["flow"], run["run_id"]) == steps
