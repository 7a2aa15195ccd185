"""The metadata-service provider against the replay of real metaflow-service 2.5.1 answers: records, routes,
not-found, attempts, filtered_tasks, and faults (down, 503, 500, slow), auth headers, pooling."""
from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest

from client.exceptions import MetaflowBackendError, MetaflowInternalError
from client.metadata.service import ServiceMetadataProvider, parse_postgres_array
from tests.support.replay_server import (  # noqa: F401
    DATASTORE_DIR,
    DROP,
    ReplayServer,
    replay_server_session,
    replay_service,
    service_env,
)
from tests.support.service_walk import REPO_ROOT


def recorded(server: ReplayServer, path: str):
    """The JSON body the real service gave for GET `path`."""
    status, _, body = server.answers[("GET", path)]
    assert status == 200
    return json.loads(body)


def provider(server: ReplayServer, **kwargs) -> ServiceMetadataProvider:
    return ServiceMetadataProvider(server.url, **kwargs)


# -- records -------------------------------------------------------------------------------------------------------
def test_flow_and_run_records(service_env, replay_service):
    p = provider(replay_service)
    raw_flows = recorded(replay_service, "/flows")
    assert p.flows() == [{"flow_id": r["flow_id"], "ts_epoch": r["ts_epoch"]} for r in raw_flows]
    flow_ts = recorded(replay_service, "/flows/RecTeamFlow")["ts_epoch"]
    assert p.flow("RecTeamFlow") == {"flow_id": "RecTeamFlow", "ts_epoch": flow_ts}

    raw_runs = recorded(replay_service, "/flows/RecTeamFlow/runs")
    runs = p.runs("RecTeamFlow")
    assert [r["run_number"] for r in runs] == [str(r["run_number"]) for r in raw_runs]
    for record, raw in zip(runs, raw_runs):
        # The service answers run numbers as ints; records always carry str ids.
        assert isinstance(raw["run_number"], int) and isinstance(record["run_number"], str)
        assert set(record) == {"flow_id", "run_number", "user_name", "tags", "system_tags", "ts_epoch"}
        assert (record["user_name"], record["tags"], record["system_tags"], record["ts_epoch"]) == (
            raw["user_name"], raw["tags"], raw["system_tags"], raw["ts_epoch"])
    run_7 = p.run("RecTeamFlow", "7")
    assert run_7 == next(r for r in runs if r["run_number"] == "7")
    assert "shared" in run_7["tags"] and "user:bob" in run_7["system_tags"]


def test_step_task_and_artifact_records(service_env, replay_service):
    p = provider(replay_service)
    base = "/flows/RecShapesFlow/runs/1"
    steps = p.steps("RecShapesFlow", "1")
    assert [(s["step_name"], s["ts_epoch"]) for s in steps] == [
        (r["step_name"], r["ts_epoch"]) for r in recorded(replay_service, base + "/steps")]
    assert "_parameters" in [s["step_name"] for s in steps]  # hiding it is the object model's business
    raw_step = recorded(replay_service, base + "/steps/inner")
    assert p.step("RecShapesFlow", "1", "inner") == {
        "step_name": "inner", "ts_epoch": raw_step["ts_epoch"], **run_tags(raw_step)}

    tasks = p.tasks("RecShapesFlow", "1", "inner")
    raw_tasks = recorded(replay_service, base + "/steps/inner/tasks")
    assert tasks == [{"task_id": str(r["task_id"]), "ts_epoch": r["ts_epoch"], **run_tags(r)} for r in raw_tasks]
    assert p.task("RecShapesFlow", "1", "inner", tasks[0]["task_id"]) == tasks[0]

    raw = recorded(replay_service, base + "/steps/inner/tasks/10/artifacts/cell")
    assert p.artifact("RecShapesFlow", "1", "inner", "10", "cell") == {
        "name": "cell", "sha": raw["sha"], "content_type": "pickle-v4",
        "location": ":root:" + DATASTORE_DIR, "ds_type": "local", "attempt_id": 0, "ts_epoch": raw["ts_epoch"],
        **run_tags(raw)}


def run_tags(row: dict) -> dict:
    """The run's tags, which the service serves on step, task and artifact rows (and the provider passes on)."""
    assert row["tags"] is not None and row["system_tags"]
    return {"tags": row["tags"], "system_tags": row["system_tags"]}


