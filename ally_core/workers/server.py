"""A warm worker: the fork server of one plugin's Python tools, run by the env's interpreter.

ally starts it as ``<env python> server.py serve CONTROL_FD`` (or ``compile CONTROL_FD``)
with the tool's own environment (minus the call's ``PLUGIN_CONFIG_*``), in the plugin
directory. This file and its siblings ``preload.py`` (what to import and compile) and
``child.py`` (a call's process) import the standard library only and run on every Python
ally supports (3.9+): they are executed by the plugin's interpreter, never imported by ally.

Control socket (a socketpair with ally, newline-delimited JSON):

* ally sends the spec: ``{"plugin_dir", "scripts": [...], "modules": [...], "socket",
  "compile", "learned"}``;
* the server imports what the tool scripts import at top level (read with :mod:`ast`; what is
  not importable in this env is skipped), checks that forking is safe (no thread, no output,
  no module of the plugin loaded, no plugin file shadowing a loaded module) and answers
  ``{"ok": true, ...}`` or ``{"ok": false, "reason": ...}``; with ``compile`` (a fresh env)
  a forked helper compiles, meanwhile, what that import will run, from the other end;
* end of file on it (ally closed it, or ally's process died) stops the server and every call
  it runs.

Calls: ally connects to the Unix socket ``spec["socket"]`` (in a 0700 directory), sends one
message of ``len + JSON`` (``argv``, ``cwd``, ``env``, ``cgroup``, ``ahead``) with the call's
stdin, stdout, stderr (and its cgroup's ``cgroup.procs``, and that of a cgroup made ahead for
a later call, named by the token ``ahead``) as file descriptors (``SCM_RIGHTS``). The server
hands them to its spare child (forked ahead of the call, in a session of its own, see
``child.py``) and answers ``{"pid": N}``. A spare forked while the server held a cgroup made
ahead joined it then (moving a process into a cgroup can wait for the kernel, milliseconds:
not on a call's path); it stays there and the answer says ``"ahead": token`` (ally makes that
cgroup the call's); otherwise the child joins the call's cgroup before it runs anything of
the tool. A cgroup made ahead that the server no longer needs is given back
(``"discarded": [token]``). When the child exits, ``{"status": code, "learned": [...]}``
follows (a negative code: killed by that signal, as :attr:`subprocess.Popen.returncode`).
The next spare is forked as soon as the call is handed over.

In the child the tool runs as ``python script.py`` / ``python -m module`` would run it: a fresh
``__main__``, ``sys.argv``, ``sys.path[0]``, the call's cwd and environment, the signal
handlers of a fresh interpreter, new random seeds; an uncaught exception prints its traceback
and exits 1, ``SystemExit`` exits as it would, and the interpreter's normal shutdown (atexit,
non-daemon threads, flushing) ends the process.
"""

from __future__ import annotations

import gc
import json
import os
import selectors
import signal
import socket
import sys
import types
from typing import TYPE_CHECKING, Any, Dict, List, Optional, Tuple, Union

_HERE = os.path.dirname(os.path.realpath(__file__))
if sys.path and sys.path[0] and os.path.realpath(sys.path[0]) == _HERE:
    del sys.path[0]  # run as a script: this directory is not the tool's

#: A spare child that died this many times in a row is not replaced ahead of calls any more.
SPARE_RETRIES = 3


