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
import hashlib
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import time
from typing import List, Optional

log = logging.getLogger("mffs")

MOUNT_READY_TIMEOUT = 60.0


#: FUSE threads by default. libfuse hands each request to the thread that has waited longest, so a walk's requests
#: rotate through every thread of the pool, and each hand-off of the GIL to another thread costs more than a local
#: request's own work: `find` over a 1000-task run takes about 10% less time with 2 threads than with 8 (with
#: Readahead; without it, the same). More threads help only when requests wait on the network (S3, a metadata
#: service) while others could be served.
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
        "--refresh", type=float, default=0.5, metavar="S",
        help="seconds before anything that can still change (running runs, run lists) is re-read (default 0.5)",
    )
    tuning.add_argument(
        "--cache-entries", type=int, default=50_000, metavar="N",
        help="how many finished (immutable) files and directories to keep in memory (default 50000)",
    )
    tuning.add_argument(
        "--content-cache-mb", type=float, default=64.0, metavar="MB",
        help="memory for rendered file contents (JSON, logs, repr.txt, exports, cards, code files) (default 64)",
    )
    tuning.add_argument(
        "--render-threshold", type=int, default=1 << 20, metavar="BYTES",
        help="artifacts whose pickle is larger are not unpickled to size their repr.txt and value.* exports: they "
        "show size 0 until first opened (default 1048576)",
    )
    tuning.add_argument(
        "--repr-limit", type=int, default=64 << 10, metavar="CHARS",
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


def _select_datastore(args: argparse.Namespace, client_module) -> None:
    if args.metadata:
        client_module.metadata(args.metadata)
        return
    if args.datastore_root:
        root = os.path.abspath(os.path.expanduser(args.datastore_root))
        parent = os.path.dirname(root) if os.path.basename(root) == ".metaflow" else root
        if not os.path.isdir(os.path.join(parent, ".metaflow")):
            raise CliError("no datastore found: %s has no .metaflow directory" % parent)
        os.environ["METAFLOW_DATASTORE_SYSROOT_LOCAL"] = parent
        client_module.metadata("local@" + parent)
        return
    provider = client_module.get_metadata()
    kind, _, info = provider.partition("@")
    if kind == "local" and not os.path.isdir(os.path.join(info, ".metaflow")):
        raise CliError(
            "no datastore found: no .metaflow directory at %s (use --datastore-root DIR or --metadata SPEC)" % info
        )


def _build_tree(args: argparse.Namespace, pathspec: Optional[str] = None):
    import client as client_module

    from .tree import Tree

    _select_datastore(args, client_module)
    namespace_kwargs = {}
    if args.all_namespaces:
        namespace_kwargs["namespace"] = None
    elif args.namespace:
        namespace_kwargs["namespace"] = args.namespace
    else:
        try:  # the default namespace is the user's: find out now, not at the first listing
            client_module.get_namespace()
        except client_module.MetaflowUnknownUser as exc:
            raise CliError(
                "cannot tell whose runs to show (no user name: running as root?); set METAFLOW_USER, or pass "
                "--namespace NS or --all-namespaces"
            ) from exc
    try:
        return Tree(
            client_module,
            pathspec=pathspec,
            refresh=args.refresh,
            cache_entries=args.cache_entries,
            content_cache_bytes=int(args.content_cache_mb * (1 << 20)),
            render_threshold=args.render_threshold,
            repr_limit=args.repr_limit,
            trust_pickles=args.trust_pickles,
            readahead=getattr(args, "readahead", 0),
            render_memory_mb=args.render_memory_mb,
            render_cpu_seconds=args.render_cpu_seconds,
            render_wall_seconds=args.render_wall_seconds,
            **namespace_kwargs,
        )
    except FileNotFoundError as exc:
        raise CliError("unknown pathspec %r (not found in this datastore and namespace)" % pathspec) from exc
    except OSError as exc:
        raise CliError("cannot read the datastore: %s" % exc.strerror) from exc


# -- mount / umount --------------------------------------------------------------------------------------------


def _mounted_paths() -> List[str]:
    with open("/proc/self/mounts") as mounts:
        # fields are space-separated with spaces etc. escaped as octal (\040)
        return [line.split()[1].encode().decode("unicode_escape") for line in mounts if line.strip()]


def is_mounted(mountpoint: str) -> bool:
    return os.path.realpath(mountpoint) in _mounted_paths()


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
    if not os.path.exists(mountpoint):
        raise CliError("mountpoint %s does not exist" % mountpoint)
    if is_mounted(mountpoint):
        raise CliError("%s is already mounted (mffs umount %s)" % (mountpoint, mountpoint))
    if not os.path.isdir(mountpoint):
        raise CliError("mountpoint %s is not a directory" % mountpoint)
    if os.listdir(mountpoint):
        raise CliError("mountpoint %s is not empty" % mountpoint)


def _default_log_file(mountpoint: str) -> str:
    digest = hashlib.sha1(os.path.realpath(mountpoint).encode()).hexdigest()[:10]
    directory = os.path.join(tempfile.gettempdir(), "mffs-%d" % os.getuid())
    os.makedirs(directory, exist_ok=True)
    return os.path.join(directory, "mount-%s.log" % digest)


def _last_error_line(log_file: str) -> str:
    try:
        with open(log_file, errors="replace") as handle:
            lines = [line.strip() for line in handle if line.strip()]
    except OSError:
        return ""
    errors = [line for line in lines if line.startswith("mffs: ")]
    return (errors or lines or [""])[-1]


def _mount_in_background(args: argparse.Namespace, argv: List[str]) -> None:
    log_file = args.log_file or _default_log_file(args.mountpoint)
    command = [sys.executable, "-m", "mffs.cli"] + argv + ["--foreground", "--log-file", log_file]
    with open(log_file, "ab") as log_handle:
        child = subprocess.Popen(
            command, stdin=subprocess.DEVNULL, stdout=log_handle, stderr=log_handle, start_new_session=True
        )
    deadline = time.monotonic() + MOUNT_READY_TIMEOUT
    while time.monotonic() < deadline:
        if is_mounted(args.mountpoint):
            return
        if child.poll() is not None:
            raise CliError(_last_error_line(log_file).removeprefix("mffs: ") or "mount failed, see %s" % log_file)
        time.sleep(0.05)
    child.kill()
    raise CliError("mount not ready after %d s, see %s" % (MOUNT_READY_TIMEOUT, log_file))


def _configure_logging(debug: bool, log_file: Optional[str]) -> None:
    handler = logging.FileHandler(log_file) if log_file else logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(asctime)s %(name)s %(levelname)s %(message)s"))
    level = logging.DEBUG if debug else logging.INFO
    for name in ("mffs", "fuse"):
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
    tree = _build_tree(args, args.pathspec)
    from .fuse_ops import mount

    log.info("mounting %s at %s", args.pathspec or "all flows", args.mountpoint)
    mount(
        tree,
        args.mountpoint,
        attr_ttl=args.attr_ttl,
        refresh=args.refresh,
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
        "--attr-ttl", type=float, default=3600.0, metavar="S",
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
    mount_parser.add_argument("--log-file", metavar="PATH", help="daemon log (default: a file under $TMPDIR/mffs-UID)")
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


def main(argv: Optional[List[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    try:
        args.handler(args, argv)
    except CliError as exc:
        print("mffs: %s" % exc, file=sys.stderr)
        return 1
    except BrokenPipeError:
        return 0
    except OSError as exc:
        where = exc.filename or ""
        print("mffs: %s%s" % (where + ": " if where else "", exc.strerror or exc), file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    except Exception as exc:
        # The client's errors (backend down, unknown object...) are the user's to read, not a traceback. If the
        # client was never imported, the error cannot be one of its.
        client_exceptions = sys.modules.get("client.exceptions")
        if client_exceptions is None or not isinstance(exc, client_exceptions.MetaflowException):
            raise
        print("mffs: %s: %s" % (exc.headline.lower(), str(exc).strip() or type(exc).__name__), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
