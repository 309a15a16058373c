"""The error hierarchy: every error a user sees is an :class:`AllyError` printed as one line."""

from __future__ import annotations

from collections.abc import Sequence

__all__ = [
    "AllyError",
    "BundleError",
    "ConfigError",
    "EnvStoreError",
    "InstallFailed",
    "InterpreterNotFound",
    "ManifestError",
    "PluginNotFound",
    "RuntimeFailed",
    "RuntimeNotFound",
    "ToolError",
    "ToolInputError",
    "ToolNotFound",
    "UnsafePath",
]


class AllyError(Exception):
    """Base class of errors meant for users: ``str(err)`` is one complete line."""

    exit_code: int = 1


class ManifestError(AllyError):
    """A ``plugin.json`` is unreadable or invalid; ``problems`` holds every problem found."""

    def __init__(self, plugin: str, file: str, problems: Sequence[str]) -> None:
        self.plugin = plugin
        self.file = file
        self.problems = list(problems)
        super().__init__(f"{plugin}: {file}: " + "; ".join(self.problems))


class UnsafePath(ManifestError):
    """A path named by a manifest leaves the plugin's directory (``..``, absolute, symlink)."""


class PluginNotFound(AllyError):
    """No plugin with the requested name was discovered."""


class ToolNotFound(PluginNotFound):
    """A plugin has no tool of the requested name.

    A subclass of :class:`PluginNotFound` for callers that caught that before the two were
    told apart.
    """


class RuntimeNotFound(AllyError):
    """No installed runtime serves the manifest's ``runtime``."""


class InterpreterNotFound(AllyError):
    """The runtime could not find an interpreter satisfying the plugin's needs."""


class InstallFailed(AllyError):
    """Creating an environment or installing dependencies failed.

    ``command`` is the failing command line and ``stderr_tail`` the lines of its output that
    say why (see ``ally_core.installer_output.error_lines``).
    """

    def __init__(self, message: str, *, command: Sequence[str] = (), stderr_tail: str = "") -> None:
        self.command = list(command)
        self.stderr_tail = stderr_tail
        self.message = message
        tail = " | ".join(line for line in stderr_tail.strip().splitlines()[-5:] if line.strip())
        super().__init__(f"{message}: {tail}" if tail else message)


class RuntimeFailed(InstallFailed):
    """A runtime raised something other than an :class:`AllyError` (a bug in the runtime):
    the plugin it was serving is blocked with the exception's text."""


class EnvStoreError(AllyError):
    """The env store cannot be written (permissions, disk full, …)."""


class BundleError(AllyError):
    """A bundle cannot be written, read or installed."""


class ConfigError(AllyError):
    """Configuration (file, env var or plugin config value) is invalid."""


class ToolError(AllyError):
    """A tool could not be run, failed, timed out or produced unusable output."""

    def __init__(self, message: str, *, stderr: str = "", error_type: str = "tool_error") -> None:
        self.stderr = stderr
        self.error_type = error_type
        super().__init__(message)


class ToolInputError(ToolError):
    """A tool's input does not match its schema; no process was started."""

    def __init__(self, message: str) -> None:
        super().__init__(message, error_type="invalid_input")
