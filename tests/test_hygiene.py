"""Process hygiene of `mffs` (issue 13, item 6), with real processes, real FUSE mounts."""
from __future__ import annotations

import contextlib
import errno
import json
import os
import subprocess
from pathlib import Path
from typing import Iterator, Optional

import pytest

from tests.support.mount import force_unmount, is_mounted, mounted, run_mffs

pytestmark = pytest.mark.timeout(300)


def one_line_error(result: subprocess.CompletedProcess, code: int = 1) -> str:
    """The single stderr line of a failed `mffs` call (after asserting there is exactly one and the exit code)."""
    assert result.returncode == code, (result.returncode, result.stderr)
    assert result.stderr.count("\n") == 1 and result.stderr.startswith("mffs: "), result.stderr
    return result.stderr.strip()


@contextlib.contextmanager
def background_mount(
    mountpoint: Path, *args: str, env: Optional[dict] = None
) -> Iterator[subprocess.CompletedProcess]:
    """`mffs mount MOUNTPOINT ARGS` (background daemon); whatever happens, unmounted after."""
    mountpoint.mkdir(exist_ok=True)
    try:
        yield run_mffs("mount", str(mountpoint), *args, env=env)
    finally:
        force_unmount(mountpoint)


# -- mountpoint names ----------------------------------------------------------------------------------------------


@pytest.mark.fuse
@pytest.mark.parametrize("name", ["mnt-ü", "mnt 日本", "mnt with space", "mnt\\back", "mnt\tTab", "mnt\nline"])
def test_any_mountpoint_name_mounts_serves_and_unmounts(client_env, mf, manifest, tmp_path, name):
    mountpoint = tmp_path / name
    pathspec = manifest["runs"]["hello_bob"]["pathspec"]
    with background_mount(mountpoint, "--datastore-root", str(client_env), "--all-namespaces") as result:
        assert result.returncode == 0, result.stderr
        assert is_mounted(mountpoint)
        run = json.loads((mountpoint / pathspec / "run.json").read_bytes())
        assert run["pathspec"] == pathspec
        again = run_mffs("mount", str(mountpoint), "--datastore-root", str(client_env))
        assert "is already mounted" in one_line_error(again)
        unmounted = run_mffs("umount", str(mountpoint))
        assert (unmounted.returncode, unmounted.stderr) == (0, "")
        assert not is_mounted(mountpoint)
        assert os.listdir(mountpoint) == []


@pytest.mark.fuse
def test_a_dead_non_ascii_mount_is_removed_by_umount(client_env, tmp_path):
    """A daemon killed outright leaves a dead mount (ENOTCONN): `mffs umount` still finds and removes it."""
    with mounted(tmp_path / "mnt-ü", "--datastore-root", str(client_env), "--all-namespaces") as mount:
        assert "HelloFlow" in os.listdir(mount.path)
        mount.process.kill()
        mount.process.wait(timeout=10)
        with pytest.raises(OSError) as dead:
            os.listdir(mount.path)
        assert dead.value.errno == errno.ENOTCONN
        assert is_mounted(mount.path)
        unmounted = run_mffs("umount", str(mount.path))
        assert (unmounted.returncode, unmounted.stderr) == (0, "")
        assert not is_mounted(mount.path)
