"""What is measured: cold loads (sympy, the small plugin), the second plugin with the same
deps, disk, warm loads of many ready plugins, tool-call overhead and the CLI's imports."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Callable, Optional

from benchlib.common import footprint, log, measure_calls, median, spawner
from benchlib.contenders import CONTENDERS, SCRIPTS, TITLES, Contender, run_in_process
from benchlib.plugins import PLUGINS, check_result

#: Modules ``ally --help`` and ``ally list`` must not import.
HEAVY = ("virtualenv", "uv", "rich")


def run_contender(
    label: str, name: str, root: Path, env: Mapping[str, str], local: Optional[Path]
) -> dict[str, Any]:
    c = Contender(name, root, env, local)

    def first_load(kind: str, what: str) -> dict[str, Any]:
        """A new plugin of ``kind``, loaded and called once; its result checked."""
        log(f"[{label}] {TITLES[name]}: cold first load of {what}")
        c.add(kind, kind)
        result = c.load(kind, kind, call=True)
        check_result(f"{name}/{label}", kind, result["result"])
        return result

    r: dict[str, Any] = {}
    cold = first_load("sympy-calc", "sympy-calc")
    r["cold_ready"] = cold["ready"]
    r["cold_first_result"] = cold["first_result"]
    env_dir = Path(cold["env"]).resolve()
    r["env_disk"] = footprint(env_dir)
    r["total_disk"] = footprint(c.root)
    r["cache_disk"] = footprint(*c.caches())

    log(f"[{label}] {TITLES[name]}: second plugin with the same deps")
    c.add("sympy-calc-2", "sympy-calc")
    before = footprint(c.root)
    second = c.load("sympy-calc-2", "sympy-calc", call=False)
    r["second_ready"] = second["ready"]
    r["second_disk"] = footprint(c.root) - before
    r["second_action"] = second.get("action")
    r["second_spawned"] = second.get("spawned")
    r["second_shared"] = Path(second["env"]).resolve() == env_dir
    if c.is_ally:
        c.add("sympy-calc-3", "sympy-calc")
        run = run_in_process(
            "running",
            {
                "home": str(c.home),
                "warm": ["sympy-calc", "sympy-calc-2"],
                "names": ["sympy-calc-3"],
            },
            c.env,
        )
        (o,) = run["outcomes"]
        r["running_ready"] = run["seconds"]
        r["running_spawned"] = run["spawned"]
        r["running_action"] = o["action"]

    small = first_load("wordcount", "the small plugin (six)")
    r["small_ready"] = small["ready"]
    r["small_first_result"] = small["first_result"]
    r["small_env"] = small["env"]
    r["root"] = str(c.root)
    return r


def settle() -> None:
    """Wait until the plugin files just written have settled.

    The warm loads are measured as a host restarting after its plugins were installed:
    ally does not persist what it derives from files changed in the last seconds (their
    identity could repeat within one timestamp tick), see ``ally_core.discovery.SETTLE_NS``.
    """
    from ally_core.discovery import SETTLE_NS

    time.sleep(SETTLE_NS / 1e9 + 0.1)


def make_tiny_wheels(dest: Path, n: int) -> None:
    from ally_core.testing import build_wheel

    for i in range(n):
        build_wheel(dest, f"benchdep-{i:03d}", "1.0.0")


def run_warm(work: Path, env: Mapping[str, str], local: Path, n: int) -> dict[str, Any]:
    """``n`` ready plugins: uv, each its own env; pip, all sharing the sympy env built before."""
    out: dict[str, Any] = {}
    # ally (uv): n plugins, n distinct envs (the worst case for the warm path).
    tiny = work / "tiny-wheels"
    make_tiny_wheels(tiny, n)
    c = Contender("ally-uv", work / "warm" / "ally-uv", env, None)
    (c.home / "config.toml").write_text(
        "[ally.index]\nno_index = true\n"
        f"find_links = [{json.dumps(str(tiny))}, {json.dumps(str(local))}]\n"
    )
    for i in range(n):
        d = c.add(f"plugin-{i:03d}", "wordcount")
        (d / "requirements.txt").write_text(f"benchdep-{i:03d}\n")
    settle()
    log(f"[warm] building {n} distinct envs with ally (uv)")
    t = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-m", "ally_core.cli", "install", "--quiet"],
        env=dict(c.env),
        capture_output=True,
        text=True,
    )
    if proc.returncode != 0:
        raise RuntimeError(
            f"ally install of {n} plugins failed ({proc.returncode}):\n"
            f"{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
        )
    out["uv_build_seconds"] = time.perf_counter() - t
    log(f"[warm] {n} envs built in {out['uv_build_seconds']:.1f}s; measuring Host.load()")
    out["ally-uv"] = warm_best_of(c.home, c.env)
    out["uv_home"] = c.home
    out["uv_env"] = c.env
    return out


def run_warm_pip(root: Path, env: Mapping[str, str], n: int) -> dict[str, Any]:
    """Add plugins sharing the (already built) sympy env to the ally-pip home; time a load."""
    c = Contender.__new__(Contender)
    c.name, c.root, c.local = "ally-pip", root, None
    c.plugins = root / "home" / "plugins"
    c.env = {**env, "ALLY_HOME": str(root / "home"), "ALLY_INSTALLER": "pip"}
    existing = {p.name for p in c.plugins.iterdir()}
    for i in range(n - len(existing)):
        c.add(f"sympy-share-{i:03d}", "sympy-calc")
    settle()
    log(f"[warm] ally (pip): {n} plugins sharing the sympy env; first load publishes them")
    run_in_process("load", {"home": str(c.home), "names": None}, c.env)
    return warm_best_of(c.home, c.env)


def warm_best_of(home: Path, env: Mapping[str, str], runs: int = 3) -> dict[str, Any]:
    """The in-process warm measurement in ``runs`` fresh processes: the best first load (the
    least disturbed).

    Plus ``runs`` processes that do not collect the imports' garbage first (``first_load_raw``:
    the median of those first loads, which include that GC pass).
    """
    results = [run_in_process("warm", {"home": str(home)}, env) for _ in range(runs)]
    raw = [run_in_process("warm", {"home": str(home), "collect": False}, env) for _ in range(runs)]
    best = min(results, key=lambda r: r["first_load"])
    best["first_load_median"] = median([r["first_load"] for r in results])
    best["first_load_raw"] = median([r["first_load"] for r in raw])
    best["import_gc"] = median([r["import_gc"] for r in results])
    everything = [*results, *raw]
    best["spawned"] = sum(r["spawned"] for r in everything)
    best["not_warm"] = max(r["not_warm"] for r in everything)
    best["spawned_argvs"] = [a for r in everything for a in r["spawned_argvs"]][:5]
    best["rebuilt"] = [line for r in everything for line in r["rebuilt"]][:5]
    return best


def baseline_warm(plugins_dir: Path, n: int) -> float:
    """What run.sh checks before each call (``[ -d venv ]``), done in-process: per plugin."""
    dirs = [str(p / "venv") for p in sorted(plugins_dir.iterdir())]
    dirs = (dirs * (n // max(1, len(dirs)) + 1))[:n]
    best = float("inf")
    for _ in range(20):
        t = time.perf_counter()
        for d in dirs:
            os.path.isdir(d)
        best = min(best, time.perf_counter() - t)
    return best / n


def warm_loads(
    work: Path,
    env: Mapping[str, str],
    local: Path,
    local_src: dict[str, dict[str, Any]],
    n: int,
) -> tuple[dict[str, Any], dict[str, str]]:
    """Warm loads of ``n`` ready plugins for ally (uv) and ally (pip), and the baselines'
    check before each call; also the environment of the ally (uv) home (for the imports)."""
    w = run_warm(work, env, local, n)
    wp = run_warm_pip(Path(local_src["ally-pip"]["root"]), env, n)
    scripts = {c: baseline_warm(Path(local_src[c]["root"]) / "plugins", n) for c in SCRIPTS}
    wu = w["ally-uv"]
    for r, who in ((wu, "ally-uv"), (wp, "ally-pip")):
        if r["ready"] != n:
            raise RuntimeError(f"warm {who}: {r['ready']}/{n} ready: {r['not_ready']}")
        if r["not_warm"]:
            log(
                f"WARNING warm {who}: {r['not_warm']} of {n} envs were rebuilt by a warm "
                f"load ({'; '.join(r['rebuilt'])}; did ally_core change during the run?): "
                "its warm numbers are void"
            )
    warm = {
        "n": n,
        "uv_build_seconds": w["uv_build_seconds"],
        "per_plugin": {
            **scripts,
            "ally-pip": wp["first_load"] / n,
            "ally-uv": wu["first_load"] / n,
        },
        "repeat_per_plugin": {
            **scripts,
            "ally-pip": wp["repeat_load"] / n,
            "ally-uv": wu["repeat_load"] / n,
        },
        "first_median_per_plugin": {
            "ally-pip": wp["first_load_median"] / n,
            "ally-uv": wu["first_load_median"] / n,
        },
        "repeat_min_per_plugin": {
            "ally-pip": wp["repeat_load_min"] / n,
            "ally-uv": wu["repeat_load_min"] / n,
        },
        "raw_per_plugin": {
            **scripts,
            "ally-pip": wp["first_load_raw"] / n,
            "ally-uv": wu["first_load_raw"] / n,
        },
        "import_gc": {"ally-pip": wp["import_gc"], "ally-uv": wu["import_gc"]},
        "fresh_host_per_plugin": {
            "ally-pip": wp["fresh_host_load"] / n,
            "ally-uv": wu["fresh_host_load"] / n,
        },
        "host_init": {"ally-pip": wp["host_init"], "ally-uv": wu["host_init"]},
        "spawned": {"ally-pip": wp["spawned"], "ally-uv": wu["spawned"]},
        "spawned_argvs": {"ally-pip": wp["spawned_argvs"], "ally-uv": wu["spawned_argvs"]},
        "rebuilt": {"ally-pip": wp["rebuilt"], "ally-uv": wu["rebuilt"]},
    }
    return warm, w["uv_env"]


def run_calls(src: dict[str, dict[str, Any]], env: Mapping[str, str], n: int) -> dict[str, Any]:
    """Tool-call overhead on the small plugin: contender's call vs the env's python directly."""
    info = PLUGINS["wordcount"]
    out: dict[str, Any] = {}
    for name in CONTENDERS:
        r = src[name]
        root = Path(r["root"])
        if name.startswith("ally"):
            log(f"[calls] {TITLES[name]}: BoundTool.call vs direct spawn, n={n}")
            cenv = {
                **env,
                "ALLY_HOME": str(root / "home"),
                "ALLY_INSTALLER": "pip" if name == "ally-pip" else "auto",
            }
            m = run_in_process(
                "calls",
                {
                    "home": str(root / "home"),
                    "name": "wordcount",
                    "tool": info["tool"],
                    "args": info["args"],
                    "input": info["input"],
                    "n": n,
                },
                cenv,
            )
            key = "ally"
        else:
            plugin = root / "plugins" / "wordcount"
            py = str(plugin / "venv" / "bin" / "python3")
            calls: dict[str, Callable[[], Any]] = {
                "direct": spawner([py, "main.py", *info["args"]], plugin, info["input"], env)
            }
            if name in ("runsh", "uv-sh"):
                log(f"[calls] {TITLES[name]}: ./run.sh vs direct spawn, n={n}")
                calls["run.sh"] = spawner(["./run.sh", *info["args"]], plugin, info["input"], env)
                key = "run.sh"
            else:
                # The host spawns the venv's python itself: the call IS the direct spawn.
                log(f"[calls] {TITLES[name]}: direct spawn, n={n}")
                key = "direct"
            m = measure_calls(calls, n)
        for k, v in m["results"].items():
            check_result(f"{name} call ({k})", "wordcount", v)
        out[name] = {
            "call": m["median"][key],
            "direct": m["median"]["direct"],
            "overhead": m["median"][key] - m["median"]["direct"],
            "overhead_min": m["min"][key] - m["min"]["direct"],
            "first_call": m["first"][key],
        }
    return out


PROBE = """
import json, sys, time
t = time.perf_counter()
from ally_core.cli import main
try:
    main(sys.argv[1:])
