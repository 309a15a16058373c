"""What keeps a Python env the way it was built, so that one plugin cannot poison another
plugin sharing it, or the installer's cache.

* :func:`record_mismatches`: the installed files that no longer match their distribution's
  ``RECORD`` (missing, resized, or another SHA-256: a same-size edit included);
* :func:`startup_hooks` and :func:`startup_hook_problem`: the files the interpreter runs at
  every start (``*.pth`` in site-packages, ``sitecustomize`` and ``usercustomize``), recorded
  when the env is built and compared on every load (a ``stat`` of site-packages and of each
  hook, a ``scandir`` once site-packages changed, no hashing unless a hook's ``stat`` did);
* :func:`make_read_only`: the installed files lose their write bits (directories keep theirs,
  so ``__pycache__``, uninstalling and removing the env still work). Root ignores modes: the
  two checks above are what hold for root.
"""

from __future__ import annotations

import glob
import os
import stat
from collections.abc import Collection, Mapping
from pathlib import Path
from typing import Any, NamedTuple, Optional

__all__ = [
    "HOOK_MODULES",
    "Mismatch",
    "is_startup_hook",
    "make_read_only",
    "record_mismatches",
    "site_dirs",
    "startup_hook_paths",
    "startup_hook_problem",
    "startup_hooks",
]

#: Modules ``site`` imports at every start when they are on ``sys.path``.
HOOK_MODULES = ("sitecustomize", "usercustomize")
_CHUNK = 1 << 20


def site_dirs(env_dir: Path) -> list[str]:
    """The env's site-packages dirs, each once.

    ``lib/<python3.X or pypy3.X>/site-packages`` (``lib64`` is often a symlink to ``lib``:
    the same dir is counted once), ``Lib/site-packages`` on Windows.
    """
    pattern = os.path.join(str(env_dir), "lib*", "*", "site-packages")
    if os.name == "nt":  # pragma: no cover
        pattern = os.path.join(str(env_dir), "Lib", "site-packages")
    seen: set[str] = set()
    found: list[str] = []
    for site in sorted(glob.glob(pattern)):
        real = os.path.realpath(site)
        if real not in seen:
            seen.add(real)
            found.append(site)
    return found


def dist_infos(env_dir: Path) -> list[str]:
    """The ``*.dist-info`` dirs of the env's site-packages."""
    found: list[str] = []
    for site in site_dirs(env_dir):
        found += sorted(glob.glob(os.path.join(site, "*.dist-info")))
    return found


class Mismatch(NamedTuple):
    """One installed file that is not what its distribution's ``RECORD`` says."""

    #: The distribution, as its ``.dist-info`` dir names it (``typing_extensions``).
    dist: str
    #: The file, as ``RECORD`` lists it (relative to site-packages).
    path: str
    #: ``"is missing"``, ``"was modified"`` or ``"RECORD unreadable (…)"``.
    what: str

    def __str__(self) -> str:
        return f"{self.dist}: {self.path} {self.what}" if self.path else f"{self.dist}: {self.what}"


def _file_digest(path: str, algorithm: str) -> str:
    """The file's digest as ``RECORD`` writes it (urlsafe base64 without padding)."""
    import base64
    import hashlib

    h = hashlib.new(algorithm)
    with open(path, "rb") as fh:
        while chunk := fh.read(_CHUNK):
            h.update(chunk)
    return base64.urlsafe_b64encode(h.digest()).rstrip(b"=").decode("ascii")


