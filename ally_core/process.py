"""Running installer processes: streamed output, whole-group kill, the cause on failure.

Runtimes call :func:`run_installer` instead of :mod:`subprocess` so that every installer
(pip, uv, npm, bundler) gets the same timeout, interruption and error behaviour, and a failure
whose one-line reason carries the lines of the output that say why (:func:`error_lines`).
"""

from __future__ import annotations

import collections
import contextlib
import os
import re
import signal
import subprocess
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
    "error_lines",
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


# -- picking the cause out of an installer's output ---------------------------------------------

#: Lines that say what went wrong, in the words of npm, pip, uv, bundler (and the exception
#: names of Python, Ruby and JavaScript tracebacks).
_MARKERS = re.compile(
    r"^\s*(?:npm (?:error|ERR!)|(?:ERROR|error|Error|FATAL|fatal)\s*[:!]|\[!\]|hint:"
    # uv's failure tree (its cross and arrow) and its plain-text form
    r"|\u00d7|\u2570\u2500\u25b6|(?:cause|Caused by):|(?:And )?[Bb]ecause )"
    r"|\b(?:Missing|Invalid): |\bCould not (?:find|resolve|install|build|fetch|open|parse)\b"
    r"|\bNo (?:solution found|matching (?:distribution|version))"
    r"|\bconflicting\b|\b[Tt]he conflict is\b|\b[Cc]onflicts? with\b|\bversion conflict\b"
    r"|\bBundler could not find\b|\bAn error occurred while\b|\b[A-Z]\w*(?:Error|Exception)\b"
)
#: Lines that never explain a failure: progress, pointers to logs, generic advice. The
#: indented lines that follow one are dropped with it.
_NOISE = re.compile(
    # npm
    r"A complete log of this run can be found in|Log files were not written"
    r"|Note that you can also install from a|tarball, folder, http url, or git url"
    r"|In most cases you or one of your dependencies are requesting"
    r"|a package version that doesn't exist|Run \"npm help \S+\" for more info"
    # uv
    r"|^Using (?:C?Python|PyPy) \S+ (?:environment|interpreter) at"
    r"|^(?:Resolved|Prepared|Installed|Uninstalled|Audited|Built|Downloaded) \d+ packages? "
    # pip
    r"|^(?:Looking in (?:indexes|links)|Collecting|Processing|Downloading|Obtaining|Using cached"
    r"|Requirement already satisfied|Installing collected packages|Successfully installed"
    r"|Building wheels? for|Preparing metadata|INFO: pip is looking at|\[notice\])"
    r"|^To fix this you could try to|^\d+\. (?:loosen|remove) "
    r"|^Additionally, some packages in these conflicts have no matching distributions"
    r"|^ERROR: ResolutionImpossible: for help visit"
    # bundler
    r"|^(?:Fetching |Resolving dependencies|Bundle complete|Using \S+ \S+$|Installing \S+ \S+$)"
)
#: What npm puts before each line of a message (a bare ``npm error 404`` is a blank line).
_NPM_PREFIX = re.compile(r"^npm (?:error|ERR!|warn|WARN|notice)(?: \d{3}\b)?(?: |$)")
#: A line longer than this is cut (uv's derivations can run to hundreds of characters).
_MAX_LINE = 500


def _without_npm_usage(lines: list[str]) -> list[str]:
    """``lines`` without the usage help npm prints after some errors (``npm ci`` with an
    out-of-sync lock prints its whole ``--help``): from the command's one-line description
    before ``Usage:`` to ``Run "npm help …" for more info``."""
    bodies = [_NPM_PREFIX.sub("", line, count=1).strip() for line in lines]
    try:
        usage = next(
            i for i, line in enumerate(lines) if _NPM_PREFIX.match(line) and bodies[i] == "Usage:"
        )
    except StopIteration:
        return lines
    start = usage
    while start > 0 and not bodies[start - 1]:
        start -= 1  # the blank lines before Usage:
    while start > 0 and bodies[start - 1] and _NPM_PREFIX.match(lines[start - 1]):
        start -= 1  # the description paragraph
    end = usage
    while end < len(lines) and _NPM_PREFIX.match(lines[end]):
        end += 1
        if bodies[end - 1].startswith('Run "npm help'):
            break
    return lines[:start] + lines[end:]


def error_lines(output: Sequence[str], limit: int = 5) -> list[str]:
    """The lines of an installer's ``output`` that tell why it failed, at most ``limit``.

    A line with an error marker (npm's ``npm error``, pip's ``ERROR:``, uv's ``error:``,
    ``cause:``, ``Because …`` and failure tree, ``Missing: … from lock file``, ``Could not
    find gem``, ``conflict``, an exception name, …) is kept together with the lines that
    continue it (up to the next blank line). Noise is dropped first: progress lines, pointers
    to log files, npm's usage help, pip's generic advice. With more than ``limit`` lines, the
    first two (the headline, the first cause) and the last ones are kept. ``[]`` when no line has a
    marker.
    """
    selected: list[str] = []
    state = ""  # "keep": continuing a marked line; "drop": continuing a noise line
    for raw in _without_npm_usage([line.rstrip() for line in output]):
        body = _NPM_PREFIX.sub("", raw, count=1).strip()
        if not body:
            state = ""
        elif _NOISE.search(body):
            state = "drop"
        elif _MARKERS.search(raw):
            state = "keep"
            selected.append(raw)
        elif state == "keep":
            selected.append(raw)
        elif not (state == "drop" and raw[:1].isspace()):
            state = ""
    lines = [
        line if len(line) <= _MAX_LINE else line[: _MAX_LINE - 1] + "…"
        for line in dict.fromkeys(line.strip() for line in selected)
    ]
    if len(lines) <= limit:
        return lines
    # The headline and the first cause, then how it ends (uv's conclusion, a hint).
    head = min(2, limit)
    return lines[:head] + lines[len(lines) - (limit - head) :]


def _failure_tail(both: Sequence[str], err: Sequence[str], out: Sequence[str]) -> str:
    """What an :class:`InstallFailed` shows of the output: the cause, else its last lines."""
    picked = error_lines(both)
    if not picked:
        for stream in (err, out):
            bodies = (_NPM_PREFIX.sub("", line, count=1).strip() for line in stream)
            kept = [body for body in bodies if body and not _NOISE.search(body)]
            if kept:
                picked = kept[-5:]
                break
    return "\n".join(picked)


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
    command and the lines of its output that say why (``error_lines``; the last lines of
    stderr when none has an error marker). An interruption (Ctrl-C, SIGTERM turned into an
    exception) kills the installer's whole process group before propagating.
    """
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
            stderr_tail=_failure_tail(both, err, out),
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
            stderr_tail=_failure_tail(both, err, out),
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
