"""Reading Claude-style plugins: both .mcp.json forms, inline servers, errors with JSON paths,
${VAR} expansion as the hosts do it, and what starts each server."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ally_core.errors import ManifestError
from ally_core.mcp_plugins.launchers import classify
from ally_core.mcp_plugins.manifest import load_claude_plugin
from ally_core.mcp_plugins.warm_launch import expand

SERVERS = {
    "time": {"command": "uvx", "args": ["mcp-server-time", "--tz", "${TZ:-UTC}"]},
    "memory": {"command": "npx", "args": ["-y", "@modelcontextprotocol/server-memory"]},
    "api": {"type": "http", "url": "https://example.com/mcp"},
}


def plugin(tmp_path: Path, manifest: object, files: dict[str, object] | None = None) -> Path:
    root = tmp_path / "p"
    (root / ".claude-plugin").mkdir(parents=True)
    (root / ".claude-plugin" / "plugin.json").write_text(
        manifest if isinstance(manifest, str) else json.dumps(manifest), "utf-8"
    )
    for rel, data in (files or {}).items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(data if isinstance(data, str) else json.dumps(data), "utf-8")
    return root


@pytest.mark.parametrize(
    "manifest, files",
    [
        ({"name": "demo"}, {".mcp.json": {"mcpServers": SERVERS}}),
        ({"name": "demo"}, {".mcp.json": SERVERS}),  # Code Ally's bare map
        ({"name": "demo", "mcpServers": SERVERS}, {}),  # inline
        ({"name": "demo", "mcpServers": "./config/servers.json"}, {"config/servers.json": SERVERS}),
        (
            {"name": "demo", "mcpServers": ["extra.json", {"api": SERVERS["api"]}]},
            {".mcp.json": {"time": SERVERS["time"]}, "extra.json": {"memory": SERVERS["memory"]}},
        ),
    ],
    ids=["mcpServers-form", "bare-map", "inline", "path", "list-of-both"],
)
def test_every_way_of_declaring_servers_reads_the_same_servers(tmp_path, manifest, files):
    found = load_claude_plugin(plugin(tmp_path, manifest, files))
    assert found.name == "demo"
    by_name = {s.name: s for s in found.servers}
    assert set(by_name) == set(SERVERS)
    assert by_name["time"].command == "uvx"
    assert by_name["time"].args == ("mcp-server-time", "--tz", "${TZ:-UTC}")
    assert by_name["api"].transport == "http"
    assert not any(s.problems for s in found.servers)


def test_metadata_is_read(tmp_path):
    found = load_claude_plugin(
        plugin(
            tmp_path,
            {"name": "demo", "version": "1.2.0", "description": "d", "author": {"name": "Ann"}},
        )
    )
    assert (found.version, found.description, found.author) == ("1.2.0", "d", "Ann")
    assert found.servers == ()


def test_a_bad_server_entry_is_reported_with_its_json_path_and_spares_the_others(tmp_path):
    servers = {
        "good": {"command": "uvx", "args": ["x"]},
        "bad": {"command": "", "args": "not-a-list", "env": {"A": 1}},
        "weird": {"type": "carrier-pigeon", "command": "x"},
        "nothing": [],
    }
    found = load_claude_plugin(
        plugin(tmp_path, {"name": "demo"}, {".mcp.json": {"mcpServers": servers}})
    )
    problems = {s.name: s.problems for s in found.servers}
    assert problems["good"] == ()
    assert problems["bad"] == (
        "$.mcpServers.bad.command: expected a non-empty string, got ''",
        "$.mcpServers.bad.args: expected a list of strings",
        "$.mcpServers.bad.env.A: expected a string, got a number",
    )
    assert problems["weird"] == (
        "$.mcpServers.weird.type: unknown transport 'carrier-pigeon' (stdio, http or sse)",
    )
    assert problems["nothing"] == ("$.mcpServers.nothing: expected an object, got an array",)
    bad = found.server("bad").error("demo")
    assert str(bad).startswith("demo: .mcp.json: $.mcpServers.bad.command: expected")


@pytest.mark.parametrize(
    "manifest, files, message",
    [
        (
            {"version": 1},
            {},
            "p: .claude-plugin/plugin.json: $.name: required field missing; "
            "$.version: expected a string, got a number",
        ),
        ({"name": "no spaces"}, {}, "$.name: 'no spaces' is not a valid plugin name"),
        (
            '{\n  "name": "demo",\n}',
            {},
            "p: .claude-plugin/plugin.json: invalid JSON at line 3 column 1",
        ),
        (
            {"name": "demo"},
            {".mcp.json": "[1]"},
            "demo: .mcp.json: $: expected an object, got an array",
        ),
        (
            {"name": "demo"},
            {".mcp.json": {"mcpServers": []}},
            "demo: .mcp.json: $.mcpServers: expected an object",
        ),
        (
            {"name": "demo", "mcpServers": "../elsewhere.json"},
            {},
            "$.mcpServers: '../elsewhere.json' is outside",
        ),
        (
            {"name": "demo", "mcpServers": 3},
            {},
            "$.mcpServers: expected an object, a path or a list",
        ),
    ],
)
def test_unreadable_plugins_are_one_line_errors_with_file_and_json_path(
    tmp_path, manifest, files, message
):
    with pytest.raises(ManifestError) as err:
        load_claude_plugin(plugin(tmp_path, manifest, files))
    assert message in str(err.value)
    assert "\n" not in str(err.value)


def test_a_server_declared_twice_is_an_error_of_that_server(tmp_path):
    found = load_claude_plugin(
        plugin(
            tmp_path,
            {"name": "demo", "mcpServers": {"time": {"command": "b"}}},
            {".mcp.json": {"time": {"command": "a"}}},
        )
    )
    (server,) = found.servers
    assert server.command == "a"
    assert server.problems == (
        "$.mcpServers.time: the server 'time' is declared twice "
        "(.mcp.json and .claude-plugin/plugin.json)",
    )


# ---------------------------------------------------------------------------------------------
# ${VAR} expansion


@pytest.mark.parametrize(
    "text, expected, missing",
    [
        ("${CLAUDE_PLUGIN_ROOT}/server.py", "/plug/server.py", []),
        ("--token=${TOKEN}", "--token=t0k", []),
        ("${UNSET}", "", ["UNSET"]),  # Code Ally: empty, with a warning
        ("${UNSET:-fallback}", "fallback", []),
        ("${EMPTY:-fallback}", "fallback", []),  # as in a shell: unset or empty
        ("${EMPTY}", "", []),  # set, if empty: not missing
        ("${TOKEN:-x}-${UNSET:-}", "t0k-", []),
        ("$TOKEN and $$ and ${not a var}", "$TOKEN and $$ and ${not a var}", []),
        ("${CLAUDE_PLUGIN_ROOT:-/x}", "/plug", []),
    ],
)
def test_expansion_follows_claude_code_and_code_ally(text, expected, missing):
    seen: list[str] = []
    env = {"TOKEN": "t0k", "EMPTY": ""}
    assert expand(text, env, "/plug", seen) == expected
    assert seen == missing


def test_expansion_without_a_root_keeps_the_plugin_root_reference():
    assert expand("${CLAUDE_PLUGIN_ROOT}/a ${X}", {"X": "1"}) == "${CLAUDE_PLUGIN_ROOT}/a 1"


# ---------------------------------------------------------------------------------------------
# launchers


def launcher(
    tmp_path: Path, command: str, *args: str, files: dict[str, str] | None = None, env=None
):
    root = plugin(
        tmp_path,
        {"name": "demo", "mcpServers": {"s": {"command": command, "args": list(args)}}},
        files,
    )
    found = load_claude_plugin(root)
    return classify(found.server("s"), "demo", root, env or {})


@pytest.mark.parametrize(
    "args, packages, entry, rest, python",
    [
        (["mcp-server-time"], ("mcp-server-time",), "mcp-server-time", (), None),
        (
            ["mcp-server-time==2025.1.2", "--tz", "UTC"],
            ("mcp-server-time==2025.1.2",),
            "mcp-server-time",
            ("--tz", "UTC"),
            None,
        ),
        (["mcp-server-time@2025.1.2"], ("mcp-server-time==2025.1.2",), "mcp-server-time", (), None),
        (["mcp-server-time@latest"], ("mcp-server-time",), "mcp-server-time", (), None),
        (["pkg[extra]>=1,<2"], ("pkg[extra]>=1,<2",), "pkg", (), None),
        (["--from", "mcp-pkg==1.0", "serve", "-v"], ("mcp-pkg==1.0",), "serve", ("-v",), None),
        (["--from=mcp-pkg", "--with", "rich", "serve"], ("mcp-pkg", "rich"), "serve", (), None),
        (["-q", "--python", "3.12", "mcp-x"], ("mcp-x",), "mcp-x", (), "==3.12.*"),
        (["--python=>=3.10", "mcp-x"], ("mcp-x",), "mcp-x", (), ">=3.10"),
        (["--", "mcp-x", "--", "a"], ("mcp-x",), "mcp-x", ("--", "a"), None),
        (["${PKG}", "${KEEP}"], ("from-env",), "from-env", ("${KEEP}",), None),
    ],
)
def test_uvx_forms(tmp_path, args, packages, entry, rest, python):
    found = launcher(tmp_path, "uvx", *args, env={"PKG": "from-env"})
    assert (found.kind, found.packages, found.entry, found.args, found.python) == (
        "uvx",
        packages,
        entry,
        rest,
        python,
    )
    assert found.runtime == "python" and found.pinned


def test_uv_tool_run_is_uvx(tmp_path):
    found = launcher(tmp_path, "/usr/local/bin/uv", "tool", "run", "mcp-x", "a")
    assert (found.kind, found.packages, found.args) == ("uvx", ("mcp-x",), ("a",))


@pytest.mark.parametrize(
    "args, packages, entry, rest",
    [
        (
            ["-y", "@modelcontextprotocol/server-memory"],
            ("@modelcontextprotocol/server-memory@latest",),
            "",
            (),
        ),
        (["--yes", "@scope/pkg@^1.2", "--flag"], ("@scope/pkg@^1.2",), "", ("--flag",)),
        (["pkg@1.0.0"], ("pkg@1.0.0",), "", ()),
        (
            ["-y", "-p", "pkg@2", "-p", "other", "tool", "x"],
            ("pkg@2", "other@latest"),
            "tool",
            ("x",),
        ),
        (["--package=pkg", "tool"], ("pkg@latest",), "tool", ()),
    ],
)
def test_npx_forms(tmp_path, args, packages, entry, rest):
    found = launcher(tmp_path, "npx", *args)
    assert (found.kind, found.packages, found.entry, found.args) == ("npx", packages, entry, rest)
    assert found.runtime == "node" and found.pinned


def test_interpreters_with_a_dependency_file_get_an_env(tmp_path):
    found = launcher(
        tmp_path,
        "python3",
        "-u",
        "${CLAUDE_PLUGIN_ROOT}/server.py",
        "--x",
        files={"server.py": "", "requirements.txt": "x\n"},
    )
    assert (found.kind, found.args) == ("python", ("-u", "${CLAUDE_PLUGIN_ROOT}/server.py", "--x"))
    assert found.dependency_file is not None and found.dependency_file.name == "requirements.txt"
    assert not found.pinned
    found = launcher(
        tmp_path / "n",
        "node",
        "--no-warnings",
        "${CLAUDE_PLUGIN_ROOT}/dist/index.js",
        files={"dist/index.js": "", "package.json": "{}"},
    )
    assert found.kind == "node" and found.dependency_file.name == "package.json"


@pytest.mark.parametrize(
    "command, args, files, note",
    [
        ("${CLAUDE_PLUGIN_ROOT}/bin/server", [], {}, ""),
        ("docker", ["run", "-i", "mcp/time"], {}, ""),
        (
            "python3",
            ["${CLAUDE_PLUGIN_ROOT}/server.py"],
            {"server.py": ""},
            "no requirements.txt or pyproject.toml at the plugin root",
        ),
        (
            "python3",
            ["-m", "server"],
            {"requirements.txt": ""},
            "python runs -m, not a file of the plugin",
        ),
        (
            "node",
            ["/elsewhere/server.js"],
            {"package.json": "{}"},
            "node runs /elsewhere/server.js, not a file of the plugin",
        ),
        (
            "uvx",
            ["--index-url", "https://x", "pkg"],
            {},
            "uvx option --index-url is not understood",
        ),
        ("uvx", ["--from", "./local", "cmd"], {}, "uvx --from ./local is a local path"),
        ("npx", ["-y", "github:user/repo"], {}, "npx github:user/repo is not a registry package"),
        ("npx", ["-c", "echo"], {}, "npx option -c is not understood"),
        ("npx", ["-y"], {}, "npx without a package"),
    ],
)
def test_other_commands_run_as_declared_and_say_why(tmp_path, command, args, files, note):
    found = launcher(tmp_path, command, *args, files=files)
    assert (found.kind, found.note, found.managed) == ("command", note, False)
    assert found.args == tuple(args)


def test_a_package_that_is_no_requirement_is_a_manifest_error(tmp_path):
    with pytest.raises(ManifestError) as err:
        launcher(tmp_path, "uvx", "not a package!")
    assert (
        "demo: .claude-plugin/plugin.json: $.mcpServers.s.args: "
        "'not a package!' is not a Python package requirement" in str(err.value)
    )
