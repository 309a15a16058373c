"""``watch_paths`` of the built-in Python runtime: every change that makes a warm load answer
differently must change the identity of a path the hook names.

The quick ``ally run`` path trusts what the full path recorded while each watched path keeps
its ``stat`` identity (``[st_size, st_mtime_ns, st_ino, st_ctime_ns]`` following symlinks,
``None`` when absent) and the environment variables are the same. So for each change below the
test checks both halves: what the runtime's warm hooks answer (``env_context``,
``env_identity``, ``identity_files``, a quick ``health_check``) changes, and so does the
identity of at least one path ``watch_paths`` named before the change.

Real venvs built by real uv from the session's local wheelhouse; no network.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, Optional

import attrs
import pytest

from ally_core import EnvInfo, EnvSpec, Host
from ally_core.runtimes.python import hooks, uv_locate
from ally_core.testing import build_wheel

Identity = Optional[list[int]]


def identities(paths: Sequence[Path]) -> dict[str, Identity]:
    """What the quick path compares: each path's identity, following symlinks."""
    out: dict[str, Identity] = {}
    for path in paths:
        try:
            st = os.stat(path)
        except OSError:
            out[str(path)] = None
            continue
        out[str(path)] = [st.st_size, st.st_mtime_ns, st.st_ino, st.st_ctime_ns]
    return out


class Ready:
    """A plugin with a ready env, and the answers of the hooks the quick path stands in for."""

    def __init__(self, host: Host, name: str) -> None:
        outcome = host.ensure(name)
        assert outcome.ready, outcome.reason
        assert outcome.manifest is not None
        self.host = host
        self.spec: EnvSpec = host.spec_for(outcome.manifest, outcome.plugin_dir)
        current = host.store.current(name)
        assert current is not None
        self.env: EnvInfo = current[1].env

    def watched(self) -> list[Path]:
        paths = self.host.dispatch.watch_paths(self.spec, self.env)
        assert paths is not None
        return list(paths)

    def answers(self) -> list[Any]:
        dispatch = self.host.dispatch
        spec = self.spec
        uv_locate.uv_available.cache_clear()  # a new process asks again
        return [
            dispatch.env_context(spec.runtime, self.host.env_options()),
            dispatch.env_identity(spec),
            dispatch.identity_files(spec),
            dispatch.health_check(spec, self.env, deep=False),
        ]

    def check(self, what: str, change: Callable[[], None]) -> None:
        """``change`` makes the warm answers differ, and a watched identity with them."""
        watched = self.watched()
        before, answers = identities(watched), self.answers()
        change()
        assert self.answers() != answers, f"{what}: the warm hooks answer the same"
        after = identities(watched)
        assert after != before, f"{what}: no watched path changed ({sorted(before)})"


@pytest.fixture
def ready(
    ally_home: Path, wheelhouse: Path, make_plugin: Callable[..., Path], tmp_path: Path
) -> Ready:
    """A ready env holding a package that ships a startup hook (as coverage does)."""
    house = tmp_path / "hook-wheels"
    build_wheel(
        house,
        "allydemo-hook",
        "1.0.0",
        files={"allydemo_hook.pth": "import os\n", "allydemo_hook.py": "x = 1\n"},
    )
    (ally_home / "config.toml").write_text(
        "[ally.index]\nno_index = true\n"
        f"find_links = [{json.dumps(str(wheelhouse))}, {json.dumps(str(house))}]\n",
        "utf-8",
    )
    make_plugin(
        "watched",
        {"runtime": "python3", "dependencies": {"file": "requirements.txt"}},
        files={"requirements.txt": "allydemo-greet==1.0.0\nallydemo-hook\n"},
    )
    return Ready(Host(ally_home), "watched")


def healthy(ready: Ready) -> bool:
    return ready.host.dispatch.health_check(ready.spec, ready.env, deep=False).ok


def test_hook_watch_paths_answers_for_python_only_and_spawns_nothing(
    ready: Ready, no_spawn: Any
) -> None:
    foreign = attrs.evolve(ready.spec, runtime="no-such-runtime")
    with no_spawn():
        assert ready.host.hook.watch_paths(spec=foreign, env=ready.env) is None
        paths = ready.host.hook.watch_paths(spec=ready.spec, env=ready.env)
    assert paths and all(isinstance(p, Path) for p in paths)


def test_every_change_a_quick_health_check_sees_changes_a_watched_path(ready: Ready) -> None:
    assert healthy(ready)
    record = ready.env.data["startup_hooks"]
    site = ready.spec.env_dir / record["site"]
    assert "allydemo_hook.pth" in record["files"]
    hook = site / "allydemo_hook.pth"

    evil = site / "zz-added.pth"
    ready.check("a .pth dropped into site-packages", lambda: evil.write_text("import os\n"))
    evil.unlink()
    assert healthy(ready)

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
    assert healthy(ready)

    away = hook.with_name(hook.name + ".away")
    ready.check(f"the recorded startup hook {hook.name} removed", lambda: hook.rename(away))
    away.rename(hook)
    assert healthy(ready)

    for path in (ready.spec.env_dir / "pyvenv.cfg", Path(ready.env.commands["python"])):
        moved = path.with_name(path.name + ".away")
        ready.check(f"{path.name} removed", lambda p=path, m=moved: p.rename(m))
        moved.rename(path)
        assert healthy(ready)


def test_a_pip_config_file_created_where_pip_looks_changes_a_watched_path(
    ready: Ready, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
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
    ready: Ready, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, no_uv_package: None
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
