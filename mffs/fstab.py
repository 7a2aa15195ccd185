"""The fstab form: `mount -t fuse.mffs SOURCE MOUNTPOINT -o OPTIONS`, as for sshfs, s3fs or rclone.

mount(8) hands a `fuse.mffs` mount to mount.fuse3, which runs `mffs SOURCE MOUNTPOINT -o OPTIONS`. This turns
those arguments into `mffs mount` ones:

  SOURCE    a local datastore (a `.metaflow` directory or the directory holding it) -> --datastore-root SOURCE;
            `s3://bucket/prefix` -> the S3 datastore root (METAFLOW_DATASTORE_SYSROOT_S3), metadata from the
            `metadata=` option or Metaflow's configuration; `mffs` -> Metaflow's own lookup of the datastore
  OPTIONS   the `mffs mount` options with `_` for `-` (`all_namespaces`, `namespace=NS`, `metadata=SPEC`,
            `trust_pickles`, `allow_other`, `refresh=S`, ...) and `pathspec=Flow/Run` for the PATHSPEC argument
            (`foreground` only under a service manager that waits for the daemon: mount(8) waits for it to return);
            the generic ones that mean nothing to a read-only FUSE filesystem (`ro`, `defaults`, `nosuid`, `nodev`,
            `noexec`, `noatime`, `_netdev`, `nofail`, `noauto`, `x-systemd.*`, ...) are accepted and ignored.
            `rw` and anything unknown are refused with one line.
"""
from __future__ import annotations

import argparse
from typing import Dict, List, Tuple

_IGNORED = frozenset({
    "ro", "defaults", "nosuid", "suid", "nodev", "dev", "noexec", "exec", "noatime", "atime", "nodiratime",
    "diratime", "relatime", "norelatime", "strictatime", "lazytime", "sync", "async", "auto", "noauto", "user",
    "nouser", "users", "owner", "group", "_netdev", "nofail",
})
_IGNORED_PREFIXES = ("x-", "comment=")


def is_fstab_form(argv: List[str], commands: List[str]) -> bool:
    """Whether `argv` is `SOURCE MOUNTPOINT [-o OPTIONS]` rather than one of the `commands`."""
    return len(argv) >= 2 and argv[0] not in commands and not argv[0].startswith("-")


def _mount_options(mount_parser: argparse.ArgumentParser) -> Dict[str, bool]:
    """The long options of `mffs mount` as fstab names (`all_namespaces`), each with whether it takes a value."""
    return {
        option[2:].replace("-", "_"): action.nargs != 0
        for action in mount_parser._actions
        for option in action.option_strings
        if option.startswith("--") and option != "--help"
    }


def mount_arguments(argv: List[str], mount_parser: argparse.ArgumentParser) -> Tuple[List[str], Dict[str, str]]:
    """(`mffs mount` arguments, environment variables to set) for `SOURCE MOUNTPOINT [-o OPTIONS]...`; a ValueError
    with one sentence for what cannot be mounted so."""
    source, mountpoint, rest = argv[0], argv[1], argv[2:]
    options: List[str] = []
    while rest:
        if rest[0] != "-o" or len(rest) < 2:
            raise ValueError("usage: mffs SOURCE MOUNTPOINT [-o OPTION[,OPTION...]] (unexpected %r)" % rest[0])
        options += [option for option in rest[1].split(",") if option]
        rest = rest[2:]
    known = _mount_options(mount_parser)
    arguments, pathspec, environment = ["mount", mountpoint], [], {}
    if source.startswith("s3://"):
        environment["METAFLOW_DATASTORE_SYSROOT_S3"] = source.rstrip("/")
    elif source != "mffs":
        arguments += ["--datastore-root", source]
    for option in options:
        name, has_value, value = option.partition("=")
        if option in _IGNORED or option.startswith(_IGNORED_PREFIXES):
            continue
        if name == "rw":
            raise ValueError("mffs is read-only: mount it with ro, not rw")
        if name == "pathspec" and has_value:
            pathspec = [value]
        elif name not in known:
            raise ValueError("unknown mount option %r" % option)
        elif known[name] != bool(has_value):
            raise ValueError("mount option %r %s" % (name, "needs a value (%s=...)" % name if known[name]
                                                     else "takes no value"))
        else:
            arguments += ["--" + name.replace("_", "-")] + ([value] if has_value else [])
    return arguments + pathspec, environment
