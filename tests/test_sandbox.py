"""Untrusted values rendered in isolation, and stat bounded (issue 13, item 3).

Hostile copies of a real HelloFlow run (tests/support/hostile.py) get one bomb per artifact: gzip blobs that
inflate to gigabytes (no size recorded; a trailer that says 0), pickles of a few dozen bytes that build a list of
10**9 elements, a `Fraction('1e10000000')` that burns CPU, a `bytearray(10**10)`, nested shared references
whose repr is exponential, and an 11-byte pickle whose memo index makes the unpickler allocate 4 GB. Mounted
(real FUSE) with small render limits and crawled, each bomb costs only its own
files (EIO, or a deferred size), never the daemon's memory or its other readers.
"""
from __future__ import annotations

import errno
import hashlib
import json
import os
import pickle
import pickletools
import random
import struct
import subprocess
import sys
import threading
import time
import zlib
from pathlib import Path
from typing import Dict, Optional

import pytest

from tests.support.hostile import copy_flows, crawl, flow_dir, replace_artifact, task_dir, wait_for
from tests.support.mount import mounted
from tests.support.s3server import BUCKET, s3_env, s3_server  # noqa: F401

pytestmark = pytest.mark.timeout(300)

MEMORY_MB, CPU_SECONDS, WALL_SECONDS = 512, 2, 20
LIMIT_OPTIONS = ("--render-memory-mb", str(MEMORY_MB), "--render-cpu-seconds", str(CPU_SECONDS),
                 "--render-wall-seconds", str(WALL_SECONDS))
#: the daemon's own peak resident memory while bombs are crawled: it serves a small datastore (~60-100 MB
#: measured); a bomb rendered in it would take gigabytes
DAEMON_RSS_BOUND_MB = 300
_MB = 1 << 20


def gzip_bomb(inflated_mb: int, trailer: Optional[int] = None) -> bytes:
    """A gzip file that inflates to a pickle header announcing `inflated_mb` MB of bytes, then that many MB of
    zeros: one full-flushed deflate block of 1 MB of zeros repeated (1 KB each), so it is built without
    compressing gigabytes. Its trailer is whatever the compressor wrote for its first MB, or `trailer`."""
    compressor = zlib.compressobj(9, zlib.DEFLATED, 31)
    header = b"\x80\x04\x8e" + struct.pack("<Q", inflated_mb * _MB)  # PROTO 4, BINBYTES8 of that length
    head = compressor.compress(header) + compressor.flush(zlib.Z_FULL_FLUSH)
    block = compressor.compress(bytes(_MB)) + compressor.flush(zlib.Z_FULL_FLUSH)
    data = head + block * inflated_mb + compressor.flush()
    return data if trailer is None else data[:-4] + struct.pack("<I", trailer)


def reduce_pickle(module: str, name: str, argument: bytes) -> bytes:
    """`module.name(*argument)` as protocol-2 opcodes, `argument` being a pickled argument tuple's opcodes."""
    return b"\x80\x02c%s\n%s\n%sR." % (module.encode(), name.encode(), argument)


def big_list_pickle() -> bytes:
    """list(range(10**9)): two allow-listed globals, a few dozen bytes."""
    range_call = b"cbuiltins\nrange\nJ" + struct.pack("<i", 10**9) + b"\x85R"
    return b"\x80\x02cbuiltins\nlist\n" + range_call + b"\x85R."


def huge_fraction_pickle(digits_bytes: int = 400_000) -> bytes:
    """Fraction(a, b) of two random 400 KB integers: what the allow-list admits (integers), but its gcd takes
    seconds of CPU (quadratic in their length); under the render threshold, so rendered at stat."""
    rng = random.Random(13)
    numerator, denominator = (rng.getrandbits(digits_bytes * 8) | 1 for _ in range(2))
    arguments = pickle.dumps((numerator, denominator), protocol=2)[2:-1]  # the tuple's opcodes alone
    return reduce_pickle("fractions", "Fraction", arguments)


