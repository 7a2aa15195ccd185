"""The mount over an S3 datastore (real FUSE, `mffs mount` in a subprocess, always unmounted): what it shows
matches Metaflow's client on the same S3 data, and a server that stops answering gives EIO within the timeout,
never a hang, then recovers."""
from __future__ import annotations

import errno
import hashlib
import json
import os
import time
from pathlib import Path

import pytest

from tests.support import walk
from tests.support.datastores import load_manifest
from tests.support.mount import mounted
from tests.support.s3server import MotoServer, fault_proxy, s3_environment, s3_root_parent, s3_server  # noqa: F401
from tests.test_s3_client import FAULT_BOUND_S, FAULT_SETTINGS, metaflow_s3_walk  # noqa: F401

pytestmark = [pytest.mark.fuse, pytest.mark.timeout(300)]


def mount_env(root_parent: Path, scratch: Path, endpoint_url: str) -> dict:
    return {**walk.clean_env(root_parent, scratch), **s3_environment(endpoint_url), **FAULT_SETTINGS}


def read_json(path: Path):
    return json.loads(path.read_bytes())


def children(view: dict, kind: str) -> dict:
    """`{"step:start": ..., "task:1": ...}` entries of one kind from a walk view, by id."""
    return {key.split(":", 1)[1]: value for key, value in view.items() if key.startswith(kind + ":")}


def first_task_dir(step_dir: Path) -> Path:
    return step_dir / sorted(name for name in os.listdir(step_dir) if name != "step.json")[0]


def test_mount_over_s3_matches_metaflow(
    s3_root_parent: Path, s3_server: MotoServer, metaflow_s3_walk: dict, tmp_path: Path  # noqa: F811
) -> None:
    pathspec = load_manifest(s3_root_parent)["runs"]["kitchen"]["pathspec"]
    theirs = metaflow_s3_walk["sections"]["run:kitchen"]
    env = mount_env(s3_root_parent, tmp_path, s3_server.endpoint_url)
    with mounted(tmp_path / "mnt", "--datastore-root", str(s3_root_parent), env=env) as mount:
        run_dir = mount.path / pathspec
        assert read_json(run_dir / "run.json")["successful"] is theirs["successful"] is True
        checked = 0
        for step_name, step in children(theirs, "step").items():
            if step_name.startswith("_"):
                continue
            for task_id, task in children(step, "task").items():
                task_dir = run_dir / step_name / task_id
                record = read_json(task_dir / "task.json")
                assert (record["finished"], record["successful"]) == (task["finished"], task["successful"])
                assert (task_dir / "stdout.log").read_bytes() == task["stdout"].encode("utf-8")
                assert (task_dir / "stderr.log").read_bytes() == task["stderr"].encode("utf-8")
                for name, artifact in children(task, "artifact").items():
                    if "error" in artifact or name.startswith("_"):
                        continue
                    blob = (task_dir / name / "data.pickle").read_bytes()
                    assert hashlib.sha1(blob).hexdigest() == artifact["sha"], task_dir / name
                    assert read_json(task_dir / name / "meta.json")["size"] == artifact["size"]
                    checked += 1
        assert checked > 50  # the walk reached the artifacts of every task
        assert mount.process.poll() is None


def test_mount_over_s3_gives_eio_while_the_server_is_stopped_then_recovers(
    s3_root_parent: Path, fault_proxy, tmp_path: Path  # noqa: F811
) -> None:
    pathspec = load_manifest(s3_root_parent)["runs"]["kitchen"]["pathspec"]
    env = mount_env(s3_root_parent, tmp_path, fault_proxy.endpoint_url)
    with mounted(tmp_path / "mnt", "--datastore-root", str(s3_root_parent), env=env) as mount:
        run_dir = mount.path / pathspec
        start_task = first_task_dir(run_dir / "start")
        assert (start_task / "name" / "repr.txt").read_text() == "'KitchenFlow'\n"

        fault_proxy.mode = "hang"
        end_task = first_task_dir(run_dir / "end")
        started = time.monotonic()
        with pytest.raises(OSError) as raised:
            (end_task / "stdout.log").read_bytes()  # logs live only in S3
        assert raised.value.errno == errno.EIO
        assert time.monotonic() - started < FAULT_BOUND_S
        assert mount.process.poll() is None  # still serving
        assert (start_task / "name" / "repr.txt").read_text() == "'KitchenFlow'\n"  # what it has stays readable

        fault_proxy.mode = "forward"
        deadline = time.monotonic() + 15
        while True:
            try:
                stdout = (end_task / "stdout.log").read_text()
                break
            except OSError as exc:
                assert exc.errno == errno.EIO
                assert time.monotonic() < deadline, "the mount did not recover after S3 came back"
                time.sleep(0.5)
        assert "all pairs: a1, a2, b1, b2" in stdout
