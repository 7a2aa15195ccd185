"""Artifact values that the field-by-field walk cannot cover: values whose loading runs code, and classes that
exist only in the flow file."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support.datastores import PICKLE_MARKER_ENV


def _types_start(api, manifest: dict):
    return api.Task("%s/start/1" % manifest["runs"]["types"]["pathspec"])


@pytest.fixture
def marker(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The file that unpickling TypesFlow's `evil` artifact creates (see tests/flows/typesflow.py)."""
    path = tmp_path / "unpickled-code-ran"
    monkeypatch.setenv(PICKLE_MARKER_ENV, str(path))
    return path


@pytest.mark.parametrize("api_name", ["metaflow", "client"])
def test_trusted_load_runs_pickled_code_like_metaflow(api_name: str, clients: dict, manifest: dict,
                                                      marker: Path) -> None:
    """The Client API trusts artifacts, as Metaflow's does: `task.data.evil` runs the pickled os.system call.
    Checking Metaflow too proves the marker mechanism works, so the untrusted test below can fail."""
    value = _types_start(clients[api_name], manifest).data.evil
    assert marker.exists()
    assert value == 0  # os.system's exit status


def test_untrusted_load_never_runs_pickled_code(clients: dict, manifest: dict, marker: Path) -> None:
    artifact = _types_start(clients["client"], manifest)["evil"]
    value = artifact.load(trusted=False)
    assert not marker.exists()
    assert "UntrustedObject" in [cls.__name__ for cls in type(value).__mro__]
    assert "posix.system" in repr(value) or "os.system" in repr(value)


@pytest.mark.parametrize("name", ["nested", "nonstr_keys", "a_set", "when_utc", "price", "big", "array", "frame",
                                  "series"])
def test_untrusted_load_keeps_data_types(name: str, clients: dict, manifest: dict) -> None:
    """Allow-listed data types load normally when untrusted (compared with Metaflow's trusted value)."""
    theirs = _types_start(clients["metaflow"], manifest).data
    ours = _types_start(clients["client"], manifest)[name].load(trusted=False)
    expected = getattr(theirs, name)
    if hasattr(expected, "equals"):  # pandas
        assert expected.equals(ours)
    elif hasattr(expected, "tolist"):  # numpy
        assert expected.tolist() == ours.tolist() and expected.dtype == ours.dtype
    else:
        assert ours == expected and type(ours) is type(expected)


def test_user_class_from_flow_file(clients: dict, manifest: dict) -> None:
    """`__main__.Point` exists only in the flow file. Metaflow fails with pickle's AttributeError; ours must raise
    the same class (so `except AttributeError` keeps working) with a message naming the class."""
    with pytest.raises(AttributeError):
        _ = _types_start(clients["metaflow"], manifest).data.point
    with pytest.raises(AttributeError) as raised:
        _ = _types_start(clients["client"], manifest).data.point
    assert "__main__.Point" in str(raised.value)


@pytest.mark.parametrize("protocol", [2, 4])
def test_values_known_by_sha_are_what_those_pickles_hold(protocol: int) -> None:
    """`_exception` (None) and `_task_ok` (True) are answered from the record's sha without reading the blob."""
    import hashlib
    import pickle

    from client.cache import KNOWN_VALUES

    for value in (None, True):
        sha = hashlib.sha1(pickle.dumps(value, protocol=protocol)).hexdigest()
        assert sha in KNOWN_VALUES and KNOWN_VALUES[sha] is value


def test_reading_an_artifact_in_a_loop_names_the_tasks_to_prefetch(clients: dict) -> None:
    """What a read prefetches on remote storage: from a task of an iterated step, the next tasks of the step; from
    a run's end task reached by iterating runs, the end tasks of the next runs; for a task looked up alone (also
    `Flow.latest_run`, `Step.task`), nothing until the same artifact was read in another task of the step just
    before: then the next ones that way."""
    from client.peers import peer_tasks

    client = clients["client"]
    client.namespace(None)
    runs = list(client.Flow("FailFlow"))
    ends = [run.end_task for run in runs]
    assert len([end for end in ends if end is not None]) >= 2
    first = next(i for i, end in enumerate(ends) if end is not None)
    expected = [tuple(end.path_components) for end in ends[first:] if end is not None]
    assert peer_tasks(ends[first], "a") == expected
    assert peer_tasks(runs[first]["end"].task, "b") == expected

    run = client.Flow("KitchenFlow").latest_run
    step = max(run, key=lambda s: len(list(s)))
    tasks = list(step)
    assert len(tasks) >= 3
    components = [tuple(t.path_components) for t in tasks]
    assert peer_tasks(tasks[1], "c") == components[1:]
    # looked up alone, not iterated: the latest run's end task, a step's newest task
    assert peer_tasks(run["end"].task, "e") == [] and peer_tasks(step.task, "e") == []
    assert peer_tasks(client.Task(tasks[1].pathspec), "d") == []
    assert peer_tasks(client.Task(tasks[2].pathspec), "d") == components[2:]
    assert peer_tasks(client.Task(tasks[1].pathspec), "d") == components[1::-1]  # the loop went backwards


def test_blob_size_is_the_stored_pickle_length(clients: dict, manifest: dict) -> None:
    """The mount sizes data.pickle, and decides whether to render repr.txt when stat'ed, by `blob_size`, which a
    local datastore answers from the blob file (its size, or gzip's trailer) rather than the attempt's data.json."""
    ours = clients["client"]
    checked = 0
    previous = ours.get_namespace()
    ours.namespace(None)  # every scenario's run, whoever made it
    try:
        for scenario in manifest["runs"].values():
            for step in ours.Run(scenario["pathspec"]):
                for task in step:
                    for artifact in task:
                        assert artifact.blob_size == len(artifact._serialized()), artifact.pathspec
                        checked += 1
    finally:
        ours.namespace(previous)
    assert checked > 100


def test_stored_blob_size_answers_only_what_the_file_tells(tmp_path: Path) -> None:
    import gzip
    import os
    import pickle

    from client.datastore import FlowDatastore

    datastore = FlowDatastore.at(str(tmp_path), "SizeFlow")

    def store(sha: str, data: bytes) -> str:
        path = tmp_path / "SizeFlow" / "data" / sha[:2] / sha
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        return sha

    value = pickle.dumps(list(range(10_000)), protocol=4)
    assert datastore.stored_blob_size(store("aa01" * 10, gzip.compress(value))) == len(value)
    assert datastore.stored_blob_size(store("aa02" * 10, value)) == len(value)  # stored raw
    # From 4 MB of gzip on, the trailer (the length mod 2**32) may be ambiguous: the caller reads data.json.
    assert datastore.stored_blob_size(store("aa03" * 10, gzip.compress(os.urandom(4_100_000), 1))) is None
    assert datastore.stored_blob_size("aa04" * 10) is None
