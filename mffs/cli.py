"""`mffs`: mount Metaflow runs as a read-only filesystem, or browse the same tree without FUSE.

  mffs mount MOUNTPOINT [PATHSPEC]   mount everything, one flow (DemoFlow) or one run (DemoFlow/123) at MOUNTPOINT
  mffs umount MOUNTPOINT             unmount (fusermount -u, lazily if busy)
  mffs ls [-l] [PATH]                list a directory of the same tree, no FUSE needed
  mffs cat PATH...                   print files of the same tree, no FUSE needed

Without --foreground, `mount` starts the filesystem in a new background process (`mffs mount --foreground ...`,
logging to --log-file) and returns once the mount is ready; nothing forks after threads exist.
"""
from __future__ import annotations

import argparse
import ctypes.util
import datetime as dt
import errno
import hashlib
import logging
import math
import os
import re
import shutil
import stat
import subprocess
import sys
import tempfile
import time
from typing import TYPE_CHECKING, Dict, List, Optional, Union

from . import fstab

if TYPE_CHECKING:
    from .tree import Tree, TreeSettings

log = logging.getLogger("mffs")

MOUNT_READY_TIMEOUT = 60.0


#: FUSE threads by default. libfuse hands each request to the thread that has waited longest, so a walk's requests
#: rotate through every thread of the pool, and each hand-off of the GIL to another thread costs more than a local
#: request's own work, so a walk is faster with 2 threads than with 8 (docs/benchmarks.md). More threads help only
#: when requests wait on the network (S3, a metadata service) while others could be served.
DEFAULT_THREADS = 2


class CliError(Exception):
    """A one-line error for the user (printed as `mffs: <message>`)."""


def _count(minimum: int):
    """An argparse type: an int of at least `minimum`."""

    def parse(text: str) -> int:
        value = int(text)
        if value < minimum:
            raise argparse.ArgumentTypeError("must be at least %d" % minimum)
        return value

    parse.__name__ = "int"  # argparse names the type in its message for text that is no number
    return parse


def _amount(minimum: float = 0.0, *, above: bool = False):
    """An argparse type: a finite float of at least `minimum` (greater than it when `above`)."""

    def parse(text: str) -> float:
        value = float(text)
        if not math.isfinite(value):
            raise argparse.ArgumentTypeError("must be a finite number")
        if value < minimum or (above and value == minimum):
            raise argparse.ArgumentTypeError("must be %s %g" % ("greater than" if above else "at least", minimum))
        return value

    parse.__name__ = "float"
    return parse


# -- data source options (shared by mount, ls, cat) -------------------------------------------------------------


def _add_source_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("what to show")
    names = group.add_mutually_exclusive_group()
    names.add_argument("--namespace", metavar="NS", help="show runs in namespace NS (a tag, e.g. user:alice)")
    names.add_argument("--all-namespaces", action="store_true", help="show runs of every namespace")
    group.add_argument(
        "--datastore-root",
        metavar="DIR",
        help="local datastore: a .metaflow directory or the directory containing it "
        "(default: Metaflow's own lookup, e.g. METAFLOW_DATASTORE_SYSROOT_LOCAL or ./.metaflow)",
    )
    group.add_argument(
        "--metadata", metavar="SPEC", help="metadata provider as for metaflow.metadata(), e.g. service@URL"
    )
    group.add_argument(
        "--trust-pickles", action="store_true",
        help="unpickle artifacts fully for repr.txt and the value.* exports, as Metaflow's client does: this runs "
        "code from the pickles. Default: a restricted unpickler that loads standard-library data types, numpy and "
        "pandas and shows any other object as a placeholder, so crawling the mount never runs pickled code",
    )
    tuning = parser.add_argument_group("caching")
    tuning.add_argument(
        "--refresh", type=_amount(0, above=True), default=0.5, metavar="S",
        help="seconds before anything that can still change (running runs, run lists) is re-read (default 0.5)",
    )
    tuning.add_argument(
        "--memory-mb", type=_count(32), default=256, metavar="MB",
        help="memory for the mount's processes (the daemon and its readahead worker) and their caches of files, "
        "directories, listings and metadata, whatever the size of the runs (default 256; untrusted values are "
        "rendered in worker processes limited by --render-memory-mb)",
    )
    tuning.add_argument(
        "--render-threshold", type=_count(0), default=1 << 20, metavar="BYTES",
        help="artifacts whose pickle is larger are not unpickled to size their repr.txt and value.* exports: they "
        "show size 0 until first opened (default 1048576)",
    )
    tuning.add_argument(
        "--repr-limit", type=_count(0), default=64 << 10, metavar="CHARS",
        help="repr.txt is cut after this many characters, with a marker line (default 65536)",
    )
    tuning.add_argument(
        "--render-memory-mb", type=_count(256), default=2048, metavar="MB",
        help="address space of each process rendering untrusted values (repr.txt, value.*): a value needing more "
        "fails with EIO for that file only (default 2048)",
    )
    tuning.add_argument(
        "--render-cpu-seconds", type=_count(1), default=30, metavar="S",
        help="CPU time one untrusted value may take to load and render (default 30)",
    )
    tuning.add_argument(
        "--render-wall-seconds", type=_count(1), default=60, metavar="S",
        help="time one untrusted value may take to load and render before its file fails with EIO (default 60)",
    )


