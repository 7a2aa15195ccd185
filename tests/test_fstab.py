"""The fstab form (mffs/fstab.py): `mount -t fuse.mffs SOURCE MOUNTPOINT -o OPTIONS` through the system's own
mount(8) and mount.fuse3, and `umount`; the translation of OPTIONS and its one-line refusals."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Iterator

import pytest

from mffs.cli import _commands, build_parser
from mffs.fstab import mount_arguments
from tests.support.hostile import wait_for
from tests.support.mount import REPO, force_unmount, is_mounted, run_mffs

pytestmark = [pytest.mark.fuse, pytest.mark.timeout(120)]

# mount(8) runs its helpers without PATH, so mount.fuse3's `sh -c 'mffs ...'` finds `mffs` only in sh's default
# directories: the test puts a launcher of this checkout's mffs in the first of them, and takes it away after.
LAUNCHER = Path("/usr/local/sbin/mffs")


@pytest.fixture
def launcher() -> Iterator[Path]:
    backup = LAUNCHER.with_name("mffs.before-mffs-test")
    if LAUNCHER.exists() or LAUNCHER.is_symlink():
        LAUNCHER.rename(backup)
    LAUNCHER.parent.mkdir(parents=True, exist_ok=True)
    LAUNCHER.write_text('#!/bin/sh\nPYTHONPATH="%s" exec "%s" -m mffs.cli "$@"\n' % (REPO, sys.executable))
    LAUNCHER.chmod(0o755)
    try:
        yield LAUNCHER
    finally:
        LAUNCHER.unlink()
        if backup.exists() or backup.is_symlink():
            backup.rename(LAUNCHER)


def mount_parser():
    return _commands(build_parser())["mount"]


def test_mount_t_fuse_mffs_mounts_with_fstab_options_and_umount_unmounts(launcher, client_env, mf, tmp_path):
    mountpoint = tmp_path / "runs"
    mountpoint.mkdir()
    try:
        done = subprocess.run(["mount", "-t", "fuse.mffs", str(client_env), str(mountpoint),
                               "-o", "ro,nosuid,nodev,all_namespaces,refresh=2,x-systemd.automount"],
                              cwd=REPO, capture_output=True, text=True, timeout=90)
        assert done.returncode == 0, done.stderr
        assert is_mounted(mountpoint)
        mf.namespace(None)  # all_namespaces
        assert sorted(os.listdir(mountpoint)) == sorted(flow.id for flow in mf.Metaflow().flows)
        hello = mf.Flow("HelloFlow").latest_run
        assert (mountpoint / "HelloFlow" / "latest" / "run.json").read_text().count(hello.pathspec) == 1
        mounts = [line.split() for line in Path("/proc/self/mounts").read_text().splitlines()]
        assert [fields[2] for fields in mounts if fields[1] == str(mountpoint)] == ["fuse.mffs"]
        unmounted = subprocess.run(["umount", str(mountpoint)], capture_output=True, text=True, timeout=30)
        assert unmounted.returncode == 0, unmounted.stderr
        assert wait_for(lambda: not is_mounted(mountpoint))
        assert os.listdir(mountpoint) == []
    finally:
        force_unmount(mountpoint)


def test_mount_t_fuse_mffs_refuses_an_unknown_option_in_one_line(launcher, client_env, tmp_path):
    mountpoint = tmp_path / "runs"
    mountpoint.mkdir()
    try:
        done = subprocess.run(["mount", "-t", "fuse.mffs", str(client_env), str(mountpoint), "-o", "ro,colour=red"],
                              cwd=REPO, capture_output=True, text=True, timeout=60)
        assert done.returncode != 0
        assert done.stderr == "mffs: unknown mount option 'colour=red'\n"
        assert not is_mounted(mountpoint)
    finally:
        force_unmount(mountpoint)


def test_options_become_the_mount_commands_own(tmp_path):
    argv, environment = mount_arguments(
        ["/data", "/mnt/runs", "-o", "ro,defaults,_netdev,namespace=user:bob,trust_pickles,readahead=0",
         "-o", "pathspec=DemoFlow/12,metadata=service@http://md:8080,x-systemd.requires=network.target"],
        mount_parser())
    assert argv == ["mount", "/mnt/runs", "--datastore-root", "/data", "--namespace", "user:bob", "--trust-pickles",
                    "--readahead", "0", "--metadata", "service@http://md:8080", "DemoFlow/12"]
    assert environment == {}
    argv, environment = mount_arguments(["s3://bucket/team/", "/mnt/runs"], mount_parser())
    assert argv == ["mount", "/mnt/runs"] and environment == {"METAFLOW_DATASTORE_SYSROOT_S3": "s3://bucket/team"}
    assert mount_arguments(["mffs", "/m", "-o", "all_namespaces"], mount_parser())[0] == [
        "mount", "/m", "--all-namespaces"]


@pytest.mark.parametrize("options, message", [
    ("rw", "mffs is read-only: mount it with ro, not rw"),
    ("ro,colour=red", "unknown mount option 'colour=red'"),
    ("namespace", "mount option 'namespace' needs a value (namespace=...)"),
    ("all_namespaces=yes", "mount option 'all_namespaces' takes no value"),
])
def test_wrong_options_are_one_line_and_exit_2(client_env, tmp_path, options, message):
    done = run_mffs(str(client_env), str(tmp_path), "-o", options)
    assert (done.returncode, done.stderr) == (2, "mffs: %s\n" % message)


def test_the_fstab_form_goes_through_the_mount_commands_checks(client_env, tmp_path):
    # an option value the mount command refuses is refused as there (argparse: one line after its usage, exit 2)
    done = run_mffs(str(client_env), str(tmp_path), "-o", "threads=0")
    assert done.returncode == 2 and "--threads: must be at least 1" in done.stderr
    assert shutil.which("mount.fuse3") or shutil.which("mount.fuse3", path="/sbin:/usr/sbin")
