"""What every ``ally`` command shares: the Host it works on, progress, and what it prints.

Lines for people (:func:`_say`: secrets masked, control characters escaped), one JSON object
for machines (:func:`_emit`, with ``"ally": JSON_VERSION``), notes on stderr that ``-q``
leaves out, the tracebacks ``--debug`` shows, the log ``-v`` shows, and the plugin outcomes
of ``list``, ``install``, ``update``, ``reinstall`` and ``doctor``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from typing import Any, Optional

__all__ = ["JSON_VERSION"]

#: Version of the JSON shapes printed with ``--json``; bumped on incompatible changes.
JSON_VERSION = 1

EXIT_OK, EXIT_ERROR, EXIT_USAGE, EXIT_TOOL_FAILED, EXIT_BLOCKED = 0, 1, 2, 3, 4


def _host(args: argparse.Namespace) -> Any:
    """The :class:`~ally_core.Host` of the command's ``--home``, ``--plugins-dir`` and build
    options (imported here: ``ally --help`` needs none)."""
    from .host import Host

    settings: dict[str, Any] = {}
    if getattr(args, "offline", False):
        settings["offline"] = True
    if getattr(args, "installer", None):
        settings["installer"] = args.installer
    if getattr(args, "jobs", None) is not None:
        settings["jobs"] = args.jobs
    return Host(args.home, plugin_dirs=args.plugins_dir or (), settings=settings)


def _quick_home(args: argparse.Namespace) -> bool:
    """Whether this command's Host is the one the quick path of ``ally run`` and ``ally
    list`` stands for (:mod:`.quick_run`): no ``--home``, ``--plugins-dir`` or build option."""
    from .lean import quick_run_enabled

    return (
        args.home is None
        and not args.plugins_dir
        and not getattr(args, "offline", False)
        and not getattr(args, "installer", None)
        and getattr(args, "jobs", None) is None
        and quick_run_enabled(os.environ)
    )


class _Tee:
    """Standard output that also keeps what was written (what ``ally list`` printed)."""

    def __init__(self, out: Any) -> None:
        self.out = out
        self.kept: list[str] = []

    def write(self, text: str) -> int:
        self.kept.append(text)
        return int(self.out.write(text))

    def flush(self) -> None:
        self.out.flush()

    def isatty(self) -> bool:
        return bool(self.out.isatty())


#: Secret values this command was given: masked in whatever it prints, errors included.
_HIDDEN: list[str] = []


def _hide(*values: str) -> None:
    _HIDDEN.extend(v for v in values if v)


def _masked(text: str) -> str:
    if not _HIDDEN:
        return text
    from .text import mask_text

    return mask_text(text, _HIDDEN)


def _say(text: str, file: Any = None) -> None:
    """Print one line for people: secrets this command knows masked, and control characters
    (escape sequences, carriage returns, bidirectional overrides) shown as escapes, so nothing
    a plugin or tool wrote can rewrite the terminal."""
    from .text import printable

    print(printable(_masked(text)), file=file or sys.stdout)


def _emit(data: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps({"ally": JSON_VERSION, **data}, indent=2, default=str) + "\n")


def _reporter(args: argparse.Namespace) -> Any:
    from .progress import make_reporter

    return make_reporter(
        quiet=args.quiet or getattr(args, "json", False),
        verbose=args.verbose,
    )


def _note(args: argparse.Namespace, text: str) -> None:
    """A line for people beside a command's result (stderr; none with ``-q``)."""
    if not args.quiet:
        _say(f"ally: {text}", file=sys.stderr)


def _debug_causes(args: argparse.Namespace, outcomes: Sequence[Any]) -> None:
    """With ``--debug``: the traceback of each error a runtime's hook raised, which the
    outcome shows as a one-line ``runtime error`` (masked, on stderr)."""
    if not args.debug:
        return
    import traceback

    from .text import printable

    for outcome in outcomes:
        cause = getattr(outcome.error, "__cause__", None)
        if cause is None:
            continue
        sys.stderr.write(f"ally: debug: {printable(outcome.name)}: the error of its runtime:\n")
        for chunk in traceback.format_exception(type(cause), cause, cause.__traceback__):
            for line in _masked(chunk).splitlines():
                sys.stderr.write(printable(line) + "\n")


def _tool_json(tool: Any) -> dict[str, Any]:
    """What a host needs to advertise one tool (so it never parses plugin.json itself)."""
    return {
        "name": tool.name,
        "description": tool.description,
        "schema": tool.schema or {"type": "object", "properties": {}},
        "interactive": tool.interactive,
        "requiresConfirmation": tool.requires_confirmation,
        "visible_to": tool.visible_to,
        "subtext": tool.subtext,
        "display_name": tool.display_name,
        "usageGuidance": tool.usage_guidance,
        "timeout": tool.timeout,
    }


