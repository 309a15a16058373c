"""Which Pythons this machine has, and which one builds a plugin's env.

An interpreter is asked who it really is (a shim or a venv's python resolves to its base);
the answer is cached while the binary's size, mtime and inode stay the same.
"""

from __future__ import annotations

import functools
import glob
import json
import os
import subprocess
import sys
from collections.abc import Mapping
from typing import Any, Optional

from ...envs import EnvSpec, Interpreter
from ...errors import InterpreterNotFound
from ...process import clean_environ

_QUERY = (
    "import sys, json, platform; print(json.dumps({'executable': sys.executable, "
    "'base': getattr(sys, '_base_executable', sys.executable), "
    "'in_venv': sys.prefix != getattr(sys, 'base_prefix', sys.prefix), "
    "'version': platform.python_version(), "
    "'impl': platform.python_implementation().lower()}))"
)
#: Flags for the query: ``-I`` (isolated) where it exists; Python 2 knows only ``-E -s``, and
#: then runs in the file system root, so that no module of the current directory is read.
_QUERY_FLAGS = (("-I", "-S"), ("-E", "-s", "-S"))


def _signature(path: str) -> tuple[int, ...]:
    st = os.stat(path)
    return (st.st_size, st.st_mtime_ns, st.st_ino)


def _make_interpreter(path: str, version: str) -> Interpreter:
    real = os.path.realpath(path)
    return Interpreter(
        path=os.path.abspath(path),
        version=version,
        kind="python",
        realpath=real,
        signature=_signature(real),
    )


@functools.lru_cache(maxsize=64)
def _query(path: str, signature: tuple[int, ...]) -> Optional[Interpreter]:
    info = None
    for flags in _QUERY_FLAGS:
        try:
            out = subprocess.run(
                [path, *flags, "-c", _QUERY],
                capture_output=True,
                timeout=30,
                check=True,
                env=clean_environ(),
                cwd=None if "-I" in flags else os.path.abspath(os.sep),
            ).stdout
            info = json.loads(out)
            break
        except subprocess.CalledProcessError:
            continue  # e.g. Python 2: "Unknown option: -I"
        except (OSError, subprocess.SubprocessError, ValueError):
            return None
    if not isinstance(info, dict):
        return None
    if info.get("impl") != "cpython" and info.get("impl") != "pypy":
        return None
    exe = info["base"] if info.get("in_venv") and info.get("base") else info["executable"]
    if not exe or not os.path.isabs(exe):
        return None
    return _make_interpreter(exe, info["version"])


def query_interpreter(path: str) -> Optional[Interpreter]:
    """Ask the Python at ``path`` (may be a shim or a venv python) who it really is."""
    try:
        sig = _signature(os.path.realpath(path))
    except OSError:
        return None
    return _query(path, sig)


def _running_interpreter() -> Interpreter:
    import platform

    base = getattr(sys, "_base_executable", None) or sys.executable
    if not os.path.exists(base):  # pragma: no cover - unusual embedding
        base = sys.executable
    return _make_interpreter(base, platform.python_version())


def candidate_paths(environ: Mapping[str, str] | None = None) -> list[str]:
    """Pythons on this machine: PATH entries, then pyenv's versions."""
    environ = os.environ if environ is None else environ
    found: list[str] = []
    names = ["python3", *(f"python3.{m}" for m in range(20, 7, -1))]
    for directory in environ.get("PATH", "").split(os.pathsep):
        for name in names:
            path = os.path.join(directory, name)
            if os.path.isfile(path) and os.access(path, os.X_OK):
                found.append(path)
    pyenv_root = environ.get("PYENV_ROOT") or os.path.expanduser("~/.pyenv")
    found += sorted(glob.glob(os.path.join(pyenv_root, "versions", "*", "bin", "python3")))
    # Python 2 is looked for only to say that it is not supported, instead of "not found".
    for directory in environ.get("PATH", "").split(os.pathsep):
        for name in ("python2", "python2.7"):
            path = os.path.join(directory, name)
            if os.path.isfile(path) and os.access(path, os.X_OK):
                found.append(path)
    found += sorted(glob.glob(os.path.join(pyenv_root, "versions", "2.*", "bin", "python2")))
    return list(dict.fromkeys(found))


