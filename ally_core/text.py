"""Text for people: what the CLI prints to a terminal, and suggestions for mistyped names."""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterable

__all__ = ["did_you_mean", "printable"]

# C0 and C1 controls (ESC starts terminal escape sequences, CR and BS overwrite what was
# printed), DEL, and the Unicode format characters that reorder or hide text on screen
# (bidirectional overrides and isolates, zero-width characters).
_UNPRINTABLE = re.compile("[\x00-\x1f\x7f-\x9f\u061c\u200b-\u200f\u2028-\u202e\u2060-\u2069\ufeff]")


_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _escape(match: re.Match[str]) -> str:
    char = match.group()
    if char in _NAMED:
        return _NAMED[char]
    code = ord(char)
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def printable(text: object) -> str:
    """``text`` safe to print to a terminal: every control or invisible format character is
    shown as its escape (``\\x1b``, ``\\n``, ``\\u202e``), so a name or message from a plugin
    can neither move the cursor, recolor, clear the screen nor hide or reorder text."""
    return _UNPRINTABLE.sub(_escape, str(text))


def did_you_mean(word: str, choices: Iterable[str]) -> str:
    """`` (did you mean 'x'?)`` for the closest of ``choices`` (case-insensitive), or ``""``."""
    options = sorted(set(choices))
    lowered = {c.lower(): c for c in options}
    if word.lower() in lowered and lowered[word.lower()] != word:
        return f" (did you mean {lowered[word.lower()]!r}?)"
    close = difflib.get_close_matches(word.lower(), list(lowered), n=1, cutoff=0.6)
    return f" (did you mean {lowered[close[0]]!r}?)" if close else ""
