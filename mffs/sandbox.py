"""Untrusted artifact values rendered in worker processes under hard limits (memory, CPU time, wall time).

A datastore is untrusted input: a 65-byte pickle can build a list of 10**9 elements, a 50-byte `Fraction` can
burn seconds of CPU in `repr` while the GIL stops every other reader, a pickle of shared references can have an
exponential repr. So, in the mount's default mode (no `--trust-pickles`), what unpickles a value and renders its
repr.txt or typed exports runs in a worker process of a small pool (`Sandbox`), never in the daemon:

  * each worker limits its address space (RLIMIT_AS, `memory_mb`) and, per request, its CPU time (RLIMIT_CPU,
    `cpu_seconds` more than it has used so far: the kernel kills it with SIGXCPU); the daemon enforces a wall-clock
    deadline (`wall_seconds`) by killing the worker. A request that blows a limit fails that one file (EIO, one
    log line); the dead worker is replaced at once, so the next request does not wait for a start.
  * workers are fresh interpreters (`python -m mffs.sandbox`), as the readahead worker is, not forks of the
    threaded daemon; they start with the first render that needs them, in their own session.
  * a request names the artifact's blob (datastore root, flow, sha), not its bytes: the worker reads the same
    datastore itself, so a large blob never goes through a pipe, and keeps the last value it loaded, so the
    repr.txt and the exports of one artifact unpickle it once.
  * while one worker renders (or is being replaced), requests go to the other idle ones; a request waits only when
    every worker is busy.

A value that blew a limit is remembered (by blob and artifact name, for the mount's life): its other files, and
the next lookups of a crawler, fail at once rather than blow the limit again.

Wire format (like mffs/readahead.py's): frames of a 4-byte little-endian length and a `marshal`led value. Requests
are (root, flow, sha, artifact name, file name, repr limit); answers are (OK, bytes), (FAILED, message) or
(LIMIT, message). The first frame a worker sends, (OK, b""), says it is ready.
"""
from __future__ import annotations

import errno
import json
import logging
import marshal
import os
import resource
import select
import signal
import struct
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from typing import IO, Any, Dict, List, Optional, Tuple

from cachetools import LRUCache

from .exports import ExportError

log = logging.getLogger("mffs")

