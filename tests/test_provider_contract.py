"""The contract every `MetadataProvider` (client/metadata/base.py) passes, checked from outside: each test runs once
per provider, over runs made by real Metaflow:

* `LocalMetadataProvider` over the standard datastore (its `_meta` files);
* `ServiceMetadataProvider` over the replay of the recorded metadata service (tests/support/replay_server.py).

S3 datastores keep their metadata locally or in a service as well, so they add no provider path of their own. The
recorded service's datastore (tests/data/metadata-service/datastore) holds no `_meta` files, so the two providers
cannot be compared on the same runs; what they share is checked instead: the service's steps and tasks are the
directories the recorded runs wrote.

Each provider's tree is walked once (`Tree`), then records are checked for their shape (keys, ids as str, epoch
times as numbers, tags as lists of str), one lookup against the listing, not-found answers, attempts,
`task_metadata`, `filtered_tasks`, and a malformed row left out of its list but named by a lookup. A new provider
gets the suite with one entry in `BACKENDS`.
"""
from __future__ import annotations

import json
import logging
import os
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, Iterator, List, Tuple

import pytest

from client.exceptions import MetaflowInternalError
from client.metadata.base import MetadataProvider
from client.metadata.local import LocalMetadataProvider
from client.metadata.service import ServiceMetadataProvider
from tests.support.replay_server import DATASTORE_DIR, ReplayServer

TaskIds = Tuple[str, str, str, str]

FLOW_KEYS = {"flow_id", "ts_epoch"}
RUN_KEYS = {"flow_id", "run_number", "user_name", "tags", "system_tags", "ts_epoch"}
#: the run's tags, which a provider may serve with each step, task and artifact row (the service does)
RUN_TAG_KEYS = {"tags", "system_tags"}
STEP_KEYS = {"step_name", "ts_epoch"}
TASK_KEYS = {"task_id", "ts_epoch"}
ARTIFACT_KEYS = {"name", "sha", "content_type", "location", "ds_type", "attempt_id", "ts_epoch"}
EVENT_KEYS = {"field_name", "value", "type", "ts_epoch", "tags"}


@dataclass
class Tree:
    """Everything a provider lists: flows, runs, steps, tasks (by ids) and each task's metadata events."""

    provider: MetadataProvider
    flows: List[dict] = field(default_factory=list)
    runs: Dict[str, List[dict]] = field(default_factory=dict)
    steps: Dict[Tuple[str, str], List[dict]] = field(default_factory=dict)
    tasks: Dict[Tuple[str, str, str], List[dict]] = field(default_factory=dict)
    events: Dict[TaskIds, List[dict]] = field(default_factory=dict)

    @classmethod
    def walk(cls, provider: MetadataProvider) -> "Tree":
        tree = cls(provider, provider.flows())
        for flow in tree.flows:
            f = flow["flow_id"]
            tree.runs[f] = provider.runs(f)
            for run in tree.runs[f]:
                r = run["run_number"]
                tree.steps[f, r] = provider.steps(f, r)
                for step in tree.steps[f, r]:
                    s = step["step_name"]
                    tree.tasks[f, r, s] = provider.tasks(f, r, s)
                    for task in tree.tasks[f, r, s]:
                        tree.events[f, r, s, task["task_id"]] = provider.task_metadata(f, r, s, task["task_id"])
        return tree

    def attempts(self, ids: TaskIds) -> List[int]:
        return sorted({int(e["value"]) for e in self.events[ids] if e["field_name"] == "attempt"})

    def retried(self) -> List[TaskIds]:
        return [ids for ids in self.events if len(self.attempts(ids)) > 1]


def _local_provider(local_root: Path) -> Iterator[MetadataProvider]:
    yield LocalMetadataProvider(str(local_root / ".metaflow"))


def _service_provider(local_root: Path) -> Iterator[MetadataProvider]:
    with ReplayServer() as server:
        yield ServiceMetadataProvider(server.url)