def tree_settings(args: argparse.Namespace, pathspec: Optional[str] = None) -> TreeSettings:
    """The tree settings the command line asks for; also points the client at the chosen datastore and checks
    the namespace (mffs/source.py)."""
    from . import source
    from .tree import TreeSettings

    try:
        namespace_kwargs = source.select(args.datastore_root, args.metadata, args.namespace, args.all_namespaces)
    except source.SourceError as exc:
        raise CliError(str(exc)) from exc
    return TreeSettings(
        pathspec=pathspec,
        refresh=args.refresh,
        memory_mb=args.memory_mb,
        render_threshold=args.render_threshold,
        repr_limit=args.repr_limit,
        trust_pickles=args.trust_pickles,
        readahead=getattr(args, "readahead", 0),
        render_memory_mb=args.render_memory_mb,
        render_cpu_seconds=args.render_cpu_seconds,
        render_wall_seconds=args.render_wall_seconds,
        **namespace_kwargs,
    )


def _build_tree(args: argparse.Namespace, pathspec: Optional[str] = None) -> Tree:
    import client as client_module

    from .tree import Tree

    settings = tree_settings(args, pathspec)
    try:
        tree = Tree(client_module, settings)
    except FileNotFoundError as exc:
        raise CliError("unknown pathspec %r (not found in this datastore and namespace)" % pathspec) from exc
    except OSError as exc:
        raise CliError("cannot read the datastore: %s" % exc.strerror) from exc
    if settings.readahead > 0:
        from .readahead import Readahead

        tree.attach(Readahead(tree, settings.readahead))
    return tree


# -- mount / umount --------------------------------------------------------------------------------------------


_MOUNTS_ESCAPE = re.compile(rb"\\([0-7]{3})")


def mounted_paths() -> List[str]:
    """The mountpoints in /proc/self/mounts, as file names (`os.fsdecode`). The kernel writes each path's bytes as
    they are but for space, tab, newline and backslash, which it escapes as octal (`\\040`): so the line is split
    and unescaped as bytes, and a name like `mnt-ü` reads back as it was given."""
    with open("/proc/self/mounts", "rb") as mounts:
        lines = mounts.read().splitlines()
    unescape = lambda match: bytes([int(match.group(1), 8)])  # noqa: E731
    return [os.fsdecode(_MOUNTS_ESCAPE.sub(unescape, line.split()[1])) for line in lines if line.strip()]


def is_mounted(mountpoint: Union[str, "os.PathLike[str]"]) -> bool:
    """Whether `mountpoint` is a mountpoint now. Its parent is resolved first, so a mountpoint that is no link is
    found without a stat of it (which a hung daemon would never answer); a link is then resolved in full."""
    paths = mounted_paths()
    parent, name = os.path.split(os.path.abspath(mountpoint))
    return os.path.join(os.path.realpath(parent), name) in paths or os.path.realpath(mountpoint) in paths


def _fusermount() -> str:
    for name in ("fusermount3", "fusermount"):
        path = shutil.which(name)
        if path:
            return path
    raise CliError("fusermount3 not found: install the fuse3 package (e.g. apt-get install fuse3)")


def _check_fuse_available() -> None:
    if not ctypes.util.find_library("fuse3"):  # libfuse2 alone will not do (see mffs/fuse_ops.py)
        raise CliError("libfuse3 not found: install the fuse3 package (e.g. apt-get install fuse3)")
    _fusermount()
    if not os.path.exists("/dev/fuse"):
        raise CliError("/dev/fuse not found: FUSE is not available here (`mffs ls` and `mffs cat` work without it)")


