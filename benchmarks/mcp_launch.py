#!/usr/bin/env python3
"""Time to an MCP server's ``initialize`` answer: through ally against npx -y and uvx.

Run with the dev venv's interpreter (it must import ``ally_core``); it needs the internet
(the npm registry and PyPI) for the installs and the cold runs::

    .venv/bin/python benchmarks/mcp_launch.py                # 9 rounds, 3 of them cold
    .venv/bin/python benchmarks/mcp_launch.py --rounds 15    # steadier medians
    .venv/bin/python benchmarks/mcp_launch.py --write        # also update results.md

Two real servers, declared by one Claude-style plugin in a fresh ally home:
``npx -y @modelcontextprotocol/server-memory`` and ``uvx mcp-server-time``, and a minimal one
(``python3 ${CLAUDE_PLUGIN_ROOT}/echo.py``, a few lines that answer ``initialize``) whose own
start is so short that what ally adds shows. ``ally install`` makes them ready; then each
start below is timed from ``Popen`` to the first line of stdout that answers the
``initialize`` request sent at once (what a host waits for), in rounds that start every path
once in an order rotated each round (drift in the machine's load hits all). What a path adds
is the median over rounds of its time minus the same round's direct start:

* ``direct`` — the command ``ally mcp config`` prints (straight into the env): the floor.
* ``ally (warm launcher)`` — the command ``ally mcp config --via-launch`` prints: the warm
  launcher run by path, which execs the server from its launch record.
* ``ally mcp launch`` — the ``ally`` console script (imports ``ally_core``, then the same).
* ``npx -y cold`` / ``uvx cold`` — the package runner with an empty cache of its own each time
  (a first start). ``npx -y warm`` / ``uvx warm`` — with a cache the earlier runs filled.

Then the network is cut (the registry and index addresses point at a closed port) and each
ready path is started once more. Goals: the warm launcher within 50 ms of ``direct``; a ready
server starts with the network cut.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

from benchlib.common import fmt_duration as _fmt
from benchlib.common import write_section

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results.md"
HEADING = "## MCP server start"
GOAL_MS = 50.0
SERVERS = {
    "memory": ("npx", "@modelcontextprotocol/server-memory"),
    "time": ("uvx", "mcp-server-time"),
    "echo": ("python3", "echo.py"),
}
#: The minimal server: answers every request at once, no package.
ECHO = """\
import json, sys
for line in sys.stdin:
    msg = json.loads(line)
    if "id" in msg:
        result = {"protocolVersion": "2025-06-18", "capabilities": {},
                  "serverInfo": {"name": "echo", "version": "1"}}
        print(json.dumps({"jsonrpc": "2.0", "id": msg["id"], "result": result}), flush=True)