def _spoil_local(local_root: Path, tmp_path: Path, flow: str, run: str) -> Iterator[MetadataProvider]:
    """A provider over a copy of `flow` whose run record of `run` has a malformed ts_epoch."""
    root = tmp_path / ".metaflow"
    shutil.copytree(local_root / ".metaflow" / flow, root / flow)
    record = root / flow / run / "_meta" / "_self.json"
    record.write_text(json.dumps({**json.loads(record.read_text()), "ts_epoch": "yesterday"}))
    yield LocalMetadataProvider(str(root))


def _spoil_service(local_root: Path, tmp_path: Path, flow: str, run: str) -> Iterator[MetadataProvider]:
    """A provider over a replay whose rows of `run` (in the runs listing and by name) have a malformed ts_epoch."""
    with ReplayServer() as server:
        for path in ("/flows/%s/runs" % flow, "/flows/%s/runs/%s" % (flow, run)):
            status, headers, body = server.answers["GET", path]
            rows = json.loads(body)
            for row in rows if isinstance(rows, list) else [rows]:
                if str(row["run_number"]) == run:
                    row["ts_epoch"] = "yesterday"
            server.answers["GET", path] = (status, headers, json.dumps(rows).encode())
        yield ServiceMetadataProvider(server.url)


@dataclass
class Backend:
    """How to get a provider over real runs, and one over the same runs with one run record malformed."""

    provider: Callable[[Path], Iterator[MetadataProvider]]
    spoiled: Callable[[Path, Path, str, str], Iterator[MetadataProvider]]


BACKENDS = {
    "local": Backend(_local_provider, _spoil_local),
    "service": Backend(_service_provider, _spoil_service),
}


@pytest.fixture(scope="module", params=sorted(BACKENDS))
def backend(request) -> Backend:
    return BACKENDS[request.param]


@pytest.fixture(scope="module")
def tree(backend: Backend, local_root: Path) -> Iterator[Tree]:
    providers = backend.provider(local_root)
    yield Tree.walk(next(providers))
    providers.close()


def _check_time(record: dict) -> None:
    assert type(record["ts_epoch"]) in (int, float), record


def _check_strings(values: object) -> None:
    assert isinstance(values, list) and all(isinstance(v, str) for v in values), values


def _check_keys(record: dict, keys: set, optional: set = frozenset()) -> None:
    assert keys <= set(record) <= keys | optional, record
    _check_time(record)


def _check_unique(records: List[dict], key: str) -> List[str]:
    ids = [r[key] for r in records]
    assert all(isinstance(i, str) and i and "/" not in i for i in ids), ids
    assert len(set(ids)) == len(ids), ids
    return ids


# -- records --------------------------------------------------------------------------------------------------------

def test_the_tree_has_what_the_suite_checks(tree: Tree) -> None:
    assert tree.flows and tree.events and tree.retried()
    assert isinstance(tree.provider.info(), str) and tree.provider.TYPE in ("local", "service")


def test_flow_records(tree: Tree) -> None:
    _check_unique(tree.flows, "flow_id")
    for flow in tree.flows:
        _check_keys(flow, FLOW_KEYS)
        assert tree.provider.flow(flow["flow_id"]) == flow


def test_run_records(tree: Tree) -> None:
    for f, runs in tree.runs.items():
        _check_unique(runs, "run_number")
        for run in runs:
            _check_keys(run, RUN_KEYS)
            assert run["flow_id"] == f
            assert run["user_name"] is None or isinstance(run["user_name"], str)
            _check_strings(run["tags"])
            _check_strings(run["system_tags"])
            assert tree.provider.run(f, run["run_number"]) == run


def test_step_and_task_records(tree: Tree) -> None:
    for (f, r), steps in tree.steps.items():
        _check_unique(steps, "step_name")
        for step in steps:
            _check_keys(step, STEP_KEYS, RUN_TAG_KEYS)
            assert tree.provider.step(f, r, step["step_name"]) == step
    for (f, r, s), tasks in tree.tasks.items():
        _check_unique(tasks, "task_id")
        for task in tasks:
            _check_keys(task, TASK_KEYS, RUN_TAG_KEYS)
            for key in RUN_TAG_KEYS & set(task):
                _check_strings(task[key])
            assert tree.provider.task(f, r, s, task["task_id"]) == task


