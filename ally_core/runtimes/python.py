"""The built-in Python runtime: the first implementation of :mod:`ally_core.hookspecs`.

It is registered under the name ``python`` with the same :data:`~ally_core.hookimpl` marker a
third-party runtime uses. Two installer backends:

* ``uv`` (default when the ``uv`` binary is available): ``uv venv`` + ``uv pip install``, with
  one shared cache (hardlinks) under ally's cache dir.
* ``pip``: ``virtualenv`` (Python API, app-data seeding) + ``pip install``, sharing pip's cache
  under ally's cache dir.

Either way every env has its own ``pip`` (seeded from a wheel on this machine, never from an
index), so ``<env>/bin/pip`` and an ``install_command``'s ``{pip}`` act on that env.

Heavy imports (virtualenv, packaging) happen inside the functions that need them, so that
``import ally_core`` and warm loads stay cheap.
"""

from __future__ import annotations

import configparser
import functools
import glob
import importlib.util
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import threading
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Optional

from ..__about__ import __version__
from ..config import IndexOptions, strip_credentials
from ..envs import EnvInfo, EnvOptions, EnvSpec, Health, InstallResult, Interpreter, Problem
from ..errors import InstallFailed, InterpreterNotFound
from ..hookspecs import hookimpl
from ..process import clean_environ, run_checks, run_installer
from .python_requirements import (
    Includes,
    dependency_groups,
    pyproject_requirements,
    scan_dependency_file,
    scan_requirement_strings,
)

__all__ = [
    "create_env",
    "env_context",
    "env_identity",
    "health_check",
    "identity_files",
    "install_deps",
    "resolve_interpreter",
    "runtime_names",
]

NAMES = ("python3", "python")
#: The lock an offline bundle carries: ``name==version --hash=sha256:…`` per wheel.
LOCK_NAME = "requirements.lock"
BIN = "Scripts" if os.name == "nt" else "bin"
EXE = "python.exe" if os.name == "nt" else "python"


#: What every env holds besides its packages. 2: its own pip (``bin/pip``). Envs of an older
#: layout are rebuilt once, so that the promise holds for them too.
ENV_LAYOUT = 2


def _serves(spec: EnvSpec) -> bool:
    return spec.runtime in NAMES


@hookimpl
def runtime_names() -> Sequence[str]:
    return list(NAMES)


# ---------------------------------------------------------------------------------------------
# backend selection and identity


#: Serialises the first uses of ``sysconfig`` (not thread-safe) by parallel builds: uv's
#: ``find_uv_bin`` and the stdlib's ``venv.EnvBuilder`` both read it.
_SYSCONFIG_LOCK = threading.Lock()
_UV_BIN: list[Optional[str]] = []


def _uv_bin_cached() -> Optional[str]:
    """The uv binary (the ``uv`` distribution's, else one on PATH), looked up once.

    Under a lock: ``uv.find_uv_bin`` reads ``sysconfig``, whose first use is not thread-safe,
    and parallel builds ask from several threads at once.
    """
    with _SYSCONFIG_LOCK:
        if not _UV_BIN:
            try:
                from uv import find_uv_bin

                _UV_BIN.append(str(find_uv_bin()))
            except (ImportError, OSError, TypeError):
                _UV_BIN.append(shutil.which("uv"))
        return _UV_BIN[0]


@functools.lru_cache(maxsize=1)
def _uv_available() -> bool:
    """Whether uv can be used, without importing it (this runs on the first warm load).

    ``find_spec`` answers from the import system's directory caches, which importing ally
    filled already; listing ``sys.path`` for ``uv-*.dist-info`` would cost a millisecond.
    """
    spec = importlib.util.find_spec("uv")
    # A bare "uv" directory on sys.path (the current one, say) is a namespace package
    # without an origin: not the uv distribution.
    return (spec is not None and spec.origin is not None) or shutil.which("uv") is not None


def backend_for(spec: EnvSpec) -> str:
    """``uv`` or ``pip`` for this spec (raises if ``uv`` is asked for but missing)."""
    choice = spec.options.installer
    if choice == "pip":
        return "pip"
    if not _uv_available():
        if choice == "uv":
            raise InstallFailed(
                "installer 'uv' was requested (ALLY_INSTALLER=uv) but uv is "
                "not installed; pip install uv, or use ALLY_INSTALLER=pip"
            )
        return "pip"
    return "uv"


@hookimpl
def env_identity(spec: EnvSpec) -> Optional[Mapping[str, Any]]:
    if not _serves(spec):
        return None
    backend = backend_for(spec)
    identity: dict[str, Any] = {
        "layout": ENV_LAYOUT,
        # Not the installer's version: an env built by one uv or virtualenv is as good as
        # one built by the next, and upgrading ally-core must not rebuild every env. (Envs
        # built before this rule, whose keys held the version, are rebuilt once.)
        "backend": backend,
        # A bundle installs from its own artifacts only: index settings do not matter then.
        "index": "bundle"
        if spec.options.artifacts_dir
        else _index_identity(effective_index(spec.options.index)),
        "python": spec.options.default_interpreter,
    }
    includes = _includes(spec)
    _refuse_outside(spec, includes)
    if includes.digests:
        # Requirement and constraint files it includes: editing one rebuilds the env.
        identity["includes"] = includes.digests
    if spec.install_command or includes.local:
        # The install reads the plugin's own files: this env belongs to this plugin only.
        identity["plugin_dir"] = str(spec.plugin_dir)
    return identity


