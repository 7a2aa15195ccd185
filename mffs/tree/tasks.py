"""The directories of a task: the task itself, attempts/ and attempts/<n>/, and one directory per artifact.

Unpickling policy. repr.txt, the typed exports and parameters.json load values with
`DataArtifact.load(trusted=TreeSettings.trust_pickles)`. By default (`trust_pickles=False`, the mount without
`--trust-pickles`) that is the client's restricted unpickler: standard-library data types, numpy, pandas and
Metaflow's own stand-ins load; any other class becomes a placeholder whose repr names it and the flag, and none of
its code runs, so indexers, `grep -r` and `ls -lR` can crawl a mount safely. data.pickle is always the raw bytes.

A task whose `_exception` cannot be loaded lists exception.txt (EIO when read).
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable, Dict, List, Optional, Tuple, Union

from .. import exports, render
from .cards import CARDS_DIR, CardsDir
from .nodes import FILE, BlobFile, Dir, Entry, Node, RenderedFile, built_nodes, client_errors, epoch_mtime, join

if TYPE_CHECKING:
    from .tree import Tree

ATTEMPTS_DIR = "attempts"


class TaskDir(Dir):
    """task.json, metadata.json, stdout.log, stderr.log, exception.txt (only when there is one), cards/ (only when
    the task has stored cards), attempts/ (listed only when the task was retried) and the artifacts.

    The files and artifacts are those of the task's current attempt, as in Metaflow's client: logs of the latest
    started attempt, artifacts of the latest finished one. `attempts/<n>/` (AttemptDir) has the same layout for
    each attempt 0..current_attempt; attempts/ is listed only for retried tasks but resolves for every task (see
    `_special_dirs`). cards/ and attempts/ win over artifacts named `cards` or `attempts`, which stay reachable in
    `attempts/<n>/` (n = `current_attempt` in task.json).

    The directory itself is stable when its run is; its contents also when the task has finished, which is learned
    (one `_task_ok` load) only when the contents are first needed.
    """

    FILES = ("task.json", "metadata.json", "stdout.log", "stderr.log", "exception.txt")
    #: what a listing asks of the task, told to the client first (`Task.read_ahead`); `finished` too while unstable
    LISTING_ASKS: Tuple[str, ...] = ("artifacts", "exception", "cards", "current_attempt")
    # built by a lookup, a task's node soon holds its Task's metadata records (a few dozen small dicts): reading
    # anything in the task loads them; a step's listing builds no task nodes
    footprint = 16_000
    listed_footprint = 9_000

    def __init__(self, tree: "Tree", path: str, task: Any, run_stable: bool):
        with client_errors(path):
            mtime = task.created_epoch
        super().__init__(tree, path, mtime, run_stable)
        self.task = task
        self._contents_stable: Optional[bool] = None

    def contents_stable(self) -> bool:
        if self._contents_stable is None:
            try:
                with client_errors(self.path):
                    self._contents_stable = self.stable or bool(self.task.finished)
            except OSError:
                self._contents_stable = False  # `_task_ok` cannot be read (logged): task.json alone fails
        return self._contents_stable

    def _file(self, name: str) -> Node:
        task = self.task
        renderers: Dict[str, Callable[[], bytes]] = {
            "task.json": lambda: render.json_bytes(render.task_record(task)),
            "metadata.json": lambda: render.json_bytes(render.metadata_records(task)),
            "stdout.log": lambda: render.text_bytes(task.stdout),
            "stderr.log": lambda: render.text_bytes(task.stderr),
            "exception.txt": lambda: render.exception_bytes(task.exception),
        }
        try:
            with client_errors(self.path):
                mtime = epoch_mtime(task.finished_at, task.created_at)
        except OSError:
            mtime = self.mtime  # its `_task_ok` record is bad (logged): task.json alone fails
        return RenderedFile(self.tree, join(self.path, name), mtime, self.contents_stable(), renderers[name])

    def _has_exception(self) -> bool:
        """Whether exception.txt exists: also when `_exception` cannot be read (logged), so that reading it tells."""
        try:
            with client_errors(self.path):
                return self.task.exception is not None
        except OSError:
            return True

    def _special_dirs(self, listing: bool) -> Dict[str, Callable[[], Node]]:
        """name -> node factory of the directories mffs adds to the task: cards/ when it registered cards;
        attempts/ always reachable, but listed only when the task was retried (one attempt: attempts/0 is this
        directory again, and `find`, `grep -r` or an indexer would read every task twice)."""
        path, stable = self.path, self.contents_stable()
        with client_errors(path):
            cards = self.task.cards()  # one listing of the task's card directory
            has_cards = bool(cards and cards.names)
            show_attempts = not listing or self.task.current_attempt > 0
        dirs: Dict[str, Callable[[], Node]] = {}
        if has_cards:
            dirs[CARDS_DIR] = lambda: CardsDir(self.tree, join(path, CARDS_DIR), self.mtime, stable, self.task)
        if show_attempts:
            dirs[ATTEMPTS_DIR] = lambda: AttemptsDir(
                self.tree, join(path, ATTEMPTS_DIR), self.mtime, stable, self.task
            )
        return dirs

    def entries(self) -> List[Union[Node, Entry]]:
        self.task.read_ahead(*self.LISTING_ASKS, *(() if self.stable else ("finished",)))
        with client_errors(self.path):
            artifacts = list(self.task)  # first: the task's metadata listing it makes serves the questions below
        names = [name for name in self.FILES if name != "exception.txt" or self._has_exception()]
        prefix = join(self.path, "")
        listing: List[Union[Node, Entry]] = [Entry(name, prefix + name, FILE) for name in names]
        try:
            listing.extend(make() for make in self._special_dirs(listing=True).values())
        except OSError:
            pass  # logged: cards/ and attempts/ stay reachable by name (and fail there)
        stable = self.contents_stable()
        listing.extend(built_nodes(lambda a: ArtifactDir(self.tree, prefix + a.id, a, stable), artifacts))
        return listing

    def child(self, name: str) -> Node:
        if name in self.FILES:
            if name == "exception.txt" and not self._has_exception():
                raise self._missing(name)
            return self._file(name)
        if name in (CARDS_DIR, ATTEMPTS_DIR):
            make = self._special_dirs(listing=False).get(name)
            if make is not None:
                return make()
        path = join(self.path, name)
        with client_errors(path):
            artifact = self.task[name]
        return ArtifactDir(self.tree, path, artifact, self.contents_stable())


class AttemptDir(TaskDir):
    """attempts/<n>/: task.json, metadata.json, logs, exception.txt and artifacts of attempt n, from
    `Task(pathspec, attempt=n)` as in Metaflow's client; no cards/ or attempts/ (they belong to the task)."""

    LISTING_ASKS = ("artifacts", "exception")

    def _special_dirs(self, listing: bool) -> Dict[str, Callable[[], Node]]:
        return {}


