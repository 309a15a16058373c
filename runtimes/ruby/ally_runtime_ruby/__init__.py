"""ally-runtime-ruby: the ``ruby`` runtime for ally.

A plugin with ``"runtime": "ruby"`` and ``"dependencies": {"file": "Gemfile"}`` gets its gems
installed by bundler into its own env in ally's env store (``Gemfile.lock`` is honoured when
the plugin ships one); its tools run with that env's Ruby and can ``require`` the gems.

This module is the runtime: ally registers it through the ``ally`` entry point group
(``ruby = "ally_runtime_ruby"``), and pluggy collects the hook implementations below.
"""

from __future__ import annotations

from .__about__ import __version__
from ._hooks import (
    LOCK_NAME,
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
from ._names import RUBY_ENV_VAR

__all__ = [
    "LOCK_NAME",
    "RUBY_ENV_VAR",
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
    "watch_paths",
]
