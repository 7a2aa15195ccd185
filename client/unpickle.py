"""Unpickling artifacts without Metaflow installed.

Metaflow pickles a few of its own classes into artifacts (exception wrapper, ForeachFrame, IncludedFile, client
objects). `loads` maps them to the stand-ins below, so `task.exception`, `task.index` and IncludeFile values work
whether or not `metaflow` is importable. Everything else loads as Python would (Metaflow's behaviour), unless
`trusted=False`: then only an allow-list of data types (stdlib containers and scalars, numpy, pandas) loads and
anything else becomes an `UntrustedObject` placeholder, so crawling a mount never runs pickled code.
"""
from __future__ import annotations

import _compat_pickle
import enum
import importlib
import io
import pickle
import re
import types
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
# numpy/pandas/pyarrow: a name is looked up only in these modules (never importing a module a pickle picks: some
# run code on import, e.g. numpy.f2py.__main__), and what it resolves to must be a data type (a subclass of
# `_data_classes`), an instance of one (pandas.NA), or one of the reconstructor functions their pickles name.
_LIBRARY_MODULES = {"numpy", "numpy.dtypes", "numpy.ma", "pandas", "pandas.arrays", "pandas.api.typing", "pyarrow",
                    "pyarrow.lib", "PIL.Image"}
_LIBRARY_SUBPACKAGES = ("numpy.core.", "numpy._core.", "numpy.ma.", "numpy.random.", "pandas.core.", "pandas._libs.",
                        "pandas.tseries.")
# PIL's image file classes (PIL.PngImagePlugin.PngImageFile, ...) pickle under their plugin module
_PIL_PLUGIN_MODULE = re.compile(r"^PIL\.\w+ImagePlugin$")
_LIBRARY_EXCLUDED_PARTS = {"__main__", "tests", "testing", "conftest", "computation", "io"}
_RECONSTRUCTOR_FUNCTIONS = {"_reconstruct", "scalar", "_frombuffer", "_mareconstruct", "__bit_generator_ctor",
                            "__generator_ctor", "__randomstate_ctor", "_unpickle_block", "_unpickle_timestamp",
                            "_timedelta_unpickle", "_nat_unpickle", "_new_Index", "_new_DatetimeIndex",
                            "_new_PeriodIndex", "_new_IntervalIndex", "_new_TimedeltaIndex", "_restore_array",
                            "py_buffer", "type_for_alias"}


def _library_module_allowed(module: str) -> bool:
    if module not in _LIBRARY_MODULES and not module.startswith(_LIBRARY_SUBPACKAGES):
        return bool(_PIL_PLUGIN_MODULE.match(module))
    return not _LIBRARY_EXCLUDED_PARTS.intersection(module.split("."))


def _data_classes(package: str) -> tuple:
    """The base classes of the data types `package` pickles (the package is imported: its pickle names it)."""
    if package == "numpy":
        import numpy
        import numpy.ma
        import numpy.random

        return (numpy.ndarray, numpy.generic, numpy.dtype, numpy.ma.MaskedArray, numpy.random.BitGenerator,
                numpy.random.Generator, numpy.random.RandomState, numpy.random.SeedSequence)
    if package == "pandas":
        import pandas
        from pandas._libs.arrays import NDArrayBacked
        from pandas._libs.sparse import SparseIndex
        from pandas.api.extensions import ExtensionArray, ExtensionDtype
        from pandas.core import internals
        from pandas.core.generic import NDFrame
        from pandas.tseries.offsets import BaseOffset

        managers = tuple(getattr(internals.managers, name) for name in ("BaseBlockManager", "BlockManager",
                                                                       "SingleBlockManager")
                         if hasattr(internals.managers, name))
        return (NDFrame, pandas.Index, ExtensionArray, ExtensionDtype, NDArrayBacked, SparseIndex, BaseOffset,
                pandas.Timestamp, pandas.Timedelta, pandas.Period, pandas.Interval, type(pandas.NaT),
                type(pandas.NA)) + managers
    if package == "pyarrow":
        import pyarrow

        return (pyarrow.DataType, pyarrow.Array, pyarrow.ChunkedArray, pyarrow.Buffer, pyarrow.Scalar,
                pyarrow.Table, pyarrow.RecordBatch, pyarrow.Schema, pyarrow.Field)
    if package == "PIL":
        from PIL import Image  # an image pickles as its class plus (info, mode, size, palette, pixel bytes)

        return (Image.Image,)
    return ()


