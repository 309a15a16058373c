"""Warm workers on ally's side: one fork server per plugin, a process handle per call.

A :class:`WorkerPool` belongs to one :class:`~ally_core.Host` (``Host(warm_workers=True)``).
For a call of a Python tool it hands :func:`ally_core.tools.run_tool` a
:class:`WorkerProcess` instead of a :class:`subprocess.Popen`: a child forked by the plugin's
server (``server.py``), with the call's pipes, in the call's session and cgroup. Everything
after that — timeout, cancel, group kill, cgroup kill, forms, reply parsing — is the spawn's
code path. Whenever a call cannot go through a worker, :meth:`WorkerPool.launch` returns
``None`` and logs why (``ally`` logger, debug level); the call is then spawned as always.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import queue
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
import weakref
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, Callable, Optional

import attrs

from ..containment import CallScope
from ..paths import contained_path
from ..warm_index import identities, unchanged

if TYPE_CHECKING:
    from ..manifest import Tool
    from ..outcomes import PluginOutcome

__all__ = ["WorkerInfo", "WorkerOptions", "WorkerPool", "WorkerProcess"]

log = logging.getLogger("ally")

SERVER_SCRIPT = Path(__file__).with_name("server.py")
#: Call environment variables that differ per call and never reach a worker's startup.
PER_CALL_PREFIX = "PLUGIN_CONFIG_"
#: How many times a plugin's worker is replaced to preload what its calls imported.
LEARN_ROUNDS = 3


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


@attrs.frozen
class _Plan:
    """What a plugin's Python tools run: scripts (absolute) and ``-m`` modules."""

    python: str
    scripts: tuple[str, ...]
    modules: tuple[str, ...]
    watch_files: tuple[str, ...]


class _Gone(Exception):
    """The worker cannot take the call (it died or refused)."""


def _supported() -> bool:
    return os.name == "posix" and hasattr(socket, "AF_UNIX") and hasattr(socket, "send_fds")


def _plan(plugin: PluginOutcome) -> tuple[Optional[_Plan], str]:
    """The plugin's Python tools, or why none of its calls can use a worker."""
    env, manifest = plugin.env, plugin.manifest
    if manifest is None or env is None:
        return None, "the plugin has no env"
    if env.interpreter.kind != "python" or "python" not in env.commands:
        return None, f"its runtime is {env.interpreter.kind or 'not python'} (tools are spawned)"
    python = env.commands["python"]
    scripts: list[str] = []
    modules: list[str] = []
    for tool in manifest.tools:
        if env.commands.get(tool.command) != python:
            continue
        target = _target(plugin.plugin_dir, tool.args)
        if target is None:
            continue
        (modules if target[0] == "-m" else scripts).append(target[1])
    if not scripts and not modules:
        return None, "no tool runs a script or module with the env's python"
    watch = [str(plugin.plugin_dir / "plugin.json"), *scripts]
    return _Plan(python, tuple(scripts), tuple(modules), tuple(watch)), ""


def _target(plugin_dir: Path, args: Sequence[str]) -> Optional[tuple[str, str]]:
    """``("-m", module)`` or ``("script", absolute path)`` for args a worker can run."""
    if len(args) >= 2 and args[0] == "-m" and args[1] and not args[1].startswith("-"):
        return "-m", args[1]
    if args and not args[0].startswith("-"):
        path = contained_path(plugin_dir, args[0])
        if path is not None and path.is_file():
            return "script", str(path)
    return None


def _startup_environ(environ: Mapping[str, str]) -> dict[str, str]:
    return {k: v for k, v in environ.items() if not k.startswith(PER_CALL_PREFIX)}


def _fingerprint(plan: _Plan, env_path: str, environ: Mapping[str, str]) -> str:
    data = [plan.python, plan.scripts, plan.modules, env_path, sorted(environ.items())]
    return hashlib.sha256(json.dumps(data).encode()).hexdigest()


