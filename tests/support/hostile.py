"""Hostile datastores for the safety tests: copies of runs that real Metaflow made, then altered the way a careless
or malicious writer of a shared datastore could, and a crawler that reads a mount the way indexers, `ls -lR`,
`grep -r` and `cat` do.

    root = copy_flows(local_root, tmp_path / "hostile", ["HelloFlow"])
    task = task_dir(root, "HelloFlow", run_id, "start")
    replace_artifact(root, task, "score", pickle_bytes)        # the run now stores another pickle as `score`
    with mounted(tmp_path / "mnt", "--datastore-root", str(root)) as mount:
        report = crawl(mount.path)                             # ls -lR, cat of every file, grep -r
        assert report.alive(mount) and marker_untouched(...)

Every helper writes only under the copy: the standard datastore stays as the real runs left it.
"""
from __future__ import annotations

import gzip
import hashlib
import json
import os
import pickle
import shutil
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, Iterable, List, Optional

CRAWL_TIMEOUT_S = 120


def copy_flows(source_parent: Path, target_parent: Path, flows: Iterable[str]) -> Path:
    """Copy whole flows (runs, `_meta` records and blobs) of the datastore under `source_parent/.metaflow` into a
    new datastore under `target_parent/.metaflow`, their records naming the copy as their root; returns
    `target_parent`. Links are copied as links."""
    source = Path(source_parent) / ".metaflow"
    target = Path(target_parent) / ".metaflow"
    target.mkdir(parents=True, exist_ok=True)
    for flow in flows:
        shutil.copytree(source / flow, target / flow, symlinks=True)
        # records name their datastore root (artifact `location`, `ds-root` metadata): make them name the copy,
        # as if Metaflow had written the runs here
        for record in (target / flow).glob("*/*/*/_meta/*.json"):
            text = record.read_text()
            if str(source) in text:
                record.write_text(text.replace(str(source), str(target)))
        _move_included_files(Path(source_parent), Path(target_parent), flow)
    return Path(target_parent)


def _move_included_files(source_parent: Path, target_parent: Path, flow: str) -> None:
    """IncludeFile contents live beside the datastore (`<parent>/data/<flow>/`) and their artifacts name them by
    absolute URL: copy the contents, and store each IncludedFile artifact again with its URL in the copy (with
    Metaflow's own class, as Metaflow pickles it)."""
    contents = source_parent / "data" / flow
    if not contents.is_dir():
        return
    shutil.copytree(contents, target_parent / "data" / flow, symlinks=True)
    for data_json in (target_parent / ".metaflow" / flow).glob("*/*/*/[0-9]*.data.json"):
        record = json.loads(data_json.read_text())
        for name, info in record.get("info", {}).items():
            if "IncludedFile" not in info.get("type", ""):
                continue
            blob = flow_dir(target_parent, flow) / "data" / record["objects"][name][:2] / record["objects"][name]
            included = pickle.loads(gzip.decompress(blob.read_bytes()))  # our own test data: Metaflow's class
            included._descriptor["url"] = included._descriptor["url"].replace(str(source_parent),
                                                                              str(target_parent))
            replace_artifact(target_parent, data_json.parent, name, pickle.dumps(included, protocol=4),
                             attempt=int(data_json.name.split(".")[0]), info=info)


def flow_dir(root_parent: Path, flow: str) -> Path:
    return Path(root_parent) / ".metaflow" / flow


def task_dir(root_parent: Path, flow: str, run_id: str, step: str, task_id: Optional[str] = None) -> Path:
    """A task's directory in the local datastore (the step's first task when `task_id` is None)."""
    step_dir = flow_dir(root_parent, flow) / str(run_id) / step
    if task_id is None:
        task_id = sorted(p.name for p in step_dir.iterdir() if p.name.isdigit())[0]
    return step_dir / str(task_id)


