"""mkdocs hooks: reference sections generated from the code, never copied by hand.

A page asks for a generated section with a marker line such as ``<!-- ally:cli -->``; the
hook replaces it with Markdown produced from the code:

* ``cli`` — every ``ally`` sub-command, its help and options, walked from
  :func:`ally_core.cli.build_parser`;
* ``plugin-schema`` — every property of ``ally_core/schema/plugin.schema.json``;
* ``settings`` — every setting and its environment variable (``ally_core.config.SETTINGS``);
* ``passed-vars`` — the host variables a tool sees (``ally_core.tools.PASSED_VARS``);
* ``modules`` — ``ally_core``'s modules and the first line of each one's docstring;
* ``include PATH`` — a Markdown file of the repository, such as a runtime's README.

The generators are plain functions (no mkdocs import) so ``tests/test_docs.py`` can check them
without building the site.
"""

from __future__ import annotations

import argparse
import json
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Callable, Optional

MARKER = re.compile(r"^<!-- ally:([a-z-]+)(?: +(\S+))? -->$", re.MULTILINE)
ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"
USAGE_WIDTH = 96

#: Shown for positional arguments that have no ``help`` in ``cli.py``.
POSITIONAL_HELP = {
    "NAME|ARCHIVE": "plugin names, or offline bundles (`*.ally.tar.gz`) to unpack and install; "
    "none means every plugin",
    "NAME": "plugin name (the `name` in its plugin.json, or its directory name)",
    "name": "plugin name (the `name` in its plugin.json, or its directory name)",
    "plugin": "plugin name (the `name` in its plugin.json, or its directory name)",
    "tool": "the tool's `name` in plugin.json",
    "key": "config key (a property of the plugin's `config` schema)",
    "value": "the value, converted to the type the schema gives (integer, number, boolean, "
    "JSON for arrays and objects)",
}


# --------------------------------------------------------------------------------------------
# Markdown helpers


def _cell(text: Any) -> str:
    """One table cell: no newlines, pipes escaped, ``<`` outside code spans shown as text."""
    parts = " ".join(str(text).split()).replace("|", "\\|").split("`")
    # Even parts are outside backticks: "<home>" there would be swallowed as an HTML tag.
    return "`".join(
        p.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;") if i % 2 == 0 else p
        for i, p in enumerate(parts)
    )