def repr_bomb_pickle(depth: int = 60) -> bytes:
    """a = []; then `depth` times a = [a, a]: a few hundred bytes, naming no global; its repr has 2**depth parts."""
    value: list = []
    for _ in range(depth):
        value = [value, value]
    return pickletools.optimize(pickle.dumps(value, protocol=4))


BOMBS: Dict[str, dict] = {
    # name: stored blob (payload pickled then gzipped by Metaflow's rules, or a crafted gzip file) and its info
    "gzip_10gb": {"stored": lambda: gzip_bomb(10 * 1024), "type": "bytes", "size": None},
    "gzip_3gb_trailer_0": {"stored": lambda: gzip_bomb(3 * 1024, trailer=0), "type": "bytes", "size": 64},
    "big_list": {"payload": big_list_pickle, "type": "list"},
    "fraction_text": {"payload": lambda: reduce_pickle("fractions", "Fraction", b"X\n\x00\x00\x001e10000000\x85"),
                      "type": "fractions.Fraction"},
    "huge_fraction": {"payload": huge_fraction_pickle, "type": "fractions.Fraction"},
    "huge_bytearray": {"payload": lambda: reduce_pickle("builtins", "bytearray",
                                                        b"\x8a\x05" + (10**10).to_bytes(5, "little") + b"\x85"),
                       "type": "bytearray"},
    "repr_bomb": {"payload": repr_bomb_pickle, "type": "list"},
    # 1 stored at memo index 2**28: the C unpickler allocates a memo of 2**29 entries (4 GB) for these 11 bytes
    "memo_bomb": {"payload": lambda: b"\x80\x02K\x01r\x00\x00\x00\x10.", "type": "int"},
}
#: plain artifacts added next to the bombs: rendered in the sandbox (a list) or in the daemon (a float)
NEIGHBOURS = {"neighbour_list": [1, 2, 3], "neighbour_dict": {"a": [1.5, None]}}


def add_artifact(root: Path, task: Path, name: str, type_name: str, payload: Optional[bytes] = None,
                 stored: Optional[bytes] = None, size: Optional[int] = None) -> str:
    """A new artifact `name` of the task: its `_meta` record (a copy of `score`'s) and its data.json entry, with
    `payload` stored as Metaflow stores it, or `stored` as the blob file itself. `size` None: none recorded."""
    record = json.loads((task / "_meta" / "0_artifact_score.json").read_text())
    record["name"] = name
    (task / "_meta" / ("0_artifact_%s.json" % name)).write_text(json.dumps(record))
    info = {"type": "<class '%s'>" % type_name, "encoding": "pickle-v4"}
    if payload is not None:
        info["size"] = len(payload)
    if size is not None:
        info["size"] = size
    if stored is None:
        return replace_artifact(root, task, name, payload, info=info)
    sha = replace_artifact(root, task, name, name.encode(), info=info)  # a placeholder blob, then the crafted file
    (flow_dir(root, "HelloFlow") / "data" / sha[:2] / sha).write_bytes(stored)
    return sha


@pytest.fixture(scope="module")
def hostile(local_root, manifest, tmp_path_factory):
    """(datastore parent, start task path in the mount) of a HelloFlow copy whose start task holds every bomb."""
    root = copy_flows(local_root, tmp_path_factory.mktemp("sandbox"), ["HelloFlow"])
    run_id = manifest["runs"]["hello_bob"]["run_id"]
    task = task_dir(root, "HelloFlow", run_id, "start")
    for name, bomb in BOMBS.items():
        payload = bomb["payload"]() if "payload" in bomb else None
        stored = bomb["stored"]() if "stored" in bomb else None
        add_artifact(root, task, name, bomb["type"], payload=payload, stored=stored, size=bomb.get("size"))
    for name, value in NEIGHBOURS.items():
        add_artifact(root, task, name, type(value).__name__, payload=pickle.dumps(value, protocol=4))
    return root, "HelloFlow/%s/start/%s" % (run_id, task.name)


