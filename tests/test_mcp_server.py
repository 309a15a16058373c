"""``ally mcp serve`` driven by the official MCP Python SDK client, over stdio and over HTTP.

The server is a real ``python -m ally_core.cli mcp serve`` subprocess; the tools are real
processes. Every message both ways is recorded, so the secret test can look at all of them.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any, Optional

import pytest

pytest.importorskip("mcp", reason="the MCP SDK (ally-core[mcp]) needs Python >= 3.10")

import anyio
import mcp.types as types
from mcp import ClientSession, StdioServerParameters
from mcp.client.stdio import stdio_client
from mcp.shared.message import SessionMessage

from ally_core import Host
from ally_core.plugin_config import MASK, set_stored

# -- plugins ----------------------------------------------------------------------------------

ADD = """\
import json, sys
data = json.load(sys.stdin)
print(json.dumps({"success": True, "result": data["a"] + data["b"]}))
"""
FAIL = """\
import json
print(json.dumps({"success": False, "error": "cannot divide by zero, the tool says"}))
"""
SLEEP = """\
import json, os, subprocess, sys, time
child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(300)"])
with open(sys.argv[1] if len(sys.argv) > 1 else "pids.json", "w") as fh:
    json.dump([os.getpid(), child.pid], fh)
time.sleep(300)
"""
LEAK = """\
import json, os, sys
secret = os.environ["PLUGIN_CONFIG_TOKEN"]
print("stderr says " + secret, file=sys.stderr)
data = json.loads(sys.stdin.readline())
if data.get("ask"):
    print(json.dumps({"__ally_form_request": True, "schema": {
        "title": "Token " + secret, "description": "is it " + secret + "?",
        "fields": [{"name": "ok", "type": "string", "label": secret, "default": secret}]},
        "initialValues": {"ok": secret}}), flush=True)
    answer = json.loads(sys.stdin.readline())
    print(json.dumps({"success": True, "result": {"answer": answer, "token": secret}}))
elif data.get("fail"):
    print(json.dumps({"success": False, "error": "bad token " + secret}))
else:
    print(json.dumps({"success": True, "result": {"token": secret, "nested": [secret + "!"]}}))
"""
# Waits (at most two minutes) for the test to create the file "release" in the plugin dir.
GATE = """\
import os, time
deadline = time.time() + 120
while not os.path.exists("release") and time.time() < deadline:
    time.sleep(0.05)
"""
# An interactive tool (Code Ally's form protocol): asks one form, answers with what it got.
ASK = """\
import json, sys
data = json.loads(sys.stdin.readline())
print("thinking...")
print(json.dumps({"__ally_form_request": True, "schema": {
    "title": "Solve", "description": "How to solve " + data["equation"],
    "fields": [
        {"name": "method", "type": "choice", "choices": ["newton", "bisect"], "required": True},
        {"name": "steps", "type": "number", "validation": {"min": 1, "max": 50}},
    ]}, "initialValues": {"steps": 10}}), flush=True)
answer = json.loads(sys.stdin.readline())
if not answer.get("success"):
    print(json.dumps({"success": False, "error": "no method chosen",
                      "data": {"answer": answer}}))
else:
    print(json.dumps({"success": True, "data": answer["data"]}))
