"""S3 storage: Metaflow's S3 datastore read with bounded timeouts, retries and parallelism.

One S3 client per set of connection settings is shared by every root and thread. When the credentials are static
(the environment's keys, or a plain profile of the shared files) and the endpoint is known, it is our own
(`s3_http`, standard library only: botocore's imports cost 0.1 s before the first request); otherwise botocore's,
created when an `S3Storage` is first used, with botocore's standard credential chain (roles, SSO, credential
processes, instance and container credentials...). boto3 is not needed: its session adds resources and transfer
helpers a reader does not use.

Settings (Metaflow's, as `client.config.setting` resolves them): S3_ENDPOINT_URL, S3_VERIFY_CERTIFICATE,
DATATOOLS_CLIENT_PARAMS (extra boto3 client arguments; its "config" dict overrides ours). mffs's own (environment
only): MFFS_S3_CONNECT_TIMEOUT, MFFS_S3_READ_TIMEOUT (seconds), MFFS_S3_MAX_ATTEMPTS (per request, standard retry
mode), MFFS_S3_THREADS (parallel requests), MFFS_S3_FAILFAST_SECONDS (see `_EndpointHealth`).
"""
from __future__ import annotations

import errno
import io
import json
import logging
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor, as_completed
from typing import TYPE_CHECKING, Any, BinaryIO, Callable, Dict, Iterable, Iterator, List, Optional, Tuple, TypeVar

from cachetools import LRUCache

from ..config import mffs_setting, setting
from .base import Storage, check_key

if TYPE_CHECKING:  # s3_http is imported at the first request: a process reading only the disk cache needs none of it
    from .s3_http import Response

log = logging.getLogger(__name__)

T = TypeVar("T")

USER_ATTRIBUTES_HEADER = "metaflow-user-attributes"

# Error codes S3 (and S3-compatible servers) use for "does not exist" / "not allowed".
_NOT_FOUND_CODES = {"NoSuchKey", "NotFound", "404"}
_DENIED_CODES = {
    "AccessDenied", "403", "InvalidAccessKeyId", "SignatureDoesNotMatch", "ExpiredToken", "InvalidToken",
    "AllAccessDisabled", "AccountProblem", "InvalidObjectState",
}

# Read-ahead of `S3ObjectReader`: a random read fetches the smallest window; each sequential read doubles it.
_MIN_WINDOW = 256 * 1024
_MAX_WINDOW = 16 * 1024 * 1024


def _settings() -> Dict[str, Any]:
    return {
        "connect_timeout": mffs_setting("S3_CONNECT_TIMEOUT", 5.0),
        "read_timeout": mffs_setting("S3_READ_TIMEOUT", 10.0),
        "max_attempts": mffs_setting("S3_MAX_ATTEMPTS", 3),
        "threads": mffs_setting("S3_THREADS", 32),
        "failfast_seconds": mffs_setting("S3_FAILFAST_SECONDS", 5.0),
    }


def _client_params(conf: Dict[str, Any]) -> Dict[str, Any]:
    """`create_client("s3", **params)` arguments (boto3's `client` takes the same): Metaflow's
    DATATOOLS_CLIENT_PARAMS, endpoint and verify settings, and our timeouts/retries unless the user's "config" sets
    them."""
    params = dict(setting("DATATOOLS_CLIENT_PARAMS", {}))
    endpoint = setting("S3_ENDPOINT_URL")
    if endpoint:
        params.setdefault("endpoint_url", endpoint)
    verify = setting("S3_VERIFY_CERTIFICATE")
    if verify:
        # Metaflow passes the value through to boto3, where a string is a CA bundle path; accept booleans too.
        lowered = str(verify).strip().lower()
        params["verify"] = {"false": False, "0": False, "true": True, "1": True}.get(lowered, verify)
    config = {
        "connect_timeout": conf["connect_timeout"],
        "read_timeout": conf["read_timeout"],
        "retries": {"max_attempts": conf["max_attempts"], "mode": "standard"},
        "max_pool_connections": conf["threads"] + 4,
    }
    config.update(params.pop("config", None) or {})
    params["config"] = config
    return params


_clients: Dict[str, Any] = {}
_clients_lock = threading.Lock()
_pool: Optional[ThreadPoolExecutor] = None


