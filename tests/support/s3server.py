"""A real S3-compatible server on 127.0.0.1 for the tests: moto in server mode, in its own process.

`MotoServer` starts `python -m moto.server` on a free port and stops it (always, also when a test fails).
`FaultProxy` sits between a client and the server and can make the server look hung (connections accepted, never
answered), down (connections reset), or throttling (every request answered 503 SlowDown), then heal again, while
the server keeps its state: that is how the fault tests stop the server "mid-walk" and watch the client recover.

Fixtures (import them explicitly in test modules): `s3_server` (session), `s3_env` (the environment that points
boto3 and Metaflow at it), `fault_proxy` (per test, in front of `s3_server`), `s3_root_parent` (session: the standard
test scenarios run by real Metaflow with `--datastore=s3`, see `build_s3_standard_datastore`).
"""
from __future__ import annotations

import contextlib
import json
import os
import select
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable, Dict, Iterator, List, Optional

import pytest

from tests.support import datastores

BUCKET = "mffs-test"
REGION = "us-east-1"
CREDENTIALS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing"}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _wait_for_port(port: int, process: subprocess.Popen, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError("moto server exited with code %s before listening" % process.returncode)
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError("moto server did not listen on port %d within %.0fs" % (port, timeout))


class MotoServer:
    """moto's S3 (and IAM) server in a child process. `extra_env` e.g. INITIAL_NO_AUTH_ACTION_COUNT turns on
    moto's IAM enforcement after that many requests."""

    def __init__(self, extra_env: Optional[Dict[str, str]] = None):
        self._lock = threading.Lock()
        self._s3 = None
        self.port = free_port()
        self.endpoint_url = "http://127.0.0.1:%d" % self.port
        env = dict(os.environ, **CREDENTIALS, **(extra_env or {}))
        self.process = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        try:
            _wait_for_port(self.port, self.process)
        except BaseException:
            self.stop()
            raise

    def client(self, service: str = "s3", endpoint_url: Optional[str] = None, **credentials: str):
        """A boto3 client for this server (with the test credentials unless others are given). The default S3
        client is created once and shared: creating clients costs far more than the requests themselves."""
        if service == "s3" and endpoint_url is None and not credentials:
            with self._lock:
                if self._s3 is None:
                    self._s3 = self._new_client("s3", self.endpoint_url, {})
                return self._s3
        return self._new_client(service, endpoint_url or self.endpoint_url, credentials)

    @staticmethod
    def _new_client(service: str, endpoint_url: str, credentials: Dict[str, str]):
        import boto3

        return boto3.session.Session().client(
            service,
            endpoint_url=endpoint_url,
            region_name=REGION,
            aws_access_key_id=credentials.get("aws_access_key_id", CREDENTIALS["AWS_ACCESS_KEY_ID"]),
            aws_secret_access_key=credentials.get("aws_secret_access_key", CREDENTIALS["AWS_SECRET_ACCESS_KEY"]),
        )

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


