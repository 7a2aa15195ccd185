"""Confinement (issue 13, item 4): everything the client and the mount read for a datastore stays inside it.

Hostile copies of runs made by real Metaflow (tests/support/hostile.py) each point one thing outside the datastore,
at a file holding a unique marker: a card, a log or a blob that is a link, an artifact sha with `../`, an artifact
`location` or a task's `ds-root` naming another directory, an IncludeFile url naming an outside file, a run
directory that is a link. A crawl of a default mount, `mffs cat` and the Python API must never show the marker;
the bad file answers EIO (ENOENT where it honestly is not there), its neighbours stay readable, the daemon lives.
Then unit tests of the checks themselves: keys, links, FIFOs, shas, roots and IncludeFile urls.
"""
from __future__ import annotations

import gzip
import json
import os
import pickle
import shutil
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, List

import pytest

from client.datastore import AllowedRoots, FlowDatastore
from client.storage import local as local_storage
from client.storage.base import OutsideDatastore, check_key
from client.storage.local import LocalStorage
from tests.support.hostile import copy_flows, crawl, replace_artifact, store_blob, task_dir
from tests.support.mount import mounted, run_mffs
from tests.support.pagecache import in_page_cache, make_cold

MARKER = ("MFFS-OUTSIDE-SECRET-%s" % uuid.uuid4().hex).encode()


@dataclass
class Case:
    """A hostile datastore (`parent` holds its `.metaflow`) and what each of its files must answer."""

    parent: Path
    bad: Dict[str, str]  # path in the mount -> "EIO", or "ENOENT" for an entry that must not be there at all
    good: List[str]  # neighbours that must read, non-empty
    api: Callable[[object], None]  # checks of the Python API (`client` module, pointed at the copy)
    env: Dict[str, str] = field(default_factory=dict)


def _secret_file(tmp_path: Path, name: str, data: bytes) -> Path:
    path = tmp_path / "outside" / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def _secret_blob() -> bytes:
    """A blob as Metaflow stores one, whose value is the marker: served, it would show in repr.txt."""
    return gzip.compress(pickle.dumps(MARKER.decode(), protocol=4))


def _copy(local_root: Path, tmp_path: Path, flow: str, cards: bool = False) -> Path:
    parent = copy_flows(local_root, tmp_path / "hostile", [flow])
    if cards:
        shutil.copytree(local_root / ".metaflow" / "mf.cards" / flow, parent / ".metaflow" / "mf.cards" / flow,
                        symlinks=True)
    return parent


def _kitchen(manifest: dict):
    return manifest["runs"]["kitchen"]["pathspec"], manifest["runs"]["kitchen"]["run_id"]


def _hello(manifest: dict):
    return manifest["runs"]["hello_bob"]["pathspec"], manifest["runs"]["hello_bob"]["run_id"]


def _raises(exception: type, call: Callable[[], object]) -> None:
    with pytest.raises(exception) as raised:
        call()
    assert MARKER.decode() not in str(raised.value)


# -- one hostile copy per way out ----------------------------------------------------------------------------------
def card_link(local_root: Path, tmp_path: Path, manifest: dict) -> Case:
    pathspec, run_id = _kitchen(manifest)
    parent = _copy(local_root, tmp_path, "KitchenFlow", cards=True)
    cards = parent / ".metaflow" / "mf.cards" / "KitchenFlow" / "runs" / run_id / "steps" / "start" / "tasks" / "1"
    card = next((cards / "cards").glob("*.html"))
    card.unlink()
    card.symlink_to(_secret_file(tmp_path, "card.html", b"<html>" + MARKER + b"</html>"))
    task = pathspec + "/start/1"

    def api(client):
        store = client.Task(task).cards()
        _raises(OutsideDatastore, lambda: store.read(store.names[0]))
        assert "start stdout" in client.Task(task).stdout

    return Case(parent, {task + "/cards/default-0.html": "EIO"}, [task + "/stdout.log", task + "/alpha/repr.txt"],
                api)


