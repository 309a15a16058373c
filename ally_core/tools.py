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

import codecs
import functools
import json
import os
import select
import shutil
import subprocess
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, Callable, Optional, Protocol

import attrs

from .containment import CallScope, open_scope
from .errors import ToolError, ToolInputError
from .forms import (
    FormCallback,
    FormRequest,
    extract_form_request,
    form_response,
    validate_form_values,
)
from .manifest import Tool
from .process import ToolProcess, _wait_then_set, kill_process_group
from .replies import ToolResult, interpret_reply, mask_text
from .text import log

if TYPE_CHECKING:
    from .config import Settings
    from .envs import EnvInfo
    from .outcomes import PluginOutcome
    from .plugin_config import ConfigHome

__all__ = [
    "PASSED_VARS",
    "FormRequest",
    "ToolHost",
    "ToolResult",
    "build_command",
    "mask_text",
    "run_tool",
    "tool_environ",
]


#: Host variables a tool sees (plus :data:`LOCALE_VARS`, the runtime's own, ``ALLY_PASS_ENV``
#: names and the plugin's ``PLUGIN_CONFIG_*``).
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
#: Locale variables, by their POSIX (and glibc) names only: a variable that merely starts
#: with ``LC_`` (``LC_SECRET_TOKEN``) is not a locale setting and does not pass.
LOCALE_VARS = frozenset(
    {
        "LC_ALL",
        "LC_CTYPE",
        "LC_COLLATE",
        "LC_MESSAGES",
        "LC_MONETARY",
        "LC_NUMERIC",
        "LC_TIME",
        "LC_ADDRESS",
        "LC_IDENTIFICATION",
        "LC_MEASUREMENT",
        "LC_NAME",
        "LC_PAPER",
        "LC_TELEPHONE",
    }
)
GRACE_SECONDS = 2.0


class ToolHost(Protocol):
    """What running a tool needs from its host: settings and where plugin config is kept
    (a :class:`~ally_core.Host` is one)."""

    @property
    def settings(self) -> Settings: ...

    def config_home(self) -> ConfigHome: ...


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
    out = {k: v for k, v in base.items() if k in wanted or k in LOCALE_VARS}
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


OutputCallback = Callable[[str, str], None]


class _Reader(threading.Thread):
    """Reads one pipe of a tool: text up to ``limit`` bytes, live chunks to ``on_output``,
    and (for an interactive tool's stdout) form requests, each answered before reading on."""

    def __init__(
        self,
        call: _Call,
        stream: IO[bytes],
        name: str,
        forms: bool = False,
    ) -> None:
        super().__init__(daemon=True)
        self.call, self.stream, self.name, self.forms = call, stream, name, forms
        self.text = ""
        self.size = 0
        self.overflow = False
        self._shown = 0  # how much of ``text`` went to on_output

    def run(self) -> None:
        decoder = codecs.getincrementaldecoder("utf-8")("replace")
        call = self.call
        while True:
            chunk = (
                self.stream.read1(65536)
                if hasattr(self.stream, "read1")
                else self.stream.read(65536)
            )
            if not chunk:
                break
            keep = chunk[: max(call.limit - self.size, 0)]
            self.size += len(chunk)
            if self.size > call.limit and not self.overflow:
                self.overflow = True
                call.wake.set()
            if not keep:
                continue  # drained, not kept: the call is being ended
            self.text += decoder.decode(keep)
            if self.forms:
                self._answer_forms()
            self._show()
        self.text += decoder.decode(b"", final=True)
        self._show(final=True)
        self.stream.close()

    def _answer_forms(self) -> None:
        while True:
            found = extract_form_request(self.text)
            if found is None:
                return
            request, start, end = found
            self.text = self.text[:start] + self.text[end:]
            if self._shown > start:
                self._shown = max(start, self._shown - (end - start))
            self.call.answer(request)

    def _show(self, final: bool = False) -> None:
        on_output = self.call.on_output
        if on_output is None:
            return
        end = len(self.text)
        if self.forms and not final:
            # Hold back a '{' that may open a form request not complete yet.
            brace = self.text.rfind("{", self._shown)
            if brace >= 0:
                end = brace
        if end > self._shown:
            piece, self._shown = self.text[self._shown : end], end
            try:
                on_output(self.name, piece)
            except Exception:  # a host's display error must not end the call
                log.exception("output callback failed")


