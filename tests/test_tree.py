"""The path tree (mffs.tree) without FUSE, over the standard datastore, checked against Metaflow's own client."""
from __future__ import annotations

import datetime as dt
import errno
import hashlib
import io
import json
import os
import pickle
import tarfile

import pytest
from cachetools import LRUCache

import client
from client.datastore import blob_cache
from mffs import render
from mffs.exports import export_names
from mffs.tree import (
    CONTROL_DIR, DIR, FILE, LINK, StreamReader, Tree, card_file_names, code_member_parts
)
from tests.support.mount import corrupt_datastore, data_json_info, expected_task_record  # noqa: F401

PLAIN_TYPES = {"<class '%s'>" % name for name in ("int", "float", "str", "bool", "list", "dict", "tuple", "bytes")}


@pytest.fixture
def tree(client_env) -> Tree:
    return Tree(client)


def names(tree: Tree, path: str) -> list:
    return [node.name for node in tree.list(path)]


def read_json(tree: Tree, path: str):
    data = tree.read_file(path)
    assert data.endswith(b"\n")
    return json.loads(data)


def test_root_lists_the_flows_of_the_namespace(tree, mf):
    assert sorted(names(tree, "/")) == sorted(flow.id for flow in mf.Metaflow().flows)
    assert "HelloFlow" not in names(tree, "/")  # bob's only flow


def test_flow_dir_has_runs_newest_first_and_latest_links(tree, mf, manifest):
    listed = names(tree, "/FailFlow")
    runs = [run.id for run in mf.Flow("FailFlow")]
    assert [name for name in listed if name not in ("latest", "latest_successful", "tags")] == runs
    assert manifest["runs"]["codepkg"]["run_id"] not in listed  # bob's run
    assert tree.readlink("/FailFlow/latest") == mf.Flow("FailFlow").latest_run.id
    assert tree.readlink("/FailFlow/latest_successful") == mf.Flow("FailFlow").latest_successful_run.id
    assert tree.stat("/FailFlow/latest").kind == LINK


def test_latest_successful_is_absent_without_a_successful_run(client_env):
    failtag = Tree(client, namespace="failtag")  # a namespace where FailFlow has only the failed run
    assert "latest" in names(failtag, "/FailFlow")
    assert "latest_successful" not in names(failtag, "/FailFlow")
    with pytest.raises(FileNotFoundError):
        failtag.stat("/FailFlow/latest_successful")


def test_tags_directory_links_runs_by_tag(tree, mf, manifest):
    kitchen = manifest["runs"]["kitchen"]
    expected_tags = sorted({tag for run in mf.Flow("KitchenFlow") for tag in run.tags})
    assert names(tree, "/KitchenFlow/tags") == [render.encode_tag(tag) for tag in expected_tags]
    with_tag = [run.id for run in mf.Flow("KitchenFlow").runs("exp:1")]
    assert names(tree, "/KitchenFlow/tags/exp:1") == with_tag
    assert tree.readlink("/KitchenFlow/tags/mytag/%s" % kitchen["run_id"]) == "../../" + kitchen["run_id"]
    assert names(tree, "/KitchenFlow/tags/mytag/%s" % kitchen["run_id"])  # resolves through the link
    with pytest.raises(FileNotFoundError):
        tree.stat("/KitchenFlow/tags/no-such-tag")


def test_tag_names_encode_slashes_reversibly():
    for tag in ("a/b", "100%", "x%2Fy", ".", "..", "plain:tag"):
        name = render.encode_tag(tag)
        assert "/" not in name and name not in (".", "..")
        assert render.decode_tag(name) == tag
    assert render.encode_tag("a/b") == "a%2Fb"


def test_run_json_matches_metaflow(tree, mf, manifest):
    pathspec = manifest["runs"]["kitchen"]["pathspec"]
    run = mf.Run(pathspec)
    record = read_json(tree, "/%s/run.json" % pathspec)
    assert record == {
        "pathspec": run.pathspec,
        "id": run.id,
        "created_at": run.created_at.astimezone().isoformat(),
        "finished_at": run.finished_at.astimezone().isoformat(),
        "finished": run.finished,
        "successful": run.successful,
        "tags": sorted(run.tags),
        "user_tags": sorted(run.user_tags),
        "system_tags": sorted(run.system_tags),
    }
    assert record["created_at"].endswith("+00:00")  # UTC with an explicit offset