def store_blob(root_parent: Path, flow: str, payload: bytes) -> str:
    """Store `payload` (the serialized bytes) as Metaflow does, gzip'd under `<flow>/data/<sha[:2]>/<sha>`;
    returns the sha1 Metaflow would record for it."""
    sha = hashlib.sha1(payload).hexdigest()
    path = flow_dir(root_parent, flow) / "data" / sha[:2] / sha
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(gzip.compress(payload, compresslevel=3))
    return sha


def replace_artifact(root_parent: Path, task: Path, name: str, payload: bytes, attempt: int = 0,
                     info: Optional[dict] = None) -> str:
    """Make the task's attempt store `payload` as artifact `name` (its `<attempt>.data.json` entry and, for an
    artifact the task did not have, a `_meta` artifact record); returns the new sha. `info` replaces the stored
    info entry (size, type, encoding) when given."""
    flow = task.parents[2].name
    sha = store_blob(root_parent, flow, payload)
    data_json = task / ("%d.data.json" % attempt)
    record = json.loads(data_json.read_text())
    record["objects"][name] = sha
    record.setdefault("info", {})[name] = info if info is not None else {
        "size": len(payload), "type": "<class 'object'>", "encoding": "gzip+pickle-v4"}
    data_json.write_text(json.dumps(record))
    meta = task / "_meta" / ("%d_artifact_%s.json" % (attempt, name))
    if meta.exists():
        stored = json.loads(meta.read_text())
        stored["sha"] = sha
        meta.write_text(json.dumps(stored))
    return sha


@dataclass
class CrawlReport:
    """What a crawl saw: every path it reached, the errors per path (errno name or message), and the bytes read."""

    paths: List[str] = field(default_factory=list)
    errors: Dict[str, str] = field(default_factory=dict)
    contents: Dict[str, bytes] = field(default_factory=dict)
    commands: Dict[str, int] = field(default_factory=dict)

    def all_bytes(self) -> bytes:
        return b"".join(self.contents.values())


def crawl(mountpoint: Path, read_limit: int = 1 << 20) -> CrawlReport:
    """Walk the mount as crawlers do: `ls -lR`, `grep -r` (in subprocesses, bounded in time), then os.walk with an
    lstat and a read of up to `read_limit` bytes of every file. Never follows links out of the mount."""
    mountpoint = Path(mountpoint)
    report = CrawlReport()
    for name, command in (("ls -lR", ["ls", "-lR", str(mountpoint)]),
                          ("grep -r", ["grep", "-r", "-I", "-c", "mffs-no-such-text", str(mountpoint)])):
        done = subprocess.run(command, capture_output=True, timeout=CRAWL_TIMEOUT_S)
        report.commands[name] = done.returncode
    for directory, dirs, files in os.walk(mountpoint, onerror=lambda e: report.errors.__setitem__(e.filename,
                                                                                                  _name(e))):
        for name in sorted(dirs + files):
            path = os.path.join(directory, name)
            report.paths.append(path)
            try:
                if os.path.islink(path) or os.path.isdir(path):
                    continue
                with open(path, "rb") as handle:
                    report.contents[path] = handle.read(read_limit)
            except OSError as exc:
                report.errors[path] = _name(exc)
    return report


def _name(exc: OSError) -> str:
    import errno

    return errno.errorcode.get(exc.errno or 0, str(exc))


def peak_rss_mb(pid: int) -> float:
    """Peak resident memory of a process and its live children (VmHWM, MB)."""
    total = 0
    pids = [pid]
    children = Path("/proc/%d/task/%d/children" % (pid, pid))
    if children.exists():
        pids += [int(p) for p in children.read_text().split()]
    for one in pids:
        try:
            for line in Path("/proc/%d/status" % one).read_text().splitlines():
                if line.startswith("VmHWM:"):
                    total += int(line.split()[1])
        except FileNotFoundError:
            continue
    return total / 1024


def wait_for(predicate, timeout: float = 10.0, interval: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return predicate()
