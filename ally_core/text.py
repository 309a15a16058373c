"""Text for people: what the CLI prints to a terminal, and suggestions for mistyped names."""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

from .lean import printable

__all__ = [
    "MASK",
    "did_you_mean",
    "log",
    "mask_text",
    "one_line",
    "printable",
    "version_key",
    "version_sorted",
]


class _Log:
    """``logging.getLogger("ally")``, imported on first use: most commands log nothing, and
    importing :mod:`logging` costs every ``ally`` run a few milliseconds."""

    def __getattr__(self, name: str) -> Any:
        import logging

        return getattr(logging.getLogger("ally"), name)


#: ally's logger (see :class:`_Log`).
log: Any = _Log()

#: What a secret value is replaced with wherever ally shows text.
MASK = "********"


def _plain(value: Any) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (dict, list)):
        return json.dumps(value)
    return str(value)


def mask_text(text: str, secrets: Iterable[Any]) -> str:
    """``text`` with every occurrence of each secret replaced by the mask: as it is, as Python
    shows it (``repr``) and as JSON escapes it (a secret inside a JSON document). Longer
    secrets are masked first, so one secret inside another leaves no part of either."""
    forms: set[str] = set()
    for value in secrets:
        if value is None:
            continue
        plain = _plain(value)
        forms.update({plain, repr(value), json.dumps(plain)[1:-1], repr(plain)[1:-1]})
    for shown in sorted((f for f in forms if f), key=len, reverse=True):
        text = text.replace(shown, MASK)
    return text


def did_you_mean(word: str, choices: Iterable[str]) -> str:
    """`` (did you mean 'x'?)`` for the closest of ``choices`` (case-insensitive), or ``""``."""
    import difflib

    options = sorted(set(choices))
    lowered = {c.lower(): c for c in options}
    if word.lower() in lowered and lowered[word.lower()] != word:
        return f" (did you mean {lowered[word.lower()]!r}?)"
    close = difflib.get_close_matches(word.lower(), list(lowered), n=1, cutoff=0.6)
    return f" (did you mean {lowered[close[0]]!r}?)" if close else ""


def version_key(text: str) -> tuple[int, Any, str]:
    """A sort key comparing ``text`` as a version (``3.9`` before ``3.10``; PEP 440, which
    also reads ``20.11.1`` and ``3.2.2``); strings that are no version sort last, as text."""
    from packaging.version import InvalidVersion, Version

    try:
        return (0, Version(text), text)
    except InvalidVersion:
        return (1, None, text)


def version_sorted(versions: Iterable[str]) -> list[str]:
    """``versions`` without repeats, oldest first, compared as versions (:func:`version_key`)."""
    return sorted(set(versions), key=version_key)


def one_line(error: BaseException, plugin: str = "") -> str:
    """An error's text on one line (its lines joined with `` | ``), else its class name.

    With ``plugin``, without a leading ``"<plugin>: "``: the reason of that plugin's outcome,
    which carries its name already (a name is said once per message).
    """
    text = " | ".join(line for line in str(error).splitlines() if line.strip()) or (
        error.__class__.__name__
    )
    prefix = f"{plugin}: "
    return text[len(prefix) :] if plugin and text.startswith(prefix) else text
