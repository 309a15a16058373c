"""Start a ready MCP server from its launch record, importing nothing of ``ally_core``.

A host starts an MCP server on every session, and waits for it. ``ally mcp config
--via-launch`` therefore points hosts at this file, run by path::

    python -I .../ally_core/mcp_plugins/warm_launch.py RECORD -- [ALLY ARGS...] mcp launch P S

Run that way, Python never imports the ``ally_core`` package (whose import alone takes longer
than the whole start should): a warm start is an interpreter start, one JSON read, a few
``stat`` calls and an ``exec``. The record (``<envs_dir>/.mcp/<server>/launch.record``) is
written by ``ally install``, ``ally mcp config`` and ``ally mcp launch`` once the server's env
is ready. It holds the server's command line and environment *templates*, and the identities
(size, mtime, inode, ctime) of every file they were derived from: the plugin's manifest and
``.mcp.json``, ally's config file, the server's pins, the env's pointer and marker, the base
interpreter and the executable. When one of them changed, or the record is missing or was
written by another format, this file hands over to ``ally mcp launch`` (in this process: an
``exec`` of ``python -m ally_core.cli``, see :func:`hand_over`), which checks, repairs or
builds the env and writes a new record.

Environment variables are read at every start (``${VAR}`` is expanded then), but they do not
invalidate a record: a host usually starts servers with a scrubbed environment, and a ready
env must start offline whatever the host passes. ``ally install`` and ``ally update`` are
where index and registry settings take effect.

This module also holds what the full launch path shares with it: ``${VAR}`` expansion
(:func:`expand`), the server's environment (:func:`server_environ`) and the ``exec`` with its
watcher (:func:`exec_server`). It imports only built-in modules (no ``re``, ``json``,
``typing`` or ``signal``: each would cost a warm start milliseconds), and the record is
``marshal`` data, as ally's warm index is: it loads without a parser to import.
"""

from __future__ import annotations

# The C module behind ``signal``, which itself imports enum (milliseconds at every start).
import _signal  # type: ignore[import-not-found]
import marshal
import os
import select
import sys
import time

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence
    from typing import Any, Optional

__all__ = [
    "EXIT_WINDOW",
    "RECORD_FORMAT",
    "content_digest",
    "dump_record",
    "exec_server",
    "expand",
    "file_identity",
    "hand_over",
    "read_record",
    "server_argv",
    "server_environ",
]

#: Version of the launch record's shape; a record of another format is ignored.
RECORD_FORMAT = 1
#: The record file's first line: format and Python (marshal data is read by the Python that
#: wrote it; another one takes the full path and writes its own).
RECORD_HEADER = f"ally-launch-record {RECORD_FORMAT} {sys.implementation.cache_tag}\n".encode()
#: A server whose stderr closes within this many seconds of its start "exited at once": one
#: line with its stderr tail follows its own output.
EXIT_WINDOW = 5.0
#: Bytes of a server's stderr kept for that line.
_TAIL_BYTES = 4096

#: Lines of a stack trace that say where, not what (Node's ``at f (file:1:2)``, Python's
#: ``File "x.py", line 3``, Node's version footer): left out of the one-line summary.
_STACK_FRAMES = ("at ", 'File "', "Node.js v")
#: What ``${CLAUDE_PLUGIN_ROOT}`` names: the plugin's directory.
PLUGIN_ROOT_VAR = "CLAUDE_PLUGIN_ROOT"


def expand(
    text: str,
    environ: Mapping[str, str],
    root: Optional[str] = None,
    missing: Optional[list[str]] = None,
) -> str:
    """``text`` with ``${CLAUDE_PLUGIN_ROOT}``, ``${VAR}`` and ``${VAR:-default}`` expanded.

    ``${CLAUDE_PLUGIN_ROOT}`` is ``root`` (left as written when ``root`` is ``None``).
    ``${VAR:-default}`` gives ``default`` when ``VAR`` is unset or empty (as in a shell). An
    unset ``${VAR}`` without a default becomes empty, as in Code Ally, and its name is added
    to ``missing``. ``$VAR`` without braces is left alone, as both hosts do.
    """

    if "${" not in text:
        return text
    out = []
    i = 0
    while True:
        start = text.find("${", i)
        end = text.find("}", start + 2) if start >= 0 else -1
        if end < 0:
            out.append(text[i:])
            return "".join(out)
        name, colon_dash, default = text[start + 2 : end].partition(":-")
        if not _is_name(name):
            out.append(text[i : start + 2])  # not a reference: "${" stays as written
            i = start + 2
            continue
        out.append(text[i:start])
        i = end + 1
        if name == PLUGIN_ROOT_VAR:
            out.append(root if root is not None else text[start:i])
            continue
        value = environ.get(name)
        if value:
            out.append(value)
        elif colon_dash:
            out.append(default)
        elif value is None and missing is not None and name not in missing:
            missing.append(name)


