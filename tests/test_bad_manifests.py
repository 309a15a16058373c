"""One bad plugin.json blocks only its own plugin, on the first load and on every later one.

Real files and the real CLI in subprocesses. A manifest is put into the warm index only once
it has settled (``SETTLE_NS``: a file changed in the last seconds may change again unseen), so
each scenario runs the CLI on fresh files, then again after they settled (that run writes the
index) and once more (that run reads it).
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import pytest

import ally_core.discovery
from ally_core import Host
from ally_core.warm_index import INDEX_NAME, WarmIndex, decode

ECHO = "import json, sys; print(json.dumps({'success': True, 'result': json.load(sys.stdin)}))"
OK = {"name": "ok", "tools": [{"name": "echo", "command": "python3", "args": ["-c", ECHO]}]}


def _write(plugins: Path, name: str, text: str) -> Path:
    (plugins / name).mkdir(parents=True, exist_ok=True)
    path = plugins / name / "plugin.json"
    path.write_text(text, "utf-8")
    return path


def _settle() -> None:
    """Wait until every file written so far counts as settled (its ctime too: os.utime
    cannot age a ctime)."""
    time.sleep(ally_core.discovery.SETTLE_NS / 1e9 + 0.2)


def _listed(ally_cli: Any, env: dict[str, str]) -> dict[str, Any]:
    proc = ally_cli("list", "--json", env=env)
    assert proc.returncode == 0, proc.stderr
    return {p["name"]: p for p in json.loads(proc.stdout)["plugins"]}


def _check_every_command(ally_cli: Any, bad: dict[str, str], env: dict[str, str]) -> None:
    proc = ally_cli("list", "--json", env=env)
    assert proc.returncode == 0, proc.stderr
    plugins = {p["name"]: p for p in json.loads(proc.stdout)["plugins"]}
    assert plugins["ok"]["status"] == "ready", plugins["ok"]
    for name, expected in bad.items():
        assert plugins[name]["status"] == "blocked", plugins[name]
        reason = plugins[name]["reason"]
        assert expected in reason and "\n" not in reason, reason
        assert "internal error" not in reason and "Traceback" not in reason
    text = ally_cli("list", env=env)
    assert text.returncode == 0, text.stderr
    assert "\u2713 ok: echo" in text.stdout
    assert len([line for line in text.stdout.splitlines() if line.startswith("\u2717")]) == len(bad)
    run = ally_cli("run", "ok", "echo", "--input", '{"n": 1}', env=env)
    assert run.returncode == 0, run.stderr
    assert json.loads(run.stdout)["result"] == {"n": 1}
    assert ally_cli("install", "ok", "-q", env=env).returncode == 0
    for name, expected in bad.items():
        run = ally_cli("run", name, "t", env=env)
        assert run.returncode == 1, (run.stdout, run.stderr)
        (line,) = run.stderr.splitlines()
        assert line.startswith(f"ally: error: {name}: blocked: ") and expected in line, line


def _deep(plugins: Path) -> None:
    _write(plugins, "bad", '{"name": "bad", "x": ' + "[" * 600 + "]" * 600 + "}")


def _bigint(plugins: Path) -> None:
    _write(plugins, "bad", '{"name": "bad", "x": ' + "9" * 5000 + "}")


def _huge(plugins: Path) -> None:
    # 200 MB that cost nothing on disk: the limit is checked with stat, before reading.
    huge = _write(plugins, "bad", '{"name": "bad", "description": "')
    os.truncate(huge, 200 * 1024 * 1024)


def _over_configured_limit(plugins: Path) -> None:
    # Valid, but larger than the limit config.toml sets.
    _write(plugins, "bad", json.dumps({"name": "bad", "description": "x" * 10000}))
    config = plugins.parent / "config.toml"
    config.write_text("[ally]\nmanifest_max_bytes = 8192\n" + config.read_text())


@pytest.mark.parametrize(
    ("write", "expected"),
    [
        (_deep, "$.x: nested more than 100 levels deep"),
        (_bigint, "invalid JSON: a number has too many digits"),
        (_huge, "is 209715200 bytes, larger than the limit of 1048576 bytes"),
        (_over_configured_limit, "is 10034 bytes, larger than the limit of 8192 bytes"),
    ],
    ids=["600-levels", "5000-digits", "200-MB", "over-configured-limit"],
)
def test_a_bad_manifest_blocks_only_itself_now_and_after_the_warm_index_settled(
    ally_home: Path, ally_cli: Any, write: Any, expected: str
) -> None:
    plugins = ally_home / "plugins"
    _write(plugins, "ok", json.dumps(OK))
    write(plugins)
    _check_every_command(ally_cli, {"bad": expected}, {})
    _settle()
    for _ in range(2):  # the first run writes the warm index, the second reads it
        _check_every_command(ally_cli, {"bad": expected}, {})
    index = decode((ally_home / "plugin-envs" / ".state" / INDEX_NAME).read_bytes())
    assert index is not None
    assert list(index["manifests"]) == [str(plugins / "ok" / "plugin.json")]


def test_manifest_size_limit_is_configurable_by_variable_and_a_file_at_the_limit_loads(
    ally_home: Path, ally_cli: Any
) -> None:
    plugins = ally_home / "plugins"
    _write(plugins, "ok", json.dumps(OK))
    text = json.dumps({"name": "edge", "description": ""})
    text = json.dumps({"name": "edge", "description": "y" * (4096 - len(text))})
    assert len(text.encode()) == 4096
    _write(plugins, "edge", text)
    listed = _listed(ally_cli, {"ALLY_MANIFEST_MAX_BYTES": "4096"})
    assert listed["edge"]["status"] == "ready", listed["edge"]
    env = {"ALLY_MANIFEST_MAX_BYTES": "4095"}
    listed = _listed(ally_cli, env)
    assert listed["edge"]["status"] == "blocked"
    assert "is 4096 bytes, larger than the limit of 4095 bytes" in listed["edge"]["reason"]
    assert listed["ok"]["status"] == "ready"
    proc = ally_cli("config", "--json", env=env)
    setting = json.loads(proc.stdout)["settings"]["manifest_max_bytes"]
    assert setting == {"value": 4095, "source": "$ALLY_MANIFEST_MAX_BYTES"}


def test_a_manifest_over_the_limit_is_never_read(
    ally_home: Path, make_plugin: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    make_plugin("ok")
    huge = make_plugin("huge") / "plugin.json"
    os.truncate(huge, 50 * 1024 * 1024)
    read: list[str] = []
    real = ally_core.discovery.load_manifest

    def spy(plugin_dir: Path, **kw: Any) -> Any:
        read.append(plugin_dir.name)
        return real(plugin_dir, **kw)

    monkeypatch.setattr(ally_core.discovery, "load_manifest", spy)
    outcomes = {o.name: o for o in Host(ally_home).load()}
    assert outcomes["ok"].ready
    assert not outcomes["huge"].ready and "larger than the limit" in outcomes["huge"].reason
    assert read == ["ok"]


def test_a_manifest_growing_after_its_size_was_checked_is_read_only_up_to_the_limit(
    ally_home: Path, make_plugin: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    plugin = make_plugin("grows")
    real_stat = os.stat

    def stat_then_grow(path: Any, *a: Any, **kw: Any) -> Any:
        result = real_stat(path, *a, **kw)
        if str(path) == str(plugin / "plugin.json"):
            # Between the size check and the read, the file becomes much larger.
            (plugin / "plugin.json").write_text(json.dumps({"name": "grows", "d": "z" * 10**7}))
        return result

    monkeypatch.setattr(ally_core.discovery.os, "stat", stat_then_grow)
    (outcome,) = Host(ally_home).load()
    assert not outcome.ready
    assert outcome.reason.endswith("larger than 1048576 bytes"), outcome.reason


def test_an_unexpected_error_loading_one_manifest_blocks_only_that_plugin(
    ally_home: Path, make_plugin: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    make_plugin("ok")
    make_plugin("odd")
    real = ally_core.discovery.load_manifest

    def flaky(plugin_dir: Path, **kw: Any) -> Any:
        if plugin_dir.name == "odd":
            raise MemoryError()
        return real(plugin_dir, **kw)

    monkeypatch.setattr(ally_core.discovery, "load_manifest", flaky)
    outcomes = {o.name: o for o in Host(ally_home).load()}
    assert outcomes["ok"].ready
    assert outcomes["odd"].status == "blocked"
    assert outcomes["odd"].reason == "plugin.json: too large to load"


def test_the_warm_index_never_stores_a_value_too_deep_to_encode(tmp_path: Path) -> None:
    index = WarmIndex(tmp_path / "index.bin")
    deep: Any = []
    for _ in range(5000):
        deep = [deep]
    index.put("manifests", "/deep/plugin.json", [1, 2, 3, 4], {"x": deep})
    index.put("manifests", "/fine/plugin.json", [1, 2, 3, 4], {"x": [[1]]})
    assert index.save()
    again = WarmIndex(tmp_path / "index.bin")
    assert again.get("manifests", "/deep/plugin.json", [1, 2, 3, 4]) is None
    assert again.get("manifests", "/fine/plugin.json", [1, 2, 3, 4]) == {"x": [[1]]}