class FaultProxy:
    """A TCP proxy on 127.0.0.1 in front of `target_port` whose behaviour a test switches at will.

    Modes: "forward" (transparent), "hang" (new and open connections get no answer, like a stopped server),
    "reset" (connections are reset, like a server that is not running), "throttle" (every request is answered
    `503 SlowDown`, as S3 does under load)."""

    MODES = ("forward", "hang", "reset", "throttle")

    def __init__(self, target_port: int):
        self.target_port = target_port
        self._mode = "forward"
        self._closed = threading.Event()
        self._listener = socket.socket()
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind(("127.0.0.1", 0))
        self._listener.listen(128)
        self._listener.settimeout(0.1)  # accept() wakes up to notice close()
        self.port = self._listener.getsockname()[1]
        self.endpoint_url = "http://127.0.0.1:%d" % self.port
        self._sockets: List[socket.socket] = []
        self._lock = threading.Lock()
        self._accepter = threading.Thread(target=self._accept_loop, name="fault-proxy", daemon=True)
        self._accepter.start()

    @property
    def mode(self) -> str:
        return self._mode

    @mode.setter
    def mode(self, mode: str) -> None:
        if mode not in self.MODES:
            raise ValueError("unknown proxy mode %r" % mode)
        self._mode = mode
        if mode != "forward":
            # Connections opened in "forward" mode must not keep working through the fault.
            self._drop_connections()

    def close(self) -> None:
        self._closed.set()
        self._listener.close()
        self._drop_connections()
        self._accepter.join(timeout=5)

    def _track(self, sock: socket.socket) -> None:
        with self._lock:
            self._sockets.append(sock)

    def _drop_connections(self) -> None:
        with self._lock:
            sockets, self._sockets = self._sockets, []
        for sock in sockets:
            _close_with_reset(sock)

    def _accept_loop(self) -> None:
        accept_connections(self._listener, self._closed, self._serve)

    def _serve(self, conn: socket.socket) -> None:
        mode = self._mode
        if mode == "reset":
            _close_with_reset(conn)
        elif mode == "hang":
            self._track(conn)  # held open, never read nor answered; dropped when the mode changes
        elif mode == "throttle":
            self._track(conn)
            self._answer_slow_down(conn)
        else:
            self._forward(conn)

    def _answer_slow_down(self, conn: socket.socket) -> None:
        body = (
            b'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>SlowDown</Code>'
            b"<Message>Please reduce your request rate.</Message></Error>"
        )
        response = (
            b"HTTP/1.1 503 Slow Down\r\nContent-Type: application/xml\r\nContent-Length: %d\r\n\r\n%s"
            % (len(body), body)
        )
        try:
            while self._mode == "throttle":
                request = _read_http_request(conn)
                if request is None:
                    break
                conn.sendall(response)
        except OSError:
            pass
        finally:
            conn.close()

    def _forward(self, conn: socket.socket) -> None:
        try:
            upstream = socket.create_connection(("127.0.0.1", self.target_port), timeout=5)
        except OSError:
            _close_with_reset(conn)
            return
        self._track(conn)
        self._track(upstream)
        pair = {conn: upstream, upstream: conn}
        try:
            while self._mode == "forward" and not self._closed.is_set():
                readable, _, _ = select.select(list(pair), [], [], 0.1)
                for sock in readable:
                    data = sock.recv(65536)
                    if not data:
                        return
                    pair[sock].sendall(data)
        except (OSError, ValueError):
            pass
        finally:
            for sock in pair:
                sock.close()


def accept_connections(
    listener: socket.socket, closed: threading.Event, serve: Callable[[socket.socket], None]
) -> None:
    """Hand every connection accepted on `listener` (with a timeout, so that `closed` is noticed) to `serve` on a
    thread of its own, until `closed` is set or the listener is closed."""
    while not closed.is_set():
        try:
            conn, _ = listener.accept()
        except socket.timeout:
            continue
        except OSError:
            return
        conn.settimeout(None)
        threading.Thread(target=serve, args=(conn,), daemon=True).start()


def _close_with_reset(sock: socket.socket) -> None:
    try:
        # SO_LINGER with timeout 0 makes close() send RST: the peer sees "connection reset", not a clean EOF.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
    except OSError:
        pass
    sock.close()


def _read_http_request(conn: socket.socket) -> Optional[bytes]:
    """Read one HTTP/1.1 request (headers + Content-Length body); None at EOF."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = conn.recv(65536)
        if not chunk:
            return None
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value.strip())
    while len(body) < length:
        chunk = conn.recv(65536)
        if not chunk:
            return None
        body += chunk
    return head


def s3_environment(endpoint_url: str) -> Dict[str, str]:
    """Environment variables that point boto3, Metaflow and our client at a test S3 endpoint, with the test
    datastore's root as the configured one (the client reads no other root unless allowed)."""
    return {
        **CREDENTIALS,
        "AWS_DEFAULT_REGION": REGION,
        "METAFLOW_S3_ENDPOINT_URL": endpoint_url,
        "METAFLOW_DATASTORE_SYSROOT_S3": S3_ROOT,
        # Keep the user's real AWS config files out of the tests.
        "AWS_CONFIG_FILE": os.devnull,
        "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
    }


@pytest.fixture(scope="session")
def s3_server() -> Iterator[MotoServer]:
    server = MotoServer()
    try:
        server.client().create_bucket(Bucket=BUCKET)
        yield server
    finally:
        server.stop()


@pytest.fixture
def s3_env(s3_server: MotoServer, monkeypatch: pytest.MonkeyPatch) -> Dict[str, str]:
    """Points this process's boto3 and settings at `s3_server` for one test."""
    env = s3_environment(s3_server.endpoint_url)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    return env


@pytest.fixture
def fault_proxy(s3_server: MotoServer) -> Iterator[FaultProxy]:
    proxy = FaultProxy(s3_server.port)
    try:
        yield proxy
    finally:
        proxy.close()


# -- S3 datastores made by real Metaflow runs with --datastore=s3 ------------------------------------------------

S3_PREFIX = "standard"
S3_ROOT = "s3://%s/%s" % (BUCKET, S3_PREFIX)
_DUMP_DIR = "s3-objects"
_DUMP_INDEX = "s3-objects.json"


