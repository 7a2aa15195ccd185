"""Process hygiene of `mffs` (issue 13, item 6), with real processes, real FUSE mounts, a real tmpfs and a real S3
server (moto)."""
from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import logging
import os
import stat
import subprocess
import tempfile
from pathlib import Path
from typing import Iterator, Optional

import pytest

from client.diskcache import BlobDiskCache
from tests.support import walk
from tests.support.datastores import load_manifest
from tests.support.mount import force_unmount, is_mounted, mounted, run_mffs
from tests.support.s3server import MotoServer, s3_environment, s3_root_parent, s3_server  # noqa: F401

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
        again = run_mffs("mount", str(mount.path), "--datastore-root", str(client_env))
        assert one_line_error(again) == "mffs: %s is already mounted (mffs umount %s)" % (mount.path, mount.path)
        unmounted = run_mffs("umount", str(mount.path))
        assert (unmounted.returncode, unmounted.stderr) == (0, "")
        assert not is_mounted(mount.path)


# -- the log directory ---------------------------------------------------------------------------------------------


def default_log_dir(tmpdir: Path) -> Path:
    return tmpdir / ("mffs-%d" % os.getuid())


@pytest.fixture
def tmpdir_env(client_env: Path, tmp_path: Path) -> dict:
    """The environment of an `mffs` call whose $TMPDIR (where the default log directory goes) is private."""
    tmpdir = tmp_path / "tmp"
    tmpdir.mkdir()
    return dict(os.environ, TMPDIR=str(tmpdir))


def plant_link_to_directory(log_dir: Path, victim: Path) -> None:
    victim.mkdir()
    log_dir.symlink_to(victim)


def plant_link_to_file(log_dir: Path, victim: Path) -> None:
    victim.write_text("someone else's file\n")
    log_dir.symlink_to(victim)


def plant_file(log_dir: Path, victim: Path) -> None:
    log_dir.write_text("not a directory\n")


def plant_foreign_directory(log_dir: Path, victim: Path) -> None:
    log_dir.mkdir()
    os.chown(log_dir, 65534, 65534)  # nobody's: the tests run as root


def plant_open_directory(log_dir: Path, victim: Path) -> None:
    log_dir.mkdir()
    os.chmod(log_dir, 0o777)


@pytest.mark.parametrize("plant, problem", [
    (plant_link_to_directory, "is a symbolic link"),
    (plant_link_to_file, "is a symbolic link"),
    (plant_file, "is not a directory"),
    (plant_foreign_directory, "belongs to uid 65534"),
    (plant_open_directory, "is writable by others (mode 777)"),
])
def test_a_planted_log_directory_is_refused(tmpdir_env, tmp_path, plant, problem):
    log_dir = default_log_dir(Path(tmpdir_env["TMPDIR"]))
    victim = tmp_path / "victim"
    plant(log_dir, victim)
    before = {path: path.read_bytes() for path in [victim] if path.is_file()}
    with background_mount(tmp_path / "mnt", "--datastore-root", str(tmpdir_env["METAFLOW_DATASTORE_SYSROOT_LOCAL"]),
                          env=tmpdir_env) as result:
        line = one_line_error(result)
        assert line == "mffs: log directory %s %s: not logging there (remove it, or pass --log-file PATH)" % (
            log_dir, problem)
        assert not is_mounted(tmp_path / "mnt")
    if victim.is_dir():
        assert os.listdir(victim) == []
    else:
        assert {path: path.read_bytes() for path in [victim] if path.is_file()} == before


