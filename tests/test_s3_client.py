"""Differential test of the client over an S3 datastore: the standard scenarios run by real Metaflow with
`--datastore=s3` (local metadata, data in moto on 127.0.0.1), walked with Metaflow's client and with ours, compared
field by field exactly like the local datastore (tests/test_client_walk.py), plus S3-specific failure behaviour:
a missing blob fails that artifact only, and a server that stops mid-walk gives errors within the timeout and
recovers when it is back."""
from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Optional

import pytest

from tests.support import walk
from tests.support.datastores import load_manifest
from tests.support.s3server import (  # noqa: F401
    BUCKET,
    S3_PREFIX,
    MotoServer,
    fault_proxy,
    s3_environment,
    s3_root_parent,
    s3_server,
)
from tests.test_client_walk import SECTIONS, _report, _unexpected

WALK_TIMEOUT_S = 900


def _walk_env(root_parent: Path, scratch: Path, endpoint_url: str) -> dict:
    return {**walk.clean_env(root_parent, scratch), **s3_environment(endpoint_url)}


@pytest.fixture(scope="session")
def metaflow_s3_walk(s3_root_parent: Path, s3_server: MotoServer, tmp_path_factory) -> dict:  # noqa: F811
    """Metaflow's walk of the S3 datastore, cached beside it (the S3 objects are the same every session)."""
    digest = hashlib.sha256(Path(walk.__file__).read_bytes()).hexdigest()[:16]
    cached = s3_root_parent / "walks" / ("metaflow-%s.json" % digest)
    if not cached.is_file():
        cached.parent.mkdir(exist_ok=True)
        scratch = tmp_path_factory.mktemp("metaflow-s3-walk")
        walk.run_walker(["walk", "--api", "metaflow", "--root", str(s3_root_parent), "--out", str(cached)],
                        _walk_env(s3_root_parent, scratch, s3_server.endpoint_url), scratch, WALK_TIMEOUT_S)
    return json.loads(cached.read_text())


@pytest.fixture(scope="session")
def client_s3_walks(s3_root_parent: Path, s3_server: MotoServer, tmp_path_factory) -> dict:  # noqa: F811
    """Our client's walks with Metaflow blocked, cold then warm (same disk cache)."""
    scratch = tmp_path_factory.mktemp("client-s3-walk")
    walks = {}
    for label in ("cold", "warm"):
        out = scratch / ("client-%s.json" % label)
        walk.run_walker(
            ["walk", "--api", "client", "--root", str(s3_root_parent), "--out", str(out), "--block-metaflow"],
            _walk_env(s3_root_parent, scratch, s3_server.endpoint_url), scratch, WALK_TIMEOUT_S)
        walks[label] = json.loads(out.read_text())
    return walks


def test_the_runs_really_live_in_s3(s3_root_parent: Path, s3_server: MotoServer) -> None:  # noqa: F811
    """Guards the build: the local tree holds metadata only; attempt files and blobs are in the bucket."""
    manifest = load_manifest(s3_root_parent)
    kitchen = manifest["runs"]["kitchen"]["pathspec"]
    local_files = [p for p in (s3_root_parent / ".metaflow" / kitchen).rglob("*") if p.is_file()]
    assert local_files and all("_meta" in p.parts for p in local_files)
    listed = s3_server.client().list_objects_v2(Bucket=BUCKET, Prefix="%s/%s/start/" % (S3_PREFIX, kitchen))
    assert any(obj["Key"].endswith("/0.data.json") for obj in listed.get("Contents", []))


@pytest.mark.parametrize("section", SECTIONS)
def test_section_matches_metaflow(section: str, client_s3_walks: dict, metaflow_s3_walk: dict) -> None:
    diffs = _unexpected(client_s3_walks["cold"]["sections"][section], metaflow_s3_walk["sections"][section])
    assert not diffs, _report(diffs)


@pytest.mark.parametrize("section", SECTIONS)
def test_warm_cache_matches_metaflow(section: str, client_s3_walks: dict, metaflow_s3_walk: dict) -> None:
    diffs = _unexpected(client_s3_walks["warm"]["sections"][section], metaflow_s3_walk["sections"][section])
    assert not diffs, _report(diffs)


