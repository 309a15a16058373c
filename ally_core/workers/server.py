"""A warm worker: the fork server of one plugin's Python tools, run by the env's interpreter.

ally starts it as ``<env python> server.py serve CONTROL_FD`` (or ``compile CONTROL_FD``)
with the tool's own environment (minus the call's ``PLUGIN_CONFIG_*``), in the plugin
directory. This file imports the standard library only and runs on every Python ally
supports (3.9+): it is executed by the plugin's interpreter, never imported by ally.

Control socket (a socketpair with ally, newline-delimited JSON):

* ally sends the spec: ``{"plugin_dir", "scripts": [...], "modules": [...], "socket"}``;
* the server imports what the tool scripts import at top level (read with :mod:`ast`; what is
  not importable in this env is skipped), checks that forking is safe (no thread, no output,
  no module of the plugin loaded, no plugin file shadowing a loaded module) and answers
  ``{"ok": true, ...}`` or ``{"ok": false, "reason": ...}``;
* end of file on it (ally closed it, or ally's process died) stops the server and every call
  it runs.

Calls: ally connects to the Unix socket ``spec["socket"]`` (in a 0700 directory), sends one
message of ``len + JSON`` (``argv``, ``cwd``, ``env``, ``cgroup``) with the call's stdin,
stdout, stderr (and its cgroup's ``cgroup.procs``) as file descriptors (``SCM_RIGHTS``).
The server forks a child, which joins the call's session and cgroup before the server
answers ``{"pid": N}``; when the child exits, ``{"status": code}`` follows (a negative code:
killed by that signal, as :attr:`subprocess.Popen.returncode`).

In the child the tool runs as ``python script.py`` / ``python -m module`` would run it: a fresh
``__main__``, ``sys.argv``, ``sys.path[0]``, the call's cwd and environment, the signal
handlers of a fresh interpreter, new random seeds; an uncaught exception prints its traceback
and exits 1, ``SystemExit`` exits as it would, and the interpreter's normal shutdown (atexit,
non-daemon threads, flushing) ends the process.
"""

from __future__ import annotations

import ast
import atexit
import contextlib
import gc
import io
import json
import os
import selectors
import signal
import socket
import sys
import threading
import types
from importlib.machinery import SourceFileLoader
from typing import Any, Dict, List, Optional, Tuple

_HERE = os.path.dirname(os.path.realpath(__file__))
if sys.path and sys.path[0] and os.path.realpath(sys.path[0]) == _HERE:
    del sys.path[0]  # run as a script: this directory is not the tool's

MAX_REQUEST = 1 << 24


class Job:
    """What a forked child runs once it has left the server's code."""

    def __init__(self, argv: List[str], sys_path0: str, module: Optional[str]) -> None:
        self.argv, self.sys_path0, self.module = argv, sys_path0, module
        #: Where to report the modules the call imported (a pipe to the server), and the
        #: modules loaded before it ran.
        self.learn_fd = -1
        self.baseline: frozenset[str] = frozenset()
        self.plugin_dir = ""


_job: Optional[Job] = None


# -- preload ------------------------------------------------------------------------------------


