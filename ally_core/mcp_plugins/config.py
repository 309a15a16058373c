"""``ally mcp config``: an ``mcpServers`` object for Code Ally, Claude Code or Claude Desktop.

By default each stdio server's ``command`` points straight into its ready env (the executable
``uvx`` would have run, the env's node with the bin ``npx`` would have run, the env's
interpreter with the plugin's script): no ally process in the path and no network at start.
``${CLAUDE_PLUGIN_ROOT}`` is replaced by the plugin's directory; other ``${VAR}`` references
are left for the host to expand (Claude Code and Code Ally do; for Claude Desktop write the
value in place), so no secret is copied into the output.

With ``via_launch`` each entry starts the server through ally instead: the warm launcher
(:mod:`.warm_launch`) run by path, which execs the server from its launch record and hands over
to ``ally mcp launch`` (check, repair, build) whenever the record is out of date. That start is
self-healing; the direct one is a few milliseconds faster and breaks if the env is removed.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Sequence
from typing import Any

from .discovery import record_path
from .servers import ServerOutcome, unique_keys
from .warm_launch import PLUGIN_ROOT_VAR

__all__ = ["config_document", "config_entry"]

_ROOT = re.compile(r"\$\{" + PLUGIN_ROOT_VAR + r"(?::-[^}]*)?\}")


def _root(text: str, root: str) -> str:
    """``text`` with only ``${CLAUDE_PLUGIN_ROOT}`` expanded."""
    return _ROOT.sub(lambda _m: root, text)


def config_entry(
    outcome: ServerOutcome, *, via_launch: bool, ally_args: Sequence[str], record: str
) -> dict[str, Any]:
    """The ``mcpServers`` entry of one server (its declared entry for an http/sse server)."""
    assert outcome.ref is not None
    ref = outcome.ref
    root = str(ref.plugin.plugin_dir)
    if ref.server.transport != "stdio":
        return {k: (_root(v, root) if isinstance(v, str) else v) for k, v in ref.server.raw.items()}
    env = {k: _root(v, root) for k, v in ref.server.env.items()}
    if via_launch:
        from . import warm_launch

        args = [
            "-I",
            str(warm_launch.__file__),
            record,
            "--",
            *ally_args,
            "mcp",
            "launch",
            ref.plugin.name,
            ref.server.name,
        ]
        entry: dict[str, Any] = {"command": sys.executable, "args": args}
    else:
        assert outcome.record is not None
        argv = [_root(a, root) for a in outcome.record["argv"]]
        env = {**outcome.record["runtime_env"], **env}
        entry = {"command": argv[0], "args": argv[1:]}
    if env:
        entry["env"] = env
    return entry


def config_document(
    host: Any, outcomes: list[ServerOutcome], *, via_launch: bool, ally_args: Sequence[str]
) -> dict[str, Any]:
    """``{"mcpServers": {...}}`` for the servers that can be started (ready ones; with
    ``via_launch`` every valid stdio server, since ``ally mcp launch`` builds what is missing)."""
    usable = [
        o
        for o in outcomes
        if o.ref is not None
        and (o.ready or (via_launch and o.transport == "stdio" and not o.ref.server.problems))
    ]
    servers = {
        key: config_entry(
            o, via_launch=via_launch, ally_args=ally_args, record=str(record_path(host, o.ref))
        )
        for key, o in unique_keys(usable).items()
        if o.ref is not None
    }
    return {"mcpServers": servers}