def test_s3_walk_reached_the_data(metaflow_s3_walk: dict) -> None:
    """Guards the comparison: Metaflow's own walk over S3 loaded artifacts and logs (not only errors)."""
    kitchen = metaflow_s3_walk["sections"]["run:kitchen"]
    start_task = next(v for k, v in kitchen["step:start"].items() if k.startswith("task:"))
    assert start_task["stdout"] == "start stdout: é ✓ 日本 😀\n"
    assert start_task["data.table"].startswith("name,city\n")
    assert metaflow_s3_walk["sections"]["run:codepkg"]["code"]["script_name"] == "failflow.py"


# -- failures over S3, through the client API ------------------------------------------------------------------
# Each runs our client in a fresh subprocess (its storage objects and caches are process-wide) that follows a
# script; the test changes the server between the script's steps, which it signals with lines on stdin/stdout.

FAULT_SETTINGS = {"MFFS_S3_CONNECT_TIMEOUT": "1", "MFFS_S3_READ_TIMEOUT": "1", "MFFS_S3_MAX_ATTEMPTS": "2",
                  "MFFS_S3_FAILFAST_SECONDS": "2"}
# One bounded request (2 attempts x 1 s + at most 2 s backoff), then the fail-fast window answers at once; slack.
FAULT_BOUND_S = 10


class ClientScript:
    """`python -c <code> <args>` with our client (Metaflow blocked) on the S3 datastore; `step()` sends a line
    and returns the next JSON line the script prints."""

    def __init__(self, code: str, args: list, root_parent: Path, endpoint_url: str, scratch: Path,
                 settings: Optional[dict] = None):
        env = _walk_env(root_parent, scratch, endpoint_url)
        env.update(FAULT_SETTINGS, **(settings or {}))
        prelude = ("import sys\nfrom tests.support.walk import MetaflowBlocker\n"
                   "sys.meta_path.insert(0, MetaflowBlocker())\n")
        self.process = subprocess.Popen([sys.executable, "-c", prelude + code, *args], env=env, cwd=str(scratch),
                                        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                        text=True)

    def step(self, line: str = "") -> dict:
        if line is not None:
            self.process.stdin.write(line + "\n")
            self.process.stdin.flush()
        out = self.process.stdout.readline()
        if not out:
            self.process.wait(timeout=10)
            raise AssertionError("client script died:\n%s" % self.process.stderr.read()[-4000:])
        return json.loads(out)

    def __enter__(self) -> "ClientScript":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait()
        for stream in (self.process.stdin, self.process.stdout, self.process.stderr):
            stream.close()


@contextmanager
def kitchen_blob_replaced(server: MotoServer, sha: str, body: Optional[bytes]) -> Iterator[None]:
    """Inside the block KitchenFlow's blob `sha` holds `body` (is deleted when None); restored afterwards."""
    s3 = server.client()
    key = "%s/KitchenFlow/data/%s/%s" % (S3_PREFIX, sha[:2], sha)
    saved = s3.get_object(Bucket=BUCKET, Key=key)
    original, metadata = saved["Body"].read(), saved["Metadata"]
    if body is None:
        s3.delete_object(Bucket=BUCKET, Key=key)
    else:
        s3.put_object(Bucket=BUCKET, Key=key, Body=body, Metadata=metadata)
    try:
        yield
    finally:
        s3.put_object(Bucket=BUCKET, Key=key, Body=original, Metadata=metadata)


MISSING_BLOB_SCRIPT = """
import json
from client import Run, namespace
namespace(None)
task = Run(sys.argv[1])["branch_a"].task
print(json.dumps({"sha": task["a"].sha}), flush=True)
sys.stdin.readline()  # the blob is gone now
try:
    task["a"].data
    error = None
except Exception as exc:
    error = [type(exc).__name__, str(exc)]
others = {a.id: repr(a.data) for a in task if a.id != "a"}
print(json.dumps({"error": error, "others": others, "successful": task.successful}), flush=True)
"""


