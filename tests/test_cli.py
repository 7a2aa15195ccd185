"""`mffs` command line: help, `ls`/`cat` without FUSE, and the one-line errors of `mount`/`umount`."""
from __future__ import annotations

import os

import pytest

from tests.support.mount import is_mounted, mounted, run_mffs

pytestmark = pytest.mark.timeout(120)


def test_help_documents_commands_and_options():
    top = run_mffs("--help")
    assert top.returncode == 0
    for command in ("mount", "umount", "ls", "cat"):
        assert command in top.stdout
    mount_help = run_mffs("mount", "--help").stdout
    for option in ("--namespace", "--all-namespaces", "--datastore-root", "--foreground", "--debug",
                   "--allow-other", "--attr-ttl", "--readahead", "--threads", "--refresh", "--memory-mb",
                   "--render-threshold", "--repr-limit", "--trust-pickles", "PATHSPEC"):
        assert option in mount_help, option


def test_ls_lists_like_the_mount(client_env, mf, manifest):
    pathspec = manifest["runs"]["kitchen"]["pathspec"]
    listed = run_mffs("ls", pathspec)
    assert listed.returncode == 0, listed.stderr
    assert listed.stdout.split() == sorted(["run.json", "parameters.json"] + [s.id for s in mf.Run(pathspec)])
    flows = run_mffs("ls")
    assert flows.stdout.split() == sorted(flow.id for flow in mf.Metaflow().flows)
    long = run_mffs("ls", "-l", "FailFlow")
    assert "latest -> %s" % mf.Flow("FailFlow").latest_run.id in long.stdout
    through_link = run_mffs("ls", "KitchenFlow/latest")
    assert through_link.stdout == run_mffs("ls", "KitchenFlow/" + mf.Flow("KitchenFlow").latest_run.id).stdout


def test_cat_prints_file_bytes(client_env, mf, manifest):
    task = mf.Run(manifest["runs"]["kitchen"]["pathspec"])["start"].task
    printed = run_mffs("cat", task.pathspec + "/stdout.log", task.pathspec + "/rows/repr.txt")
    assert printed.returncode == 0, printed.stderr
    assert printed.stdout == task.stdout + repr(task["rows"].data) + "\n"


def test_cat_and_ls_errors_are_one_line(client_env):
    missing = run_mffs("cat", "KitchenFlow/none/run.json")
    assert missing.returncode == 1
    assert missing.stderr == "mffs: /KitchenFlow/none: No such file or directory\n"
    directory = run_mffs("cat", "KitchenFlow")
    assert directory.returncode == 1 and "Is a directory" in directory.stderr