except SystemExit:
    pass
print(json.dumps({"heavy": sorted(m for m in sys.modules if m.split('.')[0] in %r),
                  "seconds": time.perf_counter() - t}), file=sys.stderr)
"""


def run_imports(env: Mapping[str, str]) -> dict[str, Any]:
    """``ally --help`` / ``ally list`` must not import virtualenv, uv or rich; import time."""
    out: dict[str, Any] = {}
    for args in (["--help"], ["list"], ["list", "--json"]):
        proc = subprocess.run(
            [sys.executable, "-c", PROBE % (HEAVY,), *args],
            capture_output=True,
            text=True,
            env=dict(env),
            timeout=120,
        )
        data = json.loads(proc.stderr.strip().splitlines()[-1])
        walls = []
        for _ in range(5):
            t = time.perf_counter()
            subprocess.run(
                [sys.executable, "-m", "ally_core.cli", *args],
                capture_output=True,
                env=dict(env),
                timeout=120,
            )
            walls.append(time.perf_counter() - t)
        out[" ".join(args)] = {"heavy": data["heavy"], "wall": median(walls)}
    cumulative = []
    for _ in range(5):
        proc = subprocess.run(
            [sys.executable, "-X", "importtime", "-c", "import ally_core"],
            capture_output=True,
            text=True,
            env=dict(env),
        )
        for line in proc.stderr.splitlines():
            parts = [x.strip() for x in line.split("|")]
            if len(parts) == 3 and parts[2] == "ally_core":
                cumulative.append(int(parts[1]) / 1e6)
    out["import_ally_core"] = median(cumulative)
    proc = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys, ally_core; print(', '.join(sorted({m.split('.')[0] for m in "
            "sys.modules} - set(sys.stdlib_module_names) - {'__main__'})))",
        ],
        capture_output=True,
        text=True,
        env=dict(env),
    )
    out["import_ally_core_modules"] = proc.stdout.strip()
    return out
