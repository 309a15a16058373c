"""Finding a Node.js (and the npm that comes with it) that satisfies a plugin's constraints.

The constraints are ``runtime_version`` in plugin.json and ``engines.node`` in package.json;
:func:`choose_node` is the whole of ``resolve_interpreter``.
"""

from __future__ import annotations

import functools
import glob
import json
import os

# shutil (which imports bz2 and lzma) is imported by the functions that use it: ally imports
# every runtime at each start.
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple, Optional

from ally_core import (
    EnvSpec,
    InstallFailed,
    Interpreter,
    InterpreterNotFound,
    clean_environ,
    command_lookup_paths,
)

from ._layout import NODE_ENV_VAR
from ._package import read_package_json
from ._semver import parse_version, satisfies, validate_range

__all__ = [
    "HOST_NODE_VARS",
    "NODE_ENV_VAR",
    "NodeInfo",
    "NpmInfo",
    "candidate_paths",
    "choose_node",
    "find_npm",
    "host_node_environ",
    "node_lookup_paths",
    "node_on_path",
    "query_node",
]

#: Names the Node.js to use instead of searching (a path, or a command looked up on ``PATH``).

#: Variables of the host's Node.js setup that must not reach ally's node and npm processes:
#: they would load the host's modules or preload its code into the plugin's installs.
HOST_NODE_VARS = frozenset({"NODE_OPTIONS", "NODE_PATH", "NODE_ENV"})

# Asked of a candidate node: the real binary (shims and symlinks resolved) and its version.
_QUERY = "JSON.stringify([process.execPath, process.versions.node])"


class NpmInfo(NamedTuple):
    """The npm of one Node.js install: its JavaScript entry points, run with that node."""

    npm_cli: str
    #: ``npx-cli.js``, or ``""`` when this npm does not ship one.
    npx_cli: str
    version: str


class NodeInfo(NamedTuple):
    interpreter: Interpreter
    npm: Optional[NpmInfo]


