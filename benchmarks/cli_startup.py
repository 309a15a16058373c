#!/usr/bin/env python3
"""How long the ``ally`` command takes to start: ``ally run`` and ``ally list`` on a warm home.

Run with the dev venv's interpreter (it must import ``ally_core``)::

    .venv/bin/python benchmarks/cli_startup.py               # 30 rounds
    .venv/bin/python benchmarks/cli_startup.py --rounds 60   # steadier medians
    .venv/bin/python benchmarks/cli_startup.py --write       # also update results.md

Two fresh homes, built from a wheel made on the spot (no network): one with one plugin, one
with the same plugin and 100 copies of it (sharing its env). One trivial Python tool (reads
its JSON input, prints a JSON reply). Every command is run as a user runs it: the ``ally``
console script next to this interpreter, in a new process, on a warm home (installed, the
warm index written). In each round every command runs once, in an order rotated by one
place per round, so that drift in the machine's load hits all of them alike:

* ``python -c pass`` — the floor of any Python command line;
* ``direct spawn`` — the tool's own argv (the env's interpreter and its script), with the
  environment and the input ally would give it: what ``ally run`` adds to;
* ``ally run`` (its quick path: the plugin's run record is written by a first, full run and
  checked to be used: the run must not import ``ally_core.cli``), ``ally run`` with
  ``ALLY_QUICK_RUN=0`` (the full path, for comparison), ``ally list`` (1 plugin) and
  ``ally list`` (101 plugins), both on their quick path (checked the same way), the same with
  ``ALLY_QUICK_RUN=0``, ``ally --help``.

Goals (from wall-clock medians, paired per round where a difference is taken):
``ally run`` <= 40 ms over the direct spawn; ``ally list`` <= 80 ms on a warm home;
<= 100 µs per additional plugin. A loaded machine stretches wall time, so the CPU time of
each process (user + system, its children included: for ``ally run`` the tool's too) is
printed beside it: it is less noisy, and its ratio to ``python -c pass`` says the same.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from benchlib.common import ECHO_TOOL, write_section
from benchlib.common import fmt_duration as _fmt

HEADING = "## CLI startup"
GOALS = {"run": 40e-3, "list": 80e-3, "per_plugin": 100e-6}
COPIES = 100
SETTLE = 2.2  # ally persists nothing derived from files changed in the last 2 s
#: command -> one (wall seconds, CPU seconds) per round
Times = dict[str, list[tuple[float, float]]]


def _ally() -> list[str]:
    """The ``ally`` console script of this interpreter, as a user runs it."""
    script = Path(sys.executable).parent / "ally"
    return [str(script)] if script.is_file() else [sys.executable, "-m", "ally_core"]


def _run(
    argv: Sequence[str], env: dict[str, str], cwd: Path, stdin: bytes = b""
) -> tuple[float, float]:
    """Wall seconds and CPU seconds (user + system, reaped children included) of one run."""
    start = time.perf_counter()
    proc = subprocess.Popen(
        argv,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        cwd=cwd,
        env=env,
    )
    assert proc.stdin is not None and proc.stdout is not None and proc.stderr is not None
    proc.stdin.write(stdin)
    proc.stdin.close()
    out = proc.stdout.read()
    err = proc.stderr.read()
    _pid, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    proc.returncode = os.waitstatus_to_exitcode(status)
    proc.stdout.close()
    proc.stderr.close()
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(argv)} failed ({proc.returncode}): {err.decode()[-2000:]}")
    del out
    return wall, usage.ru_utime + usage.ru_stime


def _home(work: Path, name: str, wheelhouse: Path, copies: int) -> Path:
    from ally_core.testing import write_plugin

    home = work / name
    plugin = {
        "runtime": "python3",
        "dependencies": {"file": "requirements.txt"},
        "tools": [{"name": "echo", "command": "python3", "args": ["tool.py"]}],
    }
    files = {"requirements.txt": "allydemo-greet==1.0.0\n", "tool.py": ECHO_TOOL}
    for i in range(copies + 1):
        write_plugin(home / "plugins", "bench" if i == 0 else f"copy{i:03d}", plugin, files)
    (home / "config.toml").write_text(
        f"[ally.index]\nno_index = true\nfind_links = [{json.dumps(str(wheelhouse))}]\n", "utf-8"
    )
    return home


def measure(rounds: int, warmup: int = 3) -> tuple[Times, dict[str, Any]]:
    from ally_core import Host
    from ally_core.testing import build_wheel, hermetic_environ
    from ally_core.tools import build_command, tool_environ

    work = Path(tempfile.mkdtemp(prefix="ally-cli-bench-"))
    try:
        wheelhouse = work / "wheelhouse"
        wheelhouse.mkdir()
        build_wheel(wheelhouse, "allydemo-greet", "1.0.0")
        environ = hermetic_environ()
        # python3 on PATH is this interpreter (not a shim), for every command alike.
        environ["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), environ["PATH"]])
        environ.pop("PYTHONDONTWRITEBYTECODE", None)  # bytecode cached, as on a user's machine
        one = _home(work, "home-1", wheelhouse, 0)
        many = _home(work, "home-101", wheelhouse, COPIES)
        ally = _ally()
        envs = {home: {**environ, "ALLY_HOME": str(home)} for home in (one, many)}
        for env in envs.values():
            subprocess.run(
                [*ally, "install", "-q"], env=env, cwd=work, check=True, capture_output=True
            )
        time.sleep(SETTLE)
        for env in envs.values():
            for _ in range(2):  # the first list after SETTLE writes what the install could not
                listed = subprocess.run(
                    [*ally, "list", "--json"], env=env, cwd=work, check=True, capture_output=True
                )
            plugins = json.loads(listed.stdout)["plugins"]
            assert all(p["status"] == "ready" for p in plugins), plugins
        full = {home: {**env, "ALLY_QUICK_RUN": "0"} for home, env in envs.items()}
        _check_quick_path(ally, envs[one], work, ["run", "bench", "echo"])
        for env in envs.values():
            _check_quick_path(ally, env, work, ["list"])
        host = Host(one, environ=envs[one])
        (outcome,) = host.load()
        tool = outcome.tool("echo")
        tool_env = tool_environ(
            outcome.env, base=envs[one], plugin_name="bench", plugin_dir=outcome.plugin_dir
        )
        direct = build_command(outcome.plugin_dir, tool.spec, outcome.env, tool_env["PATH"])
        payload = b'{"n": 1}'
        commands: dict[str, tuple[list[str], dict[str, str], Path, bytes]] = {
            "python -c pass": ([sys.executable, "-c", "pass"], environ, work, b""),
            "direct spawn": (direct, tool_env, outcome.plugin_dir, payload),
            "ally run": ([*ally, "run", "bench", "echo"], envs[one], work, payload),
            "ally run (full path)": (
                [*ally, "run", "bench", "echo"],
                {**envs[one], "ALLY_QUICK_RUN": "0"},
                work,
                payload,
            ),
            "ally list (1 plugin)": ([*ally, "list"], envs[one], work, b""),
            f"ally list ({COPIES + 1} plugins)": ([*ally, "list"], envs[many], work, b""),
            "ally list (1 plugin, full path)": ([*ally, "list"], full[one], work, b""),
            f"ally list ({COPIES + 1} plugins, full path)": (
                [*ally, "list"],
                full[many],
                work,
                b"",
            ),
            "ally --help": ([*ally, "--help"], environ, work, b""),
        }
        names = list(commands)
        times: Times = {name: [] for name in names}
        for i in range(warmup + rounds):
            order = names[i % len(names) :] + names[: i % len(names)]
            for name in order:
                argv, env, cwd, stdin = commands[name]
                result = _run(argv, env, cwd, stdin)
                if i >= warmup:
                    times[name].append(result)
        info = {"ally": " ".join(Path(a).name for a in ally), "rounds": rounds}
        return times, info
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _check_quick_path(ally: list[str], env: dict[str, str], cwd: Path, args: list[str]) -> None:
    """Run ``ally ARGS`` once the full way (it writes its record), then make sure the next
    one takes the quick path: it must not import ``ally_core.cli``."""
    argv = [*ally, *args]
    subprocess.run(argv, env=env, cwd=cwd, input=b"{}", check=True, capture_output=True)
    # The console script (or python -m ally_core) with -X importtime.
    traced = [
        sys.executable,
        "-X",
        "importtime",
        *(argv[1:] if argv[0] == sys.executable else argv),
    ]
    proc = subprocess.run(traced, env=env, cwd=cwd, input=b"{}", check=True, capture_output=True)
    if b"| ally_core.cli\n" in proc.stderr or b"ally_core.quick_run" not in proc.stderr:
        raise SystemExit(f"ally {' '.join(args)} did not take its quick path: no record?")


def _paired(times: Times, a: str, b: str, k: int) -> float:
    """Median over rounds of (a - b) in wall (k=0) or CPU (k=1) seconds."""
    return statistics.median(x[k] - y[k] for x, y in zip(times[a], times[b]))


def table(times: Times, info: dict[str, Any]) -> str:
    def med(name: str, k: int) -> float:
        return statistics.median(t[k] for t in times[name])

    many = f"ally list ({COPIES + 1} plugins)"
    base_wall, base_cpu = med("python -c pass", 0), med("python -c pass", 1)
    lines = [
        HEADING,
        "",
        f"Generated by `benchmarks/cli_startup.py` on {time.strftime('%Y-%m-%d %H:%M')} — "
        f"{platform.system()} {platform.machine()}, {os.cpu_count()} CPUs, Python "
        f"{platform.python_version()}, 1-min load average {os.getloadavg()[0]:.1f}. "
        f"`{info['ally']}` in a new process per command, warm homes (installed, warm index "
        f"written), {info['rounds']} rounds after 3 warm-up rounds, each running every command "
        "once in an order rotated by one place per round. Wall and CPU (user + system, "
        "children included) are medians; differences are medians of per-round differences.",
        "",
        "| command | wall | wall min | wall / `python -c pass` | CPU | CPU / `python -c pass` |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for name in times:
        wall, cpu = med(name, 0), med(name, 1)
        low = min(t[0] for t in times[name])
        lines.append(
            f"| {name} | {_fmt(wall)} | {_fmt(low)} | {wall / base_wall:.2g} | {_fmt(cpu)} | "
            f"{cpu / base_cpu:.2g} |"
        )
    run_wall = _paired(times, "ally run", "direct spawn", 0)
    run_cpu = _paired(times, "ally run", "direct spawn", 1)
    full_wall = _paired(times, "ally run (full path)", "direct spawn", 0)
    full_cpu = _paired(times, "ally run (full path)", "direct spawn", 1)
    list_wall, list_cpu = med("ally list (1 plugin)", 0), med("ally list (1 plugin)", 1)
    per_wall = _paired(times, many, "ally list (1 plugin)", 0) / COPIES
    per_cpu = _paired(times, many, "ally list (1 plugin)", 1) / COPIES
    full_list = med("ally list (1 plugin, full path)", 0)
    full_many = f"ally list ({COPIES + 1} plugins, full path)"
    full_per = _paired(times, full_many, "ally list (1 plugin, full path)", 0) / COPIES

    def goal(label: str, value: float, limit: float, cpu: float) -> str:
        mark = "\u2705" if value <= limit else "\u274c"
        return f"- {mark} {label} \u2264 {_fmt(limit)}: {_fmt(value)} (CPU: {_fmt(cpu)})"

    lines += [
        "",
        goal("`ally run` over spawning the tool directly", run_wall, GOALS["run"], run_cpu),
        f"- the full path of `ally run` (`ALLY_QUICK_RUN=0`) over spawning the tool directly: "
        f"{_fmt(full_wall)} (CPU: {_fmt(full_cpu)}); the quick path takes "
        f"{run_wall / full_wall:.2f}x of that.",
        goal("`ally list`, warm home", list_wall, GOALS["list"], list_cpu),
        goal("per additional plugin through `ally list`", per_wall, GOALS["per_plugin"], per_cpu),
        f"- the full path of `ally list` (`ALLY_QUICK_RUN=0`): {_fmt(full_list)} for one plugin, "
        f"{_fmt(full_per)} per additional plugin.",
        f"- `python -c pass`: {_fmt(base_wall)} wall, {_fmt(base_cpu)} CPU; the direct spawn: "
        f"{_fmt(med('direct spawn', 0))} wall, {_fmt(med('direct spawn', 1))} CPU.",
        "",
    ]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--rounds", type=int, default=30, help="rounds (default 30)")
    parser.add_argument("--write", action="store_true", help="update results.md")
    args = parser.parse_args(argv)
    if args.rounds < 2:
        parser.error("--rounds must be at least 2")
    section = table(*measure(args.rounds))
    print(section)
    if args.write:
        write_section(HEADING, section)
    return 0


if __name__ == "__main__":
    sys.exit(main())