def test_metadata_events_and_foreach_stack(service_env, replay_service):
    p = provider(replay_service)
    path = "/flows/RecShapesFlow/runs/1/steps/inner/tasks/10/metadata"
    raw_events = recorded(replay_service, path)
    events = p.task_metadata("RecShapesFlow", "1", "inner", "10")
    assert len(events) == len(raw_events)
    for event, raw in zip(events, raw_events):
        assert set(event) == {"field_name", "value", "type", "ts_epoch", "tags"}
        assert (event["field_name"], event["type"], event["ts_epoch"], event["tags"]) == (
            raw["field_name"], raw["type"], raw["ts_epoch"], raw["tags"])
        if raw["field_name"] == "foreach-stack":
            # The service answers the stored list as a PostgreSQL array literal; the local provider has the list.
            assert raw["value"].startswith("{")
            assert event["value"] == raw["value"][1:-1].split(",")
        else:
            assert event["value"] == raw["value"]
    assert any(e["field_name"] == "foreach-stack" for e in events)


@pytest.mark.parametrize(
    "literal, items",
    [
        ("{}", []),
        ("{outer_items=p}", ["outer_items=p"]),
        ("{outer_items=p,inner_items=2}", ["outer_items=p", "inner_items=2"]),
        ('{"x=a,b","y=say \\"hi\\"",z}', ["x=a,b", 'y=say "hi"', "z"]),
        ('{"x=a\\\\b",""}', ["x=a\\b", ""]),
    ],
)
def test_postgres_array_literal(literal, items):
    assert parse_postgres_array(literal) == items


def test_missing_objects(service_env, replay_service):
    p = provider(replay_service)
    assert p.flow("NoSuchFlow") is None
    assert p.runs("NoSuchFlow") == []
    assert p.run("RecShapesFlow", "999") is None
    assert p.steps("NoSuchFlow", "1") == []
    assert p.step("RecCatchFlow", "5", "no_such_step") is None
    assert p.task("RecCatchFlow", "5", "end", "999999") is None
    assert p.artifact("RecCatchFlow", "5", "end", "34", "no_such_artifact") is None
    assert p.artifact("RecCatchFlow", "5", "end", "34", "no_such_artifact", attempt=0) is None
    assert p.task_metadata("NoSuchFlow", "1", "start", "1") == []
    requests_so_far = replay_service.total_requests()
    # Ids that cannot name anything are answered without asking (and cannot walk up the URL).
    assert p.run("RecShapesFlow", "..") is None
    assert p.tasks("RecShapesFlow", "1", "") == []
    assert p.artifact("RecShapesFlow", "1", "end", "19", ".") is None
    assert replay_service.total_requests() == requests_so_far


def test_ids_are_escaped_in_paths(service_env, replay_service):
    p = provider(replay_service)
    assert p.step("RecShapesFlow", "1", "end?x=1") is None
    assert p.task("RecShapesFlow", "1", "end/tasks", "19") is None
    assert ("GET", "/flows/RecShapesFlow/runs/1/steps/end%3Fx%3D1") in replay_service.counts
    assert ("GET", "/flows/RecShapesFlow/runs/1/steps/end%2Ftasks/tasks/19") in replay_service.counts


# -- attempts ------------------------------------------------------------------------------------------------------
def test_artifacts_of_latest_and_explicit_attempts(service_env, replay_service):
    p = provider(replay_service)
    args = ("RecRetryFlow", "2", "flaky", "22")
    latest = p.artifacts(*args)
    assert latest and {a["attempt_id"] for a in latest} == {1}
    first = p.artifacts(*args, attempt=0)
    assert first and {a["attempt_id"] for a in first} == {0}
    assert "result" in {a["name"] for a in latest} and "result" not in {a["name"] for a in first}
    marker = {a["name"]: a["sha"] for a in first}["marker"]
    assert marker != {a["name"]: a["sha"] for a in latest}["marker"]

    assert p.artifact(*args, "result")["attempt_id"] == 1
    assert p.artifact(*args, "result", attempt=0) is None
    assert p.artifact(*args, "marker", attempt=0)["sha"] == marker
    assert p.artifacts(*args, attempt=3) == []
    # The attempt routes need service >= 2.0.6: one /ping tells, once per provider.
    assert replay_service.counts[("GET", "/ping")] == 1
    assert replay_service.counts[("GET", "/flows/RecRetryFlow/runs/2/steps/flaky/tasks/22/attempt/0/artifacts")] == 1


