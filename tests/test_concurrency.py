"""Several processes at once: one build per env, parallel builds of different envs, readers
that never see a half env, gc that leaves a running build alone.

Overlap is forced, not hoped for: install commands wait for a "go" file the test creates only
once every other process is known to be waiting (from their progress lines), or for each other.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path

import pytest

from ally_core import Host

MAIN = (
    "import json, sys, allydemo_greet\n"
    "args = json.load(sys.stdin)\n"
    "print(json.dumps({'success': True, 'result': allydemo_greet.greet(args.get('who', 'x'))}))\n"
)
TOOLS = [{"name": "hello", "command": "python3", "args": ["main.py"]}]
# Counts its runs in builds.log, waits for every path in argv[2:] to exist, then installs.
GATED_INSTALL = (
    "import os, subprocess, sys, time\n"
    "with open('builds.log', 'a') as fh:\n"
    "    fh.write('build\\n')\n"
    "deadline = time.monotonic() + 120\n"
    "while not all(os.path.exists(p) for p in sys.argv[2:]):\n"
    "    if time.monotonic() > deadline:\n"
    "        sys.exit('gave up waiting for ' + ' '.join(sys.argv[2:]))\n"
    "    time.sleep(0.02)\n"
    "subprocess.check_call([sys.executable, '-m', 'pip', 'install', '-q', '--no-index',\n"
    "                       '--find-links', sys.argv[1], '-r', 'requirements.txt'])\n"
)
WAITING = "Waiting for another process installing"


def _gated_plugin(make_plugin, name: str, wheelhouse: Path, gates: Sequence[Path], pin: str):
    command = " ".join(["python", "install.py", str(wheelhouse), *map(str, gates)])
    return make_plugin(
        name,
        {"runtime": "python3", "dependencies": {"install_command": command}, "tools": TOOLS},
        {
            "install.py": GATED_INSTALL,
            "requirements.txt": f"allydemo-greet=={pin}\n",
            "main.py": MAIN,
        },
    )


def _published(home: Path) -> list[Path]:
    store = home / "plugin-envs" / ".store"
    return sorted(p for p in store.iterdir() if (p / ".installed").is_file())


def _unfinished(home: Path) -> list[Path]:
    store = home / "plugin-envs" / ".store"
    return sorted(p for p in store.iterdir() if not (p / ".installed").exists())


class Cli:
    """A running ``python -m ally_core.cli`` whose stderr lines are collected as they come.

    ``Cli.changed`` is notified on every line (and when a process ends), so a test waits for
    what the processes say instead of polling for it."""

    changed = threading.Condition()

    def __init__(self, *args: str) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "ally_core.cli", *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            stdin=subprocess.DEVNULL,
            text=True,
        )
        self.err: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            with Cli.changed:
                self.err.append(line.rstrip("\n"))
                Cli.changed.notify_all()
        with Cli.changed:  # stderr closed: the process is ending
            Cli.changed.notify_all()

    def finish(self, timeout: float = 180) -> tuple[int, str, str]:
        # stdout only: stderr belongs to the reader thread.
        assert self.proc.stdout is not None
        out = self.proc.stdout.read()
        self.proc.wait(timeout)
        self._reader.join(10)
        return self.proc.returncode, out, "\n".join(self.err)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


def _wait_for_output(condition, what: str, procs: Sequence[Cli], limit: float = 120) -> None:
    """Wait until ``condition`` (on the processes' stderr lines) holds, woken by each new line
    (``limit`` is a guard against hanging, not a timing assertion)."""

    def done() -> bool:
        for cli in procs:
            if cli.proc.poll() is not None and cli.proc.returncode != 0:
                raise AssertionError(f"a process failed while waiting for {what}: {cli.err}")
        return condition()

    with Cli.changed:
        if not Cli.changed.wait_for(done, timeout=limit):
            raise AssertionError(f"never happened: {what}")


def _wait_for(condition, what: str, procs: Sequence[Cli] = (), limit: float = 120) -> None:
    """Poll ``condition`` on files other processes write (a guard against hanging, not a
    timing assertion); :func:`_wait_for_output` where the processes say it."""
    deadline = time.monotonic() + limit
    while not condition():
        for cli in procs:
            if cli.proc.poll() is not None and cli.proc.returncode != 0:
                raise AssertionError(f"a process failed while waiting for {what}: {cli.err}")
        if time.monotonic() > deadline:
            raise AssertionError(f"never happened: {what}")
        time.sleep(0.02)


def test_eight_processes_loading_one_cold_plugin_build_it_once(
    ally_home: Path, make_plugin, wheelhouse: Path, tmp_path: Path
):
    go = tmp_path / "go"
    plugin = _gated_plugin(make_plugin, "greeter", wheelhouse, [go], "1.0.0")
    procs = [
        Cli("run", "greeter", "hello", "--input", json.dumps({"who": f"p{i}"})) for i in range(8)
    ]
    try:
        # One process builds (its install command is waiting), the seven others wait on the lock.
        _wait_for(lambda: (plugin / "builds.log").exists(), "the build to start", procs)
        _wait_for_output(
            lambda: sum(any(WAITING in line for line in p.err) for p in procs) == 7,
            "seven processes waiting for the build",
            procs,
        )
        go.touch()
        results = [p.finish() for p in procs]
    finally:
        for p in procs:
            p.kill()
    for i, (code, out, err) in enumerate(results):
        assert code == 0, err
        assert json.loads(out) == {
            "success": True,
            "result": f"hello p{i} from allydemo_greet 1.0.0",
        }
    assert (plugin / "builds.log").read_text() == "build\n"
    assert len(_published(ally_home)) == 1
    assert _unfinished(ally_home) == []
    starts = sum(
        line.endswith("Installing dependencies for 'greeter'...")
        for _, _, e in results
        for line in e.splitlines()
    )
    assert starts == 1


def test_eight_processes_racing_to_build_one_uv_env_make_one_env(ally_home: Path, make_plugin):
    make_plugin(
        "greeter",
        {"runtime": "python3", "dependencies": {"file": "requirements.txt"}, "tools": TOOLS},
        {"requirements.txt": "allydemo-shout\n", "main.py": MAIN},
    )
    procs = [
        Cli("run", "greeter", "hello", "--input", json.dumps({"who": f"p{i}"})) for i in range(8)
    ]
    try:
        results = [p.finish() for p in procs]
    finally:
        for p in procs:
            p.kill()
    for i, (code, out, err) in enumerate(results):
        assert code == 0, err
        assert json.loads(out)["result"] == f"hello p{i} from allydemo_greet 2.0.0"
    starts = [
        line
        for _, _, err in results
        for line in err.splitlines()
        if line.endswith("Installing dependencies for 'greeter'...")
    ]
    assert len(starts) == 1
    assert len(_published(ally_home)) == 1
    assert _unfinished(ally_home) == []


@pytest.mark.parametrize("mode", ["two processes", "one process, two jobs"])
def test_different_plugins_build_in_parallel(
    ally_home: Path, make_plugin, wheelhouse: Path, tmp_path: Path, mode: str
):
    # Each install command marks that it started and waits until the other one has too:
    # builds run one after the other would never both get past that point.
    rendezvous = tmp_path / "rendezvous"
    rendezvous.mkdir()
    a, b = rendezvous / "a", rendezvous / "b"
    plugins = {
        "alpha": _gated_plugin(make_plugin, "alpha", wheelhouse, [a, b], "1.0.0"),
        "beta": _gated_plugin(make_plugin, "beta", wheelhouse, [a, b], "2.0.0"),
    }
    # Each waits for both marks; create each mark as soon as its own build has started.
    if mode == "two processes":
        procs = [Cli("install", "alpha"), Cli("install", "beta")]
    else:
        procs = [Cli("install", "-j", "2")]
    try:
        for name, mark in (("alpha", a), ("beta", b)):
            log = plugins[name] / "builds.log"
            threading.Thread(
                target=lambda log=log, mark=mark: (
                    _wait_for(log.exists, f"{log} to appear"),
                    mark.touch(),
                ),
                daemon=True,
            ).start()
        results = [p.finish() for p in procs]
    finally:
        for p in procs:
            p.kill()
    for code, _out, err in results:
        assert code == 0, err
    envs = {os.path.realpath(ally_home / "plugin-envs" / name) for name in plugins}
    assert len(envs) == 2
    assert len(_published(ally_home)) == 2
    for plugin in plugins.values():
        assert (plugin / "builds.log").read_text() == "build\n"
    proc = subprocess.run(
        [sys.executable, "-m", "ally_core.cli", "run", "beta", "hello", "--input", "{}"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert json.loads(proc.stdout)["result"] == "hello x from allydemo_greet 2.0.0"


READER = """
import json, sys, time
from pathlib import Path
from ally_core import Host

home, stop = Path(sys.argv[1]), Path(sys.argv[2])
count = 0
while not stop.exists() or count == 0:
    (outcome,) = Host(home).load()
    if not outcome.ready or outcome.action != "none":
        sys.exit(f"load {count}: {outcome.status} {outcome.action} {outcome.reason}")
    result = outcome.tool("hello").call({"who": str(count)})
    if not result.success or not result.result.startswith(f"hello {count} from"):
        sys.exit(f"call {count}: {result}")
    count += 1
    (home / "reads").write_text(str(count))
print(count)
"""


def test_readers_never_see_a_half_env_while_it_is_reinstalled(
    ally_home: Path, make_plugin, ally_cli, tmp_path: Path
):
    make_plugin(
        "greeter",
        {"runtime": "python3", "dependencies": {"file": "requirements.txt"}, "tools": TOOLS},
        {"requirements.txt": "allydemo-greet\n", "main.py": MAIN},
    )
    assert ally_cli("install", "-q").returncode == 0
    stop = tmp_path / "stop"
    reader = subprocess.Popen(
        [sys.executable, "-c", READER, str(ally_home), str(stop)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        _wait_for(lambda: (ally_home / "reads").exists() or reader.poll() is not None, "a read")
        envs = set()
        for _ in range(3):
            proc = ally_cli("reinstall", "greeter", "-q")
            assert proc.returncode == 0, proc.stderr
            envs.add(os.readlink(ally_home / "plugin-envs" / "greeter"))
        reads_during = int((ally_home / "reads").read_text())
        stop.touch()
        out, err = reader.communicate(timeout=120)
    finally:
        if reader.poll() is None:
            reader.kill()
    assert reader.returncode == 0, err
    assert len(envs) == 3
    assert int(out) >= reads_during > 1


def test_gc_during_a_build_leaves_the_env_being_built_alone(
    ally_home: Path, make_plugin, wheelhouse: Path, tmp_path: Path, ally_cli
):
    go = tmp_path / "go"
    plugin = _gated_plugin(make_plugin, "greeter", wheelhouse, [go], "1.0.0")
    build = Cli("install", "greeter")
    try:
        _wait_for(lambda: (plugin / "builds.log").exists(), "the build to start", [build])
        (building,) = _unfinished(ally_home)
        gc = ally_cli("gc")
        assert gc.returncode == 0, gc.stderr
        assert str(building) not in gc.stdout
        assert building.is_dir()
        go.touch()
        code, _out, err = build.finish()
    finally:
        build.kill()
    assert code == 0, err
    assert os.path.realpath(ally_home / "plugin-envs" / "greeter") == str(building)
    proc = ally_cli("run", "greeter", "hello", "--input", "{}", "-q")
    assert json.loads(proc.stdout)["result"] == "hello x from allydemo_greet 1.0.0"


def test_a_build_never_removes_the_temporary_link_another_publish_is_using(host: Host):
    # Regression: parallel builds in one `ally install` cleaned "stray" pointer links while
    # another thread was between symlink() and os.replace() ("cannot publish ... .link").
    root = host.paths.envs_dir
    host.store.store_dir.mkdir(parents=True)
    fresh = root / ".being-published.0123abcd.link"
    os.symlink(".store/nothing-yet", fresh)
    assert fresh not in host.store.unfinished()
    old = root / ".killed-publish.4567ef01.link"
    os.symlink(".store/nothing", old)
    an_hour_ago = time.time() - 3600
    os.utime(old, (an_hour_ago, an_hour_ago), follow_symlinks=False)
    assert old in host.store.unfinished()
    assert fresh not in host.store.unfinished()


def test_a_temporary_link_is_a_leftover_at_once_only_when_its_owner_is_gone(host: Host):
    from ally_core.store import _owner_tag

    store = host.store
    store.store_dir.mkdir(parents=True)
    host.paths.state_dir.mkdir(parents=True, exist_ok=True)
    node, _, pid = _owner_tag().partition("-")
    assert pid == str(os.getpid())
    gone = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        capture_output=True,
        text=True,
        check=True,
    )
    dead = int(gone.stdout)

    def link(directory: Path, tag: str) -> Path:
        path = directory / f".greeter.{tag}.0123abcd.link"
        os.symlink(".store/nothing", path)
        return path

    killed = link(store.root, f"{node}-{dead}")
    killed_backup = link(host.paths.state_dir, f"{node}-{dead}")
    ours = link(store.root, f"{node}-{os.getpid()}")
    other_machine = link(store.root, f"{'0' * 8 if node != '0' * 8 else '1' * 8}-{dead}")
    found = store.unfinished()
    assert killed in found and killed_backup in found
    assert ours not in found  # this process may be publishing through it right now
    assert other_machine not in found  # its pid means nothing here: the grace applies


def test_a_build_never_removes_an_env_another_build_published_after_its_first_look(
    host: Host, monkeypatch: pytest.MonkeyPatch
):
    # Regression: a cold build cleans up env dirs without a marker whose lock is free. It
    # looked for the marker, then took the lock; another thread's build could write the
    # marker, publish and release its lock in between, and the finished env was deleted
    # under its pointer (1 in ~10 parallel installs of 100 plugins).
    store = host.store
    store.store_dir.mkdir(parents=True)
    env_dir = store.store_dir / "0123456789abcdef-0a1b2c3d"
    env_dir.mkdir()
    real_lock = type(store).lock

    def lock_after_the_other_build_finished(self, key: str, *, timeout: float = -1):
        if key == "0123456789abcdef" and not (env_dir / ".installed").exists():
            (env_dir / ".installed").write_text("{}")  # the build's marker, its last step
        return real_lock(self, key, timeout=timeout)

    monkeypatch.setattr(type(store), "lock", lock_after_the_other_build_finished)
    assert env_dir not in store.unfinished()
    assert env_dir.is_dir()
    # A dir whose build really died (no marker, lock free) is still a leftover.
    (env_dir / ".installed").unlink()
    monkeypatch.setattr(type(store), "lock", real_lock)
    assert env_dir in store.unfinished()


def _unused_env_and_a_second_plugin(ally_home: Path, make_plugin) -> Path:
    """An env no plugin uses any more (its plugin is gone) and a second plugin, not loaded
    yet, with the same dependencies: the second plugin's first load shares that env."""
    files = {"requirements.txt": "allydemo-greet==1.0.0\n", "main.py": MAIN}
    manifest = {"runtime": "python3", "dependencies": {"file": "requirements.txt"}}
    first = make_plugin("first", {**manifest, "tools": TOOLS}, files)
    (built,) = Host(ally_home).load(["first"])
    assert built.ready, built.reason
    # Its pointer only (remove would delete the env as well): what a plugin that is gone
    # leaves behind until gc.
    assert Host(ally_home).store.unpublish("first")
    for child in sorted(first.rglob("*"), reverse=True):
        child.unlink() if child.is_file() else child.rmdir()
    first.rmdir()
    make_plugin("second", {**manifest, "tools": TOOLS}, files)
    return built.env.path


def _assert_ready_on_a_complete_env(ally_home: Path, outcome) -> None:
    assert outcome.ready, outcome.reason
    pointer = ally_home / "plugin-envs" / outcome.name
    assert (pointer / ".installed").is_file(), os.readlink(pointer)
    assert outcome.tool("hello").call({"who": "b"}).success


def test_gc_between_a_sharing_plugins_look_and_its_pointer_never_leaves_it_dangling(
    ally_home: Path, make_plugin, monkeypatch: pytest.MonkeyPatch
):
    # A second plugin with the same dependencies points at the published env without a
    # lock; gc (another process) deletes the env, unused until then, right before the
    # pointer is written. The plugin must notice and build, not stay on a deleted env.
    env_dir = _unused_env_and_a_second_plugin(ally_home, make_plugin)
    store_type = type(Host(ally_home).store)
    real_publish = store_type.publish
    collected: list[list[Path]] = []

    def gc_right_before_publishing(self, name: str, target: Path) -> None:
        if not collected:
            collected.append([path for path, _size, _why in Host(ally_home).gc()])
        real_publish(self, name, target)

    monkeypatch.setattr(store_type, "publish", gc_right_before_publishing)
    (second,) = Host(ally_home).load(["second"])
    monkeypatch.setattr(store_type, "publish", real_publish)
    assert collected == [[env_dir]]  # gc did delete it: no plugin used it when gc looked
    assert second.action == "built"
    _assert_ready_on_a_complete_env(ally_home, second)


def test_gc_gives_back_an_env_a_plugin_started_sharing_while_gc_deleted_it(
    ally_home: Path, make_plugin, monkeypatch: pytest.MonkeyPatch
):
    # The other order: gc has looked (no pointer), then the second plugin points at the env,
    # then gc hides it. gc must see the new pointer and give the env back.
    env_dir = _unused_env_and_a_second_plugin(ally_home, make_plugin)
    import ally_core.store

    real_usage = ally_core.store.disk_usage
    shared: list[str] = []

    def usage_then_a_plugin_starts_sharing(path: Path) -> int:
        size = real_usage(path)
        if path == env_dir and not shared:
            Host(ally_home).store.publish("second", env_dir)  # what a sharing load does
            shared.append("second")
        return size

    monkeypatch.setattr(ally_core.store, "disk_usage", usage_then_a_plugin_starts_sharing)
    removed = [path for path, _size, _why in Host(ally_home).gc()]
    monkeypatch.setattr(ally_core.store, "disk_usage", real_usage)
    assert shared == ["second"]
    assert env_dir not in removed
    assert (env_dir / ".installed").is_file()
    assert not list(env_dir.parent.glob(".trash-*"))
    (second,) = Host(ally_home).load(["second"])
    assert second.action == "none" and second.env.path == env_dir
    _assert_ready_on_a_complete_env(ally_home, second)