def _sibling(name: str) -> types.ModuleType:
    """``preload.py`` / ``child.py`` of this directory, under names no tool uses."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        f"_ally_worker_{name}", os.path.join(_HERE, f"{name}.py")
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


if TYPE_CHECKING:
    from . import child, preload
    from .child import Spare
else:
    child, preload = _sibling("child"), _sibling("preload")


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


def _ignore(signum: int, frame: Any) -> None:
    return None


def _kill(pid: int, group: bool = False) -> None:
    for kill in (os.killpg, os.kill) if group else (os.kill,):
        try:
            kill(pid, signal.SIGKILL)
        except OSError:
            pass


class Server:
    def __init__(
        self, control: socket.socket, spec: Dict[str, Any], helpers: List[int], prctl: Any
    ) -> None:
        self.control, self.spec = control, spec
        self.plugin_dir = os.path.realpath(spec["plugin_dir"])
        self.children: Dict[int, socket.socket] = {}
        #: Per running call: the pipe on which it reports the modules it imported.
        self.learning: Dict[int, int] = {}
        #: Other children (the background compiles), killed with the server.
        self.helpers = helpers
        #: The call process forked ahead: (pid, socket to it, its import-report pipe, and
        #: the token of the cgroup made ahead that it joined, if any).
        self.spare: Optional[Tuple[int, socket.socket, int, Optional[str]]] = None
        #: A cgroup ally made ahead for the next spare (``cgroup.procs`` open), and its token.
        self.ahead: Optional[Tuple[int, str]] = None
        self.spare_deaths = 0
        self.prctl = prctl
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

    def run(self) -> Optional[Spare]:
        """Serve until the control socket closes; returns only in a forked spare child."""
        while True:
            if self.spare is None and self.spare_deaths < SPARE_RETRIES:
                spare = self.fork_spare()
                if spare is not None:
                    return spare
            for key, _ in self.selector.select():
                what = key.data
                if what == "accept":
                    try:
                        conn, _addr = self.listener.accept()
                    except OSError:
                        continue
                    spare = self.call(conn)
                    if spare is not None:
                        return spare
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

    def fork_spare(self) -> Optional[Spare]:
        """Fork the next call's process now; in that child, its :class:`Spare`."""
        ours, theirs = socket.socketpair()
        learn_r, learn_w = os.pipe()
        sys.stdout.flush()
        sys.stderr.flush()
        server_pid = os.getpid()
        ahead, self.ahead = self.ahead, None
        pid = os.fork()
        if pid == 0:
            ours.close()
            os.close(learn_r)
            self.leave()
            try:
                os.setsid()
                _die_with_parent(self.prctl)
                if os.getppid() != server_pid:
                    os._exit(137)  # the server died meanwhile
                if ahead is not None:
                    # Join the cgroup made ahead for the next call now: moving a process
                    # between cgroups can wait for the kernel (a few ms), not the call.
                    os.write(ahead[0], b"0")
                    os.close(ahead[0])
            except OSError:
                os._exit(127)
            return child.Spare(theirs, learn_w, self.plugin_dir)
        if ahead is not None:
            os.close(ahead[0])
        theirs.close()
        os.close(learn_w)
        os.set_blocking(learn_r, False)
        self.spare = (pid, ours, learn_r, ahead[1] if ahead is not None else None)
        return None

    def leave(self) -> None:
        """In a forked child: leave everything of the server behind."""
        old = self.old_sigchld
        signal.signal(signal.SIGCHLD, old if old is not None else signal.SIG_DFL)
        signal.set_wakeup_fd(self.old_wakeup)
        self.selector.close()
        for sock in (self.listener, self.control, *self.children.values()):
            sock.close()
        self.children.clear()
        for fd in self.learning.values():
            os.close(fd)
        self.learning.clear()
        os.close(self.wake_r)
        os.close(self.wake_w)
        self.helpers.clear()
        if self.ahead is not None:
            os.close(self.ahead[0])
            self.ahead = None

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
            if self.spare is not None and self.spare[0] == pid:
                self.drop_spare()
                self.spare_deaths += 1
                continue
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

    def drop_spare(self) -> None:
        if self.spare is not None:
            _pid, sock, learn_r, _token = self.spare
            self.spare = None
            sock.close()
            os.close(learn_r)

    def shutdown(self) -> None:
        for pid in self.helpers:
            _kill(pid)
        if self.spare is not None:
            _kill(self.spare[0])
            self.children[self.spare[0]] = self.spare[1]
            self.learning[self.spare[0]] = self.spare[2]
            self.spare = None
        for pid in list(self.children):
            _kill(pid, group=True)
        for pid in list(self.children):
            try:
                os.waitpid(pid, 0)
            except ChildProcessError:
                pass
            self.children.pop(pid).close()
        for fd in self.learning.values():
            os.close(fd)
        self.learning.clear()
        if self.ahead is not None:
            os.close(self.ahead[0])
            self.ahead = None
        self.listener.close()
        try:
            os.unlink(self.spec["socket"])
        except OSError:
            pass

    def call(self, conn: socket.socket) -> Optional[Spare]:
        """Hand a call to the spare child (forked now if there is none)."""
        try:
            conn.settimeout(10)
            request, fds, _body = child.read_message(conn)
            token = request.get("ahead")
            wanted = 3 + bool(request.get("cgroup")) + bool(token)
            if len(fds) != wanted or not isinstance(token, (str, type(None))):
                for fd in fds:
                    os.close(fd)
                raise ValueError(f"expected {wanted} file descriptors, got {len(fds)}")
            conn.settimeout(None)
        except (OSError, ValueError) as exc:
            _send(conn, {"error": f"bad request: {exc}"})
            conn.close()
            return None
        answer: Dict[str, Any] = {}
        if token:
            # The cgroup for a later spare: kept (one at a time), or given back.
            if self.ahead is not None:
                answer["discarded"] = [self.ahead[1]]
                os.close(self.ahead[0])
            self.ahead = (fds.pop(), token)
        pid = 0
        try:
            for _attempt in range(2):  # a spare that died meanwhile is replaced once
                if self.spare is None:
                    spare = self.fork_spare()
                    if spare is not None:
                        conn.close()  # the call is not this child's
                        return spare
                assert self.spare is not None
                pid, sock, learn_r, joined = self.spare
                # A spare already in a cgroup made ahead stays there (ally adopts it as
                # the call's); otherwise it joins the call's cgroup itself.
                cgroup = bool(request.get("cgroup")) and joined is None
                passed = fds if cgroup else fds[:3]
                body = json.dumps({**request, "cgroup": cgroup, "ahead": None}).encode()
                try:
                    message = len(body).to_bytes(4, "big") + body
                    sent = socket.send_fds(sock, [message], passed)
                    if sent < len(message):
                        sock.sendall(message[sent:])
                except OSError:  # it died: the next one
                    self.drop_spare()
                    _kill(pid)
                    pid = 0
                    continue
                # The child leads its own session already and is in the call's cgroup (or
                # joins it) before it runs anything of the tool; until then a group kill
                # ends it.
                self.spare = None
                sock.close()
                if joined is not None:
                    answer["ahead"] = joined
                break
        finally:
            for fd in fds:
                os.close(fd)
        if not pid:
            answer["error"] = "the call's process did not start"
            _send(conn, answer)
            conn.close()
            return None
        self.spare_deaths = 0
        self.children[pid] = conn
        self.learning[pid] = learn_r
        answer["pid"] = pid
        _send(conn, answer)
        return None


