"""A minimal S3 client on the standard library: SigV4-signed GetObject, HeadObject and ListObjectsV2 over
`http.client`, with botocore's standard retry mode. It replaces botocore (0.1 s of imports before the first
request) when the configuration is one it fully understands (see `client.storage.s3_profile`).

Failures come out as `S3ResponseError` (the server answered with an error, after retries) or `S3TransportError`
(no answer: refused, reset, timed out), which `S3Storage` maps to built-in OSErrors as it does botocore's."""
from __future__ import annotations

import hashlib
import hmac
import random
import threading
import time
from typing import TYPE_CHECKING, Callable, Dict, Iterator, List, NamedTuple, Optional, Tuple
from urllib.parse import quote, unquote, urlsplit

if TYPE_CHECKING:
    import http.client  # imported when the first request is sent: its email parsers cost 15 ms
    from xml.etree.ElementTree import Element

EMPTY_PAYLOAD_SHA256 = hashlib.sha256(b"").hexdigest()
_META_PREFIX = "x-amz-meta-"
# botocore's standard retry mode: these status codes and error codes are retried, with exponential backoff.
_RETRY_STATUS = {429, 500, 502, 503, 504}
_RETRY_CODES = {
    "Throttling", "ThrottlingException", "ThrottledException", "RequestThrottledException", "TooManyRequestsException",
    "ProvisionedThroughputExceededException", "TransactionInProgressException", "RequestLimitExceeded",
    "BandwidthLimitExceeded", "LimitExceededException", "RequestThrottled", "SlowDown", "PriorRequestNotComplete",
    "EC2ThrottledException", "RequestTimeout", "RequestTimeoutException",
}
_MAX_BACKOFF = 20.0

# Callables (stage "before" or "after", operation name, parameters) told of every S3 operation, retries included
# in one; whichever client serves it (this one or botocore's) calls them. Tests count requests with them.
request_hooks: List[Callable[[str, str, Dict[str, str]], None]] = []


def notify(stage: str, operation: str, params: Dict[str, str]) -> None:
    for hook in list(request_hooks):
        hook(stage, operation, params)


class Credentials(NamedTuple):
    access_key: str
    secret_key: str
    token: Optional[str] = None


class S3ResponseError(Exception):
    """The server answered with an error status (after the retries, if it was one to retry)."""

    def __init__(self, status: Optional[int], code: str, text: str):
        self.status = status
        self.code = code or str(status)
        super().__init__(text)


class S3TransportError(Exception):
    """No answer from the server after the retries: connection refused or reset, timeout, cut-off body."""


class Response(NamedTuple):
    status: int
    headers: Dict[str, str]  # lower-case names
    body: bytes

    def metadata(self) -> Dict[str, str]:
        """The object's user metadata (`x-amz-meta-*` headers), keyed as botocore's `Metadata`."""
        return {name[len(_META_PREFIX):]: value
                for name, value in self.headers.items() if name.startswith(_META_PREFIX)}


def _sign(key: bytes, text: str) -> bytes:
    return hmac.new(key, text.encode("utf-8"), hashlib.sha256).digest()


def authorization_headers(
    credentials: Credentials, region: str, method: str, host: str, path: str, query: List[Tuple[str, str]],
    headers: Dict[str, str],
) -> Dict[str, str]:
    """The SigV4 headers (Authorization and the x-amz-* ones it signs) for a request without a body. `path` is the
    already URI-encoded path as sent; `headers` are the other headers to sign (lower-case names)."""
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    signed = dict(headers, host=host)
    signed["x-amz-content-sha256"] = EMPTY_PAYLOAD_SHA256
    signed["x-amz-date"] = stamp
    if credentials.token:
        signed["x-amz-security-token"] = credentials.token
    names = sorted(signed)
    canonical_query = "&".join(
        "%s=%s" % (quote(k, safe="~"), quote(v, safe="~")) for k, v in sorted(query)
    )
    canonical = "\n".join([
        method, path, canonical_query,
        "".join("%s:%s\n" % (name, " ".join(str(signed[name]).split())) for name in names),
        ";".join(names), EMPTY_PAYLOAD_SHA256,
    ])
    scope = "%s/%s/s3/aws4_request" % (stamp[:8], region)
    to_sign = "\n".join(["AWS4-HMAC-SHA256", stamp, scope, hashlib.sha256(canonical.encode("utf-8")).hexdigest()])
    key = _sign(_sign(_sign(_sign(("AWS4" + credentials.secret_key).encode("utf-8"), stamp[:8]), region), "s3"),
                "aws4_request")
    signature = hmac.new(key, to_sign.encode("utf-8"), hashlib.sha256).hexdigest()
    out = {name: signed[name] for name in names if name != "host"}
    out["authorization"] = "AWS4-HMAC-SHA256 Credential=%s/%s, SignedHeaders=%s, Signature=%s" % (
        credentials.access_key, scope, ";".join(names), signature)
    return out