@hookimpl
def env_context(runtime: str, options: EnvOptions) -> Optional[Mapping[str, Any]]:
    if runtime not in NAMES:
        return None
    # Everything env_identity reads besides the spec: with the spec's own fields (the
    # install_command, the artifacts dir, the dependency file's bytes) it determines the key.
    return {
        "layout": ENV_LAYOUT,
        "runtime": __version__,
        "installer": options.installer,
        "uv": _uv_available(),
        "index": _index_identity(effective_index(options.index)),
        "python": options.default_interpreter,
    }


@hookimpl
def identity_files(spec: EnvSpec) -> Optional[Sequence[Path]]:
    # Besides the dependency file (which the core watches itself), env_identity reads the
    # files it includes.
    return list(_includes(spec).files) if _serves(spec) else None


@functools.lru_cache(maxsize=16)
def _index_identity(index: IndexOptions) -> Mapping[str, Any]:
    return index.identity()


def _includes(spec: EnvSpec) -> Includes:
    """What the dependency file reads besides itself (see :mod:`.python_requirements`)."""
    dep = spec.dependency_file
    if dep is None or spec.install_command:
        return Includes()
    if dep.name == "pyproject.toml":
        return scan_requirement_strings(_pyproject(spec), dep, spec.plugin_dir)
    _groups(spec)
    return scan_dependency_file(dep, spec.plugin_dir)


def _groups(spec: EnvSpec) -> tuple[str, ...]:
    """``dependencies.groups``: PEP 735 groups to install from ``pyproject.toml``."""
    try:
        groups = dependency_groups(spec.dependency_options)
    except ValueError as exc:
        raise InstallFailed(f"{spec.plugin_name}: plugin.json: {exc}") from None
    dep = spec.dependency_file
    if groups and (dep is None or dep.name != "pyproject.toml"):
        raise InstallFailed(
            f"{spec.plugin_name}: plugin.json: $.dependencies.groups: dependency groups are "
            f"read from a pyproject.toml; the dependency file is "
            f"{dep.name if dep else 'not given'}"
        )
    return groups


def _pyproject(spec: EnvSpec) -> list[str]:
    """The requirement strings of the plugin's ``pyproject.toml`` (raises one line)."""
    dep = spec.dependency_file
    assert dep is not None
    try:
        return pyproject_requirements(dep, _groups(spec))
    except ValueError as exc:
        raise InstallFailed(f"{spec.plugin_name}: {dep.name}: {exc}") from None


def _refuse_outside(spec: EnvSpec, includes: Includes) -> None:
    if includes.problem:
        raise InstallFailed(f"{spec.plugin_name}: {includes.problem}")


# ---------------------------------------------------------------------------------------------
# pip configuration, so that the uv backend honours what pip would


def _pip_config_files(environ: Mapping[str, str]) -> list[Path]:
    override = environ.get("PIP_CONFIG_FILE")
    if override == os.devnull:
        return []
    xdg_dirs = environ.get("XDG_CONFIG_DIRS", "/etc/xdg").split(os.pathsep)
    home = Path(environ.get("HOME", str(Path.home())))
    xdg_home = Path(environ.get("XDG_CONFIG_HOME", str(home / ".config")))
    files = [Path(d) / "pip" / "pip.conf" for d in reversed(xdg_dirs) if d]
    files += [Path("/etc/pip.conf"), home / ".pip" / "pip.conf", xdg_home / "pip" / "pip.conf"]
    if override:
        files.append(Path(override))
    return files


def read_pip_config(environ: Mapping[str, str] | None = None) -> IndexOptions:
    """The index options pip would use: its config files, then ``PIP_*`` variables."""
    environ = os.environ if environ is None else environ
    merged: dict[str, str] = {}
    for path in _pip_config_files(environ):
        parser = configparser.RawConfigParser()
        try:
            parser.read(path, encoding="utf-8")
        except (configparser.Error, OSError, UnicodeDecodeError):
            continue
        for section in ("global", "install"):
            if parser.has_section(section):
                merged.update({k.replace("_", "-"): v for k, v in parser.items(section)})
    for key in (
        "index-url",
        "extra-index-url",
        "find-links",
        "no-index",
        "trusted-host",
        "cert",
        "constraint",
    ):
        var = "PIP_" + key.upper().replace("-", "_")
        if environ.get(var):
            merged[key] = environ[var]

    def words(key: str) -> tuple[str, ...]:
        return tuple(merged.get(key, "").split())

    return IndexOptions(
        index_url=merged.get("index-url") or None,
        extra_index_urls=words("extra-index-url"),
        find_links=words("find-links"),
        no_index=merged.get("no-index", "").lower() in {"1", "true", "yes", "on"},
        trusted_hosts=words("trusted-host"),
        cert=merged.get("cert") or None,
        constraints=words("constraint"),
    )


