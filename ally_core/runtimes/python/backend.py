"""What an installer backend does for the Python runtime: the interface the hook
implementations use, so that they never ask which installer they have.

Two implement it: :class:`~.uv_backend.UvBackend` (the default) and
:class:`~.pip_backend.PipBackend` (virtualenv + pip); :mod:`.installers` picks one.
"""

from __future__ import annotations

import abc
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar, Optional

from ...config import IndexOptions
from ...envs import EnvInfo, EnvSpec, Interpreter
from .index import URL_OPTIONS, UrlOption, has_credentials

#: An installer's command line and the environment it runs with.
Command = tuple[list[str], dict[str, str]]


class Backend(abc.ABC):
    """One way to create a venv, give it pip, install into it and check it."""

    #: The backend's name: ``ALLY_INSTALLER``'s value, kept in the env's identity and data.
    name: ClassVar[str]
    #: Whether the packages an install reports include the pip the venv was seeded with.
    lists_seeded_pip: ClassVar[bool] = False

    def identity(self) -> str:
        """What of the backend goes into an env's identity: its name, not its version (an env
        built by one uv or virtualenv is as good as one built by the next, and upgrading
        ally-core must not rebuild every env)."""
        return self.name

    # -- building ------------------------------------------------------------------------

    @abc.abstractmethod
    def create_venv(self, spec: EnvSpec, interpreter: Interpreter) -> bool:
        """Create the venv at ``spec.env_dir`` for ``interpreter``; whether it holds pip."""

    def pip_launcher(
        self, spec: EnvSpec, interpreter: Interpreter, env_python: Path
    ) -> Optional[dict[str, Any]]:
        """For a venv without pip: give it a ``bin/pip`` without installing pip, and return
        what the env's data records of it; ``None`` when pip is to be installed instead."""
        return None

    @abc.abstractmethod
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
        """How to install ``requirements`` into ``env`` from ``index`` (the effective one),
        given the tool environment ``environ``."""

    @abc.abstractmethod
    def wheel_install_command(self, spec: EnvSpec, env_python: Path, wheel: Path) -> Command:
        """How to install the local ``wheel`` (pip's) into the env, without any index."""

    def purge_command(self, names: Sequence[str], environ: Mapping[str, str]) -> Optional[Command]:
        """How to remove ``names`` from the installer's cache, given the environment their
        install ran with; ``None`` when the installer keeps nothing an env's files share
        (pip extracts fresh copies from wheels, and writes ``RECORD`` from what it wrote)."""
        return None

    @abc.abstractmethod
    def check_command(
        self, spec: EnvSpec, python: str, environ: Mapping[str, str]
    ) -> tuple[str, list[str], dict[str, str]]:
        """The dependency check of the env whose interpreter is ``python``: (what, argv, env)."""

    @abc.abstractmethod
    def bundle_command(self, spec: EnvSpec, env: EnvInfo, dest: Path, pins: Path) -> Command:
        """How to collect the wheels pinned in ``pins`` into ``dest`` (an offline bundle)."""

    # -- index options -------------------------------------------------------------------

    def index_args(
        self, index: IndexOptions, *, offline: bool, merged: Optional[IndexOptions] = None
    ) -> Command:
        """The installer's index options: (arguments, variables).

        An option whose values hold credentials (``user:password@``) is passed as the
        installer's variable instead of arguments: a process's command line is readable by
        every user (``/proc/PID/cmdline``), its environment only by its owner (see
        :meth:`credential_variable`). ``merged`` is ``index`` laid over pip's own
        configuration, where that is not ``index`` already.
        """
        args: list[str] = []
        variables: dict[str, str] = {}
        for option in URL_OPTIONS:
            values = option.values(index)
            if not any(has_credentials(v) for v in values):
                for v in values:
                    args += [option.option, v]
            else:
                name, value = self.credential_variable(option, values, merged or index)
                variables[name] = value
        if index.no_index:
            args.append("--no-index")
        return args + self.index_flags(index, offline=offline), variables

    @abc.abstractmethod
    def credential_variable(
        self, option: UrlOption, values: tuple[str, ...], merged: IndexOptions
    ) -> tuple[str, str]:
        """The variable (name, value) that passes ``option``'s ``values``, which hold
        credentials, to the installer."""

    @abc.abstractmethod
    def index_flags(self, index: IndexOptions, *, offline: bool) -> list[str]:
        """The index options besides the URLs and ``--no-index``: trusted hosts, certificate,
        offline, index strategy."""
