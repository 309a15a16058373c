"""What keeping envs apart from uv's cache costs, in one run (sympy + mpmath + six):

1. **link modes**: ``uv pip install`` into a fresh venv from a warm cache with
   ``--link-mode hardlink`` (uv's default on Linux) and ``copy`` (ally's), rounds
   interleaved; the install's time and the disk the env adds beside the cache;
2. **after a build**: verifying every installed file against its ``RECORD`` (sizes only, and
   sizes and SHA-256), making the files read-only, recording the startup hooks;
3. **every load**: the Python runtime's cheap health check of a real ally env with and
   without its startup-hook record, and the hook comparison alone.

Prints a Markdown table with the ratios::

    .venv/bin/python benchmarks/cache_safety.py                   # bench wheelhouse (sympy)
    .venv/bin/python benchmarks/cache_safety.py --wheelhouse DIR  # any dir holding the wheels
    .venv/bin/python benchmarks/cache_safety.py --rounds 7 --loads 20000

Timings are medians; nothing here is asserted anywhere.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from bench import bench_environ, ensure_wheelhouse  # noqa: E402
from benchlib.common import base_python, fmt_bytes, rotated, uv_bin  # noqa: E402

REQS = ("sympy", "mpmath", "six")


def _bytes_beside(env: Path, cache: Path) -> int:
    """Bytes of the env's files whose inode is not one of the cache's."""
    cached = {(st.st_dev, st.st_ino) for st in _stats(cache)}
    return sum(st.st_size for st in _stats(env) if (st.st_dev, st.st_ino) not in cached)


def _stats(root: Path) -> list[os.stat_result]:
    out = []
    for dirpath, _dirs, files in os.walk(root):
        for name in files:
            st = os.lstat(os.path.join(dirpath, name))
            if not os.path.islink(os.path.join(dirpath, name)):
                out.append(st)
    return out


def _timed(fn: Callable[[], Any], n: int) -> float:
    """Median seconds of ``fn()`` over ``n`` runs."""
    times = []
    for _ in range(n):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def link_modes(work: Path, wheelhouse: Path, env: dict[str, str], rounds: int) -> dict[str, Any]:
    uv = uv_bin()
    cache = work / "uv-cache"
    environ = {**env, "UV_CACHE_DIR": str(cache), "UV_NO_PROGRESS": "1"}
    install = ["pip", "install", "--no-config", "--no-index", "--find-links", str(wheelhouse)]

    def run(mode: str, i: int) -> tuple[float, int]:
        venv = work / f"venv-{mode}-{i}"
        subprocess.run(
            [uv, "venv", "-q", "--python", base_python(), str(venv)], env=environ, check=True
        )
        t = time.perf_counter()
        subprocess.run(
            [
                uv,
                *install,
                "-q",
                "--python",
                str(venv / "bin" / "python"),
                "--link-mode",
                mode,
                *REQS,
            ],
            env=environ,
            check=True,
        )
        elapsed = time.perf_counter() - t
        size = _bytes_beside(venv, cache)
        shutil.rmtree(venv)
        return elapsed, size

    run("copy", -1)  # fills the cache: every round below installs from a warm cache
    times: dict[str, list[float]] = {"hardlink": [], "copy": []}
    sizes: dict[str, int] = {}
    for i in range(rounds):
        for mode in rotated(["hardlink", "copy"], i):
            elapsed, sizes[mode] = run(mode, i)
            times[mode].append(elapsed)
    return {mode: (statistics.median(t), sizes[mode]) for mode, t in times.items()}


def after_build(work: Path, wheelhouse: Path, env: dict[str, str], n: int) -> dict[str, float]:
    from ally_core.runtimes.python.integrity import (
        make_read_only,
        record_mismatches,
        startup_hooks,
    )

    uv = uv_bin()
    venv = work / "venv-checked"
    environ = {**env, "UV_CACHE_DIR": str(work / "uv-cache"), "UV_NO_PROGRESS": "1"}
    subprocess.run(
        [uv, "venv", "-q", "--python", base_python(), str(venv)], env=environ, check=True
    )
    subprocess.run(
        [
            uv,
            "pip",
            "install",
            "-q",
            "--no-config",
            "--no-index",
            "--find-links",
            str(wheelhouse),
            "--python",
            str(venv / "bin" / "python"),
            "--link-mode",
            "copy",
            *REQS,
        ],
        env=environ,
        check=True,
    )
    assert record_mismatches(venv) == []
    out = {
        "files": float(len(_stats(venv))),
        "bytes": float(sum(st.st_size for st in _stats(venv))),
        "verify sizes": _timed(lambda: record_mismatches(venv, hashes=False), n),
        "verify sizes + sha256": _timed(lambda: record_mismatches(venv), n),
        "record startup hooks": _timed(lambda: startup_hooks(venv), n),
    }
    t = time.perf_counter()
    make_read_only(venv)
    out["make read-only (first time)"] = time.perf_counter() - t
    return out


def every_load(work: Path, wheelhouse: Path, loads: int, rounds: int) -> dict[str, float]:
    """The cheap check a warm load runs, on a real ally env of sympy."""
    import attrs

    from ally_core import Host
    from ally_core.runtimes.python.integrity import startup_hook_problem

    home = work / "ally-home"
    plugin = home / "plugins" / "sym"
    plugin.mkdir(parents=True)
    (home / "config.toml").write_text(
        f"[ally.index]\nno_index = true\nfind_links = [{json.dumps(str(wheelhouse))}]\n"
    )
    (plugin / "requirements.txt").write_text("\n".join(REQS) + "\n")
    (plugin / "plugin.json").write_text(
        json.dumps(
            {
                "name": "sym",
                "runtime": "python3",
                "dependencies": {"file": "requirements.txt"},
                "tools": [{"name": "t", "command": "python3", "args": ["-c", "pass"]}],
            }
        )
    )
    host = Host(home)
    (outcome,) = host.load()
    assert outcome.ready, outcome.reason
    current = host.store.current("sym")
    assert current is not None
    env_dir, marker = current
    spec = attrs.evolve(host.spec_for(outcome.manifest, outcome.plugin_dir), env_dir=env_dir)
    record = marker.env.data["startup_hooks"]
    bare = attrs.evolve(
        marker,
        env=attrs.evolve(
            marker.env, data={k: v for k, v in marker.env.data.items() if k != "startup_hooks"}
        ),
    )

    def per_call(fn: Callable[[], Any]) -> float:
        for _ in range(200):
            fn()
        rounds = []
        for _ in range(7):
            t = time.perf_counter()
            for _ in range(loads):
                fn()
            rounds.append((time.perf_counter() - t) / loads)
        return statistics.median(rounds)

    assert host.cheap_problem(spec, marker) is None
    site = str(env_dir / record["site"])
    builds = _builds(host, rounds)
    entries = len(os.listdir(site))
    return {
        "site-packages entries": float(entries),
        "hook entries": float(len(record["files"])),
        "cheap check, with the hook record": per_call(lambda: host.cheap_problem(spec, marker)),
        "cheap check, without it": per_call(lambda: host.cheap_problem(spec, bare)),
        "hook comparison alone": per_call(lambda: startup_hook_problem(str(env_dir), record)),
        "hook comparison, site-packages changed (scandir)": per_call(
            lambda: startup_hook_problem(str(env_dir), record, full=True)
        ),
        **builds,
    }


def _builds(host: Any, rounds: int) -> dict[str, float]:
    """A whole ally build of the plugin (``reinstall``) with each link mode, interleaved."""
    from ally_core.runtimes.python import uv_backend

    saved = uv_backend.LINK_MODE
    times: dict[str, list[float]] = {"hardlink": [], "copy": []}
    try:
        for i in range(rounds):
            for mode in rotated(["hardlink", "copy"], i):
                uv_backend.LINK_MODE = ("--link-mode", mode)
                t = time.perf_counter()
                outcome = host.ensure("sym", force=True)
                times[mode].append(time.perf_counter() - t)
                assert outcome.ready and outcome.action == "built", outcome.reason
    finally:
        uv_backend.LINK_MODE = saved
    return {f"ally build, {mode}": statistics.median(t) for mode, t in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--wheelhouse", type=Path, help="a dir with sympy, mpmath, six wheels")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--loads", type=int, default=5000)
    args = parser.parse_args()
    env = bench_environ()
    wheelhouse = args.wheelhouse or ensure_wheelhouse(env)
    os.environ.update({k: v for k, v in env.items() if k.startswith(("PIP_", "UV_"))})
    with tempfile.TemporaryDirectory(prefix="ally-cache-safety-") as tmp:
        work = Path(tmp)
        modes = link_modes(work, wheelhouse, env, args.rounds)
        checks = after_build(work, wheelhouse, env, args.rounds)
        os.environ["ALLY_HOME"] = str(work / "ally-home")
        loads = every_load(work, wheelhouse, args.loads, args.rounds)

    hard, copy = modes["hardlink"], modes["copy"]
    print(f"\n### uv link modes: sympy + mpmath + six from a warm cache ({args.rounds} rounds)\n")
    print("| | hardlink (uv's default) | copy (ally's) | copy / hardlink |")
    print("|---|---|---|---|")
    ratio = copy[0] / hard[0]
    print(f"| install time | {hard[0] * 1000:.0f} ms | {copy[0] * 1000:.0f} ms | {ratio:.2f}x |")
    b_hard, b_copy = loads["ally build, hardlink"], loads["ally build, copy"]
    print(
        f"| whole ally build (`reinstall`) | {b_hard * 1000:.0f} ms | {b_copy * 1000:.0f} ms "
        f"| {b_copy / b_hard:.2f}x |"
    )
    print(f"| disk beside the cache | {fmt_bytes(hard[1])} | {fmt_bytes(copy[1])} | |")
    print(
        f"\n### After each uv build (env of {int(checks['files'])} files, "
        f"{fmt_bytes(checks['bytes'])})\n"
    )
    print("| step | time | / copy install |")
    print("|---|---|---|")
    for key in (
        "verify sizes",
        "verify sizes + sha256",
        "make read-only (first time)",
        "record startup hooks",
    ):
        print(f"| {key} | {checks[key] * 1000:.1f} ms | {checks[key] / copy[0]:.2f}x |")
    print(
        f"\n### Every load ({int(loads['site-packages entries'])} entries in site-packages, "
        f"{int(loads['hook entries'])} startup hooks)\n"
    )
    print("| | per load |")
    print("|---|---|")
    for key in (
        "cheap check, without it",
        "cheap check, with the hook record",
        "hook comparison alone",
        "hook comparison, site-packages changed (scandir)",
    ):
        print(f"| {key} | {loads[key] * 1e6:.1f} µs |")
    added = loads["cheap check, with the hook record"] - loads["cheap check, without it"]
    print(f"\nThe startup-hook check adds {added * 1e6:.1f} µs per plugin and load.")


if __name__ == "__main__":
    main()
