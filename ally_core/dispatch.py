"""Every call ally makes to its runtimes, typed, with one policy for a runtime that misbehaves.

The hooks (:mod:`ally_core.hookspecs`) are called here and nowhere else. :class:`Dispatch`

* collects each runtime's :func:`~ally_core.hookspecs.runtime_names` safely: a runtime whose
  ``runtime_names`` raises, or returns something other than a list of strings, is *broken*:
  it is asked nothing more, the plugins no other runtime serves are blocked with its reason,
  and ``ally runtimes`` reports it;
* asks, for a plugin of runtime ``R``, only the runtimes that declare ``R`` (and those that
  declare no names at all, which the hook contract lets answer for any runtime): a runtime
  that raises can block only the plugins it would serve;
* turns "no runtime answered" into :class:`~ally_core.RuntimeNotFound`;
* wraps any other exception of a runtime into :class:`~ally_core.errors.RuntimeFailed`, an
  :class:`~ally_core.AllyError` that blocks the plugin with one line (``KeyboardInterrupt``
  and other ``BaseException`` still propagate).
"""

from __future__ import annotations

import threading
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Optional

import pluggy

from .envs import EnvInfo, EnvOptions, EnvSpec, Health, InstallResult, Interpreter
from .errors import AllyError, RuntimeFailed, RuntimeNotFound
from .manifest import MANIFEST_NAME
from .plugin_manager import UnknownHook, unknown_hooks
from .text import log, one_line

__all__ = ["BrokenRuntime", "Dispatch"]


class BrokenRuntime(AllyError):
    """A registered runtime that could not say which runtimes it serves."""

    def __init__(self, runtime: str, reason: str) -> None:
        self.runtime = runtime
        self.reason = reason
        super().__init__(f"runtime {runtime!r} is broken: {reason}")


