"""ally: isolated, cached, self-healing dependency environments for a host's plugins.

The public API. Everything not listed in ``__all__`` is internal.
"""

from __future__ import annotations

from .__about__ import __version__

# Not ``typing.TYPE_CHECKING``: importing typing costs every ``ally`` command milliseconds,
# and the quick ``ally run`` path (:mod:`.quick_run`) imports this package and nothing else.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

    from .checks import run_checks
    from .config import IndexOptions, Settings, strip_credentials
    from .envs import (
        EnvInfo,
        EnvOptions,
        EnvSpec,
        Health,
        InstallResult,
        Interpreter,
        Problem,
        ProgressEvent,
    )
    from .errors import (
        AllyError,
        ConfigError,
        EnvStoreError,
        InstallFailed,
        InterpreterNotFound,
        ManifestError,
        PluginNotFound,
        RuntimeNotFound,
        ToolError,
        ToolInputError,
        UnsafePath,
    )
    from .forms import FormRequest
    from .hookspecs import hookimpl, hookspec
    from .host import BoundTool, Host, PluginOutcome, PluginSource
    from .manifest import Dependencies, Manifest, Tool, load_manifest, parse_manifest
    from .paths import command_lookup_paths
    from .process import clean_environ, run_installer
    from .tools import ToolResult


#: Where each public name lives: imported on first use (PEP 562), so that importing
#: ``ally_core`` or one of its modules (the CLI) costs no more than what is used.
_LAZY: dict[str, str] = {
    "AllyError": "errors",
    "BoundTool": "host",
    "clean_environ": "process",
    "command_lookup_paths": "paths",
    "ConfigError": "errors",
    "Dependencies": "manifest",
    "EnvInfo": "envs",
    "EnvOptions": "envs",
    "EnvSpec": "envs",
    "EnvStoreError": "errors",
    "FormRequest": "forms",
    "Health": "envs",
    "hookimpl": "hookspecs",
    "hookspec": "hookspecs",
    "Host": "host",
    "IndexOptions": "config",
    "InstallFailed": "errors",
    "InstallResult": "envs",
    "Interpreter": "envs",
    "InterpreterNotFound": "errors",
    "load_manifest": "manifest",
    "Manifest": "manifest",
    "ManifestError": "errors",
    "parse_manifest": "manifest",
    "PluginNotFound": "errors",
    "PluginOutcome": "host",
    "PluginSource": "host",
    "Problem": "envs",
    "ProgressEvent": "envs",
    "run_checks": "checks",
    "run_installer": "process",
    "RuntimeNotFound": "errors",
    "Settings": "config",
    "strip_credentials": "config",
    "Tool": "manifest",
    "ToolError": "errors",
    "ToolInputError": "errors",
    "ToolResult": "tools",
    "UnsafePath": "errors",
}

__all__ = [
    "AllyError",
    "BoundTool",
    "ConfigError",
    "Dependencies",
    "EnvInfo",
    "EnvOptions",
    "EnvSpec",
    "EnvStoreError",
    "FormRequest",
    "Health",
    "Host",
    "IndexOptions",
    "InstallFailed",
    "InstallResult",
    "Interpreter",
    "InterpreterNotFound",
    "Manifest",
    "ManifestError",
    "PluginNotFound",
    "PluginOutcome",
    "PluginSource",
    "Problem",
    "ProgressEvent",
    "RuntimeNotFound",
    "Settings",
    "Tool",
    "ToolError",
    "ToolInputError",
    "ToolResult",
    "UnsafePath",
    "__version__",
    "clean_environ",
    "command_lookup_paths",
    "hookimpl",
    "hookspec",
    "load_manifest",
    "parse_manifest",
    "run_checks",
    "run_installer",
    "strip_credentials",
]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'ally_core' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