def test_step_json_matches_metaflow_and_is_deferred_in_a_big_step(client_env, mf, manifest):
    run = mf.Run(manifest["runs"]["kitchen"]["pathspec"])
    tree = Tree(client, step_json_eager_tasks=1)
    sizes = {}
    for step in run:
        path = "/%s/step.json" % step.pathspec
        sizes[len(list(step)) > 1] = tree.stat(path).size
        assert read_json(tree, path) == {
            "pathspec": step.pathspec,
            "id": step.id,
            "created_at": render.iso_time(step.created_at),
            "finished_at": render.iso_time(step.finished_at),
        }
        assert tree.stat(path).size == len(tree.read_file(path))
    # stat'ed before the read: a one-task step's size is exact at once, a bigger step's is 0 until it is read
    assert sizes[False] > 0 and sizes[True] == 0


def test_parameters_json_holds_flow_parameters(tree, mf, manifest):
    for scenario in ("kitchen", "types"):
        pathspec = manifest["runs"][scenario]["pathspec"]
        task = mf.Run(pathspec)["_parameters"].task
        declared = [p["name"] for p in task["_graph_info"].data["parameters"]]
        assert read_json(tree, "/%s/parameters.json" % pathspec) == {name: task[name].data for name in declared}


def test_steps_are_listed_like_metaflow_and_parameters_step_is_hidden(tree, mf, manifest):
    pathspec = manifest["runs"]["kitchen"]["pathspec"]
    listed = names(tree, "/" + pathspec)
    assert listed == ["run.json", "parameters.json"] + [step.id for step in mf.Run(pathspec)]
    assert "_parameters" not in listed
    assert tree.stat("/%s/_parameters" % pathspec).kind == DIR
    task_id = mf.Run(pathspec)["_parameters"].task.id
    assert tree.read_file("/%s/_parameters/%s/label/repr.txt" % (pathspec, task_id)) == b"'kitchen'\n"


def test_task_files_match_metaflow(tree, mf, manifest):
    run = mf.Run(manifest["runs"]["kitchen"]["pathspec"])
    for step in run:
        for task in step:
            base = "/" + task.pathspec
            record = read_json(tree, base + "/task.json")
            record["parents"], record["children"] = sorted(record["parents"]), sorted(record["children"])
            assert record == expected_task_record(task)
            assert tree.read_file(base + "/stdout.log") == task.stdout.encode("utf-8")
            assert tree.read_file(base + "/stderr.log") == task.stderr.encode("utf-8")
            expected_metadata = sorted(
                (m.name, m.value, m.type, render.iso_time(m.created_at)) for m in task.metadata
            )
            listed_metadata = sorted(
                (m["name"], m["value"], m["type"], m["created_at"]) for m in read_json(tree, base + "/metadata.json")
            )
            assert listed_metadata == expected_metadata
            files = [name for name in names(tree, base) if "." in name]
            assert files == ["task.json", "metadata.json", "stdout.log", "stderr.log"]
            has_cards = any(m.type == "card-info" for m in task.metadata)
            special = (["cards"] if has_cards else []) + (["attempts"] if task.current_attempt > 0 else [])
            assert [name for name in names(tree, base) if name in ("cards", "attempts")] == special
            assert sorted(set(names(tree, base)) - set(files) - set(special)) == sorted(a.id for a in task)
            for name in names(tree, base):
                node_stat = tree.stat(base + "/" + name)
                if node_stat.kind == FILE:
                    assert node_stat.size == len(tree.read_file(base + "/" + name)) > 0 or name.endswith(".log")


def test_exception_txt_only_for_a_task_with_an_exception(tree, mf, manifest):
    failed = mf.Run(manifest["runs"]["fail"]["pathspec"])["middle"].task
    base = "/" + failed.pathspec
    assert "exception.txt" in names(tree, base)
    text = tree.read_file(base + "/exception.txt").decode()
    assert "KeyError" in text and text.rstrip("\n") == str(failed.exception).rstrip("\n")
    ok = mf.Run(manifest["runs"]["kitchen"]["pathspec"])["start"].task
    assert "exception.txt" not in names(tree, "/" + ok.pathspec)
    with pytest.raises(FileNotFoundError):
        tree.stat("/%s/exception.txt" % ok.pathspec)


