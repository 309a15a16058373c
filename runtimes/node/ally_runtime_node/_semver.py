"""npm's semver ranges, just enough to check a Node.js version against ``engines.node``.

Follows node-semver's range grammar: comparators (``>=``, ``>``, ``<=``, ``<``, ``=``),
x-ranges (``20``, ``20.x``, ``*``), tilde (``~20.1``), caret (``^18.17``), hyphen ranges
(``18 - 20``), whitespace for "and", ``||`` for "or", an optional ``v`` prefix. A prerelease
version only satisfies a comparator set that names a prerelease of the same
``major.minor.patch``, as in npm. Build metadata is ignored.

No PyPI package was taken for this: the well-known ones (``semantic_version``'s ``NpmSpec``,
``node-semver``) are larger than this module and not maintained as actively as the check is
simple. The tests compare this module with npm's own ``semver`` package.
"""

from __future__ import annotations

import re
from typing import Optional, Union

__all__ = ["Version", "parse_version", "satisfies", "validate_range"]

_Ident = Union[int, str]
#: ``(major, minor, patch, prerelease identifiers)``
Version = tuple[int, int, int, tuple[_Ident, ...]]

_NUM = r"0|[1-9]\d*"
_IDENT = r"(?:0|[1-9]\d*|\d*[a-zA-Z-][a-zA-Z0-9-]*)"
_VERSION_RE = re.compile(
    rf"^v?({_NUM})\.({_NUM})\.({_NUM})"
    rf"(?:-({_IDENT}(?:\.{_IDENT})*))?(?:\+[0-9A-Za-z-]+(?:\.[0-9A-Za-z-]+)*)?$"
)
_XR = r"(?:[xX*]|0|[1-9]\d*)"
_PARTIAL_RE = re.compile(
    rf"^v?({_XR})(?:\.({_XR})(?:\.({_XR})"
    rf"(?:-({_IDENT}(?:\.{_IDENT})*))?(?:\+[0-9A-Za-z-]+(?:\.[0-9A-Za-z-]+)*)?)?)?$"
)
_COMPARATOR_RE = re.compile(r"^(~>?|\^|[<>]=?|=)?\s*(.*)$")
_HYPHEN_RE = re.compile(r"^(\S+)\s+-\s+(\S+)$")

_ANY: Version = (0, 0, 0, ())
#: The smallest prerelease, ``-0``: ``<2.0.0-0`` excludes 2.0.0's prereleases too.
_LOWEST: tuple[_Ident, ...] = (0,)

Comparator = tuple[str, Version]


def _idents(text: Optional[str]) -> tuple[_Ident, ...]:
    if not text:
        return ()
    return tuple(int(p) if p.isdigit() else p for p in text.split("."))


def parse_version(text: str) -> Version:
    """``"v20.11.1"`` -> ``(20, 11, 1, ())``; raises :class:`ValueError` if it is not semver."""
    m = _VERSION_RE.match(text.strip())
    if not m:
        raise ValueError(f"{text!r} is not a semver version")
    return (int(m[1]), int(m[2]), int(m[3]), _idents(m[4]))


def _pre_key(pre: tuple[_Ident, ...]) -> tuple[tuple[int, int, str], ...]:
    # Numeric identifiers sort before alphanumeric ones; numbers by value, text by ASCII.
    return tuple((0, p, "") if isinstance(p, int) else (1, 0, p) for p in pre)


def _compare(a: Version, b: Version) -> int:
    if a[:3] != b[:3]:
        return -1 if a[:3] < b[:3] else 1
    if a[3] == b[3]:
        return 0
    if not a[3]:
        return 1  # a release is greater than its prereleases
    if not b[3]:
        return -1
    ka, kb = _pre_key(a[3]), _pre_key(b[3])
    return -1 if ka < kb else 1


def _partial(text: str) -> tuple[Optional[int], Optional[int], Optional[int], tuple[_Ident, ...]]:
    m = _PARTIAL_RE.match(text)
    if not m:
        raise ValueError(f"{text!r} is not a version or x-range")

    def num(part: Optional[str]) -> Optional[int]:
        return None if part is None or part in {"x", "X", "*"} else int(part)

    major, minor, patch = num(m[1]), num(m[2]), num(m[3])
    if major is None:
        minor = patch = None
    elif minor is None:
        patch = None
    return major, minor, patch, _idents(m[4]) if patch is not None else ()


