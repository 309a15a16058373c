"""Helpers of the MCP-server plugin tests (their fixtures are in conftest.py): the tiny stdio
MCP servers' sources, Claude-style plugins that declare them, the CLI, and an MCP client."""

from __future__ import annotations

import asyncio
import importlib.util
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Optional

import pytest

from ally_core.testing import build_wheel

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]


def _load(name: str, path: Path) -> Any:
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


SOURCES = _load("ally_mcp_test_sources", HERE / "servers_src.py")
#: The node runtime's test registry (packuments and tarballs over HTTP on 127.0.0.1).
NODE_TESTS = _load("ally_node_test_registry", ROOT / "runtimes/node/tests/conftest.py")
NODE = shutil.which("node")
NPM = shutil.which("npm")

PY_PACKAGE = "allydemo-mcp"
NODE_PACKAGE = "ally-mcp-demo"


def py_server_wheel(dest: Path, version: str) -> Path:
    return build_wheel(
        dest,
        PY_PACKAGE,
        version,
        requires=["allydemo-greet>=1.0"],
        console_scripts={PY_PACKAGE: "allydemo_mcp:main"},
        files={"allydemo_mcp.py": SOURCES.PY_SERVER.format(version=version)},
    )


def write_claude_plugin(
    home: Path,
    name: str,
    servers: Mapping[str, Any],
    *,
    form: str = "wrapper",
    files: Mapping[str, str] | None = None,
    manifest: Mapping[str, Any] | None = None,
) -> Path:
    """A Claude-style plugin declaring ``servers`` in ``.mcp.json`` (``form`` ``"wrapper"``:
    ``{"mcpServers": ...}``; ``"bare"``: the map alone; ``"inline"``: in plugin.json)."""
    plugin_dir = home / "plugins" / name
    (plugin_dir / ".claude-plugin").mkdir(parents=True, exist_ok=True)
    data: dict[str, Any] = {"name": name, "version": "0.1.0", **(manifest or {})}
    if form == "inline":
        data["mcpServers"] = dict(servers)
    elif form == "bare":
        (plugin_dir / ".mcp.json").write_text(json.dumps(servers, indent=2), "utf-8")
    else:
        (plugin_dir / ".mcp.json").write_text(
            json.dumps({"mcpServers": servers}, indent=2), "utf-8"
        )
    (plugin_dir / ".claude-plugin" / "plugin.json").write_text(json.dumps(data, indent=2), "utf-8")
    for rel, text in (files or {}).items():
        path = plugin_dir / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, "utf-8")
    return plugin_dir


def settle(*paths: Path) -> None:
    """Age files by 10 s, as if written a while ago: launch records trust only settled files."""
    for path in paths:
        for p in [path, *path.rglob("*")] if path.is_dir() else [path]:
            st = os.lstat(p)
            os.utime(p, ns=(st.st_atime_ns, st.st_mtime_ns - 10_000_000_000), follow_symlinks=False)


def ally(
    *args: str, env: Mapping[str, str] | None = None, timeout: float = 300, **kw: Any
) -> subprocess.CompletedProcess[str]:
    """The ally CLI in a real process (the test's environment, plus ``env``)."""
    return subprocess.run(
        [sys.executable, "-m", "ally_core.cli", *args],
        text=True,
        capture_output=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
        **kw,
    )


NODE_VERSIONS = ("1.0.0", "1.1.0")


class Registry:
    """A per-test npm registry on 127.0.0.1 (the node runtime tests' one) that starts with
    the server's first version; :meth:`publish` adds the next."""

    def __init__(self, tarballs: dict[str, Path]) -> None:
        self._tarballs = tarballs
        first = [p for key, p in tarballs.items() if not key.endswith(f"@{NODE_VERSIONS[-1]}")]
        self.server = NODE_TESTS.NpmRegistry(first)
        self.url: str = self.server.url

    def publish(self, version: str) -> None:
        extra = NODE_TESTS.NpmRegistry([self._tarballs[f"{NODE_PACKAGE}@{version}"]])
        self.server.versions[NODE_PACKAGE].update(extra.versions[NODE_PACKAGE])
        extra.server.shutdown()

    def tarball_requests(self, name: str = NODE_PACKAGE) -> list[str]:
        return [r for r in self.server.tarball_requests() if f"/{name}/-/" in r]

    def stop(self) -> None:
        """Cut the network: the registry's address no longer answers."""
        self.server.server.shutdown()
        self.server.server.server_close()


def _sdk() -> Any:
    try:
        import mcp  # noqa: F401
        from mcp import ClientSession
        from mcp.client.stdio import StdioServerParameters, stdio_client
    except ImportError:
        pytest.skip("the mcp SDK is not installed (pip install 'mcp>=1.25,<2')")
    return ClientSession, StdioServerParameters, stdio_client


def mcp_session(
    command: str,
    args: Sequence[str],
    env: Optional[Mapping[str, str]] = None,
    *,
    calls: Sequence[tuple[str, Mapping[str, Any]]] = (),
    timeout: float = 120,
    errlog: Optional[Path] = None,
) -> dict[str, Any]:
    """Start a server with the official MCP SDK's stdio client; return its ``initialize``
    answer and the text of each tool call's first content item.

    ``env=None`` gives the server what the SDK gives by default (HOME, PATH, … like Claude
    Desktop does), so the test sees what a host's server sees.
    """
    ClientSession, Parameters, stdio_client = _sdk()
    if errlog is None:
        import tempfile

        errlog = Path(tempfile.mkdtemp(prefix="mcp-stderr-")) / "stderr"

    async def run() -> dict[str, Any]:
        params = Parameters(
            command=command, args=list(args), env=dict(env) if env is not None else None
        )
        with open(errlog, "w") as err:
            async with (
                stdio_client(params, errlog=err) as (read, write),
                ClientSession(read, write) as session,
            ):
                init = await asyncio.wait_for(session.initialize(), timeout)
                tools = [t.name for t in (await session.list_tools()).tools]
                results = []
                for name, arguments in calls:
                    reply = await session.call_tool(name, dict(arguments))
                    results.append(reply.content[0].text)
        return {
            "server": init.serverInfo.name,
            "version": init.serverInfo.version,
            "calls": results,
            "tools": tools,
        }

    try:
        return asyncio.run(run())
    except BaseException as exc:
        raise AssertionError(
            f"the MCP session failed; the server's stderr:\n{errlog.read_text()}"
        ) from exc


def host_environ(home: Path) -> dict[str, str]:
    """What a host passes to the servers it starts: the MCP SDK's default variables (HOME,
    PATH, …, as Claude Desktop passes), and here the home and the test's installer settings
    (a user's shell would have them in its profile)."""
    keep = ("HOME", "LOGNAME", "PATH", "SHELL", "TERM", "USER", "PIP_CONFIG_FILE", "UV_NO_CONFIG")
    env = {k: v for k, v in os.environ.items() if k in keep or k.lower().startswith("npm_config_")}
    return {**env, "ALLY_HOME": str(home)}


PY_SERVER_ENTRY = {"command": "uvx", "args": [PY_PACKAGE]}
NODE_SERVER_ENTRY = {"command": "npx", "args": ["-y", NODE_PACKAGE]}
