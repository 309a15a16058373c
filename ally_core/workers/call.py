"""One call through a warm worker: the request to its server and the process handle ally
gets back (what ally uses of a ``Popen``)."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from typing import IO, Any, Callable, Optional

__all__ = ["Gone", "WorkerProcess", "read_answer", "start_call"]


class Gone(Exception):
    """The worker cannot take the call (it died or refused)."""


def read_answer(sock: socket.socket) -> Optional[dict[str, Any]]:
    """One JSON line from ``sock``, or ``None`` (closed, not JSON, not an object)."""
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


class WorkerProcess:
    """A tool process forked by a warm worker, with what ally uses of a ``Popen``.

    Its exit status comes on the call's connection to the server; whoever waits reads it
    (no thread of its own: one reader at a time, the others wait for that one)."""

    def __init__(
        self,
        args: list[str],
        pid: int,
        conn: socket.socket,
        pending: bytes,
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
        self._conn, self._buffer, self._on_exit = conn, pending, on_exit
        self._reading = threading.Lock()
        self._done = threading.Event()

    def _collect(self, timeout: Optional[float]) -> bool:
        """Read the exit status for at most ``timeout`` seconds; whether it is known."""
        if self._done.is_set():
            return True
        if not self._reading.acquire(timeout=-1 if timeout is None else max(timeout, 0.0)):
            return self._done.is_set()
        try:
            deadline = None if timeout is None else time.monotonic() + timeout
            while not self._done.is_set() and b"\n" not in self._buffer:
                remaining = None if deadline is None else max(deadline - time.monotonic(), 0.0)
                try:
                    self._conn.settimeout(remaining)
                    chunk = self._conn.recv(4096)
                except (BlockingIOError, socket.timeout):
                    return False
                except OSError:
                    chunk = b""
                if not chunk:
                    break
                self._buffer += chunk
            if self._done.is_set():
                return True
            learned = self._finish()
        finally:
            self._reading.release()
        self._on_exit(learned)
        return True

    def _finish(self) -> list[str]:
        status: Optional[int] = None
        learned: list[str] = []
        try:
            message = json.loads(self._buffer.partition(b"\n")[0] or b"{}")
            value = message.get("status")
            status = value if isinstance(value, int) else None
            names = message.get("learned")
            learned = [n for n in names if isinstance(n, str)] if isinstance(names, list) else []
        except (ValueError, AttributeError):
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
        self._conn.close()
        self._done.set()
        return learned

    def poll(self) -> Optional[int]:
        return self.returncode if self._collect(0.0) else None

    def kill(self) -> None:
        try:
            os.killpg(self.pid, signal.SIGKILL)
        except OSError:
            pass

    def wait(self, timeout: Optional[float] = None) -> int:
        if not self._collect(timeout):
            raise subprocess.TimeoutExpired(self.args, timeout or 0.0)
        assert self.returncode is not None
        return self.returncode


def start_call(
    socket_path: str,
    argv: list[str],
    cwd: Path,
    environ: Mapping[str, str],
    procs_fd: Optional[int],
    on_exit: Callable[[list[str]], None],
    ahead: Optional[tuple[int, str]] = None,
) -> tuple[WorkerProcess, dict[str, Any]]:
    """Send a call to the server at ``socket_path`` with new pipes for its stdio (and the
    call cgroup's ``cgroup.procs``, and that of a cgroup made ahead for a later call with
    its token); its process and the server's answer once the server says it runs, or
    :class:`Gone`."""
    stdin_r, stdin_w = os.pipe()
    out_r, out_w = os.pipe()
    err_r, err_w = os.pipe()
    ours = [stdin_w, out_r, err_r]
    conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        conn.settimeout(10)
        try:
            conn.connect(socket_path)
            request = {
                "argv": argv,
                "cwd": str(cwd),
                "env": dict(environ),
                "cgroup": procs_fd is not None,
                "ahead": ahead[1] if ahead is not None else None,
            }
            body = json.dumps(request).encode()
            message = len(body).to_bytes(4, "big") + body
            fds = [stdin_r, out_w, err_w]
            fds += [fd for fd in (procs_fd, ahead[0] if ahead else None) if fd is not None]
            sent = socket.send_fds(conn, [message], fds)
            if sent < len(message):
                conn.sendall(message[sent:])
        finally:
            for fd in (stdin_r, out_w, err_w):
                os.close(fd)
        data = b""
        while b"\n" not in data:
            chunk = conn.recv(65536)
            if not chunk:
                break
            data += chunk
        line, _, pending = data.partition(b"\n")
        answer = json.loads(line) if line else {}
        if not isinstance(answer, dict) or not isinstance(answer.get("pid"), int):
            error = answer.get("error") if isinstance(answer, dict) else None
            raise Gone(str(error or "the worker closed the connection"))
    except (OSError, ValueError, Gone) as exc:
        conn.close()
        for fd in ours:
            os.close(fd)
        if isinstance(exc, Gone):
            raise
        raise Gone(f"{exc.__class__.__name__}: {exc}") from None
    proc = WorkerProcess(
        argv,
        answer["pid"],
        conn,
        pending,
        os.fdopen(stdin_w, "wb"),
        os.fdopen(out_r, "rb"),
        os.fdopen(err_r, "rb"),
        on_exit,
    )
    return proc, answer
