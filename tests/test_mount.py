"""Real FUSE mounts (`mffs mount` in a subprocess) over datastores made by real Metaflow runs, checked against
Metaflow's client. Every mount is unmounted in a finally (tests/support/mount.py)."""
from __future__ import annotations

import errno
import hashlib
import json
import os
import pickle
import signal
import subprocess
import threading
import time
from pathlib import Path

import pytest

from mffs import render
from mffs.cli import DEFAULT_THREADS
from mffs.exports import export_names
from tests.support.datastores import run_flow
from tests.support.mount import (  # noqa: F401
    corrupt_datastore,
    data_json_info,
    expected_task_record,
    is_mounted,
    mounted,
    run_mffs,
    terminate,
)

pytestmark = [pytest.mark.fuse, pytest.mark.timeout(180)]


@pytest.fixture
def mount(client_env, tmp_path):
    with mounted(tmp_path / "mnt", "--datastore-root", str(client_env)) as active:
        yield active


def read_json(path: Path):
    data = path.read_bytes()
    assert data.endswith(b"\n")
    return json.loads(data)


def test_layout_and_records_match_metaflow(mount, mf, manifest, local_root):
    assert sorted(os.listdir(mount.path)) == sorted(flow.id for flow in mf.Metaflow().flows)
    pathspec = manifest["runs"]["kitchen"]["pathspec"]
    run = mf.Run(pathspec)
    flow_dir = mount.path / "KitchenFlow"
    assert {"latest", "latest_successful", "tags", run.id} <= set(os.listdir(flow_dir))
    run_dir = mount.path / pathspec
    assert sorted(os.listdir(run_dir)) == sorted(["run.json", "parameters.json"] + [step.id for step in run])
    run_record = read_json(run_dir / "run.json")
    assert run_record["created_at"] == render.iso_time(run.created_at)
    assert (run_record["finished"], run_record["successful"]) == (run.finished, run.successful)
    assert run_record["tags"] == sorted(run.tags)
    parameters_task = run["_parameters"].task
    declared = [parameter["name"] for parameter in parameters_task["_graph_info"].data["parameters"]]
    assert read_json(run_dir / "parameters.json") == {name: parameters_task[name].data for name in declared}
    for step in run:
        assert "step.json" in os.listdir(run_dir / step.id)
        for task in step:
            task_dir = mount.path / task.pathspec
            record = read_json(task_dir / "task.json")
            record["parents"], record["children"] = sorted(record["parents"]), sorted(record["children"])
            assert record == expected_task_record(task)
            assert (task_dir / "stdout.log").read_bytes() == task.stdout.encode("utf-8")
            assert (task_dir / "stderr.log").read_bytes() == task.stderr.encode("utf-8")
            assert len(read_json(task_dir / "metadata.json")) == len(task.metadata)
            for artifact in task:
                artifact_dir = task_dir / artifact.id
                blob = (artifact_dir / "data.pickle").read_bytes()
                assert hashlib.sha1(blob).hexdigest() == artifact.sha
                assert os.stat(artifact_dir / "data.pickle").st_size == len(blob)
                meta = read_json(artifact_dir / "meta.json")
                info = data_json_info(local_root, artifact)
                assert (meta["sha"], meta["size"], meta["type"], meta["encoding"]) == (
                    artifact.sha, artifact.size, info["type"], info["encoding"])
                if info["type"] in ("<class 'int'>", "<class 'str'>", "<class 'list'>", "<class 'float'>"):
                    if artifact.id != "table":
                        assert pickle.loads(blob) == artifact.data
                        assert (artifact_dir / "repr.txt").read_text() == repr(artifact.data) + "\n"
    # exact sizes: stat agrees with what a read returns, for every file of one task
    task_dir = mount.path / run["join_ab"].task.pathspec
    for root, _, files in os.walk(task_dir):
        for name in files:
            path = Path(root) / name
            assert os.stat(path).st_size == len(path.read_bytes()), path