# -- entry --------------------------------------------------------------------------------------


def _fork_helper(work: Any, prctl: Any, *close: Union[socket.socket, int]) -> int:
    """A child that runs ``work()`` and exits; it dies with the server."""
    pid = os.fork()
    if pid == 0:
        try:
            _die_with_parent(prctl)
            signal.signal(signal.SIGCHLD, signal.SIG_DFL)
            signal.set_wakeup_fd(-1)
            for item in close:
                if isinstance(item, int):
                    os.close(item)
                else:
                    item.close()
            work()
        finally:
            os._exit(0)
    return pid


def main() -> Optional[Spare]:
    mode, control_fd = sys.argv[1], int(sys.argv[2])
    control = socket.socket(fileno=control_fd)
    spec = json.loads(_read_line(control) or b"{}")
    prctl = _libc_prctl()
    helpers: List[int] = []
    if mode == "compile" or spec.get("compile"):
        # A fresh env: compile what the preload is about to import, from the other end.
        names = preload.wanted_names(spec)
        helpers.append(_fork_helper(lambda: preload.compile_ahead(names), prctl, control))
    answer = preload.preload(spec)
    if mode == "compile":
        _send(control, {"ok": answer["ok"], "phase": "imported"})
        preload.compile_packages(preload.package_dirs())
        return None
    if answer["ok"]:
        reason = preload.fork_safety(spec)
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
    server = Server(control, spec, helpers, prctl)
    packages = preload.package_dirs()
    answer.update(
        pid=os.getpid(),
        rss=preload.rss_bytes(),
        modules=len(sys.modules),
        site=preload.site_dirs(),
        packages=packages,
    )
    if spec.get("compile"):

        def compile_all() -> None:
            preload.compile_packages(packages)

        compiler = _fork_helper(compile_all, prctl, server.listener, control)
        server.helpers.append(compiler)
    _send(control, answer)
    return server.run()


if __name__ == "__main__":
    _spare = main()
    if _spare is not None:
        child.run_job(_spare.take_call(), sys.executable)
