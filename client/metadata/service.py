"""The Metaflow metadata service (REST) as a metadata provider.

Routes, headers and semantics are those of Metaflow 2.19's `ServiceMetadataProvider`: `x-api-key` from
SERVICE_AUTH_KEY plus SERVICE_HEADERS on every request, 404 → not found, attempt-specific routes only when the
service advertises ≥ 2.0.6 on `/ping`, anchored patterns on `filtered_tasks`. Unlike Metaflow, every request has
a connect and a read timeout, so a dead service is an error after a bounded time, never a hang.

Settings: SERVICE_AUTH_KEY, SERVICE_HEADERS and SERVICE_RETRY_COUNT (attempts per request, Metaflow's, default 5);
MFFS_SERVICE_CONNECT_TIMEOUT (s, default 5), MFFS_SERVICE_TIMEOUT (read timeout, s, default 20) and
MFFS_SERVICE_RETRY_BACKOFF (s, default 0.5: the second attempt is immediate, then sleeps 0.5, 1, 2 ...). So a
service that is down fails a call after about 3.5 s (5 attempts), one that accepts connections but does not
answer after the read timeout (not retried), and one that is unreachable after 5 × connect timeout + 3.5 s.
"""
from __future__ import annotations

import re
import threading
import time
from typing import Any, Callable, List, Optional, Tuple
from urllib.parse import quote, urlencode

from .. import records
from ..config import mffs_setting, setting
from ..exceptions import MetaflowBackendError, MetaflowInternalError
from .base import (
    RECORD_ERRORS,
    MetadataProvider,
    artifact_record,
    bad_record,
    event_record,
    flow_record,
    run_record,
    run_tags,
    skip_record,
    step_record,
    task_record,
)

#: the OS's reason inside a requests/urllib3 connection error, e.g. "[Errno 111] Connection refused"
_ERRNO_REASON = re.compile(r"\[Errno -?\d+\] ([^'\")\]]+)")
#: service versions that introduced a route the client needs (Metaflow gates on the same numbers)
_ATTEMPT_ROUTES_VERSION = (2, 0, 6)


def _version_tuple(version: Optional[str]) -> Optional[Tuple[int, ...]]:
    if not version:
        return None
    parts = []
    for part in version.split("."):
        digits = ""
        for ch in part:
            if not ch.isdigit():
                break
            digits += ch
        if not digits:
            break
        parts.append(int(digits))
    return tuple(parts) or None


def parse_postgres_array(text: str) -> List[str]:
    """`{a=1,"b,c",d}` → ['a=1', 'b,c', 'd']: how the service returns a list stored as metadata value."""
    inner = text[1:-1]
    items: List[str] = []
    if not inner:
        return items
    i, n = 0, len(inner)
    while True:
        if i < n and inner[i] == '"':
            i += 1
            item = []
            while i < n and inner[i] != '"':
                if inner[i] == "\\" and i + 1 < n:
                    i += 1
                item.append(inner[i])
                i += 1
            items.append("".join(item))
            i += 1  # the closing quote
        else:
            end = inner.find(",", i)
            end = n if end < 0 else end
            items.append(inner[i:end])
            i = end
        if i >= n:
            return items
        i += 1  # the separating comma


def _foreach_stack(value: Any) -> Any:
    """The service answers a list value as a PostgreSQL array literal; the local provider keeps the list."""
    if isinstance(value, str) and value.startswith("{") and value.endswith("}"):
        return parse_postgres_array(value)
    return value


def _component(value: str) -> Optional[str]:
    """One id as a URL path segment, or None for ids that cannot name an object ('', '.', '..')."""
    value = str(value)
    if value in ("", ".", ".."):
        return None
    return quote(value, safe="")


