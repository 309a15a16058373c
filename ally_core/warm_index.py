"""The warm index: what a warm load derives from files, persisted for the next process.

A warm load of a plugin parses its ``plugin.json``, computes its request key (which asks the
runtime for :func:`~ally_core.hookspecs.env_identity`) and parses its env's marker. A running
:class:`~ally_core.Host` keeps those in memory; this index keeps them on disk
(``<envs dir>/.state/warm-index.<python tag>.bin``), so a *new* process loading 100 ready
plugins reads one file and checks file identities instead of parsing 200 files.

Nothing in it is trusted blindly. Each entry carries the identities (size, mtime, inode,
ctime) of the files it was derived from and is used only while they are unchanged:

- ``manifests``: ``plugin.json`` path -> its identity and the validated manifest;
- ``keys``: plugin dir -> the request key, with the identities of ``plugin.json``, the
  dependency file and the runtime's :func:`~ally_core.hookspecs.identity_files`, whether the
  plugin carries bundle artifacts, and a digest of the runtime's
  :func:`~ally_core.hookspecs.env_context` (environment variables, config files, versions);
- ``markers``: marker path -> its identity and content;
- ``entry_points``: the ``ally`` entry points installed, with the identity of ``sys.path``
  and its directories (:mod:`ally_core.entry_points`);
- ``config``: ``config.toml`` path -> its bytes and what they parse to (only for a file
  without ``@``: one that may carry index credentials is parsed every time, never copied).

The file is a header line (format, ally version, Python tag), a CRC-32 of the payload and
the payload: the tables as :mod:`marshal` data, the format of CPython's own ``.pyc``
files, which loads several times faster than JSON (no text to scan, no integers to parse
from digits). It holds plain data only (dicts, lists, strings, numbers); it is as trusted
as the env store around it, whose interpreters ally runs anyway. Each Python version keeps
its own file (marshal's format is CPython's, not a standard one).

A missing, unreadable, corrupt (the CRC does not match) or foreign (another format, ally
version or Python) index is treated as empty. Writes go to a temporary file and
``os.replace``: two processes writing at once leave one complete index (the other's
additions are recomputed by a later load). A store that cannot be written (a read-only
home) just gets no index.
"""

from __future__ import annotations

import binascii
import contextlib
import marshal
import os
import stat
import sys
import threading
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Optional

from .__about__ import __version__
from .text import log

__all__ = ["INDEX_NAME", "WarmIndex", "decode", "encode", "entry_identity", "file_identity"]


INDEX_FORMAT = 2
_TAG = sys.implementation.cache_tag or f"{sys.implementation.name}-marshal{marshal.version}"
#: The file name of this Python's index in ``<envs dir>/.state``.
INDEX_NAME = f"warm-index.{_TAG}.bin"
#: Index files that no version of ally reads any more (``ally gc`` removes them).
LEGACY_NAMES = ("warm-index.json",)
_TABLES = ("manifests", "keys", "markers", "entry_points", "config")


def _header(format: int, version: str) -> bytes:
    return f"ally-warm-index {format} {version} {_TAG}\n".encode()


def encode(
    tables: dict[str, dict[str, Any]], *, format: int = INDEX_FORMAT, version: str = __version__
) -> bytes:
    """The bytes of an index file holding ``tables`` (``format``/``version`` for tests)."""
    payload = marshal.dumps(_shared(tables, {}))
    return _header(format, version) + binascii.crc32(payload).to_bytes(4, "big") + payload


def _shared(value: Any, strings: dict[str, str]) -> Any:
    """A copy of ``value`` in which equal strings are one object.

    marshal writes an object it has seen before as a back-reference, and reads it back as
    the same object: paths repeated in every marker (the env dir, its ``bin``, the base
    interpreter shared by most envs) are stored and loaded once. About 30% smaller and
    faster to read.
    """
    kind = type(value)
    if kind is str:
        return strings.setdefault(value, value)
    if kind is dict:
        return {_shared(k, strings): _shared(v, strings) for k, v in value.items()}
    if kind is list:
        return [_shared(item, strings) for item in value]
    if kind is tuple:
        return tuple(_shared(item, strings) for item in value)
    return value


def decode(blob: bytes) -> Optional[dict[str, dict[str, Any]]]:
    """The tables of an index file of this format, ally version and Python, else ``None``.

    A table that is not a mapping is empty; entries are checked where they are used.
    """
    header = _header(INDEX_FORMAT, __version__)
    if not blob.startswith(header):
        return None
    start = len(header) + 4
    payload = memoryview(blob)[start:]
    if binascii.crc32(payload) != int.from_bytes(blob[len(header) : start], "big"):
        return None
    try:
        # Plain data ally wrote itself, behind a matching header and CRC. marshal is not
        # hardened against crafted input: the file is exactly as trusted as the env store
        # around it (see the module docstring).
        data = marshal.loads(payload)  # noqa: S302
    except Exception:  # EOFError, ValueError, too deep, ...: a damaged index
        return None
    if type(data) is not dict:
        return None
    return {name: t if type(t) is dict else {} for name in _TABLES for t in [data.get(name)]}


#: How deeply an entry's value may nest: :func:`encode` recurses once per level.
MAX_DEPTH = 200


