"""The warm index and the node runtime: a new process reuses a persisted request key only
while the plugin's lock files and ``.npmrc`` (named by ``identity_files``) are unchanged."""

from __future__ import annotations

import contextlib
import json
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import attrs
import pytest

from ally_core import Host

if shutil.which("node") is None or shutil.which("npm") is None:
    pytest.skip("node and npm are needed for the node runtime's tests", allow_module_level=True)

pytestmark = pytest.mark.usefixtures("npm_env")


@pytest.fixture(autouse=True)
def files_settle_at_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """Files written by a test count as settled at once (see tests/test_warm_index.py)."""
    import ally_core.discovery

    monkeypatch.setattr(ally_core.discovery, "SETTLE_NS", 0)

#: The files besides package.json that the node runtime's env_identity reads.
WATCHED = ("npm-shrinkwrap.json", "package-lock.json", ".npmrc")


@contextlib.contextmanager
def identity_calls(host: Host) -> Iterator[list[str]]:
    """The plugins whose request key the host computes by calling env_identity."""
    names: list[str] = []

    def before(hook_name: str, hook_impls: Any, kwargs: dict[str, Any]) -> None:
        if hook_name == "env_identity":
            names.append(kwargs["spec"].plugin_name)

    undo = host.pm.add_hookcall_monitoring(before, lambda *args: None)
    try:
        yield names
    finally:
        undo()


@pytest.fixture
def adder(ally_home: Path, make_plugin: Any) -> Path:
    """A node plugin whose env was built (npm install from the local registry)."""
    plugin = make_plugin(
        "adder",
        {"runtime": "node", "dependencies": {"file": "package.json"}},
        files={
            "package.json": json.dumps(
                {"name": "adder", "private": True, "dependencies": {"ally-cjs-lib": "1.0.0"}}
            )
        },
    )
    (outcome,) = Host(ally_home).load()
    assert outcome.ready and outcome.action == "built", outcome.reason
    return plugin


def status_of(home: Path, no_spawn: Any) -> tuple[tuple[str, str], list[str], str]:
    """(status, reason), the plugins whose key was computed, and the key, by a new Host."""
    host = Host(home)
    with identity_calls(host) as computed, no_spawn():
        (outcome,) = host.status()
        (source,) = host.discover()
        _spec, key = host.keys.spec_and_key(source)
    return (outcome.status, outcome.reason), computed, key


@pytest.mark.parametrize("name", WATCHED)
def test_creating_editing_and_removing_a_watched_file_recomputes_the_key(
    ally_home: Path, adder: Path, no_spawn: Any, name: str
) -> None:
    ready, computed, built_key = status_of(ally_home, no_spawn)
    assert ready == ("ready", "") and computed == []  # the key came from the index

    watched = adder / name
    first, second = ("; one\n", "; two\n") if name == ".npmrc" else ('{"v": 1}\n', '{"v": 2}\n')
    watched.write_text(first, "utf-8")
    state, computed, created_key = status_of(ally_home, no_spawn)
    created = ".npmrc added" if name == ".npmrc" else "lock file changed"
    assert state == ("pending", f"needs rebuild: {created}")
    assert computed == ["adder"] and created_key != built_key

    # Rewritten in place with as many bytes: a new key again.
    with open(watched, "r+b") as fh:
        fh.write(second.encode())
    state, computed, edited_key = status_of(ally_home, no_spawn)
    assert state == ("pending", f"needs rebuild: {created}")  # (still, against the env)
    assert computed == ["adder"] and edited_key not in (built_key, created_key)

    watched.unlink()
    state, computed, key = status_of(ally_home, no_spawn)
    assert state == ("ready", "") and computed == ["adder"] and key == built_key
    with no_spawn():
        (outcome,) = Host(ally_home).load()
    assert outcome.ready and outcome.action == "none"


def test_hook_identity_files_and_env_context_of_the_node_runtime(
    ally_home: Path, make_plugin: Any, no_spawn: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    plugin = make_plugin(
        "nested",
        {"runtime": "nodejs", "dependencies": {"file": "js/package.json"}},
        files={"js/package.json": json.dumps({"name": "nested", "private": True})},
    )
    host = Host(ally_home)
    (source,) = host.discover()
    spec = host.spec_for(source.manifest, plugin)
    with no_spawn():
        files = host.hook.identity_files(spec=spec)
        other = host.hook.identity_files(spec=attrs.evolve(spec, runtime="no-such-runtime"))
        bare = host.hook.identity_files(spec=attrs.evolve(spec, dependency_file=None))
    # Beside the dependency file, whether they exist or not.
    assert sorted(map(Path, files)) == sorted(plugin / "js" / n for n in WATCHED)
    assert other is None
    assert bare is not None and list(bare) == []

    options = host.env_options()
    with no_spawn():
        context = host.hook.env_context(runtime="node", options=options)
        alias = host.hook.env_context(runtime="nodejs", options=options)
        unknown = host.hook.env_context(runtime="no-such-runtime", options=options)
    assert unknown is None
    assert context is not None and alias == context
    json.dumps(context)
    monkeypatch.setenv("npm_config_registry", "http://127.0.0.1:9/")
    moved = host.hook.env_context(runtime="node", options=options)
    json.dumps(moved)
    assert moved != context