@functools.lru_cache(maxsize=8)
def _pip_config_cached(
    key: tuple[tuple[str, str], ...], files: tuple[tuple[str, int, int, int], ...]
) -> IndexOptions:
    # ``files`` (the config files' identities) is part of the key so an edit is noticed.
    return read_pip_config(dict(key))


@functools.lru_cache(maxsize=8)
def _pip_config_paths(key: tuple[tuple[str, str], ...]) -> tuple[str, ...]:
    return tuple(str(p) for p in _pip_config_files(dict(key)))


def _file_identities(paths: Sequence[str]) -> tuple[tuple[str, int, int, int], ...]:
    out = []
    for path in paths:
        try:
            st = os.stat(path)
        except OSError:
            continue
        out.append((path, st.st_size, st.st_mtime_ns, st.st_ino))
    return tuple(out)


#: Variables that change what pip's configuration says.
_PIP_CONFIG_VARS = (
    "PIP_CONFIG_FILE",
    "PIP_INDEX_URL",
    "PIP_EXTRA_INDEX_URL",
    "PIP_FIND_LINKS",
    "PIP_NO_INDEX",
    "PIP_TRUSTED_HOST",
    "PIP_CERT",
    "PIP_CONSTRAINT",
    "XDG_CONFIG_DIRS",
    "XDG_CONFIG_HOME",
    "HOME",
)


def effective_index(ally_index: IndexOptions) -> IndexOptions:
    """pip's configuration overlaid with ally's own ``[index]`` settings."""
    values = tuple(map(os.environ.get, _PIP_CONFIG_VARS))
    relevant = tuple((k, v) for k, v in zip(_PIP_CONFIG_VARS, values) if v is not None)
    files = _file_identities(_pip_config_paths(relevant))
    return _effective_index(ally_index, relevant, files)


@functools.lru_cache(maxsize=16)
def _effective_index(
    ally_index: IndexOptions,
    relevant: tuple[tuple[str, str], ...],
    files: tuple[tuple[str, int, int, int], ...],
) -> IndexOptions:
    pip = _pip_config_cached(relevant, files)
    return IndexOptions(
        index_url=ally_index.index_url or pip.index_url,
        extra_index_urls=pip.extra_index_urls + ally_index.extra_index_urls,
        find_links=pip.find_links + ally_index.find_links,
        no_index=ally_index.no_index or pip.no_index,
        trusted_hosts=pip.trusted_hosts + ally_index.trusted_hosts,
        cert=ally_index.cert or pip.cert,
        constraints=pip.constraints + ally_index.constraints,
    )


#: Index options that may hold URLs, thus credentials: (attribute, option, pip's variable,
#: uv's variable, how uv's variable separates several values). pip separates with spaces.
_URL_OPTIONS = (
    ("index_url", "--index-url", "PIP_INDEX_URL", "UV_INDEX_URL", " "),
    ("extra_index_urls", "--extra-index-url", "PIP_EXTRA_INDEX_URL", "UV_EXTRA_INDEX_URL", " "),
    ("find_links", "--find-links", "PIP_FIND_LINKS", "UV_FIND_LINKS", ","),
    ("constraints", "--constraint", "PIP_CONSTRAINT", "UV_CONSTRAINT", " "),
)
#: uv's own index variables in ally's environment: not passed on (uv reads pip's settings
#: through ally, as it reads no uv.toml), so that only what the env's identity holds counts.
_UV_INDEX_VARS = (
    "UV_INDEX_URL",
    "UV_EXTRA_INDEX_URL",
    "UV_DEFAULT_INDEX",
    "UV_INDEX",
    "UV_FIND_LINKS",
    "UV_NO_INDEX",
    "UV_CONSTRAINT",
    "UV_INDEX_STRATEGY",
)


def _has_credentials(value: str) -> bool:
    return bool(strip_credentials(value) != value)


def _index_args(
    index: IndexOptions,
    *,
    backend: str,
    offline: bool,
    merged: Optional[IndexOptions] = None,
) -> tuple[list[str], dict[str, str]]:
    """The installer's index options: (arguments, variables).

    An option whose values hold credentials (``user:password@``) is passed as the installer's
    variable instead of arguments: a process's command line is readable by every user
    (``/proc/PID/cmdline``), its environment only by its owner. pip's variable replaces that
    key of pip's own configuration, so for pip it holds ``merged`` (pip's configuration with
    ``index`` laid over it); uv gets ``index`` whole, which is that already.
    """
    args: list[str] = []
    variables: dict[str, str] = {}
    for attr, option, pip_var, uv_var, uv_sep in _URL_OPTIONS:
        value = getattr(index, attr)
        values: tuple[str, ...] = (value,) if isinstance(value, str) else tuple(value or ())
        if not any(_has_credentials(v) for v in values):
            for v in values:
                args += [option, v]
        elif backend == "uv":
            variables[uv_var] = uv_sep.join(values)
        else:
            full = getattr(merged or index, attr)
            variables[pip_var] = " ".join((full,) if isinstance(full, str) else full)
    if index.no_index:
        args.append("--no-index")
    for host in index.trusted_hosts:
        args += ["--trusted-host" if backend == "pip" else "--allow-insecure-host", host]
    if index.cert and backend == "pip":
        args += ["--cert", index.cert]
    if offline:
        args.append("--offline" if backend == "uv" else "--no-index")
    if backend == "uv" and index.extra_index_urls and not index.no_index:
        # pip weighs every index for each package; uv by default takes a package from the
        # first index that has it (extra indexes before the main one), so a pin that only
        # the main index satisfies fails. With one index both mean the same.
        args += ["--index-strategy", "unsafe-best-match"]
    return args, variables


