"""Typed exports of artifact values: the files next to repr.txt / data.pickle / meta.json that real tools can read.

API (used by the path tree):
  * `export_names(type_name, trusted=True)` -> the export file names an artifact has, decided from the type
    string Metaflow stored at save time (`info[name]["type"]` in data.json, e.g. "<class 'pandas.DataFrame'>").
    It never loads a value, so listing an artifact directory stays cheap. An export that needs an optional
    library (pandas, pyarrow, Pillow, matplotlib) is listed only when that library is importable here. With
    `trusted=False` (the mount without --trust-pickles) a type that the restricted unpickler would load as an
    `UntrustedObject` placeholder (e.g. matplotlib figures, classes of the flow) gets no exports:
    its value is not loaded, so there is nothing to export, and an absent file is clearer than one failing EIO.
  * `render_export(name, value)` -> the file's bytes for the loaded value. Raises `ExportError` (a ValueError)
    with a clear message when it cannot: the value is not of the kind the name promises (a subclass the type
    string did not reveal), an `UntrustedObject` placeholder (the mount runs without --trust-pickles), or the
    library refuses it. The tree turns that into EIO for that one file.
  * `EXPORT_NAMES`: every name `export_names` can return.

All three derive from one ordered table, `RULES`: an `ExportRule` per export file and family of stored types
(its name, which stored types it fits, which libraries it needs installed, how it renders). Whether an untrusted
mount offers an export is decided in one place for every rule, `loaded_by_untrusted_mount`, by asking the
restricted unpickler (`client.unpickle.allowed`) whether it builds the stored type.

Which exports a type gets
  | stored type                                                      | exports                    |
  | str                                                              | value.txt, value.json      |
  | bytes, bytearray                                                 | value.bin                  |
  | dict, list, tuple, set, frozenset, int, float, bool, None,       | value.json                 |
  | complex, OrderedDict, defaultdict, Counter, deque, datetime,     |                            |
  | date, time, timedelta, Decimal, Fraction, UUID, numpy scalars,   |                            |
  | pandas Timestamp / Timedelta                                     |                            |
  | numpy.ndarray                                                    | value.npy                  |
  | pandas DataFrame, Series                                         | value.csv, value.parquet   |
  | PIL images (PIL.Image.Image, PIL.*ImageFile), matplotlib Figure  | value.png                  |
  | metaflow.includefile.IncludedFile                                | content                    |

Formats
  * value.txt: the string encoded as UTF-8 (surrogate escapes from undecodable input are written back as the
    original bytes). value.bin: the bytes as they are.
  * content (IncludeFile): the included file's content as the client resolves it: bytes as they are, text as
    UTF-8. Its name has no extension because the stored type does not say whether the file was text or binary.
  * value.npy: `numpy.save` format, readable by `numpy.load(path)`. Object-dtype arrays embed a pickle, as numpy
    writes them, and need `numpy.load(path, allow_pickle=True)`.
  * value.csv: `DataFrame.to_csv`. A frame with the default index (an unnamed RangeIndex 0, 1, 2, ...) is written
    without it, so `pandas.read_csv(path)` and DuckDB read the frame back as it is; any other index is written as
    the first column(s), headed by its name if it has one, and `pandas.read_csv(path, index_col=0)` gives it back
    (one-level index and columns; dtypes are re-inferred). A Series is written as a one-column frame headed by its
    name (`0` when unnamed), by the same rule: `pandas.read_csv(path).squeeze("columns")` (or with `index_col=0`
    for a non-default index) gives it back.
  * value.parquet: `DataFrame.to_parquet` with pyarrow, index included, so `pandas.read_parquet(path)` gives the
    frame back with dtypes and index. Parquet needs string column names: other names are written as `str(name)`.
    A Series is written as `series.to_frame()`.
  * value.png: PIL images in a mode PNG stores (1, L, LA, I, I;16, P, RGB, RGBA) are saved as they are; other
    modes are converted to RGBA when they carry alpha, else RGB. Matplotlib figures are saved with
    `savefig(format="png")` at the figure's own dpi.
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

numpy, pandas, pyarrow, PIL and matplotlib are imported only inside the renderers that need them.
"""
from __future__ import annotations

import base64
import datetime as dt
import decimal
import fractions
import importlib.util
import io
import json
import math
import pathlib
import re
import uuid
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Callable, Dict, Iterable, List, Optional, Tuple

from client import unpickle
from client.unpickle import UntrustedObject

from . import render


class ExportError(ValueError):
    """A value cannot be rendered as the requested export file."""


class WrongKind(ExportError):
    """Raised by a rule's renderer for a value that is not of the kind it renders; `expected` names that kind
    ("a str"). The registry then tries the next rule of the same name, or reports every kind the name takes."""

    def __init__(self, expected: str) -> None:
        super().__init__(expected)
        self.expected = expected


