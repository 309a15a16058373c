"""The default backend: a venv (the stdlib's, in-process, for ally's own base Python; else
``uv venv``) and ``uv pip install``, with one shared cache under ally's cache dir, from which
files are copied, never hardlinked (:data:`LINK_MODE`).

Also where the uv binary is (looked up once), whether uv can be used at all, and the
environment it runs with.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Optional

from ...config import IndexOptions
from ...envs import EnvInfo, EnvSpec, Interpreter
from ...errors import InstallFailed
from ...process import clean_environ, run_installer
from .backend import Backend, Command
from .index import UV_INDEX_VARS, UrlOption, effective_index
from .layout import cache
from .pip_backend import PipBackend
from .pip_seed import write_pip_launcher
from .uv_locate import SYSCONFIG_LOCK, uv_bin

#: How uv puts files from its cache into an env. Not uv's default (``hardlink`` on Linux):
#: an in-place edit of a hardlinked file is an edit of the cache entry, which every later
#: install links again. Not ``clone`` either: uv falls back to hardlinks where the file
#: system has no reflinks (ext4; uv 0.13 logs it at debug level only). ``copy`` costs the
#: install of sympy + mpmath + six 3-10x the time of hardlinks (~0.25-1 s against ~0.1 s, the
#: machine's I/O decides), a whole build 2.4-3.6x, and the env's 29 MB of disk
#: (``benchmarks/cache_safety.py``).
LINK_MODE = ("--link-mode", "copy")


def uv_environ(spec: EnvSpec) -> dict[str, str]:
    """The environment uv runs with: ally's uv cache, the index's certificate, no progress."""
    extra = {"UV_CACHE_DIR": str(cache(spec, "uv"))} if spec.options.cache_dir else {}
    index = effective_index(spec.options.index)
    if index.cert and "SSL_CERT_FILE" not in os.environ:
        extra["SSL_CERT_FILE"] = index.cert
    extra["UV_NO_PROGRESS"] = "1"
    return clean_environ(extra=extra)


def uv_variables(spec: EnvSpec) -> dict[str, str]:
    """Of :func:`uv_environ`, what an installer's own environment gets added (``UV_*`` and
    ``SSL_*``)."""
    return {k: v for k, v in uv_environ(spec).items() if k.startswith(("UV_", "SSL_"))}


class UvBackend(Backend):
    """uv: venvs without pip (a ``bin/pip`` launcher instead), ``uv pip install``."""

    name = "uv"

    def create_venv(self, spec: EnvSpec, interpreter: Interpreter) -> bool:
        if _is_running_base(interpreter):
            _stdlib_venv(spec)
            return False
        argv = [
            uv_bin() or "uv",
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
            env=uv_environ(spec),
            timeout=spec.options.install_timeout,
            what="creating the venv",
        )
        return False

    def pip_launcher(
        self, spec: EnvSpec, interpreter: Interpreter, env_python: Path
    ) -> Optional[dict[str, Any]]:
        # An install_command may run ``python -m pip``, which needs pip as a package.
        if spec.install_command or os.name == "nt":
            return None
        return write_pip_launcher(spec, interpreter, env_python)

    def install_command(
        self,
        spec: EnvSpec,
        env: EnvInfo,
        requirements: Path,
        index: IndexOptions,
        *,
        offline: bool,
        environ: Mapping[str, str],
    ) -> Command:
        index_args, index_vars = self.index_args(index, offline=offline)
        argv = [
            uv_bin() or "uv",
            "pip",
            "install",
            "--python",
            env.commands["python"],
            "--no-config",
            *LINK_MODE,
            "-r",
            str(requirements),
            *(["--upgrade"] if spec.options.upgrade else []),
            *index_args,
        ]
        # uv reads pip's settings through ally (it reads no uv.toml): uv's own index
        # variables in ally's environment are not passed on.
        return argv, {
            **{k: v for k, v in environ.items() if k not in UV_INDEX_VARS},
            **uv_variables(spec),
            **index_vars,
        }

    def wheel_install_command(self, spec: EnvSpec, env_python: Path, wheel: Path) -> Command:
        argv = [
            uv_bin() or "uv",
            "pip",
            "install",
            "--python",
            str(env_python),
            "--no-config",
            *LINK_MODE,
            "--offline",
            "--no-index",
            "--no-deps",
            "--quiet",
            str(wheel),
        ]
        return argv, uv_environ(spec)

    def purge_command(self, names: Sequence[str], environ: Mapping[str, str]) -> Command:
        """How to remove ``names`` from uv's cache, given the environment an install of them
        ran with (``UV_CACHE_DIR`` included): their next install fetches them again."""
        return [uv_bin() or "uv", "cache", "clean", "--no-config", *names], dict(environ)

    def check_command(
        self, spec: EnvSpec, python: str, environ: Mapping[str, str]
    ) -> tuple[str, list[str], dict[str, str]]:
        # uv checks any venv's dependency metadata in milliseconds (with ally's uv cache,
        # which also holds its interpreter info); pip needs ~0.5 s to start.
        argv = [uv_bin() or "uv", "pip", "check", "--python", python, "--no-config"]
        return "uv pip check", argv, {**environ, **uv_variables(spec)}

    def bundle_command(self, spec: EnvSpec, env: EnvInfo, dest: Path, pins: Path) -> Command:
        # uv has no ``pip wheel``: pip collects the wheels, from its wheel, as for pip envs.
        return PipBackend().bundle_command(spec, env, dest, pins)

    def credential_variable(
        self, option: UrlOption, values: tuple[str, ...], merged: IndexOptions
    ) -> tuple[str, str]:
        # uv gets the index whole, which is pip's configuration with ally's laid over it.
        return option.uv_var, option.uv_sep.join(values)

    def index_flags(self, index: IndexOptions, *, offline: bool) -> list[str]:
        args: list[str] = []
        for host in index.trusted_hosts:
            args += ["--allow-insecure-host", host]
        if offline:
            args.append("--offline")
        if index.extra_index_urls and not index.no_index:
            # pip weighs every index for each package; uv by default takes a package from the
            # first index that has it (extra indexes before the main one), so a pin that only
            # the main index satisfies fails. With one index both mean the same.
            args += ["--index-strategy", "unsafe-best-match"]
        return args


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
        with SYSCONFIG_LOCK:
            venv.EnvBuilder(symlinks=os.name != "nt", with_pip=False).create(str(spec.env_dir))
    except (OSError, subprocess.SubprocessError) as exc:
        raise InstallFailed(f"creating the venv failed: {exc}") from exc
