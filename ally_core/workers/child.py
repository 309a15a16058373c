"""A warm worker's call process: the spare child that waits for a call, then the tool.

Loaded by ``server.py`` in the env's interpreter (standard library only, Python 3.9+, never
imported by ally). The server keeps one spare child forked ahead of the next call, already in
a session of its own, with the parent-death signal set and the server's sockets closed, so
that neither the fork nor that setup is on a call's path. When a call comes, the server
hands the spare the call's request and file descriptors and tells ally its pid; the spare
joins the call's cgroup, takes the call's stdio, cwd and environment, reseeds, and runs the
tool as ``python script.py`` / ``python -m module`` would.
"""

from __future__ import annotations

import atexit
import builtins
import contextlib
import gc
import io
import json
import os
import signal
import socket
import sys
import threading
import types
from importlib.machinery import SourceFileLoader
from typing import Any, Dict, List, Optional, Tuple

_HERE = os.path.dirname(os.path.abspath(__file__))
MAX_REQUEST = 1 << 24


class Job:
    """What a call process runs once it has left the server's code."""

    def __init__(self, argv: List[str], sys_path0: str, module: Optional[str]) -> None:
        self.argv, self.sys_path0, self.module = argv, sys_path0, module
        #: Where to report the modules the call imported (a pipe to the server), and the
        #: modules loaded before it ran.
        self.learn_fd = -1
        self.baseline: frozenset[str] = frozenset()
        self.patterns: frozenset[Tuple[str, int]] = frozenset()
        self.plugin_dir = ""


_job: Optional[Job] = None
#: The server's ``__main__`` module: its globals stay alive while the tool runs.
_kept: List[types.ModuleType] = []


def read_message(sock: socket.socket) -> Tuple[Dict[str, Any], List[int], bytes]:
    """One ``len + JSON`` message with its file descriptors (``SCM_RIGHTS``)."""
    fds: List[int] = []
    try:
        first, fds, _flags, _addr = socket.recv_fds(sock, 65536, 8)
        if len(first) < 4:
            raise ValueError("short request")
        size = int.from_bytes(first[:4], "big")
        if size > MAX_REQUEST:
            raise ValueError("request too large")
        body = first[4:]
        while len(body) < size:
            chunk = sock.recv(size - len(body))
            if not chunk:
                raise ValueError("truncated request")
            body += chunk
        request = json.loads(body)
        if not isinstance(request, dict):
            raise ValueError("not an object")
    except BaseException:
        for fd in fds:
            os.close(fd)
        raise
    return request, list(fds), body


class Spare:
    """A call process forked ahead of its call (session, parent-death signal set)."""

    def __init__(self, sock: socket.socket, learn_fd: int, plugin_dir: str) -> None:
        self.sock, self.learn_fd, self.plugin_dir = sock, learn_fd, plugin_dir

    def take_call(self) -> Job:
        """Wait for the call, join its cgroup, then become the tool's process."""
        try:
            request, fds, _body = read_message(self.sock)
        except (OSError, ValueError):
            os._exit(0)  # the server stopped (or died): no call for this spare
        failed = ""
        if request.get("cgroup"):
            try:
                os.write(fds[3], b"0")  # "0": the writing process joins the cgroup
            except OSError as exc:
                failed = f"ally worker: cannot start the call: {exc}\n"
            os.close(fds[3])
        self.sock.close()
        if failed:
            with contextlib.suppress(OSError):
                os.write(fds[2], failed.encode())
            os._exit(127)
        job = enter(request, fds[:3], self.plugin_dir)
        job.learn_fd = self.learn_fd
        return job


def enter(request: Dict[str, Any], fds: List[int], plugin_dir: str) -> Job:
    """Take the call's stdin, stdout, stderr, cwd and environment; new random seeds."""
    for target, fd in enumerate(fds):
        if fd != target:
            os.dup2(fd, target)
    for fd in fds:
        if fd > 2:
            os.close(fd)
    os.chdir(request["cwd"])
    os.environ.clear()
    os.environ.update(request["env"])
    reseed()
    argv: List[str] = list(request["argv"])
    if argv[1] == "-m":
        job = Job([argv[2], *argv[3:]], os.getcwd(), argv[2])
    else:
        job = Job(argv[1:], os.path.dirname(os.path.realpath(argv[1])), None)
    job.baseline = frozenset(sys.modules)
    job.patterns = frozenset(_pattern_keys())
    job.plugin_dir = plugin_dir
    return job


def reseed() -> None:
    """New seeds for the random number generators the preload loaded (one that is not
    loaded yet seeds itself from the OS when the tool imports it)."""
    random = sys.modules.get("random")
    if random is not None:
        with contextlib.suppress(Exception):
            random.seed()
    numpy_random = sys.modules.get("numpy.random")
    if numpy_random is not None:
        with contextlib.suppress(Exception):
            numpy_random.seed()  # the legacy global RandomState


def _inside(path: str, directory: str) -> bool:
    real = os.path.realpath(path)
    return real == directory or real.startswith(directory.rstrip(os.sep) + os.sep)


def run_job(job: Job, python_argv0: str) -> None:
    """Run the tool and end the process with the code ``python`` would have exited with."""
    global _job
    _job = job
    sys.argv = list(job.argv)
    if hasattr(sys, "orig_argv"):
        sys.orig_argv = [python_argv0, *(["-m"] if job.module else []), *job.argv]
    sys.path.insert(0, job.sys_path0)
    main = types.ModuleType("__main__")
    main.__dict__["__builtins__"] = builtins
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
        while tb is not None and os.path.dirname(tb.tb_frame.f_code.co_filename) == _HERE:
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
    (imports inside functions, lazy imports of the libraries), and which regular expressions
    it compiled (``re:[pattern, flags]``, such as :mod:`tokenize`'s, compiled on first use):
    ally may preload them."""
    learned = []
    for name, module in list(sys.modules.items()):
        if name in job.baseline or name == "__main__":
            continue
        path = getattr(module, "__file__", None)
        if isinstance(path, str) and path.endswith(".py") and not _inside(path, job.plugin_dir):
            learned.append(name)
    learned = sorted(learned)[:2000]
    size = sum(len(n) + 4 for n in learned)
    for key in _new_patterns(job):
        entry = "re:" + json.dumps(key)
        if size + len(entry) + 4 > 60000:
            break
        learned.append(entry)
        size += len(entry) + 4
    data = json.dumps(learned).encode()
    if len(data) < 64000:
        os.set_blocking(job.learn_fd, False)
        os.write(job.learn_fd, data)
    os.close(job.learn_fd)


def _pattern_keys() -> List[Tuple[str, int]]:
    """The ``(pattern, flags)`` of the text regular expressions in :mod:`re`'s cache."""
    cache = getattr(sys.modules.get("re"), "_cache", None)
    keys: List[Tuple[str, int]] = []
    if isinstance(cache, dict):
        for key in list(cache):
            if isinstance(key, tuple) and len(key) == 3 and key[0] is str:
                pattern, flags = key[1], key[2]
                if isinstance(pattern, str) and isinstance(flags, int) and not flags & 128:
                    keys.append((pattern, int(flags)))  # 128: re.DEBUG prints
    return keys


def _new_patterns(job: Job) -> List[Tuple[str, int]]:
    return [k for k in _pattern_keys() if k not in job.patterns and len(k[0]) <= 20000][:100]


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
