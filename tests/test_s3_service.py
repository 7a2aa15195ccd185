"""The metadata service with an S3 datastore (the production setup): the recorded metaflow-service 2.5.1 responses
replayed with their datastore root pointing at a copy of the recorded datastore in S3, walked by our client and
compared with the document Metaflow's client produced against the real service (tests/test_service_walk.py does
the same with the datastore on local disk). The replayed answers name only the S3 root, so every artifact, log
and attempt file of the walk was read from S3.

The recorded `ds-type` metadata still says `local`: our client picks the backend from the form of the root, while
Metaflow's client would go by `ds-type`, which is why only ours walks this relocated copy."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.support.replay_server import DATASTORE_DIR, EXPECTED_WALK, ReplayServer
from tests.support.s3server import BUCKET, MotoServer, s3_environment, s3_server  # noqa: F401
from tests.support.service_walk import run_walk
from tests.test_service_walk import differences, with_foreach_stack_as_list

PREFIX = "service-fixture"


@pytest.fixture(scope="module")
def service_s3_root(s3_server: MotoServer) -> str:  # noqa: F811
    """The recorded datastore copied into the test bucket; its `s3://` root."""
    client = s3_server.client()
    for path in Path(DATASTORE_DIR).rglob("*"):
        if path.is_file():
            key = "%s/%s" % (PREFIX, path.relative_to(DATASTORE_DIR).as_posix())
            client.put_object(Bucket=BUCKET, Key=key, Body=path.read_bytes())
    return "s3://%s/%s" % (BUCKET, PREFIX)


def test_our_client_over_the_service_and_s3_matches_metaflows(
    service_s3_root: str, s3_server: MotoServer, monkeypatch: pytest.MonkeyPatch  # noqa: F811
) -> None:
    # The walk's environment keeps no METAFLOW_* settings, so the endpoint goes through boto3's own variable.
    for name, value in s3_environment(s3_server.endpoint_url).items():
        if not name.startswith("METAFLOW_"):
            monkeypatch.setenv(name, value)
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", s3_server.endpoint_url)
    with open(EXPECTED_WALK, encoding="utf-8") as f:
        expected = json.load(f)
    with ReplayServer(datastore_root=service_s3_root) as server:
        walk = run_walk("client", server.url, service_s3_root)
    found = differences(with_foreach_stack_as_list(expected), walk)
    assert not found, "%d differences from expected-client.json:\n%s" % (len(found), "\n".join(found))