def _is_name(text: str) -> bool:
    """``[A-Za-z_][A-Za-z0-9_]*``, without ``re``."""
    return (
        bool(text) and text.isascii() and not text[0].isdigit() and text.replace("_", "a").isalnum()
    )


def file_identity(path: str, *, follow: bool = True) -> Optional[list[int]]:
    """``[size, mtime_ns, inode, ctime_ns]`` of ``path``, or ``None`` if it does not exist."""
    try:
        st = os.stat(path) if follow else os.lstat(path)
    except OSError:
        return None
    return [st.st_size, st.st_mtime_ns, st.st_ino, st.st_ctime_ns]


def content_digest(path: str) -> Optional[str]:
    """SHA-256 of a (small) file's bytes, or ``None`` if it cannot be read."""
    import hashlib

    try:
        with open(path, "rb") as fh:
            return hashlib.sha256(fh.read()).hexdigest()
    except OSError:
        return None


def read_record(path: str) -> Optional[dict[str, Any]]:
    """The launch record at ``path`` if it is still true, else ``None``.

    True means: same format, every watched file has the identity it had when the record was
    written (a file recorded as absent is still absent) and every watched link still points
    where it did. Costs one read and a ``stat`` per watched file. A file that had changed
    just before the record was written is recorded with its content's SHA-256 as well, and
    read again: within one timestamp tick a change can leave size, mtime and inode as they
    were (git's "racily clean" files).
    """
    try:
        with open(path, "rb") as fh:
            data = fh.read()
        if not data.startswith(RECORD_HEADER):
            return None
        # ally's own file in its own store, as trusted as the envs around it (so is the
        # warm index, in the same format).
        record = marshal.loads(data[len(RECORD_HEADER) :])  # noqa: S302
        if record.get("format") != RECORD_FORMAT:
            return None
        for watched, identity, digest in record["watch"]:
            if file_identity(watched) != identity:
                return None
            if digest is not None and content_digest(watched) != digest:
                return None
        for link, target in record["links"]:
            if os.readlink(link) != target:
                return None
        if not isinstance(record["argv"], list) or not record["argv"]:
            return None
    except (OSError, ValueError, KeyError, TypeError, AttributeError, EOFError):
        return None
    return record if isinstance(record, dict) else None


def dump_record(record: Mapping[str, Any]) -> bytes:
    """The bytes of a record file (plain data only: str, int, None, lists and dicts)."""
    return RECORD_HEADER + marshal.dumps(dict(record))


def server_environ(
    record: Mapping[str, Any], environ: Mapping[str, str], missing: Optional[list[str]] = None
) -> dict[str, str]:
    """The server's environment: a minimal one, the env's own variables, then the declared ones.

    Passed from ``environ``: the variables named by ``record["pass"]`` (ally's minimal set for
    tools plus ``ALLY_PASS_ENV``) and locale variables. Then the env's variables
    (``record["runtime_env"]``), its bin directories first on ``PATH``, and last the server's
    declared ``env`` with ``${VAR}`` expanded from ``environ`` (unset names go to ``missing``).
    """
    passed = set(record["pass"])
    locale = set(record.get("locale", ()))
    out = {k: v for k, v in environ.items() if k in passed or k in locale}
    out.update(record.get("runtime_env", {}))
    prefix = record.get("path_prefix", [])
    if prefix:
        out["PATH"] = os.pathsep.join([*prefix, out.get("PATH", os.defpath)])
    root = record.get("root")
    for key, template in record.get("env", {}).items():
        out[key] = expand(template, environ, root, missing)
    return out


