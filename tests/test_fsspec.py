"""`mffs://` through fsspec (mffs/filesystem.py), found by its `fsspec.specs` entry point, on the standard
datastore made by real Metaflow runs: what pandas, numpy, DuckDB and `fsspec.open` read equals the artifacts
Metaflow's client loads, and the tree it serves is the mount's."""
from __future__ import annotations

import hashlib
import io
import os
from pathlib import Path

import fsspec
import numpy
import pandas
import pytest

from tests.support.mount import mounted
from tests.test_imports import imported_top_level_modules

pytestmark = pytest.mark.timeout(180)


@pytest.fixture
def options(client_env: Path) -> dict:
    return {"datastore_root": str(client_env), "all_namespaces": True}


@pytest.fixture
def fs(options: dict):
    return fsspec.filesystem("mffs", **options)


@pytest.fixture
def types_task(mf, manifest):
    return mf.Run(manifest["runs"]["types"]["pathspec"])["start"].task


def test_the_entry_point_names_the_filesystem_and_fsspec_is_loaded_only_for_it(fs) -> None:
    assert type(fs).__module__ == "mffs.filesystem" and fs.protocol == "mffs"
    loaded = imported_top_level_modules("import mffs.cli, mffs.tree; mffs.cli.build_parser()")
    assert "mffs" in loaded and "fsspec" not in loaded


def test_pandas_and_numpy_read_the_exports_equal_to_the_artifacts(options, types_task) -> None:
    url = "mffs://%s" % types_task.pathspec
    frame = types_task["frame"].data
    pandas.testing.assert_frame_equal(pandas.read_parquet(url + "/frame/value.parquet", storage_options=options),
                                      frame)
    pandas.testing.assert_frame_equal(pandas.read_csv(url + "/frame/value.csv", storage_options=options), frame)
    series = types_task["series"].data
    read = pandas.read_csv(url + "/series/value.csv", storage_options=options).squeeze("columns")
    pandas.testing.assert_series_equal(read, series)
    with fsspec.open(url + "/array/value.npy", **options) as handle:
        numpy.testing.assert_array_equal(numpy.load(handle), types_task["array"].data)


def test_duckdb_reads_a_parquet_export_through_the_registered_filesystem(fs, types_task) -> None:
    import duckdb

    connection = duckdb.connect()
    connection.register_filesystem(fs)
    frame = types_task["frame"].data
    query = "SELECT * FROM read_parquet('mffs://%s/frame/value.parquet')" % types_task.pathspec
    pandas.testing.assert_frame_equal(connection.sql(query).df(), frame, check_dtype=False)