def _deeper_than(value: Any, limit: int) -> bool:
    """Whether ``value`` nests lists, tuples or dicts more than ``limit`` levels (iterative)."""
    stack: list[tuple[Any, int]] = [(value, 0)]
    while stack:
        item, depth = stack.pop()
        kind = type(item)
        if kind is dict:
            children: Iterable[Any] = item.values()
        elif kind is list or kind is tuple:
            children = item
        else:
            continue
        if depth >= limit:
            return True
        stack.extend((child, depth + 1) for child in children)
    return False


#: (size, mtime_ns, inode, ctime_ns): changes whenever a file is written, replaced or renamed.
Identity = list[int]


def file_identity(path: str) -> Optional[Identity]:
    """The identity of ``path`` (following symlinks), or ``None`` if it does not exist."""
    try:
        st = os.stat(path)
    except (OSError, ValueError):
        return None
    return [st.st_size, st.st_mtime_ns, st.st_ino, st.st_ctime_ns]


def entry_identity(path: str) -> Optional[list[Any]]:
    """The identity of ``path`` itself, not following a symlink; ``None`` if it does not exist.

    One ``lstat`` for a file that is not a symlink. For a symlink, the identity of the file it
    points to is appended: a change to either changes the result, and so does replacing a
    file by a symlink to the very same inode (which :func:`file_identity` would not see).
    """
    try:
        st = os.lstat(path)
    except (OSError, ValueError):
        return None
    identity: list[Any] = [st.st_size, st.st_mtime_ns, st.st_ino, st.st_ctime_ns]
    if stat.S_ISLNK(st.st_mode):
        identity.append(file_identity(path))
    return identity


class WarmIndex:
    """The persisted index of one env store. Thread-safe; read lazily, written on :meth:`save`."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._loaded = False
        self._dirty = False
        self._tables: dict[str, dict[str, Any]] = {name: {} for name in _TABLES}

    # -- reading -------------------------------------------------------------------------------

    def _table(self, name: str) -> dict[str, Any]:
        if not self._loaded:
            with self._lock:
                if not self._loaded:
                    self._tables = self._read()
                    self._loaded = True
        return self._tables[name]

    def _read(self) -> dict[str, dict[str, Any]]:
        try:
            with open(self.path, "rb") as fh:
                blob = fh.read()
        except FileNotFoundError:
            blob = b""
        except OSError as exc:
            log.debug("ignoring the warm index %s: %s", self.path, exc)
            blob = b""
        tables = decode(blob) if blob else None
        if tables is None:
            if blob:
                log.debug("ignoring the warm index %s: damaged or of another version", self.path)
            return {name: {} for name in _TABLES}
        return tables

    def get(self, table: str, key: str, identity: Any) -> Any:
        """The value stored under ``key`` if it was stored with this ``identity``."""
        entry = self._table(table).get(key)
        if type(entry) is list and len(entry) == 2 and entry[0] == identity:
            return entry[1]
        return None

    # -- writing -------------------------------------------------------------------------------

    def put(self, table: str, key: str, identity: Any, value: Any) -> None:
        """Store ``value`` for ``key`` while its files keep ``identity``.

        A value nested deeper than :data:`MAX_DEPTH` is not stored (encoding it would need
        deep recursion): the entry is a miss, recomputed by every load.
        """
        if _deeper_than([identity, value], MAX_DEPTH):
            log.debug("not caching %s %s: nested too deeply", table, key)
            return
        entries = self._table(table)
        with self._lock:
            entries[key] = [identity, value]
            self._dirty = True

    def retain(self, table: str, keys: Iterable[str]) -> None:
        """Drop the entries of ``table`` not in ``keys`` (plugins or envs that are gone)."""
        entries = self._table(table)
        keep = set(keys)
        with self._lock:
            for key in [k for k in entries if k not in keep]:
                del entries[key]
                self._dirty = True

    @property
    def dirty(self) -> bool:
        return self._dirty

    def save(self) -> bool:
        """Write the index if anything changed. Returns whether it was written."""
        with self._lock:
            if not self._dirty:
                return False
            try:
                payload = encode(self._tables)
            except Exception as exc:  # a value marshal cannot hold: never a crash
                log.debug("cannot write the warm index %s: %s", self.path, exc)
                return False
            self._dirty = False
        tmp = self.path.with_name(f".{self.path.name}.{os.urandom(4).hex()}.tmp")
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            # 0600 like every state file: it holds manifests' install commands and paths.
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as fh:
                fh.write(payload)
            os.replace(tmp, self.path)
        except OSError as exc:
            # A read-only or full store: loads stay correct, only the next process is slower.
            log.debug("cannot write the warm index %s: %s", self.path, exc)
            with contextlib.suppress(OSError):
                tmp.unlink()
            with self._lock:
                self._dirty = True  # try again on the next load
            return False
        return True


def identities(paths: Iterable[str]) -> list[list[Any]]:
    """``[path, identity]`` pairs, for :func:`unchanged`."""
    return [[p, file_identity(p)] for p in paths]


def unchanged(pairs: Iterable[list[Any]]) -> bool:
    """Whether every ``[path, identity]`` pair still holds (raises on malformed pairs)."""
    return all(file_identity(str(p)) == ident for p, ident in pairs)
