"""Real FUSE mounts for tests: `mffs mount --foreground` in a subprocess, always unmounted.

    with mounted(mountpoint, "--datastore-root", str(root)) as mount:
        os.listdir(mount.path)
        mount.stats()["calls"]["getattr"]

Readiness is read from /proc/self/mounts (never by stat'ing the mountpoint, which blocks if the daemon hangs).
Cleanup, whatever happened: `fusermount3 -u`, then `fusermount3 -u -z`, then SIGKILL of our own daemon process.
"""
from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Iterator, List, Optional, Tuple

import pytest

from mffs import render
from mffs.cli import is_mounted  # noqa: F401  (the tests import it from here)
from tests.support.datastores import run_flow

REPO = Path(__file__).resolve().parents[2]
READY_TIMEOUT_S = 30.0


def expected_task_record(task) -> dict:
    """task.json as Metaflow's client describes `task` (parents/children sorted)."""
    return {
        "pathspec": task.pathspec,
        "id": task.id,
        "index": task.index,
        "created_at": render.iso_time(task.created_at),
        "finished_at": render.iso_time(task.finished_at),
        "finished": task.finished,
        "successful": task.successful,
        "current_attempt": task.current_attempt,
        "parents": sorted(task.parent_task_pathspecs),
        "children": sorted(task.child_task_pathspecs),
    }


def data_json_info(root: Path, artifact) -> dict:
    """The artifact's entry in its attempt's `<A>.data.json`, read straight from the local datastore."""
    attempt = artifact._object["attempt_id"]
    flow, run, step, task, name = artifact.path_components
    with open(root / ".metaflow" / flow / run / step / task / ("%d.data.json" % attempt)) as handle:
        return json.load(handle)["info"][name]


def mffs_command(*args: str) -> List[str]:
    return [sys.executable, "-m", "mffs.cli", *args]


def run_mffs(*args: str, env: Optional[dict] = None, timeout: float = 60) -> subprocess.CompletedProcess:
    """`mffs ARGS` from the repository, output captured as text."""
    return subprocess.run(
        mffs_command(*args), cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout
    )


def _fusermount(*args: str) -> bool:
    for binary in ("fusermount3", "fusermount"):
        with contextlib.suppress(FileNotFoundError):
            return subprocess.run([binary, *args], capture_output=True, timeout=10).returncode == 0
    return False


def force_unmount(path: Path, process: Optional[subprocess.Popen] = None) -> None:
    if is_mounted(path) and not _fusermount("-u", str(path)):
        _fusermount("-u", "-z", str(path))
    if process is not None:
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)


class Mount:
    def __init__(self, path: Path, process: subprocess.Popen, log_file: Path):
        self.path = path
        self.process = process
        self.log_file = log_file

    def stats(self) -> dict:
        return json.loads((self.path / ".mffs" / "stats").read_text())

    def calls(self, name: str) -> int:
        return self.stats()["calls"].get(name, 0)

    def readahead_pid(self) -> int:
        """The readahead worker's pid, once a walk started it: walks the mount until one lists a task."""
        for _ in os.walk(self.path):
            pid = self.stats()["readahead_worker"]["pid"]
            if pid is not None:
                return pid
        raise AssertionError("no task listed in %s started the readahead worker" % self.path)

    def log(self) -> str:
        return self.log_file.read_text(errors="replace") if self.log_file.exists() else ""


@contextlib.contextmanager
def mounted(
    mountpoint: Path, *args: str, env: Optional[dict] = None, log_file: Optional[Path] = None
) -> Iterator[Mount]:
    """Mount (foreground daemon in a subprocess) with `mffs mount MOUNTPOINT ARGS`; unmount on exit, always."""
    mountpoint = Path(mountpoint)
    mountpoint.mkdir(parents=True, exist_ok=True)
    log_file = Path(log_file or str(mountpoint) + ".log")
    with open(log_file, "wb") as log_handle:
        process = subprocess.Popen(
            mffs_command("mount", str(mountpoint), *args, "--foreground"),
            cwd=REPO,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log_handle,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    mount = Mount(mountpoint, process, log_file)
    try:
        deadline = time.monotonic() + READY_TIMEOUT_S
        while not is_mounted(mountpoint):
            if process.poll() is not None:
                raise RuntimeError("mffs exited %s before mounting:\n%s" % (process.returncode, mount.log()))
            if time.monotonic() > deadline:
                raise RuntimeError("mffs did not mount within %ss:\n%s" % (READY_TIMEOUT_S, mount.log()))
            time.sleep(0.05)
        yield mount
    finally:
        force_unmount(mountpoint, process)


def terminate(mount: Mount, sig: int = signal.SIGTERM, timeout: float = 10) -> int:
    """Signal the daemon and wait for it; returns its exit status."""
    mount.process.send_signal(sig)
    return mount.process.wait(timeout=timeout)


@pytest.fixture(scope="session")
def corrupt_datastore(tmp_path_factory: pytest.TempPathFactory) -> Tuple[Path, str, str]:
    """A private datastore with one HelloFlow run whose `score` blob is corrupt (gzip header, garbage after):
    (directory holding .metaflow, pathspec of the start task, artifact name)."""
    root = tmp_path_factory.mktemp("corrupt")
    run_id = run_flow("helloflow.py", ["run"], root)
    task_dirs = list((root / ".metaflow" / "HelloFlow" / run_id / "start").glob("[0-9]*"))
    task_id = task_dirs[0].name
    info = json.loads((task_dirs[0] / "0.data.json").read_text())
    sha = info["objects"]["score"]
    blob = root / ".metaflow" / "HelloFlow" / "data" / sha[:2] / sha
    blob.write_bytes(blob.read_bytes()[:10] + b"not deflate data" * 4)  # a gzip header, then garbage
    return root, "HelloFlow/%s/start/%s" % (run_id, task_id), "score"
