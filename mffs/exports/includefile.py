"""content: an IncludeFile's original file.

The included file's content as the client resolves it: bytes as they are, text as UTF-8. Its name has no extension
because the stored type (metaflow.includefile.IncludedFile) does not say whether the file was text or binary.
"""
from __future__ import annotations

from typing import Any, List

from .rule import Example, ExportRule, WrongKind


def _render_included_file(value: Any) -> bytes:
    if isinstance(value, (bytes, bytearray)):
        return bytes(value)
    if isinstance(value, str):
        return value.encode("utf-8", "surrogateescape")
    raise WrongKind("the included file's text or bytes")


_STORED_TYPE = "<class 'metaflow.includefile.IncludedFile'>"


def _examples() -> List[Example]:
    text = "name,city\nJos\u00e9,Z\u00fcrich\n"
    binary = b"\x89PNG\r\n\x1a\n\x00"
    return [Example(text, text.encode("utf-8"), _STORED_TYPE), Example(binary, binary, _STORED_TYPE)]


CONTENT = ExportRule("content", fits=lambda qualname: qualname == "metaflow.includefile.IncludedFile", needs=(),
                     render=_render_included_file, read_back=bytes, examples=_examples)
