"""value.txt and value.bin: text and bytes as they are.

  * value.txt (str): the string encoded as UTF-8 (surrogate escapes from undecodable input are written back as
    the original bytes).
  * value.bin (bytes, bytearray): the bytes as they are.
"""
from __future__ import annotations

from typing import Any

from .rule import ExportRule, WrongKind


def _render_text(value: Any) -> bytes:
    if not isinstance(value, str):
        raise WrongKind("a str")
    return value.encode("utf-8", "surrogateescape")


def _render_binary(value: Any) -> bytes:
    if not isinstance(value, (bytes, bytearray)):
        raise WrongKind("bytes or a bytearray")
    return bytes(value)


TEXT = ExportRule("value.txt", lambda qualname: qualname == "str", _render_text)
BINARY = ExportRule("value.bin", frozenset({"bytes", "bytearray"}).__contains__, _render_binary)
