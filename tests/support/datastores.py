"""Real Metaflow runs that make the test datastores, built once and cached on disk.

Every datastore lives in `<TESTDATA_DIR>/<key>/` (the parent of `.metaflow`), where `<key>` hashes the flow sources,
the scenario list and the Metaflow version. A `manifest.json` next to `.metaflow` says which run id is which
scenario. The manifest is written last, atomically: a directory without it is a crashed build and is rebuilt.
The datastore cannot be built elsewhere and renamed into place because Metaflow records absolute paths inside it
(`ds-root` metadata, artifact `location`, IncludeFile URLs, code package `location`).

Run as a script to build (and print) the standard datastore: `python -m tests.support.datastores`.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import importlib.metadata
import json
import os
import queue
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Callable, Iterator, Mapping, Optional, Sequence

FLOWS_DIR = Path(__file__).resolve().parent.parent / "flows"
TESTDATA_DIR = Path(os.environ.get("MFFS_TESTDATA_DIR", "/tmp/mffs-testdata"))
MANIFEST_NAME = "manifest.json"
# Unpickling TypesFlow's `evil` artifact touches the file named by this variable (see tests/flows/typesflow.py).
PICKLE_MARKER_ENV = "MFFS_PICKLE_MARKER"
# A CSV with non-ASCII text, given to KitchenFlow's IncludeFile parameter.
KITCHEN_TABLE = "name,city\nJosé,Zürich\n日本,東京\n"
RUN_TIMEOUT_S = 600
UNFINISHED_START_TIMEOUT_S = 120

_RUN_ID_RE = re.compile(r"\(run-id (\S+)\):")


class FlowRunError(RuntimeError):
    """A flow run exited with an unexpected status; carries the tail of its output."""


def flow_path(flow_file: str) -> Path:
    """Path of a flow in tests/flows/ (a bare file name) or the given path."""
    path = Path(flow_file)
    return path if path.is_absolute() or path.parent != Path(".") else FLOWS_DIR / path


def _flow_env(root_parent: Path, user: str, env: Optional[Mapping[str, str]]) -> dict:
    """Environment for a flow run: hermetic Metaflow config (no inherited METAFLOW_*/MFFS_* variables, an empty
    METAFLOW_HOME), the local datastore under `root_parent`, and `user` as the only user source."""
    run_env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("METAFLOW_", "MFFS_")) and k not in ("SUDO_USER", "USERNAME")
    }
    home = root_parent / "metaflow-home"
    home.mkdir(parents=True, exist_ok=True)
    run_env.update(
        METAFLOW_HOME=str(home),
        METAFLOW_DATASTORE_SYSROOT_LOCAL=str(root_parent),
        USER=user,
        PYTHONIOENCODING="utf-8",
    )
    run_env.update(env or {})
    return run_env


def _work_dir(root_parent: Path) -> Path:
    work = root_parent / "work"
    work.mkdir(parents=True, exist_ok=True)
    (work / "table.csv").write_text(KITCHEN_TABLE, encoding="utf-8")
    return work


def _read_latest_run(root_parent: Path, flow_file: Path) -> str:
    flow_name = _flow_class_name(flow_file)
    return (root_parent / ".metaflow" / flow_name / "latest_run").read_text().strip()


def _flow_class_name(flow_file: Path) -> str:
    match = re.search(r"^class (\w+)\(FlowSpec\)", flow_file.read_text(), re.M)
    if not match:
        raise ValueError("no FlowSpec subclass in %s" % flow_file)
    return match.group(1)


def _flow_process(
    flow: Path, args: Sequence[str], root_parent: Path, user: str, env: Optional[Mapping[str, str]]
) -> dict:
    """subprocess arguments to run a flow file in the hermetic environment of `root_parent`, output captured."""
    return dict(
        args=[sys.executable, str(flow), "--no-pylint", *args],
        cwd=_work_dir(root_parent),
        env=_flow_env(root_parent, user, env),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )


def run_flow(
    flow_file: str,
    args: Sequence[str],
    root_parent: Path,
    env: Optional[Mapping[str, str]] = None,
    user: str = "alice",
    check: bool = True,
) -> str:
    """Run `python <flow_file> <args>` (e.g. `["run", "--tag", "x"]` or `["resume", "--origin-run-id", r]`) with
    the local datastore in `root_parent/.metaflow` and returns the run id. `env` adds to (and overrides) the
    hermetic environment, e.g. `{"METAFLOW_DEFAULT_DATASTORE": "s3", ...}`. With `check`, a non-zero exit raises
    FlowRunError; without it, a failed run still returns its id."""
    root_parent = Path(root_parent)
    flow = flow_path(flow_file)
    proc = subprocess.run(**_flow_process(flow, args, root_parent, user, env), timeout=RUN_TIMEOUT_S)
    output = proc.stdout.decode("utf-8", "replace")
    if check and proc.returncode != 0:
        raise FlowRunError("%s %s exited %d:\n%s" % (flow.name, " ".join(args), proc.returncode, output[-4000:]))
    match = _RUN_ID_RE.search(output)
    if match:
        return match.group(1)
    if (root_parent / ".metaflow").is_dir():
        return _read_latest_run(root_parent, flow)
    raise FlowRunError("no run id in the output of %s %s:\n%s" % (flow.name, " ".join(args), output[-4000:]))


def start_unfinished_run(
    flow_file: str,
    args: Sequence[str],
    root_parent: Path,
    started_line: str,
    env: Optional[Mapping[str, str]] = None,
    user: str = "alice",
) -> str:
    """Start a run, wait until some task prints `started_line` (so that task's attempt has begun and registered
    its metadata), then SIGKILL the whole process group: the run stays unfinished forever. Returns the run id."""
    root_parent = Path(root_parent)
    flow = flow_path(flow_file)
    proc = subprocess.Popen(**_flow_process(flow, args, root_parent, user, env), start_new_session=True)
    lines: "queue.Queue[Optional[str]]" = queue.Queue()

    def pump() -> None:
        for raw in proc.stdout:
            lines.put(raw.decode("utf-8", "replace"))
        lines.put(None)

    threading.Thread(target=pump, daemon=True).start()
    run_id = None
    seen = []
    deadline = time.monotonic() + UNFINISHED_START_TIMEOUT_S
    try:
        while time.monotonic() < deadline:
            try:
                line = lines.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                break
            if line is None:  # the flow exited on its own
                break
            seen.append(line)
            match = _RUN_ID_RE.search(line)
            if match:
                run_id = match.group(1)
            if started_line in line:
                break
    finally:
        with contextlib.suppress(ProcessLookupError):  # the group may already be gone
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    if run_id is None or not any(started_line in line for line in seen):
        raise FlowRunError("%s never printed %r:\n%s" % (flow.name, started_line, "".join(seen)[-4000:]))
    return run_id


@contextlib.contextmanager
def _exclusive(lock_path: Path) -> Iterator[None]:
    """Serialise builders across processes (several test sessions may start at once)."""
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_path, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _metaflow_version() -> str:
    return importlib.metadata.version("metaflow")


def _cache_key(kind: str, spec: object, flow_files: Sequence[str]) -> str:
    """Depends only on the flows a datastore runs, so editing another flow does not force a rebuild."""
    digest = hashlib.sha256()
    digest.update(repr((kind, spec, _metaflow_version())).encode())
    for name in sorted(flow_files):
        digest.update(name.encode() + b"\0" + flow_path(name).read_bytes() + b"\0")
    return "%s-%s" % (kind, digest.hexdigest()[:16])


def _cached_build(kind: str, spec: object, flow_files: Sequence[str], build: Callable[[Path], dict]) -> Path:
    """Return `<TESTDATA_DIR>/<key>` holding a complete datastore, building it with `build(parent) -> runs`
    unless a complete one (with its manifest) exists. `flow_files` are the flows `build` runs."""
    parent = TESTDATA_DIR / _cache_key(kind, spec, flow_files)
    manifest_path = parent / MANIFEST_NAME
    if manifest_path.is_file():
        return parent
    with _exclusive(TESTDATA_DIR / (parent.name + ".lock")):
        if manifest_path.is_file():
            return parent
        if parent.exists():
            shutil.rmtree(parent)  # left by a crashed build
        parent.mkdir(parents=True)
        started = time.monotonic()
        runs = build(parent)
        manifest = {
            "kind": kind,
            "spec": spec,
            "metaflow_version": _metaflow_version(),
            "root_parent": str(parent),
            "build_seconds": round(time.monotonic() - started, 1),
            "pickle_marker_env": PICKLE_MARKER_ENV,
            "runs": runs,
        }
        tmp = manifest_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(manifest, indent=2, sort_keys=True))
        os.replace(tmp, manifest_path)
    return parent


def load_manifest(root_parent: Path) -> dict:
    """The manifest of a datastore built by this module."""
    return json.loads((Path(root_parent) / MANIFEST_NAME).read_text())


def _record(flow: str, run_id: str, user: str, tags: Sequence[str] = (), **extra: object) -> dict:
    return {"flow": flow, "run_id": run_id, "pathspec": "%s/%s" % (flow, run_id), "user": user,
            "tags": list(tags), **extra}


# Scenario name -> what the standard datastore holds. Part of the cache key, so editing it forces a rebuild.
STANDARD_SCENARIOS = {
    "kitchen": "KitchenFlow by alice, tags mytag and exp:1: split/join, retry, nested foreach, catch, card, "
               "IncludeFile, parameters, non-ASCII logs",
    "types": "TypesFlow by alice: the artifact value zoo, JSON/bool parameters, a Config",
    "fail": "FailFlow by alice, tag failtag: step middle raises KeyError, run failed",
    "resume": "FailFlow by alice, tag resumetag: resume of `fail` with MFFS_FAILFLOW_PASS=1, successful",
    "codepkg": "FailFlow by bob with METAFLOW_FEAT_ALWAYS_UPLOAD_CODE_PACKAGE=1, successful, has a code package",
    "hello_bob": "HelloFlow by bob (the only run of that flow): invisible in alice's namespace",
    "sleep_done": "SleepFlow by alice with --seconds 0: successful",
    "unfinished": "SleepFlow by alice with --seconds 3600, killed while `sleeper` ran: unfinished forever",
}
STANDARD_FLOWS = ["kitchenflow.py", "typesflow.py", "failflow.py", "helloflow.py", "sleepflow.py"]


def _build_standard(parent: Path) -> dict:
    runs = {}
    kitchen_tags = ["mytag", "exp:1"]
    run_id = run_flow("kitchenflow.py", ["run", "--table", "table.csv", *_tag_args(kitchen_tags)], parent)
    runs["kitchen"] = _record("KitchenFlow", run_id, "alice", kitchen_tags)

    run_id = run_flow("typesflow.py", ["run"], parent)
    runs["types"] = _record("TypesFlow", run_id, "alice")

    fail_id = run_flow("failflow.py", ["run", "--tag", "failtag"], parent, check=False)
    runs["fail"] = _record("FailFlow", fail_id, "alice", ["failtag"])
    run_id = run_flow("failflow.py", ["resume", "--origin-run-id", fail_id, "--tag", "resumetag"], parent,
                      env={"MFFS_FAILFLOW_PASS": "1"})
    runs["resume"] = _record("FailFlow", run_id, "alice", ["resumetag"], origin_run_id=fail_id)
    run_id = run_flow("failflow.py", ["run"], parent, user="bob",
                      env={"MFFS_FAILFLOW_PASS": "1", "METAFLOW_FEAT_ALWAYS_UPLOAD_CODE_PACKAGE": "1"})
    runs["codepkg"] = _record("FailFlow", run_id, "bob")

    run_id = run_flow("helloflow.py", ["run"], parent, user="bob")
    runs["hello_bob"] = _record("HelloFlow", run_id, "bob")

    run_id = run_flow("sleepflow.py", ["run", "--seconds", "0"], parent)
    runs["sleep_done"] = _record("SleepFlow", run_id, "alice")
    run_id = start_unfinished_run("sleepflow.py", ["run", "--seconds", "3600"], parent, "sleeping 3600 s")
    runs["unfinished"] = _record("SleepFlow", run_id, "alice")
    _check_unfinished(parent, run_id)
    assert set(runs) == set(STANDARD_SCENARIOS)
    return runs


def _tag_args(tags: Sequence[str]) -> list:
    return [arg for tag in tags for arg in ("--tag", tag)]


def _check_unfinished(parent: Path, run_id: str) -> None:
    """The killed sleeper attempt must have started (attempt.json) and never finished (no DONE.lock)."""
    task_dirs = list((parent / ".metaflow" / "SleepFlow" / run_id / "sleeper").glob("[0-9]*"))
    if len(task_dirs) != 1 or not (task_dirs[0] / "0.attempt.json").is_file() or (
        task_dirs[0] / "0.DONE.lock"
    ).exists():
        raise FlowRunError("SleepFlow/%s is not in the expected unfinished state: %s" % (run_id, task_dirs))


def build_local_datastore() -> Path:
    """The standard test datastore (see STANDARD_SCENARIOS); returns the directory holding `.metaflow` and
    `manifest.json`. Built once, then reused by every session until a flow or the scenario list changes."""
    return _cached_build("standard", STANDARD_SCENARIOS, STANDARD_FLOWS, _build_standard)


def build_foreach_datastore(n_tasks: int, n_runs: int) -> Path:
    """A benchmark datastore: one WideFlow run with an `n_tasks`-wide foreach, and `n_runs` HelloFlow runs with
    different `lr` (for comparing runs). Slow for big sizes (~1 s of CPU per task); used by scripts/, not tests."""

    def build(parent: Path) -> dict:
        runs = {}
        run_id = run_flow("wideflow.py", ["run", "--width", str(n_tasks), "--max-num-splits", str(n_tasks + 1)],
                          parent)
        runs["wide"] = _record("WideFlow", run_id, "alice", n_tasks=n_tasks)
        for i in range(n_runs):
            lr = round(0.001 * (i + 1), 6)
            run_id = run_flow("helloflow.py", ["run", "--lr", str(lr)], parent)
            runs["hello_%d" % i] = _record("HelloFlow", run_id, "alice", lr=lr)
        return runs

    return _cached_build("foreach", {"n_tasks": n_tasks, "n_runs": n_runs}, ["wideflow.py", "helloflow.py"], build)


if __name__ == "__main__":
    built = build_local_datastore()
    print(built)
    print(json.dumps(load_manifest(built)["runs"], indent=2))
