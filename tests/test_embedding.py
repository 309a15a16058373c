"""The embedding API a host application uses: Host, outcomes, tools, progress events."""

from __future__ import annotations

import threading
from pathlib import Path

from ally_core import Host, ProgressEvent, ToolResult
from ally_core.testing import write_plugin

GREETER = {
    "runtime": "python3",
    "dependencies": {"file": "requirements.txt"},
    "tools": [{"name": "hello", "command": "python3", "args": ["main.py"]}],
}


def greeter_files(pin: str) -> dict[str, str]:
    return {
        "requirements.txt": f"allydemo-greet=={pin}\n",
        "main.py": "import json, sys, allydemo_greet\n"
        "print(json.dumps({'success': True, 'result': allydemo_greet.__version__}))\n",
    }


def _home(root: Path, wheelhouse: Path, pin: str) -> Path:
    home = root
    write_plugin(home / "plugins", "greeter", GREETER, greeter_files(pin))
    (home / "config.toml").write_text(
        f'[ally.index]\nno_index = true\nfind_links = ["{wheelhouse}"]\n'
    )
    return home


def test_two_hosts_with_different_homes_load_concurrently_in_one_process(
    tmp_path: Path, wheelhouse: Path, ally_home: Path
):
    homes = [
        _home(tmp_path / "one", wheelhouse, "1.0.0"),
        _home(tmp_path / "two", wheelhouse, "2.0.0"),
    ]
    hosts = [Host(h) for h in homes]
    results: dict[int, ToolResult] = {}
    errors: list[BaseException] = []

    def work(i: int) -> None:
        try:
            (outcome,) = hosts[i].load()
            assert outcome.ready, outcome.reason
            results[i] = outcome.tool("hello").call({})
        except BaseException as exc:  # reported below, with the thread result
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors, errors
    assert results[0].result == "1.0.0" and results[1].result == "2.0.0"
    for home in homes:
        assert (home / "plugin-envs" / "greeter" / ".installed").is_file()


def test_progress_events_are_structured_and_cover_every_phase(host: Host, make_plugin):
    make_plugin("greeter", GREETER, greeter_files("1.0.0"))
    events: list[ProgressEvent] = []
    lock = threading.Lock()

    def collect(event: ProgressEvent) -> None:
        with lock:
            events.append(event)

    (outcome,) = host.load(progress=collect)
    assert outcome.ready, outcome.reason
    phases = [e.phase for e in events if e.phase != "output"]
    assert phases[0] == "start" and phases[-1] == "done"
    assert {"create", "install", "check"} <= set(phases)
    assert all(e.plugin == "greeter" for e in events)
    assert events[-1].fraction == 1.0
    # A warm load has nothing to report.
    events.clear()
    host.load(progress=collect)
    assert events == []


def test_one_host_loading_from_many_threads_builds_once(host: Host, make_plugin):
    make_plugin("greeter", GREETER, greeter_files("2.0.0"))
    outcomes = []

    def work() -> None:
        outcomes.extend(host.load())

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert len(outcomes) == 4 and all(o.ready for o in outcomes)
    assert len({o.env.path for o in outcomes}) == 1
    built = [o for o in outcomes if o.action == "built"]
    assert len(built) == 1
    store = host.paths.envs_dir / ".store"
    assert len([p for p in store.iterdir() if (p / ".installed").exists()]) == 1


def test_blocked_plugin_does_not_stop_the_others(host: Host, make_plugin):
    make_plugin("good", {"tools": [{"name": "t", "command": "python3", "args": ["-c", "1"]}]})
    make_plugin("bad", {"runtime": "python3", "dependencies": {"file": "missing.txt"}})
    by_name = {o.name: o for o in host.load()}
    assert by_name["good"].ready
    assert by_name["bad"].status == "blocked"
    assert "$.dependencies.file" in by_name["bad"].reason
    assert "\n" not in by_name["bad"].reason
