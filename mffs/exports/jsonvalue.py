"""value.json: plain data (containers, numbers, text, times, numpy scalars) as JSON.

  * value.json: UTF-8, indented by 2, a trailing newline; the same value always gives the same bytes. Rules:
      - str, int, bool, None and finite floats as themselves; NaN -> null; inf / -inf -> "Infinity" / "-Infinity".
      - dicts (and Mapping types) -> objects, keys in the value's own order (not sorted: pickles keep insertion
        order, so the output is deterministic and reads like the repr). Keys that are not strings become
        strings: int/float/bool/None as JSON writes them ("1", "2.5", "true", "null"); other keys by these rules
        when they give a string (a datetime key -> its ISO 8601 string, an object -> its repr), else `str(key)`
        (a tuple key (1, 'a') -> "(1, 'a')"). Two keys that become the same string (1 and "1") make the
        export fail rather than silently drop one.
      - list, tuple (also namedtuples), deque -> arrays. set, frozenset -> arrays sorted by value, or by the
        elements' JSON text when the values cannot be compared (mixed types), so the order never depends on
        hashing.
      - datetime, date, time (also pandas Timestamp) -> ISO 8601 strings (`isoformat()`); timedelta (also pandas
        Timedelta) -> total seconds as a number; NaT and pandas NA -> null.
      - Decimal -> string (exact digits, e.g. "1.10"); Fraction -> "1/3"; complex -> {"real": x, "imag": y};
        UUID and paths -> their string.
      - bytes, bytearray -> base64 strings (standard alphabet, padded).
      - numpy scalars -> the Python value (`item()`), datetime64 / timedelta64 -> numpy's ISO-like string
        (`str(value)`, e.g. "2020-01-01T00:00:00.000000000"); numpy arrays -> nested arrays of their elements
        by the same rules.
      - anything else (a custom object, a nested DataFrame, an untrusted placeholder) -> its repr() string.
      - a value that contains itself fails the export.
    Strings are written as UTF-8 characters (not \\u escapes) unless the value holds lone surrogates that UTF-8
    cannot encode; then the whole file is written with ASCII escapes, which JSON readers decode identically.
"""
from __future__ import annotations

import base64
import collections
import datetime as dt
import decimal
import fractions
import json
import math
import pathlib
import uuid
from collections import deque
from collections.abc import Mapping
from typing import Any, Callable, Dict, List

from client import unpickle

from .. import render
from .rule import Example, ExportError, ExportRule, WrongKind, type_label

_JSON_TYPES = frozenset(
    {
        "dict", "list", "tuple", "set", "frozenset", "str", "int", "float", "bool", "NoneType", "complex",
        "collections.OrderedDict", "collections.defaultdict", "collections.Counter", "collections.deque",
        "datetime.datetime", "datetime.date", "datetime.time", "datetime.timedelta",
        "decimal.Decimal", "fractions.Fraction", "uuid.UUID",
        "pandas.Timestamp", "pandas._libs.tslibs.timestamps.Timestamp",
        "pandas.Timedelta", "pandas._libs.tslibs.timedeltas.Timedelta",
    }
)  # fmt: skip
# numpy's scalars, also those that exist on some platforms only
_NUMPY_SCALAR_NAMES = unpickle.NUMPY_SCALAR_NAMES | {"float96", "float128", "complex192", "complex256"}


def _is_json_type(qualname: str) -> bool:
    if qualname in _JSON_TYPES:
        return True
    module, _, name = qualname.rpartition(".")
    return module == "numpy" and name in _NUMPY_SCALAR_NAMES


def _render_json(value: Any) -> bytes:
    if not _is_json_kind(value):
        raise WrongKind("data (containers, numbers, text, times, numpy scalars)")
    document = _JsonConverter().convert(value)
    data = render.indented_json(document)
    if data is not None:
        return data
    try:
        return (json.dumps(document, indent=2, ensure_ascii=False, allow_nan=False) + "\n").encode("utf-8")
    except UnicodeEncodeError:  # lone surrogates: ASCII escapes are valid JSON for them
        return (json.dumps(document, indent=2, ensure_ascii=True, allow_nan=False) + "\n").encode("ascii")


def _examples() -> List[Example]:
    import numpy
    import pandas

    return [
        Example({"a": [1, 2.5, None, True], 1: "int key"}, {"a": [1, 2.5, None, True], "1": "int key"}),
        Example([1, "x", [math.inf]], [1, "x", ["Infinity"]]),
        Example((1, (2, 3)), [1, [2, 3]]),
        Example({"b", "c", "a"}, ["a", "b", "c"]),
        Example(frozenset({1, "x"}), ["x", 1]),
        Example("na\u00efve \u65e5\u672c", "na\u00efve \u65e5\u672c"),
        Example(10**30, 10**30),
        Example(math.nan, None),
        Example(True, True),
        Example(None, None),
        Example(1.5 - 2j, {"real": 1.5, "imag": -2.0}),
        Example(collections.OrderedDict([("z", 1), ("y", 2)]), {"z": 1, "y": 2}),
        Example(collections.defaultdict(list, a=[1]), {"a": [1]}),
        Example(collections.Counter("aab"), {"a": 2, "b": 1}),
        Example(collections.deque([3, 4]), [3, 4]),
        Example(dt.datetime(2024, 5, 6, 7, 8, 9, tzinfo=dt.timezone.utc), "2024-05-06T07:08:09+00:00"),
        Example(dt.date(2024, 5, 6), "2024-05-06"),
        Example(dt.time(7, 8), "07:08:00"),
        Example(dt.timedelta(minutes=1, milliseconds=500), 60.5),
        Example(decimal.Decimal("1.10"), "1.10"),
        Example(fractions.Fraction(1, 3), "1/3"),
        Example(uuid.UUID(int=7), "00000000-0000-0000-0000-000000000007"),
        Example(numpy.float64(2.5), 2.5),
        Example(numpy.int32(7), 7),
        Example(numpy.bool_(True), True),
        Example(numpy.datetime64("2024-05-06"), "2024-05-06"),
        Example(pandas.Timestamp("2024-05-06 07:08", tz="UTC"), "2024-05-06T07:08:00+00:00"),
        Example(pandas.Timedelta("2s"), 2.0),
    ]


