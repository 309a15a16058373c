"""``ally mcp serve`` driven by the official TypeScript SDK client (as Code Ally would drive it).

npm needs the registry, so the suite does not install the SDK itself: ``ALLY_TEST_MCP_TS_SDK``
names a ``node_modules`` directory holding ``@modelcontextprotocol/sdk`` (.ci/run prepares one).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

pytest.importorskip("mcp", reason="the MCP SDK (ally-core[mcp]) needs Python >= 3.10")

CLIENT = """\
import { Client } from "@modelcontextprotocol/sdk/client/index.js";
import { StdioClientTransport } from "@modelcontextprotocol/sdk/client/stdio.js";
import { ToolListChangedNotificationSchema } from "@modelcontextprotocol/sdk/types.js";

const [python, ...args] = JSON.parse(process.argv[2]);
const transport = new StdioClientTransport({
  command: python, args, env: process.env, stderr: "inherit",
});
const client = new Client({ name: "ally-ts-test", version: "1.0.0" });
let changed = 0;
client.setNotificationHandler(ToolListChangedNotificationSchema, async () => { changed += 1; });
await client.connect(transport);
const tools = (await client.listTools()).tools;
const ok = await client.callTool({ name: "add", arguments: { a: 40, b: 2 } });
const fail = await client.callTool({ name: "fail", arguments: {} });
const invalid = await client.callTool({ name: "add", arguments: { a: "x", b: 2 } });
console.log(JSON.stringify({ server: client.getServerVersion(), tools, ok, fail, invalid }));
await client.close();
"""

ADD = """\
import json, sys
data = json.load(sys.stdin)
print(json.dumps({"success": True, "result": data["a"] + data["b"]}))
"""
# Read at import: the ally_home fixture clears every ALLY_* variable.
SDK_DIR = os.environ.get("ALLY_TEST_MCP_TS_SDK")
FAIL = 'print(\'{"success": false, "error": "no luck today"}\')\n'


def test_typescript_sdk_client_lists_and_calls_tools(
    make_plugin: Callable[..., Path], tmp_path: Path
) -> None:
    sdk = SDK_DIR
    if not sdk:
        pytest.skip(
            "set ALLY_TEST_MCP_TS_SDK to a node_modules dir holding @modelcontextprotocol/sdk "
            "(npm install --prefix DIR @modelcontextprotocol/sdk; .ci/run does it)"
        )
    modules = Path(sdk)
    if not (modules / "@modelcontextprotocol" / "sdk" / "package.json").is_file():
        pytest.fail(f"ALLY_TEST_MCP_TS_SDK={sdk}: no @modelcontextprotocol/sdk in it")
    node = shutil.which("node")
    if node is None:
        pytest.skip("node is not installed")
    schema = {
        "type": "object",
        "properties": {"a": {"type": "number"}, "b": {"type": "number"}},
        "required": ["a", "b"],
    }
    make_plugin(
        "calc",
        {
            "tools": [
                {"name": "add", "command": "python3", "args": ["add.py"], "schema": schema},
                {"name": "fail", "command": "python3", "args": ["fail.py"]},
            ]
        },
        files={"add.py": ADD, "fail.py": FAIL},
    )
    work = tmp_path / "ts-client"
    work.mkdir()
    # ES modules resolve packages from the script's directory upwards, not from NODE_PATH.
    (work / "node_modules").symlink_to(modules.resolve(), target_is_directory=True)
    (work / "client.mjs").write_text(CLIENT, "utf-8")
    argv = [sys.executable, "-m", "ally_core.cli", "mcp", "serve"]
    proc = subprocess.run(
        [node, str(work / "client.mjs"), json.dumps(argv)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=work,
    )
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["server"]["name"] == "ally"
    tools = {t["name"]: t for t in out["tools"]}
    assert set(tools) == {"add", "fail"}
    assert tools["add"]["inputSchema"] == schema
    assert tools["add"]["_meta"]["ally/plugin"] == "calc"
    assert out["ok"]["structuredContent"] == {"success": True, "result": 42}
    assert json.loads(out["ok"]["content"][0]["text"]) == {"success": True, "result": 42}
    assert out["fail"]["isError"] is True
    assert out["fail"]["content"][0]["text"] == "no luck today"
    assert out["invalid"]["isError"] is True
    assert "input $.a: 'x' is not of type 'number'" in out["invalid"]["content"][0]["text"]
