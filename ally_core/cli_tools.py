"""``ally run``, ``runtimes``, ``schema`` and ``mcp serve``: the commands that use plugins'
tools (``ally exec`` is :mod:`ally_core.cli_exec`).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from typing import Any, Callable, Optional

from .__about__ import __version__
from .cli_common import (
    EXIT_ERROR,
    EXIT_OK,
    EXIT_TOOL_FAILED,
    _debug_causes,
    _emit,
    _hide,
    _host,
    _note,
    _quick_home,
    _reporter,
    _say,
)
from .errors import ConfigError, PluginNotFound, ToolError
from .lean import failure_line, loads_bounded, result_json

__all__ = ["cmd_mcp_serve", "cmd_run", "cmd_runtimes", "cmd_schema"]


def _read_input(args: argparse.Namespace) -> Any:
    text = args.input
    if text is None and not sys.stdin.isatty():
        text = sys.stdin.read()
    if not text or not text.strip():
        return {}
    try:
        return loads_bounded(text)
    except RecursionError:
        raise ToolError("--input is nested too deeply", error_type="invalid_input") from None
    except ValueError as exc:
        raise ToolError(f"--input is not valid JSON: {exc}", error_type="invalid_input") from None


def _config_pairs(pairs: Sequence[str]) -> dict[str, str]:
    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise ConfigError(f"--config expects KEY=VALUE, got {pair!r}")
        out[key] = value
    return out


def _form_answerer(args: argparse.Namespace) -> Callable[[Any], Any]:
    """How ``ally run`` answers an interactive tool's forms: ``--form-response``, else field
    by field on a terminal, else a cancel that says so."""
    from .forms import merged_values

    given: Optional[dict[str, Any]] = None
    if args.form_response is not None:
        try:
            given = json.loads(args.form_response)
        except ValueError as exc:
            raise ConfigError(f"--form-response is not valid JSON: {exc}") from None
        if not isinstance(given, dict):
            raise ConfigError("--form-response must be a JSON object")

    def answer(request: Any) -> Any:
        if given is not None:
            return merged_values(request, given)
        if sys.stdin.isatty() and sys.stderr.isatty():
            return _ask_form(request)
        _say(
            f"ally: {request.plugin}: tool {request.tool!r} asked the form "
            f"{request.title!r}; cancelled (no terminal; answer it with --form-response JSON)",
            file=sys.stderr,
        )
        return None

    return answer


def _ask_form(request: Any) -> Any:
    """Ask each field of ``request`` on the terminal; ``None`` when the user cancels.

    Prompts go to stderr and answers come from stdin: stdout carries only the tool's reply.
    A choice is answered by its number or its value (several, comma-separated, for a
    ``multiSelect`` field); a ``label`` field is shown, not asked.
    """
    import attrs

    from .errors import ToolInputError
    from .forms import coerce_field, merged_values, validate_form_values
    from .text import printable

    values = merged_values(request)
    _say(
        f"{request.title}" + (f": {request.description}" if request.description else ""),
        file=sys.stderr,
    )
    prefix = f"{request.plugin}: form {request.title!r}: "
    for field in request.fields:
        name = field["name"]
        label = field.get("label") or name
        if field.get("type") == "label":
            text = field.get("description")
            _say(f"{label}: {text}" if isinstance(text, str) and text else label, file=sys.stderr)
            continue
        choices = field.get("choices") if field.get("type") == "choice" else None
        several = isinstance(choices, list) and field.get("multiSelect") is True
        if isinstance(choices, list):
            for i, choice in enumerate(choices, 1):
                shown = (
                    choice.get("label", choice.get("value")) if isinstance(choice, dict) else choice
                )
                _say(f"  {i}. {shown}", file=sys.stderr)
        # This field alone: the others are checked when their turn comes.
        one_field = attrs.evolve(request, schema={**request.schema, "fields": [field]})
        while True:
            default = values.get(name)
            if isinstance(default, list):
                default = ", ".join(str(d) for d in default)
            prompt = f"{label}" + (f" [{default}]" if default not in (None, "") else "") + ": "
            sys.stderr.write(printable(prompt))
            sys.stderr.flush()
            line = sys.stdin.readline()
            if not line:
                return None
            typed = line.rstrip("\r\n")
            value: Any = typed if typed else values.get(name)
            if isinstance(choices, list) and isinstance(value, str):
                picks = [p.strip() for p in value.split(",")] if several else [value]
                picked = [_choice_of(choices, p) for p in picks if p]
                value = picked if several else (picked[0] if picked else value)
            value = coerce_field(field, value)
            try:
                validate_form_values(one_field, {name: value})
            except ToolInputError as exc:
                _say(f"  {str(exc).removeprefix(prefix)}", file=sys.stderr)
                continue
            values[name] = value
            break
    return values


def _choice_of(choices: list[Any], typed: str) -> Any:
    """The value of the choice numbered ``typed``, else ``typed`` itself."""
    if typed.isdigit() and 0 < int(typed) <= len(choices):
        pick = choices[int(typed) - 1]
        return pick.get("value") if isinstance(pick, dict) else pick
    return typed


def cmd_run(args: argparse.Namespace) -> int:
    host = _host(args)
    arguments = _read_input(args)
    reporter = _reporter(args)
    try:
        outcome = host.ensure(args.plugin, progress=reporter)
    finally:
        if reporter is not None:
            reporter.close()
    _debug_causes(args, [outcome])
    if not outcome.ready:
        raise PluginNotFound(f"{outcome.name}: blocked: {outcome.reason}")
    if outcome.reason:
        _note(args, f"warning: {outcome.name}: {outcome.reason}")
    tool = outcome.tool(args.tool)
    if _quick_home(args):
        from .run_records import save_run_record

        save_run_record(host, outcome)  # the next `ally run` of this plugin: the quick path
    pairs = _config_pairs(args.config)
    from .plugin_config import secret_values

    _hide(*secret_values(outcome.manifest, pairs))

    def show_stderr(stream: str, text: str) -> None:
        from .text import printable

        if stream == "stderr":
            # Line breaks and tabs as they are; every other control character escaped.
            shown = "\n".join(
                "\t".join(map(printable, line.split("\t"))) for line in text.split("\n")
            )
            sys.stderr.write(shown)
            sys.stderr.flush()

    result = tool.call(
        arguments,
        timeout=args.timeout,
        config=pairs,
        on_form=_form_answerer(args) if tool.spec.interactive else None,
        on_output=show_stderr if args.verbose else None,
    ).masked()
    if args.json:
        import attrs

        fields = attrs.asdict(result, recurse=False)
        _emit({"plugin": outcome.name, "tool": tool.name, **result_json(fields)})
    else:
        print(json.dumps(result.to_json(), indent=2 if sys.stdout.isatty() else None))
        if not result.success:
            _note(args, failure_line(outcome.name, tool.name, result.error))
    return EXIT_OK if result.success else EXIT_TOOL_FAILED


def cmd_runtimes(args: argparse.Namespace) -> int:
    host = _host(args)
    rows: dict[str, list[str]] = {}
    for value, plugin in host.runtimes().items():
        rows.setdefault(plugin, []).append(value)
    broken = host.dispatch.broken()
    unknown = host.dispatch.unknown_hooks()
    from .plugin_manager import runtime_distributions

    dists = runtime_distributions(host.index)
    for name in [*rows, *broken]:
        dists.setdefault(name, f"ally-core {__version__} (built in)")
    if args.json:
        _emit(
            {
                "runtimes": [
                    {"name": n, "serves": v, "distribution": dists[n]} for n, v in rows.items()
                ],
                "broken": [
                    {"name": n, "reason": why, "distribution": dists[n]}
                    for n, why in broken.items()
                ],
                "unknown_hooks": [{"runtime": u.runtime, "hook": u.hook} for u in unknown],
            }
        )
    else:
        for name, values in rows.items():
            _say(f"{name}: {', '.join(values)}  [{dists[name]}]")
        for name, why in broken.items():
            _say(f"{name}: broken: {why}  [{dists[name]}]")
        for hook in unknown:
            _say(f"warning: {hook.describe()}")
    return EXIT_OK


def cmd_schema(args: argparse.Namespace) -> int:
    from .schema import schema_text

    if args.json:
        _emit({"schema": json.loads(schema_text())})
    else:
        sys.stdout.write(schema_text())
    return EXIT_OK


def cmd_mcp_serve(args: argparse.Namespace) -> int:
    from .mcp import INSTALL_HINT, sdk_missing

    try:
        from .mcp.server import serve
    except ImportError as exc:
        if not sdk_missing(exc):
            raise
        print(f"ally: {INSTALL_HINT}", file=sys.stderr)
        return EXIT_ERROR
    return serve(
        lambda: _host(args),
        plugins=args.plugin or (),
        http=args.http,
        warm_workers=not args.no_warm_workers,
    )