def record_mismatches(
    env_dir: Path, *, hashes: bool = True, dists: Optional[Collection[str]] = None
) -> list[Mismatch]:
    """Files a distribution's ``RECORD`` lists with a hash that are gone, resized or (with
    ``hashes``) of another content, for every distribution of the env or those in ``dists``
    (names as their ``.dist-info`` dirs spell them, compared normalised).

    Read in this process (no interpreter start): ``RECORD`` paths are relative to
    site-packages; ``pip check`` compares metadata only. Hashing a sympy-sized env (~60 MB)
    takes ~0.1 s.
    """
    import csv
    import hashlib  # (imported here: warm loads never verify RECORDs)

    wanted = {_normal(d) for d in dists} if dists is not None else None
    bad: list[Mismatch] = []
    for dist_info in dist_infos(env_dir):
        site = os.path.dirname(dist_info)
        name = os.path.basename(dist_info).partition("-")[0]
        if wanted is not None and _normal(name) not in wanted:
            continue
        try:
            with open(os.path.join(dist_info, "RECORD"), encoding="utf-8", newline="") as fh:
                rows = list(csv.reader(fh))
        except FileNotFoundError:
            continue  # no RECORD: nothing recorded to verify
        except (OSError, UnicodeDecodeError, csv.Error) as exc:
            bad.append(Mismatch(name, "", f"RECORD unreadable ({exc})"))
            continue
        for row in rows:
            if len(row) < 3 or not row[1]:
                continue  # RECORD itself, .pyc files: listed without a hash
            path = os.path.join(site, row[0])
            try:
                size = os.stat(path).st_size
            except OSError:
                bad.append(Mismatch(name, row[0], "is missing"))
                continue
            if row[2].isdigit() and int(row[2]) != size:
                bad.append(Mismatch(name, row[0], "was modified"))
                continue
            if not hashes:
                continue
            algorithm, _, expected = row[1].partition("=")
            if algorithm not in hashlib.algorithms_guaranteed or algorithm in {"md5", "sha1"}:
                continue  # a hash this check cannot (or would not) trust
            try:
                actual = _file_digest(path, algorithm)
            except OSError:
                bad.append(Mismatch(name, row[0], "is unreadable"))
                continue
            if actual != expected:
                bad.append(Mismatch(name, row[0], "was modified"))
    return bad


def _normal(name: str) -> str:
    return name.lower().replace("-", "_").replace(".", "_")


# ---------------------------------------------------------------------------------------------
# startup hooks


def is_startup_hook(name: str) -> bool:
    """Whether an entry of site-packages named ``name`` runs at every interpreter start: a
    ``.pth`` file (its ``import`` lines are executed by ``site``), or a ``sitecustomize`` /
    ``usercustomize`` module or package in any form (``.py``, ``.pyc``, an extension)."""
    return name.endswith(".pth") or name.partition(".")[0] in HOOK_MODULES


def _identity(st: os.stat_result) -> list[int]:
    # ctime too: no call sets it back, so an edit that restores size and mtime still shows.
    return [st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino, st.st_mode]


def _content(path: str, st: os.stat_result) -> str:
    """What a hook entry holds: a file's SHA-256, a symlink's target, a directory's listing."""
    import hashlib  # only when a hook's stat changed, or at build time

    if stat.S_ISLNK(st.st_mode):
        return "link:" + os.readlink(path)
    if stat.S_ISDIR(st.st_mode):
        h = hashlib.sha256()
        for root, dirs, files in os.walk(path):
            dirs.sort()
            for name in sorted(files):
                file = os.path.join(root, name)
                h.update(os.path.relpath(file, path).encode("utf-8", "surrogateescape") + b"\0")
                with open(file, "rb") as fh:
                    h.update(hashlib.sha256(fh.read()).digest())
        return "dir:" + h.hexdigest()
    with open(path, "rb") as fh:
        return hashlib.sha256(fh.read()).hexdigest()


def _dir_identity(st: os.stat_result) -> list[int]:
    return [st.st_mtime_ns, st.st_ctime_ns, st.st_ino]


def startup_hooks(env_dir: Path) -> dict[str, Any]:
    """The record of the env's startup hooks, kept in its marker: site-packages (relative to
    the env) and its ``stat`` identity, and, per hook entry, its identity and content.

    ``site-packages/__pycache__`` is made first: Python's bytecode of top-level modules then
    goes into a directory that exists, and site-packages itself keeps its identity until an
    entry is added, removed or renamed in it.
    """
    sites = site_dirs(env_dir)
    if not sites:
        return {}
    site = sites[0]
    os.makedirs(os.path.join(site, "__pycache__"), exist_ok=True)
    files: dict[str, list[Any]] = {}
    with os.scandir(site) as entries:
        for entry in entries:
            if is_startup_hook(entry.name):
                st = entry.stat(follow_symlinks=False)
                files[entry.name] = [*_identity(st), _content(entry.path, st)]
    return {
        "site": os.path.relpath(site, env_dir),
        "dir": _dir_identity(os.stat(site)),
        "files": dict(sorted(files.items())),
    }


