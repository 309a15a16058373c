"""Running installer processes: streamed output, whole-group kill, the cause on failure.

Runtimes call :func:`run_installer` instead of :mod:`subprocess` so that every installer
(pip, uv, npm, bundler) gets the same timeout, interruption and error behaviour, and a failure
whose one-line reason carries the lines of the output that say why
(``ally_core.installer_output.error_lines``).
"""

from __future__ import annotations

import collections
import contextlib
import os
import signal
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import IO, Callable, Optional, Protocol

from .errors import InstallFailed

__all__ = [
    "ToolProcess",
    "cancel_token",
    "clean_environ",
    "kill_process_group",
    "run_installer",
]


class ToolProcess(Protocol):
    """What ally uses of a tool's process: a :class:`subprocess.Popen`, or a warm worker's
    forked child (:class:`ally_core.workers.WorkerProcess`)."""

    @property
    def pid(self) -> int: ...
    @property
    def returncode(self) -> Optional[int]: ...
    @property
    def stdin(self) -> Optional[IO[bytes]]: ...
    @property
    def stdout(self) -> Optional[IO[bytes]]: ...
    @property
    def stderr(self) -> Optional[IO[bytes]]: ...
    def poll(self) -> Optional[int]: ...
    def wait(self, timeout: Optional[float] = None) -> int: ...
    def kill(self) -> None: ...


_local = threading.local()


@contextlib.contextmanager
def cancel_token(event: threading.Event) -> Iterator[None]:
    """Make installers started by this thread stop (killed, group and all) once ``event`` is set.

    Installers run in their own session so that a terminal's Ctrl-C reaches ally only; the
    loader then sets the event of its build threads, which clean up their unfinished envs.
    """
    previous = getattr(_local, "cancel", None)
    _local.cancel = event
    try:
        yield
    finally:
        _local.cancel = previous


def _cancelled() -> bool:
    event = getattr(_local, "cancel", None)
    return bool(event is not None and event.is_set())


#: Variables of the host's Python that must not leak into another interpreter.
HOST_PYTHON_VARS = (
    "PYTHONPATH",
    "PYTHONHOME",
    "PYTHONSTARTUP",
    "PYTHONEXECUTABLE",
    "PYTHONUSERBASE",
    "__PYVENV_LAUNCHER__",
    "VIRTUAL_ENV",
    "CONDA_PREFIX",
)


def clean_environ(
    base: Mapping[str, str] | None = None,
    *,
    path_prefix: Sequence[str] = (),
    extra: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """The host environment without host Python variables, with ``path_prefix`` on PATH."""
    env = {
        k: v for k, v in (os.environ if base is None else base).items() if k not in HOST_PYTHON_VARS
    }
    if path_prefix:
        env["PATH"] = os.pathsep.join([*path_prefix, env.get("PATH", os.defpath)])
    if extra:
        env.update(extra)
    return env


def kill_process_group(proc: ToolProcess, grace: float = 2.0) -> None:
    """SIGTERM the process's whole group, then SIGKILL it after ``grace`` seconds."""
    if proc.poll() is not None and os.name != "posix":
        return
    if os.name == "posix":
        for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 5.0)):
            try:
                os.killpg(proc.pid, sig)
            except (ProcessLookupError, PermissionError):
                break
            deadline = time.monotonic() + wait
            while time.monotonic() < deadline:
                if proc.poll() is not None and not _group_alive(proc.pid):
                    return
                time.sleep(0.02)
    else:  # pragma: no cover - Windows
        proc.kill()
    import subprocess  # (imported where used: a warm ``ally list`` runs no process)

    try:
        proc.wait(timeout=5)
    except subprocess.TimeoutExpired:  # pragma: no cover - unkillable
        pass


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except (ProcessLookupError, PermissionError):
        return False
    return True


def _pump(
    stream: IO[bytes],
    sinks: Sequence[collections.deque[str]],
    on_line: Optional[Callable[[str], None]],
) -> None:
    for raw in iter(stream.readline, b""):
        line = raw.decode("utf-8", "replace").rstrip()
        for sink in sinks:
            sink.append(line)
        if on_line and line:
            on_line(line)
    stream.close()


def run_installer(
    argv: Sequence[str],
    *,
    cwd: Path,
    env: Mapping[str, str],
    timeout: float,
    on_line: Optional[Callable[[str], None]] = None,
    what: str = "install",
) -> str:
    """Run ``argv`` (no shell) streaming its output lines to ``on_line``; return stdout.

    A non-zero exit, a timeout or a missing executable raises :class:`InstallFailed` with the
    command and the lines of its output that say why
    (``ally_core.installer_output.error_lines``; the last lines of stderr when none has an
    error marker). An interruption (Ctrl-C, SIGTERM turned into an
    exception) kills the installer's whole process group before propagating.
    """
    import subprocess

    from .installer_output import failure_tail

    argv = [str(a) for a in argv]
    if _cancelled():
        raise KeyboardInterrupt
    try:
        proc = subprocess.Popen(
            argv,
            cwd=cwd,
            env=dict(env),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            start_new_session=True,
        )
    except (OSError, ValueError) as exc:  # ValueError: a NUL byte in an argument
        raise InstallFailed(
            f"{what} failed: cannot run {argv[0]}: {getattr(exc, 'strerror', None) or exc}",
            command=argv,
        ) from exc
    out: collections.deque[str] = collections.deque(maxlen=2000)
    err: collections.deque[str] = collections.deque(maxlen=200)
    # Both streams in the order they arrived, for the cause of a failure (pip says why a
    # resolution is impossible on stdout, its ERROR lines on stderr).
    both: collections.deque[str] = collections.deque(maxlen=2000)
    assert proc.stdout is not None and proc.stderr is not None
    pumps = [
        threading.Thread(target=_pump, args=(proc.stdout, (out, both), on_line), daemon=True),
        threading.Thread(target=_pump, args=(proc.stderr, (err, both), on_line), daemon=True),
    ]
    for t in pumps:
        t.start()
    exited = threading.Event()
    threading.Thread(target=_wait_then_set, args=(proc, exited), daemon=True).start()
    deadline = time.monotonic() + timeout
    try:
        while not exited.wait(min(0.2, max(0.0, deadline - time.monotonic()))):
            if _cancelled():
                raise KeyboardInterrupt
            if time.monotonic() >= deadline:
                raise subprocess.TimeoutExpired(argv, timeout)
    except subprocess.TimeoutExpired:
        kill_process_group(proc)
        raise InstallFailed(
            f"{what} timed out after {timeout:g}s: {_cmdline(argv)}",
            command=argv,
            stderr_tail=failure_tail(both, err, out),
        ) from None
    except BaseException:
        kill_process_group(proc)
        raise
    finally:
        for t in pumps:
            t.join(timeout=5)
    if proc.returncode != 0:
        raise InstallFailed(
            f"{what} failed ({_cmdline(argv)} exited with {proc.returncode})",
            command=argv,
            stderr_tail=failure_tail(both, err, out),
        )
    return "\n".join(out)


def _wait_then_set(proc: ToolProcess, event: threading.Event) -> None:
    proc.wait()
    event.set()


def _cmdline(argv: Sequence[str]) -> str:
    import shlex

    from .config import strip_credentials

    text = " ".join(shlex.quote(strip_credentials(a)) for a in argv)
    return text if len(text) < 200 else text[:197] + "..."
