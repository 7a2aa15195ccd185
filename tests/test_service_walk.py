"""Our client over the replayed metadata service, walked over everything in several namespaces exactly as
expected-client.json was produced by Metaflow 2.19.39's client against the real service, compared field by field.

The walk runs in a subprocess (tests/support/service_walk.py): both clients keep their namespace and settings
per process. Metaflow's own client is walked too, through the same replay server, which shows that the replay and
the walk reproduce the recorded document exactly, so any difference of ours is ours.
"""
from __future__ import annotations

import copy
import json
from typing import Any, List

import pytest

from client.metadata.service import parse_postgres_array
from tests.support.replay_server import DATASTORE_DIR, EXPECTED_WALK, ReplayServer
from tests.support.service_walk import run_walk


def differences(expected: Any, got: Any, path: str = "") -> List[str]:
    """Every field where `got` differs from `expected`, as 'path: expected X, got Y' lines."""
    if isinstance(expected, dict) and isinstance(got, dict):
        found = []
        for key in sorted(set(expected) | set(got)):
            where = "%s/%s" % (path, key)
            if key not in got:
                found.append("%s: missing (expected %.200r)" % (where, expected[key]))
            elif key not in expected:
                found.append("%s: unexpected (got %.200r)" % (where, got[key]))
            else:
                found += differences(expected[key], got[key], where)
        return found
    if isinstance(expected, list) and isinstance(got, list) and len(expected) == len(got):
        found = []
        for index, (e, g) in enumerate(zip(expected, got)):
            label = e.get("id", index) if isinstance(e, dict) else index
            found += differences(e, g, "%s[%s]" % (path, label))
        return found
    if expected != got or type(expected) is not type(got):
        return ["%s: expected %.300r, got %.300r" % (path, expected, got)]
    return []


def with_foreach_stack_as_list(document: dict) -> dict:
    """The recorded walk with the one difference that is by design: Metaflow's client shows the service's
    `foreach-stack` metadata as a PostgreSQL array string ('{a=1,b=2}'), ours as the list the local provider
    has (['a=1', 'b=2']), so a task looks the same whichever metadata provider recorded it."""
    document = copy.deepcopy(document)
    for flow in document["flows"]:
        for run in flow["runs"]:
            for step in run["steps"]:
                for task in step["tasks"]:
                    stack = task["metadata_dict"].get("foreach-stack")
                    if stack is not None:
                        task["metadata_dict"]["foreach-stack"] = parse_postgres_array(stack)
    return document


@pytest.fixture(scope="module")
def expected_walk() -> dict:
    with open(EXPECTED_WALK, encoding="utf-8") as f:
        return json.load(f)


@pytest.mark.parametrize("master", [False, True], ids=["release-2.5.1", "master-91e44f0"])
def test_our_client_walk_matches_metaflows(expected_walk, master):
    with ReplayServer(master=master) as server:
        walk = run_walk("client", server.url, DATASTORE_DIR)
    found = differences(with_foreach_stack_as_list(expected_walk), walk)
    assert not found, "%d differences from expected-client.json:\n%s" % (len(found), "\n".join(found))


def test_metaflow_walk_reproduces_the_recording(expected_walk):
    with ReplayServer() as server:
        walk = run_walk("metaflow", server.url, DATASTORE_DIR)
        unrecorded = sorted(path for key, path in server.counts if key == "GET" and ("GET", path) not in server.answers)
    found = differences(expected_walk, walk)
    assert not found, "\n".join(found)
    assert not unrecorded, "Metaflow asked for routes the recording lacks: %s" % unrecorded[:20]
