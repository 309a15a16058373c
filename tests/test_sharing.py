"""Identical envs are shared; the package cache is shared (hardlinks) between different envs."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from ally_core import Host
from ally_core.store import disk_usage

MANIFEST = {
    "runtime": "python3",
    "dependencies": {"file": "requirements.txt"},
    "tools": [{"name": "v", "command": "python3", "args": ["main.py"]}],
}
MAIN = (
    "import json, allydemo_greet\n"
    "print(json.dumps({'success': True, 'result': allydemo_greet.__version__}))\n"
)


def _plugin(make_plugin, name: str, requirements: str) -> Path:
    return make_plugin(name, MANIFEST, {"requirements.txt": requirements, "main.py": MAIN})


def test_second_plugin_with_same_dependencies_shares_the_env(host: Host, make_plugin, no_spawn):
    _plugin(make_plugin, "first", "allydemo-shout\n")
    (first,) = host.load(["first"])
    assert first.action == "built"
    store = host.paths.envs_dir / ".store"
    before = disk_usage(store)

    _plugin(make_plugin, "second", "allydemo-shout\n")
    # Sharing needs no installer: the interpreter of this process is already known.
    with no_spawn():
        (second,) = Host(host.paths.home).load(["second"])
    assert second.ready and second.action == "shared"
    assert second.env.path == first.env.path
    assert disk_usage(store) - before < 1024 * 1024
    assert os.path.realpath(host.paths.envs_dir / "second") == str(first.env.path)
    assert second.tool("v").call().result == "2.0.0"


def test_removing_one_sharer_keeps_the_other_working_and_gc_keeps_the_env(
    host: Host, make_plugin
):
    a = _plugin(make_plugin, "a", "allydemo-greet==1.0.0\n")
    _plugin(make_plugin, "b", "allydemo-greet==1.0.0\n")
    outcomes = {o.name: o for o in host.load()}
    assert outcomes["a"].env.path == outcomes["b"].env.path
    removal = host.remove("a")
    assert removal and removal.deleted == () and removal.shared == (outcomes["b"].env.path,)
    for child in sorted(a.rglob("*"), reverse=True):
        child.unlink() if child.is_file() else child.rmdir()
    a.rmdir()
    removed = host.gc()
    assert all(path != outcomes["b"].env.path for path, _size, _why in removed)
    (b,) = Host(host.paths.home).load()
    assert b.ready and b.action == "none"
    assert b.tool("v").call().result == "1.0.0"
    # Once nobody else points at it, removing the last plugin removes it.
    removal = host.remove("b")
    assert [path for path, _size in removal.deleted] == [outcomes["b"].env.path]
    assert not outcomes["b"].env.path.exists()


def test_different_envs_share_no_package_file_with_each_other_or_the_cache(
    host: Host, make_plugin
):
    if host.settings.installer == "pip":
        pytest.skip("the uv backend installs from a cache of unpacked wheels")
    _plugin(make_plugin, "one", "allydemo-greet==1.0.0\n")
    _plugin(make_plugin, "two", "allydemo-greet==1.0.0\nallydemo-shout\n")
    envs = {o.name: o.env.path for o in host.load()}
    assert envs["one"] != envs["two"]

    def module(env: Path) -> Path:
        (found,) = env.glob("lib/python*/site-packages/allydemo_greet.py")
        return found

    # The same wheel installed into two envs is two files, each one link (uv copies from its
    # cache, ``--link-mode copy``): an in-place edit of one reaches neither the other env nor
    # the cache entry later builds install from.
    cached = list((host.paths.cache_dir / "uv").rglob("allydemo_greet.py"))
    assert cached
    inodes = {module(env).stat().st_ino for env in envs.values()}
    assert len(inodes) == 2
    assert not inodes & {c.stat().st_ino for c in cached}
    assert all(module(env).stat().st_nlink == 1 for env in envs.values())