def test_no_datastore_found(client_env, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    result = run_mffs("ls", "--datastore-root", str(empty))
    assert result.returncode == 1
    assert result.stderr == "mffs: no datastore found: %s has no .metaflow directory\n" % empty
    mountpoint = tmp_path / "mnt"
    mountpoint.mkdir()
    mounted_result = run_mffs("mount", str(mountpoint), "--datastore-root", str(empty))
    assert mounted_result.returncode == 1 and "no datastore found" in mounted_result.stderr
    assert not is_mounted(mountpoint)


def test_mount_errors(client_env, tmp_path):
    root = str(client_env)
    missing = run_mffs("mount", str(tmp_path / "nowhere"), "--datastore-root", root)
    assert (missing.returncode, missing.stderr) == (1, "mffs: mountpoint %s does not exist\n" % (tmp_path / "nowhere"))
    full = tmp_path / "full"
    full.mkdir()
    (full / "file").write_text("x")
    not_empty = run_mffs("mount", str(full), "--datastore-root", root)
    assert (not_empty.returncode, not_empty.stderr) == (1, "mffs: mountpoint %s is not empty\n" % full)
    mountpoint = tmp_path / "mnt"
    mountpoint.mkdir()
    no_threads = run_mffs("mount", str(mountpoint), "--threads", "0", "--datastore-root", root)
    assert no_threads.returncode == 2
    assert no_threads.stderr.splitlines()[-1] == "mffs mount: error: argument --threads: must be at least 1"
    unknown = run_mffs("mount", str(mountpoint), "NoSuchFlow/1", "--datastore-root", root)
    assert unknown.returncode == 1
    assert unknown.stderr.startswith("mffs: unknown pathspec 'NoSuchFlow/1'")
    assert not is_mounted(mountpoint)
    with mounted(mountpoint, "--datastore-root", root):
        again = run_mffs("mount", str(mountpoint), "--datastore-root", root)
        assert again.returncode == 1 and "is already mounted" in again.stderr


def test_missing_fusermount_names_the_package(client_env, tmp_path):
    mountpoint = tmp_path / "mnt"
    mountpoint.mkdir()
    env = dict(os.environ, PATH=str(tmp_path))  # no fusermount on PATH (python is run by absolute path)
    result = run_mffs("mount", str(mountpoint), env=env)
    assert result.returncode == 1
    assert result.stderr == "mffs: fusermount3 not found: install the fuse3 package (e.g. apt-get install fuse3)\n"


def test_umount_of_something_not_mounted(tmp_path):
    result = run_mffs("umount", str(tmp_path))
    assert (result.returncode, result.stderr) == (1, "mffs: %s is not mounted\n" % tmp_path)


def test_cat_unpickles_untrusted_only_with_trust_pickles(client_env, mf, manifest, tmp_path):
    task = mf.Run(manifest["runs"]["types"]["pathspec"])["start"].task
    marker = tmp_path / "unpickled"
    env = dict(os.environ, **{manifest["pickle_marker_env"]: str(marker)})
    evil = task.pathspec + "/evil/repr.txt"
    listed = run_mffs("ls", "-l", task.pathspec + "/evil", env=env)
    restricted = run_mffs("cat", evil, env=env)
    assert (listed.returncode, restricted.returncode) == (0, 0)
    assert restricted.stdout == "<untrusted posix.system: not loaded; mount with --trust-pickles to load it>\n"
    assert not marker.exists()
    trusted = run_mffs("cat", "--trust-pickles", evil, env=env)
    assert trusted.returncode == 0, trusted.stderr
    assert marker.exists()


def test_backend_errors_are_one_line(client_env):
    result = run_mffs("ls", "/", "--metadata", "service@http://127.0.0.1:1")
    assert result.returncode == 1
    assert result.stderr.startswith("mffs: backend error: ") and result.stderr.count("\n") == 1, result.stderr
    assert "127.0.0.1:1" in result.stderr


def test_unknown_user_is_one_line_naming_the_ways_out(client_env, monkeypatch):
    monkeypatch.setenv("USER", "root")  # root is not a user name for Metaflow, and nothing else names one
    result = run_mffs("ls", "/")
    assert result.returncode == 1
    assert result.stderr.count("\n") == 1 and "METAFLOW_USER" in result.stderr, result.stderr
    assert "--all-namespaces" in result.stderr
    assert run_mffs("ls", "/", "--all-namespaces").returncode == 0


INVALID_VALUES = [
    ("--refresh", "-1", "must be greater than 0"),
    ("--refresh", "0", "must be greater than 0"),
    ("--refresh", "nan", "must be a finite number"),
    ("--refresh", "soon", "invalid float value: 'soon'"),
    ("--attr-ttl", "-1", "must be at least 0"),
    ("--attr-ttl", "inf", "must be a finite number"),
    ("--memory-mb", "16", "must be at least 32"),
    ("--memory-mb", "1.5", "invalid int value: '1.5'"),
    ("--render-threshold", "-1", "must be at least 0"),
    ("--repr-limit", "-1", "must be at least 0"),
    ("--readahead", "-1", "must be at least 0"),
    ("--threads", "0", "must be at least 1"),
]


@pytest.mark.parametrize("option, value, message", INVALID_VALUES)
def test_invalid_option_values_are_refused_in_one_line(tmp_path, option, value, message):
    (tmp_path / "mnt").mkdir()
    result = run_mffs("mount", str(tmp_path / "mnt"), option, value)
    assert result.returncode == 2, result.stderr
    errors = [line for line in result.stderr.splitlines() if "error" in line]
    assert errors == ["mffs mount: error: argument %s: %s" % (option, message)], result.stderr
    assert result.stderr.splitlines()[-1] == errors[0]
    assert not is_mounted(tmp_path / "mnt")


@pytest.mark.parametrize("command", ["ls", "cat"])
def test_invalid_source_options_are_refused_by_ls_and_cat(command):
    result = run_mffs(command, "--repr-limit=-5", "KitchenFlow")
    assert result.returncode == 2
    assert result.stderr.splitlines()[-1] == "mffs %s: error: argument --repr-limit: must be at least 0" % command
