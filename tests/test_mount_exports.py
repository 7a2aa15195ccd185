"""Real mounts over real Metaflow runs: typed exports read by their real consumers, cards/, code/, attempts/, and
the unpickling policy (a pickle that runs code on load never runs unless the mount has --trust-pickles).

Three mounts are shared by the whole module (each unmounted at the end, whatever happens):
  * `default`: the standard datastore, all namespaces, with the default (restricted) unpickling and
    --render-threshold 0, so every repr.txt and export is deferred: rendered when opened, not when stat'ed;
  * `trusted`: the standard datastore with --trust-pickles and the default threshold (rendered at first stat);
  * `exports`: tests/support/exportdata.py's datastore (matplotlib figure, two cards, code packages), trusted.
The expected values come from Metaflow's own client on the same datastores.
"""
from __future__ import annotations

import errno
import hashlib
import json
import os
import re
import subprocess
from pathlib import Path
from typing import Dict, Iterator

import numpy
import pandas
import pytest
from PIL import Image

from mffs import render
from tests.conftest import CLIENT_IDENTITY_ENV
from tests.support.datastores import PICKLE_MARKER_ENV, load_manifest
from tests.support.exportdata import CRAFTED_SAFE_FILE, CRAFTED_UNSAFE_MEMBERS, build_exports_datastore
from tests.support.mount import Mount, expected_task_record, mounted

pytestmark = [pytest.mark.fuse, pytest.mark.timeout(300)]
ADDRESS = re.compile(r" at 0x[0-9A-Fa-f]+")  # object addresses in reprs differ between processes


def _alice_env(marker: Path) -> dict:
    env = {name: value for name, value in os.environ.items() if name not in CLIENT_IDENTITY_ENV}
    env.update(USER="alice", **{PICKLE_MARKER_ENV: str(marker)})
    return env


@pytest.fixture(scope="module")
def markers(tmp_path_factory: pytest.TempPathFactory) -> Dict[str, Path]:
    """mount name -> the file that unpickling TypesFlow's `evil` artifact in that mount's daemon creates."""
    directory = tmp_path_factory.mktemp("markers")
    return {name: directory / ("%s-unpickled" % name) for name in ("default", "trusted", "exports")}