def _site_of(env_dir: str, record: Mapping[str, Any]) -> str:
    return f"{env_dir}{os.sep}{record.get('site', '')}"


def startup_hook_paths(env_dir: str, record: Mapping[str, Any]) -> list[str]:
    """What :func:`startup_hook_problem` reads for a quick check: site-packages (an entry
    added, removed or renamed changes its identity) and each recorded hook."""
    site = _site_of(env_dir, record)
    recorded: Mapping[str, Any] = record.get("files") or {}
    return [site, *(f"{site}{os.sep}{name}" for name in recorded)]


def startup_hook_problem(
    env_dir: str, record: Mapping[str, Any], *, full: bool = False
) -> Optional[str]:
    """Why the env's startup hooks are not those it was built with, or ``None``.

    On every load: one ``stat`` of site-packages and one ``lstat`` per recorded hook while
    site-packages keeps its identity (no entry added, removed or renamed), else one
    ``scandir``. An entry is hashed only when its own ``stat`` identity changed (a copy, a
    restore), and then passes if its content did not. ``full`` always lists the directory
    (the deep check).
    """
    site = _site_of(env_dir, record)
    recorded: Mapping[str, Any] = record.get("files") or {}
    try:
        unchanged = not full and _dir_identity(os.stat(site)) == record.get("dir")
    except OSError as exc:
        return f"site-packages is unreadable: {exc.strerror or exc}"
    if unchanged:
        for name, expected in recorded.items():
            problem = _hook_problem(f"{site}{os.sep}{name}", expected)
            if problem is not None:
                return problem
        return None
    found = 0
    try:
        entries = os.scandir(site)
    except OSError as exc:
        return f"site-packages is unreadable: {exc.strerror or exc}"
    with entries:
        for entry in entries:
            name = entry.name
            if not (name.endswith(".pth") or name.startswith(HOOK_MODULES)):
                continue
            if not is_startup_hook(name):
                continue
            expected = recorded.get(name)
            if expected is None:
                return f"startup hook {site}{os.sep}{name} appeared after the env was built"
            found += 1
            problem = _hook_problem(entry.path, expected)
            if problem is not None:
                return problem
    if found != len(recorded):
        for name in recorded:
            if not os.path.lexists(f"{site}{os.sep}{name}"):
                return f"startup hook {site}{os.sep}{name} was removed after the env was built"
    return None


def _hook_problem(path: str, expected: list[Any]) -> Optional[str]:
    try:
        st = os.lstat(path)
        if _identity(st) != expected[:-1] and _content(path, st) != expected[-1]:
            return f"startup hook {path} was modified after the env was built"
    except FileNotFoundError:
        return f"startup hook {path} was removed after the env was built"
    except OSError:
        return f"startup hook {path} is unreadable"
    return None


# ---------------------------------------------------------------------------------------------
# modes


def make_read_only(env_dir: Path) -> int:
    """Take the write bits off every regular file in the env (not symlinks, which ``chmod``
    would follow to the base interpreter, and not directories); the number changed.

    A first line for users other than root: an in-place edit of an installed file fails with
    ``EACCES``. Directories stay writable: Python writes ``__pycache__``, pip and uv
    uninstall by renaming and unlinking, and removing the env unlinks.
    """
    if os.name == "nt":  # pragma: no cover - read-only files cannot be deleted there
        return 0
    changed = 0
    for root, _dirs, files in os.walk(env_dir):
        for name in files:
            path = os.path.join(root, name)
            try:
                st = os.lstat(path)
                if stat.S_ISREG(st.st_mode) and st.st_mode & 0o222:
                    os.chmod(path, stat.S_IMODE(st.st_mode) & ~0o222)
                    changed += 1
            except OSError:
                continue
    return changed