def card_dir_link(local_root: Path, tmp_path: Path, manifest: dict) -> Case:
    pathspec, run_id = _kitchen(manifest)
    parent = _copy(local_root, tmp_path, "KitchenFlow", cards=True)
    tasks = parent / ".metaflow" / "mf.cards" / "KitchenFlow" / "runs" / run_id / "steps" / "start" / "tasks" / "1"
    outside = tmp_path / "outside" / "cards"
    outside.mkdir(parents=True)
    name = next((tasks / "cards").glob("*.html")).name
    (outside / name).write_bytes(b"<html>" + MARKER + b"</html>")
    shutil.rmtree(tasks / "cards")
    (tasks / "cards").symlink_to(outside)
    task = pathspec + "/start/1"

    def api(client):
        assert client.Task(task).cards() is None  # no cards from outside; the task itself reads
        assert client.Task(task)["alpha"].data == 0.5

    return Case(parent, {task + "/cards": "ENOENT"}, [task + "/stdout.log", task + "/alpha/repr.txt"], api)


def log_link(local_root: Path, tmp_path: Path, manifest: dict) -> Case:
    pathspec, _ = _kitchen(manifest)
    parent = _copy(local_root, tmp_path, "KitchenFlow")
    log = task_dir(parent, "KitchenFlow", pathspec.split("/")[1], "start", "1") / "0.runtime_stdout.log"
    log.unlink()
    log.symlink_to(_secret_file(tmp_path, "stdout.log", MARKER + b"\n"))
    task = pathspec + "/start/1"

    def api(client):
        _raises(OutsideDatastore, lambda: client.Task(task).stdout)
        assert "start stderr" in client.Task(task).stderr

    return Case(parent, {task + "/stdout.log": "EIO"}, [task + "/stderr.log", task + "/rows/repr.txt"], api)


def blob_link(local_root: Path, tmp_path: Path, manifest: dict) -> Case:
    """The blob of `lr` is a link out of the root; the blob of `name` is a link that stays inside: it works."""
    pathspec, run_id = _hello(manifest)
    parent = _copy(local_root, tmp_path, "HelloFlow")
    start = task_dir(parent, "HelloFlow", run_id, "start", "1")
    data = parent / ".metaflow" / "HelloFlow" / "data"
    sha = replace_artifact(parent, start, "lr", pickle.dumps("decoy", protocol=4))
    (data / sha[:2] / sha).unlink()
    (data / sha[:2] / sha).symlink_to(_secret_file(tmp_path, "blob", _secret_blob()))
    inside = replace_artifact(parent, start, "name", pickle.dumps("moved inside", protocol=4))
    moved = parent / ".metaflow" / "moved" / inside
    moved.parent.mkdir()
    (data / inside[:2] / inside).rename(moved)
    (data / inside[:2] / inside).symlink_to(os.path.relpath(moved, data / inside[:2]))
    task = pathspec + "/start/1"

    def api(client):
        _raises(OutsideDatastore, lambda: client.Task(task)["lr"].data)
        assert client.Task(task)["name"].data == "moved inside"

    return Case(parent, {task + "/lr/repr.txt": "EIO", task + "/lr/data.pickle": "EIO"},
                [task + "/name/repr.txt", task + "/name/data.pickle", task + "/task.json"], api)


def _set_record(task: Path, name: str, **fields: str) -> None:
    """Rewrite the artifact's `_meta` record (and its sha in `0.data.json`) as a writer of the datastore could."""
    meta = task / "_meta" / ("0_artifact_%s.json" % name)
    record = json.loads(meta.read_text())
    record.update(fields)
    meta.write_text(json.dumps(record))
    if "sha" in fields:
        index = json.loads((task / "0.data.json").read_text())
        index["objects"][name] = fields["sha"]
        (task / "0.data.json").write_text(json.dumps(index))


def sha_traversal(local_root: Path, tmp_path: Path, manifest: dict) -> Case:
    pathspec, run_id = _hello(manifest)
    parent = _copy(local_root, tmp_path, "HelloFlow")
    # <root>/HelloFlow/data/<sha[:2]>/<sha> with sha "../../../secret.blob" is tmp_path/secret.blob
    (tmp_path / "secret.blob").write_bytes(_secret_blob())
    assert (parent / ".metaflow" / "HelloFlow" / "data" / ".." / ".." / ".." / ".." / "secret.blob").exists()
    _set_record(task_dir(parent, "HelloFlow", run_id, "start", "1"), "lr", sha="../../../secret.blob")
    task = pathspec + "/start/1"

    def api(client):
        _raises(ValueError, lambda: client.Task(task)["lr"].data)
        assert client.Task(task)["name"].data == "HelloFlow"

    return Case(parent, {task + "/lr/repr.txt": "EIO", task + "/lr/data.pickle": "EIO"},
                [task + "/name/repr.txt", task + "/task.json"], api)


