"""What a Python dependency file reads besides itself, and whether all of it is the plugin's.

A requirements file can pull in other files (``-r``, ``-c``), local packages (``-e .``,
``./pkg``, ``name @ file:…``) and local indexes (``-f``, ``--index-url file:…``). Every such
local path must lie inside the plugin directory, and every file read this way (requirement
and constraint files, local archives) is part of the env's identity: editing one rebuilds
the env. :func:`scan_dependency_file` answers both without starting a process; its result is
cached per file and re-validated by ``stat``.
"""

from __future__ import annotations

import os
import re
import shlex
import threading
from pathlib import Path
from typing import Optional
from urllib.parse import unquote, urlsplit

import attrs

from ...config import strip_credentials

__all__ = [
    "Includes",
    "Signature",
    "scan_dependency_file",
    "scan_requirement_strings",
    "stat_signature",
]


@attrs.frozen
class Includes:
    """The local files and paths a dependency file refers to."""

    #: Files the install reads besides the dependency file (requirement and constraint files,
    #: local archives), all inside the plugin directory.
    files: tuple[Path, ...] = ()
    #: ``path relative to the plugin dir -> sha256`` of :attr:`files`.
    digests: dict[str, str] = attrs.field(factory=dict)
    #: Whether the install reads plugin paths other than requirement files (local packages,
    #: local indexes): such an env belongs to this plugin alone.
    local: bool = False
    #: The first reference that leaves the plugin directory, as one line, or ``None``.
    problem: Optional[str] = None


#: Options whose value is a path or URL, and what it is.
_OPTIONS = {
    "-r": "requirements",
    "--requirement": "requirements",
    "-c": "requirements",
    "--constraint": "requirements",
    "-e": "local",
    "--editable": "local",
    "-f": "local",
    "--find-links": "local",
    "-i": "local",
    "--index-url": "local",
    "--extra-index-url": "local",
}
#: pip's rules: a comment starts at a ``#`` at the line start or after whitespace; ``${VAR}``
#: (upper case, digits, underscore) is replaced by the variable's value.
_COMMENT = re.compile(r"(^|\s+)#.*$")
_ENV_VAR = re.compile(r"\$\{([A-Z0-9_]+)\}")
#: Nested includes deeper than this are refused (a cycle is caught before).
_MAX_DEPTH = 20


def _is_url(value: str) -> bool:
    return re.match(r"^[A-Za-z][A-Za-z0-9+.-]*://", value) is not None and not value.startswith(
        "file:"
    )


def _local_path(value: str, base: Path) -> Path:
    """The local path ``value`` names (``file:`` URL or path), relative to ``base``."""
    if value.startswith("file:"):
        parts = urlsplit(value)
        path = unquote(parts.path)
        if parts.netloc not in ("", "localhost"):
            path = f"//{parts.netloc}{path}"
        value = path
    return Path(base, os.path.expanduser(value))


def _inside(path: Path, root_real: str) -> bool:
    real = os.path.realpath(path)
    return real == root_real or real.startswith(root_real.rstrip(os.sep) + os.sep)


def _logical_lines(text: str) -> list[tuple[int, str]]:
    """``(first line number, line)`` with continuations joined and comments removed."""
    out: list[tuple[int, str]] = []
    pending: list[str] = []
    start = 0
    for number, raw in enumerate(text.splitlines(), 1):
        if not pending:
            start = number
        if raw.endswith("\\") and not _COMMENT.search(raw):
            pending.append(raw[:-1])
            continue
        pending.append(raw)
        line = _COMMENT.sub("", " ".join(pending)).strip()
        pending = []
        if line:
            out.append((start, line))
    if pending:
        line = _COMMENT.sub("", " ".join(pending)).strip()
        if line:
            out.append((start, line))
    return out


def _references(line: str) -> list[tuple[str, str]]:
    """``(kind, value)`` of the paths and URLs one logical line names."""
    line = _ENV_VAR.sub(lambda m: os.environ.get(m.group(1), m.group(0)), line)
    try:
        # shlex only where quoting is possible: it costs 20x a plain split.
        words = shlex.split(line) if any(c in line for c in "\"'\\") else line.split()
    except ValueError:
        words = line.split()
    found: list[tuple[str, str]] = []
    i = 0
    requirement_seen = False
    while i < len(words):
        word = words[i]
        if word.startswith("--") and "=" in word:
            name, value = word.split("=", 1)
            if name in _OPTIONS:
                found.append((_OPTIONS[name], value))
            i += 1
        elif word in _OPTIONS:
            if i + 1 < len(words):
                found.append((_OPTIONS[word], words[i + 1]))
            i += 2
        elif word[:2] in _OPTIONS and not word.startswith("--") and len(word) > 2:
            found.append((_OPTIONS[word[:2]], word[2:]))
            i += 1
        elif word.startswith("-"):
            i += 1  # another option (--hash=…, --pre, …): no path
        elif not requirement_seen:
            requirement_seen = True
            spec = " ".join(words[i:]).split(";", 1)[0].split(" --", 1)[0]
            direct = re.search(r"@\s*(\S+)", spec)
            target = direct.group(1) if direct else spec.split()[0]
            if target.startswith(("file:", ".", "/", "~")) or (
                not direct and target.endswith((".whl", ".zip", ".tar.gz", ".tar.bz2"))
            ):
                found.append(("local", target))
            i += 1
        else:
            i += 1
    return found