class WorkerProcess:
    """A tool process forked by a warm worker, with what ally uses of a ``Popen``."""

    def __init__(
        self,
        args: list[str],
        pid: int,
        conn: socket.socket,
        reader: IO[bytes],
        stdin: IO[bytes],
        stdout: IO[bytes],
        stderr: IO[bytes],
        on_exit: Callable[[list[str]], None],
    ) -> None:
        self.args, self.pid = args, pid
        self.stdin: Optional[IO[bytes]] = stdin
        self.stdout: Optional[IO[bytes]] = stdout
        self.stderr: Optional[IO[bytes]] = stderr
        self.returncode: Optional[int] = None
        self._conn, self._reader, self._on_exit = conn, reader, on_exit
        self._done = threading.Event()
        threading.Thread(target=self._watch, name=f"ally-worker-call-{pid}", daemon=True).start()

    def _watch(self) -> None:
        status: Optional[int] = None
        learned: list[str] = []
        try:
            line = self._reader.readline()
            message = json.loads(line) if line else {}
            value = message.get("status")
            status = value if isinstance(value, int) else None
            names = message.get("learned")
            learned = [n for n in names if isinstance(n, str)] if isinstance(names, list) else []
        except (OSError, ValueError, AttributeError):
            status = None
        if status is None:
            # The worker died: on Linux its children die with it (parent-death signal);
            # elsewhere the call's group is ended here.
            try:
                os.killpg(self.pid, signal.SIGKILL)
            except OSError:
                pass
            status = -signal.SIGKILL
        self.returncode = status
        for closing in (self._reader, self._conn):
            try:
                closing.close()
            except OSError:
                pass
        self._done.set()
        self._on_exit(learned)

    def poll(self) -> Optional[int]:
        return self.returncode if self._done.is_set() else None

    def kill(self) -> None:
        try:
            os.killpg(self.pid, signal.SIGKILL)
        except OSError:
            pass

    def wait(self, timeout: Optional[float] = None) -> int:
        if not self._done.wait(timeout):
            raise subprocess.TimeoutExpired(self.args, timeout or 0.0)
        assert self.returncode is not None
        return self.returncode


class _Worker:
    """One fork server and what ally knows about it."""

    def __init__(
        self,
        pool: WorkerPool,
        plugin: PluginOutcome,
        plan: _Plan,
        fingerprint: str,
        environ: Mapping[str, str],
        *,
        hold: bool,
        compile: bool,
        learned: tuple[str, ...] = (),
        replaces: Optional[_Worker] = None,
    ) -> None:
        self.pool, self.plan, self.fingerprint = pool, plan, fingerprint
        #: Modules earlier calls imported lazily, preloaded too; the worker this one
        #: replaces once ready (a worker that learned them).
        self.learned, self.replaces = learned, replaces
        self.plugin, self.name, self.plugin_dir = plugin, plugin.name, plugin.plugin_dir
        self.environ = _startup_environ(environ)
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

    # -- lifecycle -----------------------------------------------------------------------------

    def start(self) -> None:
        """Start the server and wait for its answer (in a thread of its own)."""
        try:
            self._start()
        except Exception as exc:  # any failure means: this plugin's calls spawn
            self._fail(f"cannot start: {exc.__class__.__name__}: {exc}")
        finally:
            self.ready.set()
            self.pool._started(self)

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
                self.proc = self.pool._popen(
                    argv,
                    cwd=str(self.plugin_dir),
                    env=self.environ,
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
        ours.settimeout(self.pool.options.start_timeout)
        answer = _read_answer(ours)
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
        stdin_r, stdin_w = os.pipe()
        out_r, out_w = os.pipe()
        err_r, err_w = os.pipe()
        ours = [stdin_w, out_r, err_r]
        conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            conn.settimeout(10)
            try:
                conn.connect(self.socket_path)
                procs_fd = scope.procs_fd
                body = json.dumps(
                    {
                        "argv": argv,
                        "cwd": str(cwd),
                        "env": dict(environ),
                        "cgroup": procs_fd is not None,
                    }
                ).encode()
                message = len(body).to_bytes(4, "big") + body
                fds = [stdin_r, out_w, err_w, *([procs_fd] if procs_fd is not None else [])]
                sent = socket.send_fds(conn, [message], fds)
                if sent < len(message):
                    conn.sendall(message[sent:])
            finally:
                for fd in (stdin_r, out_w, err_w):
                    os.close(fd)
            reader = conn.makefile("rb")
            line = reader.readline()
            answer = json.loads(line) if line else {}
            if not isinstance(answer.get("pid"), int):
                reader.close()
                raise _Gone(str(answer.get("error") or "the worker closed the connection"))
            conn.settimeout(None)
        except (OSError, ValueError) as exc:
            conn.close()
            for fd in ours:
                os.close(fd)
            raise _Gone(f"{exc.__class__.__name__}: {exc}") from None
        except _Gone:
            conn.close()
            for fd in ours:
                os.close(fd)
            raise
        with self.lock:
            self.calls += 1
        return WorkerProcess(
            argv,
            answer["pid"],
            conn,
            reader,
            os.fdopen(stdin_w, "wb"),
            os.fdopen(out_r, "rb"),
            os.fdopen(err_r, "rb"),
            self.release,
        )

    def release(self, learned: Sequence[str] = ()) -> None:
        with self.lock:
            self.inflight -= 1
            self.last_used = time.monotonic()
            retire = self.retired and self.inflight == 0
        if retire:
            self.stop("replaced")
        elif learned:
            self.pool._learn(self, learned)


def _read_answer(sock: socket.socket) -> Optional[dict[str, Any]]:
    data = b""
    try:
        while not data.endswith(b"\n"):
            chunk = sock.recv(65536)
            if not chunk:
                return None
            data += chunk
        value = json.loads(data)
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) else None