# ---------------------------------------------------------------------------------------------
# interpreters

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


@hookimpl
def resolve_interpreter(spec: EnvSpec) -> Optional[Interpreter]:
    if not _serves(spec):
        return None
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
        have = ", ".join(sorted({i.version for i in [running, *seen]})) or "none"
        raise InterpreterNotFound(
            f"{spec.plugin_name}: no Python satisfying runtime_version {constraint!r} found "
            f"(found: {have}); install one or point ALLY_PYTHON at it"
        )
    return fitting[0]


# ---------------------------------------------------------------------------------------------
# building


def _env_python(env_dir: Path) -> Path:
    return env_dir / BIN / EXE


def _cache(spec: EnvSpec, name: str) -> Optional[Path]:
    return spec.options.cache_dir / name if spec.options.cache_dir else None


@hookimpl
def create_env(spec: EnvSpec, interpreter: Interpreter) -> Optional[EnvInfo]:
    if not _serves(spec):
        return None
    backend = backend_for(spec)
    spec.progress("create", "Creating virtual environment")
    has_pip = False
    if backend == "uv" and _is_running_base(interpreter):
        _stdlib_venv(spec)
    elif backend == "uv":
        argv = [
            _uv_bin_cached() or "uv",
            "venv",
            "--python",
            interpreter.path,
            "--no-project",
            "--no-config",
            "--quiet",
            str(spec.env_dir),
        ]
        if spec.options.offline:
            argv.insert(2, "--offline")
        run_installer(
            argv,
            cwd=spec.plugin_dir,
            env=_uv_environ(spec),
            timeout=spec.options.install_timeout,
            what="creating the venv",
        )
    else:
        has_pip = _virtualenv(spec, interpreter)
    py = _env_python(spec.env_dir)
    pip_data: dict[str, Any] = {}
    if has_pip:
        pass
    elif backend == "uv" and not spec.install_command and os.name != "nt":
        pip_data = _pip_launcher(spec, interpreter, py)
    else:
        _seed_pip(spec, interpreter, py)
    short = ".".join(interpreter.version.split(".")[:2])
    pip = str(spec.env_dir / BIN / ("pip.exe" if os.name == "nt" else "pip"))
    return EnvInfo(
        path=spec.env_dir,
        interpreter=interpreter,
        bin_dirs=(str(spec.env_dir / BIN),),
        commands={
            "python": str(py),
            "python3": str(py),
            f"python{short}": str(py),
            # Every env has its own pip (the seed's ``<env>/bin/pip list`` check, Code
            # Ally's ``{pip}``): these names never reach a pip outside the env.
            "pip": pip,
            "pip3": pip,
            f"pip{short}": pip,
        },
        env_vars={"VIRTUAL_ENV": str(spec.env_dir)},
        # What the env holds before its dependencies: not reported as installed packages.
        data={"backend": backend, "seeded": installed_packages(spec.env_dir), **pip_data},
    )


def _is_running_base(interpreter: Interpreter) -> bool:
    """Whether ``interpreter`` is the base Python this process runs on.

    Only from 3.11 on, where ``sys._base_executable`` names the base interpreter even inside a
    venv on every platform.
    """
    base = getattr(sys, "_base_executable", None)
    return (
        sys.version_info >= (3, 11)
        and bool(base)
        and os.path.realpath(base) == os.path.realpath(interpreter.path)
    )


def _stdlib_venv(spec: EnvSpec) -> None:
    """Create the venv for this process's own base Python in-process with :mod:`venv`.

    It is the venv ``uv venv`` would make (no pip, symlinked interpreter), without starting
    uv and without uv starting the interpreter to inspect it (~0.1 s of a cold build).
    """
    import venv

    try:
        # One at a time: EnvBuilder reads sysconfig, whose first use is not thread-safe, and
        # parallel builds run in threads. Each creation takes milliseconds.
        with _SYSCONFIG_LOCK:
            venv.EnvBuilder(symlinks=os.name != "nt", with_pip=False).create(str(spec.env_dir))
    except (OSError, subprocess.SubprocessError) as exc:
        raise InstallFailed(f"creating the venv failed: {exc}") from exc


def _virtualenv(spec: EnvSpec, interpreter: Interpreter) -> bool:
    """Create the env with virtualenv; whether virtualenv seeded pip into it.

    virtualenv seeds pip only for the Pythons its embedded wheels support (3.9+ today); for
    older ones the env is created bare and :func:`_seed_pip` gives it a pip.
    """
    from virtualenv import cli_run

    seeds = _embedded_pip(interpreter.version) is not None
    argv = [
        str(spec.env_dir),
        "--python",
        interpreter.path,
        "--no-periodic-update",
        "--quiet",
        "--no-download",
        "--no-setuptools",
    ]
    app_data = _cache(spec, "virtualenv")
    if not seeds:
        argv.append("--no-seed")
    elif app_data is not None:
        # Seed pip as symlinks into virtualenv's app-data, which is compiled once per cache:
        # every later env skips copying pip and compiling ~450 modules on its first run.
        # (Deleting ally's cache breaks those envs' own pip; ally doctor reports it.)
        argv += ["--app-data", str(app_data), "--symlink-app-data"]
    try:
        cli_run(argv, setup_logging=False, env=clean_environ())
    except (SystemExit, Exception) as exc:  # virtualenv reports CLI errors via SystemExit
        raise InstallFailed(
            f"creating the virtualenv for Python {interpreter.version} failed: "
            f"{_without_cli_advice(str(exc))}",
            command=["virtualenv", *argv],
        ) from exc
    return seeds


