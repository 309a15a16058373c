"""``watch_paths`` of the node runtime: every change that makes a warm load answer differently
must change the identity of a path the hook names, or the quick ``ally run`` path would trust
a record that no longer holds. :class:`ally_core.testing.WatchedEnv` checks both halves of
each change.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from ally_core import Host
from ally_core.testing import WatchedEnv

if shutil.which("node") is None or shutil.which("npm") is None:
    pytest.skip("node and npm are needed for the node runtime's tests", allow_module_level=True)

pytestmark = pytest.mark.usefixtures("npm_env")


@pytest.fixture
def ready(host: Host, make_plugin: Callable[..., Path]) -> WatchedEnv:
    make_plugin(
        "watched",
        {"runtime": "node", "dependencies": {"file": "package.json"}},
        files={
            "package.json": json.dumps(
                {"name": "watched", "private": True, "dependencies": {"ally-cjs-lib": "1.0.0"}}
            )
        },
    )
    return WatchedEnv(host, "watched")


def test_hook_watch_paths_answers_for_node_only_and_spawns_nothing(
    ready: WatchedEnv, no_spawn: Any
) -> None:
    ready.check_hook_contract(no_spawn)


def test_every_change_a_quick_health_check_sees_changes_a_watched_path(
    ready: WatchedEnv, tmp_path: Path
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
        ready.check_removal(path, f"{path.relative_to(env_dir)} removed")

    # The node and npm the env was built with, at places this test owns.
    node = tmp_path / "node-install" / "bin" / "node"
    npm_cli = tmp_path / "node-install" / "lib" / "npm-cli.js"
    ready.own_interpreter(node, {"npm_cli": npm_cli})
    for path in (node, npm_cli):
        ready.check_removal(path, f"the env's {path.name} removed")


def test_the_node_found_on_path_is_watched(
    ready: WatchedEnv, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
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
