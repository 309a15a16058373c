"""The ``ally`` command's entry: ``ally run`` of a ready plugin, and ``ally list`` of a home
whose plugins are all ready, without importing ally's core.

Hosts in other languages call ``ally run PLUGIN TOOL`` once per tool call. Importing ally's
core (attrs classes, pluggy, the runtimes) costs several times what starting the tool does,
so the console script starts here. When the command line is a plain ``ally run`` and the
plugin's *run record* (:mod:`ally_core.run_records`, written by the full path) is still true,
this module runs the tool itself, importing only built-in modules and
:mod:`ally_core.lean`: a record read, a ``stat`` per watched file, the tool started in its
session and cgroup, its reply read, the same output as the full path. Anything else —
another command, an option this path does not handle, no record, a record that no longer
holds, a command no longer where it was — goes to :func:`ally_core.cli.main`, before the
tool's input is read.

What it does is the full path's, step for step (tests run both and compare): the input read
from ``--input`` or stdin, the tool's minimal environment, its command resolved the same way,
a new session, the parent-death signal and a cgroup per call (entered as the process is
created: ``clone3`` with ``CLONE_INTO_CGROUP`` spares the wait a later move into the cgroup
costs), the timeout and output limit, the group and cgroup killed at the end, the reply read
by :func:`ally_core.lean.read_reply` and printed as ``ally run`` prints it, the same exit codes.

``ally list`` and ``ally list --json`` (``-q`` allowed) print what the full path printed last
time, from the home's list record, while every fact it rests on holds: the full path writes
one only when every plugin is ready on its current env with no warning and no Claude-style
plugin is around (what a plugin that is not ready shows can change with time alone).

``ALLY_QUICK_RUN=0`` sends every command to the full path.
"""

from __future__ import annotations

import _signal  # type: ignore[import-not-found]  # signal itself imports enum
import marshal
import os
import sys
import time

from . import lean
from .__about__ import __version__

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence
    from typing import Any, Optional

__all__ = ["main"]

EXIT_OK, EXIT_ERROR, EXIT_TOOL_FAILED, EXIT_INTERRUPTED = 0, 1, 3, 130
#: Seconds between SIGTERM and SIGKILL when a call is ended (as :mod:`ally_core.tools`).
GRACE_SECONDS = 2.0
_SIGKILL, _SIGTERM, _SIGCHLD = 9, 15, 17
_PR_SET_PDEATHSIG = 1
_CLONE_PIDFD, _CLONE_INTO_CGROUP = 0x1000, 0x200000000
#: ``clone3``'s number where it is the generic one (x86-64, arm64, riscv, loongarch).
_SYS_CLONE3 = {"x86_64": 435, "aarch64": 435, "arm64": 435, "riscv64": 435, "loongarch64": 435}


class _ToolError(Exception):
    """What the full path raises as a ToolError: printed as ``ally: error: ...``, exit 1."""


def main(argv: Optional[Sequence[str]] = None) -> int:
    """``ally ARGS...``: the quick path of ``ally run`` when it applies, else the full CLI."""
    args = sys.argv[1:] if argv is None else list(argv)
    if lean.quick_run_enabled(os.environ):
        try:
            if "run" in args[:3]:
                call = _prepare(args)
                if call is not None:
                    return _run(call)
            elif "list" in args[:3]:
                listed = _listed(args)
                if listed is not None:
                    sys.stdout.write(listed)
                    return EXIT_OK
        except (OSError, ValueError):  # the working directory is gone, say: the full path
            pass  # says what is wrong (nothing was read or started yet)
    from .cli import main as full

    return full(args)


# -- the command line and the record -----------------------------------------------------------


