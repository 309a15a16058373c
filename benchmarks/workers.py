"""Warm workers against spawning: the per-call time of a sympy tool and of a trivial tool.

Both through ``BoundTool.call()``, in one run and one process: a host without warm workers
(every call spawns the env's python) and a host with them (every call forks the plugin's
server), calls interleaved, medians compared. Prints a Markdown table with the ratios and
writes it into ``results.md`` (its own section; ``bench.py`` keeps it)::

    .venv/bin/python benchmarks/workers.py               # sympy from the bench wheelhouse
    .venv/bin/python benchmarks/workers.py --calls 50 --no-write
    .venv/bin/python benchmarks/workers.py --stand-in    # offline: a generated heavy package

With sympy (not with ``--stand-in``) it also measures, in the same run, the **cold first tool
result** right after a build (``--cold-rounds`` rounds, fresh cache dirs each time): the seed's
``run.sh`` (the baseline: ``python3 -m venv`` + ``pip install``, which compiles bytecode), ally
in a new process without warm workers (the first call compiles what it imports), and ally with
``warm_workers=True`` (the worker started right after the build preloads, helped by the
compile ahead, and serves the first call). ``--cold-rounds 0`` skips it.

The sympy wheels come from ``benchmarks/.cache/wheelhouse`` (``bench.py`` fills it with
``pip download sympy mpmath six``; this script does the same when it is missing). Without
network, ``--stand-in`` (or a failed download) builds a local package of a few hundred
modules that takes a comparable time to import, and the table says so.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from bench import CACHE, RESULTS, bench_environ, ensure_wheelhouse  # noqa: E402

#: Hidden flag: measure a warm host's load + first call in this (fresh) process.
COLD_FLAG = "--_cold-first"

START = "<!-- workers.py: start -->"
END = "<!-- workers.py: end -->"

SYMPY_TOOL = """\
import json, sys
import sympy
args = json.load(sys.stdin)
x = sympy.Symbol("x")
expr = sympy.sympify(args["expression"])
print(json.dumps({"success": True, "result": str(sympy.diff(expr, x))}))
"""
STAND_IN_TOOL = """\
import json, sys
import standin_heavy
args = json.load(sys.stdin)
print(json.dumps({"success": True, "result": standin_heavy.total(args["n"])}))
"""
TRIVIAL_TOOL = """\
import json, sys
args = json.load(sys.stdin)
print(json.dumps({"success": True, "result": len(args)}))
"""


def log(msg: str) -> None:
    print(f"[workers {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def stand_in_wheel(dest: Path) -> Path:
    """A pure-Python package of 400 modules with classes and functions (imports in about
    the time sympy takes on this machine once compiled)."""
    from ally_core.testing import build_wheel

    files = {"standin_heavy/__init__.py": ""}
    names = []
    for i in range(400):
        body = [f"from standin_heavy import m{i - 1} as prev" if i else "prev = None"]
        for j in range(30):
            body.append(
                f"class C{j}:\n    '''doc'''\n    def __init__(self, x={j}):\n        self.x = x\n"
                f"    def value(self):\n        return self.x * {i} + {j}\n"
            )
            body.append(f"def f{j}(n):\n    return sum(C{j}(k).value() for k in range(n))\n")
        files[f"standin_heavy/m{i}.py"] = "\n".join(body)
        names.append(f"m{i}")
    files["standin_heavy/__init__.py"] = (
        "\n".join(f"from . import {n}" for n in names) + "\ndef total(n):\n    return m399.f0(n)\n"
    )
    return build_wheel(dest, "standin-heavy", "1.0.0", files=files)


def cpu_seconds(server: int | None) -> float:
    """CPU time of this process and its reaped children, plus a worker server's own and
    that of its reaped children (the forked calls)."""
    t = os.times()
    total = t.user + t.system + t.children_user + t.children_system
    if server is not None:
        fields = Path(f"/proc/{server}/stat").read_text().rpartition(")")[2].split()
        total += sum(int(v) for v in fields[11:15]) / os.sysconf("SC_CLK_TCK")
    return total


def median(values: list[float]) -> float:
    return statistics.median(values)


def fmt(seconds: float) -> str:
    return f"{seconds * 1000:.1f} ms" if seconds < 10 else f"{seconds:.2f} s"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=30, help="timed calls per contender")
    parser.add_argument("--stand-in", action="store_true", help="no sympy: a local package")
    parser.add_argument("--no-write", action="store_true", help="do not update results.md")
    parser.add_argument("--keep", action="store_true", help="keep the work dir")
    parser.add_argument(
        "--cold-rounds", type=int, default=3, help="rounds of the cold first result (0: skip)"
    )
    args = parser.parse_args(argv)
    env = bench_environ()
    wheels: Path
    heavy = "sympy"
    if not args.stand_in:
        try:
            wheels = ensure_wheelhouse(env)
        except Exception as exc:  # offline: the stand-in
            log(f"cannot fetch sympy ({exc}); using the local stand-in")
            args.stand_in = True
    CACHE.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="workers-", dir=CACHE))
    try:
        if args.stand_in:
            heavy = "standin-heavy (local stand-in for sympy)"
            wheels = work / "wheels"
            stand_in_wheel(wheels)
        os.environ.clear()
        os.environ.update(env)
        home = work / "home"
        plugins = home / "plugins"
        (home / "config.toml").parent.mkdir(parents=True)
        (home / "config.toml").write_text(
            f"[ally.index]\nno_index = true\nfind_links = [{json.dumps(str(wheels))}]\n"
        )
        from ally_core.testing import write_plugin

        tool = {"name": "run", "command": "python3", "args": ["main.py"]}
        heavy_req = "standin-heavy\n" if args.stand_in else "sympy\n"
        write_plugin(
            plugins,
            "heavy",
            {"runtime": "python3", "dependencies": {"file": "requirements.txt"}, "tools": [tool]},
            {
                "requirements.txt": heavy_req,
                "main.py": STAND_IN_TOOL if args.stand_in else SYMPY_TOOL,
            },
        )
        write_plugin(
            plugins,
            "trivial",
            {"runtime": "python3", "dependencies": {"file": "requirements.txt"}, "tools": [tool]},
            {"requirements.txt": "six\n", "main.py": TRIVIAL_TOOL},
        )
        cold = None
        if not args.stand_in and args.cold_rounds > 0:
            cold = cold_first(work / "cold", env, wheels, args.cold_rounds)
        return run(home, heavy, args, cold)
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)


def _cold_first_in_process(home: str, tool: str, arguments: str) -> None:
    """A new host with warm workers: load (builds) + the first call, printed as JSON."""
    from ally_core import Host

    t0 = time.perf_counter()
    with Host(home, warm_workers=True) as host:
        (outcome,) = host.load()
        t1 = time.perf_counter()
        assert outcome.ready and outcome.action == "built", (outcome.action, outcome.reason)
        result = outcome.tool(tool).call(json.loads(arguments))
        t2 = time.perf_counter()
        assert result.success, result.error
        assert host.workers is not None
        info = {i.plugin: i for i in host.workers.info()}
        served = any(i.calls for i in info.values())
    print(json.dumps({"ready": t1 - t0, "first_result": t2 - t0, "in_worker": served}))


def cold_first(root: Path, env: dict[str, str], wheels: Path, rounds: int) -> dict[str, Any]:
    """The cold first tool result of the sympy plugin of ``bench.py``: run.sh, ally spawning,
    ally with warm workers; each round from fresh dirs, the order rotated every round."""
    import subprocess

    from benchlib.contenders import Contender
    from benchlib.plugins import PLUGINS

    kind = "sympy-calc"
    info = PLUGINS[kind]
    names = ["runsh", "ally-spawn", "ally-warm"]
    got: dict[str, list[float]] = {n: [] for n in names}
    in_worker = []
    for i in range(rounds):
        for name in names[i % 3 :] + names[: i % 3]:
            base = root / f"{name}-{i}"
            contender = Contender("runsh" if name == "runsh" else "ally-uv", base, env, wheels)
            contender.add("calc", kind)
            if name == "ally-warm":
                os.sync()
                proc = subprocess.run(
                    [
                        sys.executable,
                        __file__,
                        COLD_FLAG,
                        str(contender.home),
                        info["tool"],
                        json.dumps(info["input"]),
                    ],
                    capture_output=True,
                    text=True,
                    env=contender.env,
                    timeout=1200,
                )
                if proc.returncode != 0:
                    raise RuntimeError(f"warm cold-first failed:\n{proc.stderr[-3000:]}")
                out = json.loads(proc.stdout.strip().splitlines()[-1])
                in_worker.append(bool(out["in_worker"]))
            else:
                out = contender.load("calc", kind, call=True)
            got[name].append(out["first_result"])
            log(f"cold first result, {name}, round {i + 1}: {fmt(out['first_result'])}")
            shutil.rmtree(base, ignore_errors=True)
    return {"times": got, "in_worker": in_worker, "rounds": rounds}


def run(home: Path, heavy: str, args: argparse.Namespace, cold: dict[str, Any] | None) -> int:
    from ally_core import Host

    inputs = {
        "heavy": {"n": 50} if args.stand_in else {"expression": "x**3 + 2*x"},
        "trivial": {"a": 1},
    }
    load_avg = [os.getloadavg()[0]]
    spawn_host = Host(home)
    outcomes = {o.name: o for o in spawn_host.load()}
    for name, outcome in outcomes.items():
        assert outcome.ready, f"{name}: {outcome.reason}"
        # The first call compiles the env's bytecode; it is not what is measured.
        first = outcome.tool("run").call(inputs[name])
        assert first.success, first.error
        log(f"{name}: first call (compiles bytecode) {fmt(first.duration)}: {first.result}")
    worker_host = Host(home, warm_workers=True)
    try:
        assert worker_host.workers is not None
        warm_outcomes = {o.name: o for o in worker_host.load()}
        starts: dict[str, float] = {}
        for name, outcome in warm_outcomes.items():
            t0 = time.perf_counter()
            info = worker_host.workers.start(outcome)
            starts[name] = time.perf_counter() - t0
            assert info.state == "ready", info
            log(f"{name}: worker {info.pid} ready in {fmt(starts[name])}, {info.rss / 1e6:.0f} MB")
        times: dict[tuple[str, str], list[float]] = {}
        contenders: dict[str, Callable[[str], Any]] = {
            "spawn": lambda name: outcomes[name].tool("run").call(inputs[name]),
            "worker": lambda name: warm_outcomes[name].tool("run").call(inputs[name]),
        }
        cpu: dict[tuple[str, str], float] = {}
        for name in inputs:
            for call in contenders.values():
                call(name)  # untimed warm-up
            # A worker whose calls imported more modules is replaced by one preloading them
            # (in the background): measure the worker a long-running host ends up with.
            for _ in range(3):
                before = {i.plugin: i.pid for i in worker_host.workers.info()}[name]
                contenders["worker"](name)
                deadline = time.monotonic() + 10
                while time.monotonic() < deadline:
                    now = {i.plugin: i.pid for i in worker_host.workers.info()}[name]
                    if now != before:
                        break
                    time.sleep(0.1)
                else:
                    break
            server = {i.plugin: i.pid for i in worker_host.workers.info()}[name]
            assert server is not None
            for _ in range(args.calls):
                for kind, call in contenders.items():
                    c0 = cpu_seconds(server if kind == "worker" else None)
                    t0 = time.perf_counter()
                    result = call(name)
                    times.setdefault((name, kind), []).append(time.perf_counter() - t0)
                    # The server reaps the call's process right after it exits.
                    cpu[(name, kind)] = cpu.get((name, kind), 0.0) + (
                        cpu_seconds(server if kind == "worker" else None) - c0
                    )
                    assert result.success, result.error
            assert {i.plugin: i.pid for i in worker_host.workers.info()}[name] == server
        infos = {i.plugin: i for i in worker_host.workers.info()}
        assert all(i.calls >= args.calls for i in infos.values()), infos
        preloaded = {name: len(info.imported) for name, info in infos.items()}
    finally:
        worker_host.close()
    load_avg.append(os.getloadavg()[0])
    rows = []
    goals = []
    labels = {"heavy": f"{heavy} tool (`diff`)", "trivial": "trivial tool (json only)"}
    if args.stand_in:
        labels["heavy"] = f"{heavy} tool"
    for name in inputs:
        spawn = median(times[(name, "spawn")])
        worker = median(times[(name, "worker")])
        ratio = worker / spawn
        cpu_spawn = cpu[(name, "spawn")] / args.calls
        cpu_worker = cpu[(name, "worker")] / args.calls
        rows.append(
            f"| {labels[name]} | {fmt(spawn)} | {fmt(worker)} | {ratio:.3f}x | "
            f"{fmt(cpu_spawn)} | {fmt(cpu_worker)} | {cpu_worker / cpu_spawn:.3f}x | "
            f"{fmt(starts[name])} | {preloaded[name]} |"
        )
        if name == "heavy":
            goals.append((f"{labels[name]}: worker ≤ 0.07x spawn", ratio <= 0.07, f"{ratio:.3f}x"))
        else:
            goals.append((f"{labels[name]}: worker call ≤ 5 ms", worker <= 0.005, fmt(worker)))
    cold_lines: list[str] = []
    if cold is not None:
        base = median(cold["times"]["runsh"])
        titles = {
            "runsh": "run.sh (baseline: venv + pip install, compiles bytecode)",
            "ally-spawn": "ally, no warm workers (the first call compiles what it imports)",
            "ally-warm": "ally, `warm_workers=True` (worker started at the build serves it)",
        }
        cold_rows = [
            f"| {titles[n]} | {fmt(median(v))} | {median(v) / base:.3f}x | "
            f"{', '.join(fmt(x) for x in v)} |"
            for n, v in cold["times"].items()
        ]
        warm_ratio = median(cold["times"]["ally-warm"]) / base
        goals.append(
            (
                "cold first tool result with warm workers ≤ 0.10x run.sh",
                warm_ratio <= 0.10,
                f"{warm_ratio:.3f}x",
            )
        )
        cold_lines = [
            "",
            f"Cold first tool result of `bench.py`'s sympy plugin (`simplify`), right after a "
            f"build from the local wheelhouse: median of {cold['rounds']} rounds, each from "
            "fresh cache dirs, order rotated per round; load (build) + first call, each ally "
            "variant in a new process. The first call through the worker ran in the worker "
            f"in {sum(cold['in_worker'])} of {len(cold['in_worker'])} rounds.",
            "",
            "| contender | first result | ratio | rounds |",
            "|---|---:|---:|---|",
            *cold_rows,
        ]
    lines = [
        START,
        "## Warm workers (`benchmarks/workers.py`)",
        "",
        f"Generated on {time.strftime('%Y-%m-%d %H:%M')} — {platform.system()} "
        f"{platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}; "
        f"{args.calls} interleaved calls per contender, medians; 1-min load average "
        f"{load_avg[0]:.1f} at the start, {load_avg[1]:.1f} at the end. Both through "
        "`BoundTool.call()` of a ready plugin whose bytecode is compiled: *spawn* is a host "
        "without warm workers (a new interpreter per call), *worker* one with "
        "`warm_workers=True` (the plugin's fork server forks the call). Both include the "
        "per-call cgroup when one can be made (root here). *Modules preloaded*: the "
        "modules the worker imported by name: those the tool imports at top level, then "
        "those its first calls imported lazily (the worker is replaced by one preloading "
        "them, before timing starts). *CPU*: the CPU time of a call, every process counted "
        "(ally's, the tool's, and for a worker the server's own), which the machine's "
        "load does not inflate as it does wall-clock times.",
        "",
        "| tool | spawn | warm worker | ratio | CPU, spawn | CPU, worker | CPU ratio "
        "| worker start (preload) | modules preloaded |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
        *rows,
        *cold_lines,
        "",
        *(f"- {'✅' if ok else '❌'} {label}: {value}" for label, ok, value in goals),
        END,
    ]
    text = "\n".join(lines) + "\n"
    print(text)
    if not args.no_write:
        write_section(text)
    return 0


def write_section(text: str) -> None:
    old = RESULTS.read_text("utf-8") if RESULTS.is_file() else ""
    start, end = old.find(START), old.find(END)
    if start >= 0 and end > start:
        new = old[:start] + text + old[end + len(END) :].lstrip("\n")
    else:
        new = old.rstrip("\n") + "\n\n" + text
    RESULTS.write_text(new, "utf-8")


if __name__ == "__main__":
    if len(sys.argv) == 5 and sys.argv[1] == COLD_FLAG:
        _cold_first_in_process(*sys.argv[2:])
        sys.exit(0)
    sys.exit(main())