class _Call:
    """One running tool process and what its threads share."""

    def __init__(
        self,
        proc: ToolProcess,
        *,
        plugin: str,
        tool: str,
        limit: int,
        on_form: Optional[FormCallback],
        on_output: Optional[OutputCallback],
    ) -> None:
        self.proc, self.plugin, self.tool, self.limit = proc, plugin, tool, limit
        self.on_form, self.on_output = on_form, on_output
        self.wake = threading.Event()
        self.stdin_lock = threading.Lock()
        self.lock = threading.Lock()
        #: Seconds spent waiting for form answers (they do not count against the timeout).
        self.paused = 0.0
        self.form_since: Optional[float] = None

    def write(self, data: bytes, *, close: bool = False) -> None:
        stdin = self.proc.stdin
        assert stdin is not None
        with self.stdin_lock:
            try:
                stdin.write(data)
                stdin.flush()
            except (BrokenPipeError, OSError, ValueError):
                pass  # the tool did not read its input; that is its business
            if close:
                try:
                    stdin.close()
                except (OSError, ValueError):
                    pass

    def answer(self, data: Mapping[str, Any]) -> None:
        """Answer one form request of the tool (from its stdout reader)."""
        request = FormRequest.from_reply(self.plugin, self.tool, data)
        with self.lock:
            self.form_since = time.monotonic()
        try:
            if self.on_form is None:
                log.info(
                    "%s: tool %r asked a form; no form handler: cancelled", self.plugin, self.tool
                )
                response = form_response(None)
            else:
                try:
                    values = self.on_form(request)
                    response = form_response(
                        None if values is None else validate_form_values(request, values)
                    )
                except Exception as exc:  # the tool is told, and decides
                    response = form_response(error=str(exc) or exc.__class__.__name__)
        finally:
            with self.lock:
                if self.form_since is not None:
                    self.paused += time.monotonic() - self.form_since
                self.form_since = None
        self.write(response)

    def extra_time(self, now: float) -> float:
        with self.lock:
            return self.paused + (now - self.form_since if self.form_since is not None else 0.0)


def run_tool(
    host: ToolHost,
    plugin: PluginOutcome,
    tool: Tool,
    arguments: Any = None,
    *,
    timeout: float | None = None,
    config: Mapping[str, str] | None = None,
    on_form: Optional[FormCallback] = None,
    on_output: Optional[OutputCallback] = None,
    cancel: Optional[threading.Event] = None,
) -> ToolResult:
    """Run ``tool`` of a ready ``plugin`` with ``arguments`` as its JSON input.

    ``on_form`` answers an interactive tool's forms (values, or ``None`` to cancel; without
    it every form is cancelled); ``on_output(stream, text)`` receives the tool's stdout and
    stderr as they arrive; setting ``cancel`` kills the tool (:class:`ToolError`
    ``cancelled``). Secret config values are masked in everything returned or raised.
    """
    if not plugin.ready:
        raise ToolError(
            f"{plugin.name}: plugin is not ready: {plugin.reason}", error_type="plugin_blocked"
        )
    from .plugin_config import resolve_config, secret_keys, validate_input

    validate_input(plugin.name, tool, arguments)
    values = resolve_config(host, plugin, config or {})
    secrets = {k.lower() for k in secret_keys(plugin.manifest)}
    hidden = sorted(
        (v for k, v in values.items() if k.lower() in secrets and v), key=len, reverse=True
    )
    environ = tool_environ(
        plugin.env,
        pass_env=host.settings.pass_env,
        config=values,
        plugin_name=plugin.name,
        plugin_dir=plugin.plugin_dir,
    )
    try:
        argv = build_command(plugin.plugin_dir, tool, plugin.env, environ.get("PATH", ""))
    except ToolError as exc:
        raise ToolError(f"{plugin.name}: {exc}", error_type=exc.error_type) from None
    try:
        payload = json.dumps({} if arguments is None else arguments).encode()
    except RecursionError:
        raise ToolInputError(
            f"{plugin.name}: tool {tool.name!r}: input is nested too deeply"
        ) from None
    except (TypeError, ValueError) as exc:
        raise ToolInputError(
            f"{plugin.name}: tool {tool.name!r}: input is not JSON: {exc}"
        ) from None
    timeout = timeout or tool.timeout or host.settings.tool_timeout
    if not timeout > 0:  # also catches NaN
        raise ToolError(
            f"{plugin.name}: tool {tool.name!r}: timeout must be a positive number, got {timeout}",
            error_type="invalid_input",
        )
    # Event.wait refuses longer waits; a timeout this long means "no timeout" anyway.
    timeout = min(timeout, threading.TIMEOUT_MAX)
    live = _MaskedOutput(on_output, hidden) if hidden and on_output is not None else None
    masked_output = live.write if live is not None else on_output
    try:
        result = _spawn(
            argv,
            plugin.plugin_dir,
            environ,
            payload,
            plugin=plugin.name,
            tool=tool.name,
            limit=host.settings.output_limit,
            timeout=timeout,
            interactive=tool.interactive,
            on_form=on_form,
            on_output=masked_output,
            cancel=cancel,
            launch=_warm_launcher(host, plugin, tool, argv, environ),
        )
    except ToolError as exc:
        if not hidden:
            raise
        raise ToolError(
            mask_text(str(exc), hidden),
            stderr=mask_text(exc.stderr, hidden),
            error_type=exc.error_type,
        ) from None
    finally:
        if live is not None:
            live.flush()
    return mask_result(result, hidden) if hidden else result


