"""Unpickling artifacts without Metaflow installed, and without trusting the datastore.

Metaflow pickles a few of its own classes into artifacts (exception wrapper, ForeachFrame, IncludedFile, client
objects). `loads` maps them to the stand-ins below, so `task.exception`, `task.index` and IncludeFile values work
whether or not `metaflow` is importable. Everything else loads as Python would (Metaflow's behaviour), unless
`trusted=False`, what the mount does by default: a datastore is written by many people and jobs, and a pickle can
name any importable callable.

With `trusted=False` a pickle may name only the exact globals `(module, name)` in `_ALLOWED`, one table: the
classes and reconstructor functions that pickles of data really name (found by pickling real values;
tests/test_unpickle.py keeps that discovery) for the stdlib's containers, scalars, datetime, decimal, fractions,
uuid, pure paths and zoneinfo; numpy (1.x and 2.x names), pandas (2.x and 3.x names), pyarrow and PIL images; and
Metaflow's stand-ins. Any other global becomes an `UntrustedObject` placeholder, *without importing its module*: a
module is imported only when the pickle names an allowed global in it. Nothing is admitted by being a subclass of
a data type (`numpy.memmap` is an ndarray that maps a file). Refused outright: whatever opens, maps or writes
files (memmap, `numpy.load`, pandas readers, `io`/`codecs` file access; `pathlib` paths load as pure paths), runs
or compiles code (`eval`, `os.system`, `operator`/`functools` call chains, `copyreg`), or loads another pickle.

Allowed globals are not enough: a pickle also chooses how they are called and what state their objects get, and
numpy's and pandas' compiled code trusts pickled state (a forged dtype or Categorical reads arbitrary memory). So
`_RestrictedUnpickler` keeps, per load, to what pickles of data do:
- it calls only globals it named (and placeholders); classes data pickles only *refer* to (`list`,
  `numpy.ndarray`) not at all; some calls through a guard in the table: the arguments data pickles pass
  (`bytearray(b'..')`, not `bytearray(10**10)`; an array rebuilt from an empty shape, not from uninitialised
  memory) or a check of the result (Arrow arrays, pandas block placements);
- BUILD sets the state of an object once, before anything refers to it again, only if nothing outside the load
  holds it (not `np.ma.masked`, an enum member, a class or function it named), and never a dunder or a method;
  an object made without its constructor must get its state; the state must be what numpy or pandas would
  build (a dtype's flags and fields, Categorical and MultiIndex codes, block placements);
- APPENDS/SETITEMS fill only containers it made; INST, OBJ and DUP, which pickles of data never use, are refused.
`ZoneInfo(key)` reads the system's time zone files (a key cannot leave them). Memory and CPU bombs built from
allowed constructors (a list multiplied by memo references, a huge PIL image) are not stopped here: rendering
runs in a limited worker process for that.
"""
from __future__ import annotations

import _compat_pickle
import enum
import io
import pickle
import re
import sys
import types
from collections import namedtuple
from functools import lru_cache
from typing import Any, Callable, Dict, Optional, Tuple


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
_CLIENT_CLASSES = {"Flow", "Run", "Step", "Task", "DataArtifact"}


# --- guards: how a data pickle calls an allowed global (REDUCE, NEWOBJ). `call(*args)` makes the object. ----------


def _refuse(call: Callable, why: str) -> pickle.UnpicklingError:
    name = getattr(call, "__qualname__", None) or type(call).__name__
    return pickle.UnpicklingError("untrusted pickle calls %s %s: refused" % (name, why))


def _NOT_CALLED(call: Callable, args: tuple) -> Any:
    """Named only as a reference (a defaultdict's factory, an array's class): data pickles never call it."""
    raise _refuse(call, "(data pickles only refer to it)")


def _materialised(call: Callable, args: tuple) -> Any:
    """Containers are rebuilt from lists the pickle holds, never from a lazy range or iterator it multiplies."""
    if any(isinstance(arg, range) or hasattr(arg, "__next__") for arg in args):
        raise _refuse(call, "with a range or iterator")
    return call(*args)


def _latin1(call: Callable, args: tuple) -> Any:
    """_codecs.encode(text, 'latin1'): protocol 2's bytes. Other codecs import modules and (de)compress."""
    if len(args) != 2 or not isinstance(args[0], str) or args[1] not in ("latin1", "latin-1"):
        raise _refuse(call, "with another codec than latin1")
    return call(*args)


def _byte_source(call: Callable, args: tuple) -> Any:
    """bytes(), bytearray(b'..'), bytearray('..', 'latin-1') as pickles write them; not bytearray(10**10)."""
    if len(args) == 1 and isinstance(args[0], (bytes, bytearray)) or not args:
        return call(*args)
    return _latin1(call, args)