def server_argv(
    record: Mapping[str, Any], environ: Mapping[str, str], missing: Optional[list[str]] = None
) -> list[str]:
    """The server's command line, ``${VAR}`` expanded from ``environ``."""
    root = record.get("root")
    return [expand(a, environ, root, missing) for a in record["argv"]]


def _which(command: str, path: str) -> Optional[str]:
    if os.sep in command or (os.altsep and os.altsep in command):
        return command if os.access(command, os.X_OK) and not os.path.isdir(command) else None
    for directory in path.split(os.pathsep):
        candidate = os.path.join(directory or ".", command)
        if os.access(candidate, os.X_OK) and not os.path.isdir(candidate):
            return candidate
    return None


def _say(text: str) -> None:
    # Names come from plugins: control characters are shown as escapes, never sent to a
    # terminal (as ally_core.text.printable does, which this module cannot import).
    text = "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)
    try:
        os.write(2, f"ally: {text}\n".encode("utf-8", "replace"))
    except OSError:
        pass


def exec_server(argv: Sequence[str], env: Mapping[str, str], label: str) -> int:
    """Replace this process with the server; return (an exit code) only if it cannot start.

    The server keeps this process's id, stdin and stdout: the host talks to it directly and
    signals reach it directly. Its stderr goes through a small relay (a forked child of this
    process) that copies it to the host's stderr as it comes; if it closes within
    :data:`EXIT_WINDOW` seconds because the server exited, the relay adds one line,
    ``ally: LABEL exited at once: <last lines of its stderr>`` (unless the host had closed
    the server's stdin first: that is how a host stops a server). After the window the relay
    becomes ``cat`` (or keeps copying, where there is none) until the server's stderr closes.
    """
    exe = _which(argv[0], env.get("PATH", os.defpath))
    if exe is None:
        _say(f"{label}: cannot run {argv[0]}: not found")
        return 127
    if os.name != "posix":  # pragma: no cover - no fork/exec semantics to keep
        import subprocess

        return subprocess.call([exe, *argv[1:]], env=dict(env))
    sys.stdout.flush()
    sys.stderr.flush()
    read_end, write_end = os.pipe()
    server_pid = os.getpid()
    relay = os.fork()
    if relay == 0:  # pragma: no cover - runs in the forked relay (tests observe its output)
        try:
            os.close(write_end)
            _relay(read_end, server_pid, label)
        finally:
            os._exit(0)
    os.close(read_end)
    os.dup2(write_end, 2)
    os.close(write_end)
    # What subprocess does for a child (restore_signals): Python ignores SIGPIPE and SIGXFSZ,
    # and an ignored signal stays ignored across exec.
    for name in ("SIGPIPE", "SIGXFSZ"):
        if hasattr(_signal, name):
            _signal.signal(getattr(_signal, name), _signal.SIG_DFL)
    try:
        os.execve(exe, list(argv), dict(env))  # noqa: S606 - replacing ourselves is the point
    except OSError as exc:
        _say(f"{label}: cannot run {exe}: {exc.strerror or exc}")
    return 126


def _relay(source: int, server_pid: int, label: str) -> None:  # pragma: no cover - see above
    """Copy the server's stderr to ours; one line more if it exits within the window."""
    # Let go of the host's pipes: holding its stdout open would hide the server's exit from
    # the host. Its stdin is only watched (never read) during the window.
    host_in = os.dup(0)
    devnull = os.open(os.devnull, os.O_RDWR)
    os.dup2(devnull, 0)
    os.dup2(devnull, 1)
    os.close(devnull)
    _signal.signal(_signal.SIGINT, _signal.SIG_IGN)  # a terminal's Ctrl-C is the server's
    deadline = time.monotonic() + EXIT_WINDOW
    tail = b""
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            break
        ready, _, _ = select.select([source], [], [], left)
        if not ready:
            break
        data = os.read(source, 65536)
        if not data:
            if not _closed_by_host(host_in) and _gone(server_pid):
                lines = [
                    line.strip()
                    for line in tail.decode("utf-8", "replace").splitlines()
                    if line.strip() and not line.lstrip().startswith(_STACK_FRAMES)
                ]
                shown = " | ".join(lines[-5:]) or "no output on stderr"
                _say(f"{label} exited at once: {shown}")
            return
        _copy(data)
        tail = (tail + data)[-_TAIL_BYTES:]
    os.close(host_in)
    try:
        os.dup2(source, 0)
        os.dup2(2, 1)
        os.execvp("cat", ["cat"])  # noqa: S606 - a relay that outlives nothing of ours
    except OSError:
        pass
    while True:
        data = os.read(source, 65536)
        if not data:
            return
        _copy(data)