def test_a_planted_log_file_link_is_refused(tmpdir_env, tmp_path):
    """Our own directory, but the log file is a link: O_NOFOLLOW, and the link's target is untouched. The same for
    a --log-file the user names."""
    victim = tmp_path / "victim.txt"
    victim.write_text("precious\n")
    root = tmpdir_env["METAFLOW_DATASTORE_SYSROOT_LOCAL"]
    named = tmp_path / "named.log"
    named.symlink_to(victim)
    with background_mount(tmp_path / "mnt", "--datastore-root", root, "--log-file", str(named),
                          env=tmpdir_env) as result:
        assert one_line_error(result) == "mffs: log file %s is a symbolic link: not writing to it" % named
    foreground = run_mffs("mount", str(tmp_path / "mnt"), "--foreground", "--datastore-root", root,
                          "--log-file", str(named), env=tmpdir_env)
    assert one_line_error(foreground) == "mffs: log file %s is a symbolic link: not writing to it" % named
    # the default log file, planted as a link in our own directory
    log_dir = default_log_dir(Path(tmpdir_env["TMPDIR"]))
    log_dir.mkdir(mode=0o700)
    digest = hashlib.sha1(os.fsencode(os.path.realpath(tmp_path / "mnt"))).hexdigest()[:10]
    (log_dir / ("mount-%s.log" % digest)).symlink_to(victim)
    with background_mount(tmp_path / "mnt", "--datastore-root", root, env=tmpdir_env) as result:
        assert "is a symbolic link: not writing to it" in one_line_error(result)
    assert victim.read_text() == "precious\n"
    assert not is_mounted(tmp_path / "mnt")


def test_the_log_directory_is_made_private(tmpdir_env, tmp_path):
    with background_mount(tmp_path / "mnt", "--datastore-root", tmpdir_env["METAFLOW_DATASTORE_SYSROOT_LOCAL"],
                          env=tmpdir_env) as result:
        assert result.returncode == 0, result.stderr
        assert is_mounted(tmp_path / "mnt")
    log_dir = default_log_dir(Path(tmpdir_env["TMPDIR"]))
    info = log_dir.lstat()
    assert stat.S_ISDIR(info.st_mode) and stat.S_IMODE(info.st_mode) & 0o077 == 0 and info.st_uid == os.getuid()
    (log_file,) = log_dir.iterdir()
    assert stat.S_IMODE(log_file.stat().st_mode) == 0o600
    assert "mounting all flows at %s" % (tmp_path / "mnt") in log_file.read_text()


# -- a failed background mount's error -----------------------------------------------------------------------------


FAILING_DAEMON = """
import os, sys
if "--foreground" in sys.orig_argv:
    os.write(2, b"the daemon could not start: planted failure\\n")
    os._exit(1)
"""


def test_a_failed_background_mount_prints_its_own_error(client_env, tmp_path):
    """The log keeps earlier attempts' lines; each failure reports only what its own daemon wrote, even when that
    is no `mffs:` line (a crash) and an earlier attempt's `mffs:` line is still in the log."""
    root = str(client_env)
    log_file = tmp_path / "mount.log"
    log_file.write_text("2026-01-01 00:00:00 mffs: an older run's error\n")
    mountpoint = tmp_path / "mnt"
    with background_mount(mountpoint, "NoSuchFlow/1", "--datastore-root", root, "--log-file", str(log_file)) as first:
        assert one_line_error(first).startswith("mffs: unknown pathspec 'NoSuchFlow/1'")
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(FAILING_DAEMON)  # the daemon process dies with no `mffs:` line
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")]))
    with background_mount(mountpoint, "--datastore-root", root, "--log-file", str(log_file), env=env) as second:
        assert one_line_error(second) == "mffs: the daemon could not start: planted failure"
    with background_mount(mountpoint, "--datastore-root", root, "--log-file", str(log_file)) as third:
        assert third.returncode == 0, third.stderr
    with background_mount(tmp_path / "other", "--datastore-root", root, "--log-file", str(log_file),
                          env=env) as fourth:
        assert one_line_error(fourth) == "mffs: the daemon could not start: planted failure"
    log_text = log_file.read_text()
    assert "an older run's error" in log_text and "unknown pathspec" in log_text  # nothing was lost


# -- a disk cache that cannot be written ---------------------------------------------------------------------------


@contextlib.contextmanager
def tiny_tmpfs(size: str, *options: str) -> Iterator[Path]:
    directory = Path(tempfile.mkdtemp(prefix="mffs-tmpfs-"))
    try:
        subprocess.run(["mount", "-t", "tmpfs", "-o", ",".join(("size=" + size,) + options), "tmpfs",
                        str(directory)], check=True, capture_output=True)
        try:
            yield directory
        finally:
            subprocess.run(["umount", str(directory)], check=True)
    finally:
        os.rmdir(directory)


def files_under(directory: Path) -> list:
    return sorted(str(path.relative_to(directory)) for path in directory.rglob("*") if path.is_file())


