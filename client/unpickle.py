"""Unpickling artifacts without Metaflow installed.

Metaflow pickles a few of its own classes into artifacts (exception wrapper, ForeachFrame, IncludedFile, client
objects). `loads` maps them to the stand-ins below, so `task.exception`, `task.index` and IncludeFile values work
whether or not `metaflow` is importable. Everything else loads as Python would (Metaflow's behaviour), unless
`trusted=False`: then only an allow-list of data types (stdlib containers and scalars, numpy, pandas) loads and
anything else becomes an `UntrustedObject` placeholder, so crawling a mount never runs pickled code.
"""
from __future__ import annotations

import importlib
import io
import pickle
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


_METAFLOW_STANDINS = {
    ("metaflow.exception", "MetaflowExceptionWrapper"): MetaflowExceptionWrapper,
    ("__main__", "ForeachFrame"): ForeachFrame,
    ("metaflow.datastore.task_datastore", "ForeachFrame"): ForeachFrame,
    ("metaflow.includefile", "IncludedFile"): IncludedFile,
}
_CLIENT_CLASSES = {"Flow", "Run", "Step", "Task", "DataArtifact"}

# Data types that are safe to construct from a pickle: their constructors/reducers only build values.
_SAFE_GLOBALS = {
    "builtins": {"set", "frozenset", "list", "dict", "tuple", "bytearray", "complex", "range", "slice", "int",
                 "float", "str", "bytes", "bool", "object", "NoneType", "Ellipsis", "NotImplemented"},
    "copyreg": {"_reconstructor", "__newobj__", "__newobj_ex__"},
    "collections": {"OrderedDict", "defaultdict", "deque", "Counter"},
    "datetime": {"datetime", "date", "time", "timedelta", "timezone"},
    "decimal": {"Decimal"},
    "fractions": {"Fraction"},
    "uuid": {"UUID", "SafeUUID"},
    "pathlib": {"PurePath", "PurePosixPath", "PureWindowsPath", "Path", "PosixPath", "WindowsPath"},
    "zoneinfo": {"ZoneInfo"},
    "zoneinfo._zoneinfo": {"ZoneInfo"},
    "_codecs": {"encode"},
}
# numpy/pandas/pyarrow: classes, and the reconstructor functions their pickles name. What a name resolves to is
# checked by the module that really defines it, so an alias cannot smuggle in a function from elsewhere; the
# submodules that read files or evaluate expressions (io, computation, testing, ...) are not in these prefixes.
_SAFE_DEFINING_MODULES = ("numpy._core.", "numpy.core.", "numpy.dtypes", "numpy.random.", "numpy.ma.core",
                          "pandas.core.", "pandas._libs.", "pandas.arrays", "pandas.tseries.", "pyarrow.lib")
_UNSAFE_DEFINING_MODULES = ("pandas.core.computation", "pandas.io")
_SAFE_FUNCTION_PREFIXES = ("_reconstruct", "_unpickle", "_new_", "scalar", "__pyx_unpickle", "_frombuffer",
                           "_restore", "__bit_generator_ctor", "__generator_ctor", "_make_", "_mareconstruct",
                           "type_for_alias", "py_buffer")
_PACKAGES_WITH_RECONSTRUCTORS = ("numpy", "pandas", "pyarrow")
# Public classes that numpy/pandas re-export under their top-level name but that open, create or run things.
_UNSAFE_CLASSES = {"memmap", "DataSource", "vectorize", "HDFStore", "ExcelWriter", "ExcelFile"}


class _Unpickler(pickle.Unpickler):
    def __init__(self, file: io.BytesIO, trusted: bool):
        super().__init__(file)
        self.trusted = trusted

    def find_class(self, module: str, name: str) -> Any:
        standin = _METAFLOW_STANDINS.get((module, name))
        if standin is not None:
            return standin
        if module == "metaflow.client.core" and name in _CLIENT_CLASSES:
            from . import core

            return getattr(core, name)
        if not self.trusted and not self._is_safe(module, name):
            return _placeholder(module, name)
        try:
            return super().find_class(module, name)
        except ImportError as exc:
            raise ModuleNotFoundError(
                "cannot unpickle %s.%s: module '%s' is not installed here" % (module, name, module), name=module
            ) from exc
        except AttributeError as exc:
            raise AttributeError(
                "cannot unpickle %s.%s: module '%s' has no '%s' here (a class defined in the flow's file is only "
                "importable when running from the flow's directory)" % (module, name, module, name)
            ) from exc

    @staticmethod
    def _is_safe(module: str, name: str) -> bool:
        if name in _SAFE_GLOBALS.get(module, ()):
            return True
        if module.split(".")[0] not in _PACKAGES_WITH_RECONSTRUCTORS:
            return False
        try:
            obj = getattr(importlib.import_module(module), name)
        except (ImportError, AttributeError):
            return False
        defining = getattr(obj, "__module__", None) or module
        if name in _UNSAFE_CLASSES or defining.startswith(_UNSAFE_DEFINING_MODULES):
            return False
        if isinstance(obj, type):
            # numpy and pandas name their public classes after the top-level package
            return defining in ("numpy", "pandas") or defining.startswith(_SAFE_DEFINING_MODULES)
        return defining.startswith(_SAFE_DEFINING_MODULES) and name.startswith(_SAFE_FUNCTION_PREFIXES)


def _placeholder(module: str, name: str) -> type:
    return type(name, (UntrustedObject,), {"module": module, "name": name})


def loads(data: bytes, trusted: bool = True) -> Any:
    """Unpickle artifact bytes; `trusted=False` loads only allow-listed data types (see the module docstring)."""
    return _Unpickler(io.BytesIO(data), trusted).load()
