"""A tool's reply, read the way Code Ally's host read it.

Code Ally's ``ExecutableToolWrapper.parsePluginOutput`` (github.com/benhmoore/Code-Ally, before
the marketplace rewrite) defined what a plugin's stdout means. ally reads it the same way, so
a plugin written for that host keeps every answer it gives:

* empty stdout: a failure, "produced no output", with the tail of stderr;
* stdout that is not JSON: a failure quoting the raw output (capped) and stderr;
* ``"success": false``: a failure; its text is ``error``, else ``message``, else a default;
  ``data`` is kept;
* a truthy ``error`` and no ``success``: a failure with that text;
* anything else: a success whose payload is ``data`` when present, else the whole object;
  ``message`` is kept;
* a non-zero exit code is a failure even after a success reply; its text has the exit code
  and the tails of stdout and stderr (or the tool's own error text when it gave one);
* stderr of a successful call is kept as ``logs``.

ally is more lenient than that host in one place: when stdout holds lines before the JSON
reply (a stray ``print``), the last non-empty line is read as the reply.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any, Optional

import attrs

from .text import mask_text

__all__ = ["ToolResult", "interpret_reply", "mask_text", "mask_value"]

#: Characters of raw output or stderr quoted in a failure's text.
QUOTE_LIMIT = 2000
#: Characters of stderr kept in :attr:`ToolResult.stderr` / :attr:`ToolResult.logs`.
TAIL_LIMIT = 4000


@attrs.frozen
class ToolResult:
    """The outcome of one tool call: everything the tool said, nothing dropped."""

    success: bool
    #: The reply's ``result`` key when it has one, else the payload (:attr:`data`).
    result: Any = None
    #: The failure's text (the tool's ``error``/``message``, or what went wrong).
    error: Optional[str] = None
    error_type: Optional[str] = None
    exit_code: int = 0
    #: The tail of what the tool wrote to stderr (capped), for diagnostics.
    stderr: str = ""
    duration: float = 0.0
    #: The whole JSON value the tool printed (``None`` when it printed nothing usable).
    reply: Any = None
    #: The payload: the reply's ``data`` when present, else the whole reply.
    data: Any = None
    #: The reply's ``message``, if any.
    message: Optional[str] = None
    #: What a successful call wrote to stderr (the tool's log lines), capped.
    logs: str = ""
    #: The call's secret config values (never shown; see :meth:`masked`).
    secrets: tuple[str, ...] = attrs.field(default=(), repr=False, eq=False)

    def masked(self) -> ToolResult:
        """This result with the call's secret values masked everywhere, the tool's reply
        included: what a CLI or a protocol server shows. (The texts ally writes —
        ``error``, ``stderr``, ``logs``, ``message`` — are masked already; the tool's data
        is the host's own and is kept as the tool gave it.)"""
        if not self.secrets:
            return self
        return attrs.evolve(
            self,
            result=mask_value(self.result, self.secrets),
            reply=mask_value(self.reply, self.secrets),
            data=mask_value(self.data, self.secrets),
        )

    def to_json(self) -> dict[str, Any]:
        """The result for a host: the tool's reply plus ally's reading of it.

        ``success`` is ally's verdict (exit code included); the tool's own keys are kept
        unless ally's reading differs (a failure always carries ``error``).
        """
        out: dict[str, Any] = dict(self.reply) if isinstance(self.reply, dict) else {}
        if self.reply is not None and not isinstance(self.reply, dict):
            out["data"] = self.reply
        out["success"] = self.success
        if not self.success:
            out["error"] = self.error
            if self.error_type:
                out["error_type"] = self.error_type
        elif self.reply is None and self.result is not None:
            out["result"] = self.result
        return out


def mask_value(value: Any, secrets: Sequence[str]) -> Any:
    """A JSON value with every secret masked in its strings (keys included)."""
    if isinstance(value, str):
        return mask_text(value, secrets)
    if isinstance(value, list):
        return [mask_value(v, secrets) for v in value]
    if isinstance(value, dict):
        return {mask_text(str(k), secrets): mask_value(v, secrets) for k, v in value.items()}
    return value


def _text(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value, default=str)


def _tail(text: str, limit: int = QUOTE_LIMIT) -> str:
    """The end of ``text`` on one line (its lines joined by `` | ``), capped."""
    text = " | ".join(line.strip() for line in text.splitlines() if line.strip())
    return text if len(text) <= limit else "…" + text[-limit:]


def parse_json_reply(stdout: str) -> tuple[bool, Any]:
    """``(True, value)`` for the JSON value in ``stdout`` (the whole of it, else its last
    non-empty line), ``(False, None)`` when there is none."""
    text = stdout.strip()
    if not text:
        return False, None
    try:
        return True, json.loads(text)
    except (ValueError, RecursionError):
        pass
    for line in reversed(text.splitlines()):
        if line.strip():
            try:
                return True, json.loads(line)
            except (ValueError, RecursionError):
                break
    return False, None


def interpret_reply(
    stdout: str, stderr: str, exit_code: int, *, label: str, duration: float = 0.0
) -> ToolResult:
    """Read what a finished tool process printed; ``label`` names it in failure texts."""
    stderr_tail = stderr[-TAIL_LIMIT:]
    common: dict[str, Any] = {"exit_code": exit_code, "stderr": stderr_tail, "duration": duration}
    if not stdout.strip():
        why = f"{label} produced no output"
        if exit_code != 0:
            why = f"{label} exited with code {exit_code} and produced no output"
        tail = _tail(stderr)
        return ToolResult(
            False,
            error=f"{why}; stderr: {tail}" if tail else why,
            error_type="exit_code" if exit_code != 0 else "invalid_output",
            **common,
        )
    parsed, reply = parse_json_reply(stdout)
    if not parsed:
        why = f"{label} printed output that is not JSON"
        if exit_code != 0:
            why = f"{label} exited with code {exit_code}"
        text = f"{why}: {_tail(stdout)}"
        if stderr.strip():
            text += f"; stderr: {_tail(stderr)}"
        return ToolResult(
            False,
            error=text,
            error_type="exit_code" if exit_code != 0 else "invalid_output",
            **common,
        )
    obj = reply if isinstance(reply, dict) else None
    message = obj.get("message") if obj is not None else None
    message = message if isinstance(message, str) or message is None else _text(message)
    own_error: Optional[str] = None
    if obj is not None and "success" in obj and obj["success"] is False:
        own_error = _text(obj.get("error") or obj.get("message") or f"{label} failed")
    elif obj is not None and "success" not in obj and obj.get("error"):
        own_error = _text(obj["error"])
    if obj is not None and "data" in obj:
        data = obj["data"]
    else:
        data = None if own_error is not None else reply
    result = obj["result"] if obj is not None and "result" in obj else data
    if own_error is not None or exit_code != 0:
        if own_error is not None:
            text = own_error
            if exit_code != 0:
                text += f" (exit code {exit_code})"
            kind = obj.get("error_type") if obj is not None else None
            error_type = kind if isinstance(kind, str) and kind else "tool_error"
        else:
            text = f"{label} exited with code {exit_code} after a success reply: {_tail(stdout)}"
            if stderr.strip():
                text += f"; stderr: {_tail(stderr)}"
            error_type = "exit_code"
        return ToolResult(
            False,
            result=result,
            error=text,
            error_type=error_type,
            reply=reply,
            data=data,
            message=message,
            **common,
        )
    return ToolResult(
        True,
        result=result,
        reply=reply,
        data=data,
        message=message,
        logs=stderr_tail if stderr.strip() else "",
        **common,
    )
