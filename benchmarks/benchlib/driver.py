"""The command line: the wheelhouse, the work dir, the rounds (in rotated order), the report."""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Optional

from benchlib import report, scenarios
from benchlib.common import (
    CACHE,
    WHEELHOUSE,
    base_python,
    bench_environ,
    ensure_wheelhouse,
    log,
    median,
    rotated,
    uv_bin,
)
from benchlib.contenders import CONTENDERS

DESCRIPTION = "ally against the seed's ``run.sh`` and against virtualenv + pip, side by side."


def prime_page_cache() -> None:
    """Read the installers' binaries once, so that no contender's cold load is the one that
    pages a 40 MB uv binary in from disk (the local round runs first and paid for that).
    "Cold" means empty package caches, as every contender gets; not a cold OS page cache."""
    for path in (uv_bin(), base_python()):
        with open(os.path.realpath(path), "rb") as fh:
            while fh.read(1 << 20):
                pass


def run_source(
    label: str, work: Path, env: Mapping[str, str], local: Optional[Path], repeat: int
) -> dict[str, Any]:
    """Cold load, second plugin, small plugin, disk — for every contender, one source.

    ``repeat`` rounds; in each, every contender runs once from its own fresh dirs, and the
    order rotates by one place per round, so no contender always runs right after the same
    other one (this machine's disk and page cache make a run depend on what ran just before).
    Times are the median over the rounds (:func:`merge_runs`).
    """
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in CONTENDERS}
    for i in range(repeat):
        for name in rotated(CONTENDERS, i):
            root = work / label / (name if repeat == 1 else f"{name}-{i + 1}")
            tag = label if repeat == 1 else f"{label} {i + 1}/{repeat}"
            runs[name].append(scenarios.run_contender(tag, name, root, env, local))
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
    parser = argparse.ArgumentParser(description=DESCRIPTION)
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
        data["calls"] = scenarios.run_calls(local_src, env, args.calls)

        data["warm"], uv_env = scenarios.warm_loads(work, env, local, local_src, args.warm_plugins)
        log("[imports] ally --help / ally list / import ally_core")
        data["imports"] = scenarios.run_imports(uv_env)
        data["meta"] = {
            **tool_versions(env),
            "elapsed": time.perf_counter() - start,
            "load": (load_before[0], os.getloadavg()[0]),
        }
    finally:
        if not args.keep and args.work is None:
            shutil.rmtree(work, ignore_errors=True)
    (CACHE / "last-run.json").write_text(json.dumps(data, indent=2, default=str))
    table, goals = report.render(data)
    if args.no_write:
        print(table)
        print()
        print("\n".join(f"- {'✅' if ok else '❌'} {what}: {detail}" for what, ok, detail in goals))
    else:
        print(report.write_results(data, table, goals))
    return 0
