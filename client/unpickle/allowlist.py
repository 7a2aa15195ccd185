"""The allow-list: every global an untrusted pickle may name, exactly, and the guard of its calls; `allowed` answers
for one name without importing its module."""
from __future__ import annotations

import _compat_pickle
from functools import lru_cache
from typing import Callable, Dict, Optional, Tuple

from ..pickled_classes import CLIENT_CLASSES, METAFLOW_CLIENT_MODULE
from .guards import (
    _NOT_CALLED,
    _arrow_validated,
    _bit_generator_name,
    _byte_source,
    _empty_shape_at,
    _fraction_parts,
    _latin1,
    _materialised,
    _no_arguments,
    _pandas_blocks_in_frame,
    _pandas_index_class,
    _type_of_singleton,
    _zone_key,
)
from .standins import METAFLOW_STANDINS


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
#: artifact's exports, and answering by name spares importing numpy or pandas for a directory listing. All are in
#: `_ALLOWED` (tests/test_unpickle.py checks it).
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
        or (module == METAFLOW_CLIENT_MODULE and name in CLIENT_CLASSES)
    )
