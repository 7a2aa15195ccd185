"""The client's caching layer (client/cache.py) over a real local metadata provider."""
from __future__ import annotations

import json
import os
import subprocess
import sys
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


def test_attempt_indexes_stay_within_their_byte_bound(client_env: Path) -> None:
    """Done attempts' indexes are kept in a byte-bounded LRU (MFFS_INDEX_CACHE_MB, which the mount sets from its
    budget): reading every artifact's size in the datastore under a 64 KB bound keeps the estimate under it, keeps
    some but not all, and answers as without the bound; an index larger than the whole cache is not kept."""
    program = (
        "import json, client, client.datastore as ds\n"
        "client.namespace(None)\n"
        "sizes = [(a.pathspec, a.size) for flow in client.Metaflow() for run in flow for step in run for task in step"
        " for a in task]\n"
        "huge = {'objects': {str(i): 'x' for i in range(100)}}\n"
        "ds._keep_attempt_index(('r', 'f', '1', 's', '2', 0), huge)\n"
        "print(json.dumps({'sizes': sizes, 'held': ds._attempt_indexes.currsize, 'bound': ds._attempt_indexes.maxsize,"
        " 'kept': len(ds._attempt_indexes), 'huge_kept': ('r', 'f', '1', 's', '2', 0) in ds._attempt_indexes}))\n"
    )

    def run(cache_mb: str) -> dict:
        env = dict(os.environ, MFFS_INDEX_CACHE_MB=cache_mb, PYTHONPATH=str(Path(__file__).resolve().parents[1]))
        done = subprocess.run([sys.executable, "-c", program], env=env, capture_output=True, text=True, check=True)
        return json.loads(done.stdout)

    bounded, unbounded = run("0.0625"), run("64")
    assert bounded["sizes"] == unbounded["sizes"] and len(bounded["sizes"]) > 100
    assert 0 < bounded["kept"] < unbounded["kept"] - 10 and bounded["held"] <= bounded["bound"] == 1 << 16
    assert not bounded["huge_kept"] and unbounded["huge_kept"]
