"""The S3 client without botocore (client/storage/s3_http.py) for static credentials and a known endpoint, and
botocore for every other configuration: which one a configuration gets, that the fast one imports no botocore,
that moto (verifying signatures, IAM on) accepts its SigV4 signatures for awkward keys and session tokens, and
that a configuration it does not know (a credential process) still reads through botocore."""
from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import textwrap
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Dict, Iterator, List

import pytest

from client.storage import s3_http
from client.storage.s3 import S3Storage
from client.storage.s3_profile import fast_settings
from tests.support.s3requests import RequestLog
from tests.support.s3server import BUCKET, CREDENTIALS, S3_PREFIX, MotoServer, s3_environment, s3_server  # noqa: F401

REPO = Path(__file__).resolve().parent.parent
PARAMS = {"config": {"connect_timeout": 5, "read_timeout": 10, "retries": {"max_attempts": 2, "mode": "standard"},
                     "max_pool_connections": 36}}


def files(tmp_path: Path, config: str = "", credentials: str = "") -> Dict[str, str]:
    (tmp_path / "config").write_text(config)
    (tmp_path / "credentials").write_text(credentials)
    return {"AWS_CONFIG_FILE": str(tmp_path / "config"), "AWS_SHARED_CREDENTIALS_FILE": str(tmp_path / "credentials")}


def test_static_configurations_get_the_fast_client(tmp_path: Path) -> None:
    env = dict(files(tmp_path), AWS_ACCESS_KEY_ID="AKID", AWS_SECRET_ACCESS_KEY="s", AWS_SESSION_TOKEN="t")
    fast = fast_settings("bucket", dict(PARAMS, endpoint_url="http://127.0.0.1:9000"), env)
    assert fast.credentials == s3_http.Credentials("AKID", "s", "t")
    assert (fast.endpoint_url, fast.region, fast.max_attempts) == ("http://127.0.0.1:9000", "us-east-1", 3)

    env = dict(files(tmp_path, "[profile p]\nregion = eu-west-1\n",
                     "[default]\naws_access_key_id = D\naws_secret_access_key = d\n"
                     "[p]\naws_access_key_id = P\naws_secret_access_key = p\n"), AWS_PROFILE="p")
    fast = fast_settings("bucket", PARAMS, env)
    assert (fast.credentials.access_key, fast.region, fast.endpoint_url) == ("P", "eu-west-1", None)
    # The environment's keys come first in botocore's chain, also with AWS_PROFILE set.
    fast = fast_settings("bucket", PARAMS, dict(env, AWS_ACCESS_KEY_ID="E", AWS_SECRET_ACCESS_KEY="e"))
    assert fast.credentials.access_key == "E"


@pytest.mark.parametrize("case", [
    "credential_process", "role_arn", "sso", "partial_env", "unknown_env", "no_region", "dotted_bucket",
    "directory_bucket", "client_params", "adaptive_retries", "missing_profile", "no_credentials",
])
def test_other_configurations_go_to_botocore(case: str, tmp_path: Path) -> None:
    keys = {"AWS_ACCESS_KEY_ID": "AKID", "AWS_SECRET_ACCESS_KEY": "s", "AWS_DEFAULT_REGION": "us-east-1"}
    bucket, params, env = "bucket", dict(PARAMS), dict(files(tmp_path), **keys)
    if case == "credential_process":
        env = files(tmp_path, "[default]\ncredential_process = /bin/creds\nregion = us-east-1\n")
    elif case == "role_arn":
        env = dict(files(tmp_path, "[profile r]\nrole_arn = arn:aws:iam::1:role/r\nsource_profile = default\n",
                         "[default]\naws_access_key_id = D\naws_secret_access_key = d\n"), AWS_PROFILE="r",
                   AWS_DEFAULT_REGION="us-east-1")
    elif case == "sso":
        env = dict(files(tmp_path, "[default]\nsso_session = s\nregion = us-east-1\n"))
    elif case == "partial_env":
        del env["AWS_SECRET_ACCESS_KEY"]
    elif case == "unknown_env":
        env["AWS_ENDPOINT_URL_S3"] = "http://127.0.0.1:1"
    elif case == "no_region":
        del env["AWS_DEFAULT_REGION"]
    elif case == "dotted_bucket":
        bucket = "my.bucket"
    elif case == "directory_bucket":
        bucket = "data--usw2-az1--x-s3"
    elif case == "client_params":
        params["aws_access_key_id"] = "AKID"
    elif case == "adaptive_retries":
        params["config"] = dict(params["config"], retries={"mode": "adaptive"})
    elif case == "missing_profile":
        env["AWS_PROFILE"] = "nowhere"
    elif case == "no_credentials":
        env = dict(files(tmp_path), AWS_DEFAULT_REGION="us-east-1")
    assert fast_settings(bucket, params, env) is None