_FRACTION_TEXT = re.compile(r"-?\d+(?:/\d+)?")


def _fraction_parts(call: Callable, args: tuple) -> Any:
    """Fraction(2, 3), or Fraction('2/3') as older Pythons pickle it; Fraction('1e10000000') computes a
    10-million-digit integer."""
    if not (all(type(arg) is int for arg in args) or (len(args) == 1 and isinstance(args[0], str)
                                                     and _FRACTION_TEXT.fullmatch(args[0]))):
        raise _refuse(call, "with anything but integers or 'n/d' text")
    return call(*args)


def _type_of_singleton(call: Callable, args: tuple) -> Any:
    """type(None), type(...), type(NotImplemented): how pickle saves those types; type(name, bases, ns) makes a
    class."""
    if len(args) != 1 or not any(args[0] is singleton for singleton in (None, Ellipsis, NotImplemented)):
        raise _refuse(call, "to make a type")
    return call(*args)


def _empty_shape_at(index: int) -> Callable:
    """numpy makes an array of `shape` uninitialised, then BUILD fills it: pickles always pass (0,), so that no
    array shows the daemon's memory."""

    def guard(call: Callable, args: tuple) -> Any:
        if len(args) <= index or tuple(args[index]) != (0,):
            raise _refuse(call, "with a non-empty shape (uninitialised memory)")
        return call(*args)

    return guard


def _is_numpy_random(value: Any) -> bool:
    cls = value if isinstance(value, type) else type(value)
    return cls.__module__.startswith("numpy.random.")


def _bit_generator_name(call: Callable, args: tuple) -> Any:
    """numpy.random's ctors instantiate the class (or look up the name) they are given, and call the ctor they are
    given: only numpy.random's own."""
    if args and not (isinstance(args[0], str) or _is_numpy_random(args[0])):
        raise _refuse(call, "with a %s" % type(args[0]).__name__)
    if len(args) > 1 and (getattr(args[1], "__module__", None), getattr(args[1], "__qualname__", None)) != (
        "numpy.random._pickle", "__bit_generator_ctor"):
        raise _refuse(call, "with another ctor than numpy's")
    return call(*args)


def _pandas_index_class(call: Callable, args: tuple) -> Any:
    """pandas' _new_*Index(cls, d) calls cls.__new__(cls, **d): cls must be a pandas Index class."""
    import pandas  # imported already: the function guarded lives in pandas

    if not args or not (isinstance(args[0], type) and issubclass(args[0], pandas.Index)):
        raise _refuse(call, "with another class than a pandas Index")
    return call(*args)


def _arrow_validated(call: Callable, args: tuple) -> Any:
    """pyarrow rebuilds arrays from pickled buffers without checking lengths and offsets against them: validate,
    or an array reads past its buffers."""
    result = call(*args)
    try:
        result.validate(full=True)
    except Exception as exc:
        raise pickle.UnpicklingError("untrusted pickle holds an invalid Arrow %s: %s" % (type(result).__name__, exc))
    return result


def _pandas_blocks_in_frame(call: Callable, args: tuple) -> Any:
    """BlockManager(blocks, axes) as pandas 3 pickles it (pandas 2: no arguments, then BUILD), never with
    verify_integrity=False; pandas does not check that blocks lie within the frame (see `_check_block_locations`)."""
    if len(args) not in (0, 2):
        raise _refuse(call, "with other arguments than (blocks, axes)")
    if args:
        _check_block_locations([block.mgr_locs for block in args[0]], args[1])
    return call(*args)


def _no_arguments(call: Callable, args: tuple) -> Any:
    """Made by NEWOBJ without arguments, then BUILD (SingleBlockManager(block, axis) checks nothing)."""
    if args:
        raise _refuse(call, "with arguments")
    return call()


def _invalid(what: str) -> pickle.UnpicklingError:
    return pickle.UnpicklingError("untrusted pickle holds %s: refused" % what)


def _check_block_locations(locations: list, axes: Any) -> None:
    """pandas writes each block's item numbers into arrays as long as the frame's items without bounds checks
    (`_rebuild_blknos_and_blklocs`): a block placed outside writes outside them."""
    from pandas._libs.internals import BlockPlacement

    items = len(axes[0])
    for location in locations:
        placement = location if isinstance(location, BlockPlacement) else BlockPlacement(location)
        count = len(placement)
        if not count:
            continue
        numbers = placement.indexer  # a slice is not expanded: slice(0, 10**12) would be 8 TB
        if isinstance(numbers, slice):
            first = numbers.start or 0
            last = first + (count - 1) * (numbers.step or 1)
            low, high = min(first, last), max(first, last)
        else:
            low, high = numbers.min(), numbers.max()
        if count > items or low < 0 or high >= items:
            raise _invalid("a pandas block placed outside its frame")


