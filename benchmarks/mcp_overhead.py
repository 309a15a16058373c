#!/usr/bin/env python3
"""Per-call overhead of ``ally mcp serve`` and of ``ally run`` over spawning the tool directly.

Run with the dev venv's interpreter (it must import ``ally_core`` and the ``mcp`` SDK)::

    .venv/bin/python benchmarks/mcp_overhead.py              # 50 calls per path
    .venv/bin/python benchmarks/mcp_overhead.py --calls 200  # steadier medians
    .venv/bin/python benchmarks/mcp_overhead.py --write      # also update results.md

One trivial Python tool (reads its JSON input, prints a JSON reply), in a fresh ally home, is
called the same number of times through each path in the same run, in rounds that call every
path once (in an order rotated each round, so that drift in the machine's load hits all):

* ``direct`` — ``Popen`` of the argv ally would run (the interpreter and the tool's script), with
  the same minimal environment, input on stdin, reply read from stdout: the floor.
* ``ally API`` — ``BoundTool.call()`` in this process (what an embedding Python host pays).
* ``MCP (stdio)`` — ``tools/call`` from the official SDK client to one long-running
  ``ally mcp serve``.
* ``ally run`` — one ``python -m ally_core.cli run`` process per call (what a non-Python host
  paid before MCP).

The overhead of a path is the median over rounds of its call minus that round's direct spawn;
the goal is an MCP overhead of at most 2 ms a call.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Callable

from benchlib.common import ECHO_TOOL, fmt_duration, write_section

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results.md"
HEADING = "## MCP per-call overhead"
GOAL_MS = 2.0


def _fmt(seconds: float) -> str:
    return fmt_duration(seconds, ms_digits=2)


def _rounds(
    paths: dict[str, Callable[[], Any]], environ: dict[str, str], calls: int, warmup: int = 3
) -> dict[str, list[float]]:
    """Every path once per round, in an order rotated each round (drift hits all alike)."""
    import anyio
    from mcp import ClientSession, StdioServerParameters
    from mcp.client.stdio import stdio_client

    params = StdioServerParameters(
        command=sys.executable, args=["-m", "ally_core.cli", "mcp", "serve"], env=environ
    )
    names = [*paths, "MCP (stdio)"]
    times: dict[str, list[float]] = {name: [] for name in names}
    cpu: list[float] = []

    async def main() -> None:
        with open(os.devnull, "w") as errlog:
            async with contextlib.AsyncExitStack() as stack:
                read, write = await stack.enter_async_context(stdio_client(params, errlog=errlog))
                session = await stack.enter_async_context(ClientSession(read, write))
                await session.initialize()
                await session.list_tools()

                async def mcp_call() -> None:
                    result = await session.call_tool("echo", {"n": 1})
                    if result.isError:
                        raise SystemExit(f"MCP call failed: {result.content}")

                server = _child_pid("mcp")
                before = _cpu_seconds(server)
                for i in range(warmup + calls):
                    order = names[i % len(names) :] + names[: i % len(names)]
                    for name in order:
                        start = time.perf_counter()
                        if name == "MCP (stdio)":
                            await mcp_call()
                        else:
                            paths[name]()
                        if i >= warmup:
                            times[name].append(time.perf_counter() - start)
                if server is not None:
                    cpu.append((_cpu_seconds(server) - before) / (warmup + calls))

    anyio.run(main)
    if cpu:
        times["server CPU"] = cpu
    return times


def _child_pid(word: str) -> int | None:
    """A child of this process whose command line has ``word`` (Linux: /proc), else None."""
    for entry in Path("/proc").glob("[0-9]*"):
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if int(stat.rsplit(")", 1)[1].split()[1]) == os.getpid() and word.encode() in cmdline:
            return int(entry.name)
    return None


def _cpu_seconds(pid: int | None) -> float:
    """User + system CPU time of ``pid`` itself (not of its children)."""
    if pid is None:
        return 0.0
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def measure(calls: int) -> dict[str, list[float]]:
    from ally_core import Host
    from ally_core.testing import hermetic_environ, write_plugin
    from ally_core.tools import build_command, tool_environ

    work = Path(tempfile.mkdtemp(prefix="ally-mcp-bench-"))
    home = work / "home"
    write_plugin(
        home / "plugins",
        "bench",
        {"tools": [{"name": "echo", "command": "python3", "args": ["tool.py"]}]},
        files={"tool.py": ECHO_TOOL},
    )
    environ = hermetic_environ()
    environ["ALLY_HOME"] = str(home)
    # python3 on PATH is this interpreter (not a shim), for every path alike.
    environ["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), environ.get("PATH", "")])
    environ.pop("PYTHONDONTWRITEBYTECODE", None)
    host = Host(home, environ=environ)
    (outcome,) = host.load()
    assert outcome.ready, outcome.reason
    bound = outcome.tool("echo")
    tool_env = tool_environ(
        outcome.env, base=environ, plugin_name="bench", plugin_dir=outcome.plugin_dir
    )
    argv = build_command(outcome.plugin_dir, bound.spec, outcome.env, tool_env["PATH"])
    payload = json.dumps({"n": 1}).encode()

    def direct() -> None:
        proc = subprocess.run(
            argv, input=payload, capture_output=True, cwd=outcome.plugin_dir, env=tool_env
        )
        json.loads(proc.stdout)

    def api() -> None:
        assert bound.call({"n": 1}).success

    cli = [sys.executable, "-m", "ally_core.cli", "run", "bench", "echo", "--input", '{"n": 1}']

    def ally_run() -> None:
        proc = subprocess.run(cli, capture_output=True, env=environ, stdin=subprocess.DEVNULL)
        if proc.returncode != 0:
            raise SystemExit(f"ally run failed: {proc.stderr.decode()}")

    saved = dict(os.environ)
    os.environ.clear()
    os.environ.update(environ)  # BoundTool.call builds the tool's env from os.environ
    try:
        times = _rounds({"direct": direct, "ally API": api, "ally run": ally_run}, environ, calls)
        order = ("direct", "ally API", "MCP (stdio)", "ally run", "server CPU")
        return {k: times[k] for k in order if k in times}
    finally:
        os.environ.clear()
        os.environ.update(saved)


def table(times: dict[str, list[float]], calls: int) -> str:
    base = statistics.median(times["direct"])

    def overhead(name: str) -> float:
        # Paired: each round's call minus the same round's direct spawn.
        return statistics.median(a - b for a, b in zip(times[name], times["direct"]))

    lines = [
        f"{HEADING}",
        "",
        f"Generated by `benchmarks/mcp_overhead.py` on {time.strftime('%Y-%m-%d %H:%M')} — "
        f"{platform.system()} {platform.machine()}, {os.cpu_count()} CPUs, Python "
        f"{platform.python_version()}, 1-min load average {os.getloadavg()[0]:.1f}. One trivial "
        f"Python tool, {calls} rounds (after 3 warm-up rounds), each calling every path once in "
        "an order rotated by one place per round. Overhead = the median over rounds of (the "
        "path's call minus the same round's direct spawn); ratio = median / direct median.",
        "",
        "| path | median per call | p90 | overhead over direct | ratio |",
        "|---|---:|---:|---:|---:|",
    ]
    for name, values in times.items():
        if name == "server CPU":
            continue
        median = statistics.median(values)
        p90 = statistics.quantiles(values, n=10)[-1] if len(values) >= 2 else median
        over = "—" if name == "direct" else _fmt(overhead(name))
        lines.append(f"| {name} | {_fmt(median)} | {_fmt(p90)} | {over} | {median / base:.3g}x |")
    mcp = overhead("MCP (stdio)")
    mark = "\u2705" if mcp <= GOAL_MS / 1e3 else "\u274c"
    lines += ["", f"- {mark} MCP per-call overhead \u2264 {GOAL_MS:g} ms: {_fmt(mcp)}"]
    if "server CPU" in times:
        lines.append(
            f"- CPU time of the `ally mcp serve` process per call (its own, not the tool's; "
            f"independent of the machine's load): {_fmt(times['server CPU'][0])}"
        )
    lines.append("")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--calls", type=int, default=50, help="calls per path (default 50)")
    parser.add_argument("--write", action="store_true", help=f"update {RESULTS.name}")
    args = parser.parse_args(argv)
    if args.calls < 2:
        parser.error("--calls must be at least 2")
    section = table(measure(args.calls), args.calls)
    print(section)
    if args.write:
        write_section(HEADING, section)
    return 0


if __name__ == "__main__":
    sys.exit(main())