def _shared_client(params: Dict[str, Any], bucket: str, body_attempts: int) -> Any:
    """One S3 client per distinct set of parameters, shared process-wide (and its connections): our own HTTP client
    when `s3_profile.fast_settings` knows the configuration, else botocore's."""
    from .s3_http import S3HttpClient
    from .s3_profile import fast_settings

    fast = fast_settings(bucket, params)
    cache_key = json.dumps([params, fast], sort_keys=True, default=str)
    with _clients_lock:
        client = _clients.get(cache_key)
        if client is None:
            if fast is not None:
                client = S3HttpClient(**fast._asdict())
            else:
                client = _BotocoreClient(_botocore_client(params), body_attempts)
            _clients[cache_key] = client
        return client


def _botocore_client(params: Dict[str, Any]) -> Any:
    import botocore.session
    from botocore.config import Config

    kwargs = dict(params)
    kwargs["config"] = Config(**kwargs["config"])
    session = botocore.session.Session()
    session.register_component("data_loader", _s3_loader(session.get_config_variable("data_path")))
    return session.create_client("s3", **kwargs)


class _CredentialsError(Exception):
    """botocore found no usable credentials."""


class _BotocoreClient:
    """botocore's S3 client behind `S3HttpClient`'s interface: the same operations, results and errors."""

    def __init__(self, client: Any, max_attempts: int):
        self.botocore = client
        self.max_attempts = max_attempts

    def _call(self, operation: str, request: Callable[[], T], params: Dict[str, str]) -> T:
        from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError, PartialCredentialsError

        from .s3_http import S3ResponseError, S3TransportError, notify

        notify("before", operation, params)
        try:
            return request()
        except ClientError as exc:
            code, status = _error_code(exc)
            raise S3ResponseError(status, code, str(exc)) from None
        except (NoCredentialsError, PartialCredentialsError) as exc:
            raise _CredentialsError(str(exc)) from None
        except BotoCoreError as exc:
            raise S3TransportError(str(exc)) from None
        finally:
            notify("after", operation, params)

    def get_object(self, bucket: str, key: str, byte_range: Optional[str] = None,
                   if_match: Optional[str] = None) -> Response:
        from botocore.exceptions import HTTPClientError

        kwargs = {"Bucket": bucket, "Key": key}
        if byte_range is not None:
            kwargs["Range"] = byte_range
        if if_match is not None:
            kwargs["IfMatch"] = if_match

        def request() -> Response:
            # botocore retries the request but not a body read cut midway; retry that here within the same bound.
            for attempt in range(1, self.max_attempts + 1):
                response = self.botocore.get_object(**kwargs)
                try:
                    data = response["Body"].read()
                except HTTPClientError:
                    if attempt == self.max_attempts:
                        raise
                    continue
                return _response(response, data)
            raise AssertionError("unreachable")

        return self._call("GetObject", request, kwargs)

    def head_object(self, bucket: str, key: str) -> Response:
        kwargs = {"Bucket": bucket, "Key": key}
        return self._call("HeadObject", lambda: _response(self.botocore.head_object(**kwargs), b""), kwargs)

    def list_pages(self, bucket: str, prefix: str, delimiter: str) -> Iterator[Tuple[List[str], List[str]]]:
        kwargs = {"Bucket": bucket, "Prefix": prefix, "Delimiter": delimiter}
        while True:
            page = self._call("ListObjectsV2", lambda args=kwargs: self.botocore.list_objects_v2(**args), kwargs)
            yield [p["Prefix"] for p in page.get("CommonPrefixes", ())], [o["Key"] for o in page.get("Contents", ())]
            if not page.get("IsTruncated") or not page.get("NextContinuationToken"):
                return
            kwargs = dict(kwargs, ContinuationToken=page["NextContinuationToken"])


def _response(response: Dict[str, Any], body: bytes) -> Response:
    from .s3_http import Response

    metadata = response["ResponseMetadata"]
    return Response(metadata.get("HTTPStatusCode", 200), dict(metadata.get("HTTPHeaders", {})), body)


