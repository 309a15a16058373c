"""The record of an env's installed files: written after the install, verified by ``doctor``.

npm keeps no per-file hashes of what it extracted (``npm ls`` compares package.json files
only), so a deleted or edited file inside a package goes unnoticed. After every install the
runtime writes :data:`RECORD` with the sha256 of each regular file below ``node_modules`` and
the target of each symlink; the deep health check hashes the tree again and reports every
entry that is gone, replaced or different, an edit of the same size included.

Files added later are not reported (``npm ls`` reports extraneous packages), and
``node_modules/.cache``, where tools keep their caches, is not recorded.
"""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path
from typing import Optional

__all__ = ["RECORD", "verify_record", "write_record"]

#: The record, relative to the env directory.
RECORD = ".ally/installed-files.json"
_FORMAT = 1
_SKIPPED = frozenset({"node_modules/.cache"})
#: How many changed files a problem names before "and N more".
_SHOWN = 3


def _sha256(path: str) -> str:
    import hashlib

    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _entry(path: str, mode: int) -> Optional[str]:
    """What the record says of one directory entry: ``sha256:…``, ``link:…`` or ``None``."""
    if stat.S_ISLNK(mode):
        return f"link:{os.readlink(path)}"
    if stat.S_ISREG(mode):
        return f"sha256:{_sha256(path)}"
    return None  # directories are walked; FIFOs and devices have no content to record


def _walk(env_dir: Path) -> dict[str, str]:
    out: dict[str, str] = {}
    pending = ["node_modules"]
    while pending:
        rel_dir = pending.pop()
        try:
            entries = list(os.scandir(env_dir / rel_dir))
        except OSError:
            continue
        for item in entries:
            rel = f"{rel_dir}/{item.name}"
            if rel in _SKIPPED:
                continue
            try:
                mode = item.stat(follow_symlinks=False).st_mode
            except OSError:
                continue
            if stat.S_ISDIR(mode):
                pending.append(rel)
            else:
                value = _entry(item.path, mode)
                if value is not None:
                    out[rel] = value
    return out


def write_record(env_dir: Path) -> int:
    """Record every file below ``env_dir/node_modules``; return how many were recorded."""
    files = _walk(env_dir)
    data = {"format": _FORMAT, "files": dict(sorted(files.items()))}
    (env_dir / RECORD).write_text(json.dumps(data, separators=(",", ":")) + "\n", "utf-8")
    return len(files)


def verify_record(env_dir: Path) -> Optional[str]:
    """A one-line description of what changed below ``node_modules``, or ``None`` if nothing.

    Every recorded file is hashed again: a changed size, mtime or inode proves nothing either
    way (an edit can keep all three), only the content does.
    """
    try:
        data = json.loads((env_dir / RECORD).read_text("utf-8"))
        files = data["files"]
        if data.get("format") != _FORMAT or not isinstance(files, dict):
            raise ValueError("unknown format")
    except (OSError, ValueError, KeyError, TypeError) as exc:
        reason = "missing" if isinstance(exc, FileNotFoundError) else "unreadable"
        return f"the record of the installed files ({RECORD}) is {reason}: cannot verify them"
    changed = []
    for rel, expected in files.items():
        path = os.path.join(env_dir, rel)
        try:
            mode = os.lstat(path).st_mode
            actual = _entry(path, mode)
        except FileNotFoundError:
            changed.append(f"{rel} is missing")
            continue
        except OSError as exc:
            changed.append(f"{rel} is unreadable ({exc.strerror or exc})")
            continue
        if actual != expected:
            kind = str(expected).partition(":")[0]
            same_kind = actual is not None and actual.partition(":")[0] == kind
            changed.append(f"{rel} was {'modified' if same_kind else 'replaced'}")
    if not changed:
        return None
    more = f" (and {len(changed) - _SHOWN} more)" if len(changed) > _SHOWN else ""
    noun = "file" if len(changed) == 1 else "files"
    return f"{len(changed)} installed {noun} changed: " + ", ".join(changed[:_SHOWN]) + more
