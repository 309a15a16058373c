"""Running a plugin's tool: the env's interpreter injected, JSON in, JSON out, nothing leaked.

A tool process gets:

* ``cwd`` = the plugin's directory, no shell;
* its command replaced by the env's interpreter when the runtime maps it (``python3`` → the
  env's python, ``node`` → the node the env was built with), else looked up in the env's bin
  dirs, then on ``PATH``; a relative path must stay inside the plugin directory;
* a minimal environment (see :data:`PASSED_VARS`): the host's secrets do not reach plugin code;
  ``ALLY_PASS_ENV`` names extra variables to pass;
* the tool's input as JSON on stdin; its stdout parsed as JSON (Code Ally's
  ``{"success": …, "result" | "error": …}`` protocol, or any JSON value as the result);
* a timeout that ends the whole process group (SIGTERM, then SIGKILL after a grace period),
  and a cap on the bytes read from stdout/stderr.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, Optional

import attrs

from .errors import ToolError
from .manifest import Tool
from .process import _wait_then_set, kill_process_group

if TYPE_CHECKING:
    from .envs import EnvInfo
    from .loader import Host, PluginOutcome

__all__ = ["PASSED_VARS", "ToolResult", "build_command", "run_tool", "tool_environ"]

#: Host variables a tool sees (plus ``LC_*``, the runtime's own, ``ALLY_PASS_ENV`` names and
#: the plugin's ``PLUGIN_CONFIG_*``).
PASSED_VARS = (
    "PATH",
    "HOME",
    "USER",
    "LOGNAME",
    "SHELL",
    "LANG",
    "LANGUAGE",
    "TMPDIR",
    "TEMP",
    "TMP",
    "TZ",
    "TERM",
    "http_proxy",
    "https_proxy",
    "no_proxy",
    "all_proxy",
    "HTTP_PROXY",
    "HTTPS_PROXY",
    "NO_PROXY",
    "ALL_PROXY",
    "SSL_CERT_FILE",
    "SSL_CERT_DIR",
    "REQUESTS_CA_BUNDLE",
    "CURL_CA_BUNDLE",
    "NODE_EXTRA_CA_CERTS",
    "SYSTEMROOT",
    "COMSPEC",
    "PATHEXT",
    "WINDIR",
)
GRACE_SECONDS = 2.0


@attrs.frozen
class ToolResult:
    """The outcome of one tool call."""

    success: bool
    result: Any = None
    error: Optional[str] = None
    error_type: Optional[str] = None
    exit_code: int = 0
    #: The tail of what the tool wrote to stderr (capped), for diagnostics.
    stderr: str = ""
    duration: float = 0.0

    def to_json(self) -> dict[str, Any]:
        """Code Ally's wire shape."""
        if self.success:
            return {"success": True, "result": self.result}
        out: dict[str, Any] = {"success": False, "error": self.error}
        if self.error_type:
            out["error_type"] = self.error_type
        return out


def build_command(plugin_dir: Path, tool: Tool, env: Optional[EnvInfo], path: str) -> list[str]:
    """The argv for ``tool``: its command resolved without a shell, its args unchanged."""
    command = tool.command
    resolved: Optional[str] = None
    if env is not None and command in env.commands:
        resolved = env.commands[command]
    elif os.path.isabs(command) or command.startswith("~"):
        raise ToolError(
            f"tool {tool.name!r}: command {command!r} is an absolute path; use a "
            "path relative to the plugin directory or a command name",
            error_type="unsafe_command",
        )
    elif "/" in command or "\\" in command:
        from .paths import contained_path

        target = contained_path(plugin_dir, command)
        if target is None:
            raise ToolError(
                f"tool {tool.name!r}: command {command!r} is outside the plugin directory",
                error_type="unsafe_command",
            )
        resolved = str(target)
    else:
        resolved = shutil.which(command, path=path)
        if resolved is None:
            raise ToolError(
                f"tool {tool.name!r}: command {command!r} not found on PATH",
                error_type="command_not_found",
            )
    return [resolved, *tool.args]


