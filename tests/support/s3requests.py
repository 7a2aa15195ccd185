"""What a client asks an S3 server, seen on the wire: `RequestLog`, an HTTP proxy on 127.0.0.1 in front of a server
that holds every request `delay` seconds (a server's time to first byte, so that requests made together overlap)
and records each one's start and end times and headers; and `clone_runs`, which makes many runs of one real S3 run
made by Metaflow (its metadata and attempt files copied under new run ids, each with its own blob for one
artifact), for loops over runs without running Metaflow that many times."""
from __future__ import annotations

import json
import pickle
import shutil
import socket
import threading
import time
import zlib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Dict, List, Optional, Sequence, Tuple

from tests.support.s3server import BUCKET, S3_PREFIX, MotoServer, accept_connections


@dataclass
class Request:
    method: str
    path: str
    headers: Dict[str, str]
    started: float
    ended: float = 0.0


def _read_head(stream: BinaryIO) -> Optional[bytes]:
    head = b""
    while True:
        line = stream.readline()
        if not line:
            return None
        head += line
        if line in (b"\r\n", b"\n"):
            return head


def _headers(head: bytes) -> Dict[str, str]:
    fields = {}
    for line in head.decode("latin-1").split("\r\n")[1:]:
        name, sep, value = line.partition(":")
        if sep:
            fields[name.strip().lower()] = value.strip()
    return fields


def _read_body(stream: BinaryIO, headers: Dict[str, str]) -> bytes:
    if headers.get("transfer-encoding", "").lower() == "chunked":
        body = b""
        while True:
            size_line = stream.readline()
            body += size_line
            size = int(size_line.split(b";")[0], 16)
            body += stream.read(size + 2)
            if size == 0:
                return body
    return stream.read(int(headers.get("content-length", "0")))


class RequestLog:
    """An HTTP/1.1 proxy in front of `target_port` recording every request (see the module docstring)."""

    def __init__(self, target_port: int, delay: float = 0.03):
        self.target_port, self.delay = target_port, delay
        self.requests: List[Request] = []
        self._lock = threading.Lock()
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.settimeout(0.1)
        self.port = self._listener.getsockname()[1]
        self.endpoint_url = "http://127.0.0.1:%d" % self.port
        self._closed = threading.Event()
        self._accepter = threading.Thread(target=accept_connections, args=(self._listener, self._closed, self._serve),
                                          name="request-log", daemon=True)
        self._accepter.start()

    def close(self) -> None:
        self._closed.set()
        self._accepter.join(timeout=5)
        self._listener.close()

    def clear(self) -> None:
        with self._lock:
            self.requests = []

    def waves(self) -> int:
        """How many requests started after every request started before them had ended: the round trips made one
        after the other."""
        waves, busy_until = 0, float("-inf")
        for request in sorted(self.requests, key=lambda r: r.started):
            if request.started >= busy_until:
                waves += 1
            busy_until = max(busy_until, request.ended)
        return waves

    def _serve(self, conn: socket.socket) -> None:
        upstream = socket.create_connection(("127.0.0.1", self.target_port))
        client_in, server_in = conn.makefile("rb"), upstream.makefile("rb")
        try:
            while True:
                head = _read_head(client_in)
                if head is None:
                    return
                method, path = head.split(b" ", 2)[:2]
                headers = _headers(head)
                request = Request(method.decode(), path.decode(), headers, time.monotonic())
                body = _read_body(client_in, headers)
                time.sleep(self.delay)
                upstream.sendall(head + body)
                answer = _read_head(server_in)
                if answer is None:
                    return
                status = int(answer.split(b" ", 2)[1])
                no_body = method == b"HEAD" or status in (204, 304) or status < 200
                answer += b"" if no_body else _read_body(server_in, _headers(answer))
                conn.sendall(answer)
                request.ended = time.monotonic()
                with self._lock:
                    self.requests.append(request)
        except OSError:
            return
        finally:
            for closing in (client_in, server_in, conn, upstream):
                closing.close()


def _blob(value: object) -> Tuple[str, bytes, int]:
    """(sha, stored bytes, serialized length) of a value as Metaflow stores an artifact: a gzipped pickle named by
    the sha1 of the pickle."""
    import hashlib

    data = pickle.dumps(value, protocol=4)
    packer = zlib.compressobj(3, zlib.DEFLATED, 31)
    return hashlib.sha1(data).hexdigest(), packer.compress(data) + packer.flush(), len(data)


def clone_runs(server: MotoServer, source_parent: Path, flow: str, run_id: str, artifact: str,
               values: Sequence[object], dest_parent: Path) -> List[str]:
    """Copies of run `flow/run_id` of the S3 datastore `source_parent` (local metadata there, data under
    `s3://BUCKET/S3_PREFIX`), one per value, each holding its value as `artifact` of every task that has it; the
    copies' local metadata go to `dest_parent/.metaflow` and their attempt files and blobs to the same bucket
    prefix. Each copy is a millisecond newer than the one before; returns their run ids, oldest first."""
    s3 = server.client()
    source = source_parent / ".metaflow" / flow
    dest = dest_parent / ".metaflow" / flow
    (dest / "_meta").mkdir(parents=True, exist_ok=True)
    shutil.copy(source / "_meta" / "_self.json", dest / "_meta" / "_self.json")
    prefix = "%s/%s/%s/" % (S3_PREFIX, flow, run_id)
    pages = s3.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=prefix)
    objects = {obj["Key"][len(prefix):]: s3.get_object(Bucket=BUCKET, Key=obj["Key"])
               for page in pages for obj in page.get("Contents", ())}
    objects = {key: (answer["Body"].read(), answer["Metadata"]) for key, answer in objects.items()}
    run_record = json.loads((source / run_id / "_meta" / "_self.json").read_text())
    clone_ids, puts = [], []
    for number, value in enumerate(values):
        clone = str(int(run_id) + 10**9 + number)
        clone_ids.append(clone)
        sha, stored, length = _blob(value)
        puts.append(("%s/%s/data/%s/%s" % (S3_PREFIX, flow, sha[:2], sha), stored,
                     {"metaflow-user-attributes": '{"cas_raw": false, "cas_version": 1}'}))
        for path in (source / run_id).rglob("*"):
            if path.is_file():
                target = dest / clone / path.relative_to(source / run_id)
                target.parent.mkdir(parents=True, exist_ok=True)
                text = path.read_text().replace(run_id, clone)
                if path.name.endswith("_artifact_%s.json" % artifact):
                    text = json.dumps(dict(json.loads(text), sha=sha))
                target.write_text(text)
        record = dict(run_record, run_number=clone, ts_epoch=run_record["ts_epoch"] + number + 1)
        (dest / clone / "_meta" / "_self.json").write_text(json.dumps(record))
        for key, (body, metadata) in objects.items():
            if key.endswith(".data.json"):
                index = json.loads(body)
                if artifact in index["objects"]:
                    index["objects"][artifact] = sha
                    index["info"][artifact]["size"] = length
                body = json.dumps(index).encode()
            elif key.endswith((".json", ".log")):
                body = body.replace(run_id.encode(), clone.encode())
            puts.append(("%s/%s/%s/%s" % (S3_PREFIX, flow, clone, key), body, metadata))

    def put(item: Tuple[str, bytes, dict]) -> None:
        s3.put_object(Bucket=BUCKET, Key=item[0], Body=item[1], Metadata=item[2])

    with ThreadPoolExecutor(16) as pool:
        list(pool.map(put, puts))
    return clone_ids