def test_attempt_routes_refused_by_an_old_service(service_env):
    with ReplayServer(version="2.0.5") as server:
        p = provider(server)
        assert p.artifacts("RecRetryFlow", "2", "flaky", "22")  # the plain route works
        with pytest.raises(MetaflowBackendError, match="at least version 2.0.6"):
            p.artifacts("RecRetryFlow", "2", "flaky", "22", attempt=0)
        with pytest.raises(MetaflowBackendError, match="at least version 2.0.6"):
            p.artifact("RecRetryFlow", "2", "flaky", "22", "marker", attempt=0)
        assert not any("/attempt/" in path for _, path in server.counts)


# -- filtered_tasks ------------------------------------------------------------------------------------------------
def test_filtered_tasks_sends_metaflows_anchored_query(service_env, replay_service):
    p = provider(replay_service)
    base = "/flows/RecShapesFlow/runs/1/steps/inner/filtered_tasks"
    query = "?metadata_field_name=foreach-execution-path&pattern=%5E%28%3F%3Aouter%3A0%2C.%2A%29%24"
    ids = p.filtered_tasks("RecShapesFlow", "1", "inner", "foreach-execution-path", "outer:0,.*")
    assert ids == [s.rsplit("/", 1)[-1] for s in recorded(replay_service, base + query)]
    assert ids and all("/" not in i for i in ids)
    assert replay_service.counts[("GET", base + query)] == 1

    everything = p.filtered_tasks("RecShapesFlow", "1", "inner", "foreach-execution-path", ".*")
    inner_tasks = recorded(replay_service, "/flows/RecShapesFlow/runs/1/steps/inner/tasks")
    assert everything == [str(t["task_id"]) for t in inner_tasks]
    assert replay_service.counts[("GET", base)] == 1  # "anything" is sent without a filter


def test_filtered_tasks_on_a_service_without_the_route(service_env):
    with ReplayServer() as server:
        for key in [k for k in server.answers if "/filtered_tasks" in k[1]]:
            del server.answers[key]
        with pytest.raises(MetaflowInternalError, match="2.5.0"):
            provider(server).filtered_tasks("RecShapesFlow", "1", "inner", "foreach-execution-path", "outer:0")


# -- transport: headers, pooling, ping, imports --------------------------------------------------------------------
def test_auth_key_and_service_headers_on_every_request(service_env, monkeypatch, replay_service):
    monkeypatch.setenv("METAFLOW_SERVICE_AUTH_KEY", "s3cret-key")
    monkeypatch.setenv("METAFLOW_SERVICE_HEADERS", json.dumps({"X-Team": "ml", "Authorization": "Bearer tok"}))
    p = provider(replay_service, ping=True)
    p.flows()
    p.artifacts("RecRetryFlow", "2", "flaky", "22", attempt=0)
    assert len(replay_service.request_headers) == 3
    for _, _, headers in replay_service.request_headers:
        lower = {k.lower(): v for k, v in headers.items()}
        assert lower["x-api-key"] == "s3cret-key"
        assert lower["x-team"] == "ml" and lower["authorization"] == "Bearer tok"


def test_no_auth_header_without_a_key(service_env, replay_service):
    provider(replay_service).flows()
    (_, _, headers), = replay_service.request_headers
    assert "x-api-key" not in {k.lower() for k in headers}


def test_one_pooled_connection_for_many_requests(service_env, replay_service):
    p = provider(replay_service)
    for task in p.tasks("RecShapesFlow", "1", "inner"):
        p.artifact("RecShapesFlow", "1", "inner", task["task_id"], "cell")
    assert replay_service.total_requests() == 7
    assert replay_service.connections == 1


def test_ping_reads_the_version_and_reports_an_unreachable_service(service_env, replay_service):
    p = provider(replay_service, ping=True)
    assert p.version == "2.5.1" and p.info() == replay_service.url
    assert replay_service.counts[("GET", "/ping")] == 1
    assert ServiceMetadataProvider(replay_service.url + "/").info() == replay_service.url

    server = ReplayServer().start()
    url = server.url
    server.stop()
    with pytest.raises(MetaflowBackendError, match=r"Metaflow service \[%s\] unreachable" % url):
        ServiceMetadataProvider(url, ping=True)


def test_missing_service_url(service_env):
    p = ServiceMetadataProvider(None)
    assert p.info() == "None"
    with pytest.raises(MetaflowBackendError, match="Missing Metaflow Service URL"):
        p.flows()


def test_requests_is_imported_only_when_the_service_is_asked(replay_service):
    code = (
        "import sys\n"
        "from client.metadata.service import ServiceMetadataProvider\n"
        "p = ServiceMetadataProvider(%r)\n"
        "assert 'requests' not in sys.modules, 'imported too early'\n"
        "assert p.flows()\n"
        "assert 'requests' in sys.modules\n" % replay_service.url
    )
    subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, check=True, timeout=60)