@pytest.fixture(scope="module")
def mount(hostile, tmp_path_factory):
    root, _ = hostile
    mountpoint = tmp_path_factory.mktemp("mnt") / "mnt"
    with mounted(mountpoint, "--datastore-root", str(root), "--all-namespaces", *LIMIT_OPTIONS) as active:
        yield active


def read_errno(path: Path) -> int:
    try:
        path.read_bytes()
    except OSError as exc:
        return exc.errno
    return 0


def daemon_rss_mb(mount) -> float:
    return mount.stats()["daemon"]["max_rss_kb"] / 1024


@pytest.mark.fuse
def test_bombs_fail_alone_and_the_daemon_stays_small(mount, hostile):
    _, task = hostile
    task_path = mount.path / task
    started = time.monotonic()
    listing = subprocess.run(["ls", "-l"] + [str(task_path / name) for name in BOMBS], capture_output=True,
                             text=True, timeout=120)
    assert listing.returncode == 0, listing.stderr
    for name in BOMBS:  # every bomb's repr.txt fails alone, within its limits
        began = time.monotonic()
        assert read_errno(task_path / name / "repr.txt") == errno.EIO, name
        assert time.monotonic() - began < WALL_SECONDS + 10, name
    # sizes learned from at most a bounded inflation, never the gigabytes: deferred (0) when no size is recorded,
    # else the recorded one (a lie here, but no work), never the trailer's
    assert (task_path / "gzip_10gb" / "data.pickle").stat().st_size == 0
    assert (task_path / "gzip_3gb_trailer_0" / "data.pickle").stat().st_size == 64
    assert (task_path / "gzip_10gb" / "repr.txt").stat().st_size == 0
    # data.pickle still streams: the first MB of 10 GB
    with open(task_path / "gzip_10gb" / "data.pickle", "rb") as handle:
        head = handle.read(_MB)
    assert len(head) == _MB and head.startswith(b"\x80\x04\x8e")
    # neighbours read as ever, in the sandbox and in the daemon
    assert (task_path / "neighbour_list" / "repr.txt").read_text() == "[1, 2, 3]\n"
    assert json.loads((task_path / "neighbour_dict" / "value.json").read_text()) == {"a": [1.5, None]}
    assert (task_path / "score" / "repr.txt").read_text() == "0.9\n"
    # a second look at a bomb does not render it again: refused at once
    began = time.monotonic()
    assert read_errno(task_path / "huge_fraction" / "repr.txt") == errno.EIO
    assert read_errno(task_path / "huge_fraction" / "value.json") == errno.EIO
    assert time.monotonic() - began < CPU_SECONDS
    stats = mount.stats()
    sandbox = stats["render_workers"]
    assert sandbox["refusals"] >= len(BOMBS) and sandbox["restarts"] >= 1, sandbox
    assert len(sandbox["pids"]) == 2
    assert all(0 < worker["max_rss_kb"] <= MEMORY_MB << 10 for worker in sandbox["workers"]), sandbox
    assert mount.process.poll() is None
    assert daemon_rss_mb(mount) < DAEMON_RSS_BOUND_MB
    log = mount.log()
    assert "huge_fraction/repr.txt: SandboxError: repr.txt: reached the" in log  # CPU or (a busy machine) wall time
    assert "repr_bomb/repr.txt" in log and "memory limit" in log
    assert "big_list/repr.txt: SandboxError: UnpicklingError" in log  # the allow-list refuses it before any work
    print("bombs: %.1f s, daemon peak RSS %.0f MB" % (time.monotonic() - started, daemon_rss_mb(mount)))


@pytest.mark.fuse
def test_crawl_survives_the_bombs(mount, hostile):
    _, task = hostile
    report = crawl(mount.path / task.split("/")[0])
    assert report.commands == {"ls -lR": report.commands["ls -lR"], "grep -r": report.commands["grep -r"]}
    failed = {os.path.relpath(path, mount.path / task) for path in report.errors}
    assert failed, "the bombs' files should fail"
    assert all(path.split("/")[0] in BOMBS for path in failed), failed
    assert all(path.split("/")[1] != "data.pickle" for path in failed), failed
    task_files = {os.path.relpath(path, mount.path / task): data for path, data in report.contents.items()
                  if path.startswith(str(mount.path / task) + "/")}
    assert task_files["neighbour_list/repr.txt"] == b"[1, 2, 3]\n"
    assert task_files["score/repr.txt"] == b"0.9\n"
    assert mount.process.poll() is None
    assert daemon_rss_mb(mount) < DAEMON_RSS_BOUND_MB