def _without_cli_advice(message: str) -> str:
    """virtualenv's message without its advice to pass virtualenv flags (ally users cannot)."""
    parts = re.split(r"(?<=[.;:])\s+|\s+-\s+", message.strip())
    kept = [p for p in parts if not re.search(r"(^|\s)--?[a-z]", p)]
    return " ".join(kept).strip(" -;") or message.strip().splitlines()[0]


# ---------------------------------------------------------------------------------------------
# pip inside every env


@functools.lru_cache(maxsize=32)
def _embedded_pip(version: str) -> Optional[Path]:
    """The newest pip wheel embedded in virtualenv that supports Python ``version``.

    Read from the wheels' metadata (``Requires-Python``) instead of importing virtualenv
    (~0.1 s), which the uv backend does not otherwise need.
    """
    import zipfile

    from packaging.specifiers import InvalidSpecifier, SpecifierSet
    from packaging.version import InvalidVersion, Version

    spec = importlib.util.find_spec("virtualenv")
    if spec is None or not spec.submodule_search_locations:
        return None
    best: Optional[tuple[Version, Path]] = None
    for root in spec.submodule_search_locations:
        for wheel in Path(root, "seed", "wheels", "embed").glob("pip-*.whl"):
            try:
                wheel_version = Version(wheel.name.split("-")[1])
                with zipfile.ZipFile(wheel) as zf:
                    meta = next(n for n in zf.namelist() if n.endswith(".dist-info/METADATA"))
                    text = zf.read(meta).decode("utf-8", "replace")
            except (OSError, StopIteration, InvalidVersion, zipfile.BadZipFile):
                continue
            found = re.search(r"^Requires-Python:\s*(.+)$", text, re.MULTILINE)
            try:
                fits = found is None or SpecifierSet(found.group(1).strip()).contains(version)
            except InvalidSpecifier:
                fits = False
            if fits and (best is None or wheel_version > best[0]):
                best = (wheel_version, wheel)
    return best[1] if best else None


#: Asks an interpreter where its ensurepip keeps the pip wheel (Python 3.6+, also Debian's
#: patched ensurepip that reads /usr/share/python-wheels).
_ENSUREPIP_QUERY = (
    "import glob, os, ensurepip\n"
    "dirs = [os.path.join(os.path.dirname(ensurepip.__file__), '_bundled'),\n"
    "        getattr(ensurepip, '_WHEEL_PKG_DIR', None) or '']\n"
    "for d in dirs:\n"
    "    for p in sorted(glob.glob(os.path.join(d, 'pip-*.whl'))) if d else ():\n"
    "        print(p)\n"
)


