"""The fallback backend (``ALLY_INSTALLER=pip``, or no uv): ``virtualenv`` (Python API,
app-data seeding) and ``pip install``, sharing pip's cache under ally's cache dir."""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path

from ...config import IndexOptions
from ...envs import EnvInfo, EnvSpec, Interpreter
from ...errors import InstallFailed
from ...process import clean_environ
from .backend import Backend, Command
from .index import UrlOption, effective_index
from .layout import cache
from .pip_seed import embedded_pip, pip_wheel


class PipBackend(Backend):
    """virtualenv + pip: pip seeded by virtualenv (symlinked from its app-data), pip installs."""

    name = "pip"
    # The env is "virtualenv + pip": its pip has always been listed with its packages.
    lists_seeded_pip = True

    def create_venv(self, spec: EnvSpec, interpreter: Interpreter) -> bool:
        """Create the env with virtualenv; whether virtualenv seeded pip into it.

        virtualenv seeds pip only for the Pythons its embedded wheels support (3.9+ today);
        for older ones the env is created bare and pip is installed from a local wheel.
        """
        from virtualenv import cli_run

        seeds = embedded_pip(interpreter.version) is not None
        argv = [
            str(spec.env_dir),
            "--python",
            interpreter.path,
            "--no-periodic-update",
            "--quiet",
            "--no-download",
            "--no-setuptools",
        ]
        app_data = cache(spec, "virtualenv")
        if not seeds:
            argv.append("--no-seed")
        elif app_data is not None:
            # Seed pip as symlinks into virtualenv's app-data, which is compiled once per
            # cache: every later env skips copying pip and compiling ~450 modules on its
            # first run. (Deleting ally's cache breaks those envs' own pip; ally doctor
            # reports it.)
            argv += ["--app-data", str(app_data), "--symlink-app-data"]
        try:
            cli_run(argv, setup_logging=False, env=clean_environ())
        except (SystemExit, Exception) as exc:  # virtualenv reports CLI errors via SystemExit
            raise InstallFailed(
                f"creating the virtualenv for Python {interpreter.version} failed: "
                f"{without_cli_advice(str(exc))}",
                command=["virtualenv", *argv],
            ) from exc
        return seeds

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
        # pip reads its own config; only ally's [index] settings are added here (all of the
        # index for a bundle's install).
        own = index if spec.options.artifacts_dir is not None else spec.options.index
        index_args, index_vars = self.index_args(own, offline=offline, merged=index)
        argv = [
            env.commands["python"],
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
            *(["--upgrade"] if spec.options.upgrade else []),
            *index_args,
        ]
        return argv + self._cache_args(spec), {**environ, **index_vars}

    def wheel_install_command(self, spec: EnvSpec, env_python: Path, wheel: Path) -> Command:
        # pip installs itself from its own wheel.
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
        return argv, clean_environ()

    def check_command(
        self, spec: EnvSpec, python: str, environ: Mapping[str, str]
    ) -> tuple[str, list[str], dict[str, str]]:
        argv = [python, "-m", "pip", "check", "--disable-pip-version-check"]
        return "pip check", argv, dict(environ)

    def bundle_command(self, spec: EnvSpec, env: EnvInfo, dest: Path, pins: Path) -> Command:
        index_args, index_vars = self.index_args(
            spec.options.index,
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
        return argv + self._cache_args(spec), clean_environ(extra=index_vars)

    def credential_variable(
        self, option: UrlOption, values: tuple[str, ...], merged: IndexOptions
    ) -> tuple[str, str]:
        # pip's variable replaces that key of pip's own configuration: it holds all of it.
        return option.pip_var, " ".join(option.values(merged))

    def index_flags(self, index: IndexOptions, *, offline: bool) -> list[str]:
        args: list[str] = []
        for host in index.trusted_hosts:
            args += ["--trusted-host", host]
        if index.cert:
            args += ["--cert", index.cert]
        if offline:
            args.append("--no-index")
        return args

    @staticmethod
    def _cache_args(spec: EnvSpec) -> list[str]:
        pip_cache = cache(spec, "pip")
        return ["--cache-dir", str(pip_cache)] if pip_cache is not None else []


def _pip_runner(spec: EnvSpec, env: EnvInfo) -> list[str]:
    """How to run a pip that works offline with the env's interpreter: pip from its wheel."""
    wheel = env.data.get("pip_wheel")
    if not wheel or not os.path.isfile(wheel):
        wheel = str(pip_wheel(spec, env.interpreter, Path(env.commands["python"])))
    return [str(Path(wheel, "pip"))]


def without_cli_advice(message: str) -> str:
    """virtualenv's message without its advice to pass virtualenv flags (ally users cannot)."""
    parts = re.split(r"(?<=[.;:])\s+|\s+-\s+", message.strip())
    kept = [p for p in parts if not re.search(r"(^|\s)--?[a-z]", p)]
    return " ".join(kept).strip(" -;") or message.strip().splitlines()[0]
