"""content: an IncludeFile's original file.

The included file's content as the client resolves it: bytes as they are, text as UTF-8. Its name has no extension
because the stored type (metaflow.includefile.IncludedFile) does not say whether the file was text or binary.
"""
from __future__ import annotations

from typing import Any

from .rule import ExportRule, WrongKind


def _render_included_file(value: Any) -> bytes:
    if isinstance(value, (bytes, bytearray)):
        return bytes(value)
    if isinstance(value, str):
        return value.encode("utf-8", "surrogateescape")
    raise WrongKind("the included file's text or bytes")


CONTENT = ExportRule(
    "content", lambda qualname: qualname == "metaflow.includefile.IncludedFile", _render_included_file
)