def parse_xml(body: bytes) -> Element:
    """An S3 XML document as an ElementTree element, namespaces stripped. A response is untrusted input: a
    document type declaration (the only way to define entities) is refused."""
    import xml.etree.ElementTree as ElementTree

    if b"<!DOCTYPE" in body.upper():
        raise S3TransportError("refused an S3 response with a document type declaration")
    parser = ElementTree.XMLParser()
    try:
        parser.feed(body)
        root = parser.close()
    except ElementTree.ParseError as exc:
        raise S3TransportError("unparsable S3 response: %s" % exc) from None
    for element in root.iter():
        if isinstance(element.tag, str) and element.tag.startswith("{"):
            element.tag = element.tag.rpartition("}")[2]
    return root


def _error_details(response: Response) -> Tuple[str, str]:
    if response.body:
        try:
            root = parse_xml(response.body)
            return root.findtext("Code") or "", root.findtext("Message") or ""
        except Exception:  # noqa: BLE001 -- an unparsable error body still has its status
            pass
    from http import HTTPStatus

    try:
        return "", HTTPStatus(response.status).phrase
    except ValueError:
        return "", ""


def _bucket_region(response: Response) -> Optional[str]:
    """The region S3 says the bucket is in, when it refuses a request sent to or signed for another one (301
    PermanentRedirect, 400 AuthorizationHeaderMalformed: the header, or the error's Region element)."""
    if response.status not in (301, 307, 400):
        return None
    region = response.headers.get("x-amz-bucket-region")
    if not region and response.body:
        try:
            region = parse_xml(response.body).findtext("Region")
        except Exception:  # noqa: BLE001 -- not an S3 error document
            return None
    return region if region and all(c.isalnum() or c == "-" for c in region) else None