def location_elsewhere(local_root: Path, tmp_path: Path, manifest: dict) -> Case:
    """`lr` names another datastore (refused unless MFFS_ALLOWED_ROOTS lists it); `name` names this one through a
    link to it (the same directory once resolved: fine)."""
    pathspec, run_id = _hello(manifest)
    parent = _copy(local_root, tmp_path, "HelloFlow")
    other = tmp_path / "outside" / "other"
    sha = store_blob(other, "HelloFlow", pickle.dumps(MARKER.decode(), protocol=4))
    start = task_dir(parent, "HelloFlow", run_id, "start", "1")
    _set_record(start, "lr", sha=sha, location=":root:%s" % (other / ".metaflow"))
    alias = tmp_path / "alias"
    alias.symlink_to(parent)
    _set_record(start, "name", location=":root:%s" % (alias / ".metaflow"))
    task = pathspec + "/start/1"

    def api(client):
        _raises(OutsideDatastore, lambda: client.Task(task)["lr"].data)
        assert client.Task(task)["name"].data == "HelloFlow"
        os.environ["MFFS_ALLOWED_ROOTS"] = str(other / ".metaflow")  # the user's explicit allowance
        try:
            client.metadata("local@%s" % parent)  # settings are read once per metadata provider
            assert client.Task(task)["lr"].data == MARKER.decode()
        finally:
            del os.environ["MFFS_ALLOWED_ROOTS"]

    # the artifact's directory itself: listing it needs its stored type, from its (refused) datastore's index
    return Case(parent, {task + "/lr": "EIO"}, [task + "/name/repr.txt", task + "/task.json"], api)


def ds_root_elsewhere(local_root: Path, tmp_path: Path, manifest: dict) -> Case:
    """The task's `ds-root` names another directory holding logs and a card with the marker."""
    pathspec, run_id = _kitchen(manifest)
    parent = _copy(local_root, tmp_path, "KitchenFlow", cards=True)
    other = tmp_path / "outside" / "other" / ".metaflow"
    logs = other / "KitchenFlow" / run_id / "start" / "1"
    logs.mkdir(parents=True)
    for name in ("0.runtime_stdout.log", "0.runtime_stderr.log"):
        (logs / name).write_bytes(MARKER + b"\n")
    shutil.copytree(parent / ".metaflow" / "mf.cards", other / "mf.cards")
    for card in (other / "mf.cards").rglob("*.html"):
        card.write_bytes(MARKER)
    start = task_dir(parent, "KitchenFlow", run_id, "start", "1")
    for meta in (start / "_meta").glob("sysmeta_ds-root_*.json"):
        record = json.loads(meta.read_text())
        record["value"] = str(other)
        meta.write_text(json.dumps(record))
    task = pathspec + "/start/1"

    def api(client):
        _raises(OutsideDatastore, lambda: client.Task(task).stdout)
        assert client.Task(task).cards() is None
        assert client.Task(task)["alpha"].data == 0.5
        assert isinstance(client.Task(pathspec + "/end/%s" % _end_task(parent, run_id)).stdout, str)

    return Case(parent, {task + "/stdout.log": "EIO", task + "/stderr.log": "EIO", task + "/cards": "ENOENT"},
                [task + "/alpha/repr.txt", task + "/task.json"], api)


def _end_task(parent: Path, run_id: str) -> str:
    step = parent / ".metaflow" / "KitchenFlow" / run_id / "end"
    return next(p.name for p in step.iterdir() if p.name.isdigit())


