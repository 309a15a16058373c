"""``watch_paths`` of the built-in Python runtime: every change that makes a warm load answer
differently must change the identity of a path the hook names, or the quick ``ally run`` path
would trust a record that no longer holds. :class:`ally_core.testing.WatchedEnv` checks both
halves of each change.

Real venvs built by real uv from the session's local wheelhouse; no network.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import attrs
import pytest

from ally_core import Host
from ally_core.runtimes.python import hooks, uv_locate
from ally_core.testing import WatchedEnv


@pytest.fixture
def ready(ally_home: Path, hook_wheel: Path, make_plugin: Callable[..., Path]) -> WatchedEnv:
    """A ready env holding a package that ships a startup hook (as coverage does)."""
    make_plugin(
        "watched",
        {"runtime": "python3", "dependencies": {"file": "requirements.txt"}},
        files={"requirements.txt": "allydemo-greet==1.0.0\nallydemo-hook\n"},
    )
    # Whether uv can be used is asked once per process: a new process asks again.
    return WatchedEnv(Host(ally_home), "watched", forget=uv_locate.uv_available.cache_clear)


def test_hook_watch_paths_answers_for_python_only_and_spawns_nothing(
    ready: WatchedEnv, no_spawn: Any
) -> None:
    ready.check_hook_contract(no_spawn)
    # Each name the runtime serves gets the same paths, from the hook itself.
    watched = ready.watched()
    with no_spawn():
        for runtime in ("python3", "python"):
            spec = attrs.evolve(ready.spec, runtime=runtime)
            assert ready.host.hook.watch_paths(spec=spec, env=ready.env) == watched, runtime


def test_every_change_a_quick_health_check_sees_changes_a_watched_path(ready: WatchedEnv) -> None:
    assert ready.healthy()
    record = ready.env.data["startup_hooks"]
    site = ready.spec.env_dir / record["site"]
    assert "allydemo_hook.pth" in record["files"]
    hook = site / "allydemo_hook.pth"

    evil = site / "zz-added.pth"
    ready.check("a .pth dropped into site-packages", lambda: evil.write_text("import os\n"))
    evil.unlink()
    assert ready.healthy()

    original, before = hook.read_bytes(), hook.stat()

    def edit() -> None:
        # In place, to the same size, its mode and mtime put back: only its ctime tells.
        hook.chmod(0o644)  # installed files are read-only
        with open(hook, "r+b") as fh:
            fh.write(b"import re\n"[: before.st_size])
        hook.chmod(before.st_mode)
        os.utime(hook, ns=(before.st_atime_ns, before.st_mtime_ns))

    ready.check(f"the recorded startup hook {hook.name} edited", edit)
    hook.chmod(0o644)
    hook.write_bytes(original)
    assert ready.healthy()

    ready.check_removal(hook, f"the recorded startup hook {hook.name} removed")
    for path in (ready.spec.env_dir / "pyvenv.cfg", Path(ready.env.commands["python"])):
        ready.check_removal(path, f"{path.name} removed")


def test_a_pip_config_file_created_where_pip_looks_changes_a_watched_path(
    ready: WatchedEnv, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Every place pip reads its configuration from, at the locations this environment
    # gives (the ally_home fixture switched pip's files off with PIP_CONFIG_FILE=/dev/null).
    home, xdg_home = tmp_path / "home", tmp_path / "xdg-home"
    xdg_dirs = [tmp_path / "xdg-a", tmp_path / "xdg-b"]
    override = tmp_path / "override" / "pip.conf"
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(xdg_home))
    monkeypatch.setenv("XDG_CONFIG_DIRS", os.pathsep.join(map(str, xdg_dirs)))
    monkeypatch.setenv("PIP_CONFIG_FILE", str(override))
    locations = [d / "pip" / "pip.conf" for d in xdg_dirs]
    locations += [home / ".pip" / "pip.conf", xdg_home / "pip" / "pip.conf", override]
    for location in locations:

        def create(location: Path = location) -> None:
            location.parent.mkdir(parents=True, exist_ok=True)
            location.write_text("[global]\nindex-url = https://mirror.invalid/simple\n")

        ready.check(f"a pip config created at {location}", create)
    # The system-wide file is named too (this test does not write /etc).
    assert Path("/etc/pip.conf") in ready.watched()


@pytest.fixture
def no_uv_package(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """ally's Python cannot import the ``uv`` distribution: uv is looked up on ``PATH``."""
    monkeypatch.setattr(uv_locate, "uv_package_found", lambda: False)
    monkeypatch.setattr(hooks, "uv_package_found", lambda: False)
    yield
    monkeypatch.undo()
    uv_locate.uv_available.cache_clear()


def test_uv_on_path_is_watched_when_ally_has_no_uv_package(
    ready: WatchedEnv, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, no_uv_package: None
) -> None:
    first, second = tmp_path / "bin-a", tmp_path / "bin-b"
    first.mkdir()
    second.mkdir()
    monkeypatch.setenv("PATH", os.pathsep.join([str(first), str(second), "/usr/bin", "/bin"]))
    if shutil.which("uv") is not None:
        pytest.skip(f"this machine has {shutil.which('uv')}")

    def put_uv(directory: Path) -> None:
        fd = os.open(directory / "uv", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o755)
        os.write(fd, b"#!/bin/sh\nexit 0\n")
        os.close(fd)

    ready.check("uv put into the second PATH entry", lambda: put_uv(second))
    ready.check("uv removed from it", lambda: (second / "uv").unlink())
    ready.check("uv put into the first PATH entry", lambda: put_uv(first))
