"""MCP servers started by uvx or a Python script: pinned envs, launch, config, offline start,
doctor, bundle, gc — real uv, real venvs, a real MCP client, wheels built in this session."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

from mcp_plugin_kit import (
    PY_PACKAGE,
    PY_SERVER_ENTRY,
    SOURCES,
    ally,
    host_environ,
    mcp_session,
    write_claude_plugin,
)


def state(home: Path, pointer: str) -> Path:
    return home / "plugin-envs" / ".mcp" / pointer


def lock_text(home: Path, pointer: str) -> str:
    pins = json.loads((state(home, pointer) / "pins.json").read_text())
    return (state(home, pointer) / pins["lock"] / "requirements.txt").read_text()


def env_of(home: Path, pointer: str) -> Path:
    return (home / "plugin-envs" / pointer).resolve()


def installed(result: subprocess.CompletedProcess[str]) -> subprocess.CompletedProcess[str]:
    assert result.returncode == 0, result.stdout + result.stderr
    return result


def test_install_pins_the_server_and_launch_answers_initialize(home, ally_launch):
    plugin_dir = write_claude_plugin(
        home,
        "demo",
        {
            "py": {
                "command": "uvx",
                "args": [PY_PACKAGE, "--root", "${CLAUDE_PLUGIN_ROOT}", "--tz", "${TZ_NAME}"],
                "env": {"GREETING": "${GREETING:-hi}", "TOKEN": "${API_TOKEN}"},
            }
        },
    )
    out = installed(ally("install")).stdout
    assert f"\u2713 demo/py: MCP server, uvx {PY_PACKAGE} [{PY_PACKAGE} 1.0.0] (installed)" in out
    # Resolved once, every package pinned: allydemo-greet>=1.0 chose the newest, 2.0.0.
    assert lock_text(home, "demo+py") == "allydemo-greet==2.0.0\nallydemo-mcp==1.0.0\n"
    # Compiled at install: the host's first start does not wait for it.
    site = next(env_of(home, "demo+py").glob("lib/python*/site-packages"))
    assert list((site / "__pycache__").glob("allydemo_mcp.*.pyc"))
    result = ally_launch(
        "demo",
        "py",
        env={"API_TOKEN": "s3cret", "HOST_ONLY": "not for servers"},
        calls=[
            ("argv", {}),
            ("env", {"name": "GREETING"}),
            ("env", {"name": "TOKEN"}),
            ("env", {"name": "HOST_ONLY"}),
            ("greet", {"who": "ally"}),
        ],
    )
    assert (result["server"], result["version"]) == (PY_PACKAGE, "1.0.0")
    argv, greeting, token, host_only, greet = result["calls"]
    assert json.loads(argv) == ["--root", str(plugin_dir), "--tz", ""]
    assert json.loads(greeting) == "hi"
    assert json.loads(token) == "s3cret"
    assert json.loads(host_only) is None  # a minimal environment, the declared env on top
    assert greet == "hello ally from allydemo_greet 2.0.0"


def test_an_unset_variable_is_passed_empty_with_one_warning(home, tmp_path):
    write_claude_plugin(
        home, "demo", {"py": {**PY_SERVER_ENTRY, "env": {"TOKEN": "${NO_SUCH_VAR}"}}}
    )
    installed(ally("install"))
    errlog = tmp_path / "stderr"
    result = mcp_session(
        sys.executable,
        ["-m", "ally_core.cli", "mcp", "launch", "demo", "py"],
        host_environ(home),
        calls=[("env", {"name": "TOKEN"})],
        errlog=errlog,
    )
    assert result["calls"] == ['""']
    assert "ally: demo/py: ${NO_SUCH_VAR} is not set; passing an empty value" in errlog.read_text()


def test_versions_stay_pinned_until_update_resolves_again(
    home, index_dir, later_wheels, ally_launch
):
    write_claude_plugin(home, "demo", {"py": PY_SERVER_ENTRY})
    installed(ally("install"))
    first_env = env_of(home, "demo+py")
    shutil.copy(later_wheels / f"{PY_PACKAGE.replace('-', '_')}-2.0.0-py3-none-any.whl", index_dir)
    # A newer version on the index changes nothing: not a later install, not a rebuild.
    out = installed(ally("install")).stdout
    assert f"[{PY_PACKAGE} 1.0.0]" in out and "(installed)" not in out
    out = installed(ally("reinstall", "demo")).stdout
    assert f"[{PY_PACKAGE} 1.0.0]" in out
    assert env_of(home, "demo+py") != first_env  # rebuilt, from the same lock
    assert ally_launch("demo", "py")["version"] == "1.0.0"
    out = installed(ally("update", "demo")).stdout
    assert f"\u2713 demo/py: MCP server, uvx {PY_PACKAGE} [{PY_PACKAGE} 2.0.0] (updated)" in out
    assert "allydemo-mcp==2.0.0" in lock_text(home, "demo+py")
    assert ally_launch("demo", "py")["version"] == "2.0.0"
    updated_env = env_of(home, "demo+py")
    out = installed(ally("update", "demo")).stdout
    assert "(updated)" not in out  # resolved again, the same versions: nothing rebuilt
    assert env_of(home, "demo+py") == updated_env


def test_editing_the_declared_version_resolves_again(home, index_dir, later_wheels, ally_launch):
    shutil.copy(later_wheels / f"{PY_PACKAGE.replace('-', '_')}-2.0.0-py3-none-any.whl", index_dir)
    plugin_dir = write_claude_plugin(
        home, "demo", {"py": {"command": "uvx", "args": [f"{PY_PACKAGE}@1.0.0"]}}
    )
    installed(ally("install"))
    assert ally_launch("demo", "py")["version"] == "1.0.0"
    (plugin_dir / ".mcp.json").write_text(
        json.dumps({"py": {"command": "uvx", "args": [PY_PACKAGE]}})
    )
    # The launch record is out of date (.mcp.json changed): the full path resolves and builds.
    assert ally_launch("demo", "py")["version"] == "2.0.0"


def test_a_ready_server_starts_with_the_network_cut(home, index_dir, ally_launch):
    write_claude_plugin(home, "demo", {"py": PY_SERVER_ENTRY})
    installed(ally("install"))
    env = env_of(home, "demo+py")
    shutil.rmtree(index_dir)  # no index, no wheel anywhere
    shutil.rmtree(home / "cache")  # and no package cache
    assert ally_launch("demo", "py")["version"] == "1.0.0"  # from the launch record
    (state(home, "demo+py") / "launch.record").unlink()
    assert ally_launch("demo", "py")["version"] == "1.0.0"  # the full path: checks, no build
    assert env_of(home, "demo+py") == env
    assert (state(home, "demo+py") / "launch.record").is_file()  # and the record is back


def test_launch_builds_a_missing_env_with_progress_on_stderr_only(home, ally_launch, tmp_path):
    write_claude_plugin(home, "demo", {"py": PY_SERVER_ENTRY})
    errlog = tmp_path / "stderr"
    result = ally_launch("demo", "py", errlog=errlog)  # the SDK would fail on a stray stdout byte
    assert result["version"] == "1.0.0"
    log = errlog.read_text()
    assert "Resolving allydemo-mcp" in log
    assert "Dependencies installed for 'demo/py'" in log
    assert not list(state(home, "demo+py").glob(".build-*"))  # the builder's log is gone


def test_a_server_that_exits_at_once_gives_one_line_with_its_stderr_tail(home):
    write_claude_plugin(
        home, "demo", {"py": {**PY_SERVER_ENTRY, "env": {"ALLYDEMO_MCP_FAIL": "no API key"}}}
    )
    installed(ally("install"))
    proc = subprocess.Popen(
        [sys.executable, "-m", "ally_core.cli", "mcp", "launch", "demo", "py"],
        stdin=subprocess.PIPE,  # kept open, as a host keeps it: the server left on its own
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=host_environ(home),
    )
    try:
        assert proc.wait(timeout=60) == 3  # the server's own exit code: it replaced ally
        lines = proc.stderr.read().decode().splitlines()
    finally:
        proc.stdin.close()
    assert lines[-1] == (
        "ally: demo/py exited at once: allydemo-mcp: starting | "
        "allydemo-mcp: cannot start: ALLYDEMO_MCP_FAIL=no API key"
    )
    assert proc.stdout.read() == b""


def test_a_server_stopped_by_its_host_says_nothing_more(home):
    write_claude_plugin(home, "demo", {"py": PY_SERVER_ENTRY})
    installed(ally("install"))
    proc = subprocess.run(
        [sys.executable, "-m", "ally_core.cli", "mcp", "launch", "demo", "py"],
        input=json.dumps({"jsonrpc": "2.0", "id": 1, "method": "ping"}) + "\n",
        capture_output=True,
        text=True,
        env=host_environ(home),
        timeout=60,
    )
    assert proc.returncode == 0
    assert json.loads(proc.stdout) == {"jsonrpc": "2.0", "id": 1, "result": {}}
    assert "exited at once" not in proc.stderr


def test_config_points_straight_into_ready_envs_and_via_launch_through_ally(home):
    demo = write_claude_plugin(
        home,
        "demo",
        {
            "py": {
                "command": "uvx",
                "args": [PY_PACKAGE, "--root", "${CLAUDE_PLUGIN_ROOT}", "${KEEP_ME}"],
                "env": {"GREETING": "${GREETING:-hi}"},
            },
            "api": {"type": "http", "url": "https://example.com/mcp", "headers": {"X": "${TOKEN}"}},
        },
    )
    write_claude_plugin(home, "other", {"py": PY_SERVER_ENTRY}, form="bare")
    result = ally("mcp", "config")
    assert result.returncode == 0, result.stderr
    servers = json.loads(result.stdout)["mcpServers"]
    assert set(servers) == {"demo-py", "other-py", "api"}
    entry = servers["demo-py"]
    store = home / "plugin-envs" / ".store"
    assert Path(entry["command"]).parent.parent.parent == store
    assert entry["command"].endswith(f"/bin/{PY_PACKAGE}")
    # The plugin root is filled in; other references are left for the host (no secret copied).
    assert entry["args"] == ["--root", str(demo), "${KEEP_ME}"]
    assert entry["env"] == {"GREETING": "${GREETING:-hi}"}
    assert servers["api"] == {
        "type": "http",
        "url": "https://example.com/mcp",
        "headers": {"X": "${TOKEN}"},
    }
    # Both plugins ask for the same packages: one env, shared.
    assert Path(servers["other-py"]["command"]).parent == Path(entry["command"]).parent
    started = mcp_session(
        entry["command"], entry["args"], {"GREETING": "hey"}, calls=[("env", {"name": "GREETING"})]
    )
    assert (started["version"], started["calls"]) == ("1.0.0", ['"hey"'])

    result = ally("mcp", "config", "--via-launch", "demo")
    assert result.returncode == 0, result.stderr
    servers = json.loads(result.stdout)["mcpServers"]
    assert set(servers) == {"py", "api"}
    entry = servers["py"]
    assert entry["command"] == sys.executable and entry["args"][0] == "-I"
    assert entry["args"][-6:] == ["--home", str(home), "mcp", "launch", "demo", "py"]
    # The SDK's default environment only (no ALLY_HOME): the entry names the home itself.
    started = mcp_session(entry["command"], entry["args"], None, calls=[("argv", {})])
    assert started["version"] == "1.0.0"
    assert json.loads(started["calls"][0]) == ["--root", str(demo), ""]


def test_via_launch_heals_a_removed_env(home):
    write_claude_plugin(home, "demo", {"py": PY_SERVER_ENTRY})
    entry = json.loads(ally("mcp", "config", "--via-launch").stdout)["mcpServers"]["py"]
    assert installed(ally("remove", "demo")).stdout == "removed the env of demo/py\n"
    assert mcp_session(entry["command"], entry["args"], host_environ(home))["version"] == "1.0.0"


def test_doctor_finds_a_broken_server_env_and_fix_repairs_it(home, ally_launch):
    write_claude_plugin(home, "demo", {"py": PY_SERVER_ENTRY})
    installed(ally("install"))
    site = next(env_of(home, "demo+py").glob("lib/python*/site-packages"))
    (site / "allydemo_mcp.py").unlink()
    result = ally("doctor")
    assert result.returncode == 4
    assert (
        "\u2717 demo/py: installed files: allydemo_mcp: allydemo_mcp.py is missing" in result.stdout
    )
    result = ally("doctor", "--fix", "demo")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "\u2192 repaired" in result.stdout
    assert ally_launch("demo", "py")["version"] == "1.0.0"
    result = ally("doctor", "--json", "demo")
    (report,) = json.loads(result.stdout)["mcp_servers"]
    assert (report["server"], report["healthy"], report["launcher"]) == ("py", True, "uvx")


def test_bundle_installs_and_starts_with_no_index_at_all(home, index_dir, tmp_path, ally_launch):
    write_claude_plugin(home, "demo", {"py": PY_SERVER_ENTRY})
    installed(ally("install"))
    archive = tmp_path / "demo.ally.tar.gz"
    installed(ally("bundle", "demo", "-o", str(archive)))
    other = tmp_path / "elsewhere"
    (other / "plugins").mkdir(parents=True)
    (other / "config.toml").write_text(
        f'[ally.index]\nno_index = true\nfind_links = ["{tmp_path / "nothing-here"}"]\n'
    )
    shutil.rmtree(index_dir)
    out = installed(ally("install", str(archive), env={"ALLY_HOME": str(other)})).stdout
    assert f"\u2713 demo/py: MCP server, uvx {PY_PACKAGE} [{PY_PACKAGE} 1.0.0] (installed)" in out
    assert ally_launch("demo", "py", env={"ALLY_HOME": str(other)})["version"] == "1.0.0"


def test_gc_keeps_server_envs_and_removes_what_gone_servers_left(home):
    write_claude_plugin(home, "a", {"py": PY_SERVER_ENTRY})
    other = write_claude_plugin(home, "b", {"py": PY_SERVER_ENTRY})
    out = installed(ally("install")).stdout
    assert "\u2713 b/py: MCP server" in out and "(shared env)" in out
    result = ally("gc", "--json")
    assert json.loads(result.stdout)["removed"] == []
    shutil.rmtree(other)
    gone = json.loads(ally("gc", "--json").stdout)["removed"]
    assert sorted((r["path"], r["why"]) for r in gone) == [
        (str(home / "plugin-envs" / ".mcp" / "b+py"), "MCP server is gone"),
        (str(home / "plugin-envs" / "b+py"), "plugin 'b+py' is gone"),
    ]
    assert not (home / "plugin-envs" / "b+py").exists()
    assert not state(home, "b+py").exists()
    assert (home / "plugin-envs" / "a+py").resolve().is_dir()  # the shared env stays
    assert "\u2713 a/py" in ally("list").stdout


def test_a_python_script_of_the_plugin_runs_in_an_env_of_its_requirements(home, ally_launch):
    write_claude_plugin(
        home,
        "scripted",
        {"srv": {"command": "python3", "args": ["${CLAUDE_PLUGIN_ROOT}/server.py", "x"]}},
        files={
            "server.py": SOURCES.PY_SERVER.format(version="script"),
            "requirements.txt": "allydemo-greet==1.0.0\n",
        },
    )
    out = installed(ally("install")).stdout
    assert "\u2713 scripted/srv: MCP server, python with requirements.txt (installed)" in out
    result = ally_launch("scripted", "srv", calls=[("greet", {"who": "me"}), ("argv", {})])
    assert result["version"] == "script"
    assert result["calls"] == ["hello me from allydemo_greet 1.0.0", '["x"]']


def test_other_commands_run_as_declared_in_a_minimal_environment(home, ally_launch):
    plugin_dir = write_claude_plugin(
        home,
        "plain",
        {
            "srv": {
                "command": sys.executable,
                "args": ["${CLAUDE_PLUGIN_ROOT}/server.py"],
                "env": {"GREETING": "declared"},
            }
        },
        files={
            "server.py": SOURCES.PY_SERVER.format(version="plain"),
            "allydemo_greet.py": "def greet(who):\n    return 'local ' + who\n",
        },
    )
    out = installed(ally("install")).stdout
    assert "\u2713 plain/srv: MCP server, as declared (no requirements.txt or pyproject.toml" in out
    assert not (home / "plugin-envs" / "plain+srv").exists()
    result = ally_launch(
        "plain",
        "srv",
        env={"SECRET": "x"},
        calls=[("env", {"name": "GREETING"}), ("env", {"name": "SECRET"})],
    )
    assert result["calls"] == ['"declared"', "null"]
    assert plugin_dir.is_dir()


def test_list_and_install_json_describe_servers(home):
    write_claude_plugin(home, "demo", {"py": PY_SERVER_ENTRY})
    (listed,) = json.loads(ally("list", "--json").stdout)["mcp_servers"]
    assert (listed["status"], listed["reason"], listed["launcher"]) == (
        "pending",
        "not installed",
        "uvx",
    )
    (done,) = json.loads(installed(ally("install", "--json")).stdout)["mcp_servers"]
    assert (done["status"], done["action"], done["packages"][PY_PACKAGE]) == (
        "ready",
        "built",
        "1.0.0",
    )
    assert done["command"][0].endswith(f"/bin/{PY_PACKAGE}")
    assert os.path.isdir(done["env"])
    # The CLI reference documents exactly these keys.
    docs = (Path(__file__).resolve().parents[2] / "docs" / "reference" / "cli.md").read_text()
    examples = [json.loads(block) for block in re.findall(r"```json\n(.*?)```", docs, re.S)]
    (documented,) = [e["mcp_servers"][0] for e in examples if "mcp_servers" in e]
    assert set(documented) == set(done) == set(listed)


def test_a_broken_plugin_blocks_only_itself(home):
    write_claude_plugin(home, "good", {"py": PY_SERVER_ENTRY})
    write_claude_plugin(home, "bad", {"py": {"command": "uvx", "args": 3}})
    result = ally("install")
    assert result.returncode == 4
    assert "\u2713 good/py" in result.stdout
    assert (
        "\u2717 bad/py: bad: .mcp.json: $.mcpServers.py.args: expected a list of strings"
        in result.stdout
    )


def test_a_warm_start_through_the_record_imports_nothing_of_ally(home, tmp_path):
    write_claude_plugin(home, "demo", {"py": PY_SERVER_ENTRY})
    installed(ally("install"))
    entry = json.loads(ally("mcp", "config", "--via-launch").stdout)["mcpServers"]["py"]
    command, args = entry["command"], ["-X", "importtime", *entry["args"]]
    errlog = tmp_path / "stderr"
    assert mcp_session(command, args, host_environ(home), errlog=errlog)["version"] == "1.0.0"
    imported = [line.rpartition("|")[2].strip() for line in errlog.read_text().splitlines()]
    assert "select" in imported  # the launcher's own imports were seen
    assert not [m for m in imported if m.startswith("ally_core") or m in {"json", "re", "typing"}]
    # And a stale record hands over to ally, which imports it.
    (home / "plugins" / "demo" / ".mcp.json").write_text(json.dumps({"py": PY_SERVER_ENTRY}))
    assert mcp_session(command, args, host_environ(home), errlog=errlog)["version"] == "1.0.0"
    assert "ally_core.host" in errlog.read_text()


def test_a_package_that_cannot_be_resolved_blocks_that_server_with_the_reason(home):
    write_claude_plugin(
        home,
        "demo",
        {"gone": {"command": "uvx", "args": ["no-such-package"]}, "ok": PY_SERVER_ENTRY},
    )
    result = ally("install")
    assert result.returncode == 4
    assert "\u2713 demo/ok: MCP server" in result.stdout
    (line,) = [x for x in result.stdout.splitlines() if "demo/gone" in x]
    assert line.startswith("\u2717 demo/gone: demo/gone: resolving no-such-package failed")
    assert "no-such-package" in line.partition("failed")[2]  # uv's own words follow
    listed = ally("list").stdout
    assert "\u2026 demo/gone: install failed: demo/gone: resolving no-such-package failed" in listed
    launched = subprocess.run(
        [sys.executable, "-m", "ally_core.cli", "mcp", "launch", "demo", "gone"],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        env=host_environ(home),
        timeout=120,
    )
    assert (launched.returncode, launched.stdout) == (4, "")
    assert launched.stderr.splitlines()[-1].startswith(
        "ally: error: demo/gone: resolving no-such-package failed"
    )
