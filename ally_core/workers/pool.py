"""Warm workers on ally's side: one fork server per plugin, a process handle per call.

A :class:`WorkerPool` belongs to one :class:`~ally_core.Host` (``Host(warm_workers=True)``).
For a call of a Python tool it hands :func:`ally_core.tools.run_tool` a
:class:`WorkerProcess` instead of a :class:`subprocess.Popen`: a child forked by the plugin's
server (``server.py``), with the call's pipes, in the call's session and cgroup. Everything
after that — timeout, cancel, group kill, cgroup kill, forms, reply parsing — is the spawn's
code path. Whenever a call cannot go through a worker, :meth:`WorkerPool.launch` returns
``None`` and logs why (``ally`` logger, debug level); the call is then spawned as always.

The parts: :mod:`.plan` (which calls a worker can run), :mod:`.worker` (one server),
:mod:`.call` (one call), :mod:`.compiling` (a fresh env's bytecode without a worker).
"""

from __future__ import annotations

import logging
import subprocess
import threading
import time
import weakref
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, Optional

import attrs

from ..containment import CallScope
from ..warm_index import unchanged
from .call import Gone, WorkerProcess
from .compiling import BackgroundCompile
from .plan import Plan, fingerprint, plan_for, startup_environ, supported, target
from .worker import Starter, Worker, WorkerOptions

if TYPE_CHECKING:
    from ..manifest import Tool
    from ..outcomes import PluginOutcome

__all__ = ["WorkerInfo", "WorkerOptions", "WorkerPool", "WorkerProcess"]

log = logging.getLogger("ally")

#: How many times a plugin's worker is replaced to preload what its calls imported.
LEARN_ROUNDS = 3


@attrs.frozen
class WorkerInfo:
    """One worker as :meth:`WorkerPool.info` shows it."""

    plugin: str
    #: ``"starting"``, ``"ready"``, ``"failed"`` or ``"stopped"``.
    state: str
    pid: Optional[int] = None
    #: Why it failed or stopped.
    reason: str = ""
    rss: int = 0
    calls: int = 0
    imported: tuple[str, ...] = ()


