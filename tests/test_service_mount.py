"""The mount over the metadata service (real FUSE, replayed metaflow-service 2.5.1 answers): every run, step,
task and artifact the recorded Metaflow client walk saw is there, with the same states, logs and bytes."""
from __future__ import annotations

import hashlib
import json
import os
from datetime import datetime
from pathlib import Path

import pytest

from tests.support.mount import mounted
from tests.support.replay_server import FIXTURE_DIR, replay_server_session, replay_service  # noqa: F401

pytestmark = [pytest.mark.fuse, pytest.mark.timeout(300)]

EXPECTED = json.loads((Path(FIXTURE_DIR) / "expected-client.json").read_text())


def read_json(path: Path):
    return json.loads(path.read_bytes())


def naive_local(iso: str) -> datetime:
    """A mount time (ISO 8601 with offset) as Metaflow's client shows it: naive local time (TZ=UTC here)."""
    return datetime.fromisoformat(iso).replace(tzinfo=None)


def test_mount_over_the_service_matches_the_recorded_client_walk(replay_service, tmp_path: Path) -> None:  # noqa: F811
    home = tmp_path / "metaflow-home"
    home.mkdir()
    env = {
        "PATH": os.environ["PATH"],
        "HOME": str(tmp_path),
        "USER": "alice",
        "TZ": "UTC",
        "METAFLOW_HOME": str(home),
        "METAFLOW_DEFAULT_METADATA": "service",
        "METAFLOW_SERVICE_URL": replay_service.url,
        "MFFS_ALLOWED_ROOTS": os.path.join(FIXTURE_DIR, "datastore"),  # the recorded runs' root, configured nowhere
    }
    with mounted(tmp_path / "mnt", "--all-namespaces", env=env) as mount:
        assert sorted(os.listdir(mount.path)) == sorted(flow["id"] for flow in EXPECTED["flows"])
        checked = 0
        for flow in EXPECTED["flows"]:
            flow_dir = mount.path / flow["id"]
            assert os.readlink(flow_dir / "latest") == flow["latest_run"]
            if flow["latest_successful_run"]:
                assert os.readlink(flow_dir / "latest_successful") == flow["latest_successful_run"]
            for run in flow["runs"]:
                run_dir = flow_dir / run["id"]
                record = read_json(run_dir / "run.json")
                assert (record["finished"], record["successful"]) == (run["finished"], run["successful"])
                assert naive_local(record["created_at"]) == datetime.fromisoformat(run["created_at"])
                assert sorted(record["tags"]) == sorted(run["tags"])
                listed = {name for name in os.listdir(run_dir) if (run_dir / name / "step.json").exists()}
                assert listed == {step["id"] for step in run["steps"] if not step["id"].startswith("_")}
                for step in run["steps"]:
                    for task in step["tasks"]:
                        task_dir = run_dir / step["id"] / task["id"]
                        info = read_json(task_dir / "task.json")
                        assert (info["finished"], info["successful"]) == (task["finished"], task["successful"])
                        assert info["current_attempt"] == task["current_attempt"]
                        assert (task_dir / "stdout.log").read_text(encoding="utf-8") == task["stdout"]
                        assert (task_dir / "stderr.log").read_text(encoding="utf-8") == task["stderr"]
                        for artifact in task["artifacts"]:
                            artifact_dir = task_dir / artifact["id"]
                            blob = (artifact_dir / "data.pickle").read_bytes()
                            assert hashlib.sha1(blob).hexdigest() == artifact["sha"], artifact_dir
                            meta = read_json(artifact_dir / "meta.json")
                            assert (meta["sha"], meta["size"]) == (artifact["sha"], artifact["size"])
                            checked += 1
        assert checked > 100  # every artifact of every task of every run
        assert mount.process.poll() is None