def _check_mountpoint(mountpoint: str) -> None:
    if is_mounted(mountpoint):  # first: a dead mount (its daemon killed) does not even exist for os.path.exists
        raise CliError("%s is already mounted (mffs umount %s)" % (mountpoint, mountpoint))
    if not os.path.exists(mountpoint):
        raise CliError("mountpoint %s does not exist" % mountpoint)
    if not os.path.isdir(mountpoint):
        raise CliError("mountpoint %s is not a directory" % mountpoint)
    if os.listdir(mountpoint):
        raise CliError("mountpoint %s is not empty" % mountpoint)


def _default_log_file(mountpoint: str) -> str:
    digest = hashlib.sha1(os.fsencode(os.path.realpath(mountpoint))).hexdigest()[:10]
    directory = os.path.join(tempfile.gettempdir(), "mffs-%d" % os.getuid())
    _private_directory(directory)
    return os.path.join(directory, "mount-%s.log" % digest)


def _private_directory(directory: str) -> None:
    """Create `directory` 0700, or check that the one there is ours alone: in a shared $TMPDIR anyone may have
    made that name first (a link to another file's directory, a directory they can write), to read or redirect
    what the daemon logs, which may be root."""
    try:
        os.mkdir(directory, 0o700)
    except FileExistsError:
        pass
    info = os.lstat(directory)
    if stat.S_ISLNK(info.st_mode):
        problem = "is a symbolic link"
    elif not stat.S_ISDIR(info.st_mode):
        problem = "is not a directory"
    elif info.st_uid != os.getuid():
        problem = "belongs to uid %d" % info.st_uid
    elif info.st_mode & 0o022:
        problem = "is writable by others (mode %o)" % stat.S_IMODE(info.st_mode)
    else:
        return
    raise CliError("log directory %s %s: not logging there (remove it, or pass --log-file PATH)" % (directory, problem))


def _open_log(path: str) -> int:
    """A descriptor of the log file `path`, opened to append (and read back) without following a link in its place,
    and only if it is a regular file of ours with no other name; created 0600."""
    flags = os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
    try:
        fd = os.open(path, flags, 0o600)  # O_NONBLOCK: a fifo in its place fails instead of blocking
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise CliError("log file %s is a symbolic link: not writing to it" % path) from exc
        raise
    info = os.fstat(fd)
    if not stat.S_ISREG(info.st_mode) or info.st_uid != os.getuid() or info.st_nlink != 1:
        os.close(fd)
        raise CliError("log file %s is not a regular file of ours with one name: not writing to it" % path)
    return fd


#: how much of the end of its log a failed background mount reads to find its error
_LOG_TAIL_BYTES = 64 << 10


def _last_error_line(log_fd: int, start: int) -> str:
    """The last `mffs: ...` line (else the last line) the log got from `start` on: what this attempt wrote."""
    end = os.fstat(log_fd).st_size
    start = max(start, end - _LOG_TAIL_BYTES)
    text = os.pread(log_fd, max(end - start, 0), start).decode("utf-8", "replace")
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("mffs: ")]
    return (errors or lines or [""])[-1]


def _mount_in_background(args: argparse.Namespace, argv: List[str]) -> None:
    log_file = args.log_file or _default_log_file(args.mountpoint)
    command = [sys.executable, "-m", "mffs.cli"] + argv + ["--foreground", "--log-file", log_file]
    log_fd = _open_log(log_file)
    try:
        start = os.lseek(log_fd, 0, os.SEEK_END)  # earlier attempts' lines are before this
        child = subprocess.Popen(
            command, stdin=subprocess.DEVNULL, stdout=log_fd, stderr=log_fd, start_new_session=True
        )
        deadline = time.monotonic() + MOUNT_READY_TIMEOUT
        while time.monotonic() < deadline:
            if is_mounted(args.mountpoint):
                return
            if child.poll() is not None:
                error = _last_error_line(log_fd, start).removeprefix("mffs: ")
                raise CliError(error or "mount failed, see %s" % log_file)
            time.sleep(0.05)
    finally:
        os.close(log_fd)
    child.terminate()  # a daemon that mounted after all unmounts on SIGTERM; SIGKILL would leave a dead mount
    try:
        child.wait(timeout=5)
    except subprocess.TimeoutExpired:
        child.kill()
    raise CliError("mount not ready after %d s, see %s" % (MOUNT_READY_TIMEOUT, log_file))