class AttemptsDir(Dir):
    """attempts/: one AttemptDir per attempt 0..current_attempt (every attempt that has started)."""

    def __init__(self, tree: "Tree", path: str, mtime: float, stable: bool, task: Any):
        super().__init__(tree, path, mtime, stable)
        self.task = task

    def _attempt(self, number: int) -> Node:
        path = join(self.path, str(number))
        with client_errors(path):
            attempt = self.tree.client.Task(self.task.pathspec, attempt=number)
        return AttemptDir(self.tree, path, attempt, self.stable)

    def _count(self) -> int:
        with client_errors(self.path):
            return self.task.current_attempt + 1

    def children(self) -> List[Node]:
        return built_nodes(self._attempt, range(self._count()))

    def child(self, name: str) -> Node:
        if not (name.isdigit() and name == str(int(name)) and int(name) < self._count()):
            raise self._missing(name)
        return self._attempt(int(name))


class ArtifactDir(Dir):
    """repr.txt, data.pickle, meta.json and the artifact's typed exports (value.json, value.csv, ...; which ones
    is decided by mffs/exports.py from the stored type, without loading the value).

    repr.txt and the exports render the value loaded with the mount's unpickling policy (`TreeSettings.trust_pickles`):
    by default the restricted unpickler, so an object of a class that is not allow-listed appears as a placeholder
    naming the class and `--trust-pickles`, and nothing of it runs; such a value has no exports. data.pickle is the
    stored bytes, never unpickled. Exports are rendered and cached like repr.txt (at first stat when the pickle is
    at most `render_threshold` bytes, else deferred); one that fails to render is EIO for that file only.
    """

    FILES = ("repr.txt", "data.pickle", "meta.json")
    footprint = 1_500

    def __init__(self, tree: "Tree", path: str, artifact: Any, stable: bool):
        with client_errors(path):
            mtime = artifact.created_epoch
        super().__init__(tree, path, mtime, stable)
        self.artifact = artifact

    def _names(self) -> List[str]:
        with client_errors(self.path):
            type_name = self.artifact.type_name or ""
        return list(self.FILES) + exports.export_names(type_name, trusted=self.tree.settings.trust_pickles)

    def _file(self, name: str) -> Node:
        artifact, tree, path = self.artifact, self.tree, join(self.path, name)
        if name == "data.pickle":
            return BlobFile(tree, path, self.mtime, self.stable, artifact)
        if name == "meta.json":
            return RenderedFile(
                tree, path, self.mtime, self.stable, lambda: render.json_bytes(render.artifact_record(artifact))
            )
        return RenderedFile(
            tree, path, self.mtime, self.stable, lambda: tree.render_artifact(artifact, name),
            eager=lambda: tree.renders_at_stat(artifact),
        )

    def entries(self) -> List[Union[Node, Entry]]:
        prefix = join(self.path, "")
        return [Entry(name, prefix + name, FILE) for name in self._names()]

    def child(self, name: str) -> Node:
        if name not in self.FILES and name not in self._names():
            raise self._missing(name)
        return self._file(name)