"""
SCHEMA_AB = {
    "type": "object",
    "properties": {"a": {"type": "number"}, "b": {"type": "number"}},
    "required": ["a", "b"],
}


def py_tool(name: str, script: str, **extra: Any) -> dict[str, Any]:
    return {"name": name, "command": "python3", "args": [script], **extra}


@pytest.fixture
def calc(make_plugin: Callable[..., Path]) -> Path:
    return make_plugin(
        "calc",
        {
            "description": "arithmetic",
            "tools": [
                py_tool("add", "add.py", description="add two numbers", schema=SCHEMA_AB),
                py_tool("fail", "fail.py", requiresConfirmation=True),
                py_tool("nap", "sleep.py", timeout=600),
                {**py_tool("doze", "sleep.py"), "timeout": 1},
            ],
        },
        files={"add.py": ADD, "fail.py": FAIL, "sleep.py": SLEEP},
    )


# -- the client side --------------------------------------------------------------------------


def dump(message: Any) -> str:
    if isinstance(message, SessionMessage):
        return message.message.model_dump_json(by_alias=True, exclude_none=True)
    return repr(message)


@contextlib.asynccontextmanager
async def recorded(read: Any, write: Any, traffic: list[str]) -> AsyncIterator[tuple[Any, Any]]:
    """The client's streams with every message copied into ``traffic``."""
    to_client_send, to_client = anyio.create_memory_object_stream[Any](100)
    from_client, from_client_recv = anyio.create_memory_object_stream[Any](100)

    async def inbound() -> None:
        async with to_client_send:
            async for message in read:
                traffic.append("<- " + dump(message))
                await to_client_send.send(message)

    async def outbound() -> None:
        async with from_client_recv:
            async for message in from_client_recv:
                traffic.append("-> " + dump(message))
                await write.send(message)

    async with anyio.create_task_group() as tg:
        tg.start_soon(inbound)
        tg.start_soon(outbound)
        try:
            yield to_client, from_client
        finally:
            tg.cancel_scope.cancel()


class Client:
    """A session plus what the server sent it besides replies."""

    def __init__(self, session: ClientSession, traffic: list[str]) -> None:
        self.session = session
        self.traffic = traffic
        self.notifications: list[Any] = []
        self.changed = anyio.Event()

    async def on_message(self, message: Any) -> None:
        if isinstance(message, types.ServerNotification):
            self.notifications.append(message.root)
            if isinstance(message.root, types.ToolListChangedNotification):
                self.changed.set()

    async def wait_changed(self, timeout: float = 60) -> None:
        with anyio.fail_after(timeout):
            await self.changed.wait()
        self.changed = anyio.Event()

    async def names(self) -> list[str]:
        return [t.name for t in (await self.session.list_tools()).tools]


@contextlib.asynccontextmanager
async def stdio_session(errlog: Any, *args: str, elicitation: Any = None) -> AsyncIterator[Client]:
    params = StdioServerParameters(
        command=sys.executable,
        args=["-m", "ally_core.cli", "mcp", "serve", *args],
        env=dict(os.environ),
    )
    traffic: list[str] = []
    client: Optional[Client] = None

    async def handler(message: Any) -> None:
        assert client is not None
        await client.on_message(message)

    async with contextlib.AsyncExitStack() as stack:
        read, write = await stack.enter_async_context(stdio_client(params, errlog=errlog))
        r, w = await stack.enter_async_context(recorded(read, write, traffic))
        session = await stack.enter_async_context(
            ClientSession(r, w, message_handler=handler, elicitation_callback=elicitation)
        )
        client = Client(session, traffic)
        await session.initialize()
        yield client


@pytest.fixture
def errlog(tmp_path: Path) -> Iterator[Any]:
    with open(tmp_path / "server-stderr.txt", "w+") as fh:
        yield fh


def stderr_of(errlog: Any) -> str:
    errlog.flush()
    errlog.seek(0)
    return str(errlog.read())


def text(result: types.CallToolResult) -> str:
    return "\n".join(c.text for c in result.content if isinstance(c, types.TextContent))


