"""The set-up's system-package step (scripts/system-packages.sh), run for real with `fusermount3` hidden from PATH,
as root and as an unprivileged user. `apt-get` and `sudo` are the only stand-ins: they record how they were
called (sudo then runs the command it was given), so the test sees the exact command lines a real machine would
run, without installing anything."""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Iterator, List

import pytest

REPO = Path(__file__).resolve().parent.parent
NOBODY = 65534

RECORDER = """#!/bin/bash
printf '%s|DEBIAN_FRONTEND=%s|uid=%s\\n' "$(basename "$0") $*" "${DEBIAN_FRONTEND:-}" "$(id -u)" >> "$CALLS"
"""


@pytest.fixture
def sandbox() -> Iterator[Path]:
    """A world-readable directory with the script and a bin/ holding the tools it uses, but no fusermount3."""
    top = Path(tempfile.mkdtemp(prefix="mffs-setup-"))
    try:
        top.chmod(0o755)
        shutil.copy(REPO / "scripts" / "system-packages.sh", top / "system-packages.sh")
        bin_dir = top / "bin"
        bin_dir.mkdir()
        for tool in ("bash", "id", "grep", "ldconfig", "env", "basename", "python3"):
            found = shutil.which(tool, path="/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin")
            assert found, tool
            (bin_dir / tool).symlink_to(found)
        (bin_dir / "apt-get").write_text(RECORDER)
        (bin_dir / "sudo").write_text(RECORDER + 'exec "$@"\n')
        for fake in ("apt-get", "sudo"):
            (bin_dir / fake).chmod(0o755)
        calls = top / "calls"
        calls.touch()
        calls.chmod(0o666)
        yield top
    finally:
        shutil.rmtree(top, ignore_errors=True)


def run_setup(sandbox: Path, as_user: bool = False, with_sudo: bool = True) -> subprocess.CompletedProcess:
    if not with_sudo:
        (sandbox / "bin" / "sudo").unlink()
    env = {"PATH": str(sandbox / "bin"), "CALLS": str(sandbox / "calls")}
    command: List[str] = ["bash", str(sandbox / "system-packages.sh")]
    if as_user:
        setpriv = shutil.which("setpriv") or "setpriv"
        command = [setpriv, "--reuid=%d" % NOBODY, "--regid=%d" % NOBODY, "--clear-groups"] + command
    return subprocess.run(command, env=env, cwd=str(sandbox), capture_output=True, text=True, timeout=60)


def recorded(sandbox: Path) -> List[str]:
    return (sandbox / "calls").read_text().splitlines()


def test_as_root_apt_get_runs_directly_and_noninteractive(sandbox: Path) -> None:
    result = run_setup(sandbox)
    assert result.returncode == 0, result.stderr
    calls = recorded(sandbox)
    assert calls[0] == "apt-get update -qq|DEBIAN_FRONTEND=noninteractive|uid=0"
    install, env, uid = calls[1].split("|")
    assert install.startswith("apt-get install -y -qq ") and "fuse3" in install.split()
    assert (env, uid) == ("DEBIAN_FRONTEND=noninteractive", "uid=0")
    assert len(calls) == 2  # no sudo as root
    assert "installing fuse3" in result.stderr


def test_as_another_user_apt_get_runs_through_sudo(sandbox: Path) -> None:
    result = run_setup(sandbox, as_user=True)
    assert result.returncode == 0, result.stderr
    calls = recorded(sandbox)
    assert calls[0] == "sudo env DEBIAN_FRONTEND=noninteractive apt-get update -qq|DEBIAN_FRONTEND=|uid=%d" % NOBODY
    assert calls[1] == "apt-get update -qq|DEBIAN_FRONTEND=noninteractive|uid=%d" % NOBODY
    assert calls[2].startswith("sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq ")
    assert "fuse3" in calls[3].split("|")[0].split()


def test_without_root_or_sudo_it_says_so_in_one_line(sandbox: Path) -> None:
    result = run_setup(sandbox, as_user=True, with_sudo=False)
    assert result.returncode == 1
    assert result.stderr.count("\n") == 1 and "needs root or sudo to install" in result.stderr
    assert "fuse3" in result.stderr
    assert recorded(sandbox) == []


def test_nothing_is_installed_when_everything_is_there(sandbox: Path) -> None:
    fusermount = shutil.which("fusermount3")
    assert fusermount, "the suite runs on a machine with fuse3"
    (sandbox / "bin" / "fusermount3").symlink_to(fusermount)
    result = run_setup(sandbox)
    assert result.returncode == 0, result.stderr
    assert recorded(sandbox) == [], result.stderr  # stderr names what it found missing
