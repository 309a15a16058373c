"""MCP servers started by npx or a Node script: pinned envs, launches killed mid-build,
offline start, bundles — real node and npm, a registry on 127.0.0.1, a real MCP client."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from mcp_plugin_kit import (
    NODE,
    NODE_PACKAGE,
    NODE_SERVER_ENTRY,
    NPM,
    PY_PACKAGE,
    PY_SERVER_ENTRY,
    SOURCES,
    ally,
    host_environ,
    write_claude_plugin,
)

if NODE is None or NPM is None:
    pytest.skip("node and npm are needed", allow_module_level=True)

pytestmark = pytest.mark.usefixtures("registry")


def installed(result: subprocess.CompletedProcess[str]) -> subprocess.CompletedProcess[str]:
    assert result.returncode == 0, result.stdout + result.stderr
    return result


def store_envs(home: Path) -> list[Path]:
    store = home / "plugin-envs" / ".store"
    return (
        sorted(p for p in store.iterdir() if not p.name.startswith(".")) if store.is_dir() else []
    )


def test_npx_server_is_pinned_launched_and_updated(home, registry, ally_launch):
    write_claude_plugin(
        home, "demo", {"js": {**NODE_SERVER_ENTRY, "args": ["-y", NODE_PACKAGE, "--a"]}}
    )
    out = installed(ally("install")).stdout
    assert (
        f"\u2713 demo/js: MCP server, npx {NODE_PACKAGE}@latest [{NODE_PACKAGE} 1.0.0] (installed)"
        in out
    )
    result = ally_launch("demo", "js", calls=[("greet", {"who": "node"}), ("argv", {})])
    assert (result["server"], result["version"]) == (NODE_PACKAGE, "1.0.0")
    assert result["calls"] == ["hello node from ally-mcp-lib 1.0.0", '["--a"]']
    registry.publish("1.1.0")
    assert "[ally-mcp-demo 1.0.0]" in installed(ally("install")).stdout
    assert ally_launch("demo", "js")["version"] == "1.0.0"  # no drift: what npx -y would do
    out = installed(ally("update", "demo")).stdout
    assert f"[{NODE_PACKAGE} 1.1.0] (updated)" in out
    assert ally_launch("demo", "js")["version"] == "1.1.0"


def test_install_readies_all_servers_of_a_plugin_at_once(home, ally_launch):
    write_claude_plugin(home, "both", {"js": NODE_SERVER_ENTRY, "py": PY_SERVER_ENTRY})
    result = installed(ally("install", "both"))
    assert (
        "\u2713 both/js: MCP server" in result.stdout
        and "\u2713 both/py: MCP server" in result.stdout
    )
    # One progress display: both servers' builds, each under its own name.
    assert "Dependencies installed for 'both/js'" in result.stderr
    assert "Dependencies installed for 'both/py'" in result.stderr
    assert ally_launch("both", "py")["version"] == "1.0.0"
    assert ally_launch("both", "js")["version"] == "1.0.0"


def _start_launch(home: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "ally_core.cli", "mcp", "launch", "demo", "js"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=host_environ(home),
    )


def _wait(event, what: str) -> None:
    assert event.wait(120), f"timed out waiting for {what}"


def test_a_launch_killed_mid_build_loses_nothing_the_next_launch_finds_it_built(
    home, registry, ally_launch
):
    write_claude_plugin(home, "demo", {"js": NODE_SERVER_ENTRY})
    registry.server.hold.set()  # tarball downloads wait: the build is in flight
    first = _start_launch(home)
    try:
        _wait(registry.server.tarball_requested, "the build to download")
        first.kill()  # what a host does when its handshake times out
        first.wait(30)
    finally:
        first.stdin.close()
    registry.server.hold.clear()
    registry.server.release.set()
    result = ally_launch("demo", "js")
    assert result["version"] == "1.0.0"
    # The first launch's build went on and was used: one download, one env.
    assert len(registry.tarball_requests()) == 1
    assert len(store_envs(home)) == 1


def _processes_of(home: Path) -> list[int]:
    """Every process started for this home (they inherit ALLY_HOME)."""
    needle = f"ALLY_HOME={home}".encode()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            if needle in (entry / "environ").read_bytes().split(b"\0"):
                found.append(int(entry.name))
        except OSError:
            continue
    return found


@pytest.mark.skipif(not Path("/proc/self/environ").exists(), reason="needs /proc")
def test_every_process_of_a_build_killed_then_a_good_launch(home, registry, ally_launch):
    write_claude_plugin(home, "demo", {"js": NODE_SERVER_ENTRY})
    registry.server.hold.set()
    first = _start_launch(home)
    try:
        _wait(registry.server.tarball_requested, "the build to download")
        victims = _processes_of(home)  # the launcher, its builder, npm: a crash, say
        assert first.pid in victims and len(victims) >= 3
        for pid in victims:
            os.kill(pid, signal.SIGKILL)
        first.wait(30)
    finally:
        first.stdin.close()
    deadline = time.monotonic() + 30
    while _processes_of(home) and time.monotonic() < deadline:
        time.sleep(0.05)
    registry.server.hold.clear()
    registry.server.release.set()
    # The unfinished env (no marker) is invisible; the next launch builds and starts.
    result = ally_launch("demo", "js")
    assert result["version"] == "1.0.0"
    published = (home / "plugin-envs" / "demo+js").resolve()
    assert (published / ".installed").is_file()
    leftovers = [p for p in store_envs(home) if p != published]
    assert all(not (p / ".installed").exists() for p in leftovers)
    installed(ally("gc"))
    assert store_envs(home) == [published]


def test_a_ready_npx_server_starts_with_the_registry_gone(home, registry, ally_launch):
    write_claude_plugin(home, "demo", {"js": NODE_SERVER_ENTRY})
    installed(ally("install"))
    registry.stop()
    unreachable = {"npm_config_registry": "http://127.0.0.1:9/"}
    assert ally_launch("demo", "js", env=unreachable)["version"] == "1.0.0"
    (home / "plugin-envs" / ".mcp" / "demo+js" / "launch.record").unlink()
    # The full path with the registry's address dead: checks, builds nothing, starts.
    assert ally_launch("demo", "js")["version"] == "1.0.0"
    assert len(store_envs(home)) == 1


def test_a_node_script_of_the_plugin_runs_with_its_package_json(home, ally_launch):
    write_claude_plugin(
        home,
        "scripted",
        {"srv": {"command": "node", "args": ["${CLAUDE_PLUGIN_ROOT}/server.js", "x"]}},
        files={
            "server.js": SOURCES.NODE_SERVER.replace("@VERSION@", "script"),
            "package.json": json.dumps(
                {"name": "scripted", "private": True, "dependencies": {"ally-mcp-lib": "1.0.0"}}
            ),
        },
    )
    out = installed(ally("install")).stdout
    assert "\u2713 scripted/srv: MCP server, node with package.json (installed)" in out
    result = ally_launch("scripted", "srv", calls=[("greet", {"who": "me"}), ("argv", {})])
    assert result["version"] == "script"
    assert result["calls"] == ["hello me from ally-mcp-lib 1.0.0", '["x"]']


def test_npx_bundle_installs_and_starts_with_no_registry(home, registry, tmp_path, ally_launch):
    write_claude_plugin(home, "demo", {"js": NODE_SERVER_ENTRY, "py": PY_SERVER_ENTRY})
    installed(ally("install"))
    archive = tmp_path / "demo.ally.tar.gz"
    installed(ally("bundle", "demo", "-o", str(archive)))
    registry.stop()
    other = tmp_path / "elsewhere"
    (other / "plugins").mkdir(parents=True)
    (other / "config.toml").write_text(
        f'[ally.index]\nno_index = true\nfind_links = ["{tmp_path / "nothing"}"]\n'
    )
    out = installed(ally("install", str(archive), env={"ALLY_HOME": str(other)})).stdout
    assert f"[{NODE_PACKAGE} 1.0.0] (installed)" in out and f"[{PY_PACKAGE} 1.0.0]" in out
    assert ally_launch("demo", "js", env={"ALLY_HOME": str(other)})["version"] == "1.0.0"


def test_doctor_finds_a_broken_node_env_and_fix_repairs_it(home, ally_launch):
    write_claude_plugin(home, "demo", {"js": NODE_SERVER_ENTRY})
    installed(ally("install"))
    env = (home / "plugin-envs" / "demo+js").resolve()
    (env / "node_modules" / "ally-mcp-lib" / "package.json").unlink()
    result = ally("doctor", "demo")
    assert result.returncode == 4
    assert "\u2717 demo/js: npm ls failed" in result.stdout
    assert "\u2192 repaired" in installed(ally("doctor", "--fix")).stdout
    assert ally_launch("demo", "js", calls=[("greet", {"who": "x"})])["calls"] == [
        "hello x from ally-mcp-lib 1.0.0"
    ]


def test_gc_during_a_build_keeps_the_lock_it_builds_from(home, registry, ally_launch):
    write_claude_plugin(home, "demo", {"js": NODE_SERVER_ENTRY})
    registry.server.hold.set()
    first = _start_launch(home)
    try:
        _wait(registry.server.tarball_requested, "the build to download")
        # Resolved, building: the new lock is on disk, pins.json does not name it yet.
        gone = json.loads(installed(ally("gc", "--json")).stdout)["removed"]
        assert [r for r in gone if "/.mcp/" in r["path"]] == []
        registry.server.hold.clear()
        registry.server.release.set()
        first.stdin.write(b'{"jsonrpc": "2.0", "id": 1, "method": "ping"}\n')
        first.stdin.flush()
        assert json.loads(first.stdout.readline()) == {"jsonrpc": "2.0", "id": 1, "result": {}}
    finally:
        first.stdin.close()
        try:
            first.wait(30)
        finally:
            first.kill()
    (home / "plugin-envs" / ".mcp" / "demo+js" / "launch.record").unlink()
    assert ally_launch("demo", "js")["version"] == "1.0.0"  # the full path finds its lock