def include_outside(local_root: Path, tmp_path: Path, manifest: dict) -> Case:
    """The start task's IncludeFile `table` names an outside file; the copy's own IncludeFile data (the copy of
    `<parent>/data`) still serves when a url names it."""
    pathspec, run_id = _kitchen(manifest)
    parent = _copy(local_root, tmp_path, "KitchenFlow")  # with its IncludeFile data (copy_flows)
    secret = _secret_file(tmp_path, "table.csv", MARKER + b"\n")
    stored = task_dir(parent, "KitchenFlow", run_id, "start", "1")
    index = json.loads((stored / "0.data.json").read_text())
    blob = parent / ".metaflow" / "KitchenFlow" / "data" / index["objects"]["table"][:2] / index["objects"]["table"]
    included = pickle.loads(gzip.decompress(blob.read_bytes()))  # metaflow.includefile.IncludedFile

    def with_url(url: str) -> bytes:
        included._descriptor["url"] = url
        return pickle.dumps(included, protocol=4)

    original = included._descriptor["url"]
    inside = "local://%s/data/%s" % (parent, original.split("/data/", 1)[1])
    replace_artifact(parent, stored, "table", with_url("local://%s" % secret), info=index["info"]["table"])
    end = task_dir(parent, "KitchenFlow", run_id, "end", _end_task(parent, run_id))
    end_index = json.loads((end / "0.data.json").read_text())
    replace_artifact(parent, end, "table", with_url(inside), info=end_index["info"]["table"])
    task, end_task = pathspec + "/start/1", "%s/end/%s" % (pathspec, end.name)

    def api(client):
        _raises(OutsideDatastore, lambda: client.Task(task)["table"].data)
        assert client.Task(end_task)["table"].data.startswith("name,city")

    return Case(parent, {task + "/table/repr.txt": "EIO", task + "/table/content": "EIO"},
                [task + "/rows/repr.txt", end_task + "/table/content", end_task + "/table/repr.txt"], api)


def run_dir_link(local_root: Path, tmp_path: Path, manifest: dict) -> Case:
    """A run directory that is a link to a run outside the datastore: left out, the flow's other runs listed."""
    pathspec, run_id = _hello(manifest)
    parent = _copy(local_root, tmp_path, "HelloFlow")
    outside_run = tmp_path / "outside" / "run"
    shutil.copytree(parent / ".metaflow" / "HelloFlow" / run_id, outside_run)
    for log in outside_run.rglob("*_stdout.log"):
        log.write_bytes(MARKER + b"\n")
    (parent / ".metaflow" / "HelloFlow" / "4242").symlink_to(outside_run)

    def api(client):
        client.namespace(None)
        assert [run.id for run in client.Flow("HelloFlow")] == [run_id]
        _raises(client.MetaflowNotFound, lambda: client.Run("HelloFlow/4242"))

    return Case(parent, {"HelloFlow/4242": "ENOENT"}, [pathspec + "/start/1/task.json", pathspec + "/run.json"], api)


CASES = [card_link, card_dir_link, log_link, blob_link, sha_traversal, location_elsewhere, ds_root_elsewhere,
         include_outside, run_dir_link]


@pytest.mark.fuse
@pytest.mark.timeout(300)
@pytest.mark.parametrize("build", CASES, ids=[case.__name__ for case in CASES])
def test_nothing_outside_the_datastore_is_served(build, client_env, local_root, manifest, tmp_path, monkeypatch):
    case = build(local_root, tmp_path, manifest)
    with mounted(tmp_path / "mnt", "--datastore-root", str(case.parent), "--all-namespaces") as mount:
        report = crawl(mount.path)
        assert MARKER not in report.all_bytes()
        for path, expected in case.bad.items():
            if expected == "ENOENT":
                assert str(mount.path / path) not in report.paths
                assert not os.path.lexists(mount.path / path)
            else:
                assert report.errors.get(str(mount.path / path)) == expected, (path, report.errors)
        for path in case.good:
            assert report.contents.get(str(mount.path / path)), (path, report.errors.get(str(mount.path / path)))
        assert mount.process.poll() is None
        assert os.listdir(mount.path)
    for path in case.bad:
        shown = run_mffs("cat", "--datastore-root", str(case.parent), "--all-namespaces", path)
        assert shown.returncode == 1 and shown.stderr.splitlines()[-1].startswith("mffs: "), shown.stderr
        assert MARKER.decode() not in shown.stdout + shown.stderr
    for path in (good for good in case.good if not good.endswith(".pickle")):  # run_mffs decodes its output
        shown = run_mffs("cat", "--datastore-root", str(case.parent), "--all-namespaces", path)
        assert shown.returncode == 0 and shown.stdout, (path, shown.stderr)

    import client

    monkeypatch.setenv("METAFLOW_DATASTORE_SYSROOT_LOCAL", str(case.parent))
    client.metadata("local@%s" % case.parent)
    client.namespace(None)
    case.api(client)