@dataclass(frozen=True)
class ExportRule:
    """One export file for the stored types it fits.

    `name` is the file name in the artifact directory; several rules may share one (value.png for PIL images and
    for matplotlib figures): the file is listed when any of them fits and is rendered by the first whose
    renderer takes the value. `fits` tells from the stored type's qualified name ("pandas.core.frame.DataFrame")
    whether the rule applies, without importing anything. `needs` names the top-level modules that must be
    importable for the file to be listed. `render` turns the loaded value into the file's bytes, raising
    `WrongKind` for a value of another kind."""

    name: str
    fits: Callable[[str], bool]
    render: Callable[[Any], bytes]
    needs: Tuple[str, ...] = ()


# --- the registry: listing and rendering by the rules ------------------------------------------------------------


_TYPE_STRING = re.compile(r"<(?:class|type) '([^']+)'>")
_QUALNAME = re.compile(r"[A-Za-z_][\w.]*")


@lru_cache(maxsize=None)
def _importable(module: str) -> bool:
    # find_spec locates a top-level package without importing it.
    return importlib.util.find_spec(module) is not None


def _qualname(type_name: str) -> Optional[str]:
    match = _TYPE_STRING.fullmatch(type_name.strip())
    return match.group(1) if match else None


def loaded_by_untrusted_mount(qualname: str) -> bool:
    """Whether a mount without --trust-pickles loads a value of this stored type, so that its exports can render:
    `client.unpickle.loads(..., trusted=False)` builds this class rather than an `UntrustedObject` placeholder.
    This is the one place that decides what an untrusted mount offers; rules do not say it themselves."""
    if not _QUALNAME.fullmatch(qualname):
        return False
    module, _, name = qualname.rpartition(".")
    if not module:  # a builtin data type (str, dict, NoneType...): pickled as opcodes or allow-listed builtins
        return True
    return unpickle.allowed(module, name)


class ExportRegistry:
    """An ordered table of export rules, answering the tree's two questions: which export files an artifact of a
    stored type has, and the bytes of one of them for a loaded value."""

    def __init__(self, rules: Iterable[ExportRule]) -> None:
        self.rules: Tuple[ExportRule, ...] = tuple(rules)
        self.names: Tuple[str, ...] = tuple(dict.fromkeys(rule.name for rule in self.rules))
        self._rules_by_name = {name: tuple(rule for rule in self.rules if rule.name == name) for name in self.names}
        self._listing = lru_cache(maxsize=1024)(self._list)

    def export_names(self, type_name: str, trusted: bool = True) -> List[str]:
        """The export files of an artifact whose stored type string is `type_name`, for a value loaded with
        `DataArtifact.load(trusted=trusted)`."""
        return list(self._listing(type_name, trusted))

    def _list(self, type_name: str, trusted: bool) -> Tuple[str, ...]:
        qualname = _qualname(type_name)
        if qualname is None or not (trusted or loaded_by_untrusted_mount(qualname)):
            return ()
        names = (
            rule.name
            for rule in self.rules
            if rule.fits(qualname) and all(_importable(module) for module in rule.needs)
        )
        return tuple(dict.fromkeys(names))

    def render(self, name: str, value: Any) -> bytes:
        """The bytes of export file `name` for the loaded `value`; ExportError when it cannot be rendered."""
        rules = self._rules_by_name.get(name)
        if rules is None:
            raise ExportError("%r is not an export file (exports: %s)" % (name, ", ".join(self.names)))
        if isinstance(value, UntrustedObject):
            raise ExportError("%s: %r" % (name, value))
        expected = []
        for rule in rules:
            try:
                return rule.render(value)
            except WrongKind as exc:
                expected.append(exc.expected)
            except ExportError:
                raise
            except Exception as exc:  # the libraries raise many types; the tree needs one, with the reason kept
                reason = "%s: %s" % (type(exc).__name__, exc)
                raise ExportError("cannot render %s of a %s: %s" % (name, _type_label(value), reason)) from exc
        raise ExportError("%s needs %s, not a %s" % (name, " or ".join(expected), _type_label(value)))


def _type_label(value: Any) -> str:
    cls = type(value)
    return cls.__name__ if cls.__module__ == "builtins" else "%s.%s" % (cls.__module__, cls.__qualname__)


# --- which stored types the rules fit ----------------------------------------------------------------------------

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
_PANDAS_TABLE_TYPES = frozenset(
    {"pandas.DataFrame", "pandas.core.frame.DataFrame", "pandas.Series", "pandas.core.series.Series"}
)


def _is_json_type(qualname: str) -> bool:
    if qualname in _JSON_TYPES:
        return True
    module, _, name = qualname.rpartition(".")
    return module == "numpy" and name in _NUMPY_SCALAR_NAMES


def _is_pil_image_type(qualname: str) -> bool:
    # Image.open() returns format subclasses (PIL.PngImagePlugin.PngImageFile, ...), which pickle as themselves.
    return qualname == "PIL.Image.Image" or (qualname.startswith("PIL.") and qualname.endswith("ImageFile"))