class _MaskedOutput:
    """An output callback that masks secrets, also one written in several pieces: the end
    of a chunk that may begin a secret is held back until the next chunk shows what it is
    (or the call ends)."""

    def __init__(self, on_output: OutputCallback, secrets: Sequence[str]) -> None:
        self.on_output, self.secrets = on_output, [s for s in secrets if s]
        # Each way mask_text recognises a secret: as it is, repr'd, JSON-escaped.
        shown = {f for s in self.secrets for f in (s, repr(s), json.dumps(s)[1:-1])}
        self.shown = sorted(shown, key=len, reverse=True)
        self.pending: dict[str, str] = {}
        self.lock = threading.Lock()

    def _held(self, text: str) -> int:
        """Length of the longest end of ``text`` that is the start of a secret."""
        for size in range(min(len(text), len(self.shown[0]) - 1), 0, -1):
            tail = text[-size:]
            if any(s.startswith(tail) for s in self.shown):
                return size
        return 0

    def write(self, stream: str, text: str) -> None:
        with self.lock:
            text = mask_text(self.pending.pop(stream, "") + text, self.secrets)
            held = self._held(text)
            if held:
                text, self.pending[stream] = text[:-held], text[-held:]
        if text:
            self.on_output(stream, text)

    def flush(self) -> None:
        with self.lock:
            pending, self.pending = self.pending, {}
        for stream, text in pending.items():
            try:
                self.on_output(stream, mask_text(text, self.secrets))
            except Exception:  # a host's display error must not end the call
                log.exception("output callback failed")


def mask_result(result: ToolResult, secrets: Sequence[str]) -> ToolResult:
    """``result`` with every secret masked in the texts ally wrote or quotes (error, stderr,
    logs, message); the secrets ride along for :meth:`ToolResult.masked`."""
    return attrs.evolve(
        result,
        error=None if result.error is None else mask_text(result.error, secrets),
        stderr=mask_text(result.stderr, secrets),
        message=None if result.message is None else mask_text(result.message, secrets),
        logs=mask_text(result.logs, secrets),
        secrets=tuple(secrets),
    )


#: What a write to an empty pipe takes without blocking (POSIX guarantees at least 512).
_PIPE_BUF = getattr(select, "PIPE_BUF", 512)

#: ``launch(scope)``: the call's process from a warm worker, or ``None`` to spawn it.
Launcher = Callable[[CallScope], Optional[ToolProcess]]


def _warm_launcher(
    host: ToolHost, plugin: PluginOutcome, tool: Tool, argv: list[str], environ: dict[str, str]
) -> Optional[Launcher]:
    """The host's warm workers (``Host(warm_workers=True)``, :mod:`ally_core.workers`)."""
    pool = getattr(host, "workers", None)  # a host-like object without workers spawns
    if pool is None:
        return None
    return functools.partial(pool.launch, plugin, tool, argv, environ)


def _spawn(
    argv: list[str],
    cwd: Path,
    environ: dict[str, str],
    payload: bytes,
    *,
    plugin: str,
    tool: str,
    limit: int,
    timeout: float,
    interactive: bool = False,
    on_form: Optional[FormCallback] = None,
    on_output: Optional[OutputCallback] = None,
    cancel: Optional[threading.Event] = None,
    launch: Optional[Launcher] = None,
) -> ToolResult:
    label = f"{plugin}: tool {tool!r}"
    start = time.monotonic()
    scope = open_scope()
    try:
        return _run_in_scope(
            scope,
            argv,
            cwd,
            environ,
            payload,
            label=label,
            plugin=plugin,
            tool=tool,
            limit=limit,
            timeout=timeout,
            interactive=interactive,
            on_form=on_form,
            on_output=on_output,
            cancel=cancel,
            start=start,
            launch=launch,
        )
    finally:
        scope.close()


