"""The ally side of a measurement, in a fresh Python process with timings taken inside it.

``bench.py`` runs ``<python> bench.py --_in-process OP PARAMS`` (see
:func:`benchlib.contenders.run_in_process`): ``measure(OP, PARAMS)`` runs here and its result
comes back as one JSON line. A host application embedding ally pays the same: ``Host.load()``
and ``BoundTool.call()`` in its own process.
"""

from __future__ import annotations

import os
import subprocess
import time
from typing import Any, Callable

from benchlib.common import measure_calls, median, spawner

FLAG = "--_in-process"


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


def _load(p: dict[str, Any]) -> dict[str, Any]:
    """Cold (or any) load of ``names`` by a new Host; with ``call``, its first tool call."""
    from ally_core import Host

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


def _running(p: dict[str, Any]) -> dict[str, Any]:
    """A host that is already up (its plugins loaded) gets a new plugin dropped in."""
    from ally_core import Host

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


def _warm(p: dict[str, Any]) -> dict[str, Any]:
    """``Host()`` and its first ``load()`` of every ready plugin, then repeat loads."""
    from ally_core import Host

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


def _calls(p: dict[str, Any]) -> dict[str, Any]:
    """``BoundTool.call`` against spawning the env's python directly, interleaved."""
    from ally_core import Host

    host = Host(p["home"])
    (outcome,) = host.load([p["name"]])
    assert outcome.ready, outcome.reason
    tool = outcome.tool(p["tool"])
    direct = [outcome.env.commands["python3"], "main.py", *p["args"]]
    return measure_calls(
        {
            "ally": lambda: tool.call(p["input"]).to_json(),
            "direct": spawner(direct, outcome.plugin_dir, p["input"], dict(os.environ)),
        },
        p["n"],
    )


OPS: dict[str, Callable[[dict[str, Any]], dict[str, Any]]] = {
    "load": _load,
    "running": _running,
    "warm": _warm,
    "calls": _calls,
}


def measure(op: str, p: dict[str, Any]) -> dict[str, Any]:
    """Run measurement ``op`` with parameters ``p``; what it measured (JSON-able)."""
    if op not in OPS:
        raise SystemExit(f"unknown in-process op {op!r}")
    return OPS[op](p)
