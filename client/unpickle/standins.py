"""What Metaflow's own classes load as without Metaflow (the stand-ins), and `UntrustedObject`, the placeholder for a
global an untrusted pickle may not name."""
from __future__ import annotations

from collections import namedtuple
from typing import Any, Optional


class MetaflowExceptionWrapper(Exception):
    """Stand-in for metaflow.exception.MetaflowExceptionWrapper (state: exception, type, stacktrace)."""

    def __init__(self, exc: Optional[BaseException] = None):
        super().__init__()
        self.exception = str(exc) if exc is not None else None
        self.type = "%s.%s" % (exc.__class__.__module__, exc.__class__.__name__) if exc is not None else None
        self.stacktrace = None

    def __reduce__(self):
        return MetaflowExceptionWrapper, (None,), self.__dict__

    def __setstate__(self, state: dict) -> None:
        self.__dict__ = state

    def __str__(self) -> str:
        if self.stacktrace:
            return self.stacktrace
        return "[no stacktrace]\n%s: %s" % (self.type, self.exception)

    __repr__ = __str__


ForeachFrame = namedtuple("ForeachFrame", ["step", "var", "num_splits", "index", "value"], defaults=(None,) * 5)


class IncludedFile:
    """Stand-in for metaflow.includefile.IncludedFile: a descriptor of where the included file's bytes live."""

    def __init__(self, descriptor: Optional[dict] = None):
        self._descriptor = descriptor
        self._cached_size = None

    @property
    def descriptor(self) -> Optional[dict]:
        return self._descriptor

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)


class UntrustedObject:
    """Placeholder for an object whose class or function is not on the allow-list: nothing of it ran.

    One subclass per refused global (see `_placeholder`), so both ways pickle builds objects end here:
    `cls(*args)` (REDUCE) and `cls.__new__(cls, *args)` (NEWOBJ), followed by an ignored `__setstate__`."""

    module = "?"
    name = "?"

    def __init__(self, *args: Any, **kwargs: Any):
        pass

    def __setstate__(self, state: Any) -> None:
        pass

    def __call__(self, *args: Any, **kwargs: Any) -> "UntrustedObject":
        return self

    def __repr__(self) -> str:
        return "<untrusted %s.%s: not loaded; mount with --trust-pickles to load it>" % (self.module, self.name)


#: Metaflow's own classes as their pickles name them -> the stand-ins that load in their place
METAFLOW_STANDINS = {
    ("metaflow.exception", "MetaflowExceptionWrapper"): MetaflowExceptionWrapper,
    ("__main__", "ForeachFrame"): ForeachFrame,
    ("metaflow.datastore.task_datastore", "ForeachFrame"): ForeachFrame,
    ("metaflow.includefile", "IncludedFile"): IncludedFile,
}
