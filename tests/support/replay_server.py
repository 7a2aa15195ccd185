"""A replay of the recorded metaflow-service 2.5.1 answers (tests/data/metadata-service), on 127.0.0.1.

Answers as the fixture README says: exact match on method + raw path (query included), recorded status,
headers and body with `{DATASTORE_ROOT}` replaced by the absolute path of the fixture's datastore; anything
else is 404 `{}`. Every response carries `METADATA_SERVICE_VERSION`. It counts requests per path and keeps
their headers, and it can inject faults: down (port closed), N answers with a given status, slow answers.
"""
from __future__ import annotations

import collections
import functools
import json
import os
import socket
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Dict, List, Optional, Tuple

import pytest

FIXTURE_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "data", "metadata-service")
DATASTORE_DIR = os.path.join(FIXTURE_DIR, "datastore")
RECORDING = os.path.join(FIXTURE_DIR, "recording.jsonl")
MASTER_OVERRIDES = os.path.join(FIXTURE_DIR, "main-branch-overrides.jsonl")
EXPECTED_WALK = os.path.join(FIXTURE_DIR, "expected-client.json")
PLACEHOLDER = "{DATASTORE_ROOT}"
SERVICE_VERSION = "2.5.1"
#: a `fail()` status: close the connection instead of answering
DROP = 0

Answer = Tuple[int, Dict[str, str], bytes]


