"""The host API: discover plugins, validate them, make their envs ready, hand out their tools.

:class:`Host` is what a host application embeds and what the ``ally`` CLI drives. One broken
plugin never stops the others: :meth:`Host.load` returns a :class:`PluginOutcome` per plugin,
ready (with its tools) or blocked (with a one-line reason).

``Host`` is a facade: each concern lives in its own module (see ``docs/architecture.md``):
:mod:`.discovery` finds plugins, :mod:`.keys` makes specs and request keys, :mod:`.builder`
builds envs, :mod:`.readiness` decides warm or cold, :mod:`.failures` remembers failed
builds, :mod:`.maintenance` inspects and cleans up, :mod:`.dispatch` calls the runtimes.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Optional

import pluggy

from .builder import Builder
from .config import Settings, load_settings
from .discovery import Discovery, PluginSource, with_setting_dirs
from .dispatch import Dispatch
from .envs import EnvOptions, EnvSpec, Health, ProgressEvent
from .failures import FailureMemory
from .keys import KeyMaker
from .maintenance import Maintenance, Removal
from .manifest import Manifest, Tool
from .outcomes import BoundTool, PluginOutcome
from .paths import AllyPaths
from .plugin_manager import make_plugin_manager
from .readiness import Readiness
from .store import EnvStore, Marker
from .warm_index import INDEX_NAME, WarmIndex

if TYPE_CHECKING:
    from .config_home import ConfigHome
    from .replies import ToolResult
    from .workers import WorkerOptions, WorkerPool

__all__ = ["BoundTool", "Host", "PluginOutcome", "PluginSource", "Removal"]

ProgressCallback = Callable[[ProgressEvent], None]


def _silent(event: ProgressEvent) -> None:
    return None


class Host:
    """One ally home: its plugins, its env store, its settings and its runtimes.

    Thread-safe: :meth:`load` may be called from several threads, and two hosts with
    different homes can live in one process.
    """

    def __init__(
        self,
        home: str | os.PathLike[str] | None = None,
        *,
        plugin_dirs: Sequence[str | os.PathLike[str]] = (),
        settings: Mapping[str, Any] | None = None,
        environ: Mapping[str, str] | None = None,
        plugin_manager: pluggy.PluginManager | None = None,
        warm_workers: bool | WorkerOptions = False,
    ) -> None:
        env = dict(os.environ if environ is None else environ)
        paths = AllyPaths.from_env(home, plugin_dirs, env)
        #: What warm loads derive from files, persisted for the next process.
        self.index = WarmIndex(paths.state_dir / INDEX_NAME)
        #: Effective settings (defaults < config file < env vars < ``settings``).
        self.settings: Settings = load_settings(paths.config_file, env, settings, cache=self.index)
        #: The directories of this home (``--plugins-dir`` and the plugin_dirs setting).
        self.paths = with_setting_dirs(paths, self.settings)
        #: The pluggy plugin manager with every enabled runtime registered (the entry points
        #: found are remembered in the index).
        self.pm = plugin_manager or make_plugin_manager(env, index=self.index)
        #: Shortcut to ``pm.hook`` (ally itself calls the runtimes through ``dispatch``).
        self.hook = self.pm.hook
        #: Every call to the runtimes, with one policy for a runtime that misbehaves.
        self.dispatch = Dispatch(self.pm)
        #: The env store under ``paths.envs_dir``.
        self.store = EnvStore(self.paths, index=self.index)
        self.discovery = Discovery(self.paths, self.settings, self.index, self.store)
        self.keys = KeyMaker(self.paths, self.settings, self.store, self.index, self.dispatch)
        self.builder = Builder(self.store, self.dispatch)
        self.failures = FailureMemory(self.store, self.settings.retry_after)
        self.readiness = Readiness(self.store, self.keys, self.builder, self.failures, self)
        self.maintenance = Maintenance(
            self.store, self.discovery, self.keys, self.readiness, self.failures, self.dispatch
        )
        #: Warm workers of Python tools (``warm_workers``), or ``None``; see :meth:`close`.
        self.workers: Optional[WorkerPool] = None
        if warm_workers:
            from .workers import WorkerOptions, WorkerPool

            options = warm_workers if isinstance(warm_workers, WorkerOptions) else None
            self.workers = WorkerPool(options, pass_env=self.settings.pass_env)
        self.readiness.after_build = self._after_build

    def _after_build(self, outcome: PluginOutcome) -> None:
        if self.workers is not None:  # set later by some (an MCP server shares one pool)
            self.workers.after_build(outcome)  # background bytecode compile, warm worker

    # -- lifetime ------------------------------------------------------------------------------

    def close(self) -> None:
        """Stop this host's warm workers (and the tool calls running in them)."""
        if self.workers is not None:
            self.workers.close()

    def __enter__(self) -> Host:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- runtimes and plugins ------------------------------------------------------------------

    def runtimes(self) -> dict[str, str]:
        """``runtime`` value -> registration name of the runtime serving it."""
        return self.dispatch.runtimes()

    def discover(self) -> list[PluginSource]:
        """Every plugin directory in the plugin dirs, with its manifest or its error."""
        self.keys.new_load()
        self.builder.new_load()
        return self.discovery.discover()

    def source(self, name: str) -> PluginSource:
        """The plugin called ``name``; :class:`PluginNotFound` (with a guess) if none is."""
        self.keys.new_load()
        self.builder.new_load()
        return self.discovery.source(name)

    def linked_dirs(self) -> list[Path]:
        """Plugin directories ``ally install PATH`` remembered (see :meth:`add_plugin_dir`)."""
        return self.discovery.linked_dirs()

    def add_plugin_dir(self, path: str | os.PathLike[str]) -> PluginSource:
        """Make the plugin in directory ``path`` known to this home, for good (until
        :meth:`remove`); raises if it holds no valid ``plugin.json``."""
        return self.discovery.add_plugin_dir(path)

    def forget_plugin_dirs(self, dirs: Iterable[Path]) -> None:
        """Stop remembering these plugin directories (their files are never touched)."""
        self.discovery.forget_plugin_dirs(dirs)

    # -- specs ---------------------------------------------------------------------------------

    def env_options(
        self, *, upgrade: bool = False, artifacts_dir: Path | None = None
    ) -> EnvOptions:
        return self.keys.env_options(upgrade=upgrade, artifacts_dir=artifacts_dir)

    def spec_for(
        self,
        manifest: Manifest,
        plugin_dir: Path,
        *,
        env_dir: Path | None = None,
        progress: ProgressCallback = _silent,
        upgrade: bool = False,
    ) -> EnvSpec:
        """Validate the parts of ``manifest`` that need the file system and the runtimes."""
        return self.keys.spec_for(
            manifest, plugin_dir, env_dir=env_dir, progress=progress, upgrade=upgrade
        )

    def request_key(self, spec: EnvSpec) -> str:
        """Hash of everything the plugin declares about its env (cheap: no processes)."""
        return self.keys.request_key(spec)

    def request_inputs(self, spec: EnvSpec) -> dict[str, Any]:
        """What :meth:`request_key` hashes, as plain JSON data: the env's inputs."""
        return self.keys.request_inputs(spec)

    def cheap_problem(self, spec: EnvSpec, marker: Marker) -> Optional[str]:
        """Why a published env cannot be used as is, or ``None`` (no process is started)."""
        return self.builder.cheap_problem(spec, marker)

    # -- loading -------------------------------------------------------------------------------

    def load(
        self,
        names: Iterable[str] | None = None,
        *,
        progress: ProgressCallback | None = None,
        jobs: int | None = None,
    ) -> list[PluginOutcome]:
        """Discover plugins and make each one ready; return one outcome per plugin.

        Plugins whose env is ready cost a few file reads and no process. The others are
        built in parallel (``jobs`` workers, default from the settings).
        """
        sources = self.discovery.select(self.discover(), names)
        jobs = jobs or self.settings.jobs
        outcomes = self.readiness.load(sources, progress or _silent, jobs)
        self.store.save_index()
        return outcomes

    def ensure(
        self,
        name: str,
        *,
        force: bool = False,
        upgrade: bool = False,
        progress: ProgressCallback | None = None,
    ) -> PluginOutcome:
        """Make one plugin ready. ``force`` rebuilds; ``upgrade`` re-resolves to newest versions.

        With ``force``/``upgrade`` the new env is built beside the old one and published only
        when healthy: on failure the old env stays in use and the outcome says why.
        """
        source = self.source(name)
        if not force and not upgrade:
            warm = self.readiness.warm(source)
            if warm is not None:
                self.store.save_index()
                return warm
        force = force or upgrade
        return self.readiness.make_ready(source, progress or _silent, force=force, upgrade=upgrade)

    # -- envs no plugin.json declares (MCP servers' envs) ---------------------------------------

    def current_env(self, spec: EnvSpec) -> tuple[Optional[Marker], str]:
        """The marker of the env published as ``spec.plugin_name`` if it can be used as is,
        else ``None`` and why not (the checks of a warm load; no process)."""
        return self.readiness.current_env(spec)

    def ensure_env(
        self, spec: EnvSpec, *, force: bool = False, progress: ProgressCallback | None = None
    ) -> tuple[Marker, str]:
        """Make the env of ``spec`` ready and publish it as ``spec.plugin_name``: what
        :meth:`ensure` does for a plugin. ``force`` builds beside the current env, which stays
        published if the build fails. Returns the marker and ``"none"``, ``"built"``,
        ``"shared"`` or ``"repaired"``."""
        return self.readiness.ensure_env(spec, force=force, progress=progress or _silent)

    # -- tools ---------------------------------------------------------------------------------

    def run_tool(
        self, plugin: PluginOutcome, tool: Tool, arguments: Any = None, **options: Any
    ) -> ToolResult:
        """Run ``tool`` of the ready ``plugin``: what :meth:`BoundTool.call` does, with the
        same keyword options."""
        from .tools import run_tool

        return run_tool(self, plugin, tool, arguments, **options)

    def config_home(self) -> ConfigHome:
        """Where this home keeps plugin config (see ``ally_core.plugin_config``)."""
        from .config_home import ConfigHome  # a warm `ally list` reads no config

        return ConfigHome.of(self.paths.config_dir, self.settings, self.discover, self.source)

    # -- inspection and maintenance ------------------------------------------------------------

    def status(self) -> list[PluginOutcome]:
        """Every plugin's state without building anything (for ``ally list``)."""
        outcomes = self.maintenance.status(self.discover())
        self.store.save_index()
        return outcomes

    def doctor(
        self,
        names: Iterable[str] | None = None,
        *,
        fix: bool = False,
        progress: ProgressCallback | None = None,
    ) -> list[tuple[PluginOutcome, Health]]:
        """Deep-check envs; with ``fix`` rebuild the broken ones."""
        sources = self.discovery.select(self.discover(), names or None, dirs=False)
        return self.maintenance.doctor(sources, self.ensure, fix=fix, progress=progress)

    def remove(self, name: str) -> Removal:
        """Remove a plugin's env (never its source): its pointer, and the env itself unless
        another plugin uses it. Returns a ``Removal``, true if a pointer existed.

        The env it used before its last update (the backup) and other copies of the same
        env go too, so a later install builds afresh: damage in the old env is never reused.
        A plugin directory :meth:`add_plugin_dir` remembered for ``name`` is forgotten.
        """
        return self.maintenance.remove(name)

    def gc(self, *, dry_run: bool = False) -> list[tuple[Path, int, str]]:
        """Remove envs nobody points to, pointers of plugins that are gone, leftovers, backups.

        Returns ``(path, bytes, why)`` for everything removed (or that would be).
        """
        return self.maintenance.gc({s.name for s in self.discover()}, dry_run=dry_run)