def _parse(args: Sequence[str]) -> Optional[dict[str, Any]]:
    """``[-q] run PLUGIN TOOL [--input J] [--timeout S] [--json] [-q]``; anything else is
    ``None`` (the full path parses it, with its messages)."""
    opts: dict[str, Any] = {"quiet": False, "json": False, "input": None, "timeout": None}
    i = 0
    while i < len(args) and args[i] in ("-q", "--quiet"):
        opts["quiet"] = True
        i += 1
    if args[i : i + 1] != ["run"]:
        return None
    words: list[str] = []
    i += 1
    while i < len(args):
        word = args[i]
        if word in ("-q", "--quiet"):
            opts["quiet"] = True
        elif word == "--json":
            opts["json"] = True
        elif word in ("--input", "--timeout"):
            if i + 1 >= len(args) or args[i + 1].startswith("-"):
                return None
            opts[word[2:]] = args[i + 1]
            i += 1
        elif word.startswith(("--input=", "--timeout=")):
            key, _, value = word[2:].partition("=")
            opts[key] = value
        elif word.startswith("-"):
            return None
        else:
            words.append(word)
        i += 1
    if len(words) != 2:
        return None
    opts["plugin"], opts["tool"] = words
    if opts["timeout"] is not None:
        try:
            timeout = float(opts["timeout"])
        except ValueError:
            return None
        if not timeout > 0:  # the full path's message for it
            return None
        opts["timeout"] = timeout
    return opts


def _plugin_name(name: str) -> bool:
    """``[A-Za-z0-9][A-Za-z0-9._-]{0,127}`` (ally_core.paths.PLUGIN_NAME_RE), without ``re``."""
    return (
        0 < len(name) <= 128
        and name.isascii()
        and name[0].isalnum()
        and all(c.isalnum() or c in "._-" for c in name)
    )


def _absolute(path: str) -> str:
    """``str(Path(path).absolute())`` without pathlib: the spelling the full path uses."""
    if not path.startswith("/"):
        path = f"{os.getcwd()}/{path}"
    lead = "//" if path.startswith("//") and not path.startswith("///") else "/"
    return lead + "/".join(p for p in path.split("/") if p and p != ".")


def _envs_dir(environ: Mapping[str, str]) -> Optional[str]:
    """The env store of this environment's ally home (``None``: only platformdirs knows,
    and importing it costs more than the quick path may)."""
    home = environ.get("ALLY_HOME")
    if home:
        return _absolute(os.path.expanduser(home)) + "/plugin-envs"
    if not sys.platform.startswith("linux"):
        return None
    data = environ.get("XDG_DATA_HOME", "")
    if not data.startswith("/"):
        user_home = environ.get("HOME", "")
        if not user_home.startswith("/"):
            return None
        data = f"{user_home}/.local/share"
    return _absolute(data) + "/ally/plugin-envs"


def _listed(args: Sequence[str]) -> Optional[str]:
    """What ``[-q] list [--json] [-q]`` prints, from its record (``None``: the full path)."""
    words = [a for a in args if a not in ("-q", "--quiet")]
    if words == ["list"] or words == ["list", "--json"]:
        record = _record(lean.LIST_JSON if len(words) == 2 else lean.LIST)
        if record is not None and isinstance(record.get("text"), str):
            return str(record["text"])
    return None


def _record(plugin: str) -> Optional[dict[str, Any]]:
    """The plugin's run record (or ``ally list``'s) if every fact it rests on still holds,
    else ``None``."""
    environ = os.environ
    envs_dir = _envs_dir(environ)
    if envs_dir is None or not (_plugin_name(plugin) or plugin in (lean.LIST, lean.LIST_JSON)):
        return None
    digest = lean.environ_digest(environ)
    try:
        with open(lean.run_record_path(envs_dir, plugin, digest), "rb") as fh:
            data = fh.read()
    except OSError:
        return None
    header = lean.RUN_RECORD_HEADER
    if not data.startswith(header):
        return None
    try:
        # ally's own file in the user's own env store, as trusted as the envs beside it.
        record = marshal.loads(data[len(header) :])  # noqa: S302
        if (
            not isinstance(record, dict)
            or record.get("version") != __version__
            or record.get("python") != sys.executable
            or record.get("environ") != digest
            or record.get("envs_dir") != envs_dir
            or record.get("plugin") != plugin
        ):
            return None
        cwd = record.get("cwd")
        if cwd is not None and cwd != os.getcwd():
            return None
        identity = lean.file_identity
        for path, known in record["watch"]:
            if identity(path) != known:
                return None
        for link, target in record["links"]:
            if os.readlink(link) != target:
                return None
    except (OSError, ValueError, KeyError, TypeError, EOFError):
        return None
    return record


