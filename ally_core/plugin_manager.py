"""The pluggy plugin manager: built-in runtimes first, then the ``ally`` entry-point group.

Built-ins are registered with the same :data:`~ally_core.hookimpl` marker a third party uses.
``ALLY_DISABLED_PLUGINS=a,b`` blocks runtimes by registration name (built-ins included; the
built-in Python runtime is named ``python``). ``ALLY_TRACE_PLUGINS=1`` writes every hook call
and its result to stderr.

Registrations are validated as pluggy's ``check_pending`` does, without raising: a hook
implementation that matches no hook specification (``creat_env``) would never be called, so
:func:`unknown_hooks` names it, a warning says so when the runtimes are registered, and
``ally runtimes`` lists it.
"""

from __future__ import annotations

import importlib
import os
import sys
from collections.abc import Mapping
from typing import Any, NamedTuple, Optional

import pluggy

from . import hookspecs
from .entry_points import ally_entry_points, load_entry_point
from .hookspecs import PROJECT_NAME
from .text import log

__all__ = [
    "BUILTIN_RUNTIMES",
    "UnknownHook",
    "make_plugin_manager",
    "runtime_distributions",
    "unknown_hooks",
]

#: registration name -> module of the runtimes that ship inside ally-core.
BUILTIN_RUNTIMES: Mapping[str, str] = {"python": "ally_core.runtimes.python"}


def make_plugin_manager(
    environ: Mapping[str, str] | None = None,
    *,
    load_entrypoints: bool = True,
    index: Optional[Any] = None,
) -> pluggy.PluginManager:
    """Create a plugin manager with every enabled runtime registered.

    A runtime whose entry point fails to import is skipped with a warning: one broken
    third-party package must not stop ally (nor the plugins of other runtimes). With an
    ``index`` (a :class:`~ally_core.warm_index.WarmIndex`), the entry points found are
    remembered in it (:mod:`ally_core.entry_points`).
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
    for unknown in unknown_hooks(pm):
        log.warning("%s", unknown.describe())
    if environ.get("ALLY_TRACE_PLUGINS", "") not in {"", "0"}:
        pm.trace.root.setwriter(sys.stderr.write)
        pm.enable_tracing()
    return pm


def runtime_distributions(index: Optional[Any] = None) -> dict[str, str]:
    """Entry-point name -> ``"<distribution> <version>"`` of every runtime package installed."""
    return {
        str(name): f"{dist} {version}"
        for name, _value, dist, version, _file in ally_entry_points(index)
        if dist is not None
    }


class UnknownHook(NamedTuple):
    """A hook implementation that matches no hook specification: it is never called."""

    #: The registration name of the runtime that implements it.
    runtime: str
    #: The implementation's name, e.g. ``"creat_env"``.
    hook: str

    def describe(self) -> str:
        from .text import did_you_mean

        return (
            f"runtime {self.runtime!r} implements {self.hook!r}, which is not an ally hook: "
            f"it is never called{did_you_mean(self.hook, _hook_names())}"
        )


def _hook_names() -> list[str]:
    return [name for name in vars(hookspecs) if hasattr(getattr(hookspecs, name), "ally_spec")]


def unknown_hooks(pm: pluggy.PluginManager) -> list[UnknownHook]:
    """Every hook implementation registered on ``pm`` that matches no specification.

    What pluggy's ``check_pending`` raises for, collected instead: one runtime's typo must
    not stop ally. Implementations marked ``optionalhook`` are left out, as pluggy does.
    """
    found = []
    for name, caller in sorted(vars(pm.hook).items()):
        if name.startswith("_") or not isinstance(caller, pluggy.HookCaller):
            continue
        if caller.has_spec():
            continue
        for impl in caller.get_hookimpls():
            if not impl.optionalhook:
                found.append(UnknownHook(impl.plugin_name, name))
    return found
