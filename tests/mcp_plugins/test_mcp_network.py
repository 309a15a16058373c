"""Real public MCP servers, from npm and from PyPI, installed and started through ally."""

from __future__ import annotations

import json
import sys

import pytest
from mcp_plugin_kit import NODE, mcp_session, write_claude_plugin

pytestmark = pytest.mark.network


def test_public_servers_from_npm_and_pypi_start_through_ally(tmp_path, monkeypatch):
    if NODE is None:
        pytest.skip("node and npm are needed")
    home = tmp_path / "home"
    (home / "plugins").mkdir(parents=True)
    monkeypatch.setenv("ALLY_HOME", str(home))
    write_claude_plugin(
        home,
        "public",
        {
            "memory": {"command": "npx", "args": ["-y", "@modelcontextprotocol/server-memory"]},
            "time": {"command": "uvx", "args": ["mcp-server-time"]},
        },
    )
    import subprocess

    result = subprocess.run(
        [sys.executable, "-m", "ally_core.cli", "install", "--json"],
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    servers = {s["server"]: s for s in json.loads(result.stdout)["mcp_servers"]}
    assert servers["memory"]["packages"]["@modelcontextprotocol/server-memory"]
    assert servers["time"]["packages"]["mcp-server-time"]
    launch = ["-m", "ally_core.cli", "mcp", "launch", "public"]
    env = {"ALLY_HOME": str(home), "PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}
    memory = mcp_session(sys.executable, [*launch, "memory"], env)
    assert "create_entities" in memory["tools"]
    time = mcp_session(
        sys.executable, [*launch, "time"], env, calls=[("get_current_time", {"timezone": "UTC"})]
    )
    assert "get_current_time" in time["tools"]
    assert json.loads(time["calls"][0])["timezone"] == "UTC"
