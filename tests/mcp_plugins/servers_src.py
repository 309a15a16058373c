"""Sources of the tiny stdio MCP servers the tests build: newline-delimited JSON-RPC, as the
MCP stdio transport speaks it, with no dependency but one small package each (to pin)."""

PY_SERVER = '''"""allydemo-mcp {version}: a tiny stdio MCP server for ally's tests."""
import json
import os
import sys

import allydemo_greet

__version__ = "{version}"
TOOLS = [
    {{"name": "greet", "description": "Greets", "inputSchema": {{"type": "object",
      "properties": {{"who": {{"type": "string"}}}}}}}},
    {{"name": "env", "description": "An environment variable", "inputSchema": {{"type": "object",
      "properties": {{"name": {{"type": "string"}}}}}}}},
    {{"name": "argv", "description": "The arguments", "inputSchema": {{"type": "object"}}}},
]


def handle(msg):
    method, params = msg.get("method"), msg.get("params") or {{}}
    if method == "initialize":
        return {{
            "protocolVersion": params.get("protocolVersion", "2025-06-18"),
            "capabilities": {{"tools": {{}}}},
            "serverInfo": {{"name": "allydemo-mcp", "version": __version__}},
        }}
    if method == "ping":
        return {{}}
    if method == "tools/list":
        return {{"tools": TOOLS}}
    if method == "tools/call":
        name, args = params["name"], params.get("arguments") or {{}}
        if name == "greet":
            text = allydemo_greet.greet(args.get("who", "world"))
        elif name == "env":
            text = json.dumps(os.environ.get(args["name"]))
        else:
            text = json.dumps(sys.argv[1:])
        return {{"content": [{{"type": "text", "text": text}}], "isError": False}}
    raise KeyError(method)


def main():
    if os.environ.get("ALLYDEMO_MCP_FAIL"):
        sys.stderr.write("allydemo-mcp: starting\\n")
        reason = os.environ["ALLYDEMO_MCP_FAIL"]
        sys.stderr.write("allydemo-mcp: cannot start: ALLYDEMO_MCP_FAIL=" + reason + "\\n")
        sys.exit(3)
    for line in sys.stdin:
        if not line.strip():
            continue
        msg = json.loads(line)
        if "id" not in msg:
            continue
        try:
            reply = {{"jsonrpc": "2.0", "id": msg["id"], "result": handle(msg)}}
        except KeyError as exc:
            reply = {{"jsonrpc": "2.0", "id": msg["id"],
                     "error": {{"code": -32601, "message": "no method " + str(exc)}}}}
        sys.stdout.write(json.dumps(reply) + "\\n")
        sys.stdout.flush()


if __name__ == "__main__":
    main()
'''

NODE_SERVER = r"""#!/usr/bin/env node
// ally-mcp-demo @VERSION@: a tiny stdio MCP server for ally's tests.
const lib = require("ally-mcp-lib");
const readline = require("readline");
const SERVER_VERSION = "@VERSION@";
const TOOLS = [
  { name: "greet", description: "Greets",
    inputSchema: { type: "object", properties: { who: { type: "string" } } } },
  { name: "env", description: "An environment variable",
    inputSchema: { type: "object", properties: { name: { type: "string" } } } },
  { name: "argv", description: "The arguments", inputSchema: { type: "object" } },
];
function handle(msg) {
  const params = msg.params || {};
  switch (msg.method) {
    case "initialize":
      return { protocolVersion: params.protocolVersion || "2025-06-18", capabilities: { tools: {} },
               serverInfo: { name: "ally-mcp-demo", version: SERVER_VERSION } };
    case "ping": return {};
    case "tools/list": return { tools: TOOLS };
    case "tools/call": {
      const args = params.arguments || {};
      let text;
      if (params.name === "greet") text = lib.greet(args.who || "world");
      else if (params.name === "env") text = JSON.stringify(process.env[args.name] ?? null);
      else text = JSON.stringify(process.argv.slice(2));
      return { content: [{ type: "text", text }], isError: false };
    }
  }
  throw new Error("no method " + msg.method);
}
if (process.env.ALLYDEMO_MCP_FAIL) {
  const reason = process.env.ALLYDEMO_MCP_FAIL;
  process.stderr.write("ally-mcp-demo: cannot start: ALLYDEMO_MCP_FAIL=" + reason + "\n");
  process.exit(3);
}
readline.createInterface({ input: process.stdin }).on("line", (line) => {
  if (!line.trim()) return;
  const msg = JSON.parse(line);
  if (msg.id === undefined) return;
  let reply;
  try { reply = { jsonrpc: "2.0", id: msg.id, result: handle(msg) }; }
  catch (e) {
    reply = { jsonrpc: "2.0", id: msg.id, error: { code: -32601, message: String(e.message) } };
  }
  process.stdout.write(JSON.stringify(reply) + "\n");
});
"""

NODE_LIB = "exports.greet = (who) => 'hello ' + who + ' from ally-mcp-lib @VERSION@';\n"