def _table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(_cell(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------
# CLI reference


def _subparsers(parser: argparse.ArgumentParser) -> Optional[argparse._SubParsersAction[Any]]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return action
    return None


def iter_commands(
    parser: Optional[argparse.ArgumentParser] = None, prefix: tuple[str, ...] = ()
) -> Iterator[tuple[tuple[str, ...], argparse.ArgumentParser, str]]:
    """``(words, parser, help)`` of every sub-command, depth first (``("config", "set")``)."""
    if parser is None:
        from ally_core.cli import build_parser

        parser = build_parser()
    sub = _subparsers(parser)
    if sub is None:
        return
    helps = {a.dest: a.help or "" for a in sub._choices_actions}
    for name, child in sub.choices.items():
        words = (*prefix, name)
        yield words, child, helps.get(name, "")
        yield from iter_commands(child, words)


def _usage(parser: argparse.ArgumentParser) -> str:
    formatter = argparse.HelpFormatter(parser.prog, width=USAGE_WIDTH)
    formatter.add_usage(parser.usage, parser._actions, parser._mutually_exclusive_groups)
    return formatter.format_help().strip()


def _option_rows(parser: argparse.ArgumentParser) -> list[list[str]]:
    rows = []
    for action in parser._actions:
        if isinstance(action, (argparse._HelpAction, argparse._SubParsersAction)):
            continue
        if action.option_strings:
            takes_value = action.nargs != 0
            metavar = action.metavar or (
                "{" + ",".join(map(str, action.choices)) + "}"
                if action.choices
                else action.dest.upper()
            )
            name = ", ".join(
                f"`{o} {metavar}`" if takes_value else f"`{o}`" for o in action.option_strings
            )
        else:
            name = f"`{action.metavar or action.dest}`"
            if action.nargs in ("*", "?"):
                name += " (optional)"
            if action.nargs in ("*", "+", argparse.REMAINDER):
                name += " …"
        help_text = action.help or (
            "" if action.option_strings else POSITIONAL_HELP.get(action.metavar or action.dest, "")
        )
        if help_text == argparse.SUPPRESS:
            continue
        if isinstance(action, argparse._AppendAction):
            help_text += "" if "repeatable" in help_text else " (repeatable)"
        if isinstance(action, argparse._VersionAction):
            help_text = help_text or "print ally's version and exit"
        rows.append([name, help_text])
    return rows


def cli_reference_markdown(parser: Optional[argparse.ArgumentParser] = None) -> str:
    """Markdown for the root options and every sub-command of ``ally``."""
    if parser is None:
        from ally_core.cli import build_parser

        parser = build_parser()
    out = [
        "### Global options",
        "",
        "Given **before** the sub-command: `ally --home DIR list`.",
        "",
        "```text",
        _usage(parser),
        "```",
        "",
        _table(["Option", "Meaning"], _option_rows(parser)),
        "",
    ]
    for words, child, help_text in iter_commands(parser):
        title = "ally " + " ".join(words)
        out += [f"### `{title}`", "", (help_text or child.description or "").rstrip(".") + ".", ""]
        out += ["```text", _usage(child), "```", ""]
        rows = _option_rows(child)
        if rows:
            out += [_table(["Argument / option", "Meaning"], rows), ""]
        sub = _subparsers(child)
        if sub is not None:
            names = ", ".join(f"`{n}`" for n in sub.choices)
            out += [f"Actions: {names} (below).", ""]
    return "\n".join(out).rstrip() + "\n"


# --------------------------------------------------------------------------------------------
# plugin.json reference


def _type_of(prop: dict[str, Any]) -> str:
    if "$ref" in prop:
        return "object (" + prop["$ref"].rsplit("/", 1)[-1] + ")"
    kind = prop.get("type")
    if kind is None:
        return "any"
    if isinstance(kind, list):
        return " or ".join(kind)
    if kind == "array":
        items = prop.get("items", {})
        inner = items["$ref"].rsplit("/", 1)[-1] if "$ref" in items else items.get("type", "any")
        return f"array of {inner}"
    return str(kind)


def _constraints(prop: dict[str, Any]) -> str:
    notes = []
    if "pattern" in prop:
        notes.append(f"pattern `{prop['pattern']}`")
    if prop.get("minLength") == 1:
        notes.append("not empty")
    elif "minLength" in prop:
        notes.append(f"at least {prop['minLength']} characters")
    if "exclusiveMinimum" in prop:
        notes.append(f"greater than {prop['exclusiveMinimum']}")
    if "enum" in prop:
        notes.append("one of " + ", ".join(f"`{json.dumps(v)}`" for v in prop["enum"]))
    return "; ".join(notes)


def _property_rows(
    schema: dict[str, Any], prefix: str, kept: Callable[[str], str]
) -> list[list[str]]:
    required = set(schema.get("required", ()))
    rows = []
    for name, prop in schema.get("properties", {}).items():
        description = prop.get("description", "") or kept(name)
        extra = _constraints(prop)
        if extra:
            description = f"{description} ({extra})" if description else extra.capitalize()
        rows.append(
            [
                f"`{prefix}{name}`",
                _type_of(prop),
                "yes" if name in required else "",
                description,
            ]
        )
    return rows


def _kept_top(name: str) -> str:
    return {
        "$schema": "The JSON Schema the file claims to follow (editors use it); ignored by ally.",
        "description": "What the plugin does (shown by hosts).",
        "tools": "The commands the plugin offers; each is described below.",
        "activationMode": "Code Ally's activation mode; kept for the host, not interpreted.",
        "agents": "Code Ally's agent definitions; kept for the host, not interpreted.",
        "visible_to": "Code Ally's visibility rules; kept for the host, not interpreted.",
    }.get(name, "")


def _kept_tool(name: str) -> str:
    return {
        "name": "The tool's name, unique within the plugin.",
        "description": "What the tool does (shown by hosts and `ally list`).",
        "args": "Arguments appended to `command`, passed as-is (no shell, no expansion).",
        "requiresConfirmation": "Code Ally's confirmation flag; kept for the host.",
        "subtext": "Code Ally's display subtext; kept for the host.",
    }.get(name, "Kept for the host, not interpreted by ally.")


def plugin_schema_markdown(schema: Optional[dict[str, Any]] = None) -> str:
    """Markdown tables for every property of ``plugin.json``, from its JSON Schema."""
    if schema is None:
        from ally_core.schema import plugin_schema

        schema = plugin_schema()
    header = ["Key", "Type", "Required", "Meaning"]
    out = [
        f"{schema.get('description', '')}",
        "",
        "### Top-level keys",
        "",
        _table(header, _property_rows(schema, "", _kept_top)),
        "",
    ]
    rules = []
    for key, needs in schema.get("dependentRequired", {}).items():
        rules.append(f"`{key}` requires {', '.join(f'`{n}`' for n in needs)}.")
    if schema.get("additionalProperties", True) is not False:
        rules.append(
            "Other keys are allowed and kept (a warning names keys ally does not know, in case "
            "of a typo)."
        )
    out += ["".join(f"- {r}\n" for r in rules), ""] if rules else []

    deps = schema.get("properties", {}).get("dependencies")
    if deps:
        out += [
            "### `dependencies`",
            "",
            deps.get("description", ""),
            "",
            _table(header, _property_rows(deps, "dependencies.", lambda n: "")),
            "",
        ]
        alternatives = [
            " and ".join(f"`{r}`" for r in alt.get("required", ())) for alt in deps.get("anyOf", ())
        ]
        notes = []
        if alternatives:
            notes.append("At least one of " + ", ".join(alternatives) + " must be given.")
        if deps.get("additionalProperties", True) is not False:
            notes.append(
                "Any other key is runtime-specific and handed to the runtime unchanged "
                "(`EnvSpec.dependency_options`); see each runtime's README."
            )
        out += ["".join(f"- {n}\n" for n in notes), ""]

    for def_name, definition in schema.get("$defs", {}).items():
        prefix = "tools[]." if def_name == "tool" else f"{def_name}."
        title = "`tools[]` (each tool)" if def_name == "tool" else f"`{def_name}`"
        out += [
            f"### {title}",
            "",
            _table(header, _property_rows(definition, prefix, _kept_tool)),
            "",
        ]
        if definition.get("additionalProperties", True) is not False:
            out += ["- Other keys are allowed and kept for the host.", ""]
    return "\n".join(out).rstrip() + "\n"


# --------------------------------------------------------------------------------------------
# settings and tool environment


def _default_text(key: str, default: Any) -> str:
    if key == "jobs":
        return "number of CPUs, at most 4"
    if default is None:
        return "unset"
    if isinstance(default, bool):
        return "`true`" if default else "`false`"
    if isinstance(default, tuple):
        return "`[]`" if not default else f"`{json.dumps(list(default))}`"
    if isinstance(default, float) and default.is_integer():
        default = int(default)
    if isinstance(default, int) and default >= 1024 * 1024 and default % (1024 * 1024) == 0:
        return f"`{default}` ({default // (1024 * 1024)} MiB)"
    return f"`{json.dumps(default)}`"


def settings_markdown() -> str:
    """A table of every ``[ally]`` setting, its environment variable and default."""
    from ally_core.config import SETTINGS

    rows = [
        [f"`{key}`", f"`{var}`", _default_text(key, default), doc]
        for key, (var, _parse, default, doc) in SETTINGS.items()
    ]
    return _table(["`[ally]` key", "Environment variable", "Default", "Meaning"], rows) + "\n"


def passed_vars_markdown() -> str:
    """The host variables that reach a tool process, as an inline list."""
    from ally_core.tools import PASSED_VARS

    return ", ".join(f"`{name}`" for name in PASSED_VARS) + "\n"


_LINK = re.compile(r"(?<!!)\[([^\]]+)\]\(([^)\s]+)\)")


def include_markdown(relative: str, page: str = "index.md") -> str:
    """A Markdown file of the repository outside ``docs/`` (a runtime's README), with its
    relative links rewritten for ``page``: links into ``docs/`` or to the top-level README keep
    working, other files of the repository become plain text (they are not part of the site).
    """
    source = (ROOT / relative).resolve()
    if ROOT not in source.parents or source.suffix != ".md":
        raise ValueError(f"include: {relative!r} is not a Markdown file of the repository")
    text = source.read_text("utf-8")
    page_dir = (DOCS / page).parent

    def relink(match: re.Match[str]) -> str:
        label, target = match.group(1), match.group(2)
        if re.match(r"^[a-z][a-z0-9+.-]*:|^#", target):
            return match.group(0)
        path, _, anchor = target.partition("#")
        resolved = (source.parent / path).resolve()
        if resolved == ROOT / "README.md":
            resolved = DOCS / "index.md"
        if DOCS in resolved.parents:
            link = os.path.relpath(resolved, page_dir).replace(os.sep, "/")
            return f"[{label}]({link}{'#' + anchor if anchor else ''})"
        return label

    return _LINK.sub(relink, text)


def modules_markdown() -> str:
    """A table of ``ally_core``'s modules, each with the first line of its docstring."""
    import ast

    package = ROOT / "ally_core"
    rows = []
    for path in sorted(package.rglob("*.py")):
        if "__pycache__" in path.parts or path.name == "__about__.py":
            continue
        relative = path.relative_to(ROOT).as_posix()
        doc = ast.get_docstring(ast.parse(path.read_text("utf-8"))) or ""
        first = doc.strip().split("\n\n")[0].replace("\n", " ")
        if not first:
            continue
        # reST roles and double backticks read fine as inline code in a table.
        first = re.sub(r":[a-z]+:`~?([^`]+)`", r"`\1`", first).replace("``", "`")
        rows.append([f"`{relative}`", first])
    return _table(["Module", "What it is"], rows) + "\n"


GENERATORS: dict[str, Callable[[], str]] = {
    "modules": modules_markdown,
    "cli": cli_reference_markdown,
    "plugin-schema": plugin_schema_markdown,
    "settings": settings_markdown,
    "passed-vars": passed_vars_markdown,
}


def render_markers(markdown: str, where: str = "index.md") -> str:
    """Replace every ``<!-- ally:NAME -->`` line of ``markdown`` with its generated section.

    ``<!-- ally:include PATH -->`` inserts a Markdown file of the repository (see
    :func:`include_markdown`); ``where`` is the page's path inside ``docs/``.
    """

    def replace(match: re.Match[str]) -> str:
        name, argument = match.group(1), match.group(2)
        if name == "include" and argument:
            return include_markdown(argument, where).rstrip("\n")
        if name not in GENERATORS or argument:
            known = ", ".join(sorted(GENERATORS))
            raise ValueError(f"{where}: unknown generated section {name!r} (known: {known})")
        return GENERATORS[name]().rstrip("\n")

    return MARKER.sub(replace, markdown)


# --------------------------------------------------------------------------------------------
# mkdocs events


def on_page_markdown(markdown: str, page: Any, **kwargs: Any) -> str:
    try:
        return render_markers(markdown, page.file.src_uri)
    except ValueError as exc:
        from mkdocs.exceptions import PluginError

        raise PluginError(str(exc)) from exc
