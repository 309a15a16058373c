"""The warm index: what a warm load derives from files, persisted for the next process.

A warm load of a plugin parses its ``plugin.json``, computes its request key (which asks the
runtime for :func:`~ally_core.hookspecs.env_identity`) and parses its env's marker. A running
:class:`~ally_core.Host` keeps those in memory; this index keeps them on disk
(``<envs dir>/.state/warm-index.json``), so a *new* process loading 100 ready plugins reads one
file and checks file identities instead of parsing 200 files.

Nothing in it is trusted blindly. Each entry carries the identities (size, mtime, inode,
ctime) of the files it was derived from and is used only while they are unchanged:

- ``manifests``: ``plugin.json`` path -> its identity and the validated manifest;
- ``keys``: plugin dir -> the request key, with the identities of ``plugin.json``, the
  dependency file and the runtime's :func:`~ally_core.hookspecs.identity_files`, whether the
  plugin carries bundle artifacts, and a digest of the runtime's
  :func:`~ally_core.hookspecs.env_context` (environment variables, config files, versions);
- ``markers``: marker path -> its identity and content.

A missing, unreadable, corrupt or foreign-version index is treated as empty. Writes go to a
temporary file and ``os.replace``: two processes writing at once leave one complete index
(the other's additions are recomputed by a later load). A store that cannot be written (a
read-only home) just gets no index.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import secrets
import stat
import threading
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Optional

from .__about__ import __version__

__all__ = ["INDEX_NAME", "WarmIndex", "entry_identity", "file_identity"]

log = logging.getLogger("ally")

INDEX_NAME = "warm-index.json"
INDEX_FORMAT = 1

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
        self._tables: dict[str, dict[str, Any]] = {"manifests": {}, "keys": {}, "markers": {}}

    # -- reading -------------------------------------------------------------------------------

    def _table(self, name: str) -> dict[str, Any]:
        if not self._loaded:
            with self._lock:
                if not self._loaded:
                    self._tables = self._read()
                    self._loaded = True
        return self._tables[name]

    def _read(self) -> dict[str, dict[str, Any]]:
        empty: dict[str, dict[str, Any]] = {"manifests": {}, "keys": {}, "markers": {}}
        try:
            with open(self.path, "rb") as fh:
                data = json.loads(fh.read())
        except FileNotFoundError:
            return empty
        except (OSError, ValueError) as exc:
            log.debug("ignoring the warm index %s: %s", self.path, exc)
            return empty
        if (
            not isinstance(data, dict)
            or data.get("format") != INDEX_FORMAT
            or data.get("ally") != __version__
        ):
            return empty
        tables = {}
        for name in empty:
            table = data.get(name)
            tables[name] = table if isinstance(table, dict) else {}
        return tables

    def get(self, table: str, key: str, identity: Any) -> Any:
        """The value stored under ``key`` if it was stored with this ``identity``."""
        entry = self._table(table).get(key)
        if type(entry) is list and len(entry) == 2 and entry[0] == identity:
            return entry[1]
        return None

    # -- writing -------------------------------------------------------------------------------

    def put(self, table: str, key: str, identity: Any, value: Any) -> None:
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
            data = {"format": INDEX_FORMAT, "ally": __version__, **self._tables}
            payload = json.dumps(data, separators=(",", ":")).encode()
            self._dirty = False
        tmp = self.path.with_name(f".{self.path.name}.{secrets.token_hex(4)}.tmp")
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with open(tmp, "wb") as fh:
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
