"""What an export rule is: the value each export registers (`ExportRule`) and the errors its renderer raises."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Tuple


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


def type_label(value: Any) -> str:
    """The value's class as messages name it: `dict` for builtins, else `module.Class`."""
    cls = type(value)
    return cls.__name__ if cls.__module__ == "builtins" else "%s.%s" % (cls.__module__, cls.__qualname__)