def test_big_artifact_repr_reads_fully_before_and_after_its_size_is_known(mount, mf, manifest):
    task = mf.Run(manifest["runs"]["types"]["pathspec"])["start"].task
    path = mount.path / task.pathspec / "big" / "repr.txt"
    assert os.stat(path).st_size == 0  # not rendered by stat: the pickle is above --render-threshold
    first = path.read_bytes()
    assert first.startswith(repr(task["big"].data)[:1000].encode())
    assert path.read_bytes() == first  # right away, while the kernel may still hold size 0
    deadline = time.monotonic() + 5
    while os.stat(path).st_size != len(first):
        assert time.monotonic() < deadline, "the learned size never reached the kernel"
        time.sleep(0.1)


def test_mtimes_are_the_objects_times(mount, mf, manifest):
    run = mf.Run(manifest["runs"]["kitchen"]["pathspec"])
    task = run["start"].task
    assert os.stat(mount.path / run.pathspec).st_mtime == pytest.approx(run.created_at.timestamp(), abs=1e-3)
    assert os.stat(mount.path / task.pathspec / "task.json").st_mtime == pytest.approx(
        task.finished_at.timestamp(), abs=1e-3)
    artifact = task["rows"]
    assert os.stat(mount.path / artifact.pathspec / "repr.txt").st_mtime == pytest.approx(
        artifact.created_at.timestamp(), abs=1e-3)


def test_symlinks(mount, mf, manifest):
    flow = mf.Flow("FailFlow")
    assert os.readlink(mount.path / "FailFlow" / "latest") == flow.latest_run.id
    assert os.readlink(mount.path / "FailFlow" / "latest_successful") == flow.latest_successful_run.id
    assert read_json(mount.path / "FailFlow" / "latest_successful" / "run.json")["successful"] is True
    kitchen = manifest["runs"]["kitchen"]
    link = mount.path / "KitchenFlow" / "tags" / "mytag" / kitchen["run_id"]
    assert os.readlink(link) == "../../" + kitchen["run_id"]
    assert sorted(os.listdir(link)) == sorted(os.listdir(mount.path / kitchen["pathspec"]))


def test_hidden_names_are_reachable(mount, mf, manifest):
    run = mf.Run(manifest["runs"]["kitchen"]["pathspec"])
    run_dir = mount.path / run.pathspec
    assert "_parameters" not in os.listdir(run_dir)
    parameters_task = run["_parameters"].task
    assert (run_dir / "_parameters" / parameters_task.id / "alpha" / "repr.txt").read_text() == "0.5\n"
    task_dir = mount.path / run["start"].task.pathspec
    assert not [name for name in os.listdir(task_dir) if name.startswith("_")]
    assert (task_dir / "_task_ok" / "repr.txt").read_text() == "True\n"


def test_namespaces(client_env, tmp_path, mf, manifest):
    hello = manifest["runs"]["hello_bob"]["pathspec"]
    with mounted(tmp_path / "alice", "--datastore-root", str(client_env)) as alice:
        assert "HelloFlow" not in os.listdir(alice.path)
        with pytest.raises(FileNotFoundError):
            os.stat(alice.path / hello)
    with mounted(tmp_path / "bob", "--datastore-root", str(client_env), "--namespace", "user:bob") as bob:
        assert "HelloFlow" in os.listdir(bob.path)
        assert os.listdir(bob.path / "FailFlow").count(manifest["runs"]["fail"]["run_id"]) == 0
        assert (bob.path / hello / "run.json").exists()
    with mounted(tmp_path / "all", "--datastore-root", str(client_env), "--all-namespaces") as everyone:
        assert {"HelloFlow", "KitchenFlow"} <= set(os.listdir(everyone.path))