def tool_environ(
    env: Optional[EnvInfo],
    *,
    pass_env: Sequence[str] = (),
    config: Mapping[str, str] | None = None,
    base: Mapping[str, str] | None = None,
    plugin_name: str = "",
    plugin_dir: Path | None = None,
) -> dict[str, str]:
    """The minimal environment of a tool process."""
    base = os.environ if base is None else base
    wanted = set(PASSED_VARS) | set(pass_env)
    out = {k: v for k, v in base.items() if k in wanted or k.startswith("LC_")}
    if env is not None:
        out.update(env.env_vars)
        if env.bin_dirs:
            out["PATH"] = os.pathsep.join([*env.bin_dirs, out.get("PATH", os.defpath)])
    if plugin_name:
        out["ALLY_PLUGIN_NAME"] = plugin_name
    if plugin_dir is not None:
        out["ALLY_PLUGIN_DIR"] = str(plugin_dir)
    for key, value in (config or {}).items():
        out[f"PLUGIN_CONFIG_{key.upper()}"] = value
    out.setdefault("PYTHONIOENCODING", "utf-8")
    return out


class _CappedReader(threading.Thread):
    """Reads a pipe into memory up to ``limit`` bytes, then notes the overflow."""

    def __init__(self, stream: IO[bytes], limit: int, wake: threading.Event) -> None:
        super().__init__(daemon=True)
        self.stream, self.limit, self.wake = stream, limit, wake
        self.chunks: list[bytes] = []
        self.size = 0
        self.overflow = threading.Event()

    def run(self) -> None:
        while True:
            chunk = (
                self.stream.read1(65536)
                if hasattr(self.stream, "read1")
                else self.stream.read(65536)
            )
            if not chunk:
                break
            if self.size < self.limit:
                self.chunks.append(chunk[: self.limit - self.size])
            self.size += len(chunk)
            if self.size > self.limit and not self.overflow.is_set():
                self.overflow.set()
                self.wake.set()
        self.stream.close()

    def text(self) -> str:
        return b"".join(self.chunks).decode("utf-8", "replace")


def _write_stdin(stream: IO[bytes], data: bytes) -> None:
    try:
        stream.write(data)
    except (BrokenPipeError, OSError):
        pass  # the tool did not read its input; that is its business
    finally:
        try:
            stream.close()
        except OSError:
            pass


def parse_output(stdout: str, tool: str) -> tuple[Any, bool]:
    """The JSON value a tool printed: the whole output, else its last non-empty line."""
    text = stdout.strip()
    if not text:
        raise ToolError(
            f"tool {tool!r} printed nothing (expected JSON on stdout)", error_type="invalid_output"
        )
    try:
        return json.loads(text), True
    except ValueError:
        pass
    for line in reversed(text.splitlines()):
        if line.strip():
            try:
                return json.loads(line), True
            except ValueError:
                break
    preview = text[:200].replace("\n", "\\n")
    raise ToolError(
        f"tool {tool!r} printed non-JSON output: {preview!r}", error_type="invalid_output"
    )


def run_tool(
    host: Host,
    plugin: PluginOutcome,
    tool: Tool,
    arguments: Any = None,
    *,
    timeout: float | None = None,
    config: Mapping[str, str] | None = None,
) -> ToolResult:
    """Run ``tool`` of a ready ``plugin`` with ``arguments`` as its JSON input."""
    if not plugin.ready:
        raise ToolError(
            f"{plugin.name}: plugin is not ready: {plugin.reason}", error_type="plugin_blocked"
        )
    from .plugin_config import resolve_config, validate_input

    validate_input(plugin.name, tool, arguments)
    values = resolve_config(host, plugin, config or {})
    environ = tool_environ(
        plugin.env,
        pass_env=host.settings.pass_env,
        config=values,
        plugin_name=plugin.name,
        plugin_dir=plugin.plugin_dir,
    )
    argv = build_command(plugin.plugin_dir, tool, plugin.env, environ.get("PATH", ""))
    payload = json.dumps({} if arguments is None else arguments).encode()
    limit = host.settings.output_limit
    timeout = timeout or tool.timeout or host.settings.tool_timeout
    if not timeout > 0:  # also catches NaN
        raise ToolError(
            f"tool {tool.name!r}: timeout must be a positive number, got {timeout}",
            error_type="invalid_input",
        )
    # Event.wait refuses longer waits; a timeout this long means "no timeout" anyway.
    timeout = min(timeout, threading.TIMEOUT_MAX)
    return _spawn(argv, plugin.plugin_dir, environ, payload, limit, timeout, tool.name)