def test_artifact_files_match_metaflow(tree, mf, manifest, local_root):
    run = mf.Run(manifest["runs"]["kitchen"]["pathspec"])
    checked_values = 0
    for step in run:
        for task in step:
            for artifact in task:
                base = "/" + artifact.pathspec
                info = data_json_info(local_root, artifact)
                exported = export_names(info["type"], trusted=False)
                assert names(tree, base) == ["repr.txt", "data.pickle", "meta.json"] + exported
                assert exported or info["type"] not in PLAIN_TYPES
                assert read_json(tree, base + "/meta.json") == {
                    "pathspec": artifact.pathspec,
                    "name": artifact.id,
                    "sha": artifact.sha,
                    "size": artifact.size,
                    "type": info["type"],
                    "encoding": info["encoding"],
                    "created_at": render.iso_time(artifact.created_at),
                }
                blob = tree.read_file(base + "/data.pickle")
                assert tree.stat(base + "/data.pickle").size == len(blob)
                assert hashlib.sha1(blob).hexdigest() == artifact.sha  # byte-identical to what Metaflow stored
                if info["type"] in PLAIN_TYPES and artifact.id != "table":  # IncludeFile: data is the file text
                    value = artifact.data
                    assert pickle.loads(blob) == value
                    assert tree.read_file(base + "/repr.txt") == (repr(value) + "\n").encode()
                    checked_values += 1
    assert checked_values > 50


def test_hidden_artifacts_are_reachable_but_not_listed(tree, mf, manifest):
    task = mf.Run(manifest["runs"]["kitchen"]["pathspec"])["start"].task
    base = "/" + task.pathspec
    assert not [name for name in names(tree, base) if name.startswith("_")]
    assert tree.read_file(base + "/_task_ok/repr.txt") == (repr(task["_task_ok"].data) + "\n").encode()
    assert tree.stat(base + "/_graph_info").kind == DIR


def test_big_artifact_repr_is_deferred_then_exact(client_env, mf, manifest):
    learned = []
    tree = Tree(client)
    tree.on_size_learned = learned.append
    task = mf.Run(manifest["runs"]["types"]["pathspec"])["start"].task
    path = "/%s/big/repr.txt" % task.pathspec
    before = tree.stat(path)
    assert (before.size, before.direct_io) == (0, True)
    text = tree.read_file(path).decode()
    full = repr(task["big"].data)
    assert text == full[: tree.settings.repr_limit] + render.REPR_CUT_MARKER % (tree.settings.repr_limit, len(full))
    after = tree.stat(path)
    assert (after.size, after.direct_io) == (len(text.encode()), True)
    assert learned == [path]
    assert tree.stat("/%s/big/data.pickle" % task.pathspec).size == task["big"].size


def test_stat_never_unpickles_above_the_threshold(client_env, manifest, tmp_path, monkeypatch):
    # Unpickling TypesFlow's `evil` artifact touches this file; with threshold 0 no repr.txt is rendered by stat.
    marker = tmp_path / "unpickled"
    monkeypatch.setenv(manifest["pickle_marker_env"], str(marker))
    tree = Tree(client, render_threshold=0)
    task_path = "/%s/start" % manifest["runs"]["types"]["pathspec"]
    task_path += "/" + names(tree, task_path)[1]
    for artifact in tree.list(task_path):
        if artifact.kind == DIR:
            for node in tree.list(artifact.path):
                tree.stat(node.path)
    assert tree.stat(task_path + "/evil/repr.txt").size == 0
    assert not marker.exists()


def test_unknown_names_and_wrong_kinds(tree, manifest):
    pathspec = manifest["runs"]["kitchen"]["pathspec"]
    for path in ("/NoSuchFlow", "/KitchenFlow/1", "/%s/nostep" % pathspec, "/%s/start/999" % pathspec,
                 "/%s/start/1/no_artifact" % pathspec, "/%s/start/1/rows/other.txt" % pathspec):
        with pytest.raises(FileNotFoundError) as raised:
            tree.stat(path)
        assert raised.value.errno == errno.ENOENT
    with pytest.raises(NotADirectoryError):
        tree.stat("/%s/run.json/x" % pathspec)
    with pytest.raises(IsADirectoryError):
        tree.open("/" + pathspec)


def test_namespaces(client_env, mf, manifest):
    bob = Tree(client, namespace="user:bob")
    assert "HelloFlow" in names(bob, "/")
    assert manifest["runs"]["codepkg"]["run_id"] in names(bob, "/FailFlow")
    assert manifest["runs"]["fail"]["run_id"] not in names(bob, "/FailFlow")
    alice = Tree(client, namespace="user:alice")
    with pytest.raises(FileNotFoundError):
        alice.stat("/" + manifest["runs"]["hello_bob"]["pathspec"])
    everyone = Tree(client, namespace=None)
    assert {"HelloFlow", "KitchenFlow", "FailFlow"} <= set(names(everyone, "/"))