def _config_schema_json(manifest: Any) -> Optional[dict[str, Any]]:
    """The plugin's config schema, with the defaults of secret properties masked."""
    from .plugin_config import MASK, config_schema

    schema = config_schema(manifest)
    if not schema:
        return None
    props = schema.get("properties")
    if not isinstance(props, dict):
        return dict(schema)
    masked = {
        k: (
            {**v, "default": MASK}
            if isinstance(v, dict) and v.get("secret") is True and "default" in v
            else v
        )
        for k, v in props.items()
    }
    return {**schema, "properties": masked}


def _outcome_json(outcome: Any) -> dict[str, Any]:
    manifest = outcome.manifest
    specs = (
        [t.spec for t in outcome.tools] if outcome.tools else (manifest.tools if manifest else [])
    )
    return {
        "name": outcome.name,
        "dir": str(outcome.plugin_dir),
        "status": outcome.status,
        "reason": outcome.reason or None,
        "runtime": manifest.runtime if manifest else None,
        "version": manifest.version if manifest else None,
        "description": manifest.description if manifest else None,
        "env": str(outcome.env.path) if outcome.env else None,
        "action": outcome.action,
        "repair_reason": outcome.repair_reason or None,
        "stale": outcome.stale,
        "packages": _packages_json(outcome.packages),
        "tools": [_tool_json(t) for t in specs],
        "agents": manifest.agents if manifest else [],
        "activationMode": manifest.activation_mode if manifest else None,
        "config_schema": _config_schema_json(manifest) if manifest else None,
        "warnings": outcome.warnings,
    }


def _packages_json(packages: Any) -> dict[str, str]:
    """Package name -> version, in name order whatever the runtime (case-insensitive)."""
    return dict(sorted(packages.items(), key=lambda kv: (kv[0].lower(), kv[0])))


def _print_outcomes(outcomes: Sequence[Any], args: argparse.Namespace, host: Any) -> None:
    warned = _warnings_to_show(outcomes, args, host)
    for o in outcomes:
        if o.ready and o.reason:
            # Ready on the env published before a rebuild that failed: say so, and why.
            tools = ", ".join(t.name for t in o.tools) or "no tools"
            _say(f"! {o.name}: {tools}; {o.reason}")
        elif o.ready:
            tools = ", ".join(t.name for t in o.tools) or "no tools"
            extra = {
                "built": " (installed)",
                "shared": " (shared env)",
                "repaired": f" (repaired: {o.repair_reason})",
                "updated": " (updated)",
            }
            mark = "\u26a0" if o.warnings else "\u2713"
            _say(f"{mark} {o.name}: {tools}{extra.get(o.action, '')}")
        elif o.status == "pending":
            _say(f"\u2026 {o.name}: {o.reason}")
        else:
            _say(f"\u2717 {o.name}: {o.reason}")
        for warning in o.warnings if o.name in warned else ():
            _say(f"    warning: {warning}")
    hidden = sum(1 for o in outcomes if o.warnings and o.name not in warned)
    if hidden and not args.quiet:
        _note(args, f"{hidden} plugin(s) with warnings shown before (-v shows them again)")


def _warnings_to_show(outcomes: Sequence[Any], args: argparse.Namespace, host: Any) -> set[str]:
    """The plugins whose warnings to print: none with ``-q``, all with ``-v``, else those
    not shown since their ``plugin.json`` or their warnings changed (remembered)."""
    if args.quiet:
        return set()
    if args.verbose:
        return {o.name for o in outcomes if o.warnings}
    from .seen_warnings import SeenWarnings

    seen = SeenWarnings(host.paths.state_dir)
    new = {o.name for o in outcomes if seen.is_new(o.plugin_dir, o.warnings)}
    seen.save()
    return new


def _size(n: int) -> str:
    value = float(n)
    for unit in ("B", "KB", "MB", "GB"):
        if value < 1024 or unit == "GB":
            return f"{value:.1f} {unit}" if unit != "B" else f"{int(value)} B"
        value /= 1024
    return f"{n} B"  # pragma: no cover


def _print_traceback() -> None:
    import traceback

    from .text import printable

    for line in _masked(traceback.format_exc()).splitlines():
        sys.stderr.write(printable(line) + "\n")


def _logging(args: argparse.Namespace) -> None:
    """``-v``: ally's debug log on stderr; ``-q``: its warnings left out (errors remain)."""
    if not (args.quiet or args.verbose):
        return
    import logging

    class Lines(logging.Handler):
        """Records as ``ally: LEVEL: message`` lines on stderr, masked and printable."""

        def emit(self, record: logging.LogRecord) -> None:
            _say(f"ally: {record.levelname.lower()}: {record.getMessage()}", file=sys.stderr)

    log = logging.getLogger("ally")
    if args.verbose:
        log.addHandler(Lines())
        log.setLevel(logging.DEBUG)
        log.propagate = False
    else:
        log.setLevel(logging.ERROR)