def top_level_imports(tree: ast.Module) -> List[str]:
    """Absolute imports a module runs when it is executed (not those inside functions)."""
    names: List[str] = []
    todo: List[ast.AST] = list(tree.body)
    while todo:
        node = todo.pop(0)
        if isinstance(node, ast.Import):
            names.extend(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level == 0 and node.module:
                names.append(node.module)
        elif not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            # if/try/with/for blocks run at import; except handlers have a body too.
            for field in ("body", "orelse", "finalbody", "handlers"):
                children = getattr(node, field, None)
                if isinstance(children, list):
                    todo.extend(c for c in children if isinstance(c, ast.AST))
    seen: Dict[str, None] = {}
    for name in names:
        seen.setdefault(name, None)
    return list(seen)


def _inside(path: Optional[str], directory: str) -> bool:
    if not path:
        return False
    real = os.path.realpath(path)
    return real == directory or real.startswith(directory.rstrip(os.sep) + os.sep)


def _module_file(name: str) -> Optional[str]:
    module = sys.modules.get(name)
    path = getattr(module, "__file__", None)
    return path if isinstance(path, str) else None


def _module_origin(module: str, plugin_dir: str) -> Optional[str]:
    """The file of ``module`` (``-m``), without importing the plugin's own packages."""
    import importlib.util

    top, _, rest = module.partition(".")
    found = importlib.util.find_spec(top)  # a top-level name: nothing is imported
    if found is None or not rest:
        return found.origin if found is not None else None
    locations = list(found.submodule_search_locations or ())
    if locations and _inside(locations[0], plugin_dir):
        path = os.path.join(locations[0], *rest.split("."))
        for candidate in (path + ".py", os.path.join(path, "__init__.py")):
            if os.path.isfile(candidate):
                return candidate
        return None
    sub = importlib.util.find_spec(module)  # imports its (installed) parent packages
    return sub.origin if sub is not None else None


def preload(spec: Dict[str, Any]) -> Dict[str, Any]:
    """Import what the tools import; the answer for ally (``ok`` and why not)."""
    import importlib
    import importlib.util

    plugin_dir = os.path.realpath(spec["plugin_dir"])
    wanted: List[Tuple[str, str]] = []  # (module, the sys.path[0] its tool has)
    for script in spec.get("scripts", []):
        first = os.path.dirname(os.path.realpath(script))
        try:
            with open(script, "rb") as fh:
                tree = ast.parse(fh.read(), script)
        except (OSError, SyntaxError, ValueError) as exc:
            return {"ok": False, "reason": f"cannot read {script}: {exc}"}
        wanted.extend((name, first) for name in top_level_imports(tree))
    imported: List[str] = []
    skipped: List[str] = []
    for module in spec.get("modules", []):
        # ``-m pkg.tool``: its parent packages are imported, and what it imports at top
        # level; the module itself runs afresh in every call.
        sys.path.insert(0, os.getcwd())
        try:
            origin = _module_origin(module, plugin_dir)
        except Exception:  # its parent package raised or is missing
            origin = None
        finally:
            del sys.path[0]
        if origin and origin.endswith(".py") and os.path.isfile(origin):
            try:
                with open(origin, "rb") as fh:
                    tree = ast.parse(fh.read(), origin)
            except (OSError, SyntaxError, ValueError) as exc:
                return {"ok": False, "reason": f"cannot read {origin}: {exc}"}
            wanted.extend((name, os.getcwd()) for name in top_level_imports(tree))
            parent = module.rpartition(".")[0]
            if parent:
                wanted.append((parent, os.getcwd()))
    # Modules earlier calls imported on their own (lazily): ally hands them back.
    first_dir = wanted[0][1] if wanted else os.getcwd()
    wanted.extend((name, first_dir) for name in spec.get("learned", []))
    for name, first in wanted:
        sys.path.insert(0, first)
        try:
            top = name.partition(".")[0]
            try:
                found = importlib.util.find_spec(top)
            except (ImportError, ValueError):
                found = None
            if (
                found is None
                or _inside(found.origin, plugin_dir)
                or any(_inside(p, plugin_dir) for p in (found.submodule_search_locations or ()))
            ):
                skipped.append(name)  # not importable here, or the plugin's own module
                continue
            try:
                importlib.import_module(name)
            except ImportError:
                skipped.append(name)
                continue
            imported.append(name)
        except Exception as exc:  # the module raised while imported: no warm worker
            kind = exc.__class__.__name__
            return {"ok": False, "reason": f"importing {name} raised {kind}: {exc}"}
        finally:
            del sys.path[0]
    return {"ok": True, "imported": imported, "skipped": skipped}


def fork_safety(spec: Dict[str, Any]) -> Optional[str]:
    """Why forking this process would not be a spawn, or ``None``."""
    sys.stdout.flush()
    sys.stderr.flush()
    for fd in (1, 2):
        try:
            size = os.fstat(fd).st_size
        except OSError:
            size = 0
        if size:
            return "the preloaded modules wrote output"
    if threading.active_count() > 1:
        me = threading.current_thread()
        names = ", ".join(t.name for t in threading.enumerate() if t is not me)
        return f"the preloaded modules started threads ({names})"
    try:
        tasks = len(os.listdir("/proc/self/task"))
    except OSError:
        tasks = 1
    if tasks > 1:
        return f"the preloaded modules started {tasks - 1} native thread(s)"
    plugin_dir = os.path.realpath(spec["plugin_dir"])
    for name in list(sys.modules):
        if _inside(_module_file(name), plugin_dir):
            return f"the preload imported the plugin's own module {name}"
    # A plugin file named like a module already loaded here would win in a spawn.
    loaded = {name.partition(".")[0] for name in sys.modules}
    dirs = {os.path.dirname(os.path.realpath(s)) for s in spec.get("scripts", [])}
    if spec.get("modules"):
        dirs.add(os.getcwd())
    for directory in dirs:
        try:
            entries = os.listdir(directory)
        except OSError:
            continue
        for entry in entries:
            stem = entry.partition(".")[0]
            if (
                stem in loaded
                and stem != "__pycache__"
                and (
                    entry.endswith((".py", ".pyc", ".so", ".pyd"))
                    or os.path.isdir(os.path.join(directory, entry))
                )
            ):
                return f"{os.path.join(directory, entry)} shadows the loaded module {stem}"
    return None


def site_dirs() -> List[str]:
    import site

    dirs = list(getattr(site, "getsitepackages", lambda: [])())
    return [d for d in dirs if os.path.isdir(d)]


def package_dirs() -> List[str]:
    """Directories (or files) of the env's packages loaded now: what to compile."""
    sites = [os.path.realpath(d) for d in site_dirs()]
    out: Dict[str, None] = {}
    for name in list(sys.modules):
        if "." in name:
            continue
        path = _module_file(name)
        if not path or not any(_inside(path, d) for d in sites):
            continue
        module = sys.modules[name]
        locations = list(getattr(module, "__path__", []) or [])
        if locations and os.path.isdir(locations[0]):
            out.setdefault(locations[0], None)
        elif path.endswith(".py") and os.path.isfile(path):
            out.setdefault(path, None)
    return list(out)


def rss_bytes() -> int:
    try:
        with open("/proc/self/statm") as fh:
            return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        import resource

        usage = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return usage if sys.platform == "darwin" else usage * 1024


def compile_packages(dirs: List[str]) -> None:
    """Write the bytecode of ``dirs`` (background, lowest priority)."""
    import compileall

    try:
        os.nice(19)
    except OSError:
        pass
    for target in dirs:
        # A package that does not compile is the tool's business, not the compile's.
        with contextlib.suppress(Exception):
            if os.path.isdir(target):
                compileall.compile_dir(target, quiet=2)
            else:
                compileall.compile_file(target, quiet=2)


# -- serving ------------------------------------------------------------------------------------


def _send(sock: socket.socket, data: Dict[str, Any]) -> None:
    try:
        sock.sendall(json.dumps(data).encode() + b"\n")
    except OSError:
        pass


def _read_line(sock: socket.socket) -> bytes:
    data = b""
    while not data.endswith(b"\n"):
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    return data


def _libc_prctl() -> Any:
    """libc's ``prctl`` (Linux), loaded before any fork: a child only calls it."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        import ctypes

        return ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError, ImportError):
        return None


def _die_with_parent(prctl: Any) -> None:
    if prctl is not None:
        prctl(1, signal.SIGKILL, 0, 0, 0)  # PR_SET_PDEATHSIG


class Server:
    def __init__(self, control: socket.socket, spec: Dict[str, Any]) -> None:
        self.control, self.spec = control, spec
        self.children: Dict[int, socket.socket] = {}
        #: Per running call: the pipe on which it reports the modules it imported.
        self.learning: Dict[int, int] = {}
        #: Other children (the background compile), killed with the server.
        self.helpers: List[int] = []
        self.prctl = _libc_prctl()
        self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.listener.bind(spec["socket"])
        self.listener.listen(64)
        self.wake_r, self.wake_w = os.pipe()
        os.set_blocking(self.wake_w, False)
        os.set_blocking(self.wake_r, False)
        self.selector = selectors.DefaultSelector()
        self.selector.register(self.listener, selectors.EVENT_READ, "accept")
        self.selector.register(self.control, selectors.EVENT_READ, "control")
        self.selector.register(self.wake_r, selectors.EVENT_READ, "wake")
        self.old_wakeup = signal.set_wakeup_fd(self.wake_w, warn_on_full_buffer=False)
        self.old_sigchld = signal.signal(signal.SIGCHLD, _ignore)

    def run(self) -> Optional[Job]:
        """Serve until the control socket closes; returns only in a forked child."""
        while True:
            for key, _ in self.selector.select():
                what = key.data
                if what == "accept":
                    try:
                        conn, _addr = self.listener.accept()
                    except OSError:
                        continue
                    job = self.call(conn)
                    if job is not None:
                        return job
                elif what == "wake":
                    try:
                        while os.read(self.wake_r, 512):
                            pass
                    except (BlockingIOError, InterruptedError):
                        pass
                    self.reap()
                elif what == "control":
                    try:
                        data = self.control.recv(4096)
                    except OSError:
                        data = b""
                    if not data:
                        self.shutdown()
                        return None
            self.reap()

    def reap(self) -> None:
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            if pid in self.helpers:
                self.helpers.remove(pid)
            learned: List[str] = []
            learn_fd = self.learning.pop(pid, None)
            if learn_fd is not None:
                try:
                    value = json.loads(os.read(learn_fd, 1 << 16) or b"[]")
                    learned = [str(v) for v in value] if isinstance(value, list) else []
                except (OSError, ValueError):
                    learned = []
                os.close(learn_fd)
            conn = self.children.pop(pid, None)
            if conn is not None:
                _send(conn, {"status": os.waitstatus_to_exitcode(status), "learned": learned})
                conn.close()

    def shutdown(self) -> None:
        for pid in self.helpers:
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
        for pid in list(self.children):
            for kill in (os.killpg, os.kill):
                try:
                    kill(pid, signal.SIGKILL)
                except OSError:
                    pass
        for pid in list(self.children):
            try:
                os.waitpid(pid, 0)
            except ChildProcessError:
                pass
            self.children.pop(pid).close()
        self.listener.close()
        try:
            os.unlink(self.spec["socket"])
        except OSError:
            pass

    def call(self, conn: socket.socket) -> Optional[Job]:
        fds: List[int] = []
        try:
            conn.settimeout(10)
            first, fds, _flags, _addr = socket.recv_fds(conn, 65536, 8)
            if len(first) < 4:
                raise ValueError("short request")
            size = int.from_bytes(first[:4], "big")
            if size > MAX_REQUEST:
                raise ValueError("request too large")
            body = first[4:]
            while len(body) < size:
                chunk = conn.recv(size - len(body))
                if not chunk:
                    raise ValueError("truncated request")
                body += chunk
            request = json.loads(body)
            if len(fds) != 3 + bool(request.get("cgroup")):
                raise ValueError(f"expected file descriptors, got {len(fds)}")
            conn.settimeout(None)
        except (OSError, ValueError) as exc:
            for fd in fds:
                os.close(fd)
            _send(conn, {"error": f"bad request: {exc}"})
            conn.close()
            return None
        ready_r, ready_w = os.pipe()
        learn_r, learn_w = os.pipe()
        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:
            os.close(ready_r)
            os.close(learn_r)
            job = self.become_child(conn, request, fds, ready_w)
            job.learn_fd = learn_w
            return job
        os.close(ready_w)
        os.close(learn_w)
        os.set_blocking(learn_r, False)
        for fd in fds:
            os.close(fd)
        try:
            os.read(ready_r, 1)  # the child is in its session and cgroup (or gone)
        finally:
            os.close(ready_r)
        self.children[pid] = conn
        self.learning[pid] = learn_r
        _send(conn, {"pid": pid})
        return None

    def become_child(
        self, conn: socket.socket, request: Dict[str, Any], fds: List[int], ready_w: int
    ) -> Job:
        server_pid = os.getppid()
        try:
            os.setsid()
            if request.get("cgroup"):
                os.write(fds[3], b"0")  # "0": the writing process joins the cgroup
                os.close(fds[3])
            _die_with_parent(self.prctl)
            if os.getppid() != server_pid:
                os._exit(137)  # the server died meanwhile
        except OSError as exc:
            os.write(fds[2], f"ally worker: cannot start the call: {exc}\n".encode())
            os._exit(127)
        os.write(ready_w, b"1")
        os.close(ready_w)
        # Leave everything of the server behind.
        old = self.old_sigchld
        signal.signal(signal.SIGCHLD, old if old is not None else signal.SIG_DFL)
        signal.set_wakeup_fd(self.old_wakeup)
        self.selector.close()
        for sock in (self.listener, self.control, conn, *self.children.values()):
            sock.close()
        self.children.clear()
        for fd in self.learning.values():
            os.close(fd)
        self.learning.clear()
        os.close(self.wake_r)
        os.close(self.wake_w)
        for target, fd in enumerate(fds[:3]):
            if fd != target:
                os.dup2(fd, target)
        for fd in fds[:3]:
            if fd > 2:
                os.close(fd)
        os.chdir(request["cwd"])
        os.environ.clear()
        os.environ.update(request["env"])
        _reseed()
        argv: List[str] = list(request["argv"])
        if argv[1] == "-m":
            job = Job([argv[2], *argv[3:]], os.getcwd(), argv[2])
        else:
            job = Job(argv[1:], os.path.dirname(os.path.realpath(argv[1])), None)
        job.baseline = frozenset(sys.modules)
        job.plugin_dir = os.path.realpath(self.spec["plugin_dir"])
        return job


def _ignore(signum: int, frame: Any) -> None:
    return None


def _reseed() -> None:
    import random

    random.seed()
    numpy_random = sys.modules.get("numpy.random")
    if numpy_random is not None:
        with contextlib.suppress(Exception):
            numpy_random.seed()  # the legacy global RandomState


# -- the child: the tool as ``python script.py`` ------------------------------------------------


def run_job(job: Job, python_argv0: str) -> None:
    """Run the tool and end the process with the code ``python`` would have exited with."""
    global _job
    _job = job
    sys.argv = list(job.argv)
    if hasattr(sys, "orig_argv"):
        sys.orig_argv = [python_argv0, *(["-m"] if job.module else []), *job.argv]
    sys.path.insert(0, job.sys_path0)
    main = types.ModuleType("__main__")
    main.__dict__["__builtins__"] = __builtins__
    _kept.append(sys.modules["__main__"])  # the server's globals stay alive
    sys.modules["__main__"] = main
    try:
        if job.module is not None:
            import runpy

            runpy._run_module_as_main(job.module, alter_argv=True)  # type: ignore[attr-defined]
        else:
            _run_script(main, job.argv[0])
    except SystemExit as exc:
        finish(_exit_code(exc))
    except BaseException as exc:
        tb = exc.__traceback__
        while tb is not None and tb.tb_frame.f_code.co_filename == __file__:
            tb = tb.tb_next
        exc.__traceback__ = tb  # the hook prints the exception's own traceback
        sys.excepthook(type(exc), exc, tb)
        finish(1, interrupted=isinstance(exc, KeyboardInterrupt))
    finish(0)


def _exit_code(exc: SystemExit) -> int:
    """``SystemExit``'s code as the interpreter reads it (a non-integer is printed, then 1)."""
    code = exc.code
    if code is None:
        return 0
    if isinstance(code, int):
        return code & 0xFF if code >= 0 else code
    with contextlib.suppress(Exception):
        sys.stderr.write(f"{code}\n")
    return 1


def finish(code: int, *, interrupted: bool = False) -> None:
    """End the tool's process as the interpreter's shutdown would, without tearing down the
    preloaded modules (that alone costs more than the call): non-daemon threads are joined,
    atexit functions run, the tool's globals are released (their ``__del__`` methods run,
    files it left open are flushed), then stdout and stderr are flushed."""
    with contextlib.suppress(Exception):
        threading._shutdown()  # type: ignore[attr-defined]
    atexit._run_exitfuncs()
    if _job is not None:
        with contextlib.suppress(Exception):
            _report_imports(_job)
    main = sys.modules.get("__main__")
    if main is not None:
        with contextlib.suppress(Exception):
            main.__dict__.clear()
    with contextlib.suppress(Exception):
        gc.collect()
        # Objects made since the server froze its own: the tool's files not closed yet.
        opened = [o for o in gc.get_objects() if isinstance(o, io.IOBase)]
        for stream in sorted(opened, key=lambda o: not isinstance(o, io.TextIOBase)):
            if stream not in (sys.stdout, sys.stderr) and not stream.closed:
                with contextlib.suppress(Exception):
                    stream.flush()
    for std in (sys.stdout, sys.stderr):
        try:
            if std is not None:
                std.flush()
        except Exception:
            if code == 0:
                code = 120  # what python exits with when it cannot flush stdout
    if interrupted:
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        os.kill(os.getpid(), signal.SIGINT)
    os._exit(code)


def _report_imports(job: Job) -> None:
    """Tell the server which library modules this call imported that it had not preloaded
    (imports inside functions, lazy imports of the libraries): ally may preload them."""
    learned = []
    for name, module in list(sys.modules.items()):
        if name in job.baseline or name == "__main__":
            continue
        path = getattr(module, "__file__", None)
        if isinstance(path, str) and path.endswith(".py") and not _inside(path, job.plugin_dir):
            learned.append(name)
    data = json.dumps(sorted(learned)[:2000]).encode()
    if len(data) < 60000:
        os.set_blocking(job.learn_fd, False)
        os.write(job.learn_fd, data)
    os.close(job.learn_fd)


def _run_script(main: types.ModuleType, path: str) -> None:
    filename = os.path.abspath(path)
    with open(filename, "rb") as fh:
        source = fh.read()
    code = compile(source, filename, "exec", dont_inherit=True)
    main.__dict__.update(
        __file__=filename,
        __cached__=None,
        __loader__=SourceFileLoader("__main__", filename),
    )
    exec(code, main.__dict__)  # noqa: S102 - running the tool is the point


_kept: List[types.ModuleType] = []


# -- entry --------------------------------------------------------------------------------------


def main() -> Optional[Job]:
    mode, control_fd = sys.argv[1], int(sys.argv[2])
    control = socket.socket(fileno=control_fd)
    spec = json.loads(_read_line(control) or b"{}")
    answer = preload(spec)
    if mode == "compile":
        _send(control, {"ok": answer["ok"], "phase": "imported"})
        compile_packages(package_dirs())
        return None
    if answer["ok"]:
        reason = fork_safety(spec)
        if reason is not None:
            answer = {"ok": False, "reason": reason}
    if not answer["ok"]:
        _send(control, answer)
        return None
    if spec.get("modules"):
        import runpy  # noqa: F401 - what ``-m`` runs the tool with, loaded once

    gc.collect()
    if hasattr(gc, "freeze"):
        gc.freeze()  # forked children do not touch (copy) the preloaded objects' pages
    server = Server(control, spec)
    packages = package_dirs()
    answer.update(
        pid=os.getpid(),
        rss=rss_bytes(),
        modules=len(sys.modules),
        site=site_dirs(),
        packages=packages,
    )
    if spec.get("compile"):
        compiler = os.fork()
        if compiler == 0:
            try:
                _die_with_parent(server.prctl)
                signal.signal(signal.SIGCHLD, signal.SIG_DFL)
                signal.set_wakeup_fd(-1)
                server.listener.close()
                control.close()
                compile_packages(packages)
            finally:
                os._exit(0)
        server.helpers.append(compiler)
    _send(control, answer)
    return server.run()


if __name__ == "__main__":
    _job = main()
    if _job is not None:
        run_job(_job, sys.executable)