def test_a_full_cache_stores_nothing_and_says_so_once(caplog):
    data = os.urandom(300_000)
    key = hashlib.sha1(data).hexdigest()
    with tiny_tmpfs("64k") as directory:
        cache = BlobDiskCache(str(directory / "blobs"), 1 << 30)
        with caplog.at_level(logging.WARNING, logger="mffs"):
            assert cache.put_stream(key, (data[i:i + 50_000] for i in range(0, len(data), 50_000))) is None
            assert cache.put_stream(key, [data]) is None
            assert cache.path(key) is None
        assert files_under(directory) == []  # nothing half-written left behind
        assert [r.getMessage() for r in caplog.records] == [
            "disk cache %s/blobs is not writable ([Errno 28] No space left on device): reading through, from the "
            "backend" % directory]


def test_a_read_only_cache_serves_what_it_holds(caplog):
    data = b"cached before the disk went read-only" * 100
    key = hashlib.sha1(data).hexdigest()
    with tiny_tmpfs("1m") as directory:
        assert BlobDiskCache(str(directory / "blobs"), 1 << 20).put_stream(key, [data]) is not None
        subprocess.run(["mount", "-o", "remount,ro", str(directory)], check=True)
        cache = BlobDiskCache(str(directory / "blobs"), 1 << 20)
        path = cache.path(key)
        assert path is not None and Path(path).read_bytes() == data
        with caplog.at_level(logging.WARNING, logger="mffs"):
            assert cache.put_stream(hashlib.sha1(b"new").hexdigest(), [b"new"]) is None
        assert "Read-only file system" in caplog.text


def test_a_failing_download_still_fails_with_a_full_cache():
    """Read-through is for the cache's own errors only: an error of the download (even an OSError) propagates."""
    with tiny_tmpfs("64k") as directory:
        cache = BlobDiskCache(str(directory / "blobs"), 1 << 30)

        def broken():
            yield b"x" * 1000
            raise ConnectionResetError("download cut")

        with pytest.raises(ConnectionResetError):
            cache.put_stream("ab" * 20, broken())
        assert files_under(directory) == []


@pytest.mark.fuse
def test_s3_reads_go_through_a_full_disk_cache(s3_root_parent, s3_server, tmp_path):  # noqa: F811
    """A mount over S3 with its disk cache on a tmpfs far smaller than the run's blobs: every data.pickle and
    repr.txt reads right, the log says once per process that the cache is not writable, and no temp file is
    left."""
    pathspec = load_manifest(s3_root_parent)["runs"]["kitchen"]["pathspec"]
    with tiny_tmpfs("32k") as cache_dir:
        env = {**walk.clean_env(s3_root_parent, tmp_path), **s3_environment(s3_server.endpoint_url),
               "MFFS_CACHE_DIR": str(cache_dir)}
        with mounted(tmp_path / "mnt", "--datastore-root", str(s3_root_parent), env=env) as mount:
            run_dir = mount.path / pathspec
            checked = 0
            for step in sorted(os.listdir(run_dir)):
                if not (run_dir / step).is_dir() or step == "code":
                    continue
                for task in sorted(name for name in os.listdir(run_dir / step) if name.isdigit()):
                    for artifact in sorted(os.listdir(run_dir / step / task)):
                        meta_path = run_dir / step / task / artifact / "meta.json"
                        if not meta_path.exists():
                            continue
                        meta = json.loads(meta_path.read_bytes())
                        blob = (run_dir / step / task / artifact / "data.pickle").read_bytes()
                        assert hashlib.sha1(blob).hexdigest() == meta["sha"], (step, task, artifact)
                        (run_dir / step / task / artifact / "repr.txt").read_bytes()
                        checked += 1
            assert checked > 50
            assert mount.process.poll() is None
            log_text = mount.log()
        # once per process that reads blobs: the daemon, and each render worker that did (they log as "sandbox")
        warnings = [line for line in log_text.splitlines() if "is not writable" in line]
        daemon_warnings = [line for line in warnings if " sandbox " not in line]
        assert len(daemon_warnings) == 1 and len(warnings) <= 3, log_text
        assert "No space left on device" in log_text
        assert not [name for name in files_under(cache_dir) if ".tmp-" in name]