def _run_in_scope(
    scope: CallScope,
    argv: list[str],
    cwd: Path,
    environ: dict[str, str],
    payload: bytes,
    *,
    label: str,
    plugin: str,
    tool: str,
    limit: int,
    timeout: float,
    interactive: bool,
    on_form: Optional[FormCallback],
    on_output: Optional[OutputCallback],
    cancel: Optional[threading.Event],
    start: float,
    launch: Optional[Launcher] = None,
) -> ToolResult:
    # A warm worker's forked child, in this call's session and cgroup, or a new process:
    # what follows is the same for both.
    proc: Optional[ToolProcess] = launch(scope) if launch is not None else None
    if proc is None:
        try:
            proc = subprocess.Popen(
                argv,
                cwd=cwd,
                env=environ,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                start_new_session=True,
                preexec_fn=scope.preexec(),  # system calls only: see containment.py
            )
        except (OSError, ValueError, subprocess.SubprocessError) as exc:  # ValueError: NUL
            raise ToolError(
                f"{label}: cannot run {argv[0]}: {getattr(exc, 'strerror', None) or exc}",
                error_type="spawn_failed",
            ) from exc
    assert proc.stdin and proc.stdout and proc.stderr
    call = _Call(proc, plugin=plugin, tool=tool, limit=limit, on_form=on_form, on_output=on_output)
    # An interactive tool reads its input as one line and keeps stdin open for form answers.
    first = payload + b"\n" if interactive else payload
    if len(first) <= _PIPE_BUF:
        # An empty pipe takes it at once: no thread, and the tool has its input sooner.
        call.write(first, close=not interactive)
    else:
        threading.Thread(
            target=call.write, args=(first,), kwargs={"close": not interactive}, daemon=True
        ).start()
    out = _Reader(call, proc.stdout, "stdout", forms=interactive)
    err = _Reader(call, proc.stderr, "stderr")
    out.start()
    err.start()
    threading.Thread(target=_wait_then_set, args=(proc, call.wake), daemon=True).start()
    reason = ""
    try:
        # Woken by the exit of the process or by too much output, whichever comes first;
        # time spent answering forms does not count; a cancel is checked every 50 ms.
        while True:
            now = time.monotonic()
            remaining = start + timeout + call.extra_time(now) - now
            if remaining <= 0 and call.form_since is None:
                reason = f"timed out after {timeout:g}s"
                break
            step = max(remaining, 0.05) if cancel is None else min(max(remaining, 0.0), 0.05)
            if call.wake.wait(step):
                if out.overflow or err.overflow:
                    reason = f"output exceeded {limit} bytes"
                break
            if cancel is not None and cancel.is_set():
                reason = "cancelled"
                break
    except BaseException:
        kill_process_group(proc, GRACE_SECONDS)
        scope.kill()
        raise
    if reason:
        kill_process_group(proc, 0.0 if reason == "cancelled" else GRACE_SECONDS)
    elif _group_exists(proc.pid):
        # The tool exited; children it left behind must not outlive the call.
        kill_process_group(proc, 0.0)
    # Descendants that left the process group (setsid) are still in the call's cgroup.
    scope.kill()
    call.write(b"", close=True)
    out.join(5)
    err.join(5)
    if not reason and (out.overflow or err.overflow):
        # Read after the exit woke us (or written by a descendant since): over all the same.
        reason = f"output exceeded {limit} bytes"
    duration = time.monotonic() - start
    stderr_tail = err.text[-4000:]
    if reason:
        kind = "timeout" if reason.startswith("timed") else reason
        raise ToolError(
            f"{label} {reason}; killed",
            stderr=stderr_tail,
            error_type="output_limit" if reason.startswith("output") else kind,
        )
    code = proc.wait()  # it has exited: this only reads its code
    return interpret_reply(out.text, err.text, code, label=label, duration=duration)


def _group_exists(pgid: int) -> bool:
    if os.name != "posix":
        return False
    try:
        os.killpg(pgid, 0)
    except (ProcessLookupError, PermissionError):
        return False
    return True