def _which(command: str, path: str) -> Optional[str]:
    """``shutil.which(command, path=path)`` on POSIX, for a bare command name."""
    if not path:
        return None
    seen = set()
    for folder in path.split(os.pathsep):
        if folder in seen:
            continue
        seen.add(folder)
        name = os.path.join(folder, command)
        usable = os.path.exists(name) and os.access(name, os.F_OK | os.X_OK)
        if usable and not os.path.isdir(name):
            return name
    return None


def _inside(plugin_dir: str, parts: Sequence[str]) -> bool:
    """No component of ``plugin_dir/parts`` is a symlink (ally_core.paths.contained_path's
    quick answer; the full path judges the others)."""
    current = plugin_dir
    for part in parts:
        current = os.path.join(current, part)
        if os.path.islink(current):
            return False
    return True


def _prepare(args: Sequence[str]) -> Optional[dict[str, Any]]:
    """Everything the call needs, or ``None`` for the full path (nothing read or started)."""
    opts = _parse(args)
    if opts is None:
        return None
    for fd in (0, 1, 2):
        try:
            os.fstat(fd)
        except OSError:
            return None  # a closed standard stream: the full path copes
    record = _record(opts["plugin"])
    if record is None:
        return None
    entry = record["tools"].get(opts["tool"])
    if entry is None:
        return None
    plugin_dir = record["plugin_dir"]
    passed, locale = set(record["pass"]), set(record["locale"])
    environ = {k: v for k, v in os.environ.items() if k in passed or k in locale}
    environ.update(record["env_vars"])
    if record["bin_dirs"]:
        environ["PATH"] = os.pathsep.join([*record["bin_dirs"], environ.get("PATH", os.defpath)])
    environ["ALLY_PLUGIN_NAME"] = record["plugin"]
    environ["ALLY_PLUGIN_DIR"] = plugin_dir
    environ.setdefault("PYTHONIOENCODING", "utf-8")
    command = entry["command"]
    if entry.get("lookup"):
        command = _which(command, environ.get("PATH", ""))
        if command is None:
            return None
    elif "inside" in entry and not _inside(plugin_dir, entry["inside"]):
        return None
    from _thread import TIMEOUT_MAX

    return {
        **opts,
        "label": f"{record['plugin']}: tool {opts['tool']!r}",
        "argv": [command, *entry["args"]],
        "cwd": plugin_dir,
        "environ": environ,
        "timeout": min(opts["timeout"] or entry["timeout"], TIMEOUT_MAX),
        "limit": record["output_limit"],
    }


# -- the call ----------------------------------------------------------------------------------


def _read_input(text: Optional[str]) -> Any:
    """The tool's input: ``--input``, else stdin (not a terminal), else ``{}``."""
    if text is None and not sys.stdin.isatty():
        text = sys.stdin.read()
    if not text or not text.strip():
        return {}
    try:
        return lean.loads_bounded(text)
    except RecursionError:
        raise _ToolError("--input is nested too deeply") from None
    except ValueError as exc:
        raise _ToolError(f"--input is not valid JSON: {exc}") from None


def _say(text: str) -> None:
    print(lean.printable(text), file=sys.stderr)