def test_every_data_pickle_of_a_run_has_its_sha_and_ranged_reads_are_slices(fs, mf, manifest) -> None:
    run = mf.Run(manifest["runs"]["kitchen"]["pathspec"])
    checked = 0
    for step in run:
        for task in step:
            for artifact in task:
                path = "%s/%s/data.pickle" % (task.pathspec, artifact.id)
                data = fs.cat_file(path)
                assert hashlib.sha1(data).hexdigest() == artifact.sha, path
                assert fs.info(path)["size"] == len(data)
                for start, end in ((0, 1), (3, len(data) // 2), (len(data) - 5, None), (-4, None), (2, -2)):
                    assert fs.cat_file(path, start, end) == data[start:end], (path, start, end)
                with fs.open(path) as handle:
                    handle.seek(len(data) // 3)
                    assert handle.read(7) == data[len(data) // 3:][:7]
                checked += 1
    assert checked > 20


def test_find_equals_os_walk_of_a_real_mount(fs, client_env, manifest, tmp_path) -> None:
    pathspec = manifest["runs"]["kitchen"]["pathspec"]
    with mounted(tmp_path / "mnt", "--datastore-root", str(client_env), "--all-namespaces") as mount:
        top = mount.path / pathspec
        on_mount = {}
        for directory, dirs, files in os.walk(top):
            for name in dirs + files:
                path = os.path.join(directory, name)
                stat = os.lstat(path)
                kind = "directory" if os.path.isdir(path) else "file"
                on_mount[os.path.relpath(path, mount.path)] = (kind, stat.st_size if kind == "file" else None)
    found = fs.find(pathspec, withdirs=True, detail=True)
    assert found.pop(pathspec)["type"] == "directory"  # fsspec's find names the top too, os.walk does not
    through_fsspec = {name: (info["type"], info["size"] if info["type"] == "file" else None)
                      for name, info in found.items()}
    assert len(on_mount) > 100
    assert through_fsspec == on_mount


def test_links_are_listed_as_links_and_paths_through_them_resolve(fs, mf, manifest) -> None:
    latest = mf.Flow("KitchenFlow").latest_run
    listed = {info["name"]: info for info in fs.ls("KitchenFlow")}
    assert listed["KitchenFlow/latest"]["type"] == "link"
    assert listed["KitchenFlow/latest"]["destination"] == latest.id
    through_link = fs.ls("KitchenFlow/latest", detail=False)
    assert sorted(through_link) == sorted(name.replace(latest.id, "latest", 1)
                                          for name in fs.ls("KitchenFlow/" + latest.id, detail=False))
    assert fs.cat_file("mffs://KitchenFlow/latest/run.json") == fs.cat_file("KitchenFlow/%s/run.json" % latest.id)
    found = fs.find("KitchenFlow", withdirs=True)
    assert "KitchenFlow/latest" in found and "KitchenFlow/%s/start" % latest.id in found
    assert not [path for path in found if path.startswith("KitchenFlow/latest/")]  # not descended, as os.walk
    assert fs.glob("KitchenFlow/%s/*/*/task.json" % latest.id)


def test_missing_paths_raise_file_not_found_and_writes_fail(fs, manifest) -> None:
    pathspec = manifest["runs"]["kitchen"]["pathspec"]
    for missing in ("NoSuchFlow", pathspec + "/nostep", pathspec + "/run.json/x"):
        with pytest.raises((FileNotFoundError, NotADirectoryError)):
            fs.info(missing)
    with pytest.raises(FileNotFoundError):
        fs.cat_file(pathspec + "/nostep/1/stdout.log")
    assert not fs.exists(pathspec + "/nostep")
    for write in (lambda: fs.pipe_file(pathspec + "/new.txt", b"x"), lambda: fs.open(pathspec + "/new", "wb"),
                  lambda: fs.mkdir(pathspec + "/d"), lambda: fs.rm(pathspec + "/run.json"),
                  lambda: fs.touch(pathspec + "/t"), lambda: fs.mv(pathspec + "/run.json", pathspec + "/r")):
        with pytest.raises(OSError, match="read-only"):
            write()
    assert fs.cat_file(pathspec + "/run.json")  # still there


def test_filesystems_of_two_datastores_live_in_one_process(fs, options, manifest, tmp_path) -> None:
    from tests.support.hostile import copy_flows

    other_root = copy_flows(Path(options["datastore_root"]), tmp_path / "other", ["HelloFlow"])
    other = fsspec.filesystem("mffs", datastore_root=str(other_root), all_namespaces=True)
    assert other.ls("", detail=False) == ["HelloFlow"]
    assert "KitchenFlow" in fs.ls("", detail=False)  # the first one still serves its own datastore
    kitchen = manifest["runs"]["kitchen"]["pathspec"]
    assert fs.cat_file(kitchen + "/run.json")
    with pytest.raises(FileNotFoundError):
        other.info(kitchen)


def test_open_reads_a_deferred_file_with_its_exact_size(fs, types_task) -> None:
    path = "%s/frame/repr.txt" % types_task.pathspec
    with fs.open(path) as handle:
        data = handle.read()
        assert handle.size == len(data) > 0
    assert data.decode() == repr(types_task["frame"].data) + "\n"
    assert io.BytesIO(fs.cat_file(path, 0, 10)).read() == data[:10]


def test_the_processs_own_client_settings_are_left_as_they_were(fs, clients, client_env, manifest) -> None:
    ours = clients["client"]
    ours.namespace("user:alice")
    assert ours.get_trust_pickles() is True
    fs.ls("", detail=False)  # untrusted, every namespace
    other = fsspec.filesystem("mffs", datastore_root=str(client_env), namespace="user:bob", trust_pickles=True)
    other.ls("", detail=False)
    assert ours.get_namespace() == "user:alice" and ours.get_trust_pickles() is True
    kitchen = manifest["runs"]["kitchen"]["pathspec"]
    assert ours.Run(kitchen).data is not None