def _expected_task_tree(task, root: Path, base: str, per_attempt: bool = False) -> set:
    """Every path `find` should print under one task (or one attempt's directory), from Metaflow's client."""
    files = ["task.json", "metadata.json", "stdout.log", "stderr.log"]
    files += ["exception.txt"] if task.exception is not None else []
    paths = {base} | {base + "/" + name for name in files}
    for artifact in task:
        exported = export_names(data_json_info(root, artifact)["type"], trusted=False)
        paths.add(base + "/" + artifact.id)
        paths |= {base + "/" + artifact.id + "/" + name for name in ["repr.txt", "data.pickle", "meta.json"] + exported}
    if not per_attempt:
        from metaflow.cards import get_cards
        from metaflow.plugins.cards.exception import CardNotPresentException

        try:
            cards = list(get_cards(task))
        except CardNotPresentException:
            cards = []
        if cards:
            paths.add(base + "/cards")
            paths |= {base + "/cards/%s%s-0.html" % (card.type, "-" + card.id if card.id else "") for card in cards}
        if task.current_attempt == 0:  # attempts/ is listed for retried tasks only
            return paths
        paths.add(base + "/attempts")
        for number in range(task.current_attempt + 1):
            attempt = type(task)(task.pathspec, attempt=number)
            paths |= _expected_task_tree(attempt, root, "%s/attempts/%d" % (base, number), per_attempt=True)
    return paths


def _expected_tree(run, root: Path) -> set:
    """Every path `find` should print for a run, built from Metaflow's client."""
    paths = {run.pathspec, run.pathspec + "/run.json", run.pathspec + "/parameters.json"}
    for step in run:
        paths |= {step.pathspec, step.pathspec + "/step.json"}
        for task in step:
            paths |= _expected_task_tree(task, root, task.pathspec)
    return paths


def test_find_grep_and_ls_over_a_whole_run(mount, mf, manifest, local_root):
    run = mf.Run(manifest["runs"]["kitchen"]["pathspec"])
    found = subprocess.run(["find", run.pathspec], cwd=mount.path, capture_output=True, text=True, timeout=60)
    assert found.returncode == 0, found.stderr
    assert set(found.stdout.splitlines()) == _expected_tree(run, local_root)
    grep = subprocess.run(["grep", "-rl", "--include=repr.txt", "--exclude-dir=attempts", "'kitchen'", run.pathspec],
                          cwd=mount.path, capture_output=True, text=True, timeout=60)
    assert grep.returncode == 0, grep.stderr
    assert set(grep.stdout.splitlines()) == {
        task.pathspec + "/label/repr.txt" for step in run for task in step}
    listing = subprocess.run(["ls", "-lR", run.pathspec], cwd=mount.path, capture_output=True, text=True, timeout=60)
    assert listing.returncode == 0 and not listing.stderr
    attempts = sum(task.current_attempt + 1 for step in run for task in step if task.current_attempt > 0)
    assert listing.stdout.count("task.json") == sum(1 for step in run for _ in step) + attempts


def test_callback_threads_keep_their_python_thread_state(mount, mf, manifest):
    """Thousands of callbacks, at most one kept thread state per libfuse thread (else every callback would build
    and tear down a thread state; see ThreadStates)."""
    run = mf.Run(manifest["runs"]["kitchen"]["pathspec"])
    before = sum(mount.stats()["calls"].values())
    subprocess.run(["ls", "-lR", run.pathspec], cwd=mount.path, capture_output=True, timeout=60, check=True)
    assert sum(mount.stats()["calls"].values()) - before > 10 * DEFAULT_THREADS
    assert 1 <= mount.stats()["thread_states_kept"] <= DEFAULT_THREADS