def _is_python2(version: str) -> bool:
    return version.split(".")[0] == "2"


def _asks_for_python2(specifier: Any) -> bool:
    """Whether a ``runtime_version`` admits a Python 2 release and no Python 3 release."""
    twos = [f"2.{minor}.{patch}" for minor in range(8) for patch in (0, 18, 99)]
    threes = [f"3.{minor}.{patch}" for minor in range(100) for patch in (0, 99)]
    return any(specifier.contains(v, prereleases=True) for v in twos) and not any(
        specifier.contains(v, prereleases=True) for v in threes
    )


def find_interpreter(spec: EnvSpec) -> Interpreter:
    """The Python to build ``spec``'s env with: ``ALLY_PYTHON``, else the running Python,
    else the newest one on ``PATH`` or pyenv's that satisfies ``runtime_version``.

    Raises :class:`~ally_core.errors.InterpreterNotFound` with one line saying why.
    """
    constraint = spec.runtime_version
    specifier = None
    if constraint:
        from packaging.specifiers import InvalidSpecifier, SpecifierSet

        try:
            specifier = SpecifierSet(constraint)
        except InvalidSpecifier:
            raise InterpreterNotFound(
                f"{spec.plugin_name}: plugin.json: $.runtime_version: {constraint!r} is not a "
                "valid version specifier (e.g. '>=3.10')"
            ) from None

    def fits(interp: Interpreter) -> bool:
        return specifier is None or specifier.contains(interp.version, prereleases=True)

    if spec.options.default_interpreter:
        interp = query_interpreter(spec.options.default_interpreter)
        if interp is None:
            raise InterpreterNotFound(
                f"{spec.plugin_name}: Python {spec.options.default_interpreter!r} (ALLY_PYTHON) "
                "not found or not runnable"
            )
        if _is_python2(interp.version):
            raise InterpreterNotFound(
                f"{spec.plugin_name}: Python {interp.version} at {interp.path} (ALLY_PYTHON): "
                "Python 2 is not supported; point ALLY_PYTHON at a Python 3"
            )
        if not fits(interp):
            raise InterpreterNotFound(
                f"{spec.plugin_name}: Python {interp.version} at {interp.path} (ALLY_PYTHON) "
                f"does not satisfy runtime_version {constraint!r}"
            )
        return interp
    running = _running_interpreter()
    if fits(running):
        return running
    if specifier is not None and _asks_for_python2(specifier):
        raise InterpreterNotFound(
            f"{spec.plugin_name}: runtime_version {constraint!r} asks for Python 2: "
            "Python 2 is not supported"
        )
    seen: list[Interpreter] = []
    for path in candidate_paths():
        interp = query_interpreter(path)
        if interp is not None and interp.realpath not in {i.realpath for i in seen}:
            seen.append(interp)
    from packaging.version import Version

    fitting = sorted(
        (i for i in seen if fits(i) and not _is_python2(i.version)),
        key=lambda i: Version(i.version),
        reverse=True,
    )
    if not fitting and any(fits(i) for i in seen):
        old = next(i for i in seen if fits(i))
        raise InterpreterNotFound(
            f"{spec.plugin_name}: only Python {old.version} at {old.path} satisfies "
            f"runtime_version {constraint!r}: Python 2 is not supported"
        )
    if not fitting:
        seen = [i for i in seen if not _is_python2(i.version)]
        from ...text import version_sorted

        have = ", ".join(version_sorted(i.version for i in [running, *seen])) or "none"
        raise InterpreterNotFound(
            f"{spec.plugin_name}: no Python satisfying runtime_version {constraint!r} found "
            f"(found: {have}); install one or point ALLY_PYTHON at it"
        )
    return fitting[0]