"""
INITIALIZE = (
    json.dumps(
        {
            "jsonrpc": "2.0",
            "id": 1,
            "method": "initialize",
            "params": {
                "protocolVersion": "2025-06-18",
                "capabilities": {},
                "clientInfo": {"name": "ally-bench", "version": "1"},
            },
        }
    )
    + "\n"
).encode()
#: What a desktop host gives a server (the MCP SDK's default variables).
HOST_VARS = ("HOME", "LOGNAME", "PATH", "SHELL", "TERM", "USER")
CUT = {
    "npm_config_registry": "http://127.0.0.1:9/",
    "UV_INDEX_URL": "http://127.0.0.1:9/simple",
    "UV_DEFAULT_INDEX": "http://127.0.0.1:9/simple",
    "PIP_INDEX_URL": "http://127.0.0.1:9/simple",
    "UV_NO_CONFIG": "1",
    "PIP_CONFIG_FILE": os.devnull,
}


def time_to_initialize(
    argv: Sequence[str], env: Mapping[str, str], timeout: float = 300
) -> float | None:
    """Seconds from start to the ``initialize`` answer (``None``: no answer, or an error)."""
    start = time.perf_counter()
    proc = subprocess.Popen(
        list(argv),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        env=dict(env),
        start_new_session=True,
    )
    assert proc.stdin is not None and proc.stdout is not None
    try:
        proc.stdin.write(INITIALIZE)
        proc.stdin.flush()
        deadline = start + timeout
        while time.perf_counter() < deadline:
            line = proc.stdout.readline()
            if not line:
                return None
            try:
                message = json.loads(line)
            except ValueError:
                continue
            if isinstance(message, dict) and message.get("id") == 1:
                return time.perf_counter() - start if "result" in message else None
        return None
    finally:
        with_group_killed(proc)


def with_group_killed(proc: subprocess.Popen[bytes]) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    proc.wait()


def prepare(home: Path, ally: str) -> tuple[dict[str, list[str]], dict[str, list[str]], float]:
    """A home with one plugin declaring both servers, made ready; the direct and the
    via-launch commands of each server, and how long ``ally install`` took."""
    plugin = home / "plugins" / "bench"
    (plugin / ".claude-plugin").mkdir(parents=True)
    (plugin / ".claude-plugin" / "plugin.json").write_text('{"name": "bench"}')
    servers = {
        name: {"command": runner, "args": (["-y"] if runner == "npx" else []) + [package]}
        for name, (runner, package) in SERVERS.items()
    }
    servers["echo"]["args"] = ["${CLAUDE_PLUGIN_ROOT}/echo.py"]
    (plugin / "echo.py").write_text(ECHO)
    (plugin / "requirements.txt").write_text("")
    (plugin / ".mcp.json").write_text(json.dumps({"mcpServers": servers}))
    env = {**os.environ, "ALLY_HOME": str(home)}
    start = time.perf_counter()
    subprocess.run([ally, "install", "-q"], env=env, check=True)
    install = time.perf_counter() - start

    def commands(*extra: str) -> dict[str, list[str]]:
        out = subprocess.run(
            [ally, "mcp", "config", "-q", *extra], env=env, check=True, capture_output=True
        ).stdout
        entries = json.loads(out)["mcpServers"]
        return {name: [e["command"], *e["args"]] for name, e in entries.items()}

    return commands(), commands("--via-launch"), install


def measure(
    rounds: int, cold_rounds: int
) -> tuple[dict[str, dict[str, list[float]]], dict[str, object]]:
    ally = shutil.which("ally", path=os.path.dirname(sys.executable)) or "ally"
    npx, uvx = shutil.which("npx"), shutil.which("uvx", path=os.path.dirname(sys.executable))
    if npx is None or uvx is None:
        raise SystemExit("needs npx and uvx")
    info: dict[str, object] = {}
    with tempfile.TemporaryDirectory(prefix="ally-mcp-bench-") as tmp:
        root = Path(tmp)
        home = root / "home"
        direct, via, info["install"] = prepare(home, ally)
        host = {k: os.environ[k] for k in HOST_VARS if k in os.environ}
        warm_npm, warm_uv = root / "npm-warm", root / "uv-warm"
        runners = {"memory": npx, "time": uvx}

        def paths(server: str) -> dict[str, tuple[list[str], dict[str, str] | None]]:
            runner, package = SERVERS[server]
            launch = [ally, "--home", str(home), "mcp", "launch", "bench", server]
            if server == "echo":
                return {
                    "direct": (direct[server], host),
                    "ally (warm launcher)": (via[server], host),
                    "ally mcp launch": (launch, host),
                }
            argv = [runners[server], *(["-y"] if runner == "npx" else []), package]
            cache = "npm_config_cache" if runner == "npx" else "UV_CACHE_DIR"
            warm = warm_npm if runner == "npx" else warm_uv
            return {
                "direct": (direct[server], host),
                "ally (warm launcher)": (via[server], host),
                "ally mcp launch": (launch, host),
                f"{runner}{' -y' if runner == 'npx' else ''} cold": (argv, None),
                f"{runner}{' -y' if runner == 'npx' else ''} warm": (
                    argv,
                    {**os.environ, cache: str(warm)},
                ),
            }

        for server in SERVERS:  # fill the warm caches once
            for name, (argv, env) in paths(server).items():
                if name.endswith("warm") and env is not None:
                    time_to_initialize(argv, env)
        times: dict[str, dict[str, list[float]]] = {s: {} for s in SERVERS}
        failures: list[str] = []

        def run(server: str, name: str, argv: list[str], env: dict[str, str] | None) -> None:
            if env is None:  # cold: a cache of its own, empty
                fresh = Path(tempfile.mkdtemp(dir=root))
                cache = "npm_config_cache" if "npx" in name else "UV_CACHE_DIR"
                env = {**os.environ, cache: str(fresh)}
            took = time_to_initialize(argv, env)
            if took is None:
                failures.append(f"{server}: {name}")
            else:
                times[server].setdefault(name, []).append(took)

        # The starts of ready envs first, in rounds of their own: a cold npx run in the same
        # round leaves the machine busy (caches written, processes ending) for the next start.
        ours = ("direct", "ally (warm launcher)", "ally mcp launch")
        for i in range(rounds):
            for server in SERVERS:
                items = [(n, p) for n, p in paths(server).items() if n in ours]
                k = i % len(items)
                for name, (argv, env) in items[k:] + items[:k]:
                    run(server, name, argv, env)
        for i in range(cold_rounds):
            for server in SERVERS:
                items = [(n, p) for n, p in paths(server).items() if n not in ours]
                for name, (argv, env) in items[i % 2 :] + items[: i % 2]:
                    run(server, name, argv, env)
        offline: dict[str, dict[str, float | None]] = {s: {} for s in SERVERS}
        for server in SERVERS:
            for name, (argv, env) in paths(server).items():
                if name.endswith("cold"):
                    continue
                offline[server][name] = time_to_initialize(
                    argv, {**(env or os.environ), **CUT}, 120
                )
        info["failures"] = failures
        info["cold_rounds"] = cold_rounds
        info["offline"] = offline
    return times, info


def table(times: dict[str, dict[str, list[float]]], info: Mapping[str, object], rounds: int) -> str:
    lines = [
        HEADING,
        "",
        f"Generated by `benchmarks/mcp_launch.py` on {time.strftime('%Y-%m-%d %H:%M')} — "
        f"{platform.system()} {platform.machine()}, {os.cpu_count()} CPUs, Python "
        f"{platform.python_version()}, 1-min load average {os.getloadavg()[0]:.1f}. Time from "
        f"start to the `initialize` answer: median and min over {rounds} rounds of the ready "
        "paths (each once per round, order rotated each round), then "
        f"{info['cold_rounds']} rounds of npx/uvx (cold: an empty cache of their own each "
        "time); *adds* = the median over rounds of (the path's time - the same round's direct "
        "start) for ally, the median's difference for npx/uvx; *adds "
        "(fastest)* = the path's fastest start - the fastest direct start (what it costs on "
        "an undisturbed machine). "
        "`ally install` of the three servers (cold, in parallel): "
        f"{_fmt(float(info['install']))}.",
        "",
    ]
    added: dict[str, float] = {}
    for server, paths in times.items():
        runner, package = SERVERS[server]
        base = statistics.median(paths["direct"])
        lines += [
            f"`{runner} {package}`:",
            "",
            "| path | median | min | adds | adds (fastest) | ratio |",
            "|---|---:|---:|---:|---:|---:|",
        ]
        for name, values in paths.items():
            median = statistics.median(values)
            if name in ("ally (warm launcher)", "ally mcp launch"):
                adds = statistics.median(a - b for a, b in zip(values, paths["direct"]))
            else:  # measured in rounds of their own: against the direct median
                adds = median - base
            over = "—" if name == "direct" else _fmt(adds)
            fastest = "—" if name == "direct" else _fmt(min(values) - min(paths["direct"]))
            lines.append(
                f"| {name} | {_fmt(median)} | {_fmt(min(values))} | {over} | {fastest} | "
                f"{median / base:.3g}x |"
            )
            if name == "ally (warm launcher)":
                added[server] = adds
        lines.append("")
    # The minimal server's start is the launcher's own cost; a real server's start adds the
    # noise of its own (hundreds of ms of CPU on a shared machine) to the difference.
    for server, adds in added.items():
        mark = "\u2705" if adds * 1e3 <= GOAL_MS else "\u274c"
        what = "the launcher's own cost" if server == "echo" else f"`{SERVERS[server][1]}`"
        lines.append(
            f"- {mark} warm launcher adds \u2264 {GOAL_MS:g} ms to the direct start, {what}: "
            f"{_fmt(adds)}"
        )
    offline = info["offline"]
    assert isinstance(offline, dict)
    for server, results in offline.items():
        shown = ", ".join(
            f"{name} {'✅ ' + _fmt(took) if took is not None else '❌ no answer'}"
            for name, took in results.items()
        )
        lines.append(f"- network cut, `{SERVERS[server][1]}`: {shown}")
    failures = info.get("failures")
    if failures:
        lines.append(f"- starts that gave no answer (left out): {', '.join(map(str, failures))}")
    lines.append("")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=9, help="rounds (default 9)")
    parser.add_argument(
        "--cold-rounds", type=int, default=3, help="rounds with the cold starts (default 3)"
    )
    parser.add_argument("--write", action="store_true", help=f"update {RESULTS.name}")
    args = parser.parse_args(argv)
    times, info = measure(args.rounds, min(args.cold_rounds, args.rounds))
    section = table(times, info, args.rounds)
    print(section)
    if args.write:
        write_section(HEADING, section)
    return 0


if __name__ == "__main__":
    sys.exit(main())