def _is_safe_library_global(module: str, name: str) -> bool:
    package = module.split(".")[0]
    if not _library_module_allowed(module) or "." in name:
        return False
    try:
        obj = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError):
        return False
    data_classes = _data_classes(package)
    if isinstance(obj, type):
        return issubclass(obj, data_classes)
    if callable(obj):
        if not _library_module_allowed(getattr(obj, "__module__", None) or ""):
            return False
        if name.startswith("__pyx_unpickle_"):  # Cython's per-class reconstructor: the class must be a data type
            cls = getattr(importlib.import_module(module), name[len("__pyx_unpickle_"):], None)
            return isinstance(cls, type) and issubclass(cls, data_classes)
        return name in _RECONSTRUCTOR_FUNCTIONS
    return isinstance(obj, data_classes)  # a constant such as pandas.NA


#: numpy's scalar types that exist on every platform, by name (`str(type(x))` is "numpy.<name>" in numpy 1 and 2;
#: platform aliases like intc print as int32)
NUMPY_SCALAR_NAMES = frozenset(
    {
        "bool", "bool_", "int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64", "longlong",
        "ulonglong", "float16", "float32", "float64", "longdouble", "complex64", "complex128", "clongdouble", "str_",
        "bytes_", "void", "datetime64", "timedelta64",
    }
)  # fmt: skip
#: Data classes `_is_safe_library_global` accepts, by the names their types print as: the mount asks about these
#: to list an artifact's exports, and answering by name spares importing numpy (0.2 s) or pandas (0.5 s) for a
#: directory listing. tests/test_unpickle.py checks each against `_is_safe_library_global`.
_KNOWN_DATA_CLASSES = frozenset(
    [("numpy", "ndarray")]
    + [("numpy", scalar) for scalar in NUMPY_SCALAR_NAMES]
    + [("pandas", "DataFrame"), ("pandas.core.frame", "DataFrame"), ("pandas", "Series"),
       ("pandas.core.series", "Series"), ("pandas", "Timestamp"), ("pandas._libs.tslibs.timestamps", "Timestamp"),
       ("pandas", "Timedelta"), ("pandas._libs.tslibs.timedeltas", "Timedelta")]
    + [("PIL.Image", "Image")]
)


def allowed(module: str, name: str) -> bool:
    """Whether an untrusted load (`trusted=False`) builds the global `module.name` instead of a placeholder."""
    module, name = _compat_pickle.NAME_MAPPING.get((module, name), (module, name))
    module = _compat_pickle.IMPORT_MAPPING.get(module, module)
    return (
        (module, name) in _METAFLOW_STANDINS
        or (module == "metaflow.client.core" and name in _CLIENT_CLASSES)
        or name in _SAFE_GLOBALS.get(module, ())
        or (module, name) in _KNOWN_DATA_CLASSES
        or _is_safe_library_global(module, name)
    )


def _restricted_getattr(obj: Any, name: str) -> Any:
    """builtins.getattr for untrusted pickles: only what pickles of data types use it for, on allowed classes:
    an enum member (`getattr(Color, 'RED')`) or ZoneInfo's unpickling classmethod."""
    if isinstance(obj, type) and issubclass(obj, enum.Enum) and name in obj.__members__:
        return obj[name]
    import zoneinfo  # here, not at import time: most processes never unpickle an untrusted tz-aware value

    if obj is zoneinfo.ZoneInfo and name == "_unpickle":
        return zoneinfo.ZoneInfo._unpickle
    return _placeholder("builtins", "getattr")(obj, name)