@pytest.mark.fuse
def test_unrelated_reads_keep_their_latency_while_a_bomb_is_statted(hostile, tmp_path):
    root, task = hostile
    with mounted(tmp_path / "mnt", "--datastore-root", str(root), "--all-namespaces", "--render-cpu-seconds", "30",
                 "--render-wall-seconds", "8") as mount:
        task_path = mount.path / task
        assert (task_path / "neighbour_list" / "repr.txt").read_text() == "[1, 2, 3]\n"  # the pool has started
        # started: a worker then waits for requests, sleeping
        wait_for(lambda: all(_state(pid) == "S" for pid in mount.stats()["render_workers"]["pids"]), timeout=60)
        bomb = threading.Thread(target=lambda: os.stat(task_path / "huge_fraction" / "repr.txt"))
        bomb.start()
        time.sleep(0.5)  # the stat is now rendering the bomb (seconds of CPU)
        assert bomb.is_alive()
        for name, expected in (("neighbour_dict/repr.txt", "{'a': [1.5, None]}\n"), ("score/repr.txt", "0.9\n"),
                               ("name/value.json", None)):
            began = time.monotonic()
            text = (task_path / name).read_text()
            assert time.monotonic() - began < 1.0, name
            assert expected is None or text == expected
        bomb.join(60)
        assert not bomb.is_alive()
        workers = mount.stats()["render_workers"]["pids"]
    assert wait_for(lambda: all(_state(pid) in ("", "Z") for pid in workers), timeout=30)  # they end with the mount


def _state(pid: int) -> str:
    """A process's state letter (S sleeping, R running, Z zombie), '' once it is gone."""
    try:
        return Path("/proc/%d/stat" % pid).read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return ""


def test_stat_sizes_never_inflate_a_whole_bomb(hostile, tmp_path):
    """blob_size of the gzip bombs, in a process that could not hold them: no size rather than inflating."""
    root, task = hostile
    script = (
        "import resource, sys, client\n"
        "resource.setrlimit(resource.RLIMIT_AS, (1 << 30, 1 << 30))\n"
        "client.metadata('local@%s'); client.namespace(None)\n"
        "task = client.Task(%r)\n"
        "print([task[name].blob_size for name in sys.argv[1:]])\n" % (root, task)
    )
    names = ["gzip_10gb", "gzip_3gb_trailer_0", "neighbour_list", "score"]
    done = subprocess.run([sys.executable, "-c", script, *names], capture_output=True, text=True, timeout=120,
                          cwd=Path(__file__).resolve().parents[1])
    assert done.returncode == 0, done.stderr
    gzip_10gb, gzip_3gb, neighbour, score = json.loads(done.stdout.replace("None", "null"))
    assert gzip_10gb is None  # no size recorded, more than a bounded inflation to learn it
    assert gzip_3gb == 64  # the size its metadata records (a lie, but bounded work), never the trailer's 0
    assert neighbour == len(pickle.dumps(NEIGHBOURS["neighbour_list"], protocol=4))
    assert score > 0