def test_unfinished_run_is_not_stable(tree, mf, manifest):
    pathspec = manifest["runs"]["unfinished"]["pathspec"]
    record = read_json(tree, "/%s/run.json" % pathspec)
    assert (record["finished"], record["finished_at"]) == (False, None)
    assert not tree.stat("/" + pathspec).stable
    sleeper = mf.Run(pathspec)["sleeper"].task
    task_record = read_json(tree, "/%s/task.json" % sleeper.pathspec)
    assert (task_record["finished"], task_record["parents"]) == (False, None)  # no artifacts yet
    assert not tree.stat("/%s/stdout.log" % sleeper.pathspec).stable
    done = manifest["runs"]["kitchen"]["pathspec"]
    assert tree.stat("/%s/start/1/rows/repr.txt" % done).stable


def test_pathspec_root(client_env, mf, manifest):
    pathspec = manifest["runs"]["kitchen"]["pathspec"]
    run_tree = Tree(client, pathspec=pathspec)
    assert names(run_tree, "/") == ["run.json", "parameters.json"] + [step.id for step in mf.Run(pathspec)]
    flow_tree = Tree(client, pathspec="KitchenFlow")
    assert pathspec.split("/")[1] in names(flow_tree, "/")
    task = mf.Run(pathspec)["start"].task
    assert "task.json" in names(Tree(client, pathspec=task.pathspec), "/")
    for unknown in ("NoSuchFlow", "KitchenFlow/1", pathspec + "/nostep"):
        with pytest.raises(FileNotFoundError):
            Tree(client, pathspec=unknown)


def test_control_files_are_reachable_but_not_listed(tree):
    tree.control_files["hello"] = lambda: b"hi\n"
    assert CONTROL_DIR not in names(tree, "/")
    assert names(tree, "/" + CONTROL_DIR) == ["hello"]
    assert tree.read_file("/%s/hello" % CONTROL_DIR) == b"hi\n"
    assert tree.stat("/%s/hello" % CONTROL_DIR).direct_io


def test_corrupt_blob_fails_only_its_files(client_env, corrupt_datastore, monkeypatch):
    root, pathspec, name = corrupt_datastore
    # Blobs are named by content and kept in memory by sha for the whole process. The standard datastore's
    # HelloFlow stored the same `score`, so a test that read it before would have this one served, intact, from
    # memory (rightly: the sha names the bytes). Start from an empty cache, as a mount's daemon does.
    monkeypatch.setattr(blob_cache, "_lru", LRUCache(maxsize=blob_cache.max_bytes, getsizeof=len))
    client.metadata("local@%s" % root)
    tree = Tree(client, namespace=None)
    base = "/%s/%s" % (pathspec, name)
    assert tree.stat(base + "/repr.txt").size == 0  # listable, not readable
    for file_name in ("repr.txt", "data.pickle"):
        with pytest.raises(OSError) as raised:
            tree.read_file(base + "/" + file_name)
        assert raised.value.errno == errno.EIO
    assert json.loads(tree.read_file(base + "/meta.json"))["name"] == name
    assert json.loads(tree.read_file("/%s/task.json" % pathspec))["finished"] is True


class CountingOpener:
    def __init__(self, data: bytes):
        self.data = data
        self.opens = 0

    def __call__(self):
        self.opens += 1
        return io.BytesIO(self.data)


def test_stream_reader_serves_out_of_order_reads_from_its_window():
    data = os.urandom(1 << 20)
    opener = CountingOpener(data)
    reader = StreamReader(opener, window=256 << 10)
    assert reader.read(128 << 10, 4096) == data[128 << 10 : (128 << 10) + 4096]  # gap ahead: read and kept
    assert reader.read(0, 65536) == data[:65536]  # behind, still in the window
    assert reader.read(200 << 10, 100 << 10) == data[200 << 10 : 300 << 10]
    assert opener.opens == 1
    assert reader.read(900 << 10, 1 << 20) == data[900 << 10 :]  # far ahead: seek, then short read at the end
    assert reader.read(0, 10) == data[:10]  # before the window: reopen
    assert opener.opens == 2
    reader.close()


def test_card_names_number_each_type_and_id_in_card_info_order():
    stored = ["default-bbbb.html", "default-aaaa.html", "blank-summary-cccc.html", "default-dddd.html"]
    served = card_file_names(stored, ["bbbb", "cccc", "aaaa"])  # dddd has no card-info event: last
    assert served == {
        "default-0.html": "default-bbbb.html",
        "blank-summary-0.html": "blank-summary-cccc.html",
        "default-1.html": "default-aaaa.html",
        "default-2.html": "default-dddd.html",
    }
    assert card_file_names(stored[:2], []) == {
        "default-0.html": "default-aaaa.html", "default-1.html": "default-bbbb.html"}


