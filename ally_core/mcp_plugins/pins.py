"""Pinning a package runner's packages: resolved once, built from the lock, resolved again by
``ally update``.

``uvx`` packages are compiled with ``uv pip compile`` for the interpreter the env is built
with; ``npx`` packages are locked by ``npm install --package-lock-only`` in a scratch env the
node runtime makes with its own hooks (its node, npm, registry settings and cache), and the
declared ranges and tags become the exact versions chosen. A lock is kept in
``<envs_dir>/.mcp/<plugin>+<server>/<digest>/`` and named by ``pins.json``, which is written
only once an env was built from it: a failed update leaves the previous pins in use.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import attrs

from ..envs import EnvSpec, ProgressEvent
from ..errors import InstallFailed
from ..store import now_iso, store_errors, write_atomic
from .discovery import PINS, ServerRef, state_dir
from .launchers import Launcher
from .specs import PINS_FORMAT, ProgressCallback, make_spec

if TYPE_CHECKING:
    from ..host import Host

__all__ = ["resolve", "write_pins"]


def _base_spec(host: Host, ref: ServerRef, launcher: Launcher, work: Path, **kw: Any) -> EnvSpec:
    return make_spec(host, ref, launcher, plugin_dir=work, dependency_file=None, **kw)


def resolve(
    host: Host, ref: ServerRef, launcher: Launcher, *, upgrade: bool, progress: ProgressCallback
) -> dict[str, Any]:
    """Resolve a package runner's packages to a lock; return the pins naming it (not yet
    recorded: they are recorded once an env was built from them)."""
    state = state_dir(host, ref)
    with store_errors(f"cannot write {state}"):
        state.mkdir(parents=True, exist_ok=True)
    work = Path(_mkdtemp(state, ".resolve-"))
    try:
        shown = " ".join(launcher.packages)
        progress(ProgressEvent(ref.label, "resolve", f"Resolving {shown}"))
        if launcher.runtime == "python":
            files = {
                "requirements.txt": _compile_python(host, ref, launcher, work, upgrade, progress)
            }
        else:
            files = _lock_node(host, ref, launcher, work, upgrade, progress)
        digest = hashlib.sha256(
            b"\0".join(name.encode() + b"\0" + data for name, data in sorted(files.items()))
        ).hexdigest()[:16]
        target = state / digest
        if not target.is_dir():
            staged = work / "lock"
            staged.mkdir()
            for name, data in files.items():
                (staged / name).write_bytes(data)
            with contextlib.suppress(OSError):  # another process published the same lock
                os.rename(staged, target)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return {
        "format": PINS_FORMAT,
        "declared": launcher.declared_digest(),
        "packages": list(launcher.packages),
        "lock": digest,
        "resolved_at": now_iso(),
    }


def _mkdtemp(parent: Path, prefix: str) -> str:
    import tempfile

    return tempfile.mkdtemp(prefix=prefix, dir=parent)


def _compile_python(
    host: Host,
    ref: ServerRef,
    launcher: Launcher,
    work: Path,
    upgrade: bool,
    progress: ProgressCallback,
) -> bytes:
    """``uv pip compile`` of the requirements for the interpreter the env will be built with."""
    from ..process import run_installer
    from ..runtimes.python.index import UV_INDEX_VARS, effective_index
    from ..runtimes.python.uv_backend import UvBackend, uv_environ
    from ..runtimes.python.uv_locate import uv_bin

    spec = _base_spec(host, ref, launcher, work, progress=progress)
    interpreter = host.hook.resolve_interpreter(spec=spec)
    uv = uv_bin()
    if interpreter is None or uv is None:
        raise InstallFailed(f"{ref.label}: pinning uvx packages needs uv and a Python")
    (work / "requirements.in").write_text("\n".join(launcher.packages) + "\n", "utf-8")
    options = spec.options
    # As the Python runtime's own uv install: its index options (credentials as variables,
    # never on the command line), none of the host's UV_* index variables.
    index_args, index_vars = UvBackend().index_args(
        effective_index(options.index), offline=options.offline
    )
    argv = [
        uv,
        "pip",
        "compile",
        "requirements.in",
        "--python",
        interpreter.path,
        "--no-config",
        "--no-header",
        "--no-annotate",
        "--quiet",
        *(["--upgrade", "--refresh"] if upgrade else []),
        *index_args,
    ]
    environ = {
        **{k: v for k, v in uv_environ(spec).items() if k not in UV_INDEX_VARS},
        **index_vars,
    }
    out = run_installer(
        argv,
        cwd=work,
        env=environ,
        timeout=options.install_timeout,
        on_line=lambda line: progress(ProgressEvent(ref.label, "output", line)),
        what=f"{ref.label}: resolving {' '.join(launcher.packages)}",
    )
    pins = [line.strip() for line in out.splitlines() if line.strip() and not line.startswith("#")]
    return ("\n".join(pins) + "\n").encode()


def _lock_node(
    host: Host,
    ref: ServerRef,
    launcher: Launcher,
    work: Path,
    upgrade: bool,
    progress: ProgressCallback,
) -> dict[str, bytes]:
    """``npm install --package-lock-only`` in a scratch env made by the node runtime's own
    hooks (its node, npm, registry settings and cache)."""
    from .launchers import npm_spec

    dependencies = {}
    for package in launcher.packages:
        parsed = npm_spec(package)
        assert parsed is not None
        dependencies[parsed[0]] = parsed[1]
    package_json = _package_json(dependencies)
    (work / "package.json").write_bytes(package_json)
    options = host.env_options()
    command = [
        "npm",
        "install",
        "--package-lock-only",
        "--ignore-scripts",
        "--no-audit",
        "--no-fund",
        "--global=false",
        "--offline" if options.offline else "--prefer-online" if upgrade else "--prefer-offline",
    ]
    spec = attrs.evolve(
        _base_spec(host, ref, launcher, work, progress=progress),
        env_dir=work / "env",
        dependency_file=work / "package.json",
        install_command=tuple(command),
    )
    interpreter = host.hook.resolve_interpreter(spec=spec)
    env = host.hook.create_env(spec=spec, interpreter=interpreter) if interpreter else None
    if env is None:
        raise InstallFailed(
            f"{ref.label}: no runtime serves 'node' (pip install ally-runtime-node)"
        )
    host.hook.install_deps(spec=spec, env=env)
    try:
        lock = json.loads((work / "env" / "package-lock.json").read_bytes())
        # The declared ranges and tags ("latest") become the versions npm chose, in the
        # package.json and in the lock's root alike: a later npm ci (a repair, a bundle
        # install offline) then has nothing left to look up.
        exact = {name: lock["packages"][f"node_modules/{name}"]["version"] for name in dependencies}
        lock["packages"][""]["dependencies"] = exact
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise InstallFailed(f"{ref.label}: npm wrote no usable package-lock.json ({exc})") from exc
    return {
        "package.json": _package_json(exact),
        "package-lock.json": (json.dumps(lock, indent=2) + "\n").encode(),
    }


def _package_json(dependencies: Mapping[str, str]) -> bytes:
    data = {
        "name": "ally-mcp-server",
        "version": "0.0.0",
        "private": True,
        "dependencies": dict(dependencies),
    }
    return (json.dumps(data, indent=2, sort_keys=True) + "\n").encode()


def write_pins(host: Host, ref: ServerRef, pins: Mapping[str, Any]) -> None:
    path = state_dir(host, ref) / PINS
    with store_errors(f"cannot write {path}"):
        write_atomic(path, (json.dumps(pins, indent=2, sort_keys=True) + "\n").encode())