def _configure_logging(debug: bool, log_file: Optional[str]) -> None:
    if log_file:
        stream = open(_open_log(log_file), "a", encoding="utf-8", errors="backslashreplace")
        handler: logging.Handler = logging.StreamHandler(stream)
    else:
        handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(asctime)s %(name)s %(levelname)s %(message)s"))
    level = logging.DEBUG if debug else logging.INFO
    for name in ("mffs", "client", "fuse"):  # client: records a listing leaves out, S3 retries
        logger = logging.getLogger(name)
        logger.addHandler(handler)
        logger.setLevel(level if name == "mffs" else (logging.DEBUG if debug else logging.WARNING))


def cmd_mount(args: argparse.Namespace, argv: List[str]) -> None:
    _check_fuse_available()
    _check_mountpoint(args.mountpoint)
    if not args.foreground:
        _mount_in_background(args, argv)
        return
    _configure_logging(args.debug, args.log_file)
    from .budget import MemoryBudget

    # before the client is imported: it sizes its caches from the environment (an explicit setting wins)
    for name, value in MemoryBudget.split(args.memory_mb).client_environment(worker=False).items():
        os.environ.setdefault(name, value)
    tree = _build_tree(args, args.pathspec)
    from .fuse_ops import mount

    log.info("mounting %s at %s", args.pathspec or "all flows", args.mountpoint)
    mount(
        tree,
        args.mountpoint,
        attr_ttl=args.attr_ttl,
        threads=args.threads,
        debug=args.debug,
        allow_other=args.allow_other,
    )


def cmd_umount(args: argparse.Namespace, argv: List[str]) -> None:
    if not is_mounted(args.mountpoint):
        raise CliError("%s is not mounted" % args.mountpoint)
    fusermount = _fusermount()
    result = subprocess.run([fusermount, "-u", args.mountpoint], capture_output=True, text=True)
    if result.returncode != 0:
        # busy (a shell's cwd, an open file): detach now, the daemon exits when the last user leaves
        lazy = subprocess.run([fusermount, "-u", "-z", args.mountpoint], capture_output=True, text=True)
        if lazy.returncode != 0:
            raise CliError((lazy.stderr or result.stderr).strip() or "unmount failed")


# -- ls / cat without FUSE ---------------------------------------------------------------------------------------