def _copy(data: bytes) -> None:
    try:
        while data:
            data = data[os.write(2, data) :]
    except OSError:
        pass  # the host's stderr is gone: keep draining so the server never blocks on it


def _closed_by_host(fd: int) -> bool:  # pragma: no cover - runs in the relay
    """Whether the server's stdin (``fd``, a copy) has no writer left: the host hung up.

    A pipe or socket says so with POLLHUP (POLLRDHUP: the peer shut down its side) without
    a byte being read. A file or ``/dev/null`` has no host behind it: hung up too.
    """
    import stat

    try:
        mode = os.fstat(fd).st_mode
    except OSError:
        return True
    if not (stat.S_ISFIFO(mode) or stat.S_ISSOCK(mode)):
        return not os.isatty(fd)
    hangup = select.POLLHUP | getattr(select, "POLLRDHUP", 0)
    poller = select.poll()
    poller.register(fd, select.POLLIN | hangup)
    return any(events & hangup for _fd, events in poller.poll(0))


def _gone(pid: int) -> bool:
    """Whether the server (the relay's parent) exited: the relay was re-parented, or the
    server is a zombie. Waits up to 0.2 s (a process closes its files just before that)."""
    for _ in range(20):
        if os.getppid() != pid:
            return True
        try:
            with open(f"/proc/{pid}/stat", "rb") as fh:
                if fh.read().rpartition(b")")[2].split()[0] in {b"Z", b"X"}:
                    return True
        except (OSError, IndexError):
            pass
        time.sleep(0.01)
    return False


def hand_over(ally_args: Sequence[str]) -> int:
    """Replace this process with ``ally ALLY-ARGS`` (``python -m ally_core.cli``, with this
    interpreter's ``-I`` and ``-X`` options); return (an exit code) only if it cannot start.

    An ``exec``, not an import: this file stays a script that knows ``ally`` by its command
    line only, and the process keeps its id, stdin and stdout for the server ``ally`` starts.
    """
    options = ["-I"] if sys.flags.isolated else []
    for key, value in getattr(sys, "_xoptions", {}).items():
        options += ["-X", key if value is True else f"{key}={value}"]
    argv = [sys.executable, *options, "-m", "ally_core.cli", *ally_args]
    try:
        sys.stderr.flush()
        os.execv(sys.executable, argv)  # noqa: S606 - handing over is the point
    except OSError as exc:
        _say(f"cannot start ally ({sys.executable}): {exc.strerror or exc}")
    return 126


def start(record_path: str, fallback: Sequence[str], environ: Mapping[str, str]) -> int:
    """Start the server of the record at ``record_path``, or hand over to ``ally`` with
    ``fallback`` (its command-line arguments) when the record is not usable."""
    record = read_record(record_path)
    if record is None:
        return hand_over(fallback)
    missing: list[str] = []
    argv = server_argv(record, environ, missing)
    env = server_environ(record, environ, missing)
    for name in missing:
        _say(f"{record.get('label', '?')}: ${{{name}}} is not set; passing an empty value")
    return exec_server(argv, env, str(record.get("label", "?")))


def main(args: Sequence[str]) -> int:
    """``warm_launch.py RECORD -- ALLY-ARGS...``."""
    if len(args) < 2 or args[1] != "--":
        _say("usage: warm_launch.py RECORD -- ALLY-ARGS...")
        return 2
    return start(args[0], args[2:], os.environ)


if __name__ == "__main__":  # pragma: no cover - run by path, see the module docstring
    sys.exit(main(sys.argv[1:]))