def test_writes_are_refused_with_erofs(mount, manifest):
    run_dir = mount.path / manifest["runs"]["kitchen"]["pathspec"]
    attempts = [
        lambda: open(run_dir / "run.json", "w"),
        lambda: open(run_dir / "new.txt", "w"),
        lambda: os.mkdir(run_dir / "newdir"),
        lambda: os.unlink(run_dir / "run.json"),
        lambda: os.rename(run_dir / "run.json", run_dir / "x.json"),
        lambda: os.symlink("run.json", run_dir / "link"),
        lambda: os.chmod(run_dir / "run.json", 0o777),
    ]
    for attempt in attempts:
        with pytest.raises(OSError) as raised:
            attempt()
        assert raised.value.errno == errno.EROFS


def test_unknown_names_are_enoent(mount, manifest):
    for path in ("NoSuchFlow", "KitchenFlow/123", manifest["runs"]["kitchen"]["pathspec"] + "/start/1/nothing"):
        with pytest.raises(OSError) as raised:
            os.stat(mount.path / path)
        assert raised.value.errno == errno.ENOENT


def test_corrupt_blob_is_eio_for_that_file_only(client_env, tmp_path, corrupt_datastore):
    root, pathspec, name = corrupt_datastore
    with mounted(tmp_path / "mnt", "--datastore-root", str(root), "--all-namespaces") as mount:
        artifact_dir = mount.path / pathspec / name
        assert name in os.listdir(mount.path / pathspec)
        for file_name in ("repr.txt", "data.pickle"):
            with pytest.raises(OSError) as raised:
                (artifact_dir / file_name).read_bytes()
            assert raised.value.errno == errno.EIO
        assert read_json(artifact_dir / "meta.json")["name"] == name
        assert read_json(mount.path / pathspec / "task.json")["successful"] is True
        assert (mount.path / pathspec / "name" / "repr.txt").read_text() == "'HelloFlow'\n"
        assert mount.process.poll() is None  # still serving
        assert "backend failure" in mount.log()


def test_running_run_shows_its_new_state_within_2s(client_env, tmp_path):
    root = tmp_path / "live"
    finished_at = []

    def run_sleepflow() -> None:
        run_flow("sleepflow.py", ["run", "--seconds", "5"], root)
        finished_at.append(time.monotonic())

    runner = threading.Thread(target=run_sleepflow)
    runner.start()
    try:
        deadline = time.monotonic() + 60
        while not (root / ".metaflow" / "SleepFlow").is_dir() and time.monotonic() < deadline:
            time.sleep(0.1)
        with mounted(tmp_path / "mnt", "--datastore-root", str(root), "--all-namespaces") as mount:
            latest = mount.path / "SleepFlow" / "latest"
            while not (latest / "sleeper").exists():  # the run appears, then its sleeper step
                assert time.monotonic() < deadline and runner.is_alive(), "the sleeper step never showed up"
                time.sleep(0.1)
            assert read_json(latest / "run.json")["finished"] is False
            assert "end" not in os.listdir(latest)
            runner.join(timeout=120)
            assert finished_at, "SleepFlow did not finish"
            while not read_json(latest / "run.json")["finished"]:
                assert time.monotonic() - finished_at[0] < 2.0, "run.json still says unfinished after 2 s"
                time.sleep(0.05)
            assert "end" in os.listdir(latest)
            sleeper = latest / "sleeper" / os.listdir(latest / "sleeper")[-1]
            assert (sleeper / "stdout.log").read_text() == "sleeping 5 s\n"
            assert (sleeper / "slept" / "repr.txt").read_text() == "5\n"
    finally:
        runner.join(timeout=120)


def test_second_ls_l_of_a_finished_task_makes_no_getattr_calls(mount, mf, manifest):
    task_dir = mount.path / mf.Run(manifest["runs"]["kitchen"]["pathspec"])["join_ab"].task.pathspec
    before = mount.calls("getattr")
    first = subprocess.run(["ls", "-l", str(task_dir)], capture_output=True, text=True, timeout=30)
    after_first = mount.calls("getattr")
    kinds = [line[0] for line in first.stdout.splitlines()[1:]]
    # files are stat'ed one by one; directories came with their attributes in the listing (readdirplus)
    assert first.returncode == 0 and kinds.count("d") >= 3
    assert kinds.count("-") <= after_first - before < len(kinds)
    time.sleep(1.5)  # longer than --refresh: the kernel, not a short TTL, must be what answers
    second = subprocess.run(["ls", "-l", str(task_dir)], capture_output=True, text=True, timeout=30)
    assert second.stdout == first.stdout
    assert mount.calls("getattr") == after_first


