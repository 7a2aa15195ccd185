"""Build large local datastores for the scale benchmark (issue #15) by cloning runs that real Metaflow made.

    .venv/bin/python scripts/make_scale_datastore.py --tasks 1000,10000,30000,100000 --runs 2000,10000

Source: `tests/support/datastores.py:build_foreach_datastore(--source-tasks, --source-runs)`, real Metaflow runs
(cached under /tmp/mffs-testdata; reused, not re-run, when it exists). Two kinds of clones, each its own local
datastore (local metadata + local datastore), cached under /tmp/mffs-testdata/scale-<kind>-<hash>/ with a
manifest.json written last (its presence is the stamp: a directory without it is rebuilt):

  tasks N   the WideFlow run with its `body` foreach cloned to N tasks: task ids first..first+N-1 in index order,
            the join and end tasks after them; per task the `foreach-execution-path` (`body:<i>`) and
            `foreach-stack` (`items=<i>`) metadata and the `_foreach_stack` artifact (index i of N) rewritten,
            each `_foreach_stack` its own small blob; the start task's `items` (list(range(N))),
            `_foreach_values` and `_foreach_num_splits` rewritten to N wherever they are inherited (with any artifact
            holding the same value, e.g. the `width` parameter, which then reads N as it should). Every other
            file of body task i is copied from the source body task with index i mod n (so `square` of task i
            is the source's value for index i mod n, and the join's `total` is the source's). Blobs are shared:
            the source's are hard-linked, each new value is written once (content-addressed).
  runs R    R copies of the first HelloFlow run, one second apart (newest last), tags `batch:<j // 1000>`;
            runs with j % 5 == 3 and the two newest failed (the end task's `_success`/`_task_ok` False and its
            `attempt_ok` metadata "False"), so `latest_successful` is the third newest.

Metaflow's client reads the clones as valid runs: tests/test_scale_datastore.py compares it with ours on them.
"""
from __future__ import annotations

import argparse
import gzip
import hashlib
import json
import os
import pickle
import re
import sys
import time
from pathlib import Path
from typing import Callable, Dict, Iterator, List, Sequence, Tuple

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from scripts.bench_client import build_datastore  # noqa: E402
from tests.support import datastores  # noqa: E402

# Part of the cache key: bump when the clones' content changes.
CLONE_FORMAT = 1
SOURCE_TASKS = 1000
SOURCE_RUNS = 100
FOREACH_FLOW, FOREACH_STEP = "WideFlow", "body"
RUNS_FLOW = "HelloFlow"
BLOB_SIDECAR = b'{"cas_raw": false, "cas_version": 1}'
TASK_MARK, INDEX_MARK, STACK_SHA_MARK, STACK_SIZE_MARK = "@@TASK@@", "@@INDEX@@", "@@STACKSHA@@", "@@STACKSIZE@@"
RUN_MARK = "@@RUN@@"

Files = List[Tuple[str, bytes]]  # (path relative to a task or run directory, content)


def write_file(path: str, data: bytes) -> None:
    """A file as Metaflow writes them (mode 0600)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, data)
    finally:
        os.close(fd)


def put_blob(flow_dir: Path, raw: bytes) -> str:
    """Store serialized bytes in the flow's content-addressed store (gzip + sidecar) once; returns the key."""
    sha = hashlib.sha1(raw).hexdigest()
    path = "%s/data/%s/%s" % (flow_dir, sha[:2], sha)
    if not os.path.exists(path):
        os.makedirs(os.path.dirname(path), exist_ok=True)
        write_file(path, gzip.compress(raw, compresslevel=3, mtime=0))
        write_file(path + "_meta", BLOB_SIDECAR)
    return sha


def foreach_stack_pickle(frames: Sequence[tuple]) -> bytes:
    """The pickle of a `_foreach_stack` list of `__main__.ForeachFrame(step, var, num_splits, index, value)`, as
    Metaflow writes it (class by STACK_GLOBAL, built with NEWOBJ), without needing that class here."""
    out = [b"\x80\x04]"]
    for frame in frames:
        out.append(b"\x8c\x08__main__\x8c\x0cForeachFrame\x93(")
        out.extend(pickle.dumps(field, 2)[2:-1] for field in frame)  # protocol 2: no frame opcodes to strip
        out.append(b"t\x81a")
    out.append(b".")
    return b"".join(out)