def host_node_environ(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The host environment for ally's own node/npm processes (host Node.js vars removed)."""
    env = {k: v for k, v in clean_environ().items() if k not in HOST_NODE_VARS}
    env.update(extra or {})
    return env


def _signature(path: str) -> tuple[int, ...]:
    st = os.stat(path)
    return (st.st_size, st.st_mtime_ns, st.st_ino)


def node_on_path(environ: Mapping[str, str] | None = None) -> Optional[str]:
    """The node ``ALLY_NODE`` names, else the first ``node`` on ``PATH`` (no process started)."""
    import shutil

    environ = os.environ if environ is None else environ
    wanted = environ.get(NODE_ENV_VAR, "").strip()
    path_var = environ.get("PATH", os.defpath)
    if wanted:
        if os.sep in wanted:
            return os.path.abspath(os.path.expanduser(wanted))
        return shutil.which(wanted, path=path_var) or wanted
    return shutil.which("node", path=path_var)


def node_lookup_paths(environ: Mapping[str, str] | None = None) -> list[str]:
    """The files whose identities decide what :func:`node_on_path` answers: the lookup of
    ``node`` (or ``ALLY_NODE``'s command) on ``PATH`` (:func:`ally_core.command_lookup_paths`).

    Nothing when ``ALLY_NODE`` holds a path (it is answered without looking at a file).
    """
    environ = os.environ if environ is None else environ
    wanted = environ.get(NODE_ENV_VAR, "").strip() or "node"
    if os.sep in wanted:
        return []
    return command_lookup_paths(wanted, environ.get("PATH", os.defpath))


@functools.lru_cache(maxsize=64)
def _query(path: str, signature: tuple[int, ...]) -> Optional[tuple[str, str]]:
    import subprocess  # only when a node is queried: not on a warm load

    try:
        out = subprocess.run(
            [path, "-p", _QUERY],
            capture_output=True,
            timeout=30,
            check=True,
            env=host_node_environ(),
            stdin=subprocess.DEVNULL,
        ).stdout
        exe, version = json.loads(out)
        parse_version(version)
    except (OSError, subprocess.SubprocessError, ValueError, TypeError):
        return None
    if not isinstance(exe, str) or not os.path.isabs(exe):
        return None
    return exe, version


def query_node(path: str) -> Optional[NodeInfo]:
    """Ask the node at ``path`` (may be a shim) where its real binary is and which version."""
    try:
        answer = _query(path, _signature(os.path.realpath(path)))
    except OSError:
        return None
    if answer is None:
        return None
    exe, version = answer
    real = os.path.realpath(exe)
    try:
        signature = _signature(real)
    except OSError:
        return None
    interpreter = Interpreter(
        path=exe, version=version, kind="node", realpath=real, signature=signature
    )
    return NodeInfo(interpreter, find_npm(exe, path))


def _npm_version(npm_cli: str) -> str:
    package_json = os.path.join(os.path.dirname(os.path.dirname(npm_cli)), "package.json")
    try:
        with open(package_json, encoding="utf-8") as fh:
            version = json.load(fh).get("version")
    except (OSError, ValueError, AttributeError):
        return "unknown"
    return version if isinstance(version, str) else "unknown"


def find_npm(node_exe: str, node_path: str = "") -> Optional[NpmInfo]:
    """The npm installed with ``node_exe``: beside it (nvm, official tarballs, distro packages),
    beside the path it was found under (a symlink farm), else the first ``npm`` on ``PATH``."""
    import shutil

    candidates = []
    for directory in dict.fromkeys(
        [os.path.dirname(node_exe), os.path.dirname(os.path.abspath(node_path or node_exe))]
    ):
        candidates += [
            os.path.join(directory, "npm"),
            os.path.join(
                os.path.dirname(directory), "lib", "node_modules", "npm", "bin", "npm-cli.js"
            ),
        ]
    on_path = shutil.which("npm")
    if on_path:
        candidates.append(on_path)
    for candidate in candidates:
        real = os.path.realpath(candidate)
        if os.path.basename(real) == "npm-cli.js" and os.path.isfile(real):
            npx = os.path.join(os.path.dirname(real), "npx-cli.js")
            return NpmInfo(real, npx if os.path.isfile(npx) else "", _npm_version(real))
    return None


def candidate_paths(environ: Mapping[str, str] | None = None) -> Sequence[str]:
    """Other nodes of this machine, newest last: nvm's, fnm's, n's and nodenv's versions."""
    environ = os.environ if environ is None else environ
    home = os.path.expanduser("~")
    nvm = environ.get("NVM_DIR") or os.path.join(home, ".nvm")
    patterns = [
        os.path.join(nvm, "versions", "node", "*", "bin", "node"),
        os.path.join(
            home, ".local", "share", "fnm", "node-versions", "*", "installation", "bin", "node"
        ),
        os.path.join(
            environ.get("N_PREFIX", "/usr/local"), "n", "versions", "node", "*", "bin", "node"
        ),
        os.path.join(
            environ.get("NODENV_ROOT") or os.path.join(home, ".nodenv"),
            "versions",
            "*",
            "bin",
            "node",
        ),
    ]
    found: list[str] = []
    for pattern in patterns:
        found += sorted(glob.glob(pattern))
    return [p for p in found if os.access(p, os.X_OK)]


# ---------------------------------------------------------------------------------------------
# a plugin's constraints


def _constraints(spec: EnvSpec) -> list[tuple[str, str]]:
    """``(range, where it comes from)`` the node must satisfy."""
    out = []
    if spec.runtime_version:
        out.append((spec.runtime_version, "runtime_version in plugin.json"))
    if spec.dependency_file is not None and spec.dependency_file.is_file():
        try:
            engines = read_package_json(spec.dependency_file).get("engines")
        except InstallFailed as exc:
            raise InstallFailed(f"{spec.plugin_name}: {exc}") from exc
        wanted = engines.get("node") if isinstance(engines, dict) else None
        if isinstance(wanted, str) and wanted.strip():
            out.append((wanted, f"engines.node in {spec.dependency_file.name}"))
    for range_, where in out:
        try:
            validate_range(range_)
        except ValueError:
            raise InterpreterNotFound(
                f"{spec.plugin_name}: {where}: {range_!r} is not a valid semver range "
                "(e.g. '>=18', '^20.11', '18 || 20')"
            ) from None
    return out


def _fits(interpreter: Interpreter, constraints: Sequence[tuple[str, str]]) -> Optional[str]:
    """The first constraint ``interpreter`` fails, worded for the user, or ``None``."""
    for range_, where in constraints:
        if not satisfies(interpreter.version, range_):
            return f"{range_!r} ({where})"
    return None


def _sort_key(version: str) -> tuple[int, Any]:
    """Semver order; a version that does not parse sorts last, as text."""
    try:
        return (0, parse_version(version)[:3])
    except ValueError:
        return (1, version)


def choose_node(spec: EnvSpec) -> Interpreter:
    """The node this plugin's env is built with: ``ALLY_NODE`` or the first ``node`` on
    ``PATH`` when it satisfies the plugin's constraints, else the newest installed one that
    does (nvm, fnm, n, nodenv); raises InterpreterNotFound with a one-line reason."""
    constraints = _constraints(spec)
    first = node_on_path()
    named = bool(os.environ.get(NODE_ENV_VAR, "").strip())
    if first is None:
        raise InterpreterNotFound(
            f"{spec.plugin_name}: Node.js not found (no 'node' on PATH); install Node.js or "
            f"point {NODE_ENV_VAR} at a node binary"
        )
    info = query_node(first)
    if info is None:
        raise InterpreterNotFound(
            f"{spec.plugin_name}: Node.js at {first} is not runnable"
            + (f" ({NODE_ENV_VAR})" if named else "")
        )
    failed = _fits(info.interpreter, constraints)
    chosen: Optional[NodeInfo] = info if failed is None else None
    seen = [info]
    if chosen is None and not named:
        for path in candidate_paths():
            other = query_node(path)
            if other is None or other.interpreter.realpath in {
                s.interpreter.realpath for s in seen
            }:
                continue
            seen.append(other)
            if _fits(other.interpreter, constraints) is None and (
                chosen is None
                or parse_version(other.interpreter.version)
                > parse_version(chosen.interpreter.version)
            ):
                chosen = other
    if chosen is None:
        seen.sort(key=lambda s: _sort_key(s.interpreter.version))  # 18 before 20, not text
        found = ", ".join(f"{s.interpreter.version} at {s.interpreter.path}" for s in seen)
        raise InterpreterNotFound(
            f"{spec.plugin_name}: Node.js {info.interpreter.version} does not satisfy {failed}"
            f" (found: {found}); install a Node.js that does or point {NODE_ENV_VAR} at one"
        )
    if chosen.npm is None:
        raise InterpreterNotFound(
            f"{spec.plugin_name}: npm not found for Node.js {chosen.interpreter.version} at "
            f"{chosen.interpreter.path}; install npm"
        )
    return chosen.interpreter