@functools.lru_cache(maxsize=None)
def load_answers(master: bool = False, datastore_root: str = DATASTORE_DIR) -> Dict[Tuple[str, str], Answer]:
    """(method, path) → (status, headers, body) from the recording, optionally overlaid with master's answers."""
    answers: Dict[Tuple[str, str], Answer] = {}
    for path in (RECORDING, MASTER_OVERRIDES) if master else (RECORDING,):
        with open(path, encoding="utf-8") as f:
            for line in f:
                exchange = json.loads(line)
                body = exchange["body"].replace(PLACEHOLDER, datastore_root).encode("utf-8")
                answers[(exchange["method"], exchange["path"])] = (exchange["status"], exchange["headers"], body)
    return answers


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, so connection pooling is observable
    server: "_Server"

    def setup(self) -> None:
        super().setup()
        self.server.replay._connection_opened(self.connection)

    def finish(self) -> None:
        super().finish()
        self.server.replay._connection_closed(self.connection)

    def _answer(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        if length:
            self.rfile.read(length)
        status, headers, body = self.server.replay._respond(self.command, self.path, dict(self.headers.items()))
        if status == DROP:
            self.close_connection = True
            self.connection.shutdown(socket.SHUT_RDWR)
            return
        self.send_response(status)
        for name, value in headers.items():
            if name.lower() != "content-length":
                self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_POST = do_PATCH = do_PUT = do_DELETE = _answer

    def log_message(self, format: str, *args) -> None:  # noqa: A002 - http.server's signature
        pass


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    replay: "ReplayServer"

    def handle_error(self, request, client_address) -> None:
        # A client that gave up (read timeout) or a connection closed by stop() is expected in fault tests.
        if not isinstance(sys.exc_info()[1], (BrokenPipeError, ConnectionResetError)):
            super().handle_error(request, client_address)


class ReplayServer:
    """The replay service. `url` is its base URL; use as a context manager or call start()/stop()."""

    def __init__(self, master: bool = False, datastore_root: str = DATASTORE_DIR, version: str = SERVICE_VERSION):
        #: (method, path) → answer; a copy, so a test may remove routes to emulate an older service
        self.answers = dict(load_answers(master, datastore_root))
        self.datastore_root = datastore_root
        #: sent as METADATA_SERVICE_VERSION on every response (the README's advice; clients read it on /ping)
        self.version = version
        self.port = 0
        self._server: Optional[_Server] = None
        self._thread: Optional[threading.Thread] = None
        self._lock = threading.Lock()
        self._open: set = set()
        self.reset()

    # lifecycle -------------------------------------------------------------------------------------------------

    @property
    def url(self) -> str:
        return "http://127.0.0.1:%d" % self.port

    def start(self) -> "ReplayServer":
        """Listen (again) on the same port, so a client configured with `url` reconnects."""
        server = _Server(("127.0.0.1", self.port), _Handler)
        server.replay = self
        self.port = server.server_address[1]
        self._server = server
        self._thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Close the port: new connections are refused (the "service down" fault)."""
        if self._server is not None:
            self._server.shutdown()
            with self._lock:
                open_connections = list(self._open)
            # Kept-alive connections would otherwise go on being served by their handler threads.
            for connection in open_connections:
                try:
                    connection.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
            self._server.server_close()
            self._thread.join(5)
            self._server = self._thread = None

    def __enter__(self) -> "ReplayServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # observation and faults ------------------------------------------------------------------------------------

    def reset(self) -> None:
        """Forget counted requests and injected faults."""
        with self._lock:
            self.counts: collections.Counter = collections.Counter()
            self.request_headers: List[Tuple[str, str, Dict[str, str]]] = []
            self.connections = 0
            self._failures: List[Tuple[int, Optional[int]]] = []  # (status, remaining or None = always)
            self.delay = 0.0

    def fail(self, status: int, times: Optional[int] = None) -> None:
        """Answer the next `times` requests (all of them when None) with `status` and an error body, or
        with `status=DROP` close the connection without answering (a server closing an idle connection)."""
        with self._lock:
            self._failures.append((status, times))

    def total_requests(self) -> int:
        with self._lock:
            return sum(self.counts.values())

    def _connection_opened(self, connection: socket.socket) -> None:
        with self._lock:
            self.connections += 1
            self._open.add(connection)

    def _connection_closed(self, connection: socket.socket) -> None:
        with self._lock:
            self._open.discard(connection)

    def _respond(self, method: str, path: str, headers: Dict[str, str]) -> Answer:
        with self._lock:
            self.counts[(method, path)] += 1
            self.request_headers.append((method, path, headers))
            injected = None
            if self._failures:
                status, remaining = self._failures[0]
                injected = status
                if remaining is not None:
                    if remaining <= 1:
                        self._failures.pop(0)
                    else:
                        self._failures[0] = (status, remaining - 1)
            delay = self.delay
        if delay:
            time.sleep(delay)
        version_header = {"METADATA_SERVICE_VERSION": self.version}
        if injected == DROP:
            return DROP, {}, b""
        if injected is not None:
            return injected, version_header, json.dumps("injected failure %d" % injected).encode()
        status, headers, body = self.answers.get((method, path), (404, {"Content-Type": "text/plain"}, b"{}"))
        return status, {**headers, **version_header}, body


@pytest.fixture(scope="session")
def replay_server_session():
    """One replay server for the whole session; use `replay_service` in tests (it resets counters/faults)."""
    with ReplayServer() as server:
        yield server


@pytest.fixture
def replay_service(replay_server_session):
    """The session's replay server with counters and faults reset before and after the test."""
    replay_server_session.reset()
    yield replay_server_session
    replay_server_session.reset()


@pytest.fixture
def service_env(monkeypatch, tmp_path):
    """No Metaflow or mffs settings from this machine (empty METAFLOW_HOME, a cwd without `.metaflow`),
    user alice, the recorded datastore allowed, and quick retries (backoff 0.05 s) so fault tests stay short."""
    for name in list(os.environ):
        if name.startswith(("METAFLOW_", "MFFS_")):
            monkeypatch.delenv(name)
    for name in ("SUDO_USER", "USERNAME"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("USER", "alice")
    monkeypatch.setenv("METAFLOW_HOME", str(tmp_path / "metaflowconfig"))
    monkeypatch.setenv("MFFS_SERVICE_RETRY_BACKOFF", "0.05")
    monkeypatch.setenv("MFFS_ALLOWED_ROOTS", DATASTORE_DIR)  # the recorded runs' datastore, configured nowhere
    monkeypatch.chdir(tmp_path)
    return tmp_path