def _spawn(
    argv: list[str],
    cwd: Path,
    environ: dict[str, str],
    payload: bytes,
    limit: int,
    timeout: float,
    name: str,
) -> ToolResult:
    start = time.monotonic()
    try:
        proc = subprocess.Popen(
            argv,
            cwd=cwd,
            env=environ,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            start_new_session=True,
        )
    except OSError as exc:
        raise ToolError(
            f"tool {name!r}: cannot run {argv[0]}: {exc.strerror or exc}", error_type="spawn_failed"
        ) from exc
    assert proc.stdin and proc.stdout and proc.stderr
    wake = threading.Event()
    out, err = _CappedReader(proc.stdout, limit, wake), _CappedReader(proc.stderr, limit, wake)
    out.start()
    err.start()
    threading.Thread(target=_write_stdin, args=(proc.stdin, payload), daemon=True).start()
    threading.Thread(target=_wait_then_set, args=(proc, wake), daemon=True).start()
    reason = ""
    try:
        # Woken by the exit of the process or by too much output, whichever comes first.
        if not wake.wait(timeout):
            reason = f"timed out after {timeout:g}s"
        elif out.overflow.is_set() or err.overflow.is_set():
            reason = f"output exceeded {limit} bytes"
    except BaseException:
        kill_process_group(proc, GRACE_SECONDS)
        raise
    if reason:
        kill_process_group(proc, GRACE_SECONDS)
    elif _group_exists(proc.pid):
        # The tool exited; children it left behind must not outlive the call.
        kill_process_group(proc, 0.0)
    out.join(5)
    err.join(5)
    duration = time.monotonic() - start
    stderr_tail = err.text()[-4000:]
    if reason:
        raise ToolError(
            f"tool {name!r} {reason}; killed",
            stderr=stderr_tail,
            error_type="timeout" if reason.startswith("timed") else "output_limit",
        )
    code = proc.returncode
    try:
        value, _ = parse_output(out.text(), name)
    except ToolError as exc:
        if code != 0:
            tail = " | ".join(stderr_tail.strip().splitlines()[-3:])
            raise ToolError(
                f"tool {name!r} exited with code {code}" + (f": {tail}" if tail else ""),
                stderr=stderr_tail,
                error_type="exit_code",
            ) from None
        raise ToolError(str(exc), stderr=stderr_tail, error_type=exc.error_type) from None
    if isinstance(value, dict) and isinstance(value.get("success"), bool):
        if value["success"]:
            return ToolResult(
                True, value.get("result"), exit_code=code, stderr=stderr_tail, duration=duration
            )
        error = value.get("error")
        return ToolResult(
            False,
            None,
            error=str(error) if error is not None else "tool failed",
            error_type=str(value.get("error_type") or "tool_error"),
            exit_code=code,
            stderr=stderr_tail,
            duration=duration,
        )
    if code != 0:
        return ToolResult(
            False,
            value,
            error=f"tool exited with code {code}",
            error_type="exit_code",
            exit_code=code,
            stderr=stderr_tail,
            duration=duration,
        )
    return ToolResult(True, value, exit_code=code, stderr=stderr_tail, duration=duration)


def _group_exists(pgid: int) -> bool:
    if os.name != "posix":
        return False
    try:
        os.killpg(pgid, 0)
    except (ProcessLookupError, PermissionError):
        return False
    return True