def _ensurepip_wheel(env_python: Path) -> Optional[Path]:
    """The pip wheel the interpreter's own ``ensurepip`` would install, if it has one."""
    try:
        out = subprocess.run(
            [str(env_python), "-I", "-c", _ENSUREPIP_QUERY],
            capture_output=True,
            text=True,
            timeout=60,
            env=clean_environ(),
            check=True,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    from packaging.version import InvalidVersion, Version

    def version(path: str) -> Version:
        try:
            return Version(os.path.basename(path).split("-")[1])
        except (IndexError, InvalidVersion):
            return Version("0")

    wheels = [line for line in out.splitlines() if line.endswith(".whl")]
    return Path(max(wheels, key=version)) if wheels else None


def _pip_wheel(spec: EnvSpec, interpreter: Interpreter, env_python: Path) -> Path:
    wheel = _embedded_pip(interpreter.version) or _ensurepip_wheel(env_python)
    if wheel is None:
        raise InstallFailed(
            f"{spec.plugin_name}: no pip for Python {interpreter.version} at "
            f"{interpreter.path}: ally's virtualenv has no pip wheel for it and it has no "
            "ensurepip; use another Python (ALLY_PYTHON or runtime_version)"
        )
    return wheel


#: Where a uv env keeps the pip wheel its ``bin/pip`` launcher runs.
PIP_WHEEL_DIR = "ally-pip"

_LAUNCHER = """#!/bin/sh
# This env's pip, written by ally: pip's own code, run from the wheel beside this env by the
# env's python, so it lists and changes this env (and reads pip's configuration as pip does).
exec {python} {wheel}/pip "$@"
"""


def _pip_launcher(spec: EnvSpec, interpreter: Interpreter, env_python: Path) -> dict[str, Any]:
    """Give a uv env ``bin/pip``: a launcher running pip from a wheel kept in the env.

    Measured against installing pip into every env (uv, from the same local wheel): the
    launcher adds ~1 ms and no disk (the wheel is hardlinked from ally's cache) to a build,
    where installing pip adds 0.07-0.3 s (cold cache 0.12-0.3 s) and ~1000 files; pip runs
    ~0.3 s slower from a wheel, which only its rare direct uses pay. It depends on nothing
    but the env's own python and the wheel inside the env: upgrading ally, uv or virtualenv,
    or deleting ally's cache, does not break it. The deep check verifies the wheel's hash.
    """
    import hashlib
    import shlex

    source = _pip_wheel(spec, interpreter, env_python)
    target_dir = spec.env_dir / PIP_WHEEL_DIR
    target_dir.mkdir()
    target = target_dir / source.name
    shared = _cache(spec, "python-seed")
    try:
        if shared is not None:
            # One copy per cache (hardlinked into each env), made atomically: builds run
            # in parallel. A cross-device home falls back to a plain copy below.
            shared.mkdir(parents=True, exist_ok=True)
            cached = shared / source.name
            if not cached.is_file():
                tmp = shared / f".{source.name}.{os.getpid()}.{threading.get_ident()}.tmp"
                shutil.copyfile(source, tmp)
                os.replace(tmp, cached)
            try:
                os.link(cached, target)
            except OSError:
                shutil.copyfile(cached, target)
        else:
            shutil.copyfile(source, target)
        digest = hashlib.sha256(target.read_bytes()).hexdigest()
        text = _LAUNCHER.format(python=shlex.quote(str(env_python)), wheel=shlex.quote(str(target)))
        short = ".".join(interpreter.version.split(".")[:2])
        for name in ("pip", "pip3", f"pip{short}"):
            script = spec.env_dir / BIN / name
            script.write_text(text, "utf-8")
            script.chmod(0o755)
    except OSError as exc:
        raise InstallFailed(f"{spec.plugin_name}: writing the env's pip failed: {exc}") from exc
    return {"pip_wheel": str(target), "pip_wheel_sha256": digest}


def _check_pip_launcher(env: EnvInfo) -> Optional[Problem]:
    import hashlib

    wheel = env.data.get("pip_wheel")
    if not wheel:
        return None
    try:
        digest = hashlib.sha256(Path(wheel).read_bytes()).hexdigest()
    except OSError:
        return Problem(f"the env's pip is broken: {wheel} is missing")
    if digest != env.data.get("pip_wheel_sha256"):
        return Problem(f"the env's pip is broken: {wheel} was modified")
    pip = env.commands.get("pip", "")
    try:
        launcher = Path(pip).read_text("utf-8", errors="replace")
    except OSError:
        return None  # a missing bin/pip is reported by the caller
    if wheel not in launcher:
        return Problem(f"the env's pip is broken: {pip} no longer runs {wheel}")
    return None


def _seed_pip(spec: EnvSpec, interpreter: Interpreter, env_python: Path) -> None:
    """Install pip into the env from a wheel on this machine (never from an index).

    The wheel virtualenv embeds for this Python, else the one the interpreter's own
    ``ensurepip`` ships (Python 3.6-3.8, which current virtualenv releases no longer seed).
    uv installs it in ~0.07 s (hardlinked from its cache); without uv, pip installs itself
    from its own wheel. Used where the env's own commands need pip as a package
    (``install_command`` may run ``python -m pip``) and where virtualenv seeds none.
    """
    wheel = _pip_wheel(spec, interpreter, env_python)
    uv = _uv_bin_cached() if _uv_available() else None
    if uv is not None:
        argv = [
            uv,
            "pip",
            "install",
            "--python",
            str(env_python),
            "--no-config",
            "--offline",
            "--no-index",
            "--no-deps",
            "--quiet",
            str(wheel),
        ]
        environ = _uv_environ(spec)
    else:
        argv = [
            str(env_python),
            str(wheel / "pip"),
            "install",
            "--isolated",
            "--no-index",
            "--no-deps",
            "--no-compile",
            "--disable-pip-version-check",
            "--no-input",
            "--quiet",
            str(wheel),
        ]
        environ = clean_environ()
    spec.run(argv, env=environ, what=f"installing pip {wheel.name.split('-')[1]} into the env")


def _uv_environ(spec: EnvSpec) -> dict[str, str]:
    extra = {"UV_CACHE_DIR": str(_cache(spec, "uv"))} if spec.options.cache_dir else {}
    index = effective_index(spec.options.index)
    if index.cert and "SSL_CERT_FILE" not in os.environ:
        extra["SSL_CERT_FILE"] = index.cert
    extra["UV_NO_PROGRESS"] = "1"
    return clean_environ(extra=extra)


def _requirements_file(spec: EnvSpec) -> Path:
    """The dependency file as a requirements file (``pyproject.toml`` is translated)."""
    dep = spec.dependency_file
    assert dep is not None
    if dep.name != "pyproject.toml":
        return dep
    deps = _pyproject(spec)
    _refuse_outside(spec, scan_requirement_strings(deps, dep, spec.plugin_dir))
    out = spec.env_dir / "ally-requirements.txt"
    # 0600: never copy what may be a private file's content into a file others can read.
    fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        fh.write("\n".join(deps) + "\n")
    return out


@hookimpl
def install_deps(spec: EnvSpec, env: EnvInfo) -> Optional[InstallResult]:
    if not _serves(spec):
        return None
    py = env.commands["python"]
    environ = clean_environ(path_prefix=env.bin_dirs, extra=dict(env.env_vars))
    if spec.install_command:
        # Code Ally's placeholder: ``{pip}`` is this env's own pip (every env has one).
        pip = env.commands.get("pip") or str(Path(env.bin_dirs[0], "pip"))
        argv = [word.replace("{pip}", pip) for word in spec.install_command]
        argv[0] = env.commands.get(argv[0]) or _in_env(env, argv[0]) or argv[0]
        shown = strip_credentials(" ".join(spec.install_command))
        spec.progress("install", f"Running {shown}")
        spec.run(argv, env=environ, what="install_command")
        return InstallResult(packages=dependency_packages(env), command=tuple(argv))
    if spec.dependency_file is None:
        return InstallResult()
    backend = env.data.get("backend", "pip")
    index = effective_index(spec.options.index)
    offline = spec.options.offline
    artifacts = spec.options.artifacts_dir
    if artifacts is not None and (artifacts / LOCK_NAME).is_file():
        # From an offline bundle: exactly the locked wheels, hashes checked, no index at all.
        requirements = artifacts / LOCK_NAME
        index = IndexOptions(find_links=(str(artifacts),), no_index=True)
        offline = True
        spec.progress("install", f"Installing packages from the bundle ({LOCK_NAME})")
    else:
        _refuse_outside(spec, _includes(spec))
        requirements = _requirements_file(spec)
        spec.progress("install", f"Installing packages from {spec.dependency_file.name}")
    upgrade = ["--upgrade"] if spec.options.upgrade else []
    if backend == "uv":
        index_args, index_vars = _index_args(index, backend="uv", offline=offline)
        argv = [
            _uv_bin_cached() or "uv",
            "pip",
            "install",
            "--python",
            py,
            "--no-config",
            "-r",
            str(requirements),
            *upgrade,
            *index_args,
        ]
        environ = {
            **{k: v for k, v in environ.items() if k not in _UV_INDEX_VARS},
            **{k: v for k, v in _uv_environ(spec).items() if k.startswith(("UV_", "SSL_"))},
            **index_vars,
        }
    else:
        # pip reads its own config; only ally's [index] settings are added here.
        index_args, index_vars = _index_args(
            index if artifacts else spec.options.index,
            backend="pip",
            offline=offline,
            merged=index,
        )
        environ = {**environ, **index_vars}
        argv = [
            py,
            "-m",
            "pip",
            "install",
            "--disable-pip-version-check",
            "--no-input",
            # Like uv: modules compile on first import instead of all of them at install
            # time (pip's compile step is most of a big install's time).
            "--no-compile",
            "-r",
            str(requirements),
            *upgrade,
            *index_args,
        ]
        pip_cache = _cache(spec, "pip")
        if pip_cache is not None:
            argv += ["--cache-dir", str(pip_cache)]
    what = f"installing {requirements.name}"
    if offline and artifacts is None:
        what += " offline (no index: only the cache and find-links)"
    spec.run(argv, env=environ, what=what)
    return InstallResult(packages=dependency_packages(env), command=tuple(argv))


def _in_env(env: EnvInfo, name: str) -> Optional[str]:
    if os.sep in name:
        return None
    for directory in env.bin_dirs:
        path = os.path.join(directory, name)
        if os.path.isfile(path):
            return path
    return None


def _dist_infos(env_dir: Path) -> list[str]:
    """The ``*.dist-info`` dirs of the env's site-packages, each once.

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
            found += sorted(glob.glob(os.path.join(site, "*.dist-info")))
    return found


def installed_packages(env_dir: Path) -> dict[str, str]:
    """Name -> version of the distributions in the env, read from ``*.dist-info`` (no process)."""
    packages = {}
    for path in _dist_infos(env_dir):
        stem = os.path.basename(path)[: -len(".dist-info")]
        name, _, version = stem.partition("-")
        packages[name.lower().replace("_", "-")] = version
    return dict(sorted(packages.items()))


def dependency_packages(env: EnvInfo, *, for_bundle: bool = False) -> dict[str, str]:
    """The packages an install reports: the uv backend leaves out the pip it seeded.

    The pip backend's env is "virtualenv + pip", and its pip has always been listed; a
    bundle leaves it out on both backends (pip is seeded again from a local wheel on install).
    """
    seeded: Mapping[str, str] = env.data.get("seeded") or {"pip": "*"}
    packages = installed_packages(env.path)
    if env.data.get("backend") == "pip" and not for_bundle:
        return packages
    return {n: v for n, v in packages.items() if seeded.get(n) not in (v, "*")}


def verify_records(env_dir: Path) -> list[str]:
    """Files that a distribution's ``RECORD`` lists with a hash but that are gone or resized.

    Read in this process (no interpreter start, ~0.1 s less per build): ``RECORD`` paths are
    relative to site-packages; ``pip check`` compares metadata only.
    """
    import csv

    bad: list[str] = []
    for dist_info in _dist_infos(env_dir):
        site = os.path.dirname(dist_info)
        name = os.path.basename(dist_info).partition("-")[0]
        try:
            with open(os.path.join(dist_info, "RECORD"), encoding="utf-8", newline="") as fh:
                rows = list(csv.reader(fh))
        except FileNotFoundError:
            continue  # no RECORD: nothing recorded to verify
        except (OSError, UnicodeDecodeError, csv.Error) as exc:
            bad.append(f"{name}: RECORD unreadable ({exc})")
            continue
        for row in rows:
            if len(row) < 3 or not row[1]:
                continue  # RECORD itself, .pyc files: listed without a hash
            try:
                size = os.stat(os.path.join(site, row[0])).st_size
            except OSError:
                bad.append(f"{name}: {row[0]} is missing")
                continue
            if row[2].isdigit() and int(row[2]) != size:
                bad.append(f"{name}: {row[0]} was modified")
    return bad


@hookimpl
def health_check(spec: EnvSpec, env: EnvInfo, deep: bool) -> Optional[Health]:
    if not _serves(spec):
        return None
    py = env.commands.get("python", "")
    # exists() follows the venv's symlink to the base interpreter, so this also notices a
    # deleted base Python without starting a process.
    if not py or not os.path.exists(py):
        return Health((Problem(f"env python {py or '?'} is missing or its base was removed"),))
    if not os.path.isfile(f"{spec.env_dir}{os.sep}pyvenv.cfg"):
        return Health((Problem("pyvenv.cfg is missing"),))
    if not deep:
        return Health()
    environ = clean_environ(path_prefix=env.bin_dirs, extra=dict(env.env_vars))
    uv = _uv_bin_cached() if _uv_available() else None
    if uv is not None:
        # uv checks any venv's dependency metadata in milliseconds (with ally's uv cache,
        # which also holds its interpreter info); pip needs ~0.5 s to start.
        uv_env = {k: v for k, v in _uv_environ(spec).items() if k.startswith(("UV_", "SSL_"))}
        argv = [uv, "pip", "check", "--python", py, "--no-config"]
        check = ("uv pip check", argv, {**environ, **uv_env})
    else:
        argv = [py, "-m", "pip", "check", "--disable-pip-version-check"]
        check = ("pip check", argv, environ)
    # The dependency check runs while this thread verifies the installed files.
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="ally-check") as pool:
        checks = [("env python", [py, "-c", "import encodings, site"], environ), check]
        pending = pool.submit(run_checks, checks, cwd=spec.env_dir)
        missing = verify_records(spec.env_dir)
        metadata = pending.result()
    problems: tuple[Problem, ...] = (
        (Problem("installed files: " + " | ".join(missing[:5])),) if missing else ()
    )
    pip = env.commands.get("pip")
    if pip and not os.path.exists(pip):  # (envs built before every env had pip have no entry)
        problems += (Problem(f"{pip} is missing (every env has its own pip)"),)
    launcher = _check_pip_launcher(env)
    if launcher is not None:
        problems += (launcher,)
    return Health(problems + metadata.problems)


# ---------------------------------------------------------------------------------------------
# offline bundles


def _pip_runner(spec: EnvSpec, env: EnvInfo) -> list[str]:
    """How to run a pip that works offline with the env's interpreter: pip from its wheel."""
    wheel = env.data.get("pip_wheel")
    if not wheel or not os.path.isfile(wheel):
        wheel = str(_pip_wheel(spec, env.interpreter, Path(env.commands["python"])))
    return [str(Path(wheel, "pip"))]


@hookimpl
def bundle_artifacts(spec: EnvSpec, env: EnvInfo, dest: Path) -> Optional[Mapping[str, Any]]:
    if not _serves(spec):
        return None
    import hashlib

    packages = dependency_packages(env, for_bundle=True)
    lines = [f"{name}=={version}" for name, version in packages.items()]
    if lines:
        pins = dest / "pins.txt"
        pins.write_text("\n".join(lines) + "\n", "utf-8")
        spec.progress("bundle", f"Collecting {len(lines)} wheel(s)")
        index_args, index_vars = _index_args(
            spec.options.index,
            backend="pip",
            offline=spec.options.offline,
            merged=effective_index(spec.options.index),
        )
        argv = [
            env.commands["python"],
            *_pip_runner(spec, env),
            "wheel",
            "--no-deps",
            "--disable-pip-version-check",
            "--no-input",
            "-w",
            str(dest),
            "-r",
            str(pins),
            *index_args,
        ]
        pip_cache = _cache(spec, "pip")
        if pip_cache is not None:
            argv += ["--cache-dir", str(pip_cache)]
        spec.run(argv, env=clean_environ(extra=index_vars), what="collecting wheels")
        pins.unlink()
    locked = []
    for wheel in sorted(dest.glob("*.whl")):
        name, version = wheel.name.split("-")[:2]
        digest = hashlib.sha256(wheel.read_bytes()).hexdigest()
        locked.append(
            {
                "name": name.lower().replace("_", "-"),
                "version": version,
                "file": wheel.name,
                "sha256": digest,
            }
        )
    (dest / LOCK_NAME).write_text(
        "".join(f"{p['name']}=={p['version']} --hash=sha256:{p['sha256']}\n" for p in locked),
        "utf-8",
    )
    return {"format": "python-wheels", "python": env.interpreter.version, "packages": locked}