def test_a_response_with_a_document_type_is_refused() -> None:
    bomb = b'<?xml version="1.0"?><!DOCTYPE x [<!ENTITY a "aaaa">]><Error><Code>&a;</Code></Error>'
    with pytest.raises(s3_http.S3TransportError):
        s3_http.parse_xml(bomb)
    with pytest.raises(s3_http.S3TransportError):
        s3_http.parse_xml(b"<Error><Code>cut off")
    assert s3_http.parse_xml(b"<Error><Code>NoSuchKey</Code></Error>").findtext("Code") == "NoSuchKey"


def test_the_signed_host_is_the_one_http_client_sends() -> None:
    """http.client leaves the scheme's default port out of Host:, so the signature must too."""
    for endpoint, host, path in (("https://minio.example:443/base/", "minio.example", "/base/b/k%20y"),
                                 ("http://h:80", "h", "/b/k%20y"),
                                 ("http://127.0.0.1:9000", "127.0.0.1:9000", "/b/k%20y")):
        client = s3_http.S3HttpClient(endpoint, "us-east-1", s3_http.Credentials("a", "s"), True, 1, 1, 1)
        assert client._target("b", "k y", "us-east-1")[1:] == (host, path)


def run_reader(script: str, env: Dict[str, str], tmp_path: Path) -> dict:
    full = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "METAFLOW_", "MFFS_"))}
    full.update(env, MFFS_CACHE_DIR=str(tmp_path / "cache"), PYTHONPATH=str(REPO))
    done = subprocess.run([sys.executable, "-c", textwrap.dedent(script)], env=full, cwd=str(tmp_path),
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout)


READ_AND_REPORT = """
import json, sys
from client.storage.s3 import S3Storage
storage = S3Storage("s3://%s/%s")
data = storage.read("fastpath/object").decode()
print(json.dumps({"data": data, "listed": storage.list("fastpath"), "client": type(storage._client).__name__,
                  "botocore": sorted(m for m in sys.modules if m.split(".")[0] in ("botocore", "boto3", "urllib3"))}))
""" % (BUCKET, S3_PREFIX)


def test_the_fast_path_imports_no_botocore(s3_server: MotoServer, tmp_path: Path) -> None:  # noqa: F811
    s3_server.client().put_object(Bucket=BUCKET, Key=S3_PREFIX + "/fastpath/object", Body=b"fast")
    found = run_reader(READ_AND_REPORT, s3_environment(s3_server.endpoint_url), tmp_path)
    assert found == {"data": "fast", "listed": ["object"], "client": "S3HttpClient", "botocore": []}


def test_a_credential_process_still_reads_through_botocore(s3_server: MotoServer, tmp_path: Path) -> None:  # noqa: F811
    s3_server.client().put_object(Bucket=BUCKET, Key=S3_PREFIX + "/fastpath/object", Body=b"fast")
    process = tmp_path / "creds.py"
    process.write_text("import json\nprint(json.dumps({'Version': 1, 'AccessKeyId': 'AKIDPROCESS000000001', "
                       "'SecretAccessKey': 'process-secret'}))\n")
    env = dict(s3_environment(s3_server.endpoint_url),
               **files(tmp_path, "[default]\ncredential_process = %s %s\n" % (sys.executable, process)))
    for name in CREDENTIALS:
        del env[name]
    log = RequestLog(s3_server.port, delay=0.0)
    try:
        env["METAFLOW_S3_ENDPOINT_URL"] = log.endpoint_url
        found = run_reader(READ_AND_REPORT, env, tmp_path)
    finally:
        log.close()
    assert found["data"] == "fast" and found["client"] == "_BotocoreClient" and "botocore" in found["botocore"]
    assert {r.headers.get("authorization", "").partition("Credential=")[2].partition("/")[0]
            for r in log.requests} == {"AKIDPROCESS000000001"}


AWKWARD_KEYS = ["with space/and+plus", "unicodé/ключ/鍵", "special/!$&'()*,;=:@~%25[]{}^`|", "a/b c/d%2Fe",
                "tilde~/under_score/dash-dot.", "question?hash#/x"]