class WorkerPool:
    """The warm workers of one host. Thread-safe; :meth:`close` stops them all."""

    def __init__(
        self, options: WorkerOptions | None = None, *, pass_env: Sequence[str] = ()
    ) -> None:
        self.options = options or WorkerOptions()
        #: The host's ``pass_env``: workers started before any call get the calls' environment.
        self.pass_env = tuple(pass_env)
        self._lock = threading.Lock()
        self._workers: dict[str, _Worker] = {}
        #: plugin dir -> (fingerprint, watched identities, reason) of a worker that failed.
        self._failed: dict[str, tuple[str, list[list[Any]], str]] = {}
        #: plugin dir -> set once the background compile of a fresh env has imported.
        self._compiling: dict[str, threading.Event] = {}
        self._compilers: list[subprocess.Popen[bytes]] = []
        #: plugin dir -> the worker starting to replace the current one (learned imports),
        #: and how many times that happened.
        self._candidates: dict[str, _Worker] = {}
        self._rounds: dict[str, int] = {}
        self._jobs: queue.Queue[Optional[Callable[[], None]]] = queue.Queue()
        self._closed = False
        self._thread: Optional[threading.Thread] = None
        self._finalizer = weakref.finalize(self, _close_all, self._workers, self._jobs)

    # -- the pool thread -------------------------------------------------------------------

    def _ensure_thread(self) -> None:
        with self._lock:
            if self._thread is None and not self._closed:
                self._thread = threading.Thread(
                    target=self._serve_jobs, name="ally-workers", daemon=True
                )
                self._thread.start()

    def _serve_jobs(self) -> None:
        """Start servers (the parent-death signal follows the thread that started a child:
        this one lives as long as the pool) and stop idle workers."""
        tick = max(0.05, min(30.0, self.options.idle_timeout / 4))
        while True:
            try:
                job = self._jobs.get(timeout=tick)
            except queue.Empty:
                self._stop_idle()
                continue
            if job is None:
                return
            job()

    def _popen(self, argv: list[str], **kw: Any) -> subprocess.Popen[bytes]:
        """``subprocess.Popen`` run by the pool thread, dying with ally (Linux)."""
        self._ensure_thread()
        done = threading.Event()
        result: list[Any] = []

        def job() -> None:
            try:
                result.append(subprocess.Popen(argv, preexec_fn=CallScope(None).preexec(), **kw))
            except BaseException as exc:  # handed to the caller
                result.append(exc)
            done.set()

        if self._closed:
            raise RuntimeError("the worker pool is closed")
        self._jobs.put(job)
        done.wait()
        if isinstance(result[0], BaseException):
            raise result[0]
        proc: subprocess.Popen[bytes] = result[0]
        return proc

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
            compiling.wait(self.options.start_timeout)
        reason, worker = self._worker_for(plugin, argv, environ)
        if worker is None:
            log.debug("%s: tool %r is spawned: %s", plugin.name, tool.name, reason)
            return None
        try:
            return worker.run(argv, plugin.plugin_dir, environ, scope)
        except _Gone as exc:
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
    ) -> tuple[str, Optional[_Worker]]:
        if self._closed:
            return "the host is closed", None
        if not _supported():
            return "warm workers need a POSIX system", None
        manifest = plugin.manifest
        if manifest is not None and manifest.extra.get("warm") is False:
            return 'the plugin says "warm": false', None
        plan, reason = _plan(plugin)
        if plan is None:
            return reason, None
        target = _target(plugin.plugin_dir, argv[1:]) if argv[0] == plan.python else None
        if target is None or target[1] not in (*plan.scripts, *plan.modules):
            return "the command is not the env's python running a script or module", None
        assert plugin.env is not None
        fingerprint = _fingerprint(plan, str(plugin.env.path), _startup_environ(environ))
        key = str(plugin.plugin_dir)
        stale: Optional[_Worker] = None
        with self._lock:
            worker = self._workers.get(key)
            if worker is not None and (
                worker.fingerprint != fingerprint
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
                if failed is not None and failed[0] == fingerprint and unchanged(failed[1]):
                    return f"no warm worker: {failed[2]}", None
                self._failed.pop(key, None)
                worker = _Worker(
                    self, plugin, plan, fingerprint, environ, hold=False, compile=False
                )
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

    def _retire(self, worker: _Worker, reason: str) -> None:
        with worker.lock:
            worker.retired = True
            busy = worker.inflight > 0
        if not busy:
            worker.stop(reason)

    def _learn(self, worker: _Worker, names: Sequence[str]) -> None:
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
            candidate = _Worker(
                self,
                worker.plugin,
                worker.plan,
                worker.fingerprint,
                worker.environ,
                hold=False,
                compile=False,
                learned=(*worker.learned, *new),
                replaces=worker,
            )
            self._candidates[key] = candidate
        log.debug("%s: a worker preloading %d more modules starts", worker.name, len(new))
        threading.Thread(target=candidate.start, name="ally-worker-start", daemon=True).start()

    def _started(self, worker: _Worker) -> None:
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

    def _enforce_memory(self, new: _Worker) -> None:
        limit = self.options.memory_limit
        stopping: list[_Worker] = []
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
        plan, reason = _plan(plugin)
        manifest = plugin.manifest
        if manifest is not None and manifest.extra.get("warm") is False:
            reason, plan = 'the plugin says "warm": false', None
        if self._closed or not _supported() or plan is None or plugin.env is None:
            return WorkerInfo(plugin.name, "failed", reason=reason or "not supported here")
        fingerprint = _fingerprint(plan, str(plugin.env.path), _startup_environ(environ))
        key = str(plugin.plugin_dir)
        old: Optional[_Worker] = None
        with self._lock:
            worker = self._workers.get(key)
            if worker is not None and worker.fingerprint == fingerprint and not worker.changed():
                worker.hold = True  # calls wait for it from now on
                fresh = False
            else:
                old = self._workers.pop(key, None)
                self._rounds.pop(key, None)
                self._failed.pop(key, None)
                worker = _Worker(
                    self, plugin, plan, fingerprint, environ, hold=True, compile=compile
                )
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
        plan, _ = _plan(plugin)
        if plan is None or not _supported():
            return
        manifest = plugin.manifest
        if manifest is not None and manifest.extra.get("warm") is not False:
            self._start(plugin, environ=None, wait=False, compile=True)
            return
        self._compile(plugin, plan)

    def _compile(self, plugin: PluginOutcome, plan: _Plan) -> None:
        """Import and compile in a process of its own (a plugin without a worker)."""
        from ..tools import tool_environ

        key = str(plugin.plugin_dir)
        imported = threading.Event()
        environ = tool_environ(
            plugin.env,
            pass_env=self.pass_env,
            plugin_name=plugin.name,
            plugin_dir=plugin.plugin_dir,
        )
        with self._lock:
            self._compiling[key] = imported

        def run() -> None:
            ours, theirs = socket.socketpair()
            try:
                argv = [plan.python, str(SERVER_SCRIPT), "compile", str(theirs.fileno())]
                proc = self._popen(
                    argv,
                    cwd=key,
                    env=environ,
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                    pass_fds=(theirs.fileno(),),
                    start_new_session=True,
                )
                theirs.close()
                with self._lock:
                    self._compilers.append(proc)
                spec = {"plugin_dir": key, "scripts": plan.scripts, "modules": plan.modules}
                ours.sendall(json.dumps(spec).encode() + b"\n")
                ours.settimeout(self.options.start_timeout)
                _read_answer(ours)
            except Exception as exc:  # the calls compile what they import themselves
                log.debug("%s: background compile failed: %s", plugin.name, exc)
            finally:
                ours.close()
                theirs.close()
                with self._lock:
                    if self._compiling.get(key) is imported:
                        del self._compiling[key]
                imported.set()

        threading.Thread(target=run, name="ally-compile", daemon=True).start()

    def _info(self, worker: _Worker) -> WorkerInfo:
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
            compilers = list(self._compilers)
        for worker in workers:
            worker.stop("the host closed")
        for proc in compilers:
            if proc.poll() is None:
                proc.kill()
            proc.wait()
        self._jobs.put(None)
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(5)
        self._finalizer.detach()


def _close_all(workers: dict[str, _Worker], jobs: queue.Queue[Any]) -> None:
    """A pool dropped without close(): its servers stop (they would also see their control
    socket close when this process exits)."""
    for worker in list(workers.values()):
        worker.stop("the pool was dropped")
    jobs.put(None)
