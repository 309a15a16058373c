"""The built-in Python runtime: the first implementation of :mod:`ally_core.hookspecs`.

It is registered under the name ``python`` with the same :data:`~ally_core.hookimpl` marker a
third-party runtime uses. Two installer backends:

* ``uv`` (default when the ``uv`` binary is available): ``uv venv`` + ``uv pip install``, with
  one shared cache (hardlinks) under ally's cache dir.
* ``pip``: ``virtualenv`` (Python API, app-data seeding) + ``pip install``, sharing pip's cache
  under ally's cache dir.

Either way every env has its own ``pip`` (seeded from a wheel on this machine, never from an
index), so ``<env>/bin/pip`` and an ``install_command``'s ``{pip}`` act on that env.

Heavy imports (virtualenv, packaging) happen inside the functions that need them, so that
``import ally_core`` and warm loads stay cheap.

The package, leaf first: ``layout`` (names, an env's layout); ``index`` (pip's configuration
and ally's index settings), ``interpreters`` (finding a Python), ``requirements`` and
``pyproject`` (what a dependency file reads), ``depfile`` (a plugin's dependency file),
``pip_seed`` (every env's pip); ``backend`` (the installer interface) with ``pip_backend``
and ``uv_backend`` (which also finds the uv binary); ``installers`` (which backend does what);
``checks`` (installed distributions, their files, the health check); ``hooks`` (the hook
implementations, re-exported here: registering this package registers them).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

# Registering this package registers these (pluggy reads the module's attributes).
from .hooks import (
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
from .layout import ENV_LAYOUT, LOCK_NAME, NAMES
from .uv_locate import uv_available

if TYPE_CHECKING:
    from .checks import dependency_packages, installed_packages, verify_records
    from .index import effective_index, read_pip_config
    from .installers import backend_for
    from .interpreters import candidate_paths, query_interpreter
    from .pip_backend import without_cli_advice
    from .pip_seed import PIP_WHEEL_DIR

#: The helpers other modules and tests use, imported on first use (ally imports this
#: package at every start; the installers' code is needed only when something is built).
_LAZY = {
    "dependency_packages": "checks",
    "installed_packages": "checks",
    "verify_records": "checks",
    "effective_index": "index",
    "read_pip_config": "index",
    "backend_for": "installers",
    "candidate_paths": "interpreters",
    "query_interpreter": "interpreters",
    "without_cli_advice": "pip_backend",
    "_without_cli_advice": "pip_backend",
    "PIP_WHEEL_DIR": "pip_seed",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(f"{__name__}.{module}"), name.lstrip("_"))
    globals()[name] = value
    return value


#: The hook implementations (registering this package registers them) and the helpers
#: other modules and tests use.
__all__ = [
    "ENV_LAYOUT",
    "LOCK_NAME",
    "NAMES",
    "PIP_WHEEL_DIR",
    "backend_for",
    "bundle_artifacts",
    "candidate_paths",
    "create_env",
    "dependency_packages",
    "effective_index",
    "env_context",
    "env_identity",
    "health_check",
    "identity_files",
    "install_deps",
    "installed_packages",
    "query_interpreter",
    "read_pip_config",
    "resolve_interpreter",
    "runtime_names",
    "uv_available",
    "verify_records",
    "watch_paths",
    "without_cli_advice",
]

# The names these had when the runtime was one module.
_uv_available = uv_available
