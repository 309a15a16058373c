"""A warm worker on ally's side: one fork server (``server.py`` in the env's interpreter),
its start, its state and its stop; and the thread that starts servers."""

from __future__ import annotations

import json
import logging
import os
import queue
import random
import shutil
import socket
import subprocess
import tempfile
import threading
import time
import weakref
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Optional, Protocol

import attrs

from ..containment import CallScope, open_scope
from ..warm_index import identities, unchanged
from .call import Gone, WorkerProcess, read_answer, start_call
from .plan import Plan, startup_environ

if TYPE_CHECKING:
    from ..outcomes import PluginOutcome

log = logging.getLogger("ally")

SERVER_SCRIPT = Path(__file__).with_name("server.py")


@attrs.frozen
class WorkerOptions:
    """How a host's warm workers behave (``Host(warm_workers=WorkerOptions(...))``)."""

    #: Seconds without a call after which a worker stops.
    idle_timeout: float = 600.0
    #: Resident memory of all workers together (bytes); least recently used ones stop first.
    memory_limit: int = 2 * 1024**3
    #: Seconds a worker may take to import what the tools import.
    start_timeout: float = 120.0
    #: After a build, compile the env's packages the tools import, in the background.
    compile_after_build: bool = True
    #: Preload what calls import lazily too: a worker whose calls imported modules it had
    #: not preloaded is replaced (in the background, up to 3 times) by one that preloads them.
    learn_imports: bool = True


class Owner(Protocol):
    """What a worker needs of its pool."""

    @property
    def options(self) -> WorkerOptions: ...
    def popen(self, argv: list[str], **kw: Any) -> subprocess.Popen[bytes]: ...
    def started(self, worker: Worker) -> None: ...
    def learn(self, worker: Worker, names: Sequence[str]) -> None: ...


class Starter:
    """The thread that starts the servers (the parent-death signal follows the thread that
    started a child: this one lives as long as the pool) and runs ``tick`` now and then."""

    def __init__(self, tick: Callable[[], None], every: float) -> None:
        self.tick, self.every = tick, every
        self.lock = threading.Lock()
        self.jobs: queue.Queue[Optional[Callable[[], None]]] = queue.Queue()
        self.thread: Optional[threading.Thread] = None
        self.closed = False

    def _serve(self) -> None:
        while True:
            try:
                job = self.jobs.get(timeout=self.every)
            except queue.Empty:
                self.tick()
                continue
            if job is None:
                return
            job()

    def popen(self, argv: list[str], **kw: Any) -> subprocess.Popen[bytes]:
        """``subprocess.Popen`` run by this thread, dying with ally (Linux)."""
        with self.lock:
            if self.closed:
                raise RuntimeError("the worker pool is closed")
            if self.thread is None:
                self.thread = threading.Thread(target=self._serve, name="ally-workers", daemon=True)
                self.thread.start()
        done = threading.Event()
        result: list[Any] = []

        def job() -> None:
            try:
                result.append(subprocess.Popen(argv, preexec_fn=CallScope(None).preexec(), **kw))
            except BaseException as exc:  # handed to the caller
                result.append(exc)
            done.set()

        self.jobs.put(job)
        done.wait()
        if isinstance(result[0], BaseException):
            raise result[0]
        proc: subprocess.Popen[bytes] = result[0]
        return proc

    def close(self) -> None:
        with self.lock:
            self.closed = True
            thread = self.thread
        self.jobs.put(None)
        if thread is not None and thread is not threading.current_thread():
            thread.join(5)