def gone(pid: int) -> bool:
    """Whether ``pid`` has exited (a zombie no one reaped yet counts as exited)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True


def wait_gone(pids: list[int], timeout: float = 30) -> list[int]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and not all(gone(p) for p in pids):
        time.sleep(0.05)
    return [p for p in pids if not gone(p)]


# -- tests: stdio -----------------------------------------------------------------------------


def test_lists_every_tool_with_schema_annotations_and_plugin(
    calc: Path, make_plugin: Callable[..., Path], errlog: Any
) -> None:
    make_plugin(
        "other",
        {"tools": [py_tool("add", "add.py"), py_tool("inc!", "add.py")]},
        files={"add.py": ADD},
    )
    make_plugin("broken", {"tools": "not a list"})

    async def main() -> list[types.Tool]:
        async with stdio_session(errlog) as client:
            return (await client.session.list_tools()).tools

    tools = {t.name: t for t in anyio.run(main)}
    # "add" clashes: both are qualified; the others keep their names ("!" is sanitized).
    assert set(tools) == {"calc__add", "other__add", "fail", "nap", "doze", "inc_"}
    add = tools["calc__add"]
    assert add.description == "add two numbers"
    assert add.inputSchema == SCHEMA_AB
    assert add.meta is not None and add.meta["ally/plugin"] == "calc"
    assert add.meta["ally/tool"] == "add"
    assert tools["inc_"].inputSchema == {"type": "object"}
    assert tools["inc_"].meta is not None and tools["inc_"].meta["ally/tool"] == "inc!"
    fail = tools["fail"]
    assert fail.annotations is not None and fail.annotations.destructiveHint is True
    assert fail.meta is not None and fail.meta["ally/requiresConfirmation"] is True
    assert tools["nap"].annotations is None
    # The blocked plugin is named on stderr with its one-line reason; stdout stayed protocol.
    log = stderr_of(errlog)
    assert re.search(r"broken: blocked: .*\$\.tools", log), log


def test_calls_answer_with_the_reply_json_and_failures_with_the_tools_words(
    calc: Path, errlog: Any
) -> None:
    async def main() -> dict[str, types.CallToolResult]:
        async with stdio_session(errlog) as client:
            s = client.session
            return {
                "ok": await s.call_tool("add", {"a": 2, "b": 3.5}),
                "fail": await s.call_tool("fail", {}),
                "invalid": await s.call_tool("add", {"a": 2, "b": "three"}),
                "missing": await s.call_tool("add", {"a": 2}),
                "unknown": await s.call_tool("nope", {}),
                "timeout": await s.call_tool("doze", {}),
            }

    results = anyio.run(main)
    ok = results["ok"]
    assert not ok.isError
    assert json.loads(text(ok)) == {"success": True, "result": 5.5}
    assert ok.structuredContent == {"success": True, "result": 5.5}
    fail = results["fail"]
    assert fail.isError and text(fail) == "cannot divide by zero, the tool says"
    invalid = results["invalid"]
    assert invalid.isError and "input $.b: 'three' is not of type 'number'" in text(invalid)
    assert results["missing"].isError and "'b' is a required property" in text(results["missing"])
    assert results["unknown"].isError and "unknown tool 'nope'" in text(results["unknown"])
    assert results["timeout"].isError and "timed out after 1s; killed" in text(results["timeout"])


def test_invalid_input_spawns_nothing(calc: Path, errlog: Any, tmp_path: Path) -> None:
    # "nap" would write its pid file if it ran at all.
    pidfile = tmp_path / "pids.json"
    (calc / "plugin.json").write_text(
        json.dumps(
            {
                "name": "calc",
                "tools": [
                    {
                        "name": "nap",
                        "command": "python3",
                        "args": ["sleep.py", str(pidfile)],
                        "schema": {"required": ["n"]},
                    }
                ],
            }
        )
    )

    async def main() -> types.CallToolResult:
        async with stdio_session(errlog) as client:
            return await client.session.call_tool("nap", {"m": 1})

    result = anyio.run(main)
    assert result.isError and "input $: 'n' is a required property" in text(result)
    assert not pidfile.exists()


def test_secrets_reach_the_tool_but_never_the_client(
    make_plugin: Callable[..., Path], ally_home: Path, errlog: Any
) -> None:
    secret = "s3cr3t-token-4711"
    make_plugin(
        "vault",
        {
            "config": {
                "type": "object",
                "properties": {"token": {"type": "string", "secret": True}},
            },
            "tools": [py_tool("leak", "leak.py", interactive=True)],
        },
        files={"leak.py": LEAK},
    )
    host = Host(ally_home)
    set_stored(host, host.source("vault").manifest, "token", secret)
    forms: list[Any] = []

    async def elicit(context: Any, params: Any) -> types.ElicitResult:
        forms.append(params)
        return types.ElicitResult(action="accept", content={"ok": "yes"})

    async def main() -> tuple[list[types.CallToolResult], list[str]]:
        async with stdio_session(errlog, elicitation=elicit) as client:
            await client.session.list_tools()
            results = [
                await client.session.call_tool("leak", {}),
                await client.session.call_tool("leak", {"fail": True}),
                await client.session.call_tool("leak", {"ask": True}),
            ]
            return results, client.traffic

    (ok, failed, asked), traffic = anyio.run(main)
    assert len(forms) == 1 and forms[0].message == f"Token {MASK}\nis it {MASK}?"
    assert asked.structuredContent is not None
    assert asked.structuredContent["result"]["answer"]["data"] == {"ok": "yes"}
    # The tool did get the secret: the masked value stands where it echoed it.
    assert ok.structuredContent == {
        "success": True,
        "result": {"token": MASK, "nested": [MASK + "!"]},
    }
    assert failed.isError and text(failed) == f"bad token {MASK}"
    assert len(traffic) >= 6
    assert not [m for m in traffic if secret in m]
    assert secret not in stderr_of(errlog)


def test_cancelled_call_kills_the_tools_process_group(
    calc: Path, errlog: Any, tmp_path: Path
) -> None:
    pidfile = tmp_path / "pids.json"
    (calc / "plugin.json").write_text(
        json.dumps(
            {
                "name": "calc",
                "tools": [
                    {"name": "nap", "command": "python3", "args": ["sleep.py", str(pidfile)]}
                ],
            }
        )
    )

    async def main() -> tuple[list[int], Any]:
        async with stdio_session(errlog) as client:
            outcome: dict[str, Any] = {}

            async def call() -> None:
                try:
                    outcome["result"] = await client.session.call_tool("nap", {})
                except Exception as exc:
                    outcome["error"] = exc

            async with anyio.create_task_group() as tg:
                tg.start_soon(call)
                with anyio.fail_after(60):
                    while not pidfile.exists() or not pidfile.read_text():
                        await anyio.sleep(0.05)
                pids = json.loads(pidfile.read_text())
                request_id = next(
                    json.loads(m[3:])["id"] for m in client.traffic if '"tools/call"' in m
                )
                await client.session.send_notification(
                    types.ClientNotification(
                        types.CancelledNotification(
                            params=types.CancelledNotificationParams(
                                requestId=request_id, reason="the user changed their mind"
                            )
                        )
                    )
                )
                # The session stays usable while the cancelled call is cleaned up.
                await client.session.list_tools()
                left = await anyio.to_thread.run_sync(wait_gone, pids)
                tg.cancel_scope.cancel()
            return left, outcome

    left, _ = anyio.run(main)
    assert left == [], f"still running after the cancellation: {left}"


def test_a_plugin_finishing_its_build_and_a_new_plugin_are_announced(
    calc: Path, make_plugin: Callable[..., Path], errlog: Any
) -> None:
    slow = make_plugin(
        "slow",
        {
            "runtime": "python3",
            "dependencies": {"install_command": "python gate.py"},
            "tools": [py_tool("slow_add", "add.py", schema=SCHEMA_AB)],
        },
        files={"gate.py": GATE, "add.py": ADD},
    )

    async def main() -> tuple[list[str], list[str], list[str], Any]:
        async with stdio_session(errlog) as client:
            before = await client.names()
            (slow / "release").write_text("go")
            await client.wait_changed()
            after_build = await client.names()
            make_plugin("late", {"tools": [py_tool("late_add", "add.py")]}, files={"add.py": ADD})
            await client.wait_changed()
            after_new = await client.names()
            result = await client.session.call_tool("slow_add", {"a": 1, "b": 2})
            return before, after_build, after_new, result

    before, after_build, after_new, result = anyio.run(main)
    assert "add" in before and "slow_add" not in before
    assert "slow_add" in after_build
    assert "late_add" in after_new and "slow_add" in after_new
    assert not result.isError and result.structuredContent == {"success": True, "result": 3}


def test_a_call_while_the_env_builds_gets_progress_notifications(
    make_plugin: Callable[..., Path], errlog: Any
) -> None:
    slow = make_plugin(
        "slow",
        {
            "runtime": "python3",
            "dependencies": {"install_command": "python gate.py"},
            "tools": [py_tool("slow_add", "add.py", schema=SCHEMA_AB)],
        },
        files={"gate.py": GATE, "add.py": ADD},
    )
    progress: list[tuple[float, Optional[str]]] = []

    async def on_progress(value: float, total: Optional[float], message: Optional[str]) -> None:
        progress.append((value, message))
        (slow / "release").write_text("go")

    async def main() -> types.CallToolResult:
        async with stdio_session(errlog) as client:
            assert "slow_add" not in await client.names()
            return await client.session.call_tool(
                "slow_add", {"a": 1, "b": 2}, progress_callback=on_progress
            )

    result = anyio.run(main)
    assert not result.isError, text(result)
    assert result.structuredContent == {"success": True, "result": 3}
    assert progress and all("slow" in (m or "") for _, m in progress)
    values = [v for v, _ in progress]
    assert values == sorted(values) and len(set(values)) == len(values)


@pytest.fixture
def solver(make_plugin: Callable[..., Path]) -> Path:
    return make_plugin(
        "solver",
        {"tools": [py_tool("solve", "ask.py", interactive=True)]},
        files={"ask.py": ASK},
    )


def test_an_interactive_tools_form_becomes_an_elicitation(solver: Path, errlog: Any) -> None:
    asked: list[types.ElicitRequestParams] = []

    async def elicit(context: Any, params: types.ElicitRequestParams) -> types.ElicitResult:
        asked.append(params)
        return types.ElicitResult(action="accept", content={"method": "bisect", "steps": 7})

    async def main() -> tuple[types.Tool, types.CallToolResult]:
        async with stdio_session(errlog, elicitation=elicit) as client:
            (tool,) = (await client.session.list_tools()).tools
            return tool, await client.session.call_tool("solve", {"equation": "x^2=2"})

    tool, result = anyio.run(main)
    assert tool.meta is not None and tool.meta["ally/interactive"] is True
    assert not result.isError, text(result)
    assert result.structuredContent is not None
    assert result.structuredContent["data"] == {"method": "bisect", "steps": 7}
    (params,) = asked
    assert isinstance(params, types.ElicitRequestFormParams)
    assert params.message == "Solve\nHow to solve x^2=2"
    assert params.requestedSchema == {
        "type": "object",
        "properties": {
            "method": {"type": "string", "enum": ["newton", "bisect"]},
            "steps": {"type": "number", "minimum": 1, "maximum": 50, "default": 10},
        },
        "required": ["method"],
    }


def test_a_form_is_cancelled_for_a_client_without_elicitation_or_a_declining_user(
    solver: Path, errlog: Any
) -> None:
    async def decline(context: Any, params: Any) -> types.ElicitResult:
        return types.ElicitResult(action="decline")

    async def main() -> list[types.CallToolResult]:
        results = []
        async with stdio_session(errlog) as client:
            results.append(await client.session.call_tool("solve", {"equation": "y=1"}))
        async with stdio_session(errlog, elicitation=decline) as client:
            results.append(await client.session.call_tool("solve", {"equation": "y=1"}))
        return results

    unsupported, declined = anyio.run(main)
    for result in (unsupported, declined):
        assert result.isError
        assert result.structuredContent is not None
        assert result.structuredContent["data"]["answer"]["cancelled"] is True
    assert "no method chosen" in text(unsupported)
    assert "the form 'Solve' was cancelled: this MCP client does not support forms" in text(
        unsupported
    )
    assert "the form 'Solve' was declined by the user" in text(declined)


def test_unknown_plugin_and_non_loopback_http_are_refused(ally_cli: Any, calc: Path) -> None:
    missing = ally_cli("mcp", "serve", "--plugin", "nope", input="")
    assert missing.returncode != 0 and "no plugin named 'nope'" in missing.stderr
    assert missing.stdout == ""
    public = ally_cli("mcp", "serve", "--http", "0.0.0.0:8765", input="")
    assert public.returncode != 0
    assert "refusing to listen on '0.0.0.0'" in public.stderr


def test_plugin_option_serves_only_the_named_plugins(
    calc: Path, make_plugin: Callable[..., Path], errlog: Any
) -> None:
    make_plugin(
        "other",
        {"tools": [py_tool("add", "add.py"), py_tool("mul", "add.py")]},
        files={"add.py": ADD},
    )

    async def main() -> list[str]:
        async with stdio_session(errlog, "--plugin", "other") as client:
            return await client.names()

    # Without calc, "add" no longer clashes: it keeps its own name.
    assert sorted(anyio.run(main)) == ["add", "mul"]


# -- tests: Streamable HTTP -------------------------------------------------------------------


@contextlib.contextmanager
def http_server(*args: str) -> Iterator[tuple[str, str, subprocess.Popen[str]]]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "ally_core.cli", "mcp", "serve", "--http", "127.0.0.1:0", *args],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stderr is not None
        url = token = ""
        lines = []
        deadline = time.monotonic() + 60
        while not (url and token) and time.monotonic() < deadline:
            line = proc.stderr.readline()
            if not line:
                break
            lines.append(line)
            if m := re.search(r"serving (http://\S+)", line):
                url = m.group(1)
            if m := re.search(r"bearer token: (\S+)", line):
                token = m.group(1)
        assert url and token, "".join(lines)
        yield url, token, proc
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def test_http_serves_with_the_token_and_refuses_without(calc: Path) -> None:
    import httpx
    from mcp.client.streamable_http import streamable_http_client

    init = {
        "jsonrpc": "2.0",
        "id": 1,
        "method": "initialize",
        "params": {
            "protocolVersion": "2025-06-18",
            "capabilities": {},
            "clientInfo": {"name": "t", "version": "0"},
        },
    }
    accept = {"Accept": "application/json, text/event-stream"}
    with http_server() as (url, token, proc):
        refused = [
            httpx.post(url, json=init, headers=accept),
            httpx.post(url, json=init, headers={**accept, "Authorization": "Bearer wrong"}),
            httpx.get(url.replace("/mcp", "/"), headers=accept),
        ]
        assert [r.status_code for r in refused] == [401, 401, 401]
        assert token not in "".join(r.text for r in refused)

        async def main() -> tuple[list[str], types.CallToolResult]:
            auth = {"Authorization": f"Bearer {token}"}
            async with contextlib.AsyncExitStack() as stack:
                http = await stack.enter_async_context(httpx.AsyncClient(headers=auth))
                read, write, _ = await stack.enter_async_context(
                    streamable_http_client(url, http_client=http)
                )
                session = await stack.enter_async_context(ClientSession(read, write))
                await session.initialize()
                names = [t.name for t in (await session.list_tools()).tools]
                return names, await session.call_tool("add", {"a": 20, "b": 22})

        names, result = anyio.run(main)
        assert "add" in names and "fail" in names
        assert result.structuredContent == {"success": True, "result": 42}
        assert proc.poll() is None