class Dispatch:
    """The runtimes registered on a pluggy plugin manager, called through one typed API.

    Thread-safe: builds of several plugins call it at once.
    """

    def __init__(self, pm: pluggy.PluginManager) -> None:
        #: The plugin manager whose hooks are called.
        self.pm = pm
        self._lock = threading.Lock()
        self._served: Optional[dict[str, list[str]]] = None
        self._broken: dict[str, str] = {}
        self._runtimes: Optional[dict[str, str]] = None
        self._callers: dict[tuple[str, str], pluggy.HookCaller] = {}

    # -- registrations -------------------------------------------------------------------------

    def served(self) -> dict[str, list[str]]:
        """Registration name -> the ``runtime`` values its ``runtime_names`` declares.

        Runtimes whose ``runtime_names`` failed are left out (see :meth:`broken`).
        """
        if self._served is None:
            served: dict[str, list[str]] = {}
            broken: dict[str, str] = {}
            for impl in self.pm.hook.runtime_names.get_hookimpls():
                try:
                    names = impl.function()
                except Exception as exc:  # a runtime's bug blocks that runtime's plugins only
                    broken[impl.plugin_name] = (
                        f"runtime_names raised {exc.__class__.__name__}: {one_line(exc)}"
                    )
                    continue
                if isinstance(names, str) or not isinstance(names, (list, tuple)):
                    broken[impl.plugin_name] = (
                        f"runtime_names returned {type(names).__name__}, not a list of names"
                    )
                    continue
                if not all(isinstance(n, str) for n in names):
                    broken[impl.plugin_name] = "runtime_names returned a name that is not a string"
                    continue
                served[impl.plugin_name] = list(names)
            for runtime, reason in broken.items():
                log.warning("runtime %r is broken: %s; its plugins are blocked", runtime, reason)
            with self._lock:
                self._broken = broken
                self._served = served
        return self._served

    def broken(self) -> dict[str, str]:
        """Registration name -> why its ``runtime_names`` could not be used."""
        self.served()
        return dict(self._broken)

    def runtimes(self) -> dict[str, str]:
        """``runtime`` value -> registration name of the runtime serving it."""
        if self._runtimes is None:
            names: dict[str, str] = {}
            # Hook implementations are listed last-registered first: the first one wins.
            for plugin, values in reversed(self.served().items()):
                for value in values:
                    names.setdefault(value, plugin)
            self._runtimes = names
        return self._runtimes

    def unknown_hooks(self) -> list[UnknownHook]:
        """Hook implementations that match no specification (never called), by runtime."""
        return unknown_hooks(self.pm)

    def plugin_names(self) -> list[str]:
        """The registration names of every registered plugin, sorted."""
        return sorted(name for name, _ in self.pm.list_name_plugin())

    def serves(self, plugin_name: str, runtime: Optional[str]) -> bool:
        """Whether the registered plugin ``plugin_name`` may answer hooks for ``runtime``.

        One that declares its ``runtime_names`` answers for those only (the hook contract);
        one that declares none may answer for any runtime; a broken one for none.
        """
        if plugin_name in self.broken():
            return False
        served = self.served().get(plugin_name)
        return served is None or runtime in served

    def implementers(self, hook: str) -> list[str]:
        """Registration names of the plugins implementing ``hook``."""
        caller: pluggy.HookCaller = getattr(self.pm.hook, hook)
        return [impl.plugin_name for impl in caller.get_hookimpls()]

    def unknown_runtime(self, plugin: str, runtime: str) -> RuntimeNotFound:
        """The error for a manifest whose ``runtime`` no working runtime serves."""
        installed = ", ".join(sorted(self.runtimes())) or "none"
        package = f"ally-runtime-{runtime.rstrip('0123456789')}"
        message = (
            f"{plugin}: {MANIFEST_NAME}: $.runtime: unknown runtime {runtime!r} (installed "
            f"runtimes: {installed}; a runtime is added by installing its package, e.g. "
            f"{package})"
        )
        broken = self.broken()
        if broken:
            why = "; ".join(f"runtime {name!r} is broken: {r}" for name, r in broken.items())
            message += f"; {why}"
        return RuntimeNotFound(message)

    def check_runtime(self, plugin: str, runtime: str) -> None:
        """Raise :class:`~ally_core.RuntimeNotFound` unless a working runtime serves it."""
        if runtime not in self.runtimes():
            raise self.unknown_runtime(plugin, runtime)

    # -- calls ---------------------------------------------------------------------------------

    def _caller(self, hook: str, runtime: str) -> pluggy.HookCaller:
        """``hook``'s caller without the plugins that must not answer for ``runtime``."""
        key = (hook, runtime)
        caller = self._callers.get(key)
        if caller is None:
            out = {
                plugin
                for name, plugin in self.pm.list_name_plugin()
                if plugin is not None and not self.serves(name, runtime)
            }
            caller = self.pm.subset_hook_caller(hook, remove_plugins=out)
            self._callers[key] = caller
        return caller

    def _call(self, hook: str, runtime: str, plugin: str, **kwargs: Any) -> Any:
        try:
            return self._caller(hook, runtime)(**kwargs)
        except AllyError:
            raise
        except Exception as exc:  # a runtime's bug blocks its plugin only
            raise RuntimeFailed(
                f"{plugin}: runtime error: {exc.__class__.__name__}: {exc}"
            ) from exc

    def env_identity(self, spec: EnvSpec) -> Optional[Mapping[str, Any]]:
        """The runtime's extra inputs of ``spec``'s env (see the hook)."""
        value: Optional[Mapping[str, Any]] = self._call(
            "env_identity", spec.runtime, spec.plugin_name, spec=spec
        )
        return value

    def env_context(self, runtime: str, options: EnvOptions) -> Optional[Mapping[str, Any]]:
        """What ``runtime``'s ``env_identity`` reads outside the plugin; ``None`` when it is
        not described or the hook fails (keys are then not persisted: slower, never wrong)."""
        try:
            value: Optional[Mapping[str, Any]] = self._caller("env_context", runtime)(
                runtime=runtime, options=options
            )
        except Exception as exc:  # a runtime's bug: fall back to env_identity per plugin
            log.debug("env_context of %r failed: %s", runtime, exc)
            return None
        return value

    def identity_files(self, spec: EnvSpec) -> Optional[Sequence[Path]]:
        """The plugin files besides the dependency file that ``env_identity`` reads."""
        value: Optional[Sequence[Path]] = self._call(
            "identity_files", spec.runtime, spec.plugin_name, spec=spec
        )
        return value

    def resolve_interpreter(self, spec: EnvSpec) -> Interpreter:
        """The base interpreter to build ``spec``'s env with."""
        value: Optional[Interpreter] = self._call(
            "resolve_interpreter", spec.runtime, spec.plugin_name, spec=spec
        )
        if value is None:
            raise RuntimeNotFound(
                f"{spec.plugin_name}: no runtime resolved an interpreter for {spec.runtime!r}"
            )
        return value

    def create_env(self, spec: EnvSpec, interpreter: Interpreter) -> EnvInfo:
        """An empty env in ``spec.env_dir``."""
        value: Optional[EnvInfo] = self._call(
            "create_env", spec.runtime, spec.plugin_name, spec=spec, interpreter=interpreter
        )
        if value is None:
            raise RuntimeNotFound(
                f"{spec.plugin_name}: no runtime created an env for {spec.runtime!r}"
            )
        return value

    def install_deps(self, spec: EnvSpec, env: EnvInfo) -> Optional[InstallResult]:
        """Install ``spec``'s dependencies into ``env``."""
        value: Optional[InstallResult] = self._call(
            "install_deps", spec.runtime, spec.plugin_name, spec=spec, env=env
        )
        return value

    def health_check(self, spec: EnvSpec, env: EnvInfo, *, deep: bool) -> Health:
        """``env``'s health (healthy when no runtime checks it)."""
        value: Optional[Health] = self._call(
            "health_check", spec.runtime, spec.plugin_name, spec=spec, env=env, deep=deep
        )
        return value if value is not None else Health()

    def watch_paths(self, spec: EnvSpec, env: EnvInfo) -> Optional[Sequence[Path]]:
        """The paths whose identities decide the runtime's answers for ``env`` (``None``: the
        runtime names none, or its hook failed: its plugins' tools take the full path)."""
        try:
            value: Optional[Sequence[Path]] = self._call(
                "watch_paths", spec.runtime, spec.plugin_name, spec=spec, env=env
            )
        except Exception as exc:  # a runtime's bug: slower, never wrong
            log.debug("watch_paths of %r failed: %s", spec.runtime, exc)
            return None
        return value

    def bundle_artifacts(self, spec: EnvSpec, env: EnvInfo, dest: Path) -> Optional[Any]:
        """Save what rebuilding ``env`` offline needs into ``dest``; the lock, or ``None``."""
        return self._call(
            "bundle_artifacts", spec.runtime, spec.plugin_name, spec=spec, env=env, dest=dest
        )
