#!/usr/bin/env python3
"""ally against the seed's ``run.sh`` and against virtualenv + pip, side by side.

Run with the dev venv's interpreter (it must be able to ``import ally_core``)::

    .venv/bin/python benchmarks/bench.py                 # local wheelhouse AND PyPI
    .venv/bin/python benchmarks/bench.py --no-index-run  # local wheelhouse only (no network
                                                         # after the wheelhouse is cached)
    .venv/bin/python benchmarks/bench.py --repeat 1      # one round of cold loads (quicker,
                                                         # noisier; the default is 3)

Contenders, each with its OWN empty cache/data/config dirs (XDG_*, pip cache, virtualenv
app-data, ally home) so that every "cold" number really starts from nothing:

* ``run.sh``  — the seed's wrapper, byte for byte: ``python3 -m venv`` + ``pip install -r`` +
  ``exec``. Timed with ``bash -x`` and a ``$EPOCHREALTIME`` trace prompt, so the moment the
  env is ready (the ``exec`` line) is known without changing the script.
* ``virtualenv + pip`` — the same script with ``virtualenv`` in place of ``python3 -m venv``.
* ``run.sh with uv`` — the same script with ``uv venv`` + ``uv pip install`` (the uv ally
  uses): the fastest hand-written wrapper, and the reference for what ally adds to uv.
* ``ally (pip)`` — ``ALLY_INSTALLER=pip``: virtualenv + pip inside ally.
* ``ally (uv)`` — the default backend.

ally is measured in-process (``Host.load()`` / ``BoundTool.call()`` inside a fresh Python
process per step, as a host application would embed it). Everything runs with the machine's
pip/uv configuration switched off (``ally_core.testing.hermetic_environ``); the "PyPI" rows use
pip's and uv's default index, https://pypi.org/simple, over the network.

The Markdown table is printed and written to ``benchmarks/results.md``. See README.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Callable, Optional

HERE = Path(__file__).resolve().parent
CACHE = HERE / ".cache"
WHEELHOUSE = CACHE / "wheelhouse"
RESULTS = HERE / "results.md"

#: What the wheelhouse holds (``pip download`` once, then reused).
WHEELHOUSE_REQS = ("sympy", "mpmath", "six")

SEED_RUN_SH = """\
#!/bin/bash
PLUGIN_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
if [ ! -d "$PLUGIN_DIR/venv" ]; then
    python3 -m venv "$PLUGIN_DIR/venv"
    "$PLUGIN_DIR/venv/bin/pip" install -r "$PLUGIN_DIR/requirements.txt"
fi
exec "$PLUGIN_DIR/venv/bin/python3" "$PLUGIN_DIR/main.py" "$@"
"""

#: The seed's script with virtualenv (the same version ally uses) instead of ``-m venv``.
VIRTUALENV_SH = SEED_RUN_SH.replace('python3 -m venv "', '"$BENCH_VIRTUALENV" "')

#: The seed's script written for uv (the same uv ally uses): the fastest hand-written wrapper,
#: and the reference for what ally itself adds to a uv install.
UV_SH = """\
#!/bin/bash
PLUGIN_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
if [ ! -d "$PLUGIN_DIR/venv" ]; then
    "$BENCH_UV" venv --quiet --python python3 "$PLUGIN_DIR/venv"
    "$BENCH_UV" pip install --python "$PLUGIN_DIR/venv/bin/python3" $BENCH_UV_INDEX \\
        -r "$PLUGIN_DIR/requirements.txt"
fi
exec "$PLUGIN_DIR/venv/bin/python3" "$PLUGIN_DIR/main.py" "$@"
"""
SCRIPTS = {"runsh": SEED_RUN_SH, "virtualenv": VIRTUALENV_SH, "uv-sh": UV_SH}

SYMPY_MAIN = '''\
"""sympy-calc: Code Ally's kind of plugin, with a real dependency."""
import json
import sys

import sympy


def main():
    command = sys.argv[1]
    args = json.load(sys.stdin)
    expr = sympy.sympify(args["expression"])
    if command == "simplify":
        result = str(sympy.simplify(expr))
    else:
        result = [str(s) for s in sympy.solve(expr, sympy.Symbol(args.get("variable", "x")))]
    print(json.dumps({"success": True, "result": result}))


if __name__ == "__main__":
    main()
'''

SMALL_MAIN = '''\
"""wordcount: a small plugin with a small dependency."""
import json
import sys

import six


def main():
    args = json.load(sys.stdin)
    text = six.ensure_str(args.get("text", ""))
    print(json.dumps({"success": True, "result": {"words": len(text.split()), "chars": len(text)}}))


if __name__ == "__main__":
    main()