# --- rendering ---------------------------------------------------------------------------------------------------


def _render_text(value: Any) -> bytes:
    if not isinstance(value, str):
        raise WrongKind("a str")
    return value.encode("utf-8", "surrogateescape")


def _render_binary(value: Any) -> bytes:
    if not isinstance(value, (bytes, bytearray)):
        raise WrongKind("bytes or a bytearray")
    return bytes(value)


def _render_included_file(value: Any) -> bytes:
    if isinstance(value, (bytes, bytearray)):
        return bytes(value)
    if isinstance(value, str):
        return value.encode("utf-8", "surrogateescape")
    raise WrongKind("the included file's text or bytes")


def _render_npy(value: Any) -> bytes:
    import numpy

    if not isinstance(value, numpy.ndarray):
        raise WrongKind("a numpy array")
    buffer = io.BytesIO()
    numpy.save(buffer, value)
    return buffer.getvalue()


def _as_frame(value: Any) -> Any:
    import pandas

    if isinstance(value, pandas.Series):
        return value.to_frame()
    if isinstance(value, pandas.DataFrame):
        return value
    raise WrongKind("a pandas DataFrame or Series")


def _render_csv(value: Any) -> bytes:
    frame = _as_frame(value)
    return frame.to_csv(index=not _is_default_index(frame.index)).encode("utf-8")


def _is_default_index(index: Any) -> bool:
    """A RangeIndex 0, 1, 2, ... with no name: what `read_csv` makes again by itself."""
    import pandas

    return (isinstance(index, pandas.RangeIndex) and index.name is None and index.start == 0
            and index.step == 1)


def _render_parquet(value: Any) -> bytes:
    frame = _as_frame(value)
    if not all(isinstance(column, str) for column in frame.columns):
        frame = frame.rename(columns=str)
    buffer = io.BytesIO()
    frame.to_parquet(buffer, engine="pyarrow", index=None)
    return buffer.getvalue()


_PNG_MODES = frozenset({"1", "L", "LA", "I", "I;16", "P", "RGB", "RGBA"})
_ALPHA_MODES = frozenset({"RGBA", "RGBa", "LA", "La", "PA"})  # not "LAB": its A is a colour axis


def _render_image_png(value: Any) -> bytes:
    if type(value).__module__.split(".")[0] == "PIL":
        from PIL import Image

        if isinstance(value, Image.Image):
            image = value
            if image.mode not in _PNG_MODES:
                has_alpha = image.mode in _ALPHA_MODES or "transparency" in image.info
                image = image.convert("RGBA" if has_alpha else "RGB")
            buffer = io.BytesIO()
            image.save(buffer, format="PNG")
            return buffer.getvalue()
    raise WrongKind("a PIL image")


def _render_figure_png(value: Any) -> bytes:
    if type(value).__module__.split(".")[0] == "matplotlib":
        from matplotlib.figure import Figure

        if isinstance(value, Figure):
            buffer = io.BytesIO()
            value.savefig(buffer, format="png")
            return buffer.getvalue()
    raise WrongKind("a matplotlib figure")


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


# --- the rules, in listing order ---------------------------------------------------------------------------------

RULES: Tuple[ExportRule, ...] = (
    ExportRule("value.json", _is_json_type, _render_json),
    ExportRule("value.txt", lambda qualname: qualname == "str", _render_text),
    ExportRule("value.bin", frozenset({"bytes", "bytearray"}).__contains__, _render_binary),
    ExportRule("value.npy", lambda qualname: qualname == "numpy.ndarray", _render_npy, needs=("numpy",)),
    ExportRule("value.csv", _PANDAS_TABLE_TYPES.__contains__, _render_csv, needs=("pandas",)),
    ExportRule("value.parquet", _PANDAS_TABLE_TYPES.__contains__, _render_parquet, needs=("pandas", "pyarrow")),
    ExportRule("value.png", _is_pil_image_type, _render_image_png, needs=("PIL",)),
    ExportRule("value.png", lambda qualname: qualname == "matplotlib.figure.Figure", _render_figure_png,
               needs=("matplotlib",)),
    ExportRule("content", lambda qualname: qualname == "metaflow.includefile.IncludedFile", _render_included_file),
)
REGISTRY = ExportRegistry(RULES)
EXPORT_NAMES: Tuple[str, ...] = REGISTRY.names


def export_names(type_name: str, trusted: bool = True) -> List[str]:
    """The export files of an artifact whose stored type string (`str(type(value))`) is `type_name`, for a
    value loaded with `DataArtifact.load(trusted=trusted)`."""
    return REGISTRY.export_names(type_name, trusted)


def render_export(name: str, value: Any) -> bytes:
    """The bytes of export file `name` for the loaded artifact `value`; ExportError when it cannot be rendered."""
    return REGISTRY.render(name, value)


# --- value.json conversion (rules in the module docstring) --------------------------------------------------------


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
            raise ExportError("value.json: the value contains itself (a %s)" % _type_label(value))
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