# -- faults --------------------------------------------------------------------------------------------------------
def test_service_down_is_a_clear_error_within_the_bound_then_recovers(service_env, monkeypatch):
    monkeypatch.setenv("METAFLOW_SERVICE_RETRY_COUNT", "4")
    monkeypatch.setenv("MFFS_SERVICE_RETRY_BACKOFF", "0.1")
    server = ReplayServer().start()
    try:
        p = provider(server)
        assert p.flow("RecShapesFlow")  # a pooled connection exists now
        server.stop()
        started = time.monotonic()
        with pytest.raises(MetaflowBackendError) as info:
            p.runs("RecShapesFlow")
        elapsed = time.monotonic() - started
        message = str(info.value)
        assert server.url in message and "unreachable" in message and "4 attempts" in message
        assert "Connection refused" in message
        assert 0.1 + 0.2 <= elapsed < 5  # the backoff between attempts 2, 3 and 4; no hang

        server.start()  # same port: the same provider recovers
        assert [r["run_number"] for r in p.runs("RecShapesFlow")] == ["1"]
    finally:
        server.stop()


def test_a_connection_closed_without_an_answer_is_retried_at_once(service_env, monkeypatch, replay_service):
    """What a client sees when the server closes an idle pooled connection just as it is reused."""
    monkeypatch.setenv("MFFS_SERVICE_RETRY_BACKOFF", "5")
    p = provider(replay_service)
    replay_service.fail(DROP, times=1)
    started = time.monotonic()
    assert p.flow("RecShapesFlow")["flow_id"] == "RecShapesFlow"
    assert time.monotonic() - started < 2  # no backoff before the first retry
    assert replay_service.counts[("GET", "/flows/RecShapesFlow")] == 2
    assert replay_service.connections == 2


def test_unanswered_connection_times_out(service_env, monkeypatch):
    """A service that accepts connections but never answers: the read timeout ends the call, not retried."""
    import socket

    monkeypatch.setenv("MFFS_SERVICE_TIMEOUT", "0.5")
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    try:
        p = ServiceMetadataProvider("http://127.0.0.1:%d" % listener.getsockname()[1])
        started = time.monotonic()
        with pytest.raises(MetaflowBackendError, match="did not answer"):
            p.flows()
        assert time.monotonic() - started < 3
    finally:
        listener.close()


def test_slow_service_times_out_then_recovers(service_env, monkeypatch, replay_service):
    monkeypatch.setenv("MFFS_SERVICE_TIMEOUT", "0.3")
    p = provider(replay_service)
    replay_service.delay = 1.0
    started = time.monotonic()
    with pytest.raises(MetaflowBackendError, match=r"did not answer /flows within 0.3s"):
        p.flows()
    assert time.monotonic() - started < 1.0
    assert replay_service.counts[("GET", "/flows")] == 1  # a read timeout is not retried
    replay_service.delay = 0
    assert p.flows()


def test_503_is_retried(service_env, replay_service):
    p = provider(replay_service)
    replay_service.fail(503, times=2)
    assert [f["flow_id"] for f in p.flows()] == [f["flow_id"] for f in recorded(replay_service, "/flows")]
    assert replay_service.counts[("GET", "/flows")] == 3


def test_503_until_the_retries_run_out(service_env, monkeypatch, replay_service):
    monkeypatch.setenv("METAFLOW_SERVICE_RETRY_COUNT", "3")
    p = provider(replay_service)
    replay_service.fail(503)
    with pytest.raises(MetaflowBackendError, match=r"service unavailable \(503\).*3 attempts"):
        p.run("RecShapesFlow", "1")
    assert replay_service.counts[("GET", "/flows/RecShapesFlow/runs/1")] == 3


def test_500_is_reported_at_once(service_env, replay_service):
    p = provider(replay_service)
    replay_service.fail(500, times=1)
    with pytest.raises(MetaflowBackendError, match=r"/flows/RecShapesFlow/runs/1\) failed \(code 500\)"):
        p.run("RecShapesFlow", "1")
    assert replay_service.counts[("GET", "/flows/RecShapesFlow/runs/1")] == 1
    assert p.run("RecShapesFlow", "1")["run_number"] == "1"


def test_an_answer_that_is_not_json(service_env):
    with ReplayServer() as server:
        server.answers[("GET", "/flows")] = (200, {"Content-Type": "text/html"}, b"<html>proxy login</html>")
        with pytest.raises(MetaflowBackendError, match="not JSON"):
            provider(server).flows()