def test_a_lying_gzip_trailer_is_not_a_size(tmp_path):
    from client.datastore import FlowDatastore
    from client.storage.local import LocalStorage

    payload = pickle.dumps(list(range(100)), protocol=4)
    compressor = zlib.compressobj(9, zlib.DEFLATED, 31)
    honest = compressor.compress(payload) + compressor.flush()
    sha = hashlib.sha1(payload).hexdigest()
    blob = tmp_path / "F" / "data" / sha[:2] / sha
    blob.parent.mkdir(parents=True)
    datastore = FlowDatastore(LocalStorage(str(tmp_path)), "F")
    blob.write_bytes(honest[:-4] + struct.pack("<I", 0))
    assert datastore.stored_blob_size(sha) is None  # its length check fails: unknown, not 0
    blob.write_bytes(honest + honest)  # two members: the trailer tells the second one's length only
    assert datastore.stored_blob_size(sha) is None
    blob.write_bytes(honest)
    assert datastore.stored_blob_size(sha) == len(payload)


def test_trusted_mounts_render_in_process_and_scalars_skip_the_sandbox(hostile):
    import client
    from mffs.tree import Tree

    root, task = hostile
    client.metadata("local@%s" % root)
    untrusted = Tree(client, namespace=None, render_wall_seconds=30)
    trusted = Tree(client, namespace=None, trust_pickles=True)
    try:
        assert untrusted.read_file("/%s/score/repr.txt" % task) == b"0.9\n"
        assert untrusted.read_file("/%s/name/value.txt" % task)
        assert untrusted.sandbox_usage()["pids"] == []  # small scalars: in the daemon
        assert untrusted.read_file("/%s/neighbour_list/value.json" % task) == b"[\n  1,\n  2,\n  3\n]\n"
        assert len(untrusted.sandbox_usage()["pids"]) == 2
        assert trusted.read_file("/%s/neighbour_list/repr.txt" % task) == b"[1, 2, 3]\n"
        assert trusted.sandbox_usage()["pids"] == []  # the user opted in: rendered here
    finally:
        untrusted.close()
        trusted.close()


def test_a_worker_past_its_wall_time_is_killed_and_replaced(hostile):
    import client
    from mffs.sandbox import Limits, Sandbox, SandboxError

    root, task = hostile
    client.metadata("local@%s" % root)
    client.namespace(None)
    artifacts = client.Task(task)
    sandbox = Sandbox(Limits(memory_mb=MEMORY_MB, cpu_seconds=60, wall_seconds=1), workers=1)
    try:
        sandbox.render(artifacts["neighbour_list"].stored_at(), "neighbour_list", "repr.txt", 100)  # started
        first = sandbox.usage()["pids"]
        began = time.monotonic()
        with pytest.raises(SandboxError, match="wall-time limit"):
            sandbox.render(artifacts["huge_fraction"].stored_at(), "huge_fraction", "repr.txt", 100)
        assert time.monotonic() - began < 5
        assert sandbox.render(artifacts["neighbour_list"].stored_at(), "neighbour_list", "repr.txt", 100) == \
            b"[1, 2, 3]\n"
        usage = sandbox.usage()
        assert usage["restarts"] == 1 and usage["pids"] != first
        assert _state(first[0]) in ("", "Z")  # killed
    finally:
        sandbox.close()


def test_values_are_unchanged_through_the_sandbox(client_env, manifest):
    """The sandbox renders what the daemon rendered before, for every kind of value of the types flow."""
    import client
    from mffs.tree import Tree

    run = manifest["runs"]["types"]["pathspec"]
    sandboxed, trusted = Tree(client), Tree(client, trust_pickles=True)
    try:
        task = client.Run(run)["start"].task
        compared = 0
        for artifact in task:
            path = "/%s/%s/%s" % (task.pathspec, artifact.id, "repr.txt")
            try:
                expected = trusted.read_file(path)
            except OSError:
                continue
            if b"untrusted" in sandboxed.read_file(path) or b" at 0x" in expected:
                continue  # a class only --trust-pickles loads; a repr naming an address
            got = sandboxed.read_file(path)
            if "set" in (artifact.type_name or ""):  # a set's order depends on its process's string hashes
                got, expected = sorted(got), sorted(expected)
            assert got == expected, artifact.id
            compared += 1
        assert compared >= 5
    finally:
        sandboxed.close()
        trusted.close()