# -- the checks themselves ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("key", ["../x", "a/../../x", "/etc/passwd", "a//b", "a/./b", "a/..", ".."])
def test_keys_that_leave_the_root_are_refused(key):
    with pytest.raises(OutsideDatastore):
        check_key(key)


@pytest.mark.parametrize("key", ["F/data/ab/ab12", "F/1/start/2/0.data.json", "_meta/_self.json", ".hidden/x..y",
                                 ""])
def test_ordinary_keys_pass(key):
    assert check_key(key) == key


@pytest.fixture
def store(tmp_path: Path) -> LocalStorage:
    """A datastore root with a file, a directory, and an outside directory holding the marker."""
    root = tmp_path / "root" / ".metaflow"
    (root / "F" / "d").mkdir(parents=True)
    (root / "F" / "d" / "file").write_bytes(b"inside")
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret").write_bytes(MARKER)
    return LocalStorage(str(root))


def test_links_out_of_the_root_are_refused_for_every_read(store, tmp_path):
    root = Path(store.root)
    (root / "F" / "file_link").symlink_to(tmp_path / "outside" / "secret")
    (root / "F" / "dir_link").symlink_to(tmp_path / "outside")
    (root / "F" / "up").symlink_to("../..")  # a relative link that climbs out
    for key in ("F/file_link", "F/dir_link/secret", "F/up/outside/secret", "F/d/../file_link", "/etc/hostname"):
        for read in (store.read, store.size, lambda k: store.open(k).read()):
            with pytest.raises(OutsideDatastore):
                read(key)
        if key != "F/file_link":  # local_path checks the directories; its caller opens with OPEN_FLAGS
            with pytest.raises(OutsideDatastore):
                store.local_path(key)
    with pytest.raises(OutsideDatastore):
        store.list("F/dir_link")
    assert store.read("F/d/file") == b"inside"


def test_links_that_stay_inside_keep_working(store):
    root = Path(store.root)
    (root / "F" / "alias").symlink_to("d")
    (root / "F" / "d" / "alias_file").symlink_to("file")
    (root / "G").symlink_to("F/d")
    for key in ("F/alias/file", "F/d/alias_file", "G/alias_file", "G/file"):
        assert store.read(key) == b"inside"
        assert store.size(key) == 6
        with store.open(key) as handle:
            assert handle.read() == b"inside"
    assert sorted(store.list("G")) == ["alias_file", "file"]
    assert store.exists("G/file") and not store.exists("G/missing") and not store.exists("missing/x")


def test_deep_keys_are_checked_at_every_level(store, tmp_path):
    """A key whose directories are all new (a run's end task and its _meta) is checked in one go when no component
    is a link; any link on the way is still followed only when it stays inside."""
    root = Path(store.root)
    (root / "F" / "r" / "s" / "t").mkdir(parents=True)
    (root / "F" / "r" / "s" / "t" / "f").write_bytes(b"inside")
    (root / "F" / "r" / "s" / "alias").symlink_to("t")
    (root / "F" / "r" / "out").symlink_to(tmp_path / "outside")
    (tmp_path / "outside" / "a" / "b").mkdir(parents=True)
    (tmp_path / "outside" / "a" / "b" / "secret").write_bytes(MARKER)
    for key in ("F/r/s/t/f", "F/r/s/alias/f"):
        assert LocalStorage(store.root).read(key) == b"inside"
        assert LocalStorage(store.root).list(key.rpartition("/")[0]) == ["f"]
    for key in ("F/r/out/a/b/secret", "F/r/out/a/b/../b/secret"):
        with pytest.raises(OutsideDatastore):
            LocalStorage(store.root).read(key)
    with pytest.raises(OutsideDatastore):
        LocalStorage(store.root).list("F/r/out/a/b")
    with pytest.raises(FileNotFoundError):
        LocalStorage(store.root).read("F/r/missing/x/y")