@contextlib.contextmanager
def _environ(values: Dict[str, str]) -> Iterator[None]:
    saved = {name: os.environ.get(name) for name in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def _s3_keys(server: MotoServer, prefix: str) -> List[str]:
    pages = server.client().get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=prefix)
    return [obj["Key"] for page in pages for obj in page.get("Contents", ())]


def _dump(server: MotoServer, prefix: str, parent: Path) -> None:
    """Save every object under `prefix` (bytes and user metadata) next to the datastore, to restore it in later
    sessions: moto keeps objects in memory only."""
    client = server.client()
    index = {}
    for key in _s3_keys(server, prefix + "/"):
        response = client.get_object(Bucket=BUCKET, Key=key)
        path = parent / _DUMP_DIR / key
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(response["Body"].read())
        index[key] = response.get("Metadata") or {}
    (parent / _DUMP_INDEX).write_text(json.dumps(index, indent=0, sort_keys=True))


def _restore(server: MotoServer, parent: Path) -> None:
    client = server.client()
    index = json.loads((parent / _DUMP_INDEX).read_text())

    def put(key: str) -> None:
        client.put_object(Bucket=BUCKET, Key=key, Body=(parent / _DUMP_DIR / key).read_bytes(), Metadata=index[key])

    with ThreadPoolExecutor(16) as pool:
        list(pool.map(put, index))


def build_s3_datastore(
    server: MotoServer, kind: str, scenarios: object, flow_files: List[str], run_flows: Callable[[Path], dict],
    prefix: str,
) -> Path:
    """A datastore whose runs `run_flows(parent) -> manifest runs` makes with `datastores.run_flow`, each run using
    `--datastore=s3` into `s3://BUCKET/<prefix>` on `server` and local metadata under `parent`. Returns `parent`
    (it holds `.metaflow`, with metadata only, and `manifest.json`).

    Built once per machine like the local datastores (`datastores._cached_build`); the S3 objects are saved beside
    it and uploaded again into each session's fresh server."""

    def build(parent: Path) -> dict:
        # Metaflow reads $METAFLOW_HOME/config.json, and run_flow points METAFLOW_HOME at parent/metaflow-home.
        config = parent / "metaflow-home" / "config.json"
        config.parent.mkdir(parents=True, exist_ok=True)
        config.write_text(json.dumps({
            "METAFLOW_DEFAULT_DATASTORE": "s3",
            "METAFLOW_DATASTORE_SYSROOT_S3": root,
            "METAFLOW_S3_ENDPOINT_URL": server.endpoint_url,
        }))
        aws_env = {k: v for k, v in s3_environment(server.endpoint_url).items() if not k.startswith("METAFLOW_")}
        with _environ(aws_env):  # run_flow passes the environment on, except METAFLOW_* settings
            runs = run_flows(parent)
        config.unlink()  # it names this session's endpoint; readers get theirs from their environment
        _dump(server, prefix, parent)
        return runs

    root = "s3://%s/%s" % (BUCKET, prefix)
    parent = datastores._cached_build(kind, {"scenarios": scenarios, "root": root}, flow_files, build)
    if not _s3_keys_exist(server, prefix):
        _restore(server, parent)
    return parent


def _s3_keys_exist(server: MotoServer, prefix: str) -> bool:
    response = server.client().list_objects_v2(Bucket=BUCKET, Prefix=prefix + "/", MaxKeys=1)
    return bool(response.get("Contents"))


def build_s3_standard_datastore(server: MotoServer) -> Path:
    """The standard test scenarios (tests/support/datastores.py) with their data in `S3_ROOT`."""

    def unfinished_in_s3(parent: Path, run_id: str) -> None:
        # The standard build's check of the killed SleepFlow run, where an S3 run keeps its attempt files.
        keys = _s3_keys(server, "%s/SleepFlow/%s/sleeper/" % (S3_PREFIX, run_id))
        names = [key.rsplit("/", 1)[1] for key in keys]
        if "0.attempt.json" not in names or "0.DONE.lock" in names:
            raise datastores.FlowRunError("SleepFlow/%s is not in the expected unfinished state: %s" % (run_id, names))

    def run_flows(parent: Path) -> dict:
        local_check = datastores._check_unfinished
        datastores._check_unfinished = unfinished_in_s3
        try:
            return datastores._build_standard(parent)
        finally:
            datastores._check_unfinished = local_check

    return build_s3_datastore(server, "s3-standard", datastores.STANDARD_SCENARIOS, datastores.STANDARD_FLOWS,
                              run_flows, S3_PREFIX)


@pytest.fixture(scope="session")
def s3_root_parent(s3_server: MotoServer) -> Path:
    """The S3 test datastore (see `build_s3_standard_datastore`): local metadata here, data in `S3_ROOT` on
    `s3_server`."""
    return build_s3_standard_datastore(s3_server)