def test_code_members_that_could_escape_or_are_not_files_are_never_served():
    archive = io.BytesIO()
    with tarfile.open(fileobj=archive, mode="w") as tar:
        for name, kind in [("flow.py", tarfile.REGTYPE), ("./pkg/mod.py", tarfile.REGTYPE), ("pkg", tarfile.DIRTYPE),
                           ("../up.py", tarfile.REGTYPE), ("a/../../up.py", tarfile.REGTYPE),
                           ("/abs.py", tarfile.REGTYPE), ("link", tarfile.SYMTYPE), ("hard", tarfile.LNKTYPE),
                           ("dev", tarfile.CHRTYPE), ("blk", tarfile.BLKTYPE), ("fifo", tarfile.FIFOTYPE),
                           (".", tarfile.DIRTYPE)]:
            info = tarfile.TarInfo(name)
            info.type = kind
            tar.addfile(info, io.BytesIO(b"") if kind == tarfile.REGTYPE else None)
    archive.seek(0)
    with tarfile.open(fileobj=archive) as tar:
        served = {member.name: code_member_parts(member) for member in tar.getmembers()}
    assert {name: parts for name, parts in served.items() if parts is not None} == {
        "flow.py": ("flow.py",), "./pkg/mod.py": ("pkg", "mod.py"), "pkg": ("pkg",)}


def test_restricted_tree_never_runs_pickled_code_and_trusted_does(client_env, manifest, tmp_path, monkeypatch):
    marker = tmp_path / "unpickled"
    monkeypatch.setenv(manifest["pickle_marker_env"], str(marker))
    task_path = "/%s/start" % manifest["runs"]["types"]["pathspec"]
    tree = Tree(client)
    task_path += "/" + names(tree, task_path)[1]
    for artifact in tree.list(task_path):
        if artifact.kind == DIR and artifact.name not in ("attempts", "cards"):
            for node in tree.list(artifact.path):
                tree.stat(node.path)
                tree.read_file(node.path)
    tree.read_file("/%s/parameters.json" % manifest["runs"]["types"]["pathspec"])
    assert tree.read_file(task_path + "/evil/repr.txt").startswith(b"<untrusted posix.system:")
    assert not marker.exists()
    trusting = Tree(client, trust_pickles=True)
    assert trusting.stat(task_path + "/evil/repr.txt").size > 0  # rendered at stat time: small pickle
    assert marker.exists()


def test_attempts_directory_lists_every_started_attempt(tree, mf, manifest):
    """attempts/ is listed for retried tasks only (else attempts/0 would repeat the task) but always reachable."""
    run = mf.Run(manifest["runs"]["kitchen"]["pathspec"])
    for step in run:
        for task in step:
            attempts = "/%s/attempts" % task.pathspec
            assert ("attempts" in names(tree, "/" + task.pathspec)) == (task.current_attempt > 0)
            assert names(tree, attempts) == [str(n) for n in range(task.current_attempt + 1)]
            last = "%s/%d" % (attempts, task.current_attempt)
            assert names(tree, last)[:4] == ["task.json", "metadata.json", "stdout.log", "stderr.log"]
            assert "attempts" not in names(tree, last) and "cards" not in names(tree, last)


@pytest.mark.parametrize("record, same_text", [
    ({"pathspec": "F/1", "tags": ["a", "ü"], "n": 3, "x": 0.1, "none": None, "ok": True, "empty": []}, True),
    ({"beyond_64_bits": 2**70}, True),  # orjson refuses it: json writes it
    ({"bytes": b"\x00", "set": {1}, "when": dt.datetime(2026, 1, 2, tzinfo=dt.timezone.utc)}, True),  # repr()
    ({"small": 1.5e-05}, False),  # orjson writes 0.000015, json 1.5e-05: the same number
])
def test_json_records_are_written_as_json_dumps_writes_them(record, same_text):
    expected = json.dumps(record, indent=2, ensure_ascii=False, default=repr) + "\n"
    assert json.loads(render.json_bytes(record)) == json.loads(expected)
    assert (render.json_bytes(record) == expected.encode("utf-8")) is same_text


def test_json_records_hold_no_more_memory_than_their_bytes():
    """Rendered files are cached by their length: the bytes must not keep a larger buffer (orjson's output does)."""
    import tracemalloc

    record = {"pathspec": "F/1/s/2", "values": list(range(50)), "text": "x" * 100}
    tracemalloc.start()
    try:
        kept = [render.json_bytes(record) for _ in range(1000)]
        traced = tracemalloc.get_traced_memory()[0]
    finally:
        tracemalloc.stop()
    assert traced < 2 * sum(len(data) for data in kept)