'''

PLUGINS: dict[str, dict[str, Any]] = {
    "sympy-calc": {
        "requirements": "sympy\n",
        "main": SYMPY_MAIN,
        "tool": "simplify",
        "args": ["simplify"],
        "input": {"expression": "sin(x)**2 + cos(x)**2"},
        "expect": "1",
        "schema": {
            "type": "object",
            "properties": {"expression": {"type": "string"}},
            "required": ["expression"],
        },
    },
    "wordcount": {
        "requirements": "six\n",
        "main": SMALL_MAIN,
        "tool": "count",
        "args": ["count"],
        "input": {"text": "the quick brown fox"},
        "expect": {"words": 4, "chars": 19},
        "schema": {"type": "object", "properties": {"text": {"type": "string"}}},
    },
}

CONTENDERS = ("runsh", "virtualenv", "uv-sh", "ally-pip", "ally-uv")
TITLES = {
    "runsh": "run.sh (baseline)",
    "virtualenv": "virtualenv + pip",
    "uv-sh": "run.sh with uv",
    "ally-pip": "ally, ALLY_INSTALLER=pip",
    "ally-uv": "ally, uv (default)",
}
HEAVY = ("virtualenv", "uv", "rich")


# ---------------------------------------------------------------------------------------------
# small helpers


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def base_python() -> str:
    """The real interpreter behind this venv (never a pyenv shim)."""
    exe = getattr(sys, "_base_executable", None) or sys.executable
    return os.path.realpath(exe)


def uv_bin() -> str:
    from uv import find_uv_bin

    return str(find_uv_bin())


def prime_page_cache() -> None:
    """Read the installers' binaries once, so that no contender's cold load is the one that
    pages a 40 MB uv binary in from disk (the local round runs first and paid for that).
    "Cold" means empty package caches, as every contender gets; not a cold OS page cache."""
    for path in (uv_bin(), base_python()):
        with open(os.path.realpath(path), "rb") as fh:
            while fh.read(1 << 20):
                pass


def bench_environ(base: Mapping[str, str] | None = None) -> dict[str, str]:
    """The machine's environment without its pip/uv config, ``python3`` = the base python."""
    from ally_core.testing import hermetic_environ

    env = hermetic_environ(base)
    # Measure what a user's machine does: tools write their bytecode caches.
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    env.pop("PYTHONPATH", None)
    env.pop("PYTHONHOME", None)
    # `python3` on PATH is the interpreter ally uses, not a shim (shims add ~50 ms per call).
    path = [p for p in env.get("PATH", "").split(os.pathsep) if p and ".venv" not in p]
    env["PATH"] = os.pathsep.join([os.path.dirname(base_python()), *path])
    env["VIRTUALENV_NO_PERIODIC_UPDATE"] = "1"
    env["LC_ALL"] = "C"
    return env


def footprint(*paths: Path) -> int:
    """Bytes allocated on disk under ``paths`` (``st_blocks``), each inode counted once."""
    seen: set[tuple[int, int]] = set()
    total = 0

    def add(path: str) -> None:
        nonlocal total
        try:
            st = os.lstat(path)
        except OSError:
            return
        key = (st.st_dev, st.st_ino)
        if key not in seen:
            seen.add(key)
            total += st.st_blocks * 512

    for root in paths:
        if not os.path.lexists(root):
            continue
        add(str(root))
        if root.is_symlink() or not root.is_dir():
            continue
        for dirpath, dirnames, filenames in os.walk(root):
            for name in dirnames + filenames:
                add(os.path.join(dirpath, name))
    return total


def last_json(text: str) -> Any:
    for line in reversed(text.strip().splitlines()):
        line = line.strip()
        if line.startswith(("{", "[")):
            try:
                return json.loads(line)
            except ValueError:
                continue
    return None


def median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else float("nan")


# ---------------------------------------------------------------------------------------------
# plugins on disk


def write_plugin(plugins_dir: Path, name: str, kind: str, contender: str) -> Path:
    """Plugin ``kind`` (a key of PLUGINS) as ``name``, shaped for ``contender``."""
    info = PLUGINS[kind]
    d = plugins_dir / name
    d.mkdir(parents=True, exist_ok=True)
    (d / "requirements.txt").write_text(info["requirements"])
    (d / "main.py").write_text(info["main"])
    tool: dict[str, Any] = {"name": info["tool"], "schema": info["schema"]}
    manifest: dict[str, Any] = {"name": name, "version": "1.0.0"}
    if contender.startswith("ally"):
        manifest["runtime"] = "python3"
        manifest["dependencies"] = {"file": "requirements.txt"}
        tool.update(command="python3", args=["main.py", *info["args"]])
    else:
        (d / "run.sh").write_text(SCRIPTS[contender])
        (d / "run.sh").chmod(0o755)
        tool.update(command="./run.sh", args=info["args"])
    manifest["tools"] = [tool]
    (d / "plugin.json").write_text(json.dumps(manifest, indent=2))
    return d


# ---------------------------------------------------------------------------------------------
# wheelhouse


def ensure_wheelhouse(env: Mapping[str, str]) -> Path:
    stamp = WHEELHOUSE / ".requirements"
    want = " ".join(WHEELHOUSE_REQS)
    if stamp.is_file() and stamp.read_text() == want and any(WHEELHOUSE.glob("sympy-*.whl")):
        return WHEELHOUSE
    log(f"downloading the wheelhouse once: pip download {want} -> {WHEELHOUSE}")
    WHEELHOUSE.mkdir(parents=True, exist_ok=True)
    pip = [base_python(), "-m", "pip"]
    if subprocess.run([*pip, "--version"], capture_output=True, env=dict(env)).returncode != 0:
        from virtualenv.seed.wheels.embed import get_embed_wheel

        wheel = get_embed_wheel("pip", f"{sys.version_info[0]}.{sys.version_info[1]}")
        pip = [base_python(), str(wheel.path) + "/pip"]
    subprocess.run(
        [*pip, "download", "--only-binary=:all:", "-d", str(WHEELHOUSE), *WHEELHOUSE_REQS],
        check=True,
        env=dict(env),
        stdout=subprocess.DEVNULL,
    )
    stamp.write_text(want)
    return WHEELHOUSE


# ---------------------------------------------------------------------------------------------
# the ally driver: one fresh process per step, timings taken inside it


DRIVER_FLAG = "--_driver"


class SpawnCounter:
    """Counts processes started (subprocess, posix_spawn, fork) while active."""

    def __init__(self) -> None:
        self.argvs: list[Any] = []
        self._undo: list[Callable[[], None]] = []

    def __enter__(self) -> SpawnCounter:
        seen = self.argvs

        def patch(owner: Any, attr: str, make: Callable[[Any], Any]) -> None:
            original = getattr(owner, attr)
            setattr(owner, attr, make(original))
            self._undo.append(lambda: setattr(owner, attr, original))

        def wrap_child(orig: Any) -> Any:
            def _execute_child(self_: Any, args: Any, *a: Any, **kw: Any) -> Any:
                seen.append(args)
                return orig(self_, args, *a, **kw)

            return _execute_child

        def wrap_any(name: str) -> Callable[[Any], Any]:
            def make(orig: Any) -> Any:
                def f(*a: Any, **kw: Any) -> Any:
                    seen.append((name, a[:1]))
                    return orig(*a, **kw)

                return f

            return make

        patch(subprocess.Popen, "_execute_child", wrap_child)
        for name in ("fork", "posix_spawn", "posix_spawnp"):
            if hasattr(os, name):
                patch(os, name, wrap_any(name))
        return self

    def __exit__(self, *exc: Any) -> None:
        for undo in reversed(self._undo):
            undo()
        self._undo.clear()


def _outcome(o: Any) -> dict[str, Any]:
    return {
        "name": o.name,
        "status": o.status,
        "action": o.action,
        "reason": o.reason,
        "env": str(o.env.path) if o.env else None,
        "python": o.env.commands.get("python3") if o.env else None,
    }


def driver(op: str, p: dict[str, Any]) -> dict[str, Any]:
    from ally_core import Host

    if op == "load":
        host = Host(p["home"])
        with SpawnCounter() as spawns:
            t0 = time.perf_counter()
            outcomes = host.load(p["names"])
            t1 = time.perf_counter()
        out: dict[str, Any] = {
            "seconds": t1 - t0,
            "spawned": len(spawns.argvs),
            "outcomes": [_outcome(o) for o in outcomes],
        }
        if p.get("call"):
            outcome = outcomes[0]
            tool = outcome.tool(p["call"]["tool"])
            t0 = time.perf_counter()
            result = tool.call(p["call"]["input"])
            out["first_call"] = time.perf_counter() - t0
            out["result"] = result.to_json()
        return out

    if op == "running":
        # A host that is already up (its plugins loaded) gets a new plugin dropped in.
        host = Host(p["home"])
        host.load(p["warm"])
        with SpawnCounter() as spawns:
            t0 = time.perf_counter()
            outcomes = host.load(p["names"])
            t1 = time.perf_counter()
        return {
            "seconds": t1 - t0,
            "spawned": len(spawns.argvs),
            "outcomes": [_outcome(o) for o in outcomes],
        }

    if op == "warm":
        home = p["home"]
        with SpawnCounter() as spawns:
            t0 = time.perf_counter()
            host = Host(home)
            t1 = time.perf_counter()
            import_gc = 0.0
            if p.get("collect", True):
                # The objects the imports created are due for a generation-1 GC pass (over
                # every one of them); whichever allocation comes next pays for it, in a host
                # too. Paid here, it is not charged to the first load of N plugins.
                import gc

                gc.collect()
                import_gc = time.perf_counter() - t1
                t1 = time.perf_counter()
            first = host.load()
            t2 = time.perf_counter()
            fresh = []
            later = []
            for _ in range(5):
                h = Host(home)
                t = time.perf_counter()
                later += h.load()
                fresh.append(time.perf_counter() - t)
            repeat = []
            for _ in range(20):
                t = time.perf_counter()
                later += host.load()
                repeat.append(time.perf_counter() - t)
        return {
            "plugins": len(first),
            "ready": sum(o.ready for o in first),
            "not_ready": [_outcome(o) for o in first if not o.ready][:3],
            "not_warm": sum(o.action != "none" for o in first),
            # Every load that was not warm (any action), with why: a warm load builds nothing.
            "rebuilt": [
                f"{o.name}: {o.action} {o.repair_reason or o.reason}".strip()
                for o in [*first, *later]
                if o.action != "none"
            ][:5],
            "host_init": t1 - t0 - import_gc,
            "import_gc": import_gc,
            "first_load": t2 - t1,
            "fresh_host_load": median(fresh),
            "repeat_load": median(repeat),
            "repeat_load_min": min(repeat),
            "spawned": len(spawns.argvs),
            "spawned_argvs": [str(a)[:200] for a in spawns.argvs[:5]],
        }

    if op == "calls":
        host = Host(p["home"])
        (outcome,) = host.load([p["name"]])
        assert outcome.ready, outcome.reason
        tool = outcome.tool(p["tool"])
        direct = [outcome.env.commands["python3"], "main.py", *p["args"]]
        return measure_calls(
            {
                "ally": lambda: tool.call(p["input"]).to_json(),
                "direct": _spawner(direct, outcome.plugin_dir, p["input"], dict(os.environ)),
            },
            p["n"],
        )

    raise SystemExit(f"unknown driver op {op!r}")


def run_driver(op: str, params: dict[str, Any], env: Mapping[str, str]) -> dict[str, Any]:
    proc = subprocess.run(
        [sys.executable, str(Path(__file__).resolve()), DRIVER_FLAG, op, json.dumps(params)],
        capture_output=True,
        text=True,
        env=dict(env),
        timeout=1200,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"driver {op} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


# ---------------------------------------------------------------------------------------------
# tool calls


def _spawner(
    argv: list[str], cwd: Path | str, payload: Any, env: Mapping[str, str]
) -> Callable[[], Any]:
    data = json.dumps(payload).encode()

    def call() -> Any:
        proc = subprocess.run(argv, cwd=cwd, input=data, capture_output=True, env=dict(env))
        return last_json(proc.stdout.decode())

    return call


def measure_calls(calls: Mapping[str, Callable[[], Any]], n: int) -> dict[str, Any]:
    """Interleave the calls ``n`` times (after one untimed warm-up each); medians in seconds."""
    times: dict[str, list[float]] = {k: [] for k in calls}
    first: dict[str, float] = {}
    results: dict[str, Any] = {}
    for name, fn in calls.items():
        t = time.perf_counter()
        results[name] = fn()
        first[name] = time.perf_counter() - t
    for _ in range(n):
        for name, fn in calls.items():
            t = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t)
    return {
        "median": {k: median(v) for k, v in times.items()},
        "min": {k: min(v) for k, v in times.items()},
        "first": first,
        "results": results,
    }


# ---------------------------------------------------------------------------------------------
# the baselines (bash scripts)

_TRACE = re.compile(r"^\++([0-9]+[.,][0-9]+) (.*)$")


def run_script(plugin_dir: Path, info: dict[str, Any], env: Mapping[str, str]) -> dict[str, Any]:
    """Run the plugin's run.sh traced; env-ready time = when its ``exec`` line starts."""
    # bash ignores PS4 from the environment when run as root; BASH_ENV sets it instead.
    rc = plugin_dir.parent.parent / "bash_env"
    rc.write_text("PS4='+${EPOCHREALTIME} '\n")
    env = {**env, "BASH_ENV": str(rc)}
    t0 = time.time()
    proc = subprocess.run(
        ["bash", "-x", str(plugin_dir / "run.sh"), *info["args"]],
        cwd=plugin_dir,
        input=json.dumps(info["input"]).encode(),
        capture_output=True,
        env=env,
        timeout=1200,
    )
    t1 = time.time()
    err = proc.stderr.decode("utf-8", "replace")
    ready = None
    for line in err.splitlines():
        m = _TRACE.match(line)
        if m and m.group(2).startswith("exec "):
            ready = float(m.group(1).replace(",", ".")) - t0
    result = last_json(proc.stdout.decode("utf-8", "replace"))
    if proc.returncode != 0 or ready is None:
        raise RuntimeError(f"{plugin_dir}/run.sh failed ({proc.returncode}):\n{err[-3000:]}")
    return {"ready": ready, "first_result": t1 - t0, "result": result}


# ---------------------------------------------------------------------------------------------
# one contender, one source


class Contender:
    def __init__(self, name: str, root: Path, env: Mapping[str, str], local: Optional[Path]):
        self.name = name
        self.root = root
        self.local = local
        self.plugins = root / ("home/plugins" if self.is_ally else "plugins")
        self.plugins.mkdir(parents=True)
        xdg = root / "xdg"
        self.env = {
            **env,
            "XDG_CACHE_HOME": str(xdg / "cache"),
            "XDG_DATA_HOME": str(xdg / "data"),
            "XDG_CONFIG_HOME": str(xdg / "config"),
            "BENCH_VIRTUALENV": str(Path(sys.executable).parent / "virtualenv"),
            "BENCH_UV": uv_bin(),
            "BENCH_UV_INDEX": "",
        }
        if self.is_ally:
            home = root / "home"
            self.env["ALLY_HOME"] = str(home)
            self.env["ALLY_INSTALLER"] = "pip" if name == "ally-pip" else "auto"
            if local is not None:
                (home / "config.toml").write_text(
                    f"[ally.index]\nno_index = true\nfind_links = [{json.dumps(str(local))}]\n"
                )
        elif local is not None:
            self.env["PIP_NO_INDEX"] = "1"
            self.env["PIP_FIND_LINKS"] = str(local)
            if " " in str(local):
                raise SystemExit(f"the wheelhouse path may not contain spaces: {local}")
            self.env["BENCH_UV_INDEX"] = f"--no-index --find-links {local}"

    @property
    def is_ally(self) -> bool:
        return self.name.startswith("ally")

    @property
    def home(self) -> Path:
        return self.root / "home"

    def add(self, name: str, kind: str) -> Path:
        return write_plugin(self.plugins, name, kind, self.name)

    def load(self, name: str, kind: str, *, call: bool) -> dict[str, Any]:
        """Make ``name`` ready (and, with ``call``, run its tool once)."""
        info = PLUGINS[kind]
        # Flush what earlier steps wrote (another contender's 100 MB env, say): its writeback
        # would otherwise compete with this contender's disk writes.
        os.sync()
        if not self.is_ally:
            r = run_script(self.plugins / name, info, self.env)
            r["env"] = str(self.plugins / name / "venv")
            r["spawned"] = None
            return r
        params: dict[str, Any] = {"home": str(self.home), "names": [name]}
        if call:
            params["call"] = {"tool": info["tool"], "input": info["input"]}
        r = run_driver("load", params, self.env)
        (o,) = r["outcomes"]
        if o["status"] != "ready":
            raise RuntimeError(f"{self.name}: {name} not ready: {o['reason']}")
        out = {"ready": r["seconds"], "env": o["env"], "action": o["action"]}
        out["spawned"] = r["spawned"]
        if call:
            out["first_result"] = r["seconds"] + r["first_call"]
            out["result"] = r["result"]
        return out

    def caches(self) -> list[Path]:
        return [self.root / "xdg", *([self.home / "cache"] if self.is_ally else [])]


def check_result(who: str, kind: str, result: Any) -> None:
    want = PLUGINS[kind]["expect"]
    got = result.get("result") if isinstance(result, dict) else None
    if got != want:
        raise RuntimeError(f"{who}: {kind} returned {result!r}, expected result {want!r}")


def run_source(
    label: str, work: Path, env: Mapping[str, str], local: Optional[Path], repeat: int
) -> dict:
    """Cold load, second plugin, small plugin, disk — for every contender, one source.

    ``repeat`` rounds; in each, every contender runs once from its own fresh dirs, and the
    order rotates by one place per round, so no contender always runs right after the same
    other one (this machine's disk and page cache make a run depend on what ran just before).
    Times are the median over the rounds (:func:`merge_runs`).
    """
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in CONTENDERS}
    for i in range(repeat):
        order = CONTENDERS[i % len(CONTENDERS) :] + CONTENDERS[: i % len(CONTENDERS)]
        for name in order:
            root = work / label / (name if repeat == 1 else f"{name}-{i + 1}")
            tag = label if repeat == 1 else f"{label} {i + 1}/{repeat}"
            runs[name].append(run_contender(tag, name, root, env, local))
    return {name: merge_runs(r) for name, r in runs.items()}


def merge_runs(runs: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """One contender's rounds as one result: times and sizes are medians (each time also
    kept as ``<key>_runs``), a flag holds only if it held in every round, a spawn count is
    the largest; names and paths are the last round's."""
    out = dict(runs[-1])
    for key, last in runs[-1].items():
        values = [r[key] for r in runs]
        if isinstance(last, bool):
            out[key] = all(values)
        elif key.endswith("spawned"):
            out[key] = None if None in values else max(values)
        elif isinstance(last, float):
            out[key] = median(values)
            out[f"{key}_runs"] = values
        elif isinstance(last, int):
            out[key] = int(median(values))
    return out


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
        run = run_driver(
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


# ---------------------------------------------------------------------------------------------
# warm load, tool calls, imports


def settle() -> None:
    """Wait until the plugin files just written have settled.

    The warm loads are measured as a host restarting after its plugins were installed:
    ally does not persist what it derives from files changed in the last seconds (their
    identity could repeat within one timestamp tick), see ``ally_core.loader.SETTLE_NS``.
    """
    from ally_core.loader import SETTLE_NS

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
    run_driver("load", {"home": str(c.home), "names": None}, c.env)
    return warm_best_of(c.home, c.env)


def warm_best_of(home: Path, env: Mapping[str, str], runs: int = 3) -> dict[str, Any]:
    """The warm driver in ``runs`` fresh processes: the best first load (least disturbed).

    Plus ``runs`` processes that do not collect the imports' garbage first (``first_load_raw``:
    the median of those first loads, which include that GC pass).
    """
    results = [run_driver("warm", {"home": str(home)}, env) for _ in range(runs)]
    raw = [run_driver("warm", {"home": str(home), "collect": False}, env) for _ in range(runs)]
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
            m = run_driver(
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
                "direct": _spawner([py, "main.py", *info["args"]], plugin, info["input"], env)
            }
            if name in ("runsh", "uv-sh"):
                log(f"[calls] {TITLES[name]}: ./run.sh vs direct spawn, n={n}")
                calls["run.sh"] = _spawner(["./run.sh", *info["args"]], plugin, info["input"], env)
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


# ---------------------------------------------------------------------------------------------
# the table


def fmt_time(s: Optional[float]) -> str:
    if s is None:
        return "—"
    if s >= 1:
        return f"{s:.2f} s"
    if s >= 1e-3:
        return f"{s * 1e3:.1f} ms"
    return f"{s * 1e6:.1f} µs"


def fmt_bytes(b: Optional[float]) -> str:
    if b is None:
        return "—"
    if abs(b) >= 1e6:
        return f"{b / 1e6:.1f} MB"
    return f"{b / 1e3:.0f} kB"


def cell(value: Optional[float], base: Optional[float], fmt: Callable[[Any], str]) -> str:
    if value is None:
        return "—"
    if base is None or base <= 0:
        return fmt(value)
    return f"{fmt(value)} ({value / base:.3g}x)"


def render(data: dict[str, Any]) -> tuple[str, list[tuple[str, bool, str]]]:
    sources = data["sources"]
    lines = [
        "| metric | source | " + " | ".join(TITLES[c] for c in CONTENDERS) + " |",
        "|---|---|" + "---:|" * len(CONTENDERS),
    ]

    def row(
        metric: str,
        source: str,
        values: Mapping[str, Optional[float]],
        fmt: Any,
        base: Optional[float] = None,
    ) -> None:
        base = values.get("runsh") if base is None else base
        cells = [cell(values.get(c), base, fmt) for c in CONTENDERS]
        lines.append(f"| {metric} | {source} | " + " | ".join(cells) + " |")

    rounds = data.get("repeat", 1)
    med = f", median of {rounds}" if rounds > 1 else ""
    for label, src in sources.items():
        pick = lambda key, src=src: {c: src[c].get(key) for c in CONTENDERS}  # noqa: E731
        row(f"cold first load, sympy: env ready{med}", label, pick("cold_ready"), fmt_time)
        row(
            f"cold first tool result, sympy (load + 1st call){med}",
            label,
            pick("cold_first_result"),
            fmt_time,
        )
        row(
            f"cold first load, small plugin (six): env ready{med}",
            label,
            pick("small_ready"),
            fmt_time,
        )
        row(
            f"2nd plugin, same deps: time to ready (new host process){med}",
            label,
            pick("second_ready"),
            fmt_time,
        )
        row(
            f"2nd plugin, same deps: time to ready (running host){med}",
            label,
            {c: src[c].get("running_ready") for c in ("ally-pip", "ally-uv")},
            fmt_time,
            base=src["runsh"]["second_ready"],
        )
        row("2nd plugin, same deps: extra disk", label, pick("second_disk"), fmt_bytes)
    local = sources.get("local wheelhouse") or next(iter(sources.values()))
    row(
        "disk per env (sympy env dir, inodes once)",
        "local",
        {c: local[c]["env_disk"] for c in CONTENDERS},
        fmt_bytes,
    )
    row(
        "disk, 1 plugin: env + caches (inodes once)",
        "local",
        {c: local[c]["total_disk"] for c in CONTENDERS},
        fmt_bytes,
    )
    warm = data["warm"]
    row(
        f"warm load of {warm['n']} ready plugins, per plugin (new host process, best of 3)",
        "—",
        {c: warm["per_plugin"].get(c) for c in CONTENDERS},
        fmt_time,
    )
    row(
        f"warm load of {warm['n']} ready plugins, per plugin (new host process without "
        "gc.collect() first, median of 3)",
        "—",
        {c: warm.get("raw_per_plugin", {}).get(c) for c in CONTENDERS},
        fmt_time,
    )
    row(
        f"warm load of {warm['n']} ready plugins, per plugin (repeat load, median of 20)",
        "—",
        {c: warm["repeat_per_plugin"].get(c) for c in CONTENDERS},
        fmt_time,
    )
    calls = data["calls"]
    row(
        f"tool call, small plugin (median of {data['n_calls']})",
        "—",
        {c: calls[c]["call"] for c in CONTENDERS},
        fmt_time,
    )
    row(
        "tool-call overhead over spawning the env's python",
        "—",
        {c: calls[c]["overhead"] for c in CONTENDERS},
        fmt_time,
    )

    # goals
    goals: list[tuple[str, bool, str]] = []
    for label, src in sources.items():
        ratio = src["ally-uv"]["cold_ready"] / src["runsh"]["cold_ready"]
        detail = f"{ratio:.1%}"
        if rounds > 1:
            each = [
                a / b
                for a, b in zip(src["ally-uv"]["cold_ready_runs"], src["runsh"]["cold_ready_runs"])
            ]
            shown = ", ".join(f"{x:.1%}" for x in each)
            detail += f" (median of {rounds}; round by round: {shown})"
        goals.append(
            (f"cold first load, uv backend ≤ 5% of run.sh ({label})", ratio <= 0.05, detail)
        )
        ratio = src["ally-uv"]["cold_ready"] / src["uv-sh"]["cold_ready"]
        goals.append(
            (
                f"(informative) cold first load, ally (uv) ≤ 1x run.sh with uv ({label})",
                ratio <= 1.0,
                f"{ratio:.2f}x ({fmt_time(src['ally-uv']['cold_ready'])} vs "
                f"{fmt_time(src['uv-sh']['cold_ready'])})",
            )
        )
        ratio_fr = src["ally-uv"]["cold_first_result"] / src["runsh"]["cold_first_result"]
        goals.append(
            (
                f"(informative) cold first *tool result*, uv ≤ 5% of run.sh ({label})",
                ratio_fr <= 0.05,
                f"{ratio_fr:.1%}",
            )
        )
        for c in ("ally-pip", "ally-uv"):
            s = src[c]
            goals.append(
                (
                    f"2nd plugin same deps ≤ 20 ms, {TITLES[c]}, new host process ({label})",
                    s["second_ready"] <= 0.020,
                    f"{fmt_time(s['second_ready'])}, {s['second_action']}, "
                    f"{s['second_spawned']} process(es) spawned",
                )
            )
            goals.append(
                (
                    f"2nd plugin same deps ≤ 20 ms, {TITLES[c]}, running host ({label})",
                    s["running_ready"] <= 0.020,
                    f"{fmt_time(s['running_ready'])}, {s['running_action']}, "
                    f"{s['running_spawned']} process(es) spawned",
                )
            )
            goals.append(
                (
                    f"2nd plugin same deps < 1 MB extra disk, {TITLES[c]} ({label})",
                    s["second_disk"] < 1e6,
                    fmt_bytes(s["second_disk"]),
                )
            )
        ratio = src["ally-pip"]["cold_ready"] / src["virtualenv"]["cold_ready"]
        goals.append(
            (
                f"pip fallback ≤ 0.9x virtualenv + pip, cold sympy ({label})",
                ratio <= 0.9,
                f"{ratio:.2f}x",
            )
        )
        ratio = src["ally-pip"]["small_ready"] / src["virtualenv"]["small_ready"]
        goals.append(
            (
                f"pip fallback ≤ 0.9x virtualenv + pip, cold small plugin ({label})",
                ratio <= 0.9,
                f"{ratio:.2f}x",
            )
        )
    for c in ("ally-pip", "ally-uv"):
        v = warm["per_plugin"][c]
        goals.append(
            (
                f"warm load ≤ 100 µs per plugin, {TITLES[c]} (new host process)",
                v <= 100e-6 and warm["spawned"][c] == 0,
                f"best of 3 {fmt_time(v)}, median "
                f"{fmt_time(warm['first_median_per_plugin'][c])}; "
                f"{warm['spawned'][c]} process(es) spawned",
            )
        )
        v = warm.get("raw_per_plugin", {}).get(c)
        if v is not None:
            goals.append(
                (
                    f"(informative) warm load ≤ 100 µs per plugin, {TITLES[c]} (new host "
                    "process, without gc.collect() first)",
                    v <= 100e-6,
                    f"median of 3 {fmt_time(v)}",
                )
            )
        v = warm["repeat_per_plugin"][c]
        goals.append(
            (
                f"warm load ≤ 100 µs per plugin, {TITLES[c]} (repeat load)",
                v <= 100e-6,
                f"median {fmt_time(v)}, best {fmt_time(warm['repeat_min_per_plugin'][c])}",
            )
        )
        v = calls[c]["overhead"]
        goals.append((f"tool-call overhead ≤ 5 ms, {TITLES[c]}", v <= 0.005, fmt_time(v)))
    imp = data["imports"]
    for args in ("--help", "list", "list --json"):
        heavy = imp[args]["heavy"]
        goals.append(
            (
                f"`ally {args}` imports none of virtualenv, uv, rich",
                not heavy,
                ", ".join(heavy) or f"none (wall {fmt_time(imp[args]['wall'])})",
            )
        )
    return "\n".join(lines), goals


def write_results(data: dict[str, Any], table: str, goals: list[tuple[str, bool, str]]) -> str:
    meta = data["meta"]
    warm = data["warm"]
    out = [
        "# ally benchmark results",
        "",
        f"Generated by `benchmarks/bench.py` on {meta['date']} — {meta['machine']}.",
        f"Python {meta['python']}, uv {meta['uv']}, virtualenv {meta['virtualenv']}, "
        f"pip {meta['pip']} (seeded by `python3 -m venv`), wheelhouse: "
        f"{', '.join(meta['wheels'])}. Full run: {meta['elapsed']:.0f} s; 1-min load average "
        f"{meta['load'][0]:.1f} at the start, {meta['load'][1]:.1f} at the end (other work on "
        "the machine makes single cold runs noisy: compare ratios, not absolute seconds).",
        "",
        "Every contender starts with its **own fresh, empty cache dirs** (XDG cache/data/config, "
        "pip cache, virtualenv app-data, ally home). The machine's pip/uv configuration is off "
        "(`hermetic_environ()`). *local wheelhouse*: `--no-index --find-links` to "
        "`benchmarks/.cache/wheelhouse`; *PyPI (network)*: the default index, "
        "https://pypi.org/simple. Ratios are to the run.sh baseline (lower is better). "
        + (
            f"Cold and 2nd-plugin numbers are the median of {data['repeat']} rounds; in each "
            "round every contender runs once from fresh dirs, in an order rotated by one place "
            "per round."
            if data.get("repeat", 1) > 1
            else "Cold numbers are single runs."
        ),
        "",
        table,
        "",
        "## Goals",
        "",
        *[f"- {'✅' if ok else '❌'} {what}: {detail}" for what, ok, detail in goals],
        "",
        "## Notes",
        "",
        "- *env ready*: run.sh / virtualenv + pip / run.sh with uv — time until the script's "
        "`exec` line (from a `bash -x` trace); ally — `Host.load([name])` in a fresh process.",
        "- *run.sh with uv*: the seed's script with `uv venv` + `uv pip install` (the uv ally "
        "uses) in place of `python3 -m venv` + `pip install`: the fastest hand-written "
        "wrapper, and the measure of what ally adds to a uv install (locks, the env check, "
        "the marker, sharing).",
        "- *2nd plugin*: a copy of sympy-calc under another name. *new host process*: "
        "`Host(...).load([name])` in a fresh process (pays one-time imports, e.g. filelock); "
        "*running host*: the same in a process whose Host has already loaded its plugins "
        "(ratio to run.sh's 2nd-plugin time).",
        "- *first tool result*: run.sh — the whole first invocation; ally — the load plus the "
        "first `BoundTool.call()`. uv installs without compiling bytecode, so ally (uv) pays "
        "for compiling the sympy modules it imports on the first call instead.",
        f"- *warm load*: `Host.load()` of {warm['n']} ready plugins, divided by {warm['n']}. "
        f"ally (uv): {warm['n']} plugins with {warm['n']} distinct envs (built in "
        f"{warm['uv_build_seconds']:.1f} s by `ally install`); ally (pip): {warm['n']} plugins "
        "sharing the sympy env. *new host process*: the first `Host(...)` + `load()` of a fresh "
        "process, best of 3 processes (the least disturbed by other load on the machine) "
        f"(Host() itself: {fmt_time(warm['host_init']['ally-uv'])} uv, "
        f"{fmt_time(warm['host_init']['ally-pip'])} pip, not included). Before the timed "
        "`load()` the driver runs `gc.collect()`: the objects the imports created are due for "
        "a generation-1 GC pass over all of them, which the next allocations pay for wherever "
        "they are (in a host, likely before it loads plugins), and which does not grow with "
        f"the number of plugins (it took {fmt_time(warm.get('import_gc', {}).get('ally-uv'))}). "
        "The row *without gc.collect() first* shows the first load that pays for it. "
        "*repeat*: median of 20 "
        "further `load()` on the same Host. Processes spawned during all warm loads: "
        f"{warm['spawned']}"
        + "".join(
            f" ({c}: {warm.get('spawned_argvs', {}).get(c)}; not warm: "
            f"{warm.get('rebuilt', {}).get(c)})"
            for c in ("ally-pip", "ally-uv")
            if warm["spawned"].get(c)
        )
        + ". run.sh / virtualenv have no load step: their column is the check "
        "run.sh does before each call (`[ -d venv ]`), done in-process (`os.path.isdir`).",
        f"- *tool call*: the small plugin, median of {data['n_calls']} interleaved calls; "
        "overhead = median(call) - median(spawning the env's python with the same script, "
        "stdin and cwd). virtualenv + pip: the host spawns the venv's python itself "
        "(overhead 0 by construction). First calls (incl. one-time imports such as "
        "jsonschema): "
        + ", ".join(f"{TITLES[c]} {fmt_time(data['calls'][c]['first_call'])}" for c in CONTENDERS)
        + ". Overhead from the fastest call of each kind instead of the medians: "
        + ", ".join(f"{TITLES[c]} {fmt_time(data['calls'][c]['overhead_min'])}" for c in CONTENDERS)
        + ".",
        f"- `import ally_core`: {fmt_time(data['imports']['import_ally_core'])} cumulative "
        "(`python -X importtime`, median of 5); the non-stdlib modules it loads: "
        f"{data['imports']['import_ally_core_modules']}.",
        "- Disk: `st_blocks` of every file, dir and symlink, each inode once (uv hardlinks "
        "from its cache into envs). *2nd plugin extra disk* includes the second plugin's own "
        "source files (~16 kB) for every contender; for the scripts it also includes the "
        "bytecode of the modules their first call imports (a script cannot make its env ready "
        "without running the tool; uv does not compile at install time, so that is ~20 MB of "
        "sympy `.pyc` files in the new env, while ally's second plugin shares the first env's).",
        "",
    ]
    text = "\n".join(out)
    # The warm-worker section (benchmarks/workers.py) is another script's: kept as it is.
    old = RESULTS.read_text() if RESULTS.is_file() else ""
    kept = old[old.find("<!-- workers.py: start -->") :] if "<!-- workers.py: start" in old else ""
    RESULTS.write_text(text + ("\n" + kept if kept else ""))
    return text


# ---------------------------------------------------------------------------------------------


def tool_versions(env: Mapping[str, str]) -> dict[str, str]:
    from importlib.metadata import version

    def out(argv: list[str]) -> str:
        try:
            return subprocess.run(argv, capture_output=True, text=True, env=dict(env)).stdout
        except OSError:
            return "?"

    pip = out([base_python(), "-m", "pip", "--version"]).split()
    return {
        "python": platform.python_version(),
        "uv": version("uv"),
        "virtualenv": version("virtualenv"),
        "pip": pip[1] if len(pip) > 1 else "?",
        "machine": f"{platform.system()} {platform.machine()}, {os.cpu_count()} CPUs",
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "wheels": sorted(p.name for p in WHEELHOUSE.glob("*.whl")),
    }


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--no-index-run",
        action="store_true",
        help="skip the PyPI (network) part; local wheelhouse only",
    )
    parser.add_argument(
        "--repeat",
        type=int,
        default=3,
        help="rounds of the cold and 2nd-plugin measurements (the table shows medians)",
    )
    parser.add_argument("--calls", type=int, default=30, help="tool calls per contender (N)")
    parser.add_argument("--warm-plugins", type=int, default=100, help="plugins for the warm load")
    parser.add_argument("--work", type=Path, help="work dir (default: a temp dir under .cache)")
    parser.add_argument("--keep", action="store_true", help="keep the work dir")
    parser.add_argument("--no-write", action="store_true", help="do not write results.md")
    args = parser.parse_args(argv)
    if args.repeat < 1:
        parser.error("--repeat must be at least 1")
    if args.warm_plugins < 4:
        # ally (pip)'s home already holds its four plugins; the warm load adds to those.
        parser.error("--warm-plugins must be at least 4")

    try:
        import ally_core  # noqa: F401
    except ImportError:
        parser.error("run me with an interpreter that has ally-core installed (.venv/bin/python)")
    start = time.perf_counter()
    load_before = os.getloadavg()
    env = bench_environ()
    local = ensure_wheelhouse(env)
    CACHE.mkdir(parents=True, exist_ok=True)
    work = args.work or Path(tempfile.mkdtemp(prefix="run-", dir=CACHE))
    work = work.resolve()
    if args.work is not None and work.exists() and any(work.iterdir()):
        parser.error(f"--work {work}: not empty")
    work.mkdir(parents=True, exist_ok=True)
    log(f"work dir: {work}")
    prime_page_cache()
    data: dict[str, Any] = {"sources": {}, "n_calls": args.calls, "repeat": args.repeat}
    try:
        data["sources"]["local wheelhouse"] = run_source("local", work, env, local, args.repeat)
        if not args.no_index_run:
            data["sources"]["PyPI (network)"] = run_source("pypi", work, env, None, args.repeat)
            shutil.rmtree(work / "pypi", ignore_errors=True)
        local_src = data["sources"]["local wheelhouse"]
        data["calls"] = run_calls(local_src, env, args.calls)

        n = args.warm_plugins
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
        data["warm"] = {
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
        log("[imports] ally --help / ally list / import ally_core")
        data["imports"] = run_imports(w["uv_env"])
        data["meta"] = {
            **tool_versions(env),
            "elapsed": time.perf_counter() - start,
            "load": (load_before[0], os.getloadavg()[0]),
        }
    finally:
        if not args.keep and args.work is None:
            shutil.rmtree(work, ignore_errors=True)
    (CACHE / "last-run.json").write_text(json.dumps(data, indent=2, default=str))
    table, goals = render(data)
    if args.no_write:
        print(table)
        print()
        print("\n".join(f"- {'✅' if ok else '❌'} {what}: {detail}" for what, ok, detail in goals))
    else:
        print(write_results(data, table, goals))
    return 0


if __name__ == "__main__":
    if len(sys.argv) >= 4 and sys.argv[1] == DRIVER_FLAG:
        result = driver(sys.argv[2], json.loads(sys.argv[3]))
        print(json.dumps(result, default=str))
        sys.exit(0)
    sys.exit(main())