def test_a_missing_blob_fails_that_artifact_only(
    s3_root_parent: Path, s3_server: MotoServer, tmp_path: Path  # noqa: F811
) -> None:
    run = load_manifest(s3_root_parent)["runs"]["kitchen"]["pathspec"]
    with ClientScript(MISSING_BLOB_SCRIPT, [run], s3_root_parent, s3_server.endpoint_url, tmp_path) as script:
        sha = script.step(None)["sha"]
        with kitchen_blob_replaced(s3_server, sha, None):
            result = script.step()
    assert result["error"] is not None, "loading a deleted blob succeeded"
    assert sha in result["error"][1], result["error"]
    # Everything else about the task still works.
    assert result["others"]["x"] == repr("from a")
    assert result["successful"] is True


CARD_LISTS_SCRIPT = """
import json
from client import Run, namespace
from client.storage import s3_http
namespace(None)
run = Run(sys.argv[1])
run["end"].task["name"].data
card_lists = []
s3_http.request_hooks.append(
    lambda stage, operation, params: stage == "before" and operation == "ListObjectsV2"
    and card_lists.append(params["Prefix"]))
cards = {task.pathspec: task.cards().names for step in run for task in step}
print(json.dumps({"cards": cards, "card_lists": [p for p in card_lists if "/mf.cards/" in p],
                  "steps": len(list(run))}), flush=True)
"""


def test_card_directories_are_listed_per_step_not_per_task(
    s3_root_parent: Path, s3_server: MotoServer, tmp_path: Path  # noqa: F811
) -> None:
    run = load_manifest(s3_root_parent)["runs"]["kitchen"]["pathspec"]
    settings = {"MFFS_TTL": "600"}  # no listing expires during the walk
    with ClientScript(CARD_LISTS_SCRIPT, [run], s3_root_parent, s3_server.endpoint_url, tmp_path, settings) as script:
        result = script.step(None)
    # What listing both card paths of every task, as before, finds.
    server_listing = s3_server.client()
    expected = {}
    for pathspec in result["cards"]:
        flow, run_id, step, task = pathspec.split("/")
        names = []
        for path in ("steps/%s/tasks/%s" % (step, task), "tasks/%s" % task):
            prefix = "%s/mf.cards/%s/runs/%s/%s/cards/" % (S3_PREFIX, flow, run_id, path)
            listed = server_listing.list_objects_v2(Bucket=BUCKET, Prefix=prefix).get("Contents", [])
            names = sorted(obj["Key"][len(prefix):] for obj in listed if obj["Key"].endswith(".html"))
            if names:
                break
        expected[pathspec] = names
    assert result["cards"] == expected
    with_cards = sum(1 for names in expected.values() if names)
    # One listing per step and one of the run's legacy directory, then one per task that has cards; listing
    # both paths of every task without cards would take more.
    bound = result["steps"] + 1 + with_cards
    assert with_cards >= 1 and 2 * len(expected) - with_cards > bound
    assert len(result["card_lists"]) <= bound, result["card_lists"]


INDEX_PREFETCH_SCRIPT = """
import json
from client import Run, namespace
from client.storage import s3_http
namespace(None)
step = max(Run(sys.argv[1]), key=lambda step: len(list(step)))
tasks = list(step)
first = {a.id: a.type_name for a in tasks[0]}
gets = []
s3_http.request_hooks.append(
    lambda stage, operation, params: stage == "before" and operation == "GetObject" and gets.append(params["Key"]))
types = [{a.id: a.type_name for a in task} for task in tasks[1:]]
print(json.dumps({"tasks": len(tasks), "types": [first] + types,
                  "index_gets": [key for key in gets if key.endswith((".data.json", ".DONE.lock"))]}), flush=True)
"""


