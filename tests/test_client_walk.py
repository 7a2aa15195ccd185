"""Differential test of the client core: walk the standard datastore with Metaflow's client and with ours, and
compare everything field by field (see tests/support/walk.py for what a walk records).

Metaflow's walk runs once and is cached next to the datastore (it only changes when the datastore or the walker
does). Our client is walked in a subprocess where `import metaflow` fails, exactly as where Metaflow is not
installed, twice with the same disk cache: cold, then warm, so a cache that changes answers is caught.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

import pytest

from tests.support import walk
from tests.support.datastores import STANDARD_SCENARIOS

WALK_TIMEOUT_S = 600
SECTIONS = (["state", "lookups"] + ["ns:%s" % label for label in walk.NAMESPACES]
            + ["run:%s" % scenario for scenario in STANDARD_SCENARIOS])

# Paths (regex, searched) where the two clients are expected to differ, with the reason. Our behaviour there is
# asserted by a dedicated test named in the reason.
KNOWN_DIFFERENCES = {
    r"/data\.point$|/artifact:point/data$|/DataArtifact:point/data$":
        "__main__.Point cannot be unpickled outside the flow; metaflow's message names the walker's __main__ "
        "module (test_client_artifacts.py::test_user_class_from_flow_file)",
    r"(/step:_parameters/task:\d+|/parameters task)/parent_task(s|_pathspecs)$":
        "metaflow raises KeyError (test_client_bugs.py::test_parameters_task_parent_tasks)",
}


def _walker_key(local_root: Path) -> str:
    digest = hashlib.sha256(Path(walk.__file__).read_bytes())
    return "%s-%s" % (local_root.name, digest.hexdigest()[:16])


@pytest.fixture(scope="session")
def metaflow_walk(local_root: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """Metaflow's walk, cached in `<local_root>/walks/`."""
    cached = local_root / "walks" / ("metaflow-%s.json" % _walker_key(local_root))
    if not cached.is_file():
        cached.parent.mkdir(exist_ok=True)
        scratch = tmp_path_factory.mktemp("metaflow-walk")
        walk.run_walker(["walk", "--api", "metaflow", "--root", str(local_root), "--out", str(cached)],
                        walk.clean_env(local_root, scratch), scratch, WALK_TIMEOUT_S)
    return json.loads(cached.read_text())


@pytest.fixture(scope="session")
def client_walks(local_root: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """Our client's walks with Metaflow blocked: {"cold": ..., "warm": ...} sharing one disk cache."""
    scratch = tmp_path_factory.mktemp("client-walk")
    walks = {}
    for label in ("cold", "warm"):
        out = scratch / ("client-%s.json" % label)
        walk.run_walker(["walk", "--api", "client", "--root", str(local_root), "--out", str(out), "--block-metaflow"],
                        walk.clean_env(local_root, scratch), scratch, WALK_TIMEOUT_S)
        walks[label] = json.loads(out.read_text())
    return walks


def _unexpected(ours: dict, theirs: dict) -> list:
    return [d for d in walk.differences(ours, theirs)
            if not any(re.search(pattern, d[0]) for pattern in KNOWN_DIFFERENCES)]


def _report(diffs: list, limit: int = 40) -> str:
    lines = ["%d difference(s), ours vs metaflow:" % len(diffs)]
    for path, ours, theirs in diffs[:limit]:
        lines.append("  %s\n      ours:     %s\n      metaflow: %s" % (path, ours[:300], theirs[:300]))
    if len(diffs) > limit:
        lines.append("  ... %d more" % (len(diffs) - limit))
    return "\n".join(lines)


@pytest.mark.parametrize("section", SECTIONS)
def test_section_matches_metaflow(section: str, client_walks: dict, metaflow_walk: dict) -> None:
    theirs = metaflow_walk["sections"][section]
    diffs = _unexpected(client_walks["cold"]["sections"][section], theirs)
    assert not diffs, _report(diffs)


@pytest.mark.parametrize("section", SECTIONS)
def test_warm_cache_matches_metaflow(section: str, client_walks: dict, metaflow_walk: dict) -> None:
    theirs = metaflow_walk["sections"][section]
    diffs = _unexpected(client_walks["warm"]["sections"][section], theirs)
    assert not diffs, _report(diffs)


def test_client_never_imports_metaflow(client_walks: dict) -> None:
    assert client_walks["cold"]["blocked_imports"] == []
    assert client_walks["warm"]["blocked_imports"] == []


def test_metaflow_walk_is_complete(metaflow_walk: dict) -> None:
    """Guards the walker itself: every scenario's deep walk reached task data, logs and attempts."""
    sections = metaflow_walk["sections"]
    assert set(sections) == set(SECTIONS)
    kitchen = sections["run:kitchen"]
    start_task = next(v for k, v in kitchen["step:start"].items() if k.startswith("task:"))
    assert start_task["stdout"] == "start stdout: é ✓ 日本 😀\n"
    assert start_task["data.table"].startswith("name,city\n")
    branch_b = next(v for k, v in kitchen["step:branch_b"].items() if k.startswith("task:"))
    assert branch_b["current_attempt"] == 1 and set(branch_b["attempts"]) == {"0", "1", "2", "6"}
    assert sections["run:unfinished"]["finished"] is False
    assert sections["run:codepkg"]["code"]["script_name"] == "failflow.py"
    leaves = walk.flatten(sections)
    assert len(leaves) > 10000, "the walk got much smaller: %d leaves" % len(leaves)
