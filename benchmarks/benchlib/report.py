"""The Markdown table (values and their ratios to run.sh), the goals, ``results.md``."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Optional

from benchlib.common import RESULTS, cell, fmt_bytes, fmt_time, section_span
from benchlib.contenders import CONTENDERS, TITLES

Goal = tuple[str, bool, str]

#: The sections of ``results.md`` that other scripts write (``mcp_overhead.py --write``,
#: ``workers.py``): kept as they are when this one rewrites the file.
KEPT_SECTIONS = (
    "## MCP per-call overhead",
    "<!-- workers.py: start -->",
    "## MCP server start",
    "## CLI startup",
)


def render(data: dict[str, Any]) -> tuple[str, list[Goal]]:
    """The Markdown table and the goals (what, met, detail) of one run's ``data``."""
    return table(data), goals(data)


def table(data: dict[str, Any]) -> str:
    """Every metric a row, every contender a column: its value and its ratio to run.sh."""
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

    return "\n".join(lines)


def goals(data: dict[str, Any]) -> list[Goal]:
    """The goals of the README, each checked against ``data``."""
    sources = data["sources"]
    rounds = data.get("repeat", 1)
    warm = data["warm"]
    calls = data["calls"]
    out: list[Goal] = []
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
        out.append((f"cold first load, uv backend ≤ 5% of run.sh ({label})", ratio <= 0.05, detail))
        ratio = src["ally-uv"]["cold_ready"] / src["uv-sh"]["cold_ready"]
        out.append(
            (
                f"(informative) cold first load, ally (uv) ≤ 1x run.sh with uv ({label})",
                ratio <= 1.0,
                f"{ratio:.2f}x ({fmt_time(src['ally-uv']['cold_ready'])} vs "
                f"{fmt_time(src['uv-sh']['cold_ready'])})",
            )
        )
        ratio_fr = src["ally-uv"]["cold_first_result"] / src["runsh"]["cold_first_result"]
        out.append(
            (
                f"(informative) cold first *tool result*, uv ≤ 5% of run.sh ({label})",
                ratio_fr <= 0.05,
                f"{ratio_fr:.1%}",
            )
        )
        for c in ("ally-pip", "ally-uv"):
            s = src[c]
            out.append(
                (
                    f"2nd plugin same deps ≤ 20 ms, {TITLES[c]}, new host process ({label})",
                    s["second_ready"] <= 0.020,
                    f"{fmt_time(s['second_ready'])}, {s['second_action']}, "
                    f"{s['second_spawned']} process(es) spawned",
                )
            )
            out.append(
                (
                    f"2nd plugin same deps ≤ 20 ms, {TITLES[c]}, running host ({label})",
                    s["running_ready"] <= 0.020,
                    f"{fmt_time(s['running_ready'])}, {s['running_action']}, "
                    f"{s['running_spawned']} process(es) spawned",
                )
            )
            out.append(
                (
                    f"2nd plugin same deps < 1 MB extra disk, {TITLES[c]} ({label})",
                    s["second_disk"] < 1e6,
                    fmt_bytes(s["second_disk"]),
                )
            )
        ratio = src["ally-pip"]["cold_ready"] / src["virtualenv"]["cold_ready"]
        out.append(
            (
                f"pip fallback ≤ 0.9x virtualenv + pip, cold sympy ({label})",
                ratio <= 0.9,
                f"{ratio:.2f}x",
            )
        )
        ratio = src["ally-pip"]["small_ready"] / src["virtualenv"]["small_ready"]
        out.append(
            (
                f"pip fallback ≤ 0.9x virtualenv + pip, cold small plugin ({label})",
                ratio <= 0.9,
                f"{ratio:.2f}x",
            )
        )
    for c in ("ally-pip", "ally-uv"):
        v = warm["per_plugin"][c]
        out.append(
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
            out.append(
                (
                    f"(informative) warm load ≤ 100 µs per plugin, {TITLES[c]} (new host "
                    "process, without gc.collect() first)",
                    v <= 100e-6,
                    f"median of 3 {fmt_time(v)}",
                )
            )
        v = warm["repeat_per_plugin"][c]
        out.append(
            (
                f"warm load ≤ 100 µs per plugin, {TITLES[c]} (repeat load)",
                v <= 100e-6,
                f"median {fmt_time(v)}, best {fmt_time(warm['repeat_min_per_plugin'][c])}",
            )
        )
        v = calls[c]["overhead"]
        out.append((f"tool-call overhead ≤ 5 ms, {TITLES[c]}", v <= 0.005, fmt_time(v)))
    imp = data["imports"]
    for args in ("--help", "list", "list --json"):
        heavy = imp[args]["heavy"]
        out.append(
            (
                f"`ally {args}` imports none of virtualenv, uv, rich",
                not heavy,
                ", ".join(heavy) or f"none (wall {fmt_time(imp[args]['wall'])})",
            )
        )
    return out


def write_results(data: dict[str, Any], table: str, goals: list[Goal]) -> str:
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
    old = RESULTS.read_text("utf-8") if RESULTS.is_file() else ""
    spans = [span for start in KEPT_SECTIONS if (span := section_span(old, start))]
    kept = "".join("\n" + old[a:b].strip("\n") + "\n" for a, b in sorted(spans))
    RESULTS.write_text(text + kept, "utf-8")
    return text