def _s3_loader(data_path: Optional[str]) -> Any:
    """botocore's loader of its service models (searching the same places: botocore's data, ~/.aws/models and the
    `data_path` setting), for an S3 client: it does not list the 400-odd services botocore ships to check that S3
    is one, and parses with orjson (what `json` with ordered dicts does, three times faster)."""
    import os

    import orjson
    from botocore import loaders

    class Files(loaders.JSONFileLoader):
        def _load_file(self, full_path: str, open_method: Callable) -> Any:
            if not os.path.isfile(full_path):
                return None
            with open_method(full_path, "rb") as fp:
                return orjson.loads(fp.read())

    class S3Loader(loaders.Loader):
        def list_available_services(self, type_name: str) -> List[str]:
            return ["s3"]

    paths = [os.path.expanduser(os.path.expandvars(p)) for p in data_path.split(os.pathsep)] if data_path else []
    return S3Loader(extra_search_paths=paths, file_loader=Files())


def _shared_pool(threads: int) -> ThreadPoolExecutor:
    global _pool
    with _clients_lock:
        if _pool is None:
            _pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="mffs-s3")
        return _pool


class _EndpointHealth:
    """Fails fast while an endpoint is known to be unreachable.

    Each request is already bounded (timeouts x attempts), but a walk over a thousand objects with the server down
    would still wait that bound a thousand times. After a transport failure (timeout, refused connection), requests
    to the same endpoint fail immediately with EIO for `failfast_seconds`; the first request after that window tries
    the server again, so service resumes on its own once the server is back."""

    def __init__(self, failfast_seconds: float):
        self.failfast_seconds = failfast_seconds
        self._down_until = 0.0
        self._last_error = ""

    def check(self, url: str) -> None:
        remaining = self._down_until - time.monotonic()
        if remaining > 0:
            raise OSError(
                errno.EIO,
                "S3 endpoint unreachable (%s); not retrying for another %.1fs" % (self._last_error, remaining),
                url,
            )

    def failed(self, error: str) -> None:
        self._last_error = error
        self._down_until = time.monotonic() + self.failfast_seconds

    def succeeded(self) -> None:
        self._down_until = 0.0


_health: Dict[str, _EndpointHealth] = {}


def _error_code(exc: Exception) -> Tuple[str, Optional[int]]:
    response = getattr(exc, "response", None) or {}
    return str(response.get("Error", {}).get("Code", "")), response.get("ResponseMetadata", {}).get("HTTPStatusCode")