class Worker:
    """One fork server and what ally knows about it."""

    def __init__(
        self,
        pool: Owner,
        plugin: PluginOutcome,
        plan: Plan,
        fingerprint: str,
        environ: Mapping[str, str],
        *,
        hold: bool,
        compile: bool,
        learned: tuple[str, ...] = (),
        replaces: Optional[Worker] = None,
        hash_seed: Optional[int] = None,
    ) -> None:
        #: The pool, weakly: a pool dropped without ``close()`` is collected, and its
        #: finalizer stops its workers.
        self._pool = weakref.ref(pool)
        self.start_timeout = pool.options.start_timeout
        self.plan, self.fingerprint = plan, fingerprint
        #: Modules earlier calls imported lazily, preloaded too; the worker this one
        #: replaces once ready (a worker that learned them).
        self.learned, self.replaces = learned, replaces
        #: The server's ``PYTHONHASHSEED``, kept by the workers that replace it: what a
        #: library builds from a set (:mod:`tokenize`'s regular expression) is then built
        #: alike, and what the calls learned about it still holds.
        self.hash_seed = hash_seed or random.SystemRandom().randint(1, 2**32 - 1)
        self.plugin, self.name, self.plugin_dir = plugin, plugin.name, plugin.plugin_dir
        self.environ = startup_environ(environ)
        self.hold, self.compile = hold, compile
        self.state = "starting"
        self.reason = ""
        self.ready = threading.Event()
        self.lock = threading.Lock()
        self.proc: Optional[subprocess.Popen[bytes]] = None
        self.control: Optional[socket.socket] = None
        self.directory: Optional[str] = None
        self.socket_path = ""
        self.pid: Optional[int] = None
        self.rss = 0
        self.calls = 0
        self.inflight = 0
        self.retired = False
        self.last_used = time.monotonic()
        self.imported: tuple[str, ...] = ()
        self.watch: list[list[Any]] = identities(plan.watch_files)
        #: Cgroups made ahead for the server's spares, by token (see :meth:`run`).
        self.aheads: dict[str, CallScope] = {}
        self.ahead_count = 0

    # -- lifecycle -----------------------------------------------------------------------------

    def start(self) -> None:
        """Start the server and wait for its answer (in a thread of its own)."""
        try:
            self._start()
        except Exception as exc:  # any failure means: this plugin's calls spawn
            self._fail(f"cannot start: {exc.__class__.__name__}: {exc}")
        finally:
            self.ready.set()
            pool = self._pool()
            if pool is not None:
                pool.started(self)

    def _start(self) -> None:
        directory = tempfile.mkdtemp(prefix="ally-worker-")  # mode 0700
        self.directory = directory
        path = os.path.join(directory, "s")
        if len(path.encode()) > 100:  # sun_path is 104-108 bytes
            shutil.rmtree(directory, ignore_errors=True)
            directory = tempfile.mkdtemp(prefix="ally-worker-", dir="/tmp")
            self.directory, path = directory, os.path.join(directory, "s")
        self.socket_path = path
        ours, theirs = socket.socketpair()
        self.control = ours
        with open(os.path.join(directory, "log"), "wb") as log_file:
            argv = [self.plan.python, str(SERVER_SCRIPT), "serve", str(theirs.fileno())]
            try:
                self.proc = self._owner().popen(
                    argv,
                    cwd=str(self.plugin_dir),
                    env={"PYTHONHASHSEED": str(self.hash_seed), **self.environ},
                    stdin=subprocess.DEVNULL,
                    stdout=log_file,
                    stderr=log_file,
                    pass_fds=(theirs.fileno(),),
                    start_new_session=True,
                )
            finally:
                theirs.close()
        spec = {
            "plugin_dir": str(self.plugin_dir),
            "scripts": list(self.plan.scripts),
            "modules": list(self.plan.modules),
            "socket": path,
            "compile": self.compile,
            "learned": list(self.learned),
        }
        ours.sendall(json.dumps(spec).encode() + b"\n")
        ours.settimeout(self.start_timeout)
        answer = read_answer(ours)
        ours.settimeout(None)
        if answer is None:
            raise RuntimeError(f"the server exited: {self._log_tail() or 'no output'}")
        if not answer.get("ok"):
            self._fail(str(answer.get("reason") or "refused"))
            return
        with self.lock:
            if self.state != "starting":  # stopped meanwhile
                return
            self.pid = int(answer["pid"])
            self.rss = int(answer.get("rss") or 0)
            self.imported = tuple(answer.get("imported") or ())
            sites = [str(d) for d in answer.get("site") or ()]
            self.watch = identities([*self.plan.watch_files, *sites])
            self.state = "ready"
        log.debug(
            "%s: warm worker %d ready (%d modules, %.0f MB): %s",
            self.name,
            self.pid,
            int(answer.get("modules") or 0),
            self.rss / 1e6,
            ", ".join(self.imported) or "nothing to preload",
        )

    def _log_tail(self) -> str:
        if self.directory is None:
            return ""
        try:
            text = Path(self.directory, "log").read_text("utf-8", "replace")
        except OSError:
            return ""
        return " | ".join(line for line in text.strip().splitlines()[-3:])

    def _fail(self, reason: str) -> None:
        log.debug("%s: no warm worker: %s", self.name, reason)
        self.stop(reason, state="failed")

    def stop(self, reason: str = "", *, state: str = "stopped") -> None:
        """Stop the server (its running calls die with it) and remove its directory."""
        with self.lock:
            if self.state in ("stopped", "failed"):
                return
            self.state, self.reason = state, reason
            control, proc, directory = self.control, self.proc, self.directory
            self.control = None
        if reason and state == "stopped":
            log.debug("%s: warm worker stopped: %s", self.name, reason)
        if control is not None:
            try:
                control.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            control.close()
        if proc is not None:
            try:
                proc.wait(timeout=2)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if directory is not None:
            shutil.rmtree(directory, ignore_errors=True)
        with self.lock:
            aheads = list(self.aheads.values())
            self.aheads.clear()
        for made in aheads:  # the server and its spare are gone: kill what is left, remove
            made.close()
        self.ready.set()

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def changed(self) -> bool:
        """Whether a watched file (plugin.json, a tool script, site-packages) changed."""
        return not unchanged(self.watch)

    # -- calls ---------------------------------------------------------------------------------

    def run(
        self, argv: list[str], cwd: Path, environ: Mapping[str, str], scope: CallScope
    ) -> WorkerProcess:
        ahead = self._make_ahead() if scope.contained else None
        try:
            proc, answer = start_call(
                self.socket_path,
                argv,
                cwd,
                environ,
                scope.procs_fd,
                self.release,
                _fd_and_token(ahead),
            )
        except Gone:
            if ahead is not None:
                self._close_ahead(ahead[0])
            raise
        for token in answer.get("discarded") or ():
            self._close_ahead(str(token))
        joined = answer.get("ahead")
        if joined is not None:
            # The process has been in a cgroup made ahead since it was forked: that one
            # becomes the call's.
            with self.lock:
                made = self.aheads.pop(str(joined), None)
            if made is None or not made.contained:
                proc.kill()
                proc.wait()
                raise Gone(f"the call's process is in an unknown cgroup ({joined})")
            scope.adopt(made)
        with self.lock:
            self.calls += 1
        return proc

    def _make_ahead(self) -> Optional[tuple[str, CallScope]]:
        """A cgroup for a later call of this worker, which its next spare joins when it is
        forked (moving a process into a cgroup can wait for the kernel: not on a call's path)."""
        made = open_scope()
        if not made.contained:
            made.close()
            return None
        with self.lock:
            if self.state != "ready":
                made.close()
                return None
            self.ahead_count += 1
            token = str(self.ahead_count)
            self.aheads[token] = made
        return token, made

    def _close_ahead(self, token: str) -> None:
        with self.lock:
            made = self.aheads.pop(token, None)
        if made is not None:
            made.close()

    def release(self, learned: Sequence[str] = ()) -> None:
        with self.lock:
            self.inflight -= 1
            self.last_used = time.monotonic()
            retire = self.retired and self.inflight == 0
        if retire:
            self.stop("replaced")
        elif learned:
            pool = self._pool()
            if pool is not None:
                pool.learn(self, learned)

    def _owner(self) -> Owner:
        pool = self._pool()
        if pool is None:
            raise RuntimeError("the worker pool was dropped")
        return pool


def _fd_and_token(ahead: Optional[tuple[str, CallScope]]) -> Optional[tuple[int, str]]:
    if ahead is None or ahead[1].procs_fd is None:
        return None
    return ahead[1].procs_fd, ahead[0]