def _check_manager_state(state: Any) -> None:
    """A block manager's pickled state (pandas 2, and pandas 3's SingleBlockManager), before pandas uses it."""
    try:
        state = state[3]["0.14.1"]
        locations = [block["mgr_locs"] for block in state["blocks"]]
        axes = state["axes"]
    except (TypeError, KeyError, IndexError):
        return  # pandas refuses it itself ("pre-0.14.1 pickles are no longer supported")
    _check_block_locations(locations, axes)


def _check_image_state(state: Any) -> None:
    """A PIL image's state is [info, mode, size, palette, pixels]: PIL allocates `size` before it reads the pixels,
    so a tiny pickle claiming 65535x65535 would take 16 GB. At least one bit of pixels per pixel, as mode "1" packs."""
    try:
        width, height = state[2]
        pixels = len(state[4])
    except (TypeError, ValueError, IndexError, KeyError):
        return  # PIL refuses it itself
    if not (isinstance(width, int) and isinstance(height, int)) or width * height > 8 * pixels:
        raise _invalid("a %r image with %d bytes of pixels" % (state[2], pixels))


@lru_cache(maxsize=None)
def _pandas_checked_classes() -> tuple:
    from pandas import Categorical, MultiIndex
    from pandas._libs.arrays import NDArrayBacked
    from pandas.arrays import DatetimeArray, PeriodArray, SparseArray, TimedeltaArray
    from pandas.core.internals.managers import BaseBlockManager, SingleBlockManager

    kinds = {DatetimeArray: "M", TimedeltaArray: "m", PeriodArray: "i"}
    return (NDArrayBacked, BaseBlockManager, MultiIndex, SparseArray), Categorical, kinds, SingleBlockManager


def _check_pandas_object(obj: Any) -> None:
    """The invariants pandas' compiled code relies on without checking, for objects pickles rebuild from state:
    a Categorical's codes index its categories, an NDArrayBacked array holds an ndarray of its kind, a manager's
    blocks match its axes, a MultiIndex's codes its levels."""
    checked, categorical, kinds, single_block_manager = _pandas_checked_classes()
    if not isinstance(obj, checked):
        return
    ndarray_backed, block_manager, multi_index, sparse_array = checked
    if isinstance(obj, ndarray_backed):
        import numpy

        values = obj._ndarray
        if not isinstance(values, numpy.ndarray):
            raise _invalid("a %s without its array" % type(obj).__name__)
        if isinstance(obj, categorical):
            categories = len(obj.dtype.categories)
            if values.dtype.kind not in "iu" or values.ndim != 1 or (
                values.size and (values.min() < -1 or values.max() >= categories)
            ):
                raise _invalid("a Categorical whose codes are not those of its categories")
        kind = next((kind for cls, kind in kinds.items() if isinstance(obj, cls)), None)
        if kind is not None and (values.dtype.kind != kind or values.dtype.itemsize != 8):
            raise _invalid("a %s of %s values" % (type(obj).__name__, values.dtype))
    elif isinstance(obj, block_manager):
        try:
            if isinstance(obj, single_block_manager):
                ok = len(obj.blocks) == 1 and len(obj.blocks[0].values) == len(obj.axes[0])
            else:
                obj._verify_integrity()
                ok = True
        except (AssertionError, ValueError, TypeError, AttributeError, IndexError):
            ok = False
        if not ok:
            raise _invalid("a pandas %s whose blocks do not match its axes" % type(obj).__name__)
    elif isinstance(obj, multi_index):
        try:
            obj._verify_integrity()
        except ValueError as exc:
            raise _invalid("a MultiIndex whose codes are not those of its levels (%s)" % exc) from None
    elif len(obj.sp_values) != obj.sp_index.npoints:  # a SparseArray
        raise _invalid("a SparseArray whose values do not match its index")


def _zone_key(call: Callable, args: tuple) -> Any:
    """ZoneInfo(key) and ZoneInfo._unpickle(key, ...) read the key's file in the system's time zone directories;
    for a key found nowhere there, zoneinfo imports importlib.resources and searches the tzdata package. With
    system time zone data present, such a key is refused (the check mirrors zoneinfo's: no path leaves TZPATH)."""
    import os
    import zoneinfo

    key = args[0] if args else None
    directories = [path for path in zoneinfo.TZPATH if os.path.isdir(path)]
    if isinstance(key, str) and directories:
        if os.path.isabs(key) or os.path.normpath(key) != key or key.startswith(".."):
            raise _refuse(call, "with a key outside the time zone directories")
        if not any(os.path.isfile(os.path.join(path, key)) for path in directories):
            raise _refuse(call, "with a key the system has no time zone for")
    return call(*args)


