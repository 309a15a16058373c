"""Whether a plugin is ready, and making it so: the warm path, the cold path, and why not.

* :meth:`Readiness.warm`: the outcome when nothing needs building (a few file reads, no
  process), else ``None``;
* :meth:`Readiness.cold`: build (or repair, update, share) the env; a failed rebuild keeps the
  previous env serving the plugin;
* :meth:`Readiness.explain`: the state of a plugin the warm path cannot make ready, judged
  with the current inputs only (for ``ally list``: nothing is built).

One broken plugin never stops the others: every error becomes a blocked outcome.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Sequence
from typing import Any, Callable, Optional

import attrs

from .builder import Builder, Built
from .discovery import PluginSource
from .envs import EnvInfo, EnvSpec, ProgressEvent
from .errors import AllyError, InstallFailed, ManifestError, RuntimeFailed
from .failures import FailureMemory
from .keys import KeyMaker, describe_change, key_of
from .manifest import MANIFEST_NAME, manifest_warnings
from .outcomes import Action, BoundTool, PluginOutcome, ToolRunner
from .process import cancel_token
from .store import EnvStore, Marker
from .text import one_line

__all__ = ["Readiness"]

ProgressCallback = Callable[[ProgressEvent], None]
#: The actions of an outcome for which no env was made.
NOT_BUILT = ("none", "failed")


def _runtime_error(plugin: str, exc: Exception) -> RuntimeFailed:
    """A runtime's bug as the one-line error of its plugin; the original exception, with its
    traceback, stays its ``__cause__`` (``ally --debug`` shows it)."""
    error = RuntimeFailed(f"{plugin}: runtime error: {exc.__class__.__name__}: {exc}")
    error.__cause__ = exc
    return error


def pending(source: PluginSource, reason: str) -> PluginOutcome:
    """The outcome of a plugin whose env is not ready and was not built (yet)."""
    return PluginOutcome(
        source.name, source.plugin_dir, "pending", reason=reason, manifest=source.manifest
    )


def blocked(
    source: PluginSource, error: AllyError, *, reason: str = "", **kw: Any
) -> PluginOutcome:
    """The outcome of a plugin that cannot be made ready, and why (one line)."""
    return PluginOutcome(
        source.name,
        source.plugin_dir,
        "blocked",
        reason=reason or one_line(error, source.name),
        manifest=source.manifest,
        error=error,
        **kw,
    )


class Readiness:
    """Makes plugins ready: decides warm or cold, builds, remembers failures."""

    def __init__(
        self,
        store: EnvStore,
        keys: KeyMaker,
        builder: Builder,
        failures: FailureMemory,
        runner: ToolRunner,
    ) -> None:
        self.store = store
        self.keys = keys
        self.builder = builder
        self.failures = failures
        #: Runs the tools of the outcomes made here (the Host).
        self.runner = runner
        #: Called with each outcome a build made ready (warm workers start one for it).
        self.after_build: Optional[Callable[[PluginOutcome], None]] = None

    # -- outcomes ------------------------------------------------------------------------------

    def ready(self, source: PluginSource, env: Optional[EnvInfo], **kw: Any) -> PluginOutcome:
        """The outcome of a ready plugin, with its tools bound to the runner."""
        manifest = source.manifest
        assert manifest is not None
        outcome = PluginOutcome(
            manifest.name,
            source.plugin_dir,
            "ready",
            manifest=manifest,
            env=env,
            warnings=manifest_warnings(manifest),
            **kw,
        )
        outcome.tools = [BoundTool(self.runner, outcome, tool) for tool in manifest.tools]
        return outcome

    def kept(
        self, source: PluginSource, marker: Marker, failure: str, *, stale: bool, **kw: Any
    ) -> PluginOutcome:
        """Ready on the env published before a rebuild that failed with ``failure``.

        ``stale``: that env was built for other inputs than the plugin's current ones.
        """
        return self.ready(
            source,
            marker.env,
            packages=marker.packages,
            reason=f"{failure} (the previous env is kept and still used)",
            stale=stale,
            **kw,
        )

    # -- loading -------------------------------------------------------------------------------

    def load(
        self, sources: Sequence[PluginSource], progress: ProgressCallback, jobs: int
    ) -> list[PluginOutcome]:
        """One outcome per source: warm where nothing needs building, else built, up to
        ``jobs`` at a time."""
        outcomes = [self.warm(source) for source in sources]
        cold = [source for source, outcome in zip(sources, outcomes) if outcome is None]
        if cold:
            built = iter(self.in_parallel(cold, lambda s: self.make_ready(s, progress), jobs))
            outcomes = [outcome or next(built) for outcome in outcomes]
            again = {id(source) for source in cold}
            for source, outcome in zip(sources, outcomes):
                if id(source) in again and outcome is not None and outcome.ready:
                    # Record what the next process's warm load needs (no process started).
                    self.warm(source)
        return [o for o in outcomes if o is not None]

    def make_ready(
        self,
        source: PluginSource,
        progress: ProgressCallback,
        *,
        force: bool = False,
        upgrade: bool = False,
    ) -> PluginOutcome:
        """:meth:`cold`, then :attr:`after_build` for an env it built, repaired or shared."""
        outcome = self.cold(source, progress, force=force, upgrade=upgrade)
        if self.after_build is not None and outcome.ready and outcome.action not in NOT_BUILT:
            self.after_build(outcome)  # background bytecode compile, warm worker
        return outcome

    # -- the warm path -------------------------------------------------------------------------

    def warm(self, source: PluginSource) -> Optional[PluginOutcome]:
        """The outcome if nothing needs building, else ``None``. Spawns no process."""
        if source.manifest is None:
            assert source.error is not None
            return blocked(source, source.error)
        manifest = source.manifest
        if manifest.runtime is None:
            # No runtime: its tools run plain commands, ready at once.
            return self.ready(source, None)
        try:
            spec, key = self.keys.spec_and_key(source)
        except AllyError as exc:
            return blocked(source, exc)
        except OSError as exc:
            error = ManifestError(
                manifest.name,
                MANIFEST_NAME,
                [f"$.dependencies.file: cannot read: {exc.strerror or exc}"],
            )
            return blocked(source, error)
        except Exception as exc:  # a bug blocks this plugin only
            return blocked(source, _runtime_error(manifest.name, exc))
        current = self.store.current(manifest.name)
        if current is None:
            return None
        marker = current[1]
        try:
            if marker.request_key != key:
                # A rebuild for exactly these inputs failed a moment ago: the previous env
                # keeps serving the plugin (if it still works) until retry_after has passed.
                failure = self.failures.reason(manifest.name, key, recent=True)
                if failure is None or self.builder.cheap_problem(spec, marker) is not None:
                    return None
                return self.kept(source, marker, failure, stale=True)
            if self.builder.cheap_problem(spec, marker) is not None:
                return None
        except AllyError:  # a runtime's health check failed: a cold load says more
            return None
        return self.ready(source, marker.env, packages=marker.packages)

    # -- the cold path -------------------------------------------------------------------------

    def cold(
        self,
        source: PluginSource,
        progress: ProgressCallback,
        *,
        force: bool = False,
        upgrade: bool = False,
    ) -> PluginOutcome:
        """Build what the plugin needs; the outcome says what was done, or why not."""
        manifest = source.manifest
        if manifest is None:
            assert source.error is not None
            return blocked(source, source.error)
        if manifest.runtime is None:
            return self.ready(source, None)
        name = manifest.name
        try:
            spec = self.keys.spec_for(
                manifest, source.plugin_dir, progress=progress, upgrade=upgrade
            )
            inputs = self.keys.request_inputs(spec)
            key = key_of(inputs)
        except AllyError as exc:
            return blocked(source, exc)
        except Exception as exc:  # a bug blocks this plugin only
            return blocked(source, _runtime_error(name, exc))
        current = self.store.current(name)
        # The published env, if it can be used as is: it keeps serving the plugin when a
        # rebuild fails (an update, a reinstall, a changed dependency file).
        previous: Optional[Marker] = None
        repair = ""
        if current is not None:
            env_dir, marker = current
            try:
                problem = self.builder.cheap_problem(attrs.evolve(spec, env_dir=env_dir), marker)
            except AllyError as exc:
                problem = one_line(exc, name)
            previous = marker if problem is None else None
            if not force:
                # The most specific reason first: a vanished interpreter also changes the
                # key when it was chosen by a setting (ALLY_PYTHON).
                repair = problem or (
                    describe_change(marker.inputs, inputs) if marker.request_key != key else ""
                )
        remembered = None if force else self.failures.recent(name, key)
        if remembered is not None:
            if previous is not None:
                return self.kept(source, previous, remembered, stale=True)
            return blocked(source, InstallFailed(remembered))
        try:
            env, marker, action = self.build(spec, key, inputs, force=force, progress=progress)
        except AllyError as exc:
            reason = one_line(exc, name)
            if previous is None or previous.request_key != key:
                # Remembered for these inputs: until they change (or retry_after passes),
                # loads do not build again, and `list` says why.
                self.failures.remember(name, key, reason)
            if previous is not None:
                # The previous env was never unpublished: it keeps serving the plugin.
                stale = previous.request_key != key
                kept = self.kept(source, previous, reason, stale=stale, action="failed")
                progress(ProgressEvent(name, "failed", kept.reason))
                return kept
            progress(ProgressEvent(name, "failed", reason))
            return blocked(source, exc, action="failed", reason=reason)
        self.failures.forget(name)
        done: Action = action
        if upgrade:
            done = "updated"
        elif repair and action == "built":
            done = "repaired"
        return self.ready(source, env, action=done, repair_reason=repair, packages=marker.packages)

    def build(
        self,
        spec: EnvSpec,
        key: str,
        inputs: dict[str, Any],
        *,
        force: bool,
        progress: ProgressCallback,
    ) -> Built:
        """Build (or reuse) the env of ``spec``; any error is an :class:`AllyError`."""
        try:
            return self.builder.build(spec, key, inputs, reuse=not force, progress=progress)
        except AllyError:
            raise
        except Exception as exc:
            # A bug blocks its plugin only (KeyboardInterrupt still propagates).
            raise _runtime_error(spec.plugin_name, exc) from exc

    @staticmethod
    def in_parallel(
        sources: Sequence[PluginSource],
        cold: Callable[[PluginSource], PluginOutcome],
        jobs: int,
    ) -> list[PluginOutcome]:
        """``cold(source)`` for each source, in up to ``jobs`` threads, in order.

        Ctrl-C (or SIGTERM) stops every installer; each build removes its unfinished env.
        """
        from concurrent.futures import ThreadPoolExecutor  # cold loads only

        cancel = threading.Event()

        def build(source: PluginSource) -> PluginOutcome:
            with cancel_token(cancel):
                return cold(source)

        workers = max(1, min(jobs, len(sources)))
        pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="ally-build")
        try:
            futures = [pool.submit(build, source) for source in sources]
            return [future.result() for future in futures]
        except BaseException:
            cancel.set()
            raise
        finally:
            pool.shutdown(wait=True, cancel_futures=True)

    # -- envs no plugin.json declares (MCP servers' envs) ---------------------------------------

    def current_env(self, spec: EnvSpec) -> tuple[Optional[Marker], str]:
        """The marker of the env published as ``spec.plugin_name``, if it can be used as is;
        else ``None`` and why not. Starts no process: the checks of a plugin's warm load.

        For envs made with :meth:`ensure_env` (``ally_core.mcp_plugins`` gives each MCP server
        one).
        """
        current = self.store.current(spec.plugin_name)
        if current is None:
            return None, "not installed"
        env_dir, marker = current
        problem = self.builder.cheap_problem(attrs.evolve(spec, env_dir=env_dir), marker)
        if problem is None and marker.request_key != self.keys.request_key(spec):
            problem = "dependencies changed"
        return (marker, "") if problem is None else (None, problem)

    def ensure_env(
        self, spec: EnvSpec, *, force: bool = False, progress: ProgressCallback
    ) -> tuple[Marker, str]:
        """Make the env of ``spec`` ready and publish it as ``spec.plugin_name``.

        What a cold load does for a plugin, for an env described by a spec alone: the same
        store, fingerprint lock, sharing of identical envs, health check and marker-last
        publish. ``force`` builds a new env beside the current one (with
        ``spec.options.upgrade`` for newest versions); the current one stays published if the
        build fails. Returns the env's marker and what was done: ``"none"`` (it was ready),
        ``"built"``, ``"shared"`` or ``"repaired"``. Raises :class:`AllyError`.
        """
        repair = ""
        if not force:
            marker, repair = self.current_env(spec)
            if marker is not None:
                return marker, "none"
            repair = "" if repair == "not installed" else repair
        inputs = self.keys.request_inputs(spec)
        _env, marker, action = self.build(
            spec, key_of(inputs), inputs, force=force, progress=progress
        )
        return marker, "repaired" if repair and action == "built" else action

    # -- why a plugin is not ready -------------------------------------------------------------

    def explain(self, source: PluginSource) -> PluginOutcome:
        """The state of a plugin :meth:`warm` cannot make ready, and why, judged with the
        current inputs only (no process; nothing is built)."""
        manifest = source.manifest
        assert manifest is not None
        try:
            spec, key = self.keys.spec_and_key(source)
        except Exception as exc:  # warm reported it already; here it is only a reason
            return pending(source, one_line(exc, source.name))
        failure = self.failures.reason(manifest.name, key, recent=False)
        current = self.store.current(manifest.name)
        if current is None:
            if failure is not None:
                return pending(source, f"install failed: {failure}")
            if os.path.lexists(self.store.pointer(manifest.name)):
                return pending(source, "needs rebuild: its env is missing or incomplete")
            return pending(source, "not installed")
        marker = current[1]
        try:
            problem = self.builder.cheap_problem(spec, marker)
        except AllyError as exc:
            problem = one_line(exc, source.name)
        if problem is not None:
            if failure is not None:
                return pending(source, f"install failed: {failure}")
            return pending(source, f"needs rebuild: {problem}")
        if failure is not None:
            # What a load does within retry_after, and again after a retry that fails.
            return self.kept(source, marker, failure, stale=True)
        inputs = self.keys.inputs_of(source, spec)
        try:
            inputs = inputs if inputs is not None else self.keys.request_inputs(spec)
        except Exception as exc:  # a runtime's bug: the state is still known
            return pending(source, f"needs rebuild ({one_line(exc, source.name)})")
        return pending(source, f"needs rebuild: {describe_change(marker.inputs, inputs)}")
