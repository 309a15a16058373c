"""What ally keeps for MCP servers beside their envs, in ``<envs_dir>/.mcp/<pointer>/``:
each server's lock name, and what ``ally gc`` removes there.

Below :class:`~ally_core.Host` (it takes a :class:`~.discovery.Home`), so that ``Host.gc``
keeps the servers' envs and state whoever calls it.
"""

from __future__ import annotations

import contextlib
import json
import shutil
from pathlib import Path

from .discovery import PINS, STATE_DIR, Home

__all__ = ["collect_state", "lock_key"]


def collect_state(host: Home, keep: set[str], *, dry_run: bool) -> list[tuple[Path, int, str]]:
    """Remove what ``.mcp/`` holds for servers that are gone, locks no pins name, and scratch
    directories of killed resolves. Returns ``(path, bytes, why)`` for each.

    Each server's directory is cleaned under its lock: a resolve or build running now (which
    holds it) is skipped, since the lock it is building from is not in ``pins.json`` yet.
    """
    from filelock import Timeout

    root = host.paths.envs_dir / STATE_DIR
    removed: list[tuple[Path, int, str]] = []
    if not root.is_dir():
        return removed
    for folder in sorted(root.iterdir()):
        try:
            lock = host.store.lock(lock_key(folder.name), timeout=0)
            with contextlib.nullcontext() if dry_run else lock:
                found = _leftovers(folder, keep)
                for path, _size, _why in [] if dry_run else found:
                    shutil.rmtree(path, ignore_errors=True)
        except Timeout:
            continue
        removed += found
    return removed


def _leftovers(folder: Path, keep: set[str]) -> list[tuple[Path, int, str]]:
    from ..store import disk_usage

    if folder.name not in keep:
        return [(folder, disk_usage(folder), "MCP server is gone")]
    try:
        pins = json.loads((folder / PINS).read_bytes())
        current = pins.get("lock") if isinstance(pins, dict) else None
    except (OSError, ValueError):
        current = None
    return [
        (item, disk_usage(item), "lock no pins name")
        for item in sorted(folder.iterdir())
        if item.is_dir() and item.name != current
    ]


def lock_key(pointer: str) -> str:
    """The name of a server's lock (one resolve-and-build at a time, across processes)."""
    import hashlib

    return "mcp-" + hashlib.sha256(pointer.encode()).hexdigest()[:16]
