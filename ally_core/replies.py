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

from collections.abc import Sequence
from typing import Any, Optional

import attrs

from .lean import QUOTE_LIMIT, TAIL_LIMIT, parse_json_reply, read_reply, reply_json
from .text import mask_text

__all__ = [
    "QUOTE_LIMIT",
    "TAIL_LIMIT",
    "ToolResult",
    "interpret_reply",
    "mask_text",
    "mask_value",
    "parse_json_reply",
]


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
        return reply_json(self.success, self.reply, self.result, self.error, self.error_type)


def mask_value(value: Any, secrets: Sequence[str]) -> Any:
    """A JSON value with every secret masked in its strings (keys included)."""
    if isinstance(value, str):
        return mask_text(value, secrets)
    if isinstance(value, list):
        return [mask_value(v, secrets) for v in value]
    if isinstance(value, dict):
        return {mask_text(str(k), secrets): mask_value(v, secrets) for k, v in value.items()}
    return value


def interpret_reply(
    stdout: str, stderr: str, exit_code: int, *, label: str, duration: float = 0.0
) -> ToolResult:
    """Read what a finished tool process printed; ``label`` names it in failure texts
    (:func:`ally_core.lean.read_reply`, which the quick ``ally run`` path shares)."""
    return ToolResult(**read_reply(stdout, stderr, exit_code, label=label, duration=duration))
