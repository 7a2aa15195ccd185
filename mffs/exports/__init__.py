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
(its name, which stored types it fits, which libraries it needs installed, how it renders, and its contract: how
the format is read back and examples). Whether an untrusted mount offers an export is decided in one place for
every rule, `loaded_by_untrusted_mount`, by asking the restricted unpickler (`client.unpickle.allowed`) whether it
builds the stored type.

Adding an export: write its `ExportRule` in the module of its family (or a new module for a new family) and add
it to `RULES`, where its position orders the listing. tests/test_export_rules.py then checks it without being
edited: its examples read back as they say, it is listed for the types it fits, not when a library it needs is
missing, and on an untrusted mount only for types the restricted unpickler loads.

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

The formats are described in the module of their rules: text.py (value.txt, value.bin), jsonvalue.py
(value.json), tables.py (value.npy, value.csv, value.parquet), images.py (value.png), includefile.py (content).

numpy, pandas, pyarrow, PIL and matplotlib are imported only inside the renderers that need them.
"""
from __future__ import annotations

import importlib.util
import re
from functools import lru_cache
from typing import Any, Iterable, List, Optional, Tuple

from client import unpickle
from client.unpickle import UntrustedObject

from . import images, includefile, jsonvalue, tables, text
from .rule import ExportError, ExportRule, WrongKind, type_label

__all__ = ["EXPORT_NAMES", "REGISTRY", "RULES", "ExportError", "ExportRegistry", "ExportRule", "WrongKind",
           "export_names", "loaded_by_untrusted_mount", "render_export"]


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
                raise ExportError("cannot render %s of a %s: %s" % (name, type_label(value), reason)) from exc
        raise ExportError("%s needs %s, not a %s" % (name, " or ".join(expected), type_label(value)))


# --- the rules, in listing order ---------------------------------------------------------------------------------

RULES: Tuple[ExportRule, ...] = (
    jsonvalue.JSON,
    text.TEXT,
    text.BINARY,
    tables.NPY,
    tables.CSV,
    tables.PARQUET,
    images.PIL_IMAGE,
    images.FIGURE,
    includefile.CONTENT,
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