def _entries(guard: Optional[Callable], module: str, names: str) -> Dict[Tuple[str, str], Optional[Callable]]:
    return {(module, name): guard for name in names.split()}


# --- the allow-list ----------------------------------------------------------------------------------------------

_PANDAS_2_MODULES = {
    # pandas 2.x pickles classes under the module that defines them; pandas 3 under `pandas`/`pandas.arrays`.
    "pandas.core.frame": "DataFrame",
    "pandas.core.series": "Series",
    "pandas.core.indexes.base": "Index",
    "pandas.core.indexes.range": "RangeIndex",
    "pandas.core.indexes.multi": "MultiIndex",
    "pandas.core.indexes.datetimes": "DatetimeIndex",
    "pandas.core.indexes.timedeltas": "TimedeltaIndex",
    "pandas.core.indexes.period": "PeriodIndex",
    "pandas.core.indexes.interval": "IntervalIndex",
    "pandas.core.indexes.category": "CategoricalIndex",
    "pandas.core.arrays.categorical": "Categorical",
    "pandas.core.dtypes.dtypes": "CategoricalDtype DatetimeTZDtype PeriodDtype IntervalDtype SparseDtype ArrowDtype "
                                 "NumpyEADtype PandasDtype",
    "pandas.core.arrays.string_": "StringDtype StringArray",
    "pandas.core.arrays.string_arrow": "ArrowStringArray ArrowStringArrayNumpySemantics",
    "pandas.core.arrays.arrow.array": "ArrowExtensionArray",
    "pandas.core.arrays.boolean": "BooleanArray BooleanDtype",
    "pandas.core.arrays.floating": "FloatingArray Float32Dtype Float64Dtype",
    "pandas.core.arrays.integer": "IntegerArray Int8Dtype Int16Dtype Int32Dtype Int64Dtype UInt8Dtype UInt16Dtype "
                                  "UInt32Dtype UInt64Dtype",
    "pandas.core.arrays.datetimes": "DatetimeArray",
    "pandas.core.arrays.timedeltas": "TimedeltaArray",
    "pandas.core.arrays.period": "PeriodArray",
    "pandas.core.arrays.interval": "IntervalArray",
    "pandas.core.arrays.sparse.array": "SparseArray",
    "pandas.core.arrays.numpy_": "NumpyExtensionArray PandasArray",
    "pandas._libs.tslibs.timestamps": "Timestamp",
    "pandas._libs.tslibs.timedeltas": "Timedelta",
    "pandas._libs.tslibs.period": "Period",
    "pandas._libs.interval": "Interval",
    "pandas._libs.missing": "NA NAType",
    "pandas._libs.tslibs.nattype": "NaT NaTType",
}  # fmt: skip
_PANDAS_OFFSETS = (
    "BaseOffset BDay BHalfYearBegin BHalfYearEnd BMonthBegin BMonthEnd BQuarterBegin BQuarterEnd BYearBegin "
    "BYearEnd BusinessDay BusinessHour BusinessMonthBegin BusinessMonthEnd CBMonthBegin CBMonthEnd CDay "
    "CustomBusinessDay CustomBusinessHour CustomBusinessMonthBegin CustomBusinessMonthEnd DateOffset Day Easter "
    "FY5253 FY5253Quarter HalfYearBegin HalfYearEnd Hour LastWeekOfMonth Micro Milli Minute MonthBegin MonthEnd Nano "
    "QuarterBegin QuarterEnd Second SemiMonthBegin SemiMonthEnd Tick Week WeekOfMonth YearBegin YearEnd"
)
_PIL_IMAGE_FILES = ("Png", "Jpeg", "Gif", "Bmp", "Tiff", "WebP", "Ppm", "Ico", "Mpo")

#: numpy's scalar types that exist on every platform, by name (`str(type(x))` is "numpy.<name>" in numpy 1 and 2;
#: platform aliases like intc print as int32)
NUMPY_SCALAR_NAMES = frozenset(
    {
        "bool", "bool_", "int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64", "longlong",
        "ulonglong", "float16", "float32", "float64", "longdouble", "complex64", "complex128", "clongdouble", "str_",
        "bytes_", "void", "datetime64", "timedelta64",
    }
)  # fmt: skip

