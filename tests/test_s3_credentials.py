"""The S3 client takes its credentials from the standard AWS chain: the environment, a profile of the shared
credentials file (AWS_PROFILE), an instance role (the EC2 instance metadata service, here a stand-in on 127.0.0.1).
Each case reads an object in a fresh process through a proxy that records the requests: the key id the requests
were signed with (their Authorization header) is the one the chain should have found."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Dict, Iterator

import pytest

from tests.support.s3requests import RequestLog
from tests.support.s3server import BUCKET, CREDENTIALS, S3_PREFIX, MotoServer, s3_environment, s3_server  # noqa: F401

KEY = "credentials-test/object"
READ = """
from client.storage.s3 import S3Storage
print(S3Storage("s3://%s/%s").read("%s").decode())
""" % (BUCKET, S3_PREFIX, KEY)
ROLE_KEY_ID = "AKIDINSTANCEROLE0001"


@pytest.fixture
def request_log(s3_server: MotoServer) -> Iterator[RequestLog]:  # noqa: F811
    s3_server.client().put_object(Bucket=BUCKET, Key="%s/%s" % (S3_PREFIX, KEY), Body=b"read with credentials")
    log = RequestLog(s3_server.port, delay=0.0)
    try:
        yield log
    finally:
        log.close()


def read_with(env_changes: Dict[str, str], log: RequestLog, tmp_path: Path) -> str:
    """Read the object in a fresh process with the test environment, without its keys, then `env_changes`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "METAFLOW_", "MFFS_"))}
    env.update(s3_environment(log.endpoint_url), MFFS_CACHE_DIR=str(tmp_path / "cache"),
               PYTHONPATH=str(Path(__file__).resolve().parent.parent))
    for name in CREDENTIALS:
        del env[name]
    env.update(env_changes)
    done = subprocess.run([sys.executable, "-c", READ], env=env, cwd=str(tmp_path), capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout.strip()


def signing_key_ids(log: RequestLog) -> set:
    return {r.headers.get("authorization", "").partition("Credential=")[2].partition("/")[0] for r in log.requests}


def test_keys_from_the_environment(request_log: RequestLog, tmp_path: Path) -> None:
    keys = {"AWS_ACCESS_KEY_ID": "AKIDENVIRONMENT00001", "AWS_SECRET_ACCESS_KEY": "environment-secret"}
    assert read_with(keys, request_log, tmp_path) == "read with credentials"
    assert signing_key_ids(request_log) == {"AKIDENVIRONMENT00001"}


def test_keys_from_a_profile_of_the_shared_credentials_file(request_log: RequestLog, tmp_path: Path) -> None:
    credentials = tmp_path / "credentials"
    credentials.write_text("[default]\naws_access_key_id = AKIDDEFAULTPROFILE01\naws_secret_access_key = d\n\n"
                           "[mffs]\naws_access_key_id = AKIDNAMEDPROFILE0001\naws_secret_access_key = n\n")
    profile = {"AWS_SHARED_CREDENTIALS_FILE": str(credentials), "AWS_PROFILE": "mffs"}
    assert read_with(profile, request_log, tmp_path) == "read with credentials"
    assert signing_key_ids(request_log) == {"AKIDNAMEDPROFILE0001"}


class InstanceMetadata(BaseHTTPRequestHandler):
    """The parts of EC2's instance metadata service (IMDSv2) botocore asks for an instance role's credentials."""

    ROLE = "mffs-reader"

    def do_PUT(self) -> None:
        self._answer("a-session-token" if self.path == "/latest/api/token" else None)

    def do_GET(self) -> None:
        base = "/latest/meta-data/iam/security-credentials/"
        if self.path == base:
            self._answer(self.ROLE)
        elif self.path == base + self.ROLE:
            self._answer(json.dumps({"Code": "Success", "AccessKeyId": ROLE_KEY_ID, "SecretAccessKey": "role-secret",
                                     "Token": "role-session-token", "Expiration": "2099-01-01T00:00:00Z"}))
        else:
            self._answer(None)

    def _answer(self, body) -> None:
        self.send_response(200 if body is not None else 404)
        data = (body or "").encode()
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args: object) -> None:
        pass


def test_keys_of_an_instance_role(request_log: RequestLog, tmp_path: Path) -> None:
    server = ThreadingHTTPServer(("127.0.0.1", 0), InstanceMetadata)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        endpoint = {"AWS_EC2_METADATA_SERVICE_ENDPOINT": "http://127.0.0.1:%d/" % server.server_address[1]}
        assert read_with(endpoint, request_log, tmp_path) == "read with credentials"
    finally:
        server.shutdown()
        server.server_close()
    assert signing_key_ids(request_log) == {ROLE_KEY_ID}
    assert {r.headers.get("x-amz-security-token") for r in request_log.requests} == {"role-session-token"}
