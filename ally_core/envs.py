"""The values passed to and returned from runtime hooks.

All are frozen attrs classes: a runtime receives an :class:`EnvSpec`, returns an
:class:`Interpreter`, an :class:`EnvInfo`, an :class:`InstallResult` or a :class:`Health`.
They are also what the env store writes into an env's marker, so they round-trip through JSON
with the converter in :mod:`ally_core.store`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Callable, Optional

import attrs

from .config import IndexOptions
from .process import run_installer

__all__ = [
    "EnvInfo",
    "EnvOptions",
    "EnvSpec",
    "Health",
    "InstallResult",
    "Interpreter",
    "Problem",
    "ProgressEvent",
]


@attrs.frozen
class ProgressEvent:
    """One progress update: which plugin, which phase, how far (0..1 or ``None``), what."""

    plugin: str
    phase: str
    message: str = ""
    fraction: Optional[float] = None


def _no_progress(event: ProgressEvent) -> None:
    return None


@attrs.frozen
class EnvOptions:
    """Installer options shared by every env build of one load."""

    offline: bool = False
    index: IndexOptions = IndexOptions()
    #: Root of ally's cache; runtimes keep their package caches in subdirectories of it.
    cache_dir: Optional[Path] = None
    #: ``"auto"``, ``"uv"`` or ``"pip"``; runtimes other than Python may ignore it.
    installer: str = "auto"
    #: Seconds before an installer process is killed.
    install_timeout: float = 1800.0
    #: ``True`` for ``ally update``: re-resolve to the newest versions the file allows.
    upgrade: bool = False
    #: Default base interpreter (``ALLY_PYTHON`` for the Python runtime).
    default_interpreter: Optional[str] = None
    #: Set when installing from an offline bundle: the directory :func:`bundle_artifacts`
    #: filled. ``install_deps`` must then install only from it, with no network at all.
    artifacts_dir: Optional[Path] = None


@attrs.frozen
class EnvSpec:
    """Everything a runtime needs to know about one plugin's environment.

    Paths are absolute. ``dependency_file`` has been checked to lie inside ``plugin_dir``.
    """

    runtime: str
    plugin_name: str
    plugin_dir: Path
    #: Where the env is built. It is its final location: envs never move after they are built.
    env_dir: Path
    dependency_file: Optional[Path] = None
    #: ``dependencies.install_command``, already split with :func:`shlex.split`.
    install_command: Optional[tuple[str, ...]] = None
    #: The manifest's ``runtime_version`` constraint, if any.
    runtime_version: Optional[str] = None
    #: Runtime-specific keys of the manifest's ``dependencies`` object.
    dependency_options: Mapping[str, Any] = attrs.field(factory=dict)
    options: EnvOptions = EnvOptions()
    reporter: Callable[[ProgressEvent], None] = attrs.field(default=_no_progress, eq=False)

    def progress(self, phase: str, message: str = "", fraction: float | None = None) -> None:
        """Report progress of this env's build to whoever is listening."""
        self.reporter(ProgressEvent(self.plugin_name, phase, message, fraction))

    def run(
        self, argv: Sequence[str], *, env: Mapping[str, str], what: str, cwd: Path | None = None
    ) -> str:
        """Run an installer step for this env (``cwd`` defaults to the plugin dir).

        :func:`ally_core.run_installer` with this spec's timeout and the installer's output
        streamed as ``"output"`` progress; raises :class:`~ally_core.InstallFailed`.
        """
        return run_installer(
            argv,
            cwd=cwd or self.plugin_dir,
            env=env,
            timeout=self.options.install_timeout,
            on_line=lambda line: self.progress("output", line),
            what=what,
        )


@attrs.frozen
class Interpreter:
    """A base interpreter (python, node, ruby) found on this machine."""

    #: Absolute path, never a shim (pyenv, asdf, …) or a relative name.
    path: str
    version: str
    #: Runtime name the interpreter serves, e.g. ``"python"``.
    kind: str = ""
    #: ``os.path.realpath(path)``; its stat signature is re-checked on every load.
    realpath: str = ""
    #: ``(st_size, st_mtime_ns, st_ino)`` of ``realpath`` when it was resolved.
    signature: tuple[int, ...] = ()


@attrs.frozen
class EnvInfo:
    """A built environment and how to run things inside it."""

    path: Path
    interpreter: Interpreter
    #: Directory put first on ``PATH`` for tools (``bin``, ``node_modules/.bin``, …).
    bin_dirs: tuple[str, ...] = ()
    #: Tool command names replaced by absolute paths (``{"python3": "<env>/bin/python"}``).
    commands: Mapping[str, str] = attrs.field(factory=dict)
    #: Variables set for tools and installers (``VIRTUAL_ENV``, ``NODE_PATH``, …).
    env_vars: Mapping[str, str] = attrs.field(factory=dict)
    #: Runtime-private data stored in the marker (backend, versions, …).
    data: Mapping[str, Any] = attrs.field(factory=dict)


@attrs.frozen
class InstallResult:
    """What an install put into the env."""

    #: Package name -> version, as resolved.
    packages: Mapping[str, str] = attrs.field(factory=dict)
    #: The installer's command line, for diagnostics.
    command: tuple[str, ...] = ()
    #: Runtime-private data added to the env's :attr:`EnvInfo.data` (kept in the marker):
    #: what the install recorded of the env, for its later health checks.
    data: Mapping[str, Any] = attrs.field(factory=dict)


@attrs.frozen
class Problem:
    """One thing wrong with an env. ``repairable`` problems are fixed by rebuilding it."""

    message: str
    repairable: bool = True


@attrs.frozen
class Health:
    """Result of a health check: ``ok`` when ``problems`` is empty."""

    problems: tuple[Problem, ...] = ()

    @property
    def ok(self) -> bool:
        return not self.problems

    def describe(self) -> str:
        return "; ".join(p.message for p in self.problems) or "ok"