def test_a_wide_directory_is_checked_from_a_bounded_listing(store, tmp_path, monkeypatch):
    """The tasks of a step are checked with their siblings from one listing of the step, cut at `_LISTED_ENTRIES`
    entries (a step of 100,000 tasks would keep every key in every process that reads one task): what the reader
    keeps stays within that bound, and the tasks past it are checked one by one, links among them included."""
    monkeypatch.setattr(local_storage, "_LISTED_ENTRIES", 4)
    step = Path(store.root) / "F" / "r" / "s"
    for task in range(40):
        (step / str(task)).mkdir(parents=True)
        (step / str(task) / "f").write_bytes(b"inside")
    (step / "out").symlink_to(tmp_path / "outside")
    reader = LocalStorage(store.root)
    assert reader.read("F/r/s/0/f") == reader.read("F/r/s/1/f") == reader.read("F/r/s/2/f") == b"inside"
    assert len(reader._checked) <= 3 + 4 + 3  # F, F/r, F/r/s, the listed entries, the three tasks read
    for task in range(40):
        assert reader.read("F/r/s/%d/f" % task) == b"inside"
    with pytest.raises(OutsideDatastore):
        reader.read("F/r/s/out/secret")


def test_a_fifo_in_the_datastore_does_not_block_a_read(store):
    fifo = Path(store.root) / "F" / "d" / "fifo"
    os.mkfifo(fifo)
    assert store.read("F/d/fifo") == b""  # an open without O_NONBLOCK would wait for a writer forever


def test_read_ahead_reads_files_out_of_the_page_cache_and_nothing_outside(store, tmp_path):
    """Listings read a `_self.json` per run or task: `read_ahead` has the kernel read them all at once when the
    first that opens is not in the page cache (a flow's `data` directory, listed among its runs, has none).
    Through links out of the root, a FIFO or a bad key it reads nothing and waits for nothing."""
    root = Path(store.root)
    files = []
    for number in range(20):
        (root / "F" / str(number)).mkdir()
        files.append(root / "F" / str(number) / "_self.json")
        files[-1].write_bytes(b'{"n": %d}' % number)
    secret = tmp_path / "outside" / "secret"
    (root / "F" / "20").symlink_to(tmp_path / "outside")
    os.mkfifo(root / "F" / "d" / "fifo")
    make_cold(files + [secret])
    keys = ["F/%d/_self.json" % number for number in range(20)]
    store.read_ahead(["F/missing/_self.json", "F/20/secret", "F/d/fifo", "../outside/secret"] + keys)
    deadline = time.monotonic() + 5
    while not all(in_page_cache(path) for path in files):
        assert time.monotonic() < deadline, "the files were not read ahead"
        time.sleep(0.01)
    assert not in_page_cache(secret)
    assert [store.read(key) for key in keys] == [path.read_bytes() for path in files]


def test_read_ahead_reads_nothing_when_the_first_file_is_in_the_page_cache(store):
    root = Path(store.root)
    (root / "F" / "d" / "second").write_bytes(b"second")
    make_cold([root / "F" / "d" / "second"])
    assert store.read("F/d/file") == b"inside"  # now in the page cache
    store.read_ahead(["F/d/file", "F/d/second"])
    time.sleep(0.2)
    assert not in_page_cache(root / "F" / "d" / "second")


def test_blob_shas_must_be_shas(tmp_path):
    datastore = FlowDatastore.at(str(tmp_path), "F")
    for sha in ("../../../../etc/passwd", "AB" * 20, "ab" * 19, "ab" * 20 + "/", "zz" * 20, ""):
        with pytest.raises(ValueError, match="40 lowercase hex"):
            datastore.load_blob(sha)
        with pytest.raises(ValueError):
            datastore.stored_blob_size(sha)
    datastore.prefetch(["../x"])  # best effort: a bad sha there is left to its own read to report