class S3Storage(Storage):
    """A Metaflow datastore root in S3: `s3://bucket/prefix`; keys are '/'-joined paths under the prefix."""

    TYPE = "s3"

    def __init__(self, root: str):
        super().__init__(root)
        if not self.root.startswith("s3://") or len(self.root) <= len("s3://"):
            raise ValueError("Not an S3 datastore root (expected s3://bucket/prefix): %r" % root)
        self.bucket, _, self.prefix = self.root[len("s3://"):].partition("/")
        self._conf = _settings()
        self._client_obj: Any = None
        self._health_obj: Optional[_EndpointHealth] = None
        # User attributes are set when Metaflow writes a blob and never change (blobs are written once), so they
        # are remembered per key; a full GET fills this too, saving the HEAD before or after reading a blob.
        self._attributes: LRUCache = LRUCache(maxsize=100_000)
        self._attributes_lock = threading.Lock()

    # -- plumbing ---------------------------------------------------------------------------------------------

    def _connection(self) -> Tuple[Any, _EndpointHealth]:
        """The shared S3 client (ours or botocore's) and the health record of its endpoint, created on first use."""
        if self._client_obj is None:
            params = _client_params(self._conf)
            endpoint = params.get("endpoint_url") or "aws"
            with _clients_lock:
                self._health_obj = _health.setdefault(endpoint, _EndpointHealth(self._conf["failfast_seconds"]))
            self._client_obj = _shared_client(params, self.bucket, self._conf["max_attempts"])
        return self._client_obj, self._health_obj

    @property
    def _client(self) -> Any:
        return self._connection()[0]

    def _s3_key(self, key: str) -> str:
        key = check_key(key.rstrip("/"))  # S3 keys are literal, but some servers and proxies fold `..`
        if not self.prefix:
            return key
        return self.prefix + "/" + key if key else self.prefix

    def _call(self, what: str, key: str, request: Callable[[], T]) -> T:
        """Run one S3 request (the client retries it within its bounds) and map failures to built-in OSErrors."""
        from .s3_http import S3ResponseError, S3TransportError

        url = self.url(key)
        health = self._connection()[1]
        health.check(url)
        try:
            result = request()
        except S3ResponseError as exc:
            code, status = exc.code, exc.status
            health.succeeded()  # the server answered
            if code == "NoSuchBucket":
                raise FileNotFoundError(errno.ENOENT, "No such S3 bucket: %s" % self.bucket, url) from None
            if code in _NOT_FOUND_CODES or status == 404:
                raise FileNotFoundError(errno.ENOENT, "No such S3 object", url) from None
            if code in _DENIED_CODES or status == 403:
                raise PermissionError(errno.EACCES, "S3 denied access (%s)" % (code or status), url) from None
            if code == "PreconditionFailed" or status == 412:
                raise OSError(errno.ESTALE, "S3 object changed while it was being read", url) from None
            log.warning("S3 %s %s failed after %d attempts: %s", what, url, self._conf["max_attempts"], exc)
            raise OSError(errno.EIO, "S3 %s failed after retries: %s" % (what, exc), url) from None
        except _CredentialsError as exc:
            raise PermissionError(errno.EACCES, "No usable AWS credentials: %s" % exc, url) from None
        except S3TransportError as exc:
            health.failed(str(exc))
            log.warning("S3 %s %s failed after %d attempts: %s", what, url, self._conf["max_attempts"], exc)
            raise OSError(errno.EIO, "S3 %s failed: %s" % (what, exc), url) from None
        health.succeeded()
        return result

    def _get(self, key: str, byte_range: Optional[Tuple[int, int]] = None, etag: Optional[str] = None) -> bytes:
        """GET the object or the inclusive byte range; reading the body is part of the bounded retried request."""
        range_header = "bytes=%d-%d" % byte_range if byte_range is not None else None
        response = self._call(
            "GET", key, lambda: self._client.get_object(self.bucket, self._s3_key(key), range_header, etag)
        )
        if byte_range is None:
            self._remember_attributes(key, response)
        return response.body

    def _head(self, key: str) -> Response:
        response = self._call("HEAD", key, lambda: self._client.head_object(self.bucket, self._s3_key(key)))
        self._remember_attributes(key, response)
        return response

    def _remember_attributes(self, key: str, response: Response) -> None:
        attributes = _parse_attributes(response.metadata())
        with self._attributes_lock:
            self._attributes[key] = attributes

    # -- Storage interface -----------------------------------------------------------------------------------

    def read(self, key: str) -> bytes:
        return self._get(key)

    def read_many(
        self, keys: Iterable[str], then: Optional[Callable[[str, bytes], Any]] = None, max_bytes: Optional[int] = None
    ) -> Dict[str, Any]:
        """Fetch the keys (and apply `then`, see Storage.read_many) in parallel on the shared bounded pool; None
        for missing keys, and for objects longer than `max_bytes` (of which one ranged GET reads max_bytes + 1).

        The first other failure cancels what has not started yet and is raised, so a dead server costs one
        request timeout, not one per key."""
        keys = list(dict.fromkeys(keys))
        if len(keys) <= 1 and max_bytes is None:
            return super().read_many(keys, then)
        futures: Dict[Future, str] = {future: key for key, future in self.start_reads(keys, then, max_bytes).items()}
        out: Dict[str, Any] = {}
        for future in as_completed(futures):
            try:
                out[futures[future]] = future.result()
            except BaseException:
                for other in futures:
                    other.cancel()
                raise
        return out

    def start_reads(
        self, keys: Iterable[str], then: Optional[Callable[[str, bytes], Any]] = None, max_bytes: Optional[int] = None
    ) -> Dict[str, Future]:
        """`read_many` started on the shared bounded pool, without waiting: per key, a Future of its answer there
        (or of its error). After a transport failure the others fail fast (`_EndpointHealth`)."""

        def fetch(key: str) -> Any:
            try:
                data = self._get(key, byte_range=(0, max_bytes) if max_bytes is not None else None)
            except FileNotFoundError:
                return None
            if max_bytes is not None and len(data) > max_bytes:
                return None
            return then(key, data) if then is not None else data

        pool = _shared_pool(self._conf["threads"])
        return {key: pool.submit(fetch, key) for key in dict.fromkeys(keys)}

    def open(self, key: str) -> BinaryIO:
        headers = self._head(key).headers
        return S3ObjectReader(self, key, int(headers["content-length"]), headers.get("etag"))

    def size(self, key: str) -> int:
        return int(self._head(key).headers["content-length"])

    def exists(self, key: str) -> bool:
        """Whether an object with exactly this key exists ("directories" are not objects in S3)."""
        try:
            self._head(key)
        except FileNotFoundError:
            return False
        return True

    def list(self, key: str) -> List[str]:
        prefix = self._s3_key(key)
        prefix = prefix + "/" if prefix else ""
        names = set()

        def request() -> None:
            for common_prefixes, keys in self._client.list_pages(self.bucket, prefix, "/"):
                names.update(common[len(prefix):].rstrip("/") for common in common_prefixes)
                names.update(name[len(prefix):] for name in keys)

        self._call("LIST", key, request)
        names.discard("")
        return sorted(names)

    def user_attributes(self, key: str) -> Optional[dict]:
        with self._attributes_lock:
            if key in self._attributes:
                return self._attributes[key]
        return _parse_attributes(self._head(key).metadata())