# -- selecting the service through the client, as with Metaflow ----------------------------------------------------
def test_default_metadata_service_from_settings_is_not_pinged(service_env, monkeypatch, replay_service):
    import client

    monkeypatch.setenv("METAFLOW_DEFAULT_METADATA", "service")
    monkeypatch.setenv("METAFLOW_SERVICE_URL", replay_service.url + "/")
    assert client.get_metadata() == "service@" + replay_service.url
    assert replay_service.total_requests() == 0
    assert client.Run("RecTeamFlow/8").id == "8"


@pytest.mark.parametrize("spec", ["service@{url}", "{url}"])
def test_metadata_switch_pings_the_service(service_env, replay_service, spec):
    import client

    assert client.metadata(spec.format(url=replay_service.url)) == "service@" + replay_service.url
    assert replay_service.counts == {("GET", "/ping"): 1}
    # Every flow has a run of alice's; Metaflow() keeps the service's order.
    assert [f.id for f in client.Metaflow()] == [f["flow_id"] for f in recorded(replay_service, "/flows")]


def test_metadata_switch_to_an_unreachable_service(service_env, monkeypatch):
    import client

    monkeypatch.setenv("METAFLOW_SERVICE_RETRY_COUNT", "2")
    server = ReplayServer().start()
    server.stop()
    with pytest.raises(MetaflowBackendError, match="unreachable"):
        client.metadata("service@" + server.url)


def test_concurrent_callers_share_the_pool(service_env, replay_service):
    """The mount calls the provider from many FUSE threads at once."""
    from concurrent.futures import ThreadPoolExecutor

    p = provider(replay_service)
    tasks = [t["task_id"] for t in p.tasks("RecShapesFlow", "1", "inner")]
    cell = "/flows/RecShapesFlow/runs/1/steps/inner/tasks/%s/artifacts/cell"
    expected = {t: recorded(replay_service, cell % t)["sha"] for t in tasks}
    with ThreadPoolExecutor(8) as pool:
        shas = list(pool.map(lambda t: p.artifact("RecShapesFlow", "1", "inner", t, "cell")["sha"], tasks * 10))
    assert shas == [expected[t] for t in tasks * 10]
    assert replay_service.connections <= 8


def test_a_tasks_metadata_fields_cost_one_request(service_env, replay_service):
    """The client asks a task for one metadata field at a time (its attempt, index, logs, code, neighbours); from
    a service, which answers every field in one request, they all come from that one answer, kept."""
    import client

    client.metadata("service@" + replay_service.url)
    client.namespace(None)
    task = client.Task("RecShapesFlow/1/inner/10")
    fields = [(task.current_attempt, task.index, task.code, task.stdout_size, list(task.parent_task_pathspecs))
              for _ in range(2)]
    assert fields[0] == fields[1] and fields[0][4]  # (values checked against Metaflow's in test_service_walk)
    assert replay_service.counts[("GET", "/flows/RecShapesFlow/runs/1/steps/inner/tasks/10/metadata")] == 1


def test_a_malformed_row_hides_only_itself(service_env):
    """A service row without a required field or with a junk id is left out of its list (the neighbours stay), and
    asked for by name it is MetaflowInternalError naming it, as with the local provider."""
    with ReplayServer() as server:
        p = provider(server)
        good_runs = p.runs("RecTeamFlow")
        status, headers, body = server.answers[("GET", "/flows/RecTeamFlow/runs")]
        rows = json.loads(body)
        rows[0] = dict(rows[0], run_number="../../etc")
        rows[1] = {key: value for key, value in rows[1].items() if key != "ts_epoch"}
        server.answers[("GET", "/flows/RecTeamFlow/runs")] = (status, headers, json.dumps(rows).encode())
        assert p.runs("RecTeamFlow") == good_runs[2:]
        path = "/flows/RecShapesFlow/runs/1/steps/start/tasks"
        status, headers, body = server.answers[("GET", path)]
        tasks = json.loads(body)
        server.answers[("GET", path)] = (status, headers, json.dumps(tasks + [dict(tasks[0], tags="x")]).encode())
        assert p.tasks("RecShapesFlow", "1", "start") == [p._task(row) for row in tasks]
        status, headers, body = server.answers[("GET", "/flows/RecTeamFlow/runs/7")]
        server.answers[("GET", "/flows/RecTeamFlow/runs/7")] = (status, headers, b'{"flow_id": "RecTeamFlow"}')
        with pytest.raises(MetaflowInternalError, match="/flows/RecTeamFlow/runs/7"):
            p.run("RecTeamFlow", "7")