JSON = ExportRule("value.json", fits=_is_json_type, needs=(),
                  render=_render_json, read_back=json.loads, examples=_examples)


# --- conversion (rules in the module docstring) ------------------------------------------------------------------


#: types whose values are already JSON, exactly (not subclasses, and not float: NaN and infinities are not)
_JSON_ATOMS = frozenset((str, int, bool, type(None)))


class _JsonConverter:
    """Converts a value into JSON-native data (dict with str keys, list, str, int, float, bool, None)."""

    def __init__(self) -> None:
        self._open_containers: set = set()  # ids of the containers being converted, to catch self-reference

    def convert(self, value: Any) -> Any:
        if value is None or isinstance(value, bool):
            return value
        if isinstance(value, str):
            return str(value)
        if isinstance(value, int):
            return int(value)
        if isinstance(value, float):
            return _float(float(value))
        if type(value).__module__ == "numpy":
            if type(value).__name__ == "ndarray":
                return self._container(value, lambda: self.convert(_array_items(value)))
            if getattr(value, "ndim", None) == 0:
                return self.convert(_numpy_scalar_item(value))
        scalar = _convert_scalar(value)
        if scalar is not _NOT_SCALAR:
            return scalar
        if isinstance(value, Mapping):
            return self._container(value, lambda: self._mapping(value))
        if isinstance(value, (list, tuple, deque)):
            if _JSON_ATOMS.issuperset(map(type, value)):  # the common list of plain values, at C speed
                return list(value)
            return self._container(value, lambda: [self.convert(item) for item in value])
        if isinstance(value, (set, frozenset)):
            return self._container(value, lambda: _sorted_set([self.convert(item) for item in value]))
        return repr(value)

    def _container(self, value: Any, convert_items: Callable[[], Any]) -> Any:
        if id(value) in self._open_containers:
            raise ExportError("value.json: the value contains itself (a %s)" % type_label(value))
        self._open_containers.add(id(value))
        try:
            return convert_items()
        finally:
            self._open_containers.discard(id(value))

    def _mapping(self, mapping: Mapping) -> Dict[str, Any]:
        converted: Dict[str, Any] = {}
        original_keys: Dict[str, Any] = {}
        for key, item in mapping.items():
            text = self._key(key)
            if text in converted:
                raise ExportError(
                    "value.json: keys %r and %r both become the JSON key %r" % (original_keys[text], key, text)
                )
            original_keys[text] = key
            converted[text] = self.convert(item)
        return converted

    def _key(self, key: Any) -> str:
        if isinstance(key, str):
            return str(key)
        converted = self.convert(key)
        if isinstance(converted, str):
            return converted
        if converted is None or isinstance(converted, (bool, int, float)):
            return json.dumps(converted)
        return str(key)


_NOT_SCALAR = object()


def _float(value: float) -> Any:
    if math.isnan(value):
        return None
    if math.isinf(value):
        return "Infinity" if value > 0 else "-Infinity"
    return value


def _convert_scalar(value: Any) -> Any:
    """JSON form of a scalar that is not str/int/float/bool/None or a numpy value, or _NOT_SCALAR."""
    if type(value).__name__ in ("NaTType", "NAType"):  # pandas' missing values (NaT is a datetime subclass)
        return None
    if isinstance(value, (dt.datetime, dt.date, dt.time)):
        return value.isoformat()
    if isinstance(value, dt.timedelta):
        return value.total_seconds()
    if isinstance(value, (decimal.Decimal, fractions.Fraction, uuid.UUID, pathlib.PurePath)):
        return str(value)
    if isinstance(value, complex):
        return {"real": _float(value.real), "imag": _float(value.imag)}
    if isinstance(value, (bytes, bytearray)):
        return base64.b64encode(bytes(value)).decode("ascii")
    return _NOT_SCALAR


def _is_json_kind(value: Any) -> bool:
    """Whether value.json applies to the value itself (inside it, anything goes: unknown objects give their repr)."""
    if value is None or isinstance(value, (bool, int, float, str, Mapping, list, tuple, deque, set, frozenset)):
        return True
    if type(value).__module__ == "numpy":
        return type(value).__name__ != "ndarray" and getattr(value, "ndim", None) == 0
    return _convert_scalar(value) is not _NOT_SCALAR and not isinstance(value, (bytes, bytearray, pathlib.PurePath))


def _numpy_scalar_item(value: Any) -> Any:
    """The Python value of a numpy scalar (a structured void gives a tuple); datetimes as numpy's string."""
    if type(value).__name__ in ("datetime64", "timedelta64"):
        return str(value)  # item() would give an int for ns precision
    item = value.item()
    if type(item).__module__ == "numpy":  # no exact Python type (longdouble, clongdouble): nearest one
        return complex(value) if value.dtype.kind == "c" else float(value)
    return item


def _array_items(array: Any) -> Any:
    if array.dtype.kind in "mM":  # tolist() would give integers for ns precision: keep numpy's ISO strings
        return array.astype(str).tolist()
    return array.tolist()


def _sorted_set(items: List[Any]) -> List[Any]:
    try:
        return sorted(items)
    except TypeError:  # mixed or unorderable elements
        return sorted(items, key=lambda item: json.dumps(item, sort_keys=True, ensure_ascii=False))