class ServiceMetadataProvider(MetadataProvider):
    TYPE = "service"

    def __init__(self, url: Optional[str], ping: bool = False):
        #: None when METAFLOW_SERVICE_URL is not set: every request then fails with Metaflow's message
        self.url = url.rstrip("/") if url else None
        headers = dict(setting("SERVICE_HEADERS", {}) or {})
        auth_key = setting("SERVICE_AUTH_KEY")
        if auth_key:
            headers["x-api-key"] = auth_key
        self.headers = headers
        self.attempts = max(1, int(setting("SERVICE_RETRY_COUNT", 5)))
        self.timeout = (
            float(mffs_setting("SERVICE_CONNECT_TIMEOUT", 5.0)),
            float(mffs_setting("SERVICE_TIMEOUT", 20.0)),
        )
        self.backoff = float(mffs_setting("SERVICE_RETRY_BACKOFF", 0.5))
        self._session = None
        self._session_lock = threading.Lock()
        #: the version the service reports on /ping; None until pinged
        self.version: Optional[str] = None
        self._pinged = False
        if ping:
            self.ping()

    def info(self) -> str:
        return str(self.url)

    # transport -------------------------------------------------------------------------------------------------

    def _get_session(self):
        with self._session_lock:
            if self._session is None:
                import requests  # only when the service is actually used

                session = requests.Session()
                # Retries are ours (503 and connection errors, with backoff); the adapter must not add its own.
                adapter = requests.adapters.HTTPAdapter(pool_connections=4, pool_maxsize=32, max_retries=0)
                session.mount("http://", adapter)
                session.mount("https://", adapter)
                session.headers.update(self.headers)
                self._session = session
            return self._session

    def _send(self, path: str):
        """GET `path` with retries on connection errors and 503; the last response, or MetaflowBackendError."""
        if self.url is None:
            raise MetaflowBackendError(
                "Missing Metaflow Service URL. Specify with METAFLOW_SERVICE_URL environment variable"
            )
        import requests

        session = self._get_session()
        url = self.url + path
        problem = ""
        for attempt in range(self.attempts):
            # The first retry is immediate: the usual cause is a pooled connection the server had closed.
            if attempt > 1:
                time.sleep(self.backoff * 2 ** (attempt - 2))
            try:
                response = session.get(url, timeout=self.timeout)
            except requests.exceptions.ConnectTimeout:
                problem = "no connection within %gs" % self.timeout[0]
                continue
            except requests.exceptions.ConnectionError as ex:
                reason = _ERRNO_REASON.search(str(ex))
                problem = "cannot connect (%s)" % (reason.group(1) if reason else ex.__class__.__name__)
                continue
            except requests.exceptions.Timeout as ex:
                raise MetaflowBackendError(
                    "Metadata service %s did not answer %s within %gs" % (self.url, path, self.timeout[1])
                ) from ex
            except requests.exceptions.RequestException as ex:
                raise MetaflowBackendError("Metadata request (%s) to %s failed: %s" % (path, self.url, ex)) from ex
            if response.status_code != 503:
                return response
            problem = "service unavailable (503)"
        raise MetaflowBackendError(
            "Metadata service %s unreachable: %s on %s, after %d attempts" % (self.url, problem, path, self.attempts)
        )

    def _get(self, path: str) -> Optional[Any]:
        """The decoded JSON answer of GET `path`, None on 404; other failures raise MetaflowBackendError."""
        response = self._send(path)
        if response.status_code == 404:
            return None
        if response.status_code >= 300:
            raise MetaflowBackendError(
                "Metadata request (%s) failed (code %s): %s" % (path, response.status_code, response.text[:500])
            )
        try:
            return records.loads(response.content)
        except ValueError as ex:
            raise MetaflowBackendError(
                "Metadata request (%s) answered something that is not JSON: %r" % (path, response.content[:200])
            ) from ex

    def ping(self) -> Optional[str]:
        """GET /ping (as `metadata('service@URL')` does in Metaflow); the service version it reports."""
        try:
            response = self._send("/ping")
        except MetaflowBackendError as ex:
            raise MetaflowBackendError("Metaflow service [%s] unreachable. %s" % (self.url, ex)) from ex
        if response.status_code >= 300:
            raise MetaflowBackendError(
                "Metaflow service [%s] unreachable: /ping answered %s" % (self.url, response.status_code)
            )
        self.version = response.headers.get("METADATA_SERVICE_VERSION")
        self._pinged = True
        return self.version

    def _require_attempt_routes(self) -> None:
        if not self._pinged:
            self.ping()
        version = _version_tuple(self.version)
        if version is None or version < _ATTEMPT_ROUTES_VERSION:
            raise MetaflowBackendError(
                "Getting specific attempts of Tasks or Artifacts requires the metaflow service to be at least "
                "version 2.0.6 (%s reports %s). Please upgrade your service" % (self.url, self.version)
            )

    @staticmethod
    def _path(*ids: str) -> Optional[str]:
        """/flows/F/runs/R/steps/S/tasks/T for the given ids; None if one of them cannot be an id."""
        path = ""
        for kind, value in zip(("flows", "runs", "steps", "tasks", "artifacts"), ids):
            segment = _component(value)
            if segment is None:
                return None
            path += "/%s/%s" % (kind, segment)
        return path

    def _one(self, make: Callable[[dict], dict], path: Optional[str]) -> Optional[dict]:
        """`make(row)` of the service's row at `path` (None when there is none); a malformed row raises
        MetaflowInternalError naming it."""
        r = None if path is None else self._get(path)
        if r is None:
            return None
        try:
            return make(r)
        except RECORD_ERRORS as exc:
            raise bad_record(self.url + path, exc) from exc

    def _list(self, make: Callable[[dict], dict], path: Optional[str]) -> List[dict]:
        """`make(row)` of each row the service lists at `path`; a malformed row is left out (logged once)."""
        built = []
        for index, r in enumerate((None if path is None else self._get(path)) or []):
            try:
                built.append(make(r))
            except RECORD_ERRORS as exc:
                skip_record("%s%s row %d" % (self.url, path, index), exc)
        return built

    # records ---------------------------------------------------------------------------------------------------

    _flow = staticmethod(flow_record)
    _run = staticmethod(run_record)

    #: the run's current tags, which the service serves with every step, task and artifact row
    _run_tags = staticmethod(run_tags)

    @classmethod
    def _step(cls, r: dict) -> dict:
        return {**step_record(r), **cls._run_tags(r)}

    @classmethod
    def _task(cls, r: dict) -> dict:
        return {**task_record(r), **cls._run_tags(r)}

    @classmethod
    def _artifact(cls, r: dict) -> dict:
        return {**cls._run_tags(r), **artifact_record(r)}

    @staticmethod
    def _event(r: dict) -> dict:
        event = event_record(r)
        if event["field_name"] == "foreach-stack":
            event["value"] = _foreach_stack(event["value"])
        return event

    # MetadataProvider ------------------------------------------------------------------------------------------

    def flows(self) -> List[dict]:
        return self._list(self._flow, "/flows")

    def flow(self, flow: str) -> Optional[dict]:
        return self._one(self._flow, self._path(flow))

    def runs(self, flow: str) -> List[dict]:
        path = self._path(flow)
        return self._list(self._run, path and path + "/runs")

    def run(self, flow: str, run: str) -> Optional[dict]:
        return self._one(self._run, self._path(flow, run))

    def steps(self, flow: str, run: str) -> List[dict]:
        path = self._path(flow, run)
        return self._list(self._step, path and path + "/steps")

    def step(self, flow: str, run: str, step: str) -> Optional[dict]:
        return self._one(self._step, self._path(flow, run, step))

    def tasks(self, flow: str, run: str, step: str) -> List[dict]:
        path = self._path(flow, run, step)
        return self._list(self._task, path and path + "/tasks")

    def task(self, flow: str, run: str, step: str, task: str) -> Optional[dict]:
        return self._one(self._task, self._path(flow, run, step, task))

    def artifacts(self, flow: str, run: str, step: str, task: str, attempt: Optional[int] = None) -> List[dict]:
        path = self._path(flow, run, step, task)
        if path is not None:
            if attempt is None:
                # The service keeps only the rows of the task's highest attempt: the latest finished one.
                path += "/artifacts"
            else:
                self._require_attempt_routes()
                path += "/attempt/%d/artifacts" % attempt
        return [r for r in self._list(self._artifact, path) if not r["name"].startswith("_")]

    def artifact(
        self, flow: str, run: str, step: str, task: str, name: str, attempt: Optional[int] = None
    ) -> Optional[dict]:
        path = self._path(flow, run, step, task, name)
        if path is not None and attempt is not None:
            self._require_attempt_routes()
            path += "/attempt/%d" % attempt
        return self._one(self._artifact, path)

    def task_metadata(self, flow: str, run: str, step: str, task: str) -> List[dict]:
        path = self._path(flow, run, step, task)
        return self._list(self._event, path and path + "/metadata")

    def filtered_tasks(self, flow: str, run: str, step: str, field_name: str, pattern: str) -> List[str]:
        path = self._path(flow, run, step)
        if path is None:
            return []
        path += "/filtered_tasks"
        query = {}
        if pattern != ".*":  # Metaflow sends no filter for "anything"
            if field_name:
                query["metadata_field_name"] = field_name
            if pattern:
                # The service searches unanchored; anchoring gives the local provider's full match.
                query["pattern"] = "^(?:%s)$" % pattern
        if query:
            path += "?" + urlencode(query)
        pathspecs = self._get(path)
        if pathspecs is None:
            raise MetaflowInternalError(
                "The version of metadata service deployed currently does not support filtering tasks by "
                "metadata. Upgrade Metadata service to version 2.5.0 or greater to use this feature."
            )
        return [pathspec.rsplit("/", 1)[-1] for pathspec in pathspecs]