def test_the_stored_types_of_a_steps_tasks_come_with_the_first_tasks(
    s3_root_parent: Path, s3_server: MotoServer, tmp_path: Path  # noqa: F811
) -> None:
    """A listing of a step's tasks (the mount's) asks each task for its artifacts' stored types, which live in
    each task's `<A>.data.json`: the first task's read fetches the others' in parallel."""
    run = load_manifest(s3_root_parent)["runs"]["kitchen"]["pathspec"]
    with ClientScript(INDEX_PREFETCH_SCRIPT, [run], s3_root_parent, s3_server.endpoint_url, tmp_path) as script:
        result = script.step(None)
    assert result["tasks"] >= 3
    assert result["index_gets"] == []
    assert all(types and all(name.startswith("<class ") for name in types.values()) for types in result["types"])


STOPPED_SERVER_SCRIPT = """
import errno, json, time
from client import Run, namespace
namespace(None)
run = Run(sys.argv[1])
tasks = [task for step in run for task in step]
print(json.dumps({"first": tasks[0].data.name}), flush=True)

sys.stdin.readline()  # the server stopped answering
started = time.monotonic()
outcomes = []
for task in tasks[1:]:
    try:
        task.stdout
        outcomes.append("ok")
    except OSError as exc:
        outcomes.append(errno.errorcode.get(exc.errno, str(exc.errno)))
    except Exception as exc:
        outcomes.append(type(exc).__name__ + ": " + str(exc))
print(json.dumps({"elapsed": time.monotonic() - started, "outcomes": outcomes}), flush=True)

sys.stdin.readline()  # the server is back
deadline = time.monotonic() + 15
while True:
    try:
        stdout = [task.stdout for task in tasks]
        break
    except OSError:
        if time.monotonic() > deadline:
            raise
        time.sleep(0.5)
print(json.dumps({"stdout": stdout}), flush=True)
"""


def test_server_stopped_mid_walk_fails_within_the_timeout_and_recovers(
    s3_root_parent: Path, fault_proxy, tmp_path: Path  # noqa: F811
) -> None:
    run = load_manifest(s3_root_parent)["runs"]["kitchen"]["pathspec"]
    with ClientScript(STOPPED_SERVER_SCRIPT, [run], s3_root_parent, fault_proxy.endpoint_url, tmp_path) as script:
        assert script.step(None) == {"first": "KitchenFlow"}
        fault_proxy.mode = "hang"
        stopped = script.step()
        fault_proxy.mode = "forward"
        recovered = script.step()
    assert stopped["outcomes"] and set(stopped["outcomes"]) == {"EIO"}, stopped["outcomes"]
    assert stopped["elapsed"] < FAULT_BOUND_S, stopped
    assert any("é ✓ 日本 😀" in text for text in recovered["stdout"])


CORRUPT_SIBLING_SCRIPT = """
import json
from client import Run, namespace
namespace(None)
tasks = list(Run(sys.argv[1])["foreach_inner"])
print(json.dumps({"shas": [task["pair"].sha for task in tasks]}), flush=True)
sys.stdin.readline()  # the second task's blob is corrupt now
outcomes = []
for task in tasks:  # the first read prefetches the others' blobs, the corrupt one among them
    try:
        outcomes.append(task["pair"].data)
    except Exception as exc:
        outcomes.append("error: %s: %s" % (type(exc).__name__, exc))
print(json.dumps({"outcomes": outcomes}), flush=True)
"""


def test_a_corrupt_sibling_blob_fails_only_its_own_read(
    s3_root_parent: Path, s3_server: MotoServer, tmp_path: Path  # noqa: F811
) -> None:
    run = load_manifest(s3_root_parent)["runs"]["kitchen"]["pathspec"]
    with ClientScript(CORRUPT_SIBLING_SCRIPT, [run], s3_root_parent, s3_server.endpoint_url, tmp_path) as script:
        shas = script.step(None)["shas"]
        assert len(set(shas)) == len(shas) >= 3
        with kitchen_blob_replaced(s3_server, shas[1], b"not a gzip, not a pickle"):
            outcomes = script.step()["outcomes"]
    assert outcomes[1].startswith("error: ") and shas[1] in outcomes[1], outcomes
    others = outcomes[:1] + outcomes[2:]
    assert len(set(others)) == len(others) and set(others) <= {"a1", "a2", "b1", "b2"}, outcomes