def test_a_linked_blob_has_no_size_from_its_file(tmp_path):
    """stored_blob_size opens the blob itself: it must not follow a link (nor block on a FIFO)."""
    sha = "ab" * 20
    blob = tmp_path / ".metaflow" / "F" / "data" / "ab" / sha
    blob.parent.mkdir(parents=True)
    (tmp_path / "outside.gz").write_bytes(_secret_blob())
    blob.symlink_to(tmp_path / "outside.gz")
    datastore = FlowDatastore.at(str(tmp_path / ".metaflow"), "F")
    assert datastore.stored_blob_size(sha) is None
    with pytest.raises(OutsideDatastore):
        datastore.load_blob(sha)


def test_roots_other_than_the_configured_one_are_refused(tmp_path, monkeypatch):
    monkeypatch.delenv("MFFS_ALLOWED_ROOTS", raising=False)
    monkeypatch.setenv("METAFLOW_DATASTORE_SYSROOT_S3", "s3://team-bucket/metaflow")
    home = tmp_path / "home" / ".metaflow"
    home.mkdir(parents=True)
    (tmp_path / "alias").symlink_to(tmp_path / "home")
    roots = AllowedRoots(str(home))
    for root in (str(home), str(home) + "/", str(tmp_path / "alias" / ".metaflow"), "s3://team-bucket/metaflow/"):
        assert roots.check(root) == root.rstrip("/")
    refused = ["/etc", str(tmp_path), str(home / "F"), "", "relative/.metaflow", "s3://other-bucket/metaflow",
               "s3://team-bucket/other", "s3://team-bucket/metaflow/../other", "s3://team-bucket/metaflow/sub"]
    for root in refused:
        with pytest.raises(OutsideDatastore, match="MFFS_ALLOWED_ROOTS"):
            roots.check(root)
    monkeypatch.setenv("MFFS_ALLOWED_ROOTS", "s3://other-bucket, %s" % tmp_path)
    roots = AllowedRoots(str(home))
    for root in ("s3://other-bucket/metaflow", str(tmp_path / "x" / ".metaflow")):
        assert roots.check(root) == root
    with pytest.raises(OutsideDatastore):
        roots.check("/etc")


def test_includefile_contents_are_read_only_from_the_datastore(tmp_path, monkeypatch):
    for name in ("MFFS_ALLOWED_ROOTS", "METAFLOW_DATATOOLS_LOCALROOT", "METAFLOW_DATASTORE_SYSROOT_S3"):
        monkeypatch.delenv(name, raising=False)
    home = tmp_path / "home" / ".metaflow"
    home.mkdir(parents=True)
    payload = tmp_path / "home" / "data" / "F" / ("ab" * 20)
    payload.parent.mkdir(parents=True)
    payload.write_bytes(b"included")
    (tmp_path / "secret").write_bytes(MARKER)
    (payload.parent / "link").symlink_to(tmp_path / "secret")
    roots = AllowedRoots(str(home))
    assert roots.read_url("local://%s" % payload) == b"included"
    assert roots.read_url(str(payload)) == b"included"
    climbing = "local://%s/../../../../secret" % payload
    refused = ["local://%s" % (tmp_path / "secret"), str(tmp_path / "secret"), climbing,
               str(payload.parent / "link"), "s3://other-bucket/data/F/x", "secret", "file:///etc/hostname"]
    for url in refused:
        with pytest.raises(OutsideDatastore):
            roots.read_url(url)


def test_metadata_records_behind_links_are_left_out(client_env, tmp_path, manifest):
    """The local metadata provider reads `_meta` files with the same confinement: a run record that is a link out
    of the root is not a run, and the flow's other runs are still listed."""
    import client

    pathspec, run_id = _hello(manifest)
    parent = _copy(client_env, tmp_path, "HelloFlow")
    outside = tmp_path / "outside" / "_self.json"
    outside.parent.mkdir()
    record = parent / ".metaflow" / "HelloFlow" / run_id / "_meta" / "_self.json"
    outside.write_bytes(record.read_bytes())
    fake = parent / ".metaflow" / "HelloFlow" / "4243" / "_meta"
    fake.mkdir(parents=True)
    (fake / "_self.json").symlink_to(outside)
    client.metadata("local@%s" % parent)
    client.namespace(None)
    assert [run.id for run in client.Flow("HelloFlow")] == [run_id]