def test_moto_verifying_signatures_accepts_awkward_keys_and_session_tokens(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """moto with IAM on checks each request's signature against the secret: a wrongly encoded canonical request
    gives SignatureDoesNotMatch (a PermissionError here)."""
    server = MotoServer({"INITIAL_NO_AUTH_ACTION_COUNT": "%d" % (len(AWKWARD_KEYS) + 4)})
    try:
        admin = server.client()
        admin.create_bucket(Bucket=BUCKET)
        for key in AWKWARD_KEYS:
            admin.put_object(Bucket=BUCKET, Key="p/" + key, Body=key.encode(),
                             Metadata={"metaflow-user-attributes": json.dumps({"k": key})})
        iam = server.client("iam")
        policy = json.dumps({"Version": "2012-10-17", "Statement": [
            {"Effect": "Allow", "Action": ["s3:*", "sts:AssumeRole", "iam:*"], "Resource": "*"}]})
        iam.create_user(UserName="reader")
        iam.put_user_policy(UserName="reader", PolicyName="all", PolicyDocument=policy)
        user = iam.create_access_key(UserName="reader")["AccessKey"]  # the last unauthenticated request
        role = server.client("iam", **_keys(user)).create_role(
            RoleName="reader", AssumeRolePolicyDocument=json.dumps({"Version": "2012-10-17", "Statement": [
                {"Effect": "Allow", "Principal": {"AWS": "*"}, "Action": "sts:AssumeRole"}]}))["Role"]
        server.client("iam", **_keys(user)).put_role_policy(RoleName="reader", PolicyName="all", PolicyDocument=policy)
        session = server.client("sts", **_keys(user)).assume_role(
            RoleArn=role["Arn"], RoleSessionName="mffs")["Credentials"]
        monkeypatch.setenv("METAFLOW_S3_ENDPOINT_URL", server.endpoint_url)
        monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
        for keys in (user, session):
            monkeypatch.setenv("AWS_ACCESS_KEY_ID", keys["AccessKeyId"])
            monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", keys["SecretAccessKey"])
            if "SessionToken" in keys:
                monkeypatch.setenv("AWS_SESSION_TOKEN", keys["SessionToken"])
            storage = S3Storage("s3://%s/p" % BUCKET)
            assert isinstance(storage._client, s3_http.S3HttpClient)
            assert storage._client.credentials.token == keys.get("SessionToken")
            for key in AWKWARD_KEYS:
                assert storage.read(key) == key.encode()
                assert storage.user_attributes(key) == {"k": key}
                assert storage.size(key) == len(key.encode())
            listed = {top: storage.list(top) for top in {key.split("/")[0] for key in AWKWARD_KEYS}}
            assert listed == {top: sorted(k.split("/", 1)[1].split("/")[0] for k in AWKWARD_KEYS
                                          if k.split("/")[0] == top) for top in listed}
        monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "wrong")
        with pytest.raises(PermissionError, match="SignatureDoesNotMatch"):
            S3Storage("s3://%s/p" % BUCKET).read(AWKWARD_KEYS[0])
    finally:
        server.stop()


def _keys(access_key: dict) -> Dict[str, str]:
    return {"aws_access_key_id": access_key["AccessKeyId"], "aws_secret_access_key": access_key["SecretAccessKey"]}


class RegionalBucket(BaseHTTPRequestHandler):
    """A stand-in S3 whose bucket lives in eu-west-1: requests signed for another region get S3's 301 with the
    bucket's region, as AWS answers them."""

    scopes: List[str] = []

    def do_GET(self) -> None:
        scope = self.headers.get("authorization", "").partition("Credential=")[2].split("/")[2]
        self.scopes.append(scope)
        status, body = (200, b"from eu-west-1") if scope == "eu-west-1" else (
            301, b"<Error><Code>PermanentRedirect</Code><Message>elsewhere</Message></Error>")
        self.send_response(status)
        self.send_header("x-amz-bucket-region", "eu-west-1")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@contextlib.contextmanager
def stand_in_s3(handler: type, monkeypatch: pytest.MonkeyPatch, **settings: str) -> Iterator[None]:
    """A stand-in S3 server on 127.0.0.1 answering with `handler`, this process's S3 settings pointing at it."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        for name, value in dict(CREDENTIALS, AWS_DEFAULT_REGION="us-east-1", AWS_CONFIG_FILE=os.devnull,
                                AWS_SHARED_CREDENTIALS_FILE=os.devnull, **settings,
                                METAFLOW_S3_ENDPOINT_URL="http://127.0.0.1:%d" % server.server_address[1]).items():
            monkeypatch.setenv(name, value)
        yield
    finally:
        server.shutdown()
        server.server_close()


def test_a_bucket_in_another_region_is_followed_there(monkeypatch: pytest.MonkeyPatch) -> None:
    with stand_in_s3(RegionalBucket, monkeypatch):
        storage = S3Storage("s3://regional/p")
        assert isinstance(storage._client, s3_http.S3HttpClient)
        assert storage.read("a") == b"from eu-west-1"
        assert storage.read("b") == b"from eu-west-1"
        assert RegionalBucket.scopes == ["us-east-1", "eu-west-1", "eu-west-1"]


class ClosesWhenIdle(BaseHTTPRequestHandler):
    """A stand-in S3 that answers with HTTP/1.1 keep-alive, then closes the connection (as S3 does to an idle
    one) without saying so."""

    protocol_version = "HTTP/1.1"
    requests = 0

    def do_GET(self) -> None:
        type(self).requests += 1
        body = b"object %d" % type(self).requests
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
        self.close_connection = True

    def log_message(self, *args: object) -> None:
        pass


def test_a_connection_the_server_closed_is_replaced_without_using_an_attempt(monkeypatch: pytest.MonkeyPatch) -> None:
    with stand_in_s3(ClosesWhenIdle, monkeypatch, MFFS_S3_MAX_ATTEMPTS="0"):
        storage = S3Storage("s3://idle/p")
        assert storage._client.max_attempts == 1
        assert [storage.read(key) for key in "abc"] == [b"object 1", b"object 2", b"object 3"]