def _parse_attributes(metadata: Optional[Dict[str, str]]) -> Optional[dict]:
    value = (metadata or {}).get(USER_ATTRIBUTES_HEADER)
    return json.loads(value) if value else None


class S3ObjectReader(io.RawIOBase):
    """A seekable, read-only file over one S3 object, fetched with ranged GETs.

    Random reads fetch a small window around the position; sequential reads double the window (up to 16 MiB) and
    prefetch the next one on the shared pool, so streaming overlaps download with the caller's work. Every range is
    requested with If-Match on the ETag seen at open: an object replaced meanwhile gives ESTALE, never mixed bytes."""

    def __init__(self, storage: S3Storage, key: str, size: int, etag: Optional[str]):
        super().__init__()
        self.name = storage.url(key)
        self._storage = storage
        self._key = key
        self._size = size
        self._etag = etag
        self._pos = 0
        self._lock = threading.Lock()
        self._window = _MIN_WINDOW
        self._buffer_start = 0
        self._buffer = b""
        self._prefetch: Optional[Tuple[int, Future]] = None

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        with self._lock:
            base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: self._size}[whence]
            if base + offset < 0:
                raise OSError(errno.EINVAL, "negative seek position", self.name)
            self._pos = base + offset
            return self._pos

    def readinto(self, buffer: Any) -> int:
        view = memoryview(buffer).cast("B")
        with self._lock:
            filled = 0
            while filled < len(view) and self._pos < self._size:
                offset = self._pos - self._buffer_start
                if not 0 <= offset < len(self._buffer):
                    self._load(self._pos)
                    offset = 0
                chunk = self._buffer[offset:offset + len(view) - filled]
                view[filled:filled + len(chunk)] = chunk
                filled += len(chunk)
                self._pos += len(chunk)
            return filled

    def readall(self) -> bytes:
        return self.read(max(self._size - self._pos, 0))

    def read(self, size: int = -1) -> bytes:
        if size is None or size < 0:
            size = max(self._size - self._pos, 0)
        buffer = bytearray(min(size, max(self._size - self._pos, 0)))
        return bytes(buffer[: self.readinto(buffer)])

    def _fetch(self, start: int, length: int) -> bytes:
        end = min(start + length, self._size) - 1
        return self._storage._get(self._key, (start, end), self._etag)

    def _load(self, pos: int) -> None:
        """Make the buffer hold `pos`, growing the window on sequential access and prefetching the next one."""
        sequential = bool(self._buffer) and pos == self._buffer_start + len(self._buffer)
        self._window = min(self._window * 2, _MAX_WINDOW) if sequential else _MIN_WINDOW
        prefetched = self._prefetch
        self._prefetch = None
        if prefetched is not None and prefetched[0] == pos:
            data = prefetched[1].result()
        else:
            if prefetched is not None:
                prefetched[1].cancel()
            data = self._fetch(pos, self._window)
        self._buffer_start, self._buffer = pos, data
        next_start = pos + len(data)
        if sequential and next_start < self._size:
            pool = _shared_pool(self._storage._conf["threads"])
            self._prefetch = (next_start, pool.submit(self._fetch, next_start, self._window))

    def close(self) -> None:
        if self._prefetch is not None:
            self._prefetch[1].cancel()
            self._prefetch = None
        self._buffer = b""
        super().close()
