"""ally: isolated, cached, self-healing dependency environments for a host's plugins.

The public API. Everything not listed in ``__all__`` is internal.
"""

from __future__ import annotations

from .__about__ import __version__
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
from .process import clean_environ, run_installer
from .tools import ToolResult

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
    "hookimpl",
    "hookspec",
    "load_manifest",
    "parse_manifest",
    "run_checks",
    "run_installer",
    "strip_credentials",
]
