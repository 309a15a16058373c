"""What starts a server: a package runner or an interpreter ally can give an env, or a command
run as declared.

=========  ============================================================  =================
kind       declared command                                               env
=========  ============================================================  =================
``uvx``    ``uvx PKG[==V]``, ``uvx PKG@V``, ``uvx --from PKG CMD``,        Python: ``PKG``
           ``--with REQ``, ``--python V`` (also ``uv tool run``)          (pinned)
``npx``    ``npx [-y] PKG[@V]``, ``npx -p PKG CMD``                       Node: ``PKG``
                                                                          (pinned)
``python`` ``python3|python ${CLAUDE_PLUGIN_ROOT}/server.py`` with a      Python: the file
           ``requirements.txt`` or ``pyproject.toml`` at the plugin root
``node``   ``node ${CLAUDE_PLUGIN_ROOT}/server.js`` with a                Node: the file
           ``package.json`` at the plugin root
``command`` anything else (and the above with options ally does not      none
           understand): run as declared
=========  ============================================================  =================
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Optional

import attrs

from ..errors import ManifestError
from .manifest import McpServer
from .warm_launch import expand

__all__ = ["Launcher", "classify"]

#: uvx flags that change nothing about what is installed (ally makes its own env).
_UVX_FLAGS = frozenset(
    {
        "-q",
        "--quiet",
        "-qq",
        "-v",
        "--verbose",
        "--isolated",
        "--refresh",
        "--no-cache",
        "-n",
        "--offline",
        "--no-progress",
        "--native-tls",
        "--no-python-downloads",
        "--managed-python",
        "--no-managed-python",
    }
)
_UVX_VALUE_OPTIONS = frozenset({"--from", "--with", "--python", "-p"})
_NPX_FLAGS = frozenset(
    {"-y", "--yes", "-q", "--quiet", "-s", "--silent", "--prefer-offline", "--prefer-online"}
)
_NPM_NAME = re.compile(r"(?:@[a-z0-9][a-z0-9._~-]*/)?[a-z0-9~][a-z0-9._~-]*")
_PYTHON = re.compile(r"python(?:3(?:\.\d+)?)?(?:\.exe)?")
_PYTHON_FLAGS = frozenset({"-u", "-B", "-O", "-OO", "-s", "-E"})
_VERSION = re.compile(r"\d+(?:\.\d+){0,2}")
#: Dependency files looked for at the plugin root, per interpreter kind.
DEPENDENCY_FILES = {"python": ("requirements.txt", "pyproject.toml"), "node": ("package.json",)}


@attrs.frozen
class Launcher:
    """How a server is started, and what its env holds."""

    kind: str
    #: ``uvx``: requirement lines (the package, then ``--with`` ones); ``npx``: package specs
    #: ``name@range``.
    packages: tuple[str, ...] = ()
    #: ``uvx``: the executable to run; ``npx``: the bin (empty: npx's rule, after install).
    entry: str = ""
    #: The declared arguments that follow what the launcher consumed (not expanded).
    args: tuple[str, ...] = ()
    #: ``uvx --python``, as a version specifier.
    python: Optional[str] = None
    #: ``python``/``node``: the dependency file at the plugin root.
    dependency_file: Optional[Path] = None
    #: Why a server runs as declared (``kind == "command"``), when it looked managed.
    note: str = ""

    @property
    def runtime(self) -> Optional[str]:
        return {"uvx": "python", "python": "python", "npx": "node", "node": "node"}.get(self.kind)

    @property
    def managed(self) -> bool:
        """Whether ally gives the server an env."""
        return self.kind != "command"

    @property
    def pinned(self) -> bool:
        """Whether ally resolves the packages itself and pins the result (package runners)."""
        return self.kind in {"uvx", "npx"}

    def declared_digest(self) -> str:
        """What the pins were resolved from: a new digest means resolving again."""
        data = [self.kind, list(self.packages), self.python]
        return hashlib.sha256(json.dumps(data).encode()).hexdigest()[:16]

    def package_names(self) -> list[str]:
        """The names of the packages a runner was asked for (as ``ally list`` shows them)."""
        if self.kind == "npx":
            return [parsed[0] for p in self.packages if (parsed := npm_spec(p))]
        if self.kind != "uvx":
            return []
        from packaging.requirements import InvalidRequirement, Requirement
        from packaging.utils import canonicalize_name

        names = []
        for text in self.packages:
            try:
                names.append(str(canonicalize_name(Requirement(text).name)))
            except InvalidRequirement:
                continue  # a URL of --from: its name is known only once installed
        return names

    def describe(self) -> str:
        if self.kind == "uvx":
            return "uvx " + " ".join(self.packages)
        if self.kind == "npx":
            return "npx " + " ".join(self.packages)
        if self.kind in {"python", "node"} and self.dependency_file is not None:
            return f"{self.kind} with {self.dependency_file.name}"
        return "as declared" + (f" ({self.note})" if self.note else "")


def _command(note: str, server: McpServer) -> Launcher:
    return Launcher("command", args=server.args, note=note)


def classify(
    server: McpServer, plugin: str, plugin_dir: Path, environ: Mapping[str, str]
) -> Launcher:
    """The launcher of a stdio server; raises :class:`ManifestError` for a package that cannot
    be a requirement (``uvx 'not a package'``)."""
    root = str(plugin_dir)
    command = expand(server.command, environ, root)
    words = [expand(a, environ, root) for a in server.args]
    base = os.path.basename(command)
    if base == "uvx" or (base == "uv" and words[:2] == ["tool", "run"]):
        start = 0 if base == "uvx" else 2
        return _uvx(server, plugin, words, start)
    if base == "npx":
        return _npx(server, plugin, words)
    if _PYTHON.fullmatch(base) or base in {"node", "nodejs"}:
        return _interpreter(
            server, "node" if base.startswith("node") else "python", words, plugin_dir
        )
    return Launcher("command", args=server.args)


def _options(
    words: Sequence[str], start: int, flags: frozenset[str], valued: frozenset[str], tool: str
) -> tuple[dict[str, list[str]], int, str]:
    """Parse leading options: ``(values, index of the first positional, problem)``."""
    values: dict[str, list[str]] = {}
    i = start
    while i < len(words):
        word = words[i]
        if word == "--":
            return values, i + 1, ""
        if not word.startswith("-") or word == "-":
            break
        name, eq, value = word.partition("=")
        if name in valued:
            if not eq:
                if i + 1 >= len(words):
                    return values, i, f"{tool} option {name} has no value"
                value = words[i + 1]
                i += 1
            values.setdefault(name, []).append(value)
        elif word not in flags:
            return values, i, f"{tool} option {word} is not understood"
        i += 1
    return values, i, ""


def _requirement_name(text: str, server: McpServer, plugin: str) -> str:
    from packaging.requirements import InvalidRequirement, Requirement

    try:
        return str(Requirement(text).name)
    except InvalidRequirement as exc:
        raise ManifestError(
            plugin,
            server.source,
            [f"{server.path}.args: {text!r} is not a Python package requirement ({exc})"],
        ) from None


def _python_version(value: str) -> Optional[str]:
    value = value.strip()
    if _VERSION.fullmatch(value):
        return f"=={value}.*" if value.count(".") < 2 else f"=={value}"
    if value[:1] in "<>=!~":
        return value
    return None


def _uvx(server: McpServer, plugin: str, words: list[str], start: int) -> Launcher:
    values, i, problem = _options(words, start, _UVX_FLAGS, _UVX_VALUE_OPTIONS, "uvx")
    if problem:
        return _command(problem, server)
    if i >= len(words):
        return _command("uvx without a package", server)
    target = words[i]
    python = None
    asked = values.get("--python", []) + values.get("-p", [])
    if asked:
        wanted = asked[-1]
        python = _python_version(wanted)
        if python is None:
            return _command(f"uvx --python {wanted} is not a version", server)
    if values.get("--from"):
        requirement = values["--from"][-1]
        if "://" not in requirement and os.sep not in requirement:
            _requirement_name(requirement, server, plugin)
        elif not requirement.startswith(("git+", "http://", "https://")):
            return _command(f"uvx --from {requirement} is a local path", server)
        entry = target
    else:
        name, at, version = target.partition("@")
        if at and "://" not in version and " " not in target:
            requirement = name if version in {"latest", ""} else f"{name}=={version}"
        else:
            requirement = target
        entry = _requirement_name(requirement, server, plugin)
    extras = values.get("--with", [])
    for extra in extras:
        _requirement_name(extra, server, plugin)
    return Launcher(
        "uvx",
        packages=(requirement, *extras),
        entry=entry,
        args=server.args[i + 1 :],
        python=python,
    )


def npm_spec(text: str) -> Optional[tuple[str, str]]:
    """``(name, range)`` of a registry package spec (``pkg``, ``@s/pkg@^1``), else ``None``."""
    at = text.find("@", 1)
    name, version = (text[:at], text[at + 1 :]) if at > 0 else (text, "")
    if not _NPM_NAME.fullmatch(name) or any(c in version for c in ":/\\ "):
        return None
    return name, version or "latest"


def _npx(server: McpServer, plugin: str, words: list[str]) -> Launcher:
    values, i, problem = _options(words, 0, _NPX_FLAGS, frozenset({"-p", "--package"}), "npx")
    if problem:
        return _command(problem, server)
    if i >= len(words):
        return _command("npx without a package", server)
    specs = [*values.get("-p", []), *values.get("--package", [])] or [words[i]]
    packages = []
    for spec in specs:
        parsed = npm_spec(spec)
        if parsed is None:
            return _command(f"npx {spec} is not a registry package", server)
        packages.append(f"{parsed[0]}@{parsed[1]}")
    entry = words[i] if values else ""
    return Launcher("npx", packages=tuple(packages), entry=entry, args=server.args[i + 1 :])


def _interpreter(server: McpServer, kind: str, words: list[str], plugin_dir: Path) -> Launcher:
    i = 0
    while i < len(words) and (
        words[i] in _PYTHON_FLAGS if kind == "python" else words[i].startswith("--")
    ):
        i += 1
    if i >= len(words):
        return _command(f"{kind} without a script", server)
    script = words[i]
    root = os.path.realpath(plugin_dir)
    if not os.path.isabs(script) or os.path.commonpath([root, os.path.realpath(script)]) != root:
        return _command(f"{kind} runs {script}, not a file of the plugin", server)
    for name in DEPENDENCY_FILES[kind]:
        path = plugin_dir / name
        if path.is_file():
            return Launcher(kind, args=server.args, dependency_file=path)
    files = " or ".join(DEPENDENCY_FILES[kind])
    return _command(f"no {files} at the plugin root", server)
