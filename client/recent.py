"""Answers remembered for a short time: what storage says that can still change while a run is running."""
from __future__ import annotations

import time
from typing import Any, Callable, Dict, Hashable, Tuple

_MISSING = object()


class Recent:
    """key -> value for `ttl` seconds. Holds at most `max_entries`, then starts over (a crawl of a large datastore
    must not grow it without bound; an entry older than the TTL is of no use, and a walk meets far fewer than
    10,000 tasks a second, where 100,000 per-task entries kept about 20 MB a process). Unlocked: two threads may
    both compute a value, and the last one is kept. A plain dict: a lookup costs a tenth of a cachetools
    TTLCache's, which matters at one or more per file read."""

    def __init__(self, ttl: float, max_entries: int = 10_000, clock: Callable[[], float] = time.monotonic):
        self._ttl = ttl
        self._max_entries = max_entries
        self._clock = clock
        self._values: Dict[Hashable, Tuple[Any, float]] = {}

    def fresh(self, key: Hashable, default: Any = None) -> Any:
        """The remembered value, or `default` when there is none or it is older than the TTL."""
        value, deadline = self._values.get(key, (_MISSING, 0.0))
        return value if value is not _MISSING and deadline > self._clock() else default

    def get(self, key: Hashable, compute: Callable[[], Any]) -> Any:
        """The remembered value, else `compute()`, remembered."""
        value = self.fresh(key, _MISSING)
        if value is _MISSING:
            value = compute()
            self.put(key, value)
        return value

    def put(self, key: Hashable, value: Any) -> None:
        if len(self._values) >= self._max_entries:
            self._values.clear()
        self._values[key] = (value, self._clock() + self._ttl)

    def pop(self, key: Hashable) -> None:
        self._values.pop(key, None)

    def __len__(self) -> int:
        return len(self._values)
