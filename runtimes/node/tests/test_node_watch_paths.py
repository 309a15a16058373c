"""``watch_paths`` of the node runtime: every change that makes a warm load answer differently
must change the identity of a path the hook names.

The quick ``ally run`` path trusts what the full path recorded while each watched path keeps
its ``stat`` identity (``[st_size, st_mtime_ns, st_ino, st_ctime_ns]`` following symlinks,
``None`` when absent) and the environment variables are the same. So for each change below the
test checks both halves: what the runtime's warm hooks answer (``env_context``,
``env_identity``, ``identity_files``, a quick ``health_check``) changes, and so does the
identity of at least one path ``watch_paths`` named before the change.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Optional

import attrs
import pytest

from ally_core import EnvInfo, EnvSpec, Host

if shutil.which("node") is None or shutil.which("npm") is None:
    pytest.skip("node and npm are needed for the node runtime's tests", allow_module_level=True)

pytestmark = pytest.mark.usefixtures("npm_env")

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
        dispatch, spec = self.host.dispatch, self.spec
        return [
            dispatch.env_context(spec.runtime, self.host.env_options()),
            dispatch.env_identity(spec),
            dispatch.identity_files(spec),
            dispatch.health_check(spec, self.env, deep=False),
        ]

    def healthy(self) -> bool:
        return self.host.dispatch.health_check(self.spec, self.env, deep=False).ok

    def check(self, what: str, change: Callable[[], object]) -> None:
        """``change`` makes the warm answers differ, and a watched identity with them."""
        watched = self.watched()
        before, answers = identities(watched), self.answers()
        change()
        assert self.answers() != answers, f"{what}: the warm hooks answer the same"
        after = identities(watched)
        assert after != before, f"{what}: no watched path changed ({sorted(before)})"


@pytest.fixture
def ready(host: Host, make_plugin: Callable[..., Path]) -> Ready:
    make_plugin(
        "watched",
        {"runtime": "node", "dependencies": {"file": "package.json"}},
        files={
            "package.json": json.dumps(
                {"name": "watched", "private": True, "dependencies": {"ally-cjs-lib": "1.0.0"}}
            )
        },
    )
    return Ready(host, "watched")


def moved_away(path: Path) -> Callable[[], object]:
    return lambda: path.rename(path.with_name(path.name + ".away"))


def put_back(path: Path) -> None:
    path.with_name(path.name + ".away").rename(path)


def test_hook_watch_paths_answers_for_node_only_and_spawns_nothing(
    ready: Ready, no_spawn: Any
) -> None:
    foreign = attrs.evolve(ready.spec, runtime="no-such-runtime")
    with no_spawn():
        assert ready.host.hook.watch_paths(spec=foreign, env=ready.env) is None
        paths = ready.host.hook.watch_paths(spec=ready.spec, env=ready.env)
    assert paths and all(isinstance(p, Path) for p in paths)


def test_every_change_a_quick_health_check_sees_changes_a_watched_path(
    ready: Ready, tmp_path: Path
) -> None:
    assert ready.healthy()
    env_dir = ready.env.path
    assert ready.env.data.get("esm_hooks"), "this node has module.register: the hooks are used"
    for path in (
        env_dir / ".ally" / "bin" / "node",
        env_dir / "node_modules",
        env_dir / ".ally" / "register.mjs",
        env_dir / ".ally" / "resolve-hooks.mjs",
    ):
        ready.check(f"{path.relative_to(env_dir)} removed", moved_away(path))
        put_back(path)
        assert ready.healthy()

    # The node and npm the env was built with, at places this test owns.
    node = tmp_path / "node-install" / "bin" / "node"
    node.parent.mkdir(parents=True)
    node.symlink_to(ready.env.interpreter.path)
    npm_cli = tmp_path / "node-install" / "lib" / "npm-cli.js"
    npm_cli.parent.mkdir()
    shutil.copyfile(str(ready.env.data["npm_cli"]), npm_cli)
    ready.env = attrs.evolve(
        ready.env,
        interpreter=attrs.evolve(ready.env.interpreter, path=str(node)),
        data={**ready.env.data, "npm_cli": str(npm_cli)},
    )
    assert ready.healthy()
    for path in (node, npm_cli):
        ready.check(f"the env's {path.name} removed", moved_away(path))
        put_back(path)
        assert ready.healthy()


def test_the_node_found_on_path_is_watched(
    ready: Ready, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    first, second = tmp_path / "bin-a", tmp_path / "bin-b"
    first.mkdir()
    second.mkdir()
    real = ready.env.interpreter.path
    monkeypatch.delenv("ALLY_NODE", raising=False)
    monkeypatch.setenv("PATH", os.pathsep.join([str(first), str(second), os.environ["PATH"]]))
    ready.check("a node put first on PATH", lambda: (first / "node").symlink_to(real))
    ready.check("it removed again", lambda: (first / "node").unlink())

    # ALLY_NODE names a command: it is looked up on PATH the same way.
    monkeypatch.setenv("ALLY_NODE", "ally-test-node")
    ready.check(
        "ALLY_NODE's command put on PATH", lambda: (second / "ally-test-node").symlink_to(real)
    )