def test_the_readahead_worker_runs_under_the_memory_limit(hostile, tmp_path):
    root, _ = hostile
    with mounted(tmp_path / "mnt", "--datastore-root", str(root), "--all-namespaces", *LIMIT_OPTIONS) as mount:
        pid = mount.readahead_pid()

        def address_space_limit() -> str:
            limits = Path("/proc/%d/limits" % pid).read_text().splitlines()
            return next(line for line in limits if line.startswith("Max address space")).split()[3]

        assert wait_for(lambda: address_space_limit() == str(MEMORY_MB << 20), timeout=60)  # set as it starts


@pytest.mark.fuse
def test_a_bomb_parameter_fails_parameters_json_alone(local_root, manifest, tmp_path):
    root = copy_flows(local_root, tmp_path / "params", ["HelloFlow"])
    run_id = manifest["runs"]["hello_bob"]["run_id"]
    replace_artifact(root, task_dir(root, "HelloFlow", run_id, "_parameters"), "lr", repr_bomb_pickle())
    with mounted(tmp_path / "mnt", "--datastore-root", str(root), "--all-namespaces", *LIMIT_OPTIONS) as mount:
        run = mount.path / "HelloFlow" / run_id
        assert read_errno(run / "parameters.json") == errno.EIO
        assert json.loads((run / "run.json").read_text())["id"] == run_id
        assert "parameters.json: SandboxError" in mount.log()
        assert "memory limit" in mount.log() or "reached the" in mount.log()  # its JSON is exponential too
        assert mount.process.poll() is None
        assert daemon_rss_mb(mount) < DAEMON_RSS_BOUND_MB


def test_parameters_json_is_the_same_through_the_sandbox(client_env, manifest):
    import client
    from mffs.tree import Tree

    sandboxed, trusted = Tree(client, namespace=None), Tree(client, namespace=None, trust_pickles=True)
    try:
        for run in ("types", "hello_bob", "kitchen"):
            path = "/%s/parameters.json" % manifest["runs"][run]["pathspec"]
            assert sandboxed.read_file(path) == trusted.read_file(path), run
        assert sandboxed.sandbox_usage()["renders"] > 0
    finally:
        sandboxed.close()
        trusted.close()


def test_remote_bombs_are_inflated_bounded(s3_env, s3_server, tmp_path):  # noqa: F811
    """A gzip bomb in S3: prefetching it with its siblings (what a loop over tasks, and the mount, do) and asking
    its size or whether it is a small scalar inflate a bounded number of bytes, in a process that could not hold
    what it inflates to."""
    prefix = "sandbox-%d" % os.getpid()
    sha, small_sha = "ab" * 20, hashlib.sha1(b"small").hexdigest()
    compressor = zlib.compressobj(9, zlib.DEFLATED, 31)
    small = compressor.compress(pickle.dumps(0.5, protocol=4)) + compressor.flush()
    objects = {sha: gzip_bomb(4 * 1024), small_sha: small}
    for key, body in objects.items():
        s3_server.client().put_object(Bucket=BUCKET, Key="%s/F/data/%s/%s" % (prefix, key[:2], key), Body=body)
    script = (
        "import resource, sys\n"
        "resource.setrlimit(resource.RLIMIT_AS, (3 << 30, 3 << 30))\n"
        "from client.datastore import FlowDatastore, blob_cache\n"
        "ds = FlowDatastore.at(sys.argv[1], 'F')\n"
        "ds.prefetch([sys.argv[2], sys.argv[3]])\n"
        "print(blob_cache.get(sys.argv[2]) is None, len(blob_cache.get(sys.argv[3]) or b''),"
        " ds.small_blob(sys.argv[2], 4096) is None)\n"
    )
    env = dict(os.environ, MFFS_CACHE_DIR=str(tmp_path / "cache"))
    done = subprocess.run([sys.executable, "-c", script, "s3://%s/%s" % (BUCKET, prefix), sha, small_sha],
                          capture_output=True, text=True, timeout=120, env=env,
                          cwd=Path(__file__).resolve().parents[1])
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split() == ["True", str(len(pickle.dumps(0.5, protocol=4))), "True"]