class S3HttpClient:
    """Signed S3 requests to one endpoint (path-style `https://host/bucket/key` for a custom endpoint, virtual-hosted
    `https://bucket.s3.<region>.amazonaws.com/key` for AWS), one keep-alive connection per thread and host. A bucket
    in another region than the configured one is followed there, as botocore does."""

    def __init__(self, endpoint_url: Optional[str], region: str, credentials: Credentials, verify: object,
                 connect_timeout: float, read_timeout: float, max_attempts: int):
        self.endpoint_url = endpoint_url
        self.region = region
        self.credentials = credentials
        self.verify = verify
        self.connect_timeout = connect_timeout
        self.read_timeout = read_timeout
        self.max_attempts = max(1, int(max_attempts))
        self._local = threading.local()
        self._ssl_context = None
        self._bucket_regions: Dict[str, str] = {}  # buckets found in another region than `region`

    # -- operations -------------------------------------------------------------------------------------------

    def get_object(self, bucket: str, key: str, byte_range: Optional[str] = None,
                   if_match: Optional[str] = None) -> Response:
        headers = {}
        if byte_range is not None:
            headers["range"] = byte_range
        if if_match is not None:
            headers["if-match"] = if_match
        return self.request("GetObject", "GET", bucket, key, [], headers)

    def head_object(self, bucket: str, key: str) -> Response:
        return self.request("HeadObject", "HEAD", bucket, key, [], {})

    def list_pages(self, bucket: str, prefix: str, delimiter: str) -> Iterator[Tuple[List[str], List[str]]]:
        """ListObjectsV2 page by page: (common prefixes, keys) of each page."""
        token = None
        while True:
            query = [("list-type", "2"), ("prefix", prefix), ("delimiter", delimiter), ("encoding-type", "url")]
            if token:
                query.append(("continuation-token", token))
            root = parse_xml(self.request("ListObjectsV2", "GET", bucket, "", query, {}).body)
            prefixes = [unquote(p.findtext("Prefix") or "") for p in root.findall("CommonPrefixes")]
            keys = [unquote(c.findtext("Key") or "") for c in root.findall("Contents")]
            yield prefixes, keys
            token = root.findtext("NextContinuationToken")
            if (root.findtext("IsTruncated") or "").lower() != "true" or not token:
                return

    # -- transport --------------------------------------------------------------------------------------------

    def _target(self, bucket: str, key: str, region: str) -> Tuple[str, str, str]:
        """(scheme, host[:port], URI-encoded path) of an object or bucket request."""
        encoded_key = quote(key, safe="/~")
        if self.endpoint_url:
            url = urlsplit(self.endpoint_url)
            host = url.netloc  # as http.client sends it in Host: without the scheme's default port
            host = host[:-len(":443")] if url.scheme == "https" and host.endswith(":443") else host
            host = host[:-len(":80")] if url.scheme == "http" and host.endswith(":80") else host
            return url.scheme, host, "%s/%s" % (url.path.rstrip("/"), bucket) + ("/" + encoded_key if key else "")
        host = "%s.s3.amazonaws.com" % bucket if region == "us-east-1" else "%s.s3.%s.amazonaws.com" % (bucket, region)
        return "https", host, "/" + encoded_key

    def request(self, operation: str, method: str, bucket: str, key: str, query: List[Tuple[str, str]],
                headers: Dict[str, str]) -> Response:
        """One operation with botocore's standard retries: transport errors, 5xx, 429 and throttling codes are
        retried up to `max_attempts` in all, waiting a random fraction of 2^attempt seconds (at most 20 s)."""
        params = {"Bucket": bucket, "Key": key, **{name.title().replace("-", ""): v for name, v in headers.items()},
                  **{name.title().replace("-", ""): v for name, v in query}}
        notify("before", operation, params)
        try:
            return self._request(operation, method, bucket, key, query, headers)
        finally:
            notify("after", operation, params)

    def _request(self, operation: str, method: str, bucket: str, key: str, query: List[Tuple[str, str]],
                 headers: Dict[str, str]) -> Response:
        import http.client

        attempt = 0
        while True:
            attempt += 1
            region = self._bucket_regions.get(bucket, self.region)
            scheme, host, path = self._target(bucket, key, region)
            target = path + ("?" + "&".join("%s=%s" % (quote(k, safe="~"), quote(v, safe="~")) for k, v in query)
                             if query else "")
            signed = dict(headers)
            signed.update(authorization_headers(self.credentials, region, method, host, path, query, headers))
            try:
                response = self._send(scheme, host, method, target, signed)
            except (OSError, http.client.HTTPException) as exc:
                if attempt >= self.max_attempts:
                    raise S3TransportError("%s %s://%s%s failed: %s: %s" % (
                        operation, scheme, host, path, type(exc).__name__, exc)) from None
            else:
                if response.status < 300:
                    return response
                code, message = _error_details(response)
                moved_to = _bucket_region(response)
                if moved_to and moved_to != region and bucket not in self._bucket_regions:
                    # As botocore's region redirector: the bucket lives in another region than the configured
                    # one; remember it and send the request there, without counting an attempt.
                    self._bucket_regions[bucket] = moved_to
                    attempt -= 1
                    continue
                retry = response.status in _RETRY_STATUS or code in _RETRY_CODES
                if not retry or attempt >= self.max_attempts:
                    raise S3ResponseError(response.status, code, "An error occurred (%s) when calling the %s "
                                          "operation (attempts: %d): %s" % (code or response.status, operation,
                                                                            attempt, message))
            time.sleep(random.random() * min(2 ** (attempt - 1), _MAX_BACKOFF))

    def _send(self, scheme: str, host: str, method: str, target: str, headers: Dict[str, str]) -> Response:
        """One HTTP exchange on this thread's connection to `host`. A kept-alive connection the server closed
        while idle (S3 does after a few seconds) fails at once; the request then goes out again on a new one,
        not counted as an attempt (GET and HEAD are idempotent)."""
        import http.client

        connections = getattr(self._local, "connections", None)
        if connections is None:
            connections = self._local.connections = {}
        connection = connections.get((scheme, host))
        if connection is None:
            connection = connections[(scheme, host)] = self._connect(scheme, host)
        while True:
            reused = connection.sock is not None
            try:
                if not reused:
                    connection.connect()
                    connection.sock.settimeout(self.read_timeout)
                connection.request(method, target, headers=headers)
                raw = connection.getresponse()
                body = raw.read()
            except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError):
                connection.close()
                if reused:
                    continue
                raise
            except BaseException:
                connection.close()  # a new connection for the next attempt
                raise
            if raw.will_close:
                connection.close()
            return Response(raw.status, {k.lower(): v for k, v in raw.getheaders()}, body)

    def _connect(self, scheme: str, host: str) -> http.client.HTTPConnection:
        import http.client

        if scheme == "http":
            return http.client.HTTPConnection(host, timeout=self.connect_timeout)
        return http.client.HTTPSConnection(host, timeout=self.connect_timeout, context=self._context())

    def _context(self) -> object:
        """TLS as botocore sets it up: `verify` False skips verification, a string is a CA bundle; otherwise
        certifi's bundle if installed, else botocore's own."""
        if self._ssl_context is None:
            import ssl

            if self.verify is False:
                context = ssl.create_default_context()
                context.check_hostname = False
                context.verify_mode = ssl.CERT_NONE
            else:
                context = ssl.create_default_context(cafile=self.verify if isinstance(self.verify, str)
                                                     else _default_ca_bundle())
            self._ssl_context = context
        return self._ssl_context


def _default_ca_bundle() -> Optional[str]:
    try:
        from certifi import where
    except ImportError:
        import importlib.util
        import os

        spec = importlib.util.find_spec("botocore")
        if spec is None or spec.origin is None:
            return None
        return os.path.join(os.path.dirname(spec.origin), "cacert.pem")
    return where()