def read_tree(directory: Path) -> Files:
    """Every file under `directory` (relative path, bytes), directories first-level and `_meta` included."""
    files = []
    for dirpath, _, names in os.walk(directory):
        for name in names:
            path = os.path.join(dirpath, name)
            with open(path, "rb") as handle:
                files.append((os.path.relpath(path, directory), handle.read()))
    return files


def write_tree(directory: str, files: Files) -> None:
    made = set()
    for rel, data in files:
        parent = os.path.dirname(os.path.join(directory, rel))
        if parent not in made:
            os.makedirs(parent, exist_ok=True)
            made.add(parent)
        write_file(os.path.join(directory, rel), data)


def link_blobs(source_flow: Path, flow_dir: Path) -> None:
    """Share the source flow's blobs: hard links (a copy where linking is refused)."""
    for dirpath, _, names in os.walk(source_flow / "data"):
        target = flow_dir / "data" / os.path.relpath(dirpath, source_flow / "data")
        target.mkdir(parents=True, exist_ok=True)
        for name in names:
            try:
                os.link(os.path.join(dirpath, name), target / name)
            except OSError:
                (target / name).write_bytes(Path(dirpath, name).read_bytes())


def replace_all(data: bytes, replacements: Dict[str, str]) -> bytes:
    for old, new in replacements.items():
        data = data.replace(old.encode(), new.encode())
    return data


def task_dirs(step_dir: Path) -> Dict[int, Path]:
    return {int(p.name): p for p in step_dir.iterdir() if p.name.isdigit()}


def foreach_index(task_dir: Path) -> int:
    for path in (task_dir / "_meta").glob("sysmeta_foreach-execution-path_*.json"):
        step_index = json.loads(path.read_text())["value"]
        if "," in step_index:
            raise ValueError("only a single (not nested) foreach can be cloned: %s" % step_index)
        return int(step_index.rsplit(":", 1)[1])
    raise ValueError("%s has no foreach-execution-path metadata" % task_dir)


