"""The client's caching layer (client/cache.py) over a real local metadata provider."""
from __future__ import annotations

import itertools
import os
from pathlib import Path

from cachetools import TTLCache

from client.cache import CachingProvider
from client.metadata.local import LocalMetadataProvider


def test_an_answer_expiring_while_it_is_looked_up_is_a_miss_not_an_error(local_root: Path, manifest: dict) -> None:
    """Seen once in the suite as KeyError from `Task.metadata`: the short-lived store was read with `key in store`
    then `store[key]`, and an entry can expire between the two. A clock that moves 0.6 s at every reading, with a
    TTL of 1 s, puts the expiry there."""
    flow = manifest["runs"]["kitchen"]["flow"]
    provider = CachingProvider(LocalMetadataProvider(os.path.join(local_root, ".metaflow")), ttl=1.0)
    provider._fresh = TTLCache(maxsize=100, ttl=1.0, timer=itertools.count(0, 0.6).__next__)
    runs = provider.runs(flow)  # stored for 1 s
    # 0.6 s later it is still there: one lookup reads the clock once (two lookups read it twice: 0.6 s and 1.2 s)
    assert runs and provider.runs(flow) == runs
