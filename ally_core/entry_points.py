"""The ``ally`` entry points (third-party runtimes), remembered in the warm index.

Finding entry points means importing :mod:`importlib.metadata` (email, zipfile, csv, …) and
reading the metadata of every installed distribution: about a third of what ``ally run``
took before its tool started. What can change the answer is known, so the answer is kept in
the warm index (table ``entry_points``) with the identity of those inputs, and used while
they are unchanged:

- ``sys.path`` itself (a ``.pth`` file, ``PYTHONPATH``, another virtualenv);
- the modification time and inode of every ``sys.path`` entry: installing, upgrading or
  removing a distribution creates or deletes its ``*.dist-info`` directory there;
- the identity of each ``entry_points.txt`` that declared an ``ally`` entry point, so that
  one edited in place is seen too.

Anything else (an index that cannot be read or written, a distribution found by a custom
import finder) falls back to scanning, as before.
"""

from __future__ import annotations

import os
import sys
from typing import Any, Optional, Protocol

__all__ = ["GROUP", "EntryPoint", "ally_entry_points", "load_entry_point"]

#: The entry-point group runtimes register under (the project name of the hookspecs).
GROUP = "ally"

#: ``[name, value, distribution name, distribution version, entry_points.txt path or None]``
EntryPoint = list[Optional[str]]


class Index(Protocol):
    """What this module needs of a :class:`~ally_core.warm_index.WarmIndex`."""

    def get(self, table: str, key: str, identity: Any) -> Any: ...

    def put(self, table: str, key: str, identity: Any, value: Any) -> None: ...


def _scan() -> list[EntryPoint]:
    from importlib.metadata import entry_points

    if sys.version_info >= (3, 10):
        found = list(entry_points(group=GROUP))
    else:  # pragma: no cover - 3.9 only
        found = list(entry_points().get(GROUP, ()))
    out: list[EntryPoint] = []
    for ep in found:
        dist = getattr(ep, "dist", None)
        where = getattr(dist, "_path", None)  # PathDistribution: its .dist-info directory
        out.append(
            [
                str(getattr(ep, "name", "")),
                str(getattr(ep, "value", "")),
                str(dist.name) if dist is not None else None,
                str(dist.version) if dist is not None else None,
                os.path.join(str(where), "entry_points.txt") if where is not None else None,
            ]
        )
    return out


def _stat(path: str) -> Optional[list[int]]:
    try:
        st = os.stat(path or ".")
    except (OSError, ValueError):
        return None
    return [st.st_mtime_ns, st.st_ino, st.st_size]


def _path_identity() -> list[Any]:
    return [list(sys.path), [_stat(entry) for entry in sys.path]]


def _files_identity(found: list[EntryPoint]) -> list[Any]:
    return [[path, _stat(path)] for path in sorted({str(ep[4]) for ep in found if ep[4]})]


def ally_entry_points(index: Optional[Index] = None) -> list[EntryPoint]:
    """Every ``ally`` entry point installed, from ``index`` while its inputs are unchanged."""
    cached: Any = index.get("entry_points", GROUP, None) if index is not None else None
    try:
        identity, found = cached
        if identity == [*_path_identity(), _files_identity(found)]:
            return [list(ep) for ep in found]
    except (TypeError, ValueError, IndexError):
        pass  # none, or written by another build of ally: scan
    # The directories are looked at before the scan: a distribution installed meanwhile
    # changes them, and the next process scans again.
    before = _path_identity()
    found = _scan()
    if index is not None:
        index.put("entry_points", GROUP, None, [[*before, _files_identity(found)], found])
    return found


def load_entry_point(value: str) -> Any:
    """The object an entry point's ``module:attr.attr`` value names (as ``EntryPoint.load``)."""
    import importlib

    module, _, attrs = value.partition("[")[0].partition(":")
    obj: Any = importlib.import_module(module.strip())
    for name in filter(None, attrs.strip().split(".")):
        obj = getattr(obj, name)
    return obj