@pytest.fixture(scope="module")
def mounts(local_root: Path, markers: Dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Iterator[
    Dict[str, Mount]
]:
    base = tmp_path_factory.mktemp("mounts")
    exports_root = build_exports_datastore()
    standard = ("--datastore-root", str(local_root))
    with mounted(base / "default", *standard, "--all-namespaces", "--render-threshold", "0",
                 env=_alice_env(markers["default"])) as dflt:
        with mounted(base / "trusted", *standard, "--trust-pickles", env=_alice_env(markers["trusted"])) as trusted:
            with mounted(base / "exports", "--datastore-root", str(exports_root), "--trust-pickles",
                         env=_alice_env(markers["exports"])) as exports_mount:
                yield {"default": dflt, "trusted": trusted, "exports": exports_mount}


@pytest.fixture
def mf_exports(client_env):
    """Metaflow's client on the exports datastore."""
    import metaflow

    metaflow.metadata("local@%s" % build_exports_datastore())
    return metaflow


def types_task(mf, manifest):
    return mf.Run(manifest["runs"]["types"]["pathspec"])["start"].task


def read_checked(path: Path) -> bytes:
    """The file's bytes; its stat size (right after the open, for deferred files) must agree with them."""
    with open(path, "rb") as handle:
        size = os.fstat(handle.fileno()).st_size
        data = handle.read()
    assert size == len(data), path
    return data


# -- typed exports --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("mount_name", ["default", "trusted"])
def test_tables_arrays_and_json_read_back_equal_to_the_artifacts(mounts, mount_name, mf, manifest):
    task = types_task(mf, manifest)
    base = mounts[mount_name].path / task.pathspec
    frame = task["frame"].data
    read_checked(base / "frame" / "value.csv")
    pandas.testing.assert_frame_equal(pandas.read_csv(base / "frame" / "value.csv"), frame)  # a RangeIndex
    pandas.testing.assert_frame_equal(pandas.read_parquet(base / "frame" / "value.parquet"), frame)
    series = task["series"].data
    pandas.testing.assert_series_equal(
        pandas.read_csv(base / "series" / "value.csv").squeeze("columns"), series)
    pandas.testing.assert_series_equal(pandas.read_parquet(base / "series" / "value.parquet")[series.name], series)
    array = task["array"].data
    loaded = numpy.load(base / "array" / "value.npy")
    assert loaded.dtype == array.dtype and numpy.array_equal(loaded, array)
    for name in ("nested", "options", "settings", "int_value", "float_value", "bool_value", "none_value", "text"):
        with open(base / name / "value.json", encoding="utf-8") as handle:
            assert json.load(handle) == task[name].data, name
    assert json.loads(read_checked(base / "tup" / "value.json")) == list(task["tup"].data)
    assert json.loads(read_checked(base / "a_set" / "value.json")) == sorted(task["a_set"].data)
    assert json.loads(read_checked(base / "when" / "value.json")) == task["when"].data.isoformat()
    assert read_checked(base / "text" / "value.txt") == task["text"].data.encode("utf-8")
    assert read_checked(base / "raw" / "value.bin") == task["raw"].data
    assert read_checked(base / "big" / "value.bin") == task["big"].data  # above the default threshold too


def test_deferred_exports_report_their_size_once_opened(mounts, mf, manifest):
    """The default mount renders nothing at stat time (--render-threshold 0): sizes are 0 until an open renders
    the file; the exact size is then visible to the opener's own fstat (what pyarrow/DuckDB size files by)."""
    task = mf.Run(manifest["runs"]["kitchen"]["pathspec"])["join_outer"].task  # no other test opens its files
    path = mounts["default"].path / task.pathspec / "all_pairs" / "value.json"
    assert os.stat(path).st_size == 0
    data = read_checked(path)
    assert json.loads(data) == task["all_pairs"].data and os.stat(path).st_size == len(data)


def test_images_are_pngs(mounts, mf, manifest):
    task = types_task(mf, manifest)
    original = task["image"].data
    with Image.open(mounts["trusted"].path / task.pathspec / "image" / "value.png") as image:
        assert image.format == "PNG" and (image.mode, image.size) == (original.mode, original.size)
        assert image.tobytes() == original.tobytes()


def test_matplotlib_figures_are_pngs(mounts, mf_exports):
    exports_run = mf_exports.Run(load_manifest(build_exports_datastore())["runs"]["first"]["pathspec"])
    start = exports_run["start"].task
    figure = start["figure"].data
    with Image.open(mounts["exports"].path / start.pathspec / "figure" / "value.png") as image:
        assert image.format == "PNG"
        assert image.size == tuple(round(inches * figure.dpi) for inches in figure.get_size_inches())


def test_include_file_is_served_as_its_content(mounts, mf, manifest):
    task = mf.Run(manifest["runs"]["kitchen"]["pathspec"])["start"].task
    table = task["table"].data  # Metaflow's client gives the included file's text
    for mount in (mounts["default"], mounts["trusted"]):
        assert read_checked(mount.path / task.pathspec / "table" / "content") == table.encode("utf-8")


def test_listed_exports_are_the_ones_that_fit_the_value(mounts, mf, manifest):
    base = types_task(mf, manifest).pathspec
    common = {"repr.txt", "data.pickle", "meta.json"}
    listed = {
        mount_name: {name: set(os.listdir(mounts[mount_name].path / base / name)) - common
                     for name in ("frame", "series", "array", "text", "raw", "nested", "image", "point", "evil")}
        for mount_name in ("default", "trusted")
    }
    for mount_name in ("default", "trusted"):
        assert listed[mount_name]["frame"] == listed[mount_name]["series"] == {"value.csv", "value.parquet"}
        assert listed[mount_name]["array"] == {"value.npy"}
        assert listed[mount_name]["text"] == {"value.json", "value.txt"}
        assert listed[mount_name]["raw"] == {"value.bin"}
        assert listed[mount_name]["nested"] == {"value.json"}
        assert listed[mount_name]["point"] == listed[mount_name]["evil"] == set()  # classes: nothing fits
        # PIL images are data on the restricted unpickler's allow-list: both mounts serve them as PNG
        assert listed[mount_name]["image"] == {"value.png"}


# -- unpickling policy ------------------------------------------------------------------------------------------


def test_default_mount_never_runs_pickled_code_while_crawled(mounts, markers, mf, manifest):
    task_dir = mounts["default"].path / types_task(mf, manifest).pathspec
    for command in (["ls", "-lR", "."], ["find", ".", "-type", "f", "-exec", "cat", "{}", "+"],
                    ["grep", "-r", "untrusted", "."]):
        done = subprocess.run(command, cwd=task_dir, capture_output=True, timeout=120)
        assert done.returncode == 0, (command, done.stderr[-2000:])
    assert b"<untrusted posix.system" in done.stdout  # grep found evil's placeholder
    assert not markers["default"].exists()
    evil = (task_dir / "evil" / "repr.txt").read_text()
    assert evil == "<untrusted posix.system: not loaded; mount with --trust-pickles to load it>\n"
    assert (task_dir / "point" / "repr.txt").read_text().startswith("<untrusted __main__.Point:")
    image_repr = (task_dir / "image" / "repr.txt").read_text()
    assert ADDRESS.sub("", image_repr) == ADDRESS.sub("", repr(types_task(mf, manifest)["image"].data)) + "\n"
    assert hashlib.sha1((task_dir / "evil" / "data.pickle").read_bytes()).hexdigest() == types_task(
        mf, manifest)["evil"].sha  # the raw pickle is always served
    assert not markers["default"].exists()


def test_trusted_mount_loads_like_metaflows_client(mounts, markers, mf, manifest):
    task = types_task(mf, manifest)
    task_dir = mounts["trusted"].path / task.pathspec
    assert not markers["trusted"].exists()
    (task_dir / "evil" / "repr.txt").read_bytes()
    assert markers["trusted"].exists()  # the pickled os.system ran, as it does for metaflow's `.data`
    image_repr = (task_dir / "image" / "repr.txt").read_text()
    assert ADDRESS.sub("", image_repr) == ADDRESS.sub("", repr(task["image"].data)) + "\n"
    with pytest.raises(OSError) as raised:  # a class of the flow file cannot be imported here, as in Metaflow
        (task_dir / "point" / "repr.txt").read_bytes()
    assert raised.value.errno == errno.EIO


# -- cards ------------------------------------------------------------------------------------------------------


def test_cards_are_served_byte_identical(mounts, mf_exports):
    from metaflow.cards import get_cards

    root = build_exports_datastore()
    for scenario in ("first", "second"):
        task = mf_exports.Run(load_manifest(root)["runs"][scenario]["pathspec"])["start"].task
        cards_dir = mounts["exports"].path / task.pathspec / "cards"
        cards = list(get_cards(task))
        expected = {"%s%s-0.html" % (card.type, "-" + card.id if card.id else ""): card for card in cards}
        assert sorted(os.listdir(cards_dir)) == sorted(expected) == ["blank-summary-0.html", "default-0.html"]
        for name, card in expected.items():
            served = read_checked(cards_dir / name)
            assert served == (root / ".metaflow" / "mf.cards" / card.path).read_bytes()
            assert served.decode("utf-8") == card.get()
    end = mounts["exports"].path / task.parent.parent["end"].task.pathspec
    assert "cards" not in os.listdir(end)


# -- code packages ----------------------------------------------------------------------------------------------


def _tree_digest(top: Path) -> Dict[str, str]:
    """relative path -> sha1 of every file under `top` ('dir' for directories)."""
    digest = {}
    for directory, dirs, files in os.walk(top):
        for name in dirs:
            digest[os.path.relpath(os.path.join(directory, name), top)] = "dir"
        for name in files:
            path = os.path.join(directory, name)
            digest[os.path.relpath(path, top)] = hashlib.sha1(Path(path).read_bytes()).hexdigest()
    return digest


def test_code_matches_metaflows_extracted_package(mounts, mf, manifest):
    mf.namespace(None)  # the code package run is bob's (the default mount shows all namespaces)
    run = mf.Run(manifest["runs"]["codepkg"]["pathspec"])
    code_dir = mounts["default"].path / run.pathspec / "code"
    extracted = run.code.extract()
    try:
        assert _tree_digest(code_dir) == _tree_digest(Path(extracted.name))
        diff = subprocess.run(["diff", "-r", str(code_dir), extracted.name], capture_output=True, timeout=60)
        assert diff.returncode == 0, diff.stdout[-2000:]
    finally:
        extracted.cleanup()
    assert read_checked(code_dir / run.code.script_name) == run.code.flowspec
    kitchen = mounts["default"].path / manifest["runs"]["kitchen"]["pathspec"]
    assert "code" not in os.listdir(kitchen)  # no package
    with pytest.raises(FileNotFoundError):
        os.stat(kitchen / "code")


def test_two_runs_code_diffs_equal_and_unsafe_members_are_never_served(mounts, mf_exports):
    import client

    root = build_exports_datastore()
    client.metadata("local@%s" % root)
    runs = load_manifest(root)["runs"]
    first, second, crafted = (mounts["exports"].path / runs[name]["pathspec"] / "code"
                              for name in ("first", "second", "crafted"))
    diff = subprocess.run(["diff", "-r", str(first), str(second)], capture_output=True, timeout=60)
    assert diff.returncode == 0, diff.stdout[-2000:]
    extracted = mf_exports.Run(runs["first"]["pathspec"]).code.extract()
    try:
        assert _tree_digest(first) == _tree_digest(Path(extracted.name))
    finally:
        extracted.cleanup()
    # Metaflow's own extract() must not be run on the crafted package: it writes `../escaped.txt` outside its
    # temporary directory. The user files are what this project's client says they are (what extract() would take).
    crafted_code = client.Run(runs["crafted"]["pathspec"]).code
    user_members = crafted_code.user_members()
    assert set(CRAFTED_UNSAFE_MEMBERS) <= {member.name for member in user_members}  # in the package...
    served = _tree_digest(crafted)
    for name in CRAFTED_UNSAFE_MEMBERS:  # ...and never served, under any spelling
        assert os.path.basename(name) not in {os.path.basename(path) for path in served}, name
    safe_name, safe_bytes = CRAFTED_SAFE_FILE
    assert read_checked(crafted / os.path.normpath(safe_name)) == safe_bytes
    regular = {os.path.normpath(member.name) for member in user_members
               if member.isfile() and member.name not in CRAFTED_UNSAFE_MEMBERS}
    assert {path for path, kind in served.items() if kind != "dir"} == regular


# -- attempts ---------------------------------------------------------------------------------------------------


def test_attempts_match_metaflows_task_per_attempt(mounts, mf, manifest):
    task = mf.Run(manifest["runs"]["kitchen"]["pathspec"])["branch_b"].task
    task_dir = mounts["default"].path / task.pathspec
    assert task.current_attempt == 1  # the retried task: attempt 0 failed, attempt 1 passed
    assert sorted(os.listdir(task_dir / "attempts")) == ["0", "1"]
    for number in (0, 1):
        attempt = mf.Task(task.pathspec, attempt=number)
        attempt_dir = task_dir / "attempts" / str(number)
        assert read_checked(attempt_dir / "stdout.log") == attempt.stdout.encode("utf-8")
        assert read_checked(attempt_dir / "stderr.log") == attempt.stderr.encode("utf-8")
        record = json.loads(read_checked(attempt_dir / "task.json"))
        record["parents"], record["children"] = sorted(record["parents"]), sorted(record["children"])
        assert record == expected_task_record(attempt)
        assert sorted((m["name"], m["value"], m["type"], m["created_at"])
                      for m in json.loads(read_checked(attempt_dir / "metadata.json"))) == sorted(
            (m.name, m.value, m.type, render.iso_time(m.created_at)) for m in attempt.metadata)
        listed = set(os.listdir(attempt_dir))
        files = {"task.json", "metadata.json", "stdout.log", "stderr.log"}
        files |= {"exception.txt"} if attempt.exception is not None else set()
        assert listed == files | {artifact.id for artifact in attempt}
        if attempt.exception is not None:
            assert read_checked(attempt_dir / "exception.txt").decode().rstrip("\n") == str(
                attempt.exception).rstrip("\n")
        for artifact in attempt:
            artifact_dir = attempt_dir / artifact.id
            assert hashlib.sha1(read_checked(artifact_dir / "data.pickle")).hexdigest() == artifact.sha
            if artifact.id != "table":
                assert read_checked(artifact_dir / "repr.txt").decode() == repr(artifact.data) + "\n"
    assert read_checked(task_dir / "stdout.log") == read_checked(task_dir / "attempts" / "1" / "stdout.log")
    once = mounts["default"].path / mf.Run(manifest["runs"]["kitchen"]["pathspec"])["start"].task.pathspec
    assert "attempts" in os.listdir(task_dir) and "attempts" not in os.listdir(once)  # listed when retried...
    assert os.listdir(once / "attempts") == ["0"]  # ...reachable always
    for missing in ("2", "01", "-1", "x"):
        with pytest.raises(FileNotFoundError):
            os.stat(task_dir / "attempts" / missing)


def test_an_export_that_cannot_render_is_eio_for_that_file_only(mounts, mf_exports):
    start = mf_exports.Run(load_manifest(build_exports_datastore())["runs"]["first"]["pathspec"])["start"].task
    artifact_dir = mounts["exports"].path / start.pathspec / "clashing_keys"
    assert "value.json" in os.listdir(artifact_dir)  # listed from the type (a dict), before anything is loaded
    assert os.stat(artifact_dir / "value.json").st_size == 0  # failed when stat'ed: size 0, EIO when opened
    with pytest.raises(OSError) as raised:
        (artifact_dir / "value.json").read_bytes()
    assert raised.value.errno == errno.EIO
    assert (artifact_dir / "repr.txt").read_text() == repr(start["clashing_keys"].data) + "\n"
    assert "cannot render" in mounts["exports"].log() and "both become the JSON key" in mounts["exports"].log()