def _in_workers(work: Callable[[int, int], None], count: int, workers: int) -> None:
    """`work(start, stop)` over range(count) in chunks, shared by `workers` forked processes (no pickling)."""
    chunk = max(1, min(5000, count // (workers * 4) + 1))
    ranges = [(start, min(count, start + chunk)) for start in range(0, count, chunk)]
    if workers <= 1 or len(ranges) == 1:
        for start, stop in ranges:
            work(start, stop)
        return
    pids = []
    for worker in range(workers):
        pid = os.fork()
        if pid == 0:
            status = 1
            try:
                for start, stop in ranges[worker::workers]:
                    work(start, stop)
                status = 0
            finally:
                os._exit(status)
        pids.append(pid)
    failed = [pid for pid in pids if os.waitpid(pid, 0)[1] != 0]
    if failed:
        raise RuntimeError("%d of %d clone workers failed" % (len(failed), workers))


class ForeachCloner:
    """Clones the source run's foreach (see the module docstring) into `<parent>/.metaflow`."""

    def __init__(self, source_root: Path, run_id: str, root: Path, n_tasks: int):
        self.source_run = source_root / FOREACH_FLOW / run_id
        self.flow_dir = root / FOREACH_FLOW
        self.run_dir = self.flow_dir / run_id
        self.n_tasks = n_tasks
        self.root_paths = {str(source_root): str(root)}
        body = task_dirs(self.source_run / FOREACH_STEP)
        self.first_id = min(body)
        if sorted(body) != list(range(self.first_id, self.first_id + len(body))):
            raise ValueError("the source foreach's task ids are not contiguous")
        self.shift = n_tasks - len(body)  # for the task ids after the foreach (join, end)
        self.last_source_id = self.first_id + len(body) - 1
        by_index = {foreach_index(path): path for path in body.values()}
        self.source_body = [by_index[i] for i in range(len(by_index))]
        self.var = self._foreach_var(self.source_body[0])

    def new_id(self, old: int) -> int:
        return old + self.shift if old > self.last_source_id else old

    @staticmethod
    def _foreach_var(task_dir: Path) -> str:
        path = next((task_dir / "_meta").glob("sysmeta_foreach-stack_*.json"))
        return json.loads(path.read_text())["value"][-1].split("=", 1)[0]

    def _body_template(self, task_dir: Path) -> List[Tuple[str, str]]:
        """The task's files, rewritten, with its id, foreach index and `_foreach_stack` key as markers."""
        files = []
        for rel, data in read_tree(task_dir):
            data = self._rewrite(data, rel)
            name = os.path.basename(rel)
            if rel.startswith("_meta") and name.endswith(".json"):
                record = json.loads(data)
                record["task_id"] = TASK_MARK
                if record.get("field_name") == "foreach-execution-path":
                    record["value"] = "%s:%s" % (FOREACH_STEP, INDEX_MARK)
                elif record.get("field_name") == "foreach-stack":
                    record["value"] = [record["value"][-1].split("=", 1)[0] + "=" + INDEX_MARK]
                elif record.get("name") == "_foreach_stack":
                    record["sha"] = STACK_SHA_MARK
                data = json.dumps(record).encode()
            elif re.fullmatch(r"\d+\.data\.json", name):
                index = json.loads(data)
                index["objects"]["_foreach_stack"] = STACK_SHA_MARK
                index["info"]["_foreach_stack"]["size"] = STACK_SIZE_MARK
                data = json.dumps(index).replace('"%s"' % STACK_SIZE_MARK, STACK_SIZE_MARK).encode()
            files.append((rel, data.decode()))
        return files

    def clone(self, workers: int) -> dict:
        link_blobs(self.source_run.parent, self.flow_dir)
        self.sha_map = self._rewrite_foreach_inputs()
        write_tree(str(self.flow_dir / "_meta"), read_tree(self.source_run.parent / "_meta"))
        write_file(str(self.flow_dir / "latest_run"), self.run_dir.name.encode())
        write_tree(str(self.run_dir / "_meta"), read_tree(self.source_run / "_meta"))
        for step_dir in self.source_run.iterdir():
            if step_dir.name == "_meta":
                continue
            if step_dir.name == FOREACH_STEP:
                write_tree(str(self.run_dir / FOREACH_STEP / "_meta"), read_tree(step_dir / "_meta"))
            else:
                self._copy_step(step_dir)
        self.body_texts = [self._body_template(path) for path in self.source_body]
        _in_workers(self._write_body, self.n_tasks, workers)
        return {"first_task_id": self.first_id, "join_task_id": self.new_id(self.last_source_id + 1)}

    def _rewrite_foreach_inputs(self) -> Dict[str, str]:
        """New blobs for the foreach's list, its string values and its width: {source key: new key}."""
        start = next(iter(task_dirs(self.source_run / "start").values()))
        index = json.loads(next(start.glob("*.data.json")).read_text())
        values = {
            self.var: list(range(self.n_tasks)),
            "_foreach_values": [str(i) for i in range(self.n_tasks)],
            "_foreach_num_splits": self.n_tasks,
        }
        self.sizes = {}
        sha_map = {}
        for name, value in values.items():
            raw = pickle.dumps(value, protocol=4)
            sha = put_blob(self.flow_dir, raw)
            sha_map[index["objects"][name]] = sha
            self.sizes[sha] = len(raw)
        return sha_map

    def _rewrite(self, data: bytes, rel: str) -> bytes:
        """Root paths and foreach inputs of any file; the info sizes of rewritten blobs in data.json."""
        data = replace_all(data, self.root_paths)
        if not any(old.encode() in data for old in self.sha_map):
            return data
        data = replace_all(data, self.sha_map)
        if rel.endswith(".data.json"):
            index = json.loads(data)
            for name, sha in index["objects"].items():
                if sha in self.sizes:
                    index["info"][name]["size"] = self.sizes[sha]
            data = json.dumps(index).encode()
        return data

    def _copy_step(self, step_dir: Path) -> None:
        """A step other than the foreach: ids of the tasks after the foreach shifted."""
        target = self.run_dir / step_dir.name
        write_tree(str(target / "_meta"), read_tree(step_dir / "_meta"))
        for old_id, task_dir in task_dirs(step_dir).items():
            new_id = str(self.new_id(old_id))
            ids = {'"task_id": "%d"' % old_id: '"task_id": "%s"' % new_id}
            files = [(rel, replace_all(self._rewrite(data, rel), ids)) for rel, data in read_tree(task_dir)]
            write_tree(str(target / new_id), files)

    def _write_body(self, start: int, stop: int) -> None:
        step_dir = str(self.run_dir / FOREACH_STEP)
        for index in range(start, stop):
            raw = foreach_stack_pickle([(FOREACH_STEP, self.var, self.n_tasks, index, str(index))])
            marks = {TASK_MARK: str(self.first_id + index), INDEX_MARK: str(index),
                     STACK_SHA_MARK: put_blob(self.flow_dir, raw), STACK_SIZE_MARK: str(len(raw))}
            files = []
            for rel, text in self.body_texts[index % len(self.body_texts)]:
                for mark, value in marks.items():
                    text = text.replace(mark, value)
                files.append((rel, text.encode()))
            write_tree("%s/%d" % (step_dir, self.first_id + index), files)


class RunsCloner:
    """Clones one source run to `n_runs` runs of the same flow (see the module docstring)."""

    def __init__(self, source_root: Path, flow: str, run_id: str, root: Path, n_runs: int):
        self.source_run = source_root / flow / run_id
        self.flow_dir = root / flow
        self.n_runs = n_runs
        replacements = {str(source_root): str(root), '"%s"' % run_id: '"%s"' % RUN_MARK}
        files = [(rel, replace_all(data, replacements)) for rel, data in read_tree(self.source_run)
                 if rel != os.path.join("_meta", "_self.json")]
        self.run_record = json.loads((self.source_run / "_meta" / "_self.json").read_text())
        self.first_id = int(run_id)
        self.ok_files = [(rel, data.decode()) for rel, data in files]
        false_sha = put_blob(self.flow_dir, pickle.dumps(False, protocol=4))
        self.failed_files = [(rel, self._failed(rel, data, false_sha).decode()) for rel, data in files]

    def _failed(self, rel: str, data: bytes, false_sha: str) -> bytes:
        """The end task's file as it is when the task failed: `_success`, `_task_ok`, `attempt_ok` False."""
        if not rel.startswith("end" + os.sep):
            return data
        if rel.endswith(".data.json"):
            index = json.loads(data)
            for name in ("_success", "_task_ok"):
                index["objects"][name] = false_sha
            return json.dumps(index).encode()
        if "_meta" in rel and rel.endswith(".json"):
            record = json.loads(data)
            if record.get("name") in ("_success", "_task_ok"):
                record["sha"] = false_sha
            elif record.get("field_name") == "attempt_ok":
                record["value"] = "False"
            return json.dumps(record).encode()
        return data

    def run_id(self, number: int) -> str:
        return str(self.first_id + number * 1_000_000)  # one second apart, like Metaflow's microsecond ids

    def failed(self, number: int) -> bool:
        return number % 5 == 3 or number >= self.n_runs - 2

    def clone(self, workers: int) -> dict:
        link_blobs(self.source_run.parent, self.flow_dir)
        write_tree(str(self.flow_dir / "_meta"), read_tree(self.source_run.parent / "_meta"))
        write_file(str(self.flow_dir / "latest_run"), self.run_id(self.n_runs - 1).encode())
        _in_workers(self._write_runs, self.n_runs, workers)
        successful = [n for n in range(self.n_runs) if not self.failed(n)]
        return {"run_ids": [self.run_id(n) for n in range(self.n_runs)],
                "failed_run_ids": [self.run_id(n) for n in range(self.n_runs) if self.failed(n)],
                "latest_successful_run_id": self.run_id(successful[-1]) if successful else None}

    def _write_runs(self, start: int, stop: int) -> None:
        for number in range(start, stop):
            run_id = self.run_id(number)
            record = dict(self.run_record, run_number=run_id, ts_epoch=int(run_id) // 1000,
                          tags=self.run_record["tags"] + ["batch:%d" % (number // 1000)])
            run_dir = "%s/%s" % (self.flow_dir, run_id)
            files = [(rel, text.replace(RUN_MARK, run_id).encode())
                     for rel, text in (self.failed_files if self.failed(number) else self.ok_files)]
            files.append((os.path.join("_meta", "_self.json"), json.dumps(record).encode()))
            write_tree(run_dir, files)


def source_datastore(tasks: int, runs: int) -> Tuple[Path, dict]:
    """The real Metaflow datastore the clones are made from (built once and cached) and its manifest."""
    parent = build_datastore(tasks, runs)
    return parent, datastores.load_manifest(parent)


def build_foreach_clone(n_tasks: int, source_tasks: int = SOURCE_TASKS, source_runs: int = SOURCE_RUNS,
                        workers: int = 2) -> Path:
    """A datastore holding the source WideFlow run with its foreach cloned to `n_tasks` tasks (cached)."""
    source, manifest = source_datastore(source_tasks, source_runs)
    wide = manifest["runs"]["wide"]

    def build(parent: Path) -> dict:
        cloner = ForeachCloner(source / ".metaflow", wide["run_id"], parent / ".metaflow", n_tasks)
        extra = cloner.clone(workers)
        return {"wide": datastores._record(FOREACH_FLOW, wide["run_id"], wide["user"], wide["tags"],
                                           n_tasks=n_tasks, step=FOREACH_STEP, source=str(source), **extra)}

    spec = {"n_tasks": n_tasks, "source": source.name, "format": CLONE_FORMAT}
    return datastores._cached_build("scale-tasks", spec, ["wideflow.py"], build)


def build_runs_clone(n_runs: int, source_tasks: int = SOURCE_TASKS, source_runs: int = SOURCE_RUNS,
                     workers: int = 2) -> Path:
    """A datastore holding `n_runs` clones of the source's first HelloFlow run (cached)."""
    source, manifest = source_datastore(source_tasks, source_runs)
    hello = manifest["runs"]["hello_0"]

    def build(parent: Path) -> dict:
        cloner = RunsCloner(source / ".metaflow", RUNS_FLOW, hello["run_id"], parent / ".metaflow", n_runs)
        return {"runs": dict(cloner.clone(workers), flow=RUNS_FLOW, n_runs=n_runs, source=str(source))}

    spec = {"n_runs": n_runs, "source": source.name, "format": CLONE_FORMAT}
    return datastores._cached_build("scale-runs", spec, ["helloflow.py"], build)


def sizes(text: str) -> List[int]:
    """`1000,10k,30000` -> [1000, 10000, 30000]; `0` or nothing -> []."""
    counts = [int(float(part[:-1]) * 1000) if part.lower().endswith("k") else int(part)
              for part in text.split(",") if part]
    return [count for count in counts if count > 0]


def main(argv: Iterator[str] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", type=sizes, default=[], help="foreach sizes, e.g. 1000,10000,30000")
    parser.add_argument("--runs", type=sizes, default=[], help="run counts, e.g. 2000,10000")
    parser.add_argument("--source-tasks", type=int, default=SOURCE_TASKS)
    parser.add_argument("--source-runs", type=int, default=SOURCE_RUNS)
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    args = parser.parse_args(argv)
    for kind, counts, builder in (("tasks", args.tasks, build_foreach_clone), ("runs", args.runs, build_runs_clone)):
        for count in counts:
            started = time.monotonic()
            parent = builder(count, args.source_tasks, args.source_runs, args.workers)
            manifest = datastores.load_manifest(parent)
            print("%s=%d: %s (built in %.1f s; this call %.1f s)" % (
                kind, count, parent, manifest["build_seconds"], time.monotonic() - started), flush=True)


if __name__ == "__main__":
    main()