#: how long a worker may take to start (imports on a busy machine): not counted in a request's wall time
START_SECONDS = 60.0
#: workers in the pool: two FUSE threads rarely render more at once, and one busy with a bomb leaves another
WORKERS = 2
#: the directory holding the mffs and client packages the daemon runs
_SOURCE_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_LENGTH = struct.Struct("<I")
#: native libraries a worker may load (numpy, pyarrow) start a thread pool per core unless told otherwise
_ONE_THREAD = {name: "1" for name in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS")}
OK, FAILED, LIMIT = "ok", "failed", "limit"
#: the "file name" asking for a value as `render.json_bytes` writes it (for records: parameters.json)
RECORD_JSON = ":record.json"
#: blobs remembered as having blown a limit
_REFUSALS_KEPT = 10_000


@dataclass(frozen=True)
class Limits:
    """What one render may use: address space (MB), CPU seconds and wall seconds."""

    memory_mb: int = 2048
    cpu_seconds: float = 30.0
    wall_seconds: float = 60.0


class SandboxError(ExportError):
    """A value could not be rendered in the sandbox: it blew a limit, or failed to load or render there."""


def start_worker(
    module: str, settings: Dict[str, Any], environment: Optional[Dict[str, str]] = None
) -> "subprocess.Popen[bytes]":
    """`python -m module SETTINGS_JSON` with pipes on stdin/stdout, importing this copy of mffs and client (wherever
    the daemon was started from), in its own session (a Ctrl-C of a foreground mount is the daemon's to handle);
    `environment` adds to the daemon's."""
    python_path = os.pathsep.join(filter(None, [_SOURCE_ROOT, os.environ.get("PYTHONPATH")]))
    return subprocess.Popen(
        [sys.executable, "-m", module, json.dumps(settings)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        env=dict(os.environ, **(environment or {}), PYTHONPATH=python_path, **_ONE_THREAD),
        start_new_session=True,
    )


def read_frame(stream: IO[bytes]) -> Optional[bytes]:
    """The next frame's payload from a blocking stream; None at its end."""
    header = stream.read(_LENGTH.size)
    if len(header) < _LENGTH.size:
        return None
    (length,) = _LENGTH.unpack(header)
    payload = stream.read(length)
    return payload if len(payload) == length else None


def frame(value: Any) -> bytes:
    """`value` as one frame of the wire format: its length, then its marshal bytes."""
    payload = marshal.dumps(value)
    return _LENGTH.pack(len(payload)) + payload


def write_frame(stream: IO[bytes], value: Any) -> None:
    stream.write(frame(value))
    stream.flush()


def process_usage(pid: int) -> Dict[str, Any]:
    """A worker's pid, CPU seconds and peak RSS (from /proc; zeros once it has exited)."""
    usage = {"pid": pid, "cpu_seconds": 0.0, "max_rss_kb": 0}
    try:
        with open("/proc/%d/stat" % pid) as handle:
            fields = handle.read().rsplit(")", 1)[1].split()
        with open("/proc/%d/status" % pid) as handle:
            peak = next(int(line.split()[1]) for line in handle if line.startswith("VmHWM:"))
    except (OSError, StopIteration, IndexError, ValueError):
        return usage
    usage["cpu_seconds"] = round((int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK"), 3)
    usage["max_rss_kb"] = peak
    return usage


def limit_memory(memory_mb: int) -> None:
    """Cap this process's address space: an allocation beyond it fails (MemoryError) instead of growing."""
    limit = int(memory_mb) << 20
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))


class _WorkerGone(Exception):
    """The worker died, or missed its deadline and was killed: the reason is the message."""


class _StartFailed(Exception):
    """A worker did not start (not the fault of the value it was to render)."""


class _Worker:
    """One worker process, used by one request at a time."""

    def __init__(self, limits: Limits):
        self.limits = limits
        self.process = start_worker("mffs.sandbox", {"memory_mb": limits.memory_mb, "cpu_seconds": limits.cpu_seconds})
        self.ready = False
        self.last_blob: Optional[Tuple[str, str, str, str]] = None  # the blob whose value the worker keeps

    def request(self, request: tuple) -> Tuple[str, Any]:
        if not self.ready:
            try:
                self._answer(time.monotonic() + START_SECONDS, "start")
            except _WorkerGone as exc:
                raise _StartFailed("a worker did not start: %s" % exc) from None
            self.ready = True
        try:
            os.write(self.process.stdin.fileno(), frame(request))
        except OSError as exc:
            raise _WorkerGone(self._death("could not be sent to its worker (%s)" % exc)) from exc
        self.last_blob = request[:4]
        return self._answer(time.monotonic() + self.limits.wall_seconds, "render")

    def _answer(self, deadline: float, what: str) -> Tuple[str, Any]:
        header = self._read(_LENGTH.size, deadline, what)
        return marshal.loads(self._read(_LENGTH.unpack(header)[0], deadline, what))

    def _read(self, count: int, deadline: float, what: str) -> bytes:
        fd, parts, missing = self.process.stdout.fileno(), [], count
        poller = select.poll()
        poller.register(fd, select.POLLIN)
        while missing:
            left = deadline - time.monotonic()
            if left <= 0 or not poller.poll(left * 1000):
                self.kill()
                limit = START_SECONDS if what == "start" else self.limits.wall_seconds
                raise _WorkerGone("reached the wall-time limit (%g s)" % limit)
            chunk = os.read(fd, min(missing, 1 << 20))
            if not chunk:
                raise _WorkerGone(self._death("ended its worker"))
            parts.append(chunk)
            missing -= len(chunk)
        return b"".join(parts)

    def _death(self, default: str) -> str:
        try:
            code = self.process.wait(5)
        except subprocess.TimeoutExpired:
            self.kill()
            return default
        if code == -signal.SIGXCPU:
            return "reached the CPU-time limit (%g s)" % self.limits.cpu_seconds
        if code is not None and code < 0:  # SIGSEGV, SIGABRT: how allocations beyond RLIMIT_AS may end in C code
            return "killed its worker (signal %d; memory limit %d MB)" % (-code, self.limits.memory_mb)
        return "ended its worker (exit code %s)" % code

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait()
        for stream in (self.process.stdin, self.process.stdout):
            try:
                stream.close()
            except OSError:
                pass


class Sandbox:
    """The daemon's side: a pool of up to `workers` worker processes, started with the first render."""

    def __init__(self, limits: Limits, workers: int = WORKERS):
        self.limits = limits
        self.max_workers = workers
        self._cond = threading.Condition()
        self._idle: List[_Worker] = []
        self._busy: List[_Worker] = []
        self._closed = False
        self._refused: LRUCache = LRUCache(maxsize=_REFUSALS_KEPT)  # blob -> why it was refused
        self.renders = self.refusals = self.restarts = 0

    def render(self, blob: Tuple[str, str, str], name: str, file_name: str, repr_limit: int) -> bytes:
        """The bytes of `file_name` (repr.txt or an export) for the artifact `name` stored as `blob` (datastore root,
        flow, sha); SandboxError when it failed or blew a limit (logged by the caller, which makes it EIO)."""
        request = (*blob, name, file_name, repr_limit)
        key = request[:4]
        with self._cond:
            refused = self._refused.get(key)
            if refused is not None:  # logged when it was refused first: an OSError with an errno is not again
                self.refusals += 1
                raise OSError(errno.EIO, "%s: refused: this value %s before" % (file_name, refused))
        worker = self._take(key)
        try:
            status, answer = worker.request(request)
        except _WorkerGone as exc:
            self._replace(worker)
            status, answer = LIMIT, str(exc)
        except _StartFailed as exc:
            self._replace(worker)
            status, answer = FAILED, "%s: %s" % (file_name, exc)
        else:
            self._give_back(worker)
        with self._cond:
            self.renders += 1
            if status == LIMIT:
                self.refusals += 1
                self._refused[key] = answer
        if status == LIMIT:
            raise SandboxError("%s: %s" % (file_name, answer))
        if status != OK:
            raise SandboxError(answer)
        return answer

    def usage(self) -> Dict[str, Any]:
        """For /.mffs/stats: the workers (pids, CPU seconds, peak RSS), renders done, requests refused (a limit
        blown), workers restarted, and the limits."""
        with self._cond:
            pids = sorted(worker.process.pid for worker in self._idle + self._busy)
            counts = {"renders": self.renders, "refusals": self.refusals, "restarts": self.restarts}
        return {
            "pids": pids,
            "workers": [process_usage(pid) for pid in pids],
            **counts,
            "limits": {"memory_mb": self.limits.memory_mb, "cpu_seconds": self.limits.cpu_seconds,
                       "wall_seconds": self.limits.wall_seconds},
        }

    def close(self) -> None:
        """End every worker (an idle one exits when its requests pipe closes; a busy one is killed)."""
        with self._cond:
            self._closed = True
            workers, self._idle, self._busy = self._idle + self._busy, [], []
        for worker in workers:
            worker.kill()

    def _take(self, blob: tuple) -> _Worker:
        with self._cond:
            while True:
                if self._closed:
                    raise SandboxError("the mount is closing")
                if self._idle:
                    # the worker holding this blob's value, else the one used last (its caches are warmest)
                    worker = next((w for w in self._idle if w.last_blob == blob), self._idle[-1])
                    self._idle.remove(worker)
                    if worker.process.poll() is None:
                        break
                    worker.kill()  # died idle (killed from outside): not the fault of this request's value
                    self._idle.insert(0, _Worker(self.limits))
                    self.restarts += 1
                    continue
                if len(self._busy) < self.max_workers:
                    starting = not self._busy
                    worker = _Worker(self.limits)
                    if starting:  # the first render of the mount: start the others too, for the renders to come
                        self._idle.extend(_Worker(self.limits) for _ in range(self.max_workers - 1))
                    break
                self._cond.wait()
            self._busy.append(worker)
            return worker

    def _give_back(self, worker: _Worker) -> None:
        with self._cond:
            self._busy.remove(worker)
            if self._closed:
                worker.kill()
            else:
                self._idle.append(worker)
            self._cond.notify()

    def _replace(self, worker: _Worker) -> None:
        """Drop a dead worker and start its successor now, so the next request finds it (nearly) ready."""
        worker.kill()
        with self._cond:
            self._busy.remove(worker)
            if not self._closed:
                self._idle.insert(0, _Worker(self.limits))
                self.restarts += 1
            self._cond.notify()


def render_value(value: Any, file_name: str, repr_limit: int) -> bytes:
    """The bytes of `file_name` (repr.txt, an export, or RECORD_JSON) for a loaded value, wherever it was loaded."""
    from . import exports, render

    if file_name == "repr.txt":
        return render.repr_bytes(value, repr_limit)
    if file_name == RECORD_JSON:
        return render.json_bytes(value)
    return exports.render_export(file_name, value)


# --- the worker ------------------------------------------------------------------------------------------------


def _limit_cpu(cpu_seconds: float) -> None:
    """Let this request use `cpu_seconds` more CPU time: RLIMIT_CPU counts the process's whole life."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    soft = int(usage.ru_utime + usage.ru_stime + cpu_seconds + 1)
    resource.setrlimit(resource.RLIMIT_CPU, (soft, resource.RLIM_INFINITY))


def main(argv: List[str]) -> None:
    """The worker: `python -m mffs.sandbox SETTINGS_JSON` (started by Sandbox)."""
    logging.basicConfig(format="%(asctime)s %(name)s sandbox %(levelname)s %(message)s")
    settings = json.loads(argv[0])
    out = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)  # stray prints go to the log, not into the frames
    from client.core import load_stored

    limit_memory(settings["memory_mb"])
    write_frame(out, (OK, b""))
    kept: Tuple[Any, Any] = (None, None)  # (blob, its value)
    while True:
        frame = read_frame(sys.stdin.buffer)
        if frame is None:
            return
        root, flow, sha, name, file_name, repr_limit = marshal.loads(frame)
        _limit_cpu(settings["cpu_seconds"])
        try:
            if kept[0] != (root, flow, sha, name):
                kept = (None, None)  # the old value goes before the new one is built
                kept = ((root, flow, sha, name), load_stored(root, flow, sha, name, trusted=False))
            answer = (OK, render_value(kept[1], file_name, repr_limit))
        except MemoryError:
            kept = (None, None)
            answer = (LIMIT, "reached the memory limit (%d MB)" % settings["memory_mb"])
        except RecursionError:
            answer = (LIMIT, "nests too deep to render")
        except Exception as exc:  # noqa: BLE001 - any failure of a hostile value is that file's EIO
            answer = (FAILED, "%s: %s" % (type(exc).__name__, exc))
        write_frame(out, answer)


if __name__ == "__main__":
    try:
        main(sys.argv[1:])
    except (BrokenPipeError, KeyboardInterrupt):  # the daemon is gone
        pass
