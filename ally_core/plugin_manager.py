"""The pluggy plugin manager: built-in runtimes first, then the ``ally`` entry-point group.

Built-ins are registered with the same :data:`~ally_core.hookimpl` marker a third party uses.
``ALLY_DISABLED_PLUGINS=a,b`` blocks runtimes by registration name (built-ins included; the
built-in Python runtime is named ``python``). ``ALLY_TRACE_PLUGINS=1`` writes every hook call
and its result to stderr.
"""

from __future__ import annotations

import importlib
import os
import sys
from collections.abc import Mapping
from typing import TYPE_CHECKING, Optional

import pluggy

from . import hookspecs
from .entry_points import ally_entry_points, load_entry_point
from .hookspecs import PROJECT_NAME
from .text import log

if TYPE_CHECKING:
    from .warm_index import WarmIndex

__all__ = ["BUILTIN_RUNTIMES", "make_plugin_manager", "runtime_distributions"]


#: registration name -> module of the runtimes that ship inside ally-core.
BUILTIN_RUNTIMES: Mapping[str, str] = {"python": "ally_core.runtimes.python"}


def make_plugin_manager(
    environ: Mapping[str, str] | None = None,
    *,
    load_entrypoints: bool = True,
    index: Optional[WarmIndex] = None,
) -> pluggy.PluginManager:
    """Create a plugin manager with every enabled runtime registered.

    A runtime whose entry point fails to import is skipped with a warning: one broken
    third-party package must not stop ally (nor the plugins of other runtimes). With an
    ``index``, the entry points found are remembered in it (:mod:`ally_core.entry_points`).
    """
    environ = os.environ if environ is None else environ
    pm = pluggy.PluginManager(PROJECT_NAME)
    pm.add_hookspecs(hookspecs)
    disabled = {n.strip() for n in environ.get("ALLY_DISABLED_PLUGINS", "").split(",") if n.strip()}
    for name in disabled:
        pm.set_blocked(name)
    for name, module in BUILTIN_RUNTIMES.items():
        if name not in disabled:
            pm.register(importlib.import_module(module), name=name)
    if load_entrypoints:
        for ep_name, value, *_dist in ally_entry_points(index):
            if not ep_name or pm.is_blocked(ep_name) or pm.get_plugin(ep_name) is not None:
                continue
            try:
                pm.register(load_entry_point(value or ""), name=ep_name)
            except Exception as exc:
                log.warning("runtime %r (entry point %s) failed to load: %s", ep_name, value, exc)
    if environ.get("ALLY_TRACE_PLUGINS", "") not in {"", "0"}:
        pm.trace.root.setwriter(sys.stderr.write)
        pm.enable_tracing()
    return pm


def runtime_distributions(index: Optional[WarmIndex] = None) -> dict[str, str]:
    """Entry-point name -> ``"<distribution> <version>"`` of every runtime package installed."""
    return {
        str(name): f"{dist} {version}"
        for name, _value, dist, version, _file in ally_entry_points(index)
        if dist is not None
    }
