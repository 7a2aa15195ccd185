"""value.txt and value.bin: text and bytes as they are.

  * value.txt (str): the string encoded as UTF-8 (surrogate escapes from undecodable input are written back as
    the original bytes).
  * value.bin (bytes, bytearray): the bytes as they are.
"""
from __future__ import annotations

from typing import Any, List

from .rule import Example, ExportRule, WrongKind


def _render_text(value: Any) -> bytes:
    if not isinstance(value, str):
        raise WrongKind("a str")
    return value.encode("utf-8", "surrogateescape")


def _render_binary(value: Any) -> bytes:
    if not isinstance(value, (bytes, bytearray)):
        raise WrongKind("bytes or a bytearray")
    return bytes(value)


def _read_text(data: bytes) -> str:
    return data.decode("utf-8", "surrogateescape")


def _text_examples() -> List[Example]:
    undecodable = b"caf\xe9 latin-1".decode("utf-8", "surrogateescape")
    return [Example(text, text) for text in ("line one\nna\u00efve \u65e5\u672c \U0001f642\r\n\x00", undecodable)]


def _binary_examples() -> List[Example]:
    return [Example(bytes(range(256)), bytes(range(256))), Example(bytearray(b"ab"), b"ab")]


TEXT = ExportRule("value.txt", fits=lambda qualname: qualname == "str", needs=(),
                  render=_render_text, read_back=_read_text, examples=_text_examples)
BINARY = ExportRule("value.bin", fits=frozenset({"bytes", "bytearray"}).__contains__, needs=(),
                    render=_render_binary, read_back=bytes, examples=_binary_examples)