def test_pathspec_mount_puts_the_run_at_the_root(client_env, tmp_path, mf, manifest):
    pathspec = manifest["runs"]["kitchen"]["pathspec"]
    with mounted(tmp_path / "mnt", pathspec, "--datastore-root", str(client_env)) as mount:
        assert sorted(os.listdir(mount.path)) == sorted(
            ["run.json", "parameters.json"] + [step.id for step in mf.Run(pathspec)])
        assert read_json(mount.path / "run.json")["pathspec"] == pathspec


def test_sigterm_unmounts_cleanly(client_env, tmp_path):
    with mounted(tmp_path / "mnt", "--datastore-root", str(client_env)) as mount:
        assert os.listdir(mount.path)
        assert terminate(mount, signal.SIGTERM) == 0
        assert not is_mounted(mount.path)


def _ended(pid: int, timeout: float) -> bool:
    """Whether process `pid` is gone (or a zombie: an orphan's reaper may be slow) within `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            with open("/proc/%d/stat" % pid) as stat:
                if stat.read().rsplit(")", 1)[1].split()[0] == "Z":
                    return True
        except FileNotFoundError:
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)


def test_the_readahead_worker_ends_with_the_daemon(client_env, tmp_path):
    with mounted(tmp_path / "a", "--datastore-root", str(client_env)) as mount:
        assert mount.stats()["readahead_worker"]["pid"] is None  # started by the first walk that lists a task
        worker = mount.readahead_pid()
        assert terminate(mount, signal.SIGTERM) == 0
        assert _ended(worker, 0)  # the daemon ended it before exiting
    with mounted(tmp_path / "b", "--datastore-root", str(client_env)) as mount:
        worker = mount.readahead_pid()
        assert terminate(mount, signal.SIGKILL) == -signal.SIGKILL
        assert _ended(worker, 10)  # its requests pipe closed with the daemon


def test_background_mount_returns_when_ready_and_umount(client_env, tmp_path):
    mountpoint = tmp_path / "mnt"
    mountpoint.mkdir()
    try:
        started = run_mffs("mount", str(mountpoint), "--datastore-root", str(client_env))
        assert started.returncode == 0, started.stderr
        assert is_mounted(mountpoint)
        assert "KitchenFlow" in os.listdir(mountpoint)
        busy = subprocess.Popen(["sleep", "30"], cwd=mountpoint)  # a busy mount needs the lazy fallback
        try:
            stopped = run_mffs("umount", str(mountpoint))
            assert stopped.returncode == 0, stopped.stderr
            assert not is_mounted(mountpoint)
        finally:
            busy.kill()
            busy.wait()
    finally:
        if is_mounted(mountpoint):
            subprocess.run(["fusermount3", "-u", "-z", str(mountpoint)])


def test_stats_report_the_daemons_own_peak_memory(client_env, tmp_path):
    """/.mffs/stats reads the daemon's peak RSS from /proc: getrusage's ru_maxrss keeps, across exec, the peak of
    the process that started the daemon (here this test process, made large on purpose)."""
    ballast = bytearray(400 << 20)
    ballast[::4096] = b"\x01" * len(range(0, len(ballast), 4096))  # resident, not just reserved
    with mounted(tmp_path / "mnt", "--datastore-root", str(client_env), "--readahead", "0") as mount:
        del ballast
        os.listdir(mount.path)
        assert 0 < mount.stats()["daemon"]["max_rss_kb"] < 200 << 10