def test_artifact_records_are_public_and_of_one_attempt(tree: Tree) -> None:
    seen = 0
    for ids in tree.events:
        artifacts = tree.provider.artifacts(*ids)
        _check_unique(artifacts, "name")
        for artifact in artifacts:
            _check_keys(artifact, ARTIFACT_KEYS, RUN_TAG_KEYS)
            assert not artifact["name"].startswith("_")
            assert isinstance(artifact["sha"], str) and type(artifact["attempt_id"]) is int
            assert tree.provider.artifact(*ids, artifact["name"]) == artifact
        assert len({a["attempt_id"] for a in artifacts}) <= 1, ids
        seen += len(artifacts)
    assert seen


def test_internal_artifacts_by_name(tree: Tree) -> None:
    finished = [ids for ids in tree.events if any(e["field_name"] == "attempt_ok" for e in tree.events[ids])]
    for ids in finished[:10]:
        artifact = tree.provider.artifact(*ids, "_task_ok")
        assert artifact is not None and artifact["name"] == "_task_ok", ids


def test_attempts(tree: Tree) -> None:
    """A retried task's artifacts of each attempt carry that attempt; by default, those of the latest one."""
    for ids in tree.retried():
        attempts = tree.attempts(ids)
        assert {a["attempt_id"] for a in tree.provider.artifacts(*ids)} == {attempts[-1]}
        for attempt in attempts:
            artifacts = tree.provider.artifacts(*ids, attempt=attempt)
            assert {a["attempt_id"] for a in artifacts} <= {attempt}
            task_ok = tree.provider.artifact(*ids, "_task_ok", attempt=attempt)
            assert task_ok is None or task_ok["attempt_id"] == attempt


def test_task_metadata_events(tree: Tree) -> None:
    for events in tree.events.values():
        for event in events:
            _check_keys(event, EVENT_KEYS)
            assert isinstance(event["field_name"], str) and event["field_name"]
            _check_strings(event["tags"])
            if event["field_name"] == "foreach-stack":
                _check_strings(event["value"])
            if event["field_name"] == "attempt":
                int(event["value"])


def test_one_fields_events_are_those_of_the_full_list(tree: Tree) -> None:
    """A provider that reads single fields answers each with that field's events of the full list, in its order:
    `attempt` without `attempt_ok`, `attempt_ok` alone, a field no event has with none."""
    if not tree.provider.reads_single_fields:
        pytest.skip("this provider answers one field from the full list (the caching provider filters it)")
    assert any(e["field_name"] == "attempt_ok" for events in tree.events.values() for e in events)
    for ids, events in tree.events.items():
        for name in {e["field_name"] for e in events} | {"attempt", "attempt_ok", "no-such-field"}:
            expected = [e for e in events if e["field_name"] == name]
            assert tree.provider.task_metadata_field(*ids, name) == expected, (ids, name)


def test_filtered_tasks(tree: Tree) -> None:
    """`.*` gives every task of the step; a pattern gives the tasks with a matching event, in full."""
    field_name = "foreach-execution-path"
    matched = 0
    for (f, r, s), tasks in tree.tasks.items():
        ids = [t["task_id"] for t in tasks]
        assert sorted(tree.provider.filtered_tasks(f, r, s, field_name, ".*")) == sorted(ids)
        for task_id in ids:
            for event in tree.events[f, r, s, task_id]:
                if event["field_name"] == field_name:
                    found = tree.provider.filtered_tasks(f, r, s, field_name, event["value"])
                    assert task_id in found
                    assert all(any(e["field_name"] == field_name and re.fullmatch(event["value"], e["value"])
                                   for e in tree.events[f, r, s, t]) for t in found), found
                    matched += 1
    assert matched


