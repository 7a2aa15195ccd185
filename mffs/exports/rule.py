"""What an export rule is: the value each export registers (`ExportRule`), its examples, and the errors
its renderer raises."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, NamedTuple, Optional, Sequence, Tuple


class ExportError(ValueError):
    """A value cannot be rendered as the requested export file."""


class WrongKind(ExportError):
    """Raised by a rule's renderer for a value that is not of the kind it renders; `expected` names that kind
    ("a str"). The registry then tries the next rule of the same name, or reports every kind the name takes."""

    def __init__(self, expected: str) -> None:
        super().__init__(expected)
        self.expected = expected


class Example(NamedTuple):
    """A value a rule renders and `expected`, what the rule's `read_back` gives for the rendered bytes.
    `stored_type` is the type string Metaflow stores for it when that is not `str(type(value))` (an IncludeFile
    is stored as IncludedFile but loads as its text or bytes)."""

    value: Any
    expected: Any
    stored_type: Optional[str] = None


@dataclass(frozen=True)
class ExportRule:
    """One export file for the stored types it fits.

    `name` is the file name in the artifact directory; several rules may share one (value.png for PIL images and
    for matplotlib figures): the file is listed when any of them fits and is rendered by the first whose
    renderer takes the value. `fits` tells from the stored type's qualified name ("pandas.core.frame.DataFrame")
    whether the rule applies, without importing anything. `needs` names the top-level modules that must be
    importable for the file to be listed. `render` turns the loaded value into the file's bytes, raising
    `WrongKind` for a value of another kind.

    `read_back` and `examples` are the rule's contract, which tests/test_export_rules.py checks for every
    registered rule and the mount never calls: `read_back` reads the bytes with the tool the format promises
    (json.loads, numpy.load, pandas.read_parquet...), and `examples` gives a value of each type the rule fits
    with what `read_back` must give for it."""

    name: str
    fits: Callable[[str], bool]
    needs: Tuple[str, ...]
    render: Callable[[Any], bytes]
    read_back: Callable[[bytes], Any]
    examples: Callable[[], Sequence[Example]]


def type_label(value: Any) -> str:
    """The value's class as messages name it: `dict` for builtins, else `module.Class`."""
    cls = type(value)
    return cls.__name__ if cls.__module__ == "builtins" else "%s.%s" % (cls.__module__, cls.__qualname__)
