"""Manifest warnings a person has seen: shown once per change, not on every ``ally list``.

A plugin's warnings (``$.colour: unknown key (kept)``) come back on every command that lists
it; with the same typo in 100 plugins they would bury the result each time. The CLI shows a
plugin's warnings when they are new to this home: when its ``plugin.json`` changed (its
identity: size, mtime, inode, ctime) or the warnings did (another version of ally). What was
shown is remembered in ``<envs dir>/.state/seen-warnings.json`` (plugin dir -> identity and
warnings). Only what people read counts: ``--json`` always carries every warning and
records nothing; ``-v`` shows them all again.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Optional

__all__ = ["FILE_NAME", "SeenWarnings"]

FILE_NAME = "seen-warnings.json"


def _identity(plugin_dir: Path) -> Optional[list[int]]:
    try:
        st = os.stat(plugin_dir / "plugin.json")
    except OSError:
        return None
    return [st.st_size, st.st_mtime_ns, st.st_ino, st.st_ctime_ns]


class SeenWarnings:
    """The warnings shown in one home, read once and written once if anything was new."""

    def __init__(self, state_dir: Path) -> None:
        self.path = state_dir / FILE_NAME
        self._seen: Optional[dict[str, Any]] = None
        self._changed = False

    def _entries(self) -> dict[str, Any]:
        if self._seen is None:
            try:
                data = json.loads(self.path.read_bytes())
            except (OSError, ValueError, RecursionError):
                data = None
            self._seen = data if isinstance(data, dict) else {}
        return self._seen

    def is_new(self, plugin_dir: Path, warnings: Sequence[str]) -> bool:
        """Whether ``warnings`` of ``plugin_dir`` were not shown for its current manifest;
        if so they count as shown from now on (:meth:`save` remembers it)."""
        if not warnings:
            return False
        entry = [_identity(plugin_dir), list(warnings)]
        seen = self._entries()
        if seen.get(str(plugin_dir)) == entry:
            return False
        seen[str(plugin_dir)] = entry
        self._changed = True
        return True

    def save(self) -> None:
        """Write what was shown (plugins whose directory is gone are forgotten). A home that
        cannot be written just shows the warnings again next time."""
        if not self._changed:
            return
        seen = {k: v for k, v in self._entries().items() if os.path.isdir(k)}
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        with contextlib.suppress(OSError):
            self.path.parent.mkdir(parents=True, exist_ok=True)
            # 0600 like every state file: the warnings quote the plugins' manifests.
            flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | getattr(os, "O_NOFOLLOW", 0)
            fd = os.open(tmp, flags, 0o600)
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                json.dump(seen, fh, sort_keys=True)
            os.replace(tmp, self.path)
            self._changed = False
        with contextlib.suppress(OSError):
            tmp.unlink()