def _digest(path: Path) -> str:
    import hashlib

    return hashlib.sha256(path.read_bytes()).hexdigest()


class _Scanner:
    def __init__(self, plugin_dir: Path) -> None:
        self.plugin_dir = plugin_dir
        self.root_real = os.path.realpath(plugin_dir)
        self.files: list[Path] = []
        self.read: list[tuple[str, tuple[int, ...]]] = []  # requirement files and signatures
        self.local = False
        self.problem: Optional[str] = None
        #: Set while checking a string that is no line of a file (pyproject entries).
        self.label: Optional[str] = None

    def where(self, file: Path, number: int, line: str) -> str:
        try:
            name = str(Path(os.path.realpath(file)).relative_to(self.root_real))
        except ValueError:
            name = str(file)
        shown = strip_credentials(line if len(line) <= 120 else line[:117] + "...")
        return f"{name}: {shown!r}" if self.label else f"{name} line {number}: {shown!r}"

    def check(self, path: Path, file: Path, number: int, line: str) -> bool:
        if _inside(path, self.root_real):
            return True
        if self.problem is None:
            self.problem = (
                f"{self.where(file, number, line)} reads {os.path.normpath(path)}, outside the "
                "plugin directory"
            )
        return False

    def scan_file(self, file: Path, depth: int, chain: tuple[str, ...]) -> None:
        signature = stat_signature(str(file))
        self.read.append((str(file), signature or ()))  # a missing file: noticed once created
        try:
            text = file.read_text("utf-8", errors="replace")
        except OSError:
            return  # a missing include: the installer says so, in its own words
        self.scan_lines(text, file, depth, chain)

    def scan_lines(
        self,
        text: str,
        file: Path,
        depth: int,
        chain: tuple[str, ...],
        label: Optional[str] = None,
    ) -> None:
        self.label = label
        for number, line in _logical_lines(text):
            for kind, value in _references(line):
                if kind == "requirements":
                    if _is_url(value):
                        continue
                    target = _local_path(value, file.parent)
                    if not self.check(target, file, number, line):
                        return
                    real = os.path.realpath(target)
                    if real in chain:
                        continue  # pip refuses a cycle itself
                    if depth >= _MAX_DEPTH:
                        self.problem = self.problem or (
                            f"{self.where(file, number, line)}: includes nested deeper "
                            f"than {_MAX_DEPTH} files"
                        )
                        return
                    if os.path.isfile(target):
                        self.files.append(Path(target))
                    self.scan_file(Path(target), depth + 1, (*chain, real))
                else:
                    if _is_url(value):
                        continue
                    # pip resolves these against the working directory (the plugin dir), uv
                    # against the file's directory: both must stay inside.
                    targets = {_local_path(value, self.plugin_dir), _local_path(value, file.parent)}
                    if not all(self.check(t, file, number, line) for t in targets):
                        return
                    self.local = True
                    for target in targets:
                        if os.path.isfile(target):
                            self.files.append(target)
                if self.problem:
                    return

    def result(self) -> Includes:
        files = tuple(dict.fromkeys(self.files))
        digests = {}
        for path in files:
            try:
                rel = str(Path(os.path.realpath(path)).relative_to(self.root_real))
                digests[rel] = _digest(path)
            except (OSError, ValueError):
                continue
        return Includes(files=files, digests=digests, local=self.local, problem=self.problem)


Signature = tuple[int, ...]
_CACHE: dict[tuple[str, str], tuple[tuple[tuple[str, Signature], ...], Includes]] = {}
_CACHE_LOCK = threading.Lock()


def stat_signature(path: str) -> Optional[Signature]:
    """A file's ``stat`` identity (size, mtime, inode, ctime), or ``None`` if it is gone."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_size, st.st_mtime_ns, st.st_ino, st.st_ctime_ns)


def scan_dependency_file(dep_file: Path, plugin_dir: Path) -> Includes:
    """What the requirements file ``dep_file`` reads besides itself.

    Cached while every file it read (and every archive it names) keeps its ``stat``
    identity. ``pyproject.toml`` strings are checked by :func:`scan_requirement_strings`.
    """
    key = (str(dep_file), str(plugin_dir))
    with _CACHE_LOCK:
        cached = _CACHE.get(key)
    if cached is not None and all(stat_signature(path) == sig for path, sig in cached[0]):
        return cached[1]
    scanner = _Scanner(plugin_dir)
    scanner.scan_file(dep_file, 0, (os.path.realpath(dep_file),))
    result = scanner.result()
    seen = dict(scanner.read)
    for path in result.files:
        seen.setdefault(str(path), stat_signature(str(path)) or ())
    with _CACHE_LOCK:
        _CACHE[key] = (tuple(seen.items()), result)
    return result


def scan_requirement_strings(requirements: list[str], source: Path, plugin_dir: Path) -> Includes:
    """Check PEP 508 strings (e.g. ``[project].dependencies``) for local paths outside."""
    scanner = _Scanner(plugin_dir)
    for requirement in requirements:
        scanner.scan_lines(requirement.replace("\n", " "), source, 0, (), label=requirement)
        if scanner.problem:
            break
    return scanner.result()