def _comparators(op: str, text: str) -> list[Comparator]:
    """One range token (``^1.2``, ``>=3``, ``1.x``) as plain comparators."""
    major, minor, patch, pre = _partial(text)
    if major is None:  # *, x, ""
        return [] if op in {"", "=", ">=", "<=", "~", "~>", "^"} else [("<", _ANY)]
    if op in {"", "="}:
        if minor is None:
            return [(">=", (major, 0, 0, ())), ("<", (major + 1, 0, 0, _LOWEST))]
        if patch is None:
            return [(">=", (major, minor, 0, ())), ("<", (major, minor + 1, 0, _LOWEST))]
        return [("=", (major, minor, patch, pre))]
    if op in {"~", "~>"}:
        if minor is None:
            return [(">=", (major, 0, 0, ())), ("<", (major + 1, 0, 0, _LOWEST))]
        return [
            (">=", (major, minor, patch or 0, pre)),
            ("<", (major, minor + 1, 0, _LOWEST)),
        ]
    if op == "^":
        if minor is None:
            return [(">=", (major, 0, 0, ())), ("<", (major + 1, 0, 0, _LOWEST))]
        low = (major, minor, patch or 0, pre)
        high: Version
        if major > 0:
            high = (major + 1, 0, 0, _LOWEST)
        elif minor > 0 or patch is None:
            high = (0, minor + 1, 0, _LOWEST)
        else:
            high = (0, 0, patch + 1, _LOWEST)
        return [(">=", low), ("<", high)]
    # <, <=, >, >= with a partial version
    if minor is None or patch is None:
        m0 = minor or 0
        # The next version after everything the partial names: ">1.2" is ">=1.3.0".
        after = (major + 1, 0) if minor is None else (major, m0 + 1)
        if op == ">":
            return [(">=", (*after, 0, ()))]
        if op == "<=":
            return [("<", (*after, 0, _LOWEST))]
        if op == "<":
            return [("<", (major, m0, 0, _LOWEST))]
        return [(">=", (major, m0, 0, ()))]
    return [(op, (major, minor, patch, pre))]


def _parse_set(text: str) -> list[Comparator]:
    text = text.strip()
    out: list[Comparator] = []
    hyphen = _HYPHEN_RE.match(text)
    if hyphen:
        # "1.2 - 2.3" is ">=1.2.0 <2.4.0-0": a partial upper end includes all it names.
        out = _comparators(">=", hyphen[1]) + _comparators("<=", hyphen[2])
    else:
        # Operators may be followed by spaces (">= 18"): glue them to their version first.
        for token in re.sub(r"(~>?|\^|[<>]=?|=)\s+", r"\1", text).split():
            m = _COMPARATOR_RE.match(token)
            assert m is not None  # the pattern matches any string
            out += _comparators(m[1] or "", m[2])
    # As npm: ">=0.0.0" is "*" (which matters when it is one alternative of several).
    return [c for c in out if c != (">=", _ANY)]


def _parse_range(text: str) -> list[list[Comparator]]:
    sets = [_parse_set(part) for part in text.split("||")]
    if len(sets) > 1 and any(not s for s in sets):
        # As npm: one "*" alternative makes the whole range "*" (no prerelease gets in).
        return [[]]
    return sets


def validate_range(text: str) -> None:
    """Raise :class:`ValueError` if ``text`` is not a valid npm semver range."""
    _parse_range(text)


def _test(op: str, version: Version, bound: Version) -> bool:
    c = _compare(version, bound)
    return {
        "=": c == 0,
        ">": c > 0,
        ">=": c >= 0,
        "<": c < 0,
        "<=": c <= 0,
    }[op]


def _satisfies_set(version: Version, comparators: list[Comparator]) -> bool:
    if not all(_test(op, version, bound) for op, bound in comparators):
        return False
    if not version[3]:
        return True
    # A prerelease is only allowed by a set that asks for a prerelease of the same x.y.z.
    return any(bound[3] and bound[:3] == version[:3] for _op, bound in comparators)


def satisfies(version: str, range_: str) -> bool:
    """Whether ``version`` (e.g. ``"20.11.1"``) is in npm range ``range_``.

    Raises :class:`ValueError` for an invalid version or range.
    """
    parsed = parse_version(version)
    return any(_satisfies_set(parsed, comparators) for comparators in _parse_range(range_))