def _find_class(unpickler: Any, find_real: Any, module: str, name: str) -> Any:
    # Protocol 0-2 pickles name Python 2 modules (__builtin__.set, copy_reg._reconstructor): check and
    # resolve the Python 3 names, as pickle's own find_class does.
    module, name = _compat_pickle.NAME_MAPPING.get((module, name), (module, name))
    module = _compat_pickle.IMPORT_MAPPING.get(module, module)
    standin = _METAFLOW_STANDINS.get((module, name))
    if standin is not None:
        return standin
    if module == "metaflow.client.core" and name in _CLIENT_CLASSES:
        from . import core

        return getattr(core, name)
    if not unpickler.trusted:
        if (module, name) == ("builtins", "getattr"):
            return _restricted_getattr
        if not allowed(module, name):
            return _placeholder(module, name)
    try:
        return find_real(module, name)
    except ImportError as exc:
        raise ModuleNotFoundError(
            "cannot unpickle %s.%s: module '%s' is not installed here" % (module, name, module), name=module
        ) from exc
    except AttributeError as exc:
        raise AttributeError(
            "cannot unpickle %s.%s: module '%s' has no '%s' here (a class defined in the flow's file is only "
            "importable when running from the flow's directory)" % (module, name, module, name)
        ) from exc


class _Unpickler(pickle.Unpickler):
    """trusted=True: the C unpickler."""

    trusted = True

    def find_class(self, module: str, name: str) -> Any:
        return _find_class(self, super().find_class, module, name)


class _RestrictedUnpickler(pickle._Unpickler):
    """trusted=False: pickle's pure-Python unpickler, because its BUILD can be checked. BUILD on a class, function
    or constant that the pickle named would change it for the whole process (set `pandas.Index.__repr__`);
    pickles of data only ever BUILD objects they have just created."""

    trusted = False

    def __init__(self, file: io.BytesIO):
        super().__init__(file)
        self._named_globals: set = set()  # ids of what find_class returned during this load

    def find_class(self, module: str, name: str) -> Any:
        found = _find_class(self, super().find_class, module, name)
        self._named_globals.add(id(found))
        return found

    def _load_build(self) -> None:
        target = self.stack[-2]
        if isinstance(target, (type, types.ModuleType)) or id(target) in self._named_globals:
            raise pickle.UnpicklingError("untrusted pickle sets attributes of %r: refused" % (target,))
        pickle._Unpickler.load_build(self)

    dispatch = dict(pickle._Unpickler.dispatch)
    dispatch[pickle.BUILD[0]] = _load_build


class _NamesAGlobal(Exception):
    pass


class _DataOnlyUnpickler(pickle.Unpickler):
    """trusted=False, first try: the C unpickler, for pickles that name no global (numbers, strings, bytes and
    containers of them: most artifacts). With nothing from outside the pickle to act on, BUILD can only change
    objects the pickle itself made, so nothing needs checking. The first global named stops it, and the load
    starts over with `_RestrictedUnpickler`. A float loads in a third of the time."""

    def find_class(self, module: str, name: str) -> Any:
        raise _NamesAGlobal


def _placeholder(module: str, name: str) -> type:
    return type(name, (UntrustedObject,), {"module": module, "name": name})


def load(file: Any, trusted: bool = True) -> Any:
    """Unpickle from a seekable binary file object; `trusted=False` loads only allow-listed data types (module
    docstring)."""
    if trusted:
        return _Unpickler(file).load()
    start = file.tell()
    try:
        return _DataOnlyUnpickler(file).load()
    except _NamesAGlobal:
        file.seek(start)
        return _RestrictedUnpickler(file).load()


def loads(data: bytes, trusted: bool = True) -> Any:
    """Unpickle artifact bytes; `trusted=False` loads only allow-listed data types (see the module docstring)."""
    return load(io.BytesIO(data), trusted)
