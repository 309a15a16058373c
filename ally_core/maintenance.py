"""Looking after a home: ``status``, ``doctor``, ``remove`` and ``gc``.

None of these builds anything, except ``doctor --fix`` (through the ``ensure`` it is given).
Removing envs goes through the store's share protocol: an env another plugin uses, or that a
build is publishing right now, is never deleted.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Callable, Optional

import attrs

from .discovery import Discovery, PluginSource
from .dispatch import Dispatch
from .envs import Health, Problem
from .failures import FailureMemory
from .keys import KeyMaker
from .manifest import MANIFEST_NAME
from .outcomes import PluginOutcome
from .paths import AllyPaths
from .readiness import Readiness
from .store import EnvStore, store_errors
from .warm_index import LEGACY_NAMES

__all__ = ["Maintenance", "Removal"]

#: ``ensure(name, force=True, progress=...)``: rebuild one plugin (``Host.ensure``).
Ensure = Callable[..., PluginOutcome]


@attrs.frozen
class Removal:
    """What :meth:`Host.remove` did. True when the plugin had an env pointer."""

    name: str
    #: Whether the plugin had an env pointer.
    pointer: bool
    #: Env directories deleted, with the bytes they held.
    deleted: tuple[tuple[Path, int], ...] = ()
    #: Env directories kept because another plugin uses them.
    shared: tuple[Path, ...] = ()
    #: Remembered plugin directories forgotten (their files are untouched).
    forgot: tuple[Path, ...] = ()

    def __bool__(self) -> bool:
        return self.pointer

    @property
    def freed(self) -> int:
        return sum(size for _path, size in self.deleted)


class Maintenance:
    """The inspection and clean-up of one home."""

    def __init__(
        self,
        store: EnvStore,
        discovery: Discovery,
        keys: KeyMaker,
        readiness: Readiness,
        failures: FailureMemory,
        dispatch: Dispatch,
    ) -> None:
        self.store = store
        self.discovery = discovery
        self.keys = keys
        self.readiness = readiness
        self.failures = failures
        self.dispatch = dispatch

    def status(self, sources: Iterable[PluginSource]) -> list[PluginOutcome]:
        """Every plugin's state without building anything (for ``ally list``)."""
        warm, explain = self.readiness.warm, self.readiness.explain
        return [warm(source) or explain(source) for source in sources]

    def doctor(
        self,
        sources: Iterable[PluginSource],
        ensure: Ensure,
        *,
        fix: bool = False,
        progress: Optional[Callable[..., None]] = None,
    ) -> list[tuple[PluginOutcome, Health]]:
        """Deep-check the envs of ``sources``; with ``fix`` rebuild the broken ones."""
        reports = []
        for source in sources:
            outcome = self.readiness.warm(source) or self.readiness.explain(source)
            if outcome.status == "pending":
                health = Health((Problem(outcome.reason),))
            elif outcome.env is None:
                health = Health() if outcome.ready else Health((Problem(outcome.reason, False),))
            else:
                assert outcome.manifest is not None
                spec = self.keys.spec_for(outcome.manifest, source.plugin_dir)
                spec = attrs.evolve(spec, env_dir=outcome.env.path)
                health = self.dispatch.health_check(spec, outcome.env, deep=True)
            if (
                fix
                and not health.ok
                and source.manifest is not None
                and any(p.repairable for p in health.problems)
            ):
                outcome = ensure(source.name, force=True, progress=progress)
                if outcome.ready and outcome.action != "failed":
                    outcome.action = "repaired"
                    outcome.repair_reason = health.describe()
            reports.append((outcome, health))
        return reports

    def remove(self, name: str) -> Removal:
        """Remove a plugin's env (never its source): its pointer, and the env itself unless
        another plugin uses it. Returns a :class:`Removal`, true if a pointer existed.

        The env it used before its last update (the backup) and other copies of the same
        env go too, so a later install builds afresh: damage in the old env is never reused.
        A plugin directory remembered for ``name`` is forgotten.
        """
        from filelock import Timeout

        from .paths import check_plugin_name
        from .store import disk_usage

        check_plugin_name(name, source="argument")
        read = self.discovery.read_source
        forgot = [
            d
            for d in self.discovery.linked_dirs()
            if d.name == name
            or ((source := read(d.parent, d.name)) is not None and source.name == name)
        ]
        self.discovery.forget_plugin_dirs(forgot)
        self.failures.forget(name)
        for record, owner in self._run_records():
            if owner == name:
                record.unlink(missing_ok=True)
        store = self.store
        with store_errors(f"cannot remove the env of {name!r}"):
            envs = [
                env
                for env in (store.pointers().get(name), store.backup(name))
                if env is not None and env.parent == store.store_dir.resolve()
            ]
            fingerprints = {m.fingerprint for e in envs if (m := store.read_marker(e))}
            existed = store.unpublish(name)
            for fingerprint in fingerprints:
                envs += [e.resolve() for e, _m in store.find_all(fingerprint)]
            deleted: list[tuple[Path, int]] = []
            shared: list[Path] = []
            for env in dict.fromkeys(envs):
                env_dir = store.store_dir / env.name
                try:
                    with store.lock(env.name.split("-", 1)[0], timeout=0):
                        if env in set(store.pointers().values()):
                            shared.append(env_dir)
                            continue
                        size = disk_usage(env_dir) if env_dir.is_dir() else 0
                        if store.discard(env_dir, unless_used=True):
                            deleted.append((env_dir, size))
                        elif env_dir.is_dir():
                            shared.append(env_dir)
                except Timeout:
                    continue  # a build of this very env is running: it publishes it anew
        return Removal(name, existed, tuple(deleted), tuple(shared), tuple(forgot))

    def _still_installed(self, name: str) -> bool:
        """Whether the directory ``name``'s env was published for still holds that plugin."""
        origin = self.store.origin(name)
        if origin is None:
            return False
        source = self.discovery.read_source(origin.parent, origin.name)
        if source is None:
            return False
        # A manifest that cannot be read right now is still a plugin there.
        return source.manifest is None or source.manifest.name == name

    def _run_records(self) -> list[tuple[Path, str]]:
        """Each run record of the quick ``ally run`` path, with its plugin's name."""
        from .lean import RUN_DIR

        folder = self.paths.envs_dir / RUN_DIR
        if not folder.is_dir():
            return []
        return [(p, p.name.rpartition(".")[0]) for p in sorted(folder.iterdir()) if p.is_file()]

    def _state_files(self, pattern: str) -> list[Path]:
        state = self.store.paths.state_dir
        return sorted(state.glob(pattern)) if state.is_dir() else []

    @property
    def paths(self) -> AllyPaths:
        return self.store.paths

    def gc(self, plugins: set[str], *, dry_run: bool = False) -> list[tuple[Path, int, str]]:
        """Remove envs nobody points to, pointers of plugins not in ``plugins`` (nor MCP
        servers of a Claude-style plugin), leftovers, backups. Returns ``(path, bytes, why)``
        for everything removed (or that would be)."""
        from filelock import Timeout

        from .mcp_plugins.discovery import pointer_names
        from .mcp_plugins.state import collect_state
        from .store import disk_usage

        store = self.store
        # MCP servers' envs are published under names no plugin.json can take.
        plugins = plugins | pointer_names(self)
        removed = collect_state(self, plugins, dry_run=dry_run)
        with store_errors("gc"):
            linked = self.discovery.linked_dirs()
            gone_dirs = [d for d in linked if not (d / MANIFEST_NAME).is_file()]
            removed += [(d, 0, "remembered plugin directory is gone") for d in gone_dirs]
            if gone_dirs and not dry_run:
                self.discovery.forget_plugin_dirs(gone_dirs)
            for name in sorted(store.pointers()):
                if name in plugins:
                    continue
                if self._still_installed(name):
                    # In a directory this process does not look in (another --plugins-dir,
                    # ALLY_PLUGIN_DIRS of another shell): its env stays.
                    plugins.add(name)
                    continue
                removed.append((store.pointer(name), 0, f"plugin {name!r} is gone"))
                if not dry_run:
                    store.unpublish(name)
            for record, plugin in self._run_records():
                if plugin not in plugins and not plugin.startswith("."):  # .list: no plugin
                    removed.append((record, disk_usage(record), f"plugin {plugin!r} is gone"))
                    if not dry_run:
                        record.unlink(missing_ok=True)
            for backup in self._state_files("*.previous"):
                removed.append((backup, 0, "backup from an update"))
                if not dry_run:
                    backup.unlink()
            for partial in self._state_files(".warm-index.*.tmp"):
                # A write of a warm index (of any Python) killed before its os.replace.
                removed.append((partial, disk_usage(partial), "unfinished warm-index write"))
                if not dry_run:
                    partial.unlink(missing_ok=True)
            for legacy in (f for n in LEGACY_NAMES for f in self._state_files(n)):
                removed.append((legacy, disk_usage(legacy), "warm index of an older ally"))
                if not dry_run:
                    legacy.unlink(missing_ok=True)
            for leftover in store.unfinished(min_age=0):
                removed.append((leftover, disk_usage(leftover), "unfinished build"))
                if not dry_run:
                    store.remove_path(leftover)
            referenced = (
                set(store.pointers().values())
                if not dry_run
                else {p for n, p in store.pointers().items() if n in plugins}
            )
            if store.store_dir.is_dir():
                for env_dir in sorted(store.store_dir.iterdir()):
                    if env_dir.name.startswith(".") or env_dir.resolve() in referenced:
                        continue
                    if any(env_dir == r[0] for r in removed):
                        continue
                    if dry_run:
                        removed.append((env_dir, disk_usage(env_dir), "no plugin uses it"))
                        continue
                    # Its fingerprint's lock: a build publishing it right now keeps it.
                    try:
                        with store.lock(env_dir.name.split("-", 1)[0], timeout=0):
                            if env_dir.resolve() in set(store.pointers().values()):
                                continue
                            size = disk_usage(env_dir)
                            # A plugin starting to share it (no lock) may point at it after
                            # the look above: discard looks again once it is hidden.
                            if store.discard(env_dir, unless_used=True):
                                removed.append((env_dir, size, "no plugin uses it"))
                    except Timeout:
                        continue
        return removed