#: Every global an untrusted pickle may name, exactly, and how it may be called: None (freely: it only builds a
#: value from its arguments), `_NOT_CALLED`, or a guard (above). The module docstring says what is left out.
_ALLOWED: Dict[Tuple[str, str], Optional[Callable]] = {
    **_entries(None, "builtins", "complex range slice Ellipsis NotImplemented getattr object"),
    **_entries(_NOT_CALLED, "builtins", "list dict tuple int float str bool"),
    **_entries(_materialised, "builtins", "set frozenset"),
    **_entries(_byte_source, "builtins", "bytes bytearray"),
    ("builtins", "type"): _type_of_singleton,
    ("_codecs", "encode"): _latin1,
    **_entries(_materialised, "collections", "OrderedDict defaultdict deque Counter"),
    **_entries(None, "datetime", "datetime date time timedelta timezone"),
    ("decimal", "Decimal"): None,
    ("fractions", "Fraction"): _fraction_parts,
    **_entries(None, "uuid", "UUID SafeUUID"),
    **_entries(None, "pathlib", "PurePath PurePosixPath PureWindowsPath"),
    ("zoneinfo", "ZoneInfo"): _zone_key,
    ("zoneinfo._zoneinfo", "ZoneInfo"): _zone_key,
    # numpy 2.x names, then 1.x names (numpy 2 still loads those, and 1.26 loads numpy 2's)
    **_entries(_NOT_CALLED, "numpy", "ndarray matrix record recarray " + " ".join(sorted(NUMPY_SCALAR_NAMES))),
    ("numpy", "dtype"): None,
    ("numpy.rec", "recarray"): _NOT_CALLED,
    **_entries(_NOT_CALLED, "numpy.ma", "MaskedArray"),
    **_entries(_NOT_CALLED, "numpy.ma.core", "MaskedArray"),
    ("numpy.ma.core", "MaskedConstant"): None,
    ("numpy.ma.core", "_mareconstruct"): _empty_shape_at(2),
    **dict.fromkeys([("numpy._core.multiarray", "_reconstruct"), ("numpy.core.multiarray", "_reconstruct")],
                    _empty_shape_at(1)),
    **{(module, "scalar"): None for module in ("numpy._core.multiarray", "numpy.core.multiarray")},
    **{(module, "_frombuffer"): None for module in ("numpy._core.numeric", "numpy.core.numeric")},
    ("numpy._core._internal", "_convert_to_stringdtype_kwargs"): None,
    **_entries(_bit_generator_name, "numpy.random._pickle", "__bit_generator_ctor __generator_ctor __randomstate_ctor"),
    ("numpy.random._mt19937", "MT19937"): None,
    ("numpy.random._pcg64", "PCG64"): None,
    ("numpy.random._pcg64", "PCG64DXSM"): None,
    ("numpy.random._philox", "Philox"): None,
    ("numpy.random._sfc64", "SFC64"): None,
    ("numpy.random.bit_generator", "SeedSequence"): None,
    ("numpy.random.bit_generator", "__pyx_unpickle_SeedSequence"): None,
    ("numpy.random._generator", "Generator"): None,
    ("numpy.random.mtrand", "RandomState"): None,
    # pandas 3.x names, then 2.x names
    **_entries(None, "pandas", "DataFrame Series Index RangeIndex MultiIndex DatetimeIndex TimedeltaIndex "
                               "PeriodIndex IntervalIndex CategoricalIndex Categorical CategoricalDtype "
                               "DatetimeTZDtype PeriodDtype IntervalDtype SparseDtype StringDtype ArrowDtype "
                               "BooleanDtype Float32Dtype Float64Dtype Int8Dtype Int16Dtype Int32Dtype Int64Dtype "
                               "UInt8Dtype UInt16Dtype UInt32Dtype UInt64Dtype Timestamp Timedelta Period Interval "
                               "DateOffset NA NaT"),
    **_entries(None, "pandas.arrays", "ArrowExtensionArray ArrowStringArray BooleanArray DatetimeArray "
                                      "FloatingArray IntegerArray IntervalArray NumpyExtensionArray PeriodArray "
                                      "SparseArray StringArray TimedeltaArray"),
    **{(module, name): None for module, names in _PANDAS_2_MODULES.items() for name in names.split()},
    **_entries(None, "pandas._libs.tslibs.offsets", _PANDAS_OFFSETS),
    ("pandas.core.internals.managers", "BlockManager"): _pandas_blocks_in_frame,
    ("pandas.core.internals.managers", "SingleBlockManager"): _no_arguments,
    ("pandas._libs.internals", "_unpickle_block"): None,
    ("pandas._libs.arrays", "__pyx_unpickle_NDArrayBacked"): None,
    ("pandas._libs.interval", "__pyx_unpickle_IntervalMixin"): None,
    **_entries(None, "pandas._libs.sparse", "IntIndex BlockIndex"),
    ("pandas._libs.tslibs.nattype", "_nat_unpickle"): None,
    ("pandas._libs.tslibs.timestamps", "_unpickle_timestamp"): None,
    ("pandas._libs.tslibs.timedeltas", "_timedelta_unpickle"): None,
    **{(module, name): _pandas_index_class for module, name in (
        ("pandas.core.indexes.base", "_new_Index"), ("pandas.core.indexes.datetimes", "_new_DatetimeIndex"),
        ("pandas.core.indexes.period", "_new_PeriodIndex"), ("pandas.core.indexes.interval", "_new_IntervalIndex"),
        ("pandas.core.indexes.timedeltas", "_new_TimedeltaIndex"))},
    ("dateutil.relativedelta", "relativedelta"): None,  # inside pandas.DateOffset
    # pyarrow: the type factories its pickles name, and the array/table rebuilders, validated
    **_entries(None, "pyarrow.lib", "type_for_alias binary decimal128 dictionary field list_ map_ struct timestamp "
                                    "schema scalar py_buffer chunked_array"),
    **_entries(_arrow_validated, "pyarrow.lib", "_restore_array _reconstruct_table _reconstruct_record_batch"),
    # PIL: an image pickles as its class plus (info, mode, size, palette, pixel bytes); opened files as theirs
    ("PIL.Image", "Image"): None,
    **{("PIL.%sImagePlugin" % kind, "%sImageFile" % kind): None for kind in _PIL_IMAGE_FILES},
}  # fmt: skip