def _long_line(node) -> str:
    from .tree import LINK

    node_stat = node.stat()
    when = dt.datetime.fromtimestamp(node_stat.mtime, tz=dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S")
    kind = {"dir": "d", "file": "-", "link": "l"}[node_stat.kind]
    suffix = " -> " + node.target if node_stat.kind == LINK else ""
    return "%s %12d %s %s%s" % (kind, node_stat.size, when, node.name, suffix)


def cmd_ls(args: argparse.Namespace, argv: List[str]) -> None:
    tree = _build_tree(args)
    for entry in sorted(tree.list(args.path), key=lambda entry: entry.name):
        print(_long_line(tree.lookup(entry.path)) if args.long else entry.name)


def cmd_cat(args: argparse.Namespace, argv: List[str]) -> None:
    tree = _build_tree(args)
    out = sys.stdout.buffer
    for path in args.paths:
        for chunk in tree.iter_file(path):
            out.write(chunk)
    out.flush()


# -- entry point ---------------------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mffs",
        description="Metaflow runs as a read-only filesystem. Layout: MOUNT/<Flow>/{latest,latest_successful,"
        "tags/<tag>/<run>,<run>/{run.json,parameters.json,code/,<step>/{step.json,<task>/{task.json,"
        "metadata.json,stdout.log,stderr.log,exception.txt,cards/,attempts/<n>/,<artifact>/{repr.txt,data.pickle,"
        "meta.json,value.json|txt|bin|npy|csv|parquet|png,content}}}}}. Names starting with _ are hidden but "
        "reachable; '/' in a tag is written %2F.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    mount_parser = commands.add_parser(
        "mount",
        help="mount runs at MOUNTPOINT",
        description="Mount everything, one flow (PATHSPEC=Flow) or one run (PATHSPEC=Flow/RunId: its steps at the "
        "mount root) read-only at MOUNTPOINT, an existing empty directory. Returns once the mount is ready "
        "unless --foreground. SIGINT/SIGTERM to the daemon unmount cleanly.",
    )
    mount_parser.add_argument("mountpoint", metavar="MOUNTPOINT")
    mount_parser.add_argument("pathspec", metavar="PATHSPEC", nargs="?", help="Flow, Flow/Run, Flow/Run/Step ...")
    mount_parser.add_argument("--foreground", action="store_true", help="serve in this process until unmounted")
    mount_parser.add_argument("--debug", action="store_true", help="log every FUSE operation (implies verbose logs)")
    mount_parser.add_argument(
        "--allow-other", action="store_true",
        help="let other users see the mount (needs user_allow_other in /etc/fuse.conf unless root)",
    )
    mount_parser.add_argument(
        "--attr-ttl", type=_amount(0), default=3600.0, metavar="S",
        help="how long the kernel may cache names and attributes of finished runs (default 3600)",
    )
    mount_parser.add_argument(
        "--readahead", type=_count(0), default=32, metavar="TASKS",
        help="when a walk that only lists (find, ls -R) lists a task of a finished run, list this many tasks after "
        "it in a worker process (0: off, and no worker; default 32)",
    )
    mount_parser.add_argument(
        "--threads", type=_count(1), default=DEFAULT_THREADS, metavar="N",
        help="FUSE threads serving requests (default %d; more help when many programs read at once from S3 or "
        "a metadata service)" % DEFAULT_THREADS,
    )
    mount_parser.add_argument(
        "--log-file", metavar="PATH",
        help="daemon log, never a link (default: a file under $TMPDIR/mffs-UID, a directory only you can write)",
    )
    _add_source_options(mount_parser)
    mount_parser.set_defaults(handler=cmd_mount)

    umount_parser = commands.add_parser("umount", help="unmount MOUNTPOINT", description="Unmount an mffs mount "
                                        "(fusermount -u; if it is busy, a lazy unmount).")
    umount_parser.add_argument("mountpoint", metavar="MOUNTPOINT")
    umount_parser.set_defaults(handler=cmd_umount)

    ls_parser = commands.add_parser(
        "ls", help="list a directory of the tree without FUSE",
        description="List PATH (e.g. DemoFlow/123/start) as the mount would show it, without FUSE.",
    )
    ls_parser.add_argument("path", metavar="PATH", nargs="?", default="/")
    ls_parser.add_argument("-l", dest="long", action="store_true", help="type, size, mtime (UTC) and link targets")
    _add_source_options(ls_parser)
    ls_parser.set_defaults(handler=cmd_ls)

    cat_parser = commands.add_parser(
        "cat", help="print files of the tree without FUSE",
        description="Write the bytes of each PATH (e.g. DemoFlow/123/start/1/stdout.log) to stdout, without FUSE.",
    )
    cat_parser.add_argument("paths", metavar="PATH", nargs="+")
    _add_source_options(cat_parser)
    cat_parser.set_defaults(handler=cmd_cat)
    return parser


def _commands(parser: argparse.ArgumentParser) -> Dict[str, argparse.ArgumentParser]:
    return next(action for action in parser._actions if isinstance(action, argparse._SubParsersAction)).choices


#: line breaks in an error message (a path may hold them) are shown escaped: an error is one line
_LINE_BREAKS = str.maketrans({"\n": "\\n", "\r": "\\r"})


def _error(message: str) -> None:
    print("mffs: " + message.translate(_LINE_BREAKS), file=sys.stderr)


def main(argv: Optional[List[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    commands = _commands(parser)
    if fstab.is_fstab_form(argv, list(commands)):  # mount.fuse3 runs `mffs SOURCE MOUNTPOINT -o OPTIONS`
        try:
            argv, environment = fstab.mount_arguments(argv, commands["mount"])
        except ValueError as exc:
            _error(str(exc))
            return 2
        os.environ.update(environment)
    args = parser.parse_args(argv)
    try:
        args.handler(args, argv)
    except CliError as exc:
        _error(str(exc))
        return 1
    except BrokenPipeError:
        return 0
    except OSError as exc:
        where = exc.filename or ""
        _error("%s%s" % (where + ": " if where else "", exc.strerror or exc))
        return 1
    except KeyboardInterrupt:
        return 130
    except Exception as exc:
        # The client's errors (backend down, unknown object...) are the user's to read, not a traceback. If the
        # client was never imported, the error cannot be one of its.
        client_exceptions = sys.modules.get("client.exceptions")
        if client_exceptions is None or not isinstance(exc, client_exceptions.MetaflowException):
            raise
        _error("%s: %s" % (exc.headline.lower(), str(exc).strip() or type(exc).__name__))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
