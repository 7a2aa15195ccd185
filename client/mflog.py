"""Metaflow's structured log lines (mflog): parsing and the k-way merge the client does."""
from __future__ import annotations

import heapq
import io
import re
from datetime import datetime
from typing import Iterable, Iterator, List, Optional, Tuple

_LINE = re.compile(rb"(\[!)?\[MFLOG\|(0)\|(.+?)Z\|(.+?)\|(.+?)\](.*)")
_ISOFORMAT = "%Y-%m-%dT%H:%M:%S.%f"
_MISSING_TIMESTAMP = datetime(3000, 1, 1)
_MISSING_TIMESTAMP_STR = _MISSING_TIMESTAMP.strftime(_ISOFORMAT).encode()

#: (sort key, utc timestamp or year 3000, message bytes)
LogLine = Tuple[bytes, datetime, bytes]


def _parse(blob: bytes) -> List[LogLine]:
    lines, unparsed = [], []
    for raw in io.BytesIO(blob):  # lines end at b"\n" only, as in Metaflow
        m = _LINE.match(raw)
        if m:
            try:
                ts = datetime.strptime(m.group(3).decode(), _ISOFORMAT)
            except ValueError:
                unparsed.append(raw)
                continue
            # Metaflow sorts (timestamp string, parsed line) tuples: equal timestamps order by the rest of the
            # tuple (should_persist, version, ...); the line id decides, which this key reproduces.
            key = (m.group(3), m.group(1) or b"", m.group(2), m.group(4), m.group(5), m.group(6))
            lines.append((key, ts, m.group(6)))
        else:
            unparsed.append(raw)
    # Unparseable lines keep their newline, as in Metaflow, and sort last (among themselves by content).
    lines.extend(((_MISSING_TIMESTAMP_STR, b"", b"", b"", b"", raw), _MISSING_TIMESTAMP, raw) for raw in unparsed)
    lines.sort(key=lambda line: line[0])
    return lines


def merge(blobs: Iterable[bytes]) -> Iterator[Tuple[Optional[datetime], bytes]]:
    """(utc timestamp, message) for every line of the given mflog files, merged in Metaflow's order."""
    for _key, ts, msg in heapq.merge(*[_parse(b) for b in blobs], key=lambda line: line[0]):
        yield ts, msg