# Loaded as another allowed global: a concrete path as its pure path (no I/O methods), getattr checked.
_RESOLVED_AS = {
    ("pathlib", "Path"): ("pathlib", "PurePath"),
    ("pathlib", "PosixPath"): ("pathlib", "PurePosixPath"),
    ("pathlib", "WindowsPath"): ("pathlib", "PureWindowsPath"),
}

#: Data classes `allowed` accepts, by the names their types print as: the mount asks about these to list an
#: artifact's exports, and answering by name spares importing numpy (0.2 s) or pandas (0.5 s) for a directory
#: listing. All are in `_ALLOWED` (tests/test_unpickle.py checks it).
_KNOWN_DATA_CLASSES = frozenset(
    [("numpy", "ndarray")]
    + [("numpy", scalar) for scalar in NUMPY_SCALAR_NAMES]
    + [("pandas", "DataFrame"), ("pandas.core.frame", "DataFrame"), ("pandas", "Series"),
       ("pandas.core.series", "Series"), ("pandas", "Timestamp"), ("pandas._libs.tslibs.timestamps", "Timestamp"),
       ("pandas", "Timedelta"), ("pandas._libs.tslibs.timedeltas", "Timedelta")]
    + [("PIL.Image", "Image")]
)


@lru_cache(maxsize=1024)
def _python3_name(module: str, name: str) -> Tuple[str, str]:
    # Protocol 0-2 pickles name Python 2 modules (__builtin__.set, copy_reg._reconstructor): check and resolve the
    # Python 3 names, as pickle's own find_class does.
    module, name = _compat_pickle.NAME_MAPPING.get((module, name), (module, name))
    return _compat_pickle.IMPORT_MAPPING.get(module, module), name


