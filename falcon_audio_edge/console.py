"""Model text on its way to a terminal or a speech synthesiser: control characters are shown, never obeyed.

A model (an untrained one especially) can emit any byte: a carriage return, a form feed or an escape sequence
written raw to a terminal moves the cursor, clears lines or the screen; a NUL in an argument makes the process
call fail. ``--json`` output keeps the text exact (JSON escapes them).
"""

from __future__ import annotations

import unicodedata

KEPT = "\n\t"


def _is_control(char: str) -> bool:
    return char not in KEPT and unicodedata.category(char) == "Cc"


def printable(text: str) -> str:
    """``text`` with each control character but newline and tab written as an escape (``\\x1b``, ``\\r``, ...)."""
    if not any(map(_is_control, text)):
        return text
    return "".join(repr(c)[1:-1] if _is_control(c) else c for c in text)


def speakable(text: str) -> str:
    """``text`` with each control character (newline and tab kept) replaced by a space."""
    return "".join(" " if _is_control(c) else c for c in text)