def _on_sigterm(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


def _run(call: dict[str, Any]) -> int:
    """Run the prepared call; print what ``ally run`` prints; its exit code."""
    if hasattr(_signal, "SIGTERM"):
        _signal.signal(_signal.SIGTERM, _on_sigterm)
    try:
        arguments = _read_input(call["input"])
        payload = lean.dumps({} if arguments is None else arguments).encode()
        fields = _Call(call).run(payload)
    except KeyboardInterrupt:
        print("ally: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except _ToolError as exc:
        _say(f"ally: error: {exc}")
        return EXIT_ERROR
    if call["json"]:
        import json

        data = {"plugin": call["plugin"], "tool": call["tool"], **lean.result_json(fields)}
        sys.stdout.write(json.dumps({"ally": 1, **data}, indent=2, default=str) + "\n")
    else:
        keys = ("success", "reply", "result", "error", "error_type")
        shown = lean.reply_json(*(fields[key] for key in keys))
        if sys.stdout.isatty():
            import json

            print(json.dumps(shown, indent=2))
        else:
            print(lean.dumps(shown))
        if not fields["success"] and not call["quiet"]:
            _say(f"ally: {lean.failure_line(call['plugin'], call['tool'], fields['error'])}")
    return EXIT_OK if fields["success"] else EXIT_TOOL_FAILED


class _Call:
    """One tool process: started in its session and cgroup, fed, read, ended."""

    def __init__(self, call: dict[str, Any]) -> None:
        self.call = call
        self.pid = 0
        self.status: Optional[int] = None
        self.cgroup: Optional[str] = None
        self.pidfd = -1
        self.out = bytearray()
        self.err = bytearray()
        self.size = {1: 0, 2: 0}
        self.in_w = self.out_r = self.err_r = -1

    # -- start ---------------------------------------------------------------------------------

    def _make_cgroup(self) -> Optional[int]:
        """A cgroup for this call, as a directory fd (``None``: none may be made here)."""
        if not lean.cgroup_wanted(os.environ):
            return None
        root = lean.own_cgroup2()
        if root is None:
            return None
        lean.reap_stale(root)
        path = os.path.join(root, f"{lean.CGROUP_PREFIX}{os.getpid()}-0")
        try:
            os.mkdir(path)
        except OSError:
            return None
        try:
            fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except OSError:
            os.rmdir(path)
            return None
        self.cgroup = path
        return fd

    def start(self) -> None:
        """Start the tool, with pipes to its stdin, stdout and stderr."""
        call = self.call
        in_r, in_w = os.pipe()
        out_r, out_w = os.pipe()
        err_r, err_w = os.pipe()
        fail_r, fail_w = os.pipe()
        cgroup_fd = self._make_cgroup()
        libc = _libc()
        try:
            try:
                pid = self._clone(libc, cgroup_fd) if libc is not None else -1
            except Exception:  # ctypes cannot make the call here
                pid = -1
            procs_fd = None
            if pid < 0:  # no clone3 here: fork, and join the cgroup from the child
                if cgroup_fd is not None:
                    procs_fd = os.open("cgroup.procs", os.O_WRONLY | os.O_CLOEXEC, dir_fd=cgroup_fd)
                pid = os.fork()
            if pid == 0:  # pragma: no cover - the child, until exec (tests see what it does)
                self._child(libc, procs_fd, (in_r, out_w, err_w), fail_w)
            self.pid = pid
        finally:
            if cgroup_fd is not None:
                os.close(cgroup_fd)
            for fd in (in_r, out_w, err_w, fail_w):
                os.close(fd)
        if self.pidfd < 0:
            try:
                self.pidfd = os.pidfd_open(pid)
            except (OSError, AttributeError):
                self.pidfd = -1
        failure = b""
        while chunk := os.read(fail_r, 64):
            failure += chunk
        os.close(fail_r)
        if failure:
            self._reap()
            for fd in (in_w, out_r, err_r):
                os.close(fd)
            code = int(failure) if failure.isdigit() else 0
            why = os.strerror(code) if code else failure.decode("utf-8", "replace")
            raise _ToolError(f"{call['label']}: cannot run {call['argv'][0]}: {why}")
        self.in_w, self.out_r, self.err_r = in_w, out_r, err_r

    def _clone(self, libc: Any, cgroup_fd: Optional[int]) -> int:
        """``clone3`` into the call's cgroup (and a pidfd); -1 where the kernel or a seccomp
        filter refuses it."""
        number = _SYS_CLONE3.get(os.uname().machine)
        if number is None:
            return -1
        ctypes, lib = libc
        pidfd = ctypes.c_int(-1)
        names = "flags pidfd child_tid parent_tid exit_signal stack stack_size tls set_tid"
        fields = [(n, ctypes.c_uint64) for n in (*names.split(), "set_tid_size", "cgroup")]
        args_type = type("clone_args", (ctypes.Structure,), {"_fields_": fields})
        flags = _CLONE_PIDFD | (_CLONE_INTO_CGROUP if cgroup_fd is not None else 0)
        clone_args = args_type(
            flags=flags,
            pidfd=ctypes.addressof(pidfd),
            exit_signal=_SIGCHLD,
            cgroup=cgroup_fd if cgroup_fd is not None else 0,
        )
        sys.stdout.flush()
        sys.stderr.flush()
        pid = int(lib.syscall(number, ctypes.byref(clone_args), ctypes.sizeof(clone_args)))
        if pid > 0:
            self.pidfd = pidfd.value
        return pid if pid >= 0 else -1

    def _child(  # pragma: no cover - runs between clone and exec
        self, libc: Any, procs_fd: Optional[int], fds: tuple[int, int, int], fail_w: int
    ) -> None:
        """In the new process: what subprocess does for the full path, then exec."""
        call = self.call
        try:
            for target, fd in enumerate(fds):
                os.dup2(fd, target)
            os.chdir(call["cwd"])
            for name in ("SIGPIPE", "SIGXFSZ"):
                if hasattr(_signal, name):
                    _signal.signal(getattr(_signal, name), _signal.SIG_DFL)
            os.setsid()
            if procs_fd is not None:
                os.write(procs_fd, b"0")
            if libc is not None:
                libc[1].prctl(_PR_SET_PDEATHSIG, _SIGKILL, 0, 0, 0)
            # Last, as subprocess does: nothing of ally's reaches the tool.
            os.closerange(3, fail_w)
            os.closerange(fail_w + 1, os.sysconf("SC_OPEN_MAX"))
            argv = call["argv"]
            os.execve(argv[0], argv, call["environ"])  # noqa: S606 - no shell, as subprocess
        except OSError as exc:
            os.write(fail_w, str(exc.errno or 0).encode())
        except BaseException as exc:
            os.write(fail_w, f"{exc.__class__.__name__}: {exc}".encode("utf-8", "replace"))
        finally:
            os._exit(255)

    # -- run -----------------------------------------------------------------------------------

    def run(self, payload: bytes) -> dict[str, Any]:
        """The call, from start to read reply (fields of :func:`ally_core.lean.read_reply`)."""
        call = self.call
        start = time.monotonic()
        try:
            self.start()
            try:
                reason = self._wait(payload, start)
            except BaseException:
                self._kill_group(GRACE_SECONDS)
                self._kill_cgroup_members()
                raise
            if reason:
                self._kill_group(GRACE_SECONDS)
            elif self._reap() is not None and self._group_alive():
                # The tool exited; children it left behind must not outlive the call.
                self._kill_group(0.0)
            # Descendants that left the process group (setsid) are still in the cgroup.
            self._kill_cgroup_members()
            self._drain()
            if not reason and max(self.size.values()) > call["limit"]:
                # Read after the exit (or written by a descendant since): over all the same.
                reason = f"output exceeded {call['limit']} bytes"
            duration = time.monotonic() - start
            if reason:
                raise _ToolError(f"{call['label']} {reason}; killed")
            code = os.waitstatus_to_exitcode(self._reap())
        finally:
            for name in ("in_w", "out_r", "err_r", "pidfd"):
                self._close(name)
            if self.cgroup is not None:
                lean.kill_cgroup(self.cgroup)
        out = self.out.decode("utf-8", "replace")
        err = self.err.decode("utf-8", "replace")
        return lean.read_reply(out, err, code, label=call["label"], duration=duration)

    def _close(self, name: str) -> None:
        fd = getattr(self, name)
        if fd >= 0:
            setattr(self, name, -1)
            os.close(fd)

    def _wait(self, payload: bytes, start: float) -> str:
        """Feed and read the tool until it exits; why it must be ended instead ("" if not)."""
        import select

        in_w, out_r, err_r = self.in_w, self.out_r, self.err_r
        call = self.call
        deadline = start + call["timeout"]
        poller = select.poll()
        poller.register(out_r, select.POLLIN)
        poller.register(err_r, select.POLLIN)
        if self.pidfd >= 0:
            poller.register(self.pidfd, select.POLLIN)
        pending = memoryview(payload)
        if len(payload) <= getattr(select, "PIPE_BUF", 512):
            self._write(in_w, pending)  # an empty pipe takes it at once
            pending = pending[len(pending) :]
        if pending:
            os.set_blocking(in_w, False)
            poller.register(in_w, select.POLLOUT)
        else:
            self._close("in_w")
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return f"timed out after {call['timeout']:g}s"
            step = remaining if self.pidfd >= 0 else min(remaining, 0.02)
            for fd, _event in poller.poll(min(step, 3600.0) * 1000 + 1):
                if fd == self.pidfd:
                    return ""
                if fd == in_w:
                    pending = pending[self._write(in_w, pending) :]
                    if not pending:
                        poller.unregister(in_w)
                        self._close("in_w")
                    continue
                if not self._read(fd):
                    poller.unregister(fd)
                elif self.size[1] > call["limit"] or self.size[2] > call["limit"]:
                    return f"output exceeded {call['limit']} bytes"
            if self.pidfd < 0 and self._poll() is not None:
                return ""

    def _write(self, fd: int, data: memoryview) -> int:
        """Write what the pipe takes now; all of it counts as written if the tool is gone
        (it did not read its input: that is its business)."""
        try:
            return os.write(fd, data)
        except BlockingIOError:
            return 0
        except OSError:
            return len(data)

    def _read(self, fd: int) -> bool:
        """Read a chunk of stdout or stderr (kept up to the limit); ``False`` at its end."""
        try:
            chunk = os.read(fd, 65536)
        except OSError:
            chunk = b""
        if not chunk:
            return False
        which = 1 if fd == self.out_r else 2
        kept = self.out if which == 1 else self.err
        room = self.call["limit"] - self.size[which]
        if room > 0:
            kept += chunk[:room]
        self.size[which] += len(chunk)
        return True

    def _drain(self) -> None:
        """Read stdout and stderr to their ends (5 s at most)."""
        import select

        self._close("in_w")
        deadline = time.monotonic() + 5.0
        left = {self.out_r, self.err_r}
        while left:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            ready, _, _ = select.select(list(left), [], [], remaining)
            for fd in ready:
                if not self._read(fd):
                    left.discard(fd)

    # -- end -----------------------------------------------------------------------------------

    def _poll(self) -> Optional[int]:
        """The tool's wait status if it exited (reaped), else ``None``."""
        if self.status is None:
            pid, status = os.waitpid(self.pid, os.WNOHANG)
            if pid == self.pid:
                self.status = status
        return self.status

    def _reap(self) -> int:
        if self.status is None:
            self.status = os.waitpid(self.pid, 0)[1]
        return self.status

    def _group_alive(self) -> bool:
        try:
            os.killpg(self.pid, 0)
        except (ProcessLookupError, PermissionError):
            return False
        return True

    def _kill_group(self, grace: float) -> None:
        """SIGTERM the tool's process group, then SIGKILL it after ``grace`` seconds
        (ally_core.process.kill_process_group)."""
        for sig, wait in ((_SIGTERM, grace), (_SIGKILL, 5.0)):
            try:
                os.killpg(self.pid, sig)
            except (ProcessLookupError, PermissionError):
                break
            deadline = time.monotonic() + wait
            while time.monotonic() < deadline:
                if self._poll() is not None and not self._group_alive():
                    return
                time.sleep(0.02)
        deadline = time.monotonic() + 5.0
        while self._poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)

    def _kill_cgroup_members(self) -> None:
        if self.cgroup is not None:
            try:
                with open(f"{self.cgroup}/cgroup.kill", "w") as fh:
                    fh.write("1")
            except OSError:
                pass


def _libc() -> Optional[tuple[Any, Any]]:
    """``(ctypes, libc)`` on Linux, for ``clone3`` and ``prctl`` (``None`` elsewhere)."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        import ctypes

        lib = ctypes.CDLL("libc.so.6", use_errno=True)
        lib.syscall.restype = ctypes.c_long
    except (ImportError, OSError):
        return None
    return ctypes, lib