def allowed(module: str, name: str) -> bool:
    """Whether an untrusted load (`trusted=False`) builds the global `module.name` instead of a placeholder."""
    module, name = _python3_name(module, name)
    return (
        (module, name) in _ALLOWED
        or (module, name) in _RESOLVED_AS
        or (module, name) in METAFLOW_STANDINS
        or (module == "metaflow.client.core" and name in _CLIENT_CLASSES)
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
    module, name = _python3_name(module, name)
    standin = METAFLOW_STANDINS.get((module, name))
    if standin is not None:
        return standin
    if module == "metaflow.client.core" and name in _CLIENT_CLASSES:
        from . import core

        return getattr(core, name)
    if not unpickler.trusted:
        module, name = _RESOLVED_AS.get((module, name), (module, name))
        if (module, name) == ("builtins", "getattr"):
            return _restricted_getattr
        if (module, name) not in _ALLOWED:
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


def _check_dtype(dtype: Any) -> None:
    """A dtype's pickled state is trusted by numpy (flags, field offsets): it must describe the dtype numpy builds
    from the same description, or an array of it reads pointers from bytes."""
    import numpy

    try:
        if dtype.names is not None:
            fields = [dtype.fields[name] for name in dtype.names]
            spec = {"names": list(dtype.names), "formats": [field[0] for field in fields],
                    "offsets": [field[1] for field in fields], "itemsize": dtype.itemsize,
                    "titles": [field[2] if len(field) > 2 else None for field in fields]}
            canonical = numpy.dtype(spec, align=dtype.isalignedstruct)
        elif dtype.subdtype is not None:
            canonical = numpy.dtype(dtype.subdtype)
        else:
            canonical = numpy.dtype(dtype.str)
        same = (canonical == dtype and canonical.flags == dtype.flags and canonical.itemsize == dtype.itemsize
                and canonical.alignment == dtype.alignment and canonical.hasobject == dtype.hasobject)
    except (TypeError, ValueError) as exc:
        raise pickle.UnpicklingError("untrusted pickle sets an invalid numpy dtype state: %s" % exc) from None
    if not same:
        raise pickle.UnpicklingError("untrusted pickle sets a numpy dtype state numpy would not build: refused")


def _complete_without_state(obj: Any) -> bool:
    """Whether an object made without its constructor (NEWOBJ) is whole without a BUILD: a bare object, immutable
    builtins (namedtuples), placeholders, pandas' masked dtypes (stateless). Others, numpy and pandas' compiled classes
    among them, keep NULL or None fields that their compiled code does not check until a BUILD sets them."""
    if type(obj) is object or isinstance(obj, (UntrustedObject, tuple, int, float, complex, str, bytes, frozenset)):
        return True
    dtypes = sys.modules.get("pandas.core.dtypes.dtypes")
    return dtypes is not None and isinstance(obj, getattr(dtypes, "BaseMaskedDtype", ()))


_STATE_POSITIONS = {"MT19937": ("state", "pos", 624), "Philox": (None, "buffer_pos", 4)}


def _check_bit_generator(obj: Any) -> None:
    """numpy's MT19937 and Philox take the position in their state buffer from the pickle, and read the buffer
    there when drawing."""
    bit_generator = getattr(obj, "bit_generator", None) or getattr(obj, "_bit_generator", obj)
    state = getattr(bit_generator, "state", None)
    if not isinstance(state, dict) or state.get("bit_generator") not in _STATE_POSITIONS:
        return
    part, key, size = _STATE_POSITIONS[state["bit_generator"]]
    position = (state[part] if part else state)[key]
    if not 0 <= position <= size:
        raise _invalid("a %s state positioned outside its buffer" % state["bit_generator"])


def _check_made(obj: Any) -> None:
    module = type(obj).__module__
    if module.startswith("pandas"):
        _check_pandas_object(obj)
    elif module.startswith("numpy.random"):
        _check_bit_generator(obj)


class _RestrictedUnpickler(pickle._Unpickler):
    """trusted=False: pickle's pure-Python unpickler, because its opcodes can be checked (module docstring)."""

    trusted = False

    def __init__(self, file: io.BytesIO):
        super().__init__(file)
        # what find_class returned during this load, by id (kept alive): (object, guard)
        self._named: Dict[int, Tuple[Any, Optional[Callable]]] = {}
        # objects BUILD gave their state (kept alive): a second BUILD is refused
        self._built: Dict[int, Any] = {}
        # objects made without their constructor whose C state only a BUILD sets: the load fails if one is left
        self._unbuilt: Dict[int, Any] = {}

    def find_class(self, module: str, name: str) -> Any:
        found = _find_class(self, super().find_class, module, name)
        module, name = _RESOLVED_AS.get(_python3_name(module, name), _python3_name(module, name))
        self._named[id(found)] = (found, _ALLOWED.get((module, name)))
        return found

    def _guard_for(self, func: Any) -> Optional[Callable]:
        named = self._named.get(id(func))
        if named is not None:
            return named[1]
        if isinstance(func, UntrustedObject):
            return None
        raise pickle.UnpicklingError("untrusted pickle calls %r, which it did not name as a global: refused" % (func,))

    def _load_reduce(self) -> None:
        args = self.stack.pop()
        func = self.stack[-1]
        guard = self._guard_for(func)
        value = func(*args) if guard is None else guard(func, args)
        if func is _restricted_getattr and callable(value) and not isinstance(value, UntrustedObject):
            self._named[id(value)] = (value, _zone_key)  # ZoneInfo._unpickle
        elif getattr(func, "__name__", "").startswith("__pyx_unpickle_") and args and args[-1] is None:
            self._unbuilt[id(value)] = value  # Cython's reconstructor: the state follows in a BUILD
        else:
            _check_made(value)
        self.stack[-1] = value

    def _load_newobj(self) -> None:
        args = self.stack.pop()
        cls = self.stack.pop()
        self.append(self._new(cls, args, {}))

    def _load_newobj_ex(self) -> None:
        kwargs = self.stack.pop()
        args = self.stack.pop()
        cls = self.stack.pop()
        self.append(self._new(cls, args, kwargs))

    def _new(self, cls: Any, args: tuple, kwargs: dict) -> Any:
        guard = self._guard_for(cls)
        if guard is None:
            obj = cls.__new__(cls, *args, **kwargs)
        else:

            def new(*args: Any) -> Any:
                return cls.__new__(cls, *args, **kwargs)

            new.__qualname__ = "%s.__new__" % getattr(cls, "__qualname__", "?")
            obj = guard(new, args)
        if not _complete_without_state(obj):
            self._unbuilt[id(obj)] = obj
        return obj

    def _load_build(self) -> None:
        # BUILD on a class, function or constant the pickle named would change it for the whole process (set
        # `pandas.Index.__repr__`); pickles of data only ever BUILD objects they have just created, and never set
        # dunder attributes (`__class__`, `__reduce_ex__`, `__setstate__`; pandas' __setstate__ sets any key), nor
        # shadow a method with their own callable (what a renderer calls next: `frame.to_csv`).
        state = self.stack[-1]
        target = self.stack[-2]
        if isinstance(target, (type, types.ModuleType)) or id(target) in self._named:
            raise pickle.UnpicklingError("untrusted pickle sets attributes of %r: refused" % (target,))
        if isinstance(target, UntrustedObject):
            pickle._Unpickler.load_build(self)  # its __setstate__ ignores the state
            return
        # A data pickle builds each object once, before anything else holds it. Held by more than the stack, the
        # memo, `target` and getrefcount's argument, the object is shared (np.ma.masked, an enum member: BUILD would
        # change it for the whole process) or already in use (an array a pandas block checked, a dtype an array
        # has): refused, as is a second BUILD.
        self._unbuilt.pop(id(target), None)
        if sys.getrefcount(target) > 4 or id(target) in self._built:
            raise pickle.UnpicklingError("untrusted pickle changes a %s that is built, shared or in use: refused"
                                         % type(target).__name__)
        self._built[id(target)] = target
        parts = state if isinstance(state, tuple) and len(state) == 2 else (state,)  # (dict, slots) or dict
        for part in parts:
            for key in part if isinstance(part, dict) else ():
                if isinstance(key, str) and (key.startswith("__") or callable(getattr(type(target), key, None))):
                    raise pickle.UnpicklingError("untrusted pickle sets %s of a %s, a dunder or a method: refused"
                                                 % (key, type(target).__name__))
        module = type(target).__module__
        if module == "pandas.core.internals.managers":
            _check_manager_state(state)
        elif module.startswith("PIL."):
            _check_image_state(state)
        pickle._Unpickler.load_build(self)
        if module.startswith("numpy") and isinstance(target, sys.modules["numpy"].dtype):
            _check_dtype(target)
        _check_made(target)

    def _load_stop(self) -> None:
        if self._unbuilt:
            raise pickle.UnpicklingError("untrusted pickle leaves a %s without the state it needs: refused"
                                         % type(next(iter(self._unbuilt.values()))).__name__)
        pickle._Unpickler.load_stop(self)

    def _filled(self, target: Any) -> None:
        # APPENDS, SETITEMS...: pickles of data fill containers they made, not a class or function they named
        if id(target) in self._named:
            raise pickle.UnpicklingError("untrusted pickle adds items to %r: refused" % (target,))

    def _load_append(self) -> None:
        self._filled(self.stack[-2])
        pickle._Unpickler.load_append(self)

    def _load_setitem(self) -> None:
        self._filled(self.stack[-3])
        pickle._Unpickler.load_setitem(self)

    def _load_appends(self) -> None:
        self._filled(self.metastack[-1][-1])  # the object below the MARK
        pickle._Unpickler.load_appends(self)

    def _load_setitems(self) -> None:
        self._filled(self.metastack[-1][-1])
        pickle._Unpickler.load_setitems(self)

    def _load_additems(self) -> None:
        self._filled(self.metastack[-1][-1])
        pickle._Unpickler.load_additems(self)

    def _load_refused(self) -> None:
        raise pickle.UnpicklingError("untrusted pickle uses INST, OBJ or DUP, which pickles of data do not: refused")

    dispatch = {**pickle._Unpickler.dispatch, **{opcode[0]: load for opcode, load in (
        (pickle.REDUCE, _load_reduce), (pickle.NEWOBJ, _load_newobj), (pickle.NEWOBJ_EX, _load_newobj_ex),
        (pickle.BUILD, _load_build), (pickle.APPEND, _load_append), (pickle.APPENDS, _load_appends),
        (pickle.SETITEM, _load_setitem), (pickle.SETITEMS, _load_setitems), (pickle.ADDITEMS, _load_additems),
        (pickle.STOP, _load_stop),
        # never written for data: calls of a class (protocol 0/1), a second reference without the memo
        (pickle.INST, _load_refused), (pickle.OBJ, _load_refused), (pickle.DUP, _load_refused),
    )}}


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
