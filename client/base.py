"""MetaflowObject: what Flow, Run, Step, Task and DataArtifact share, an object addressed by its pathspec (ids,
tags and namespace checks, children newest first, pickling compatible with Metaflow's client objects)."""
from __future__ import annotations

from typing import TYPE_CHECKING, FrozenSet, Iterator, List, Optional, Tuple

from .context import current_provider, get_metadata, get_namespace
from .datastore import MAX_ATTEMPTS
from .exceptions import MetaflowInvalidPathspec, MetaflowNamespaceMismatch, MetaflowNotFound

if TYPE_CHECKING:  # imported when first needed
    from datetime import datetime


def _created_at(record: dict) -> "datetime":
    from datetime import datetime

    return datetime.fromtimestamp(record["ts_epoch"] / 1000.0)


class MetaflowObject:
    """Base of Flow, Run, Step, Task and DataArtifact: an object addressed by its pathspec."""

    _NAME = "base"
    _DEPTH = 0
    _CHILD: Optional[type] = None
    _PARENT: Optional[type] = None
    _PATHSPEC_FORM = ""

    def __init__(
        self,
        pathspec: Optional[str] = None,
        attempt: Optional[int] = None,
        _object: Optional[dict] = None,
        _parent: Optional["MetaflowObject"] = None,
        _namespace_check: bool = True,
        _current_namespace: Optional[str] = None,
        _run_tags: Optional[Tuple[List[str], List[str]]] = None,
    ):
        self._provider = current_provider()
        self._parent = _parent
        self._attempt = attempt
        self._current_namespace = _current_namespace or get_namespace()
        self._namespace_check = _namespace_check and self._current_namespace is not None
        if attempt is not None:
            if self._NAME not in ("task", "artifact"):
                raise MetaflowNotFound("Attempts can only be specified for Task or DataArtifact")
            try:
                self._attempt = int(attempt)
            except ValueError:
                raise MetaflowNotFound("Attempt can only be an integer") from None
            if self._attempt < 0:
                raise MetaflowNotFound("Attempt can only be non-negative")
            if self._attempt >= MAX_ATTEMPTS:
                raise MetaflowNotFound("Attempt can only be smaller than %d" % MAX_ATTEMPTS)
        if _object is None:
            ids = pathspec.split("/") if pathspec else []
            if len(ids) != self._DEPTH:
                raise MetaflowInvalidPathspec("Expects %s" % self._PATHSPEC_FORM)
            self.id = ids[-1]
            self._pathspec = pathspec
            self._components = ids
            self._object = self._fetch(ids) if all(ids) else None
            if self._object is None:
                raise MetaflowNotFound("%s does not exist" % self)
        else:
            self._object = _object
            self.id = self._id_of(_object)
            self._components = (_parent._components + [self.id]) if _parent is not None else pathspec.split("/")
            self._pathspec = "/".join(self._components)
        if _run_tags is None and "tags" in self._object and self._DEPTH >= 3:
            _run_tags = (self._object["tags"], self._object["system_tags"])
        self._run_tags = _run_tags
        # Below a run every object has the run's tags: a child of a checked step or task passes as its parent did.
        inherits_check = _parent is not None and _parent._DEPTH >= 2
        if self._namespace_check and not inherits_check and not self._is_in_namespace(self._current_namespace):
            raise MetaflowNamespaceMismatch(self._current_namespace)

    # -- reads: provider methods are named after the levels (run/runs, step/steps, ...) ------------------------
    def _fetch(self, ids: List[str]) -> Optional[dict]:
        return getattr(self._provider, self._NAME)(*ids)

    def _children(self) -> List[dict]:
        return getattr(self._provider, self._CHILD._NAME + "s")(*self._components)

    def _child(self, id: str) -> Optional[dict]:
        return getattr(self._provider, self._CHILD._NAME)(*self._components, id)

    @staticmethod
    def _id_of(record: dict) -> str:
        raise NotImplementedError

    def _iter_filter(self, id: str) -> bool:
        return True

    # -- tags and namespace ----------------------------------------------------------------------------------
    def _tag_lists(self) -> Tuple[List[str], List[str]]:
        """(user tags, system tags) of the run this object belongs to (the run's are authoritative)."""
        if self._run_tags is None:
            run = self._provider.run(*self._components[:2])
            self._run_tags = (run["tags"], run["system_tags"]) if run else ([], [])
        return self._run_tags

    @property
    def tags(self) -> FrozenSet[str]:
        user, system = self._tag_lists()
        return frozenset(system) | frozenset(user)

    @property
    def user_tags(self) -> FrozenSet[str]:
        return frozenset(self._tag_lists()[0])

    @property
    def system_tags(self) -> FrozenSet[str]:
        return frozenset(self._tag_lists()[1])

    def is_in_namespace(self) -> bool:
        return self._is_in_namespace(get_namespace())

    def _is_in_namespace(self, ns: Optional[str]) -> bool:
        if ns is None:
            return True
        user, system = self._tag_lists()
        return ns in system or ns in user

    # -- identity --------------------------------------------------------------------------------------------
    @property
    def pathspec(self) -> str:
        return self._pathspec

    @property
    def path_components(self) -> List[str]:
        return list(self._components)

    @property
    def created_at(self) -> datetime:
        return _created_at(self._object)

    @property
    def created_epoch(self) -> float:
        """`created_at` in seconds since the epoch, without building a datetime (not in Metaflow's client: what a
        file system's mtime needs, for every entry of a listing)."""
        return self._object["ts_epoch"] / 1000.0

    @property
    def parent(self) -> Optional["MetaflowObject"]:
        if self._PARENT is None:
            return None
        if self._parent is None:
            attempt = self._attempt if self._NAME == "artifact" else None
            self._parent = self._PARENT("/".join(self._components[:-1]), attempt=attempt, _namespace_check=False)
        return self._parent

    @property
    def origin_pathspec(self) -> Optional[str]:
        parent = self.parent.origin_pathspec if self.parent is not None else None
        return "%s/%s" % (parent, self.id) if parent else None

    def __str__(self) -> str:
        if self._attempt is not None:
            return "%s('%s', attempt=%d)" % (self.__class__.__name__, self.pathspec, self._attempt)
        return "%s('%s')" % (self.__class__.__name__, self.pathspec)

    __repr__ = __str__

    # -- children --------------------------------------------------------------------------------------------
    def _wrap(self, record: dict) -> "MetaflowObject":
        return self._CHILD(
            attempt=self._attempt,
            _object=record,
            _parent=self,
            _namespace_check=self._namespace_check,
            _current_namespace=self._current_namespace if self._namespace_check else None,
            _run_tags=self._tag_lists() if self._DEPTH >= 2 else None,
        )

    def _listed_records(self) -> List[dict]:
        """The records of the children iterating gives, in its order, without building their objects."""
        if self._namespace_check and self._DEPTH >= 2 and self._current_namespace not in self.tags:
            return []  # below a run every child carries the run's tags: all in, or all out
        id_of, listed = self._CHILD._id_of, self._iter_filter
        records = [r for r in self._children() if listed(id_of(r))]
        # Newest first; a stable sort keeps the provider's order for equal times, as Metaflow does.
        records.sort(key=lambda r: r["ts_epoch"], reverse=True)
        return records

    def __iter__(self) -> Iterator["MetaflowObject"]:
        children = [self._wrap(r) for r in self._listed_records()]
        for position, child in enumerate(children):
            child._siblings, child._position = children, position  # lets reads prefetch for what comes next
        return iter(children)

    @staticmethod
    def _alone(child: Optional["MetaflowObject"]) -> Optional["MetaflowObject"]:
        """A child found by iterating but handed out alone (the newest, the latest successful): reads from it do not
        take its siblings for what a loop reads next."""
        if child is not None:
            child.__dict__.pop("_siblings", None)
        return child

    def _filtered_children(self, *tags: str) -> Iterator["MetaflowObject"]:
        for child in self:
            if all(tag in child.tags for tag in tags):
                yield child

    def __getitem__(self, id: str) -> "MetaflowObject":
        record = self._child(id) if id and "/" not in id else None
        if record is None:
            raise KeyError(id)
        return self._wrap(record)

    def __contains__(self, id: str) -> bool:
        return bool(id) and "/" not in id and self._child(id) is not None

    def _ipython_key_completions_(self) -> List[str]:
        return [child.id for child in self]

    # -- pickling compatible with Metaflow's client objects ------------------------------------------------------
    def __getstate__(self) -> dict:
        return {
            "version": "2.12.27",
            "data": [self.pathspec, self._attempt, get_metadata(), self._current_namespace, self._namespace_check],
        }

    def __setstate__(self, state: dict) -> None:
        if "version" in state and "data" in state:
            data = state["data"]
            pathspec, attempt = data[0], data[1]
            ns_check = data[-1]
            ns = data[-2] if len(data) >= 4 else None
        else:
            pathspec, attempt = state.get("_pathspec"), state.get("_attempt")
            ns_check, ns = state.get("_namespace_check", False), None
        self.__init__(pathspec=pathspec, attempt=attempt, _namespace_check=ns_check, _current_namespace=ns)