def test_reading_a_task_ahead_is_a_hint_that_changes_no_answer(tree: Tree) -> None:
    """`read_ahead_task` gives the attempt whose artifacts it read ahead (the one `artifacts` lists) or None, and
    the provider answers as before, for tasks, retried tasks and a task that does not exist."""
    p = tree.provider
    for ids in list(tree.events)[:20] + tree.retried():
        before = (p.artifacts(*ids), p.artifact(*ids, "_exception"), p.task_metadata(*ids))
        attempt = p.read_ahead_task(*ids, None, True, ["_exception"], ["attempt", "ds-root"])
        assert attempt is None or {a["attempt_id"] for a in before[0]} <= {attempt}, ids
        assert (p.artifacts(*ids), p.artifact(*ids, "_exception"), p.task_metadata(*ids)) == before
    f, r, s, _ = next(iter(tree.events))
    assert p.read_ahead_task(f, r, s, "987654321", None, True, [], ["attempt"]) is None


def test_lists_are_stable(tree: Tree) -> None:
    """A provider lists in its natural order (the object model sorts), the same order each time."""
    flow = tree.flows[0]["flow_id"]
    assert tree.provider.flows() == tree.flows
    assert tree.provider.runs(flow) == tree.runs[flow]


# -- not found ------------------------------------------------------------------------------------------------------

def test_missing_objects_are_none_and_missing_lists_empty(tree: Tree) -> None:
    f, r, s, t = next(iter(tree.events))
    p = tree.provider
    assert p.flow("NoSuchFlow") is None and p.runs("NoSuchFlow") == []
    assert p.run(f, "987654321") is None and p.steps(f, "987654321") == []
    assert p.step(f, r, "no_such_step") is None and p.tasks(f, r, "no_such_step") == []
    assert p.task(f, r, s, "987654321") is None
    assert p.artifacts(f, r, s, "987654321") == [] and p.task_metadata(f, r, s, "987654321") == []
    assert p.artifact(f, r, s, t, "no_such_artifact") is None


@pytest.mark.parametrize("bad_id", ["", "..", "a/b"])
def test_ids_that_are_no_names_find_nothing(tree: Tree, bad_id: str) -> None:
    f, r, s, _ = next(iter(tree.events))
    p = tree.provider
    assert p.flow(bad_id) is None and p.runs(bad_id) == []
    assert p.run(f, bad_id) is None and p.steps(f, bad_id) == []
    assert p.task(f, r, s, bad_id) is None


# -- malformed rows -------------------------------------------------------------------------------------------------

def test_a_malformed_row_is_left_out_and_named_by_lookup(backend: Backend, tree: Tree, local_root: Path,
                                                         tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    flow = next(f for f, runs in tree.runs.items() if len(runs) > 1)
    bad, *good = [run["run_number"] for run in tree.runs[flow]]
    providers = backend.spoiled(local_root, tmp_path, flow, bad)
    provider = next(providers)
    try:
        with caplog.at_level(logging.WARNING, logger="client"):
            listed = [run["run_number"] for run in provider.runs(flow)]
        assert sorted(listed) == sorted(good)
        # one log line naming the row: its file (local), or its place in the answer (service)
        assert [m for m in caplog.messages if m.startswith("left out") and flow in m], caplog.messages
        with pytest.raises(MetaflowInternalError, match="Malformed metadata record"):
            provider.run(flow, bad)
        assert provider.run(flow, good[0]) is not None
    finally:
        providers.close()


# -- the service's runs are the recorded datastore's ----------------------------------------------------------------

def test_service_steps_and_tasks_are_the_recorded_datastore_directories() -> None:
    with ReplayServer() as server:
        tree = Tree.walk(ServiceMetadataProvider(server.url))
    for (f, r), steps in tree.steps.items():
        run_dir = os.path.join(DATASTORE_DIR, f, r)
        assert sorted(s["step_name"] for s in steps) == sorted(os.listdir(run_dir)), run_dir
        for step in steps:
            tasks = tree.tasks[f, r, step["step_name"]]
            assert sorted(t["task_id"] for t in tasks) == sorted(os.listdir(os.path.join(run_dir, step["step_name"])))