class WorkerPool:
    """The warm workers of one host. Thread-safe; :meth:`close` stops them all."""

    def __init__(
        self, options: WorkerOptions | None = None, *, pass_env: Sequence[str] = ()
    ) -> None:
        self.options = options or WorkerOptions()
        #: The host's ``pass_env``: workers started before any call get the calls' environment.
        self.pass_env = tuple(pass_env)
        self._lock = threading.Lock()
        self._workers: dict[str, Worker] = {}
        #: plugin dir -> (fingerprint, watched identities, reason) of a worker that failed.
        self._failed: dict[str, tuple[str, list[list[Any]], str]] = {}
        #: plugin dir -> the background compile of a fresh env (until its imports are done),
        #: and every compile started (stopped with the pool).
        self._compiling: dict[str, BackgroundCompile] = {}
        self._compiles: list[BackgroundCompile] = []
        #: plugin dir -> the worker starting to replace the current one (learned imports),
        #: and how many times that happened.
        self._candidates: dict[str, Worker] = {}
        self._rounds: dict[str, int] = {}
        self._closed = False
        every = max(0.05, min(30.0, self.options.idle_timeout / 4))
        stop_idle = weakref.WeakMethod(self._stop_idle)  # the thread must not keep the pool

        def tick() -> None:
            method = stop_idle()
            if method is not None:
                method()

        self._starter = Starter(tick, every)
        self._finalizer = weakref.finalize(self, _close_all, self._workers, self._starter)

    # -- what workers ask of their pool -----------------------------------------------------

    def popen(self, argv: list[str], **kw: Any) -> subprocess.Popen[bytes]:
        """``subprocess.Popen`` run by the pool's thread (so that it dies with ally)."""
        return self._starter.popen(argv, **kw)

    def _stop_idle(self) -> None:
        now = time.monotonic()
        with self._lock:
            idle = [
                w
                for w in self._workers.values()
                if w.state == "ready"
                and w.inflight == 0
                and now - w.last_used > self.options.idle_timeout
            ]
            for worker in idle:
                self._workers.pop(str(worker.plugin_dir), None)
        for worker in idle:
            worker.stop(f"idle for {self.options.idle_timeout:g} s")

    # -- calls -----------------------------------------------------------------------------

    def launch(
        self,
        plugin: PluginOutcome,
        tool: Tool,
        argv: list[str],
        environ: Mapping[str, str],
        scope: CallScope,
    ) -> Optional[WorkerProcess]:
        """A process of the call from the plugin's worker, or ``None``: spawn it (the reason
        is logged at debug level)."""
        key = str(plugin.plugin_dir)
        compiling = self._compiling.get(key)
        if compiling is not None:
            # A fresh env's bytecode is being written: wait rather than compile it twice.
            compiling.imported.wait(self.options.start_timeout)
        reason, worker = self._worker_for(plugin, argv, environ)
        if worker is None:
            log.debug("%s: tool %r is spawned: %s", plugin.name, tool.name, reason)
            return None
        try:
            return worker.run(argv, plugin.plugin_dir, environ, scope)
        except Gone as exc:
            worker.release()
            with self._lock:
                if self._workers.get(key) is worker:
                    del self._workers[key]
            worker.stop(f"lost: {exc}")
            log.debug(
                "%s: tool %r is spawned: its worker was lost (%s)", plugin.name, tool.name, exc
            )
            return None

    def _worker_for(
        self, plugin: PluginOutcome, argv: list[str], environ: Mapping[str, str]
    ) -> tuple[str, Optional[Worker]]:
        if self._closed:
            return "the host is closed", None
        if not supported():
            return "warm workers need a POSIX system", None
        manifest = plugin.manifest
        if manifest is not None and manifest.extra.get("warm") is False:
            return 'the plugin says "warm": false', None
        plan, reason = plan_for(plugin)
        if plan is None:
            return reason, None
        found = target(plugin.plugin_dir, argv[1:]) if argv[0] == plan.python else None
        if found is None or found[1] not in (*plan.scripts, *plan.modules):
            return "the command is not the env's python running a script or module", None
        assert plugin.env is not None
        wanted = fingerprint(plan, str(plugin.env.path), startup_environ(environ))
        key = str(plugin.plugin_dir)
        stale: Optional[Worker] = None
        with self._lock:
            worker = self._workers.get(key)
            if worker is not None and (
                worker.fingerprint != wanted
                or worker.changed()
                or (worker.state == "ready" and not worker.alive())
            ):
                stale = worker
                del self._workers[key]
                worker = None
            if stale is not None:
                self._rounds.pop(key, None)
            if worker is None:
                failed = self._failed.get(key)
                if failed is not None and failed[0] == wanted and unchanged(failed[1]):
                    return f"no warm worker: {failed[2]}", None
                self._failed.pop(key, None)
                worker = Worker(self, plugin, plan, wanted, environ, hold=False, compile=False)
                self._workers[key] = worker
                starting = True
            else:
                starting = False
        if stale is not None:
            self._retire(stale, "its env, files or environment changed")
        if starting:
            threading.Thread(target=worker.start, name="ally-worker-start", daemon=True).start()
            if not worker.hold:
                return "its warm worker is starting", None
        if worker.hold:
            worker.ready.wait(self.options.start_timeout)
        with worker.lock:
            if worker.state == "ready":
                worker.inflight += 1
                return "", worker
            why = f" ({worker.reason})" if worker.reason else ""
            return f"its warm worker is {worker.state}{why}", None

    def _retire(self, worker: Worker, reason: str) -> None:
        with worker.lock:
            worker.retired = True
            busy = worker.inflight > 0
        if not busy:
            worker.stop(reason)

    def learn(self, worker: Worker, names: Sequence[str]) -> None:
        """A call of ``worker`` imported ``names`` itself: start a worker preloading them too,
        which takes over once ready (calls go on meanwhile)."""
        if not self.options.learn_imports:
            return
        new = sorted(set(names) - set(worker.learned))
        if not new:
            return
        key = str(worker.plugin_dir)
        with self._lock:
            rounds = self._rounds.get(key, 0)
            if (
                self._closed
                or self._workers.get(key) is not worker
                or worker.state != "ready"
                or key in self._candidates
                or rounds >= LEARN_ROUNDS
            ):
                return
            self._rounds[key] = rounds + 1
            candidate = Worker(
                self,
                worker.plugin,
                worker.plan,
                worker.fingerprint,
                worker.environ,
                hold=False,
                compile=False,
                learned=(*worker.learned, *new),
                replaces=worker,
                hash_seed=worker.hash_seed,
            )
            self._candidates[key] = candidate
        log.debug("%s: a worker preloading %d more modules starts", worker.name, len(new))
        threading.Thread(target=candidate.start, name="ally-worker-start", daemon=True).start()

    def started(self, worker: Worker) -> None:
        """A worker answered (or failed): remember a failure, keep the memory limit."""
        key = str(worker.plugin_dir)
        old = worker.replaces
        if old is not None:  # a worker that learned: take over, or give up learning
            with self._lock:
                if self._candidates.get(key) is worker:
                    del self._candidates[key]
                swap = (
                    worker.state == "ready" and not self._closed and self._workers.get(key) is old
                )
                if swap:
                    self._workers[key] = worker
                elif worker.state == "failed":
                    self._rounds[key] = LEARN_ROUNDS
            if swap:
                self._retire(old, "replaced by a worker preloading what its calls imported")
                self._enforce_memory(worker)
            else:
                worker.stop("not needed any more")
            return
        if worker.state == "failed":
            with self._lock:
                if self._workers.get(key) is worker:
                    del self._workers[key]
                self._failed[key] = (worker.fingerprint, worker.watch, worker.reason)
            return
        if worker.state == "ready":
            self._enforce_memory(worker)

    def _enforce_memory(self, new: Worker) -> None:
        limit = self.options.memory_limit
        stopping: list[Worker] = []
        with self._lock:
            ready = [w for w in self._workers.values() if w.state == "ready"]
            total = sum(w.rss for w in ready)
            for worker in sorted(ready, key=lambda w: w.last_used):
                if total <= limit:
                    break
                if worker is new or worker.inflight:
                    continue
                stopping.append(worker)
                total -= worker.rss
                self._workers.pop(str(worker.plugin_dir), None)
            too_big = total > limit and new.rss > limit
            if too_big:
                self._workers.pop(str(new.plugin_dir), None)
        for worker in stopping:
            worker.stop(f"over the memory limit of {limit / 1e6:.0f} MB (least recently used)")
        if too_big:
            reason = f"it uses {new.rss / 1e6:.0f} MB, over the limit of {limit / 1e6:.0f} MB"
            new.stop(reason, state="failed")
            with self._lock:
                self._failed[str(new.plugin_dir)] = (new.fingerprint, new.watch, reason)

    # -- host API --------------------------------------------------------------------------

    def start(
        self, plugin: PluginOutcome, *, environ: Mapping[str, str] | None = None, wait: bool = True
    ) -> WorkerInfo:
        """Start ``plugin``'s worker now (calls wait for it instead of spawning); with ``wait``,
        return once it is ready or has failed."""
        return self._start(plugin, environ=environ, wait=wait, compile=False)

    def _start(
        self,
        plugin: PluginOutcome,
        *,
        environ: Mapping[str, str] | None,
        wait: bool,
        compile: bool,
    ) -> WorkerInfo:
        from ..tools import tool_environ

        if environ is None:
            environ = tool_environ(
                plugin.env,
                pass_env=self.pass_env,
                plugin_name=plugin.name,
                plugin_dir=plugin.plugin_dir,
            )
        plan, reason = plan_for(plugin)
        manifest = plugin.manifest
        if manifest is not None and manifest.extra.get("warm") is False:
            reason, plan = 'the plugin says "warm": false', None
        if self._closed or not supported() or plan is None or plugin.env is None:
            return WorkerInfo(plugin.name, "failed", reason=reason or "not supported here")
        wanted = fingerprint(plan, str(plugin.env.path), startup_environ(environ))
        key = str(plugin.plugin_dir)
        old: Optional[Worker] = None
        with self._lock:
            worker = self._workers.get(key)
            if worker is not None and worker.fingerprint == wanted and not worker.changed():
                worker.hold = True  # calls wait for it from now on
                fresh = False
            else:
                old = self._workers.pop(key, None)
                self._rounds.pop(key, None)
                self._failed.pop(key, None)
                worker = Worker(self, plugin, plan, wanted, environ, hold=True, compile=compile)
                self._workers[key] = worker
                fresh = True
        if old is not None:
            self._retire(old, "replaced")
        if fresh:
            threading.Thread(target=worker.start, name="ally-worker-start", daemon=True).start()
        if wait:
            worker.ready.wait(self.options.start_timeout)
        return self._info(worker)

    def after_build(self, plugin: PluginOutcome) -> None:
        """A fresh env: compile in the background what its tools import (a worker's preload
        does that, and forks a compile of those packages); calls wait for the imports."""
        if self._closed or not self.options.compile_after_build:
            return
        plan, _ = plan_for(plugin)
        if plan is None or not supported():
            return
        manifest = plugin.manifest
        if manifest is not None and manifest.extra.get("warm") is not False:
            self._start(plugin, environ=None, wait=False, compile=True)
            return
        self._compile(plugin, plan)

    def _compile(self, plugin: PluginOutcome, plan: Plan) -> None:
        """Import and compile in a process of its own (a plugin without a worker)."""
        from ..tools import tool_environ

        key = str(plugin.plugin_dir)
        environ = tool_environ(
            plugin.env,
            pass_env=self.pass_env,
            plugin_name=plugin.name,
            plugin_dir=plugin.plugin_dir,
        )

        def imported(job: BackgroundCompile) -> None:
            with self._lock:
                if self._compiling.get(key) is job:
                    del self._compiling[key]

        with self._lock:
            if self._closed:
                return
            job = BackgroundCompile(
                self.popen, plugin.name, key, plan, environ, self.options.start_timeout, imported
            )
            job.start()
            self._compiling[key] = job
            self._compiles.append(job)

    def _info(self, worker: Worker) -> WorkerInfo:
        return WorkerInfo(
            worker.name,
            worker.state,
            pid=worker.pid,
            reason=worker.reason,
            rss=worker.rss,
            calls=worker.calls,
            imported=worker.imported,
        )

    def info(self) -> list[WorkerInfo]:
        """The running (and starting) workers."""
        with self._lock:
            workers = list(self._workers.values())
        return [self._info(w) for w in workers]

    def close(self) -> None:
        """Stop every worker (calls running in them are killed) and the pool thread."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            workers = [*self._workers.values(), *self._candidates.values()]
            self._workers.clear()
            self._candidates.clear()
            compiles = list(self._compiles)
        for worker in workers:
            worker.stop("the host closed")
        for job in compiles:
            job.stop()
        self._starter.close()
        self._finalizer.detach()


def _close_all(workers: dict[str, Worker], starter: Starter) -> None:
    """A pool dropped without close(): its servers stop (they would also see their control
    socket close when this process exits)."""
    for worker in list(workers.values()):
        worker.stop("the pool was dropped")
    starter.close()
