"""How Metaflow objects become file bytes: the JSON records, repr.txt, logs and tag directory names.

Everything here is a pure function of client objects (the `client` package's API, which is metaflow.client's),
so the same renderings serve the FUSE mount and `mffs ls/cat`.

Conventions
  * JSON files are UTF-8, indented by 2, keys in the order documented in the README, and end with a newline.
  * Times are ISO 8601 in UTC with an explicit offset (`2026-11-26T05:49:43.331000+00:00`). The client's
    `created_at` values are naive local times and metadata times are epoch milliseconds; both are converted.
  * Values that JSON cannot hold (bytes, sets, custom objects in parameters) are written as their repr() string.
  * repr.txt is `repr(value)` plus a newline. Beyond `repr_limit` characters it is cut and a marker line says
    so (`[mffs: repr cut at N of M characters]`), so one artifact can never make a huge text file.
"""
from __future__ import annotations

import datetime as dt
import json
from typing import Any, Callable, Iterable, List, Optional
from urllib.parse import quote, unquote

import orjson

REPR_CUT_MARKER = "\n[mffs: repr cut at %d of %d characters]\n"


def iso_time(value: Any) -> Optional[str]:
    """ISO 8601 in UTC for a client time: a naive local datetime, an aware datetime or epoch milliseconds."""
    if value is None:
        return None
    if isinstance(value, (int, float)):
        moment = dt.datetime.fromtimestamp(value / 1000.0, tz=dt.timezone.utc)
    else:
        # A naive datetime is local time (Metaflow's `created_at`); astimezone() interprets it that way.
        moment = value.astimezone(dt.timezone.utc)
    return moment.isoformat()


def epoch_seconds(value: Any) -> float:
    """Epoch seconds for a client time (naive local datetime, aware datetime or epoch ms); 0 when unknown."""
    if value is None:
        return 0.0
    if isinstance(value, (int, float)):
        return value / 1000.0
    return value.timestamp()


def _json_fallback(value: Any) -> str:
    return repr(value)


#: orjson writes what json.dumps(indent=2, ensure_ascii=False) writes, and leaves datetimes and dataclasses to
#: `default` as json does
_ORJSON_OPTIONS = orjson.OPT_INDENT_2 | orjson.OPT_PASSTHROUGH_DATETIME | orjson.OPT_PASSTHROUGH_DATACLASS


def indented_json(document: Any, default: Optional[Callable[[Any], Any]] = None) -> Optional[bytes]:
    """`document` as UTF-8 JSON indented by 2 with a newline, by orjson: json.dumps with an indent runs its
    pure-Python encoder, several times slower. The text is json's but for some floats below 1e-4 (`1e-7`, not `1e-07`:
    the same number). None for what orjson refuses (integers beyond 64 bits, lone surrogates), which the caller
    then writes with json."""
    try:
        text = orjson.dumps(document, default=default, option=_ORJSON_OPTIONS)
    except TypeError:
        return None
    # a new bytes object of its own size: orjson's keeps the buffer it grew (8 KB for a 500-byte record), and
    # rendered files are cached by their length
    return text + b"\n"


def json_bytes(record: Any) -> bytes:
    data = indented_json(record, default=_json_fallback)
    if data is None:
        data = (json.dumps(record, indent=2, ensure_ascii=False, default=_json_fallback) + "\n").encode("utf-8")
    return data


def repr_bytes(value: Any, repr_limit: int) -> bytes:
    text = repr(value)
    if len(text) > repr_limit:
        text = text[:repr_limit] + REPR_CUT_MARKER % (repr_limit, len(text))
    else:
        text += "\n"
    return text.encode("utf-8", "surrogateescape")


def text_bytes(text: str) -> bytes:
    return text.encode("utf-8", "surrogateescape")


def encode_tag(tag: str) -> str:
    """A tag as one directory name: '%' and '/' percent-encoded ('a/b' -> 'a%2Fb'); '.' and '..' encoded too."""
    name = tag.replace("%", "%25").replace("/", "%2F")
    if name in (".", ".."):
        name = quote(name, safe="").replace(".", "%2E")
    return name


def decode_tag(name: str) -> str:
    return unquote(name)


def _pathspecs(items: Iterable[Any]) -> List[str]:
    return [item if isinstance(item, str) else item.pathspec for item in items]


def run_record(run: Any) -> dict:
    return {
        "pathspec": run.pathspec,
        "id": run.id,
        "created_at": iso_time(run.created_at),
        "finished_at": iso_time(run.finished_at),
        "finished": run.finished,
        "successful": run.successful,
        "tags": sorted(run.tags),
        "user_tags": sorted(run.user_tags),
        "system_tags": sorted(run.system_tags),
    }


def parameters_record(run: Any, load: Callable[[Any], Any] = lambda artifact: artifact.data) -> dict:
    """name -> value of the run's flow parameters (the `_parameters` task's artifacts named in `_graph_info`),
    each artifact's value given by `load` (a parameter of a custom type is a pickled object too; the mount passes
    `Tree.record_value`, which keeps untrusted values out of its process)."""
    task = run["_parameters"].task
    graph_info = load(task["_graph_info"])
    names = [parameter["name"] for parameter in graph_info.get("parameters", [])]
    return {name: load(task[name]) for name in names if name in task}


def step_record(step: Any) -> dict:
    return {
        "pathspec": step.pathspec,
        "id": step.id,
        "created_at": iso_time(step.created_at),
        "finished_at": iso_time(step.finished_at),
    }


def _related_tasks(pathspecs: Any) -> Optional[List[str]]:
    """Parent/child task pathspecs; None while the task has no artifacts yet (running: no `_graph_info`)."""
    try:
        return _pathspecs(pathspecs())
    except KeyError:
        return None


def task_record(task: Any) -> dict:
    return {
        "pathspec": task.pathspec,
        "id": task.id,
        "index": task.index,
        "created_at": iso_time(task.created_at),
        "finished_at": iso_time(task.finished_at),
        "finished": task.finished,
        "successful": task.successful,
        "current_attempt": task.current_attempt,
        "parents": _related_tasks(lambda: task.parent_task_pathspecs),
        "children": _related_tasks(lambda: task.child_task_pathspecs),
    }


def metadata_records(task: Any) -> List[dict]:
    return [
        {"name": entry.name, "value": entry.value, "type": entry.type, "created_at": iso_time(entry.created_at)}
        for entry in task.metadata
    ]


def artifact_record(artifact: Any) -> dict:
    return {
        "pathspec": artifact.pathspec,
        "name": artifact.id,
        "sha": artifact.sha,
        "size": artifact.size,
        "type": artifact.type_name,
        "encoding": artifact.encoding,
        "created_at": iso_time(artifact.created_at),
    }


def exception_bytes(exception: Any) -> bytes:
    text = str(exception)
    return text_bytes(text if text.endswith("\n") else text + "\n")
