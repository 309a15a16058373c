"""ally-runtime-node: the ``node`` runtime for ally.

A plugin with ``"runtime": "node"`` and ``"dependencies": {"file": "package.json"}`` gets its
npm packages installed into its own env in ally's env store (``npm ci`` when it ships a
``package-lock.json`` or ``npm-shrinkwrap.json``, else ``npm install``). Its tools run with the
node the env was built with and can ``require()`` and ``import`` those packages, and run their
bins (``npx tsx tool.ts``), while the plugin's directory stays untouched.

This module is the runtime: ally registers it through the ``ally`` entry point group
(``node = "ally_runtime_node"``), and pluggy collects the hook implementations below. Importing
it is cheap (standard library only), as ally imports every runtime on start.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .__about__ import __version__
from ._hooks import (
    bundle_artifacts,
    create_env,
    env_context,
    env_identity,
    health_check,
    identity_files,
    install_deps,
    resolve_interpreter,
    runtime_names,
    watch_paths,
)
from ._layout import LOCK_NAME, NODE_ENV_VAR

if TYPE_CHECKING:
    from ._semver import satisfies

__all__ = [
    "LOCK_NAME",
    "NODE_ENV_VAR",
    "__version__",
    "bundle_artifacts",
    "create_env",
    "env_context",
    "env_identity",
    "health_check",
    "identity_files",
    "install_deps",
    "resolve_interpreter",
    "runtime_names",
    "satisfies",
    "watch_paths",
]


def __getattr__(name: str) -> Any:
    # ``satisfies`` on first use: ally imports every runtime at each start.
    if name == "satisfies":
        from ._semver import satisfies

        return satisfies
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
