"""Helpers any benchmark script here can use: paths, the hermetic environment, the shared
wheelhouse, timing in interleaved or rotated rounds, and the formatting of times, sizes and
ratios.

Standard library only at import time (``ally_core`` is imported where needed), so that a
process measuring ``ally_core`` imports nothing else of note.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Callable, Optional, TypeVar

HERE = Path(__file__).resolve().parent.parent
CACHE = HERE / ".cache"
WHEELHOUSE = CACHE / "wheelhouse"
RESULTS = HERE / "results.md"

#: What the wheelhouse holds (``pip download`` once, then reused).
WHEELHOUSE_REQS = ("sympy", "mpmath", "six")

T = TypeVar("T")

#: A trivial Python tool (reads its JSON input, replies with it): what the startup and
#: per-call overhead benchmarks run, so that the tool itself costs next to nothing.
ECHO_TOOL = """\
import json, sys
data = json.load(sys.stdin)
print(json.dumps({"success": True, "result": {"echo": data}}))
"""


def log(msg: str, prefix: str = "bench") -> None:
    print(f"[{prefix} {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def base_python() -> str:
    """The real interpreter behind this venv (never a pyenv shim)."""
    exe = getattr(sys, "_base_executable", None) or sys.executable
    return os.path.realpath(exe)


def uv_bin() -> str:
    from uv import find_uv_bin

    return str(find_uv_bin())


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


def rotated(items: Sequence[T], i: int) -> list[T]:
    """``items`` rotated by ``i`` places: round ``i``'s order, so that no item always runs
    right after the same other one (a run depends on what ran just before it)."""
    k = i % len(items) if items else 0
    return [*items[k:], *items[:k]]


def section_span(text: str, start: str) -> Optional[tuple[int, int]]:
    """Where, in Markdown ``text``, the section that begins with the line ``start`` is.

    A ``<!-- NAME: start -->`` marker's section runs to its ``<!-- NAME: end -->`` line
    (included); a heading's, to the next ``## `` heading or ``<!--`` marker. None if ``text``
    has no such line.
    """
    offset, begin = 0, None
    end_marker = start.replace(": start -->", ": end -->") if start.startswith("<!--") else None
    for line in text.splitlines(keepends=True):
        bare = line.rstrip("\n")
        if begin is None:
            if bare == start:
                begin = offset
        elif end_marker is not None:
            if bare == end_marker:
                return begin, offset + len(line)
        elif bare.startswith(("## ", "<!--")):
            return begin, offset
        offset += len(line)
    return None if begin is None else (begin, len(text))


def write_section(start: str, section: str) -> None:
    """Replace the section of ``results.md`` that begins with ``start`` (append it the first
    time): what each benchmark's ``--write`` does."""
    text = RESULTS.read_text("utf-8") if RESULTS.exists() else "# ally benchmark results\n"
    RESULTS.write_text(replace_section(text, start, section), "utf-8")


def replace_section(text: str, start: str, section: str) -> str:
    """``text`` with its section beginning with ``start`` (see :func:`section_span`) replaced
    by ``section``, or with ``section`` appended if it has none."""
    span = section_span(text, start)
    if span is None:
        return text.rstrip("\n") + "\n\n" + section.rstrip("\n") + "\n"
    rest = text[span[1] :].lstrip("\n")
    # One blank line before whatever follows, as between any two sections.
    return text[: span[0]] + section.rstrip("\n") + "\n" + ("\n" + rest if rest else "")


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


def spawner(
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


def fmt_time(s: Optional[float]) -> str:
    if s is None:
        return "—"
    if s >= 1:
        return f"{s:.2f} s"
    if s >= 1e-3:
        return f"{s * 1e3:.1f} ms"
    return f"{s * 1e6:.1f} µs"


def fmt_duration(seconds: float, ms_digits: int = 1) -> str:
    """A duration (or a difference of two: negative is fine) in s, ms or µs."""
    if abs(seconds) >= 1:
        return f"{seconds:.2f} s"
    if abs(seconds) >= 1e-3:
        return f"{seconds * 1e3:.{ms_digits}f} ms"
    return f"{seconds * 1e6:.0f} µs"


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
