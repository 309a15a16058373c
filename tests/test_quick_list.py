"""``ally list`` on the quick path: what the full path printed, while nothing it rests on
changed.

The full path of ``ally list`` (and ``ally list --json``) writes the home's list record when
every plugin is ready on its current env with no warning; the next ``ally list`` with the
same environment prints it without importing ally's core. Each test runs the real ``ally``
command (``python -m ally_core``, the console script's entry) under ``-X importtime`` to see
which path it took, and compares it with the full path (``ALLY_QUICK_RUN=0``).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from ally_core.testing import write_plugin

TOOL = "import json, sys; json.load(sys.stdin); print(json.dumps({'ok': 1}))\n"
PLAIN = {"tools": [{"name": "t", "command": "python3", "args": ["t.py"]}]}
SETTLE = 2.2  # nothing is recorded from files changed in the last 2 s


class Listed:
    def __init__(self, proc: subprocess.CompletedProcess[str]) -> None:
        lines = proc.stderr.splitlines()
        self.quick = not any(line.endswith("| ally_core.cli") for line in lines)
        self.code, self.stdout = proc.returncode, proc.stdout
        self.stderr = "".join(f"{x}\n" for x in lines if not x.startswith("import time:"))

    def same(self) -> tuple[int, str, str]:
        return self.code, self.stdout, self.stderr


def _ally(*args: str, env: dict[str, str] | None = None) -> Listed:
    return Listed(
        subprocess.run(
            [sys.executable, "-X", "importtime", "-m", "ally_core", *args],
            text=True,
            capture_output=True,
            env={**os.environ, **(env or {})},
            timeout=120,
        )
    )


def _full(*args: str) -> Listed:
    return _ally(*args, env={"ALLY_QUICK_RUN": "0"})


def _settled_quick(*args: str) -> Listed:
    """Settle, let the full path write the record, then list on the quick path."""
    time.sleep(SETTLE)
    _ally(*args)
    listed = _ally(*args)
    assert listed.quick, f"ally {' '.join(args)} did not take the quick path"
    return listed


@pytest.fixture
def plugins(make_plugin: Callable[..., Path]) -> list[Path]:
    return [make_plugin(name, PLAIN, {"t.py": TOOL}) for name in ("alpha", "beta")]


@pytest.mark.parametrize("args", [("list",), ("list", "--json"), ("-q", "list"), ("list", "-q")])
def test_the_quick_list_prints_what_the_full_path_prints(plugins: list[Path], args) -> None:
    quick = _settled_quick(*args)
    full = _full(*args)
    assert not full.quick
    assert quick.same() == full.same()
    assert "alpha" in quick.stdout and "beta" in quick.stdout


def test_a_new_plugin_is_listed_at_once(plugins: list[Path], ally_home: Path) -> None:
    _settled_quick("list")
    write_plugin(ally_home / "plugins", "gamma", PLAIN, {"t.py": TOOL})
    listed = _ally("list")
    assert not listed.quick
    assert "gamma" in listed.stdout and listed.same() == _full("list").same()


def test_an_edited_manifest_is_listed_at_once(plugins: list[Path]) -> None:
    _settled_quick("list", "--json")
    manifest = plugins[0] / "plugin.json"
    data = json.loads(manifest.read_text("utf-8"))
    data["tools"].append({"name": "u", "command": "python3", "args": ["t.py"]})
    manifest.write_text(json.dumps(data), "utf-8")
    listed = _ally("list", "--json")
    assert not listed.quick
    tools = {
        p["name"]: [t["name"] for t in p["tools"]] for p in json.loads(listed.stdout)["plugins"]
    }
    assert tools["alpha"] == ["t", "u"]


def test_a_removed_env_is_listed_at_once(ally_home: Path, make_plugin) -> None:
    make_plugin(
        "env",
        {**PLAIN, "runtime": "python3", "dependencies": {"file": "requirements.txt"}},
        {"t.py": TOOL, "requirements.txt": "allydemo-greet\n"},
    )
    assert _ally("install", "-q").code == 0
    _settled_quick("list")
    shutil.rmtree((ally_home / "plugin-envs" / "env").resolve())
    listed = _ally("list")
    assert not listed.quick
    assert "needs rebuild" in listed.stdout and listed.same() == _full("list").same()


def test_plugins_not_ready_or_with_warnings_are_never_listed_from_a_record(
    plugins: list[Path], ally_home: Path, make_plugin
) -> None:
    make_plugin("pending", {**PLAIN, "runtime": "python3"}, {"t.py": TOOL})  # not installed
    time.sleep(SETTLE)
    for _ in range(2):
        listed = _ally("list")
        assert not listed.quick and "not installed" in listed.stdout
    shutil.rmtree(ally_home / "plugins" / "pending")
    make_plugin("warned", {**PLAIN, "colour": "blue"}, {"t.py": TOOL})  # an unknown key
    time.sleep(SETTLE)
    for _ in range(2):
        assert not _ally("list").quick


def test_a_claude_style_plugin_turns_up_in_the_list_at_once(plugins: list[Path]) -> None:
    _settled_quick("list")
    claude = plugins[1] / ".claude-plugin"
    claude.mkdir()
    (claude / "plugin.json").write_text(json.dumps({"name": "beta-mcp"}), "utf-8")
    listed = _ally("list")
    assert not listed.quick
    assert listed.same() == _full("list").same()


def test_another_environment_and_quick_run_off_take_the_full_path(plugins: list[Path]) -> None:
    _settled_quick("list")
    assert not _ally("list", env={"ALLY_SOMETHING_ELSE": "1"}).quick
    assert not _full("list").quick
    assert not _ally("list", "-v").quick


def test_gc_keeps_the_list_records(plugins: list[Path], ally_home: Path) -> None:
    _settled_quick("list")
    records = sorted((ally_home / "plugin-envs" / ".run").glob(".list.*"))
    assert len(records) == 1
    gc = _ally("gc")
    assert gc.code == 0, gc.stderr
    assert records[0].exists()
    assert _ally("list").quick


@pytest.mark.parametrize("damage", [b"", b"garbage", b"ally-run-record 1 "])
def test_a_damaged_record_is_ignored_and_written_again(
    plugins: list[Path], ally_home: Path, damage: bytes
) -> None:
    """A truncated or foreign record costs one full run, never a wrong answer or an error."""
    run = ("run", "alpha", "t", "--input", "{}")
    _settled_quick(*run)
    _settled_quick("list")
    records = sorted((ally_home / "plugin-envs" / ".run").iterdir())
    assert {r.name.split(".")[0] or r.name.split(".")[1] for r in records} == {"alpha", "list"}
    for record in records:
        record.write_bytes(damage)
    for args in (run, ("list",)):
        listed = _ally(*args)
        assert not listed.quick
        assert listed.same() == _full(*args).same()
        assert _ally(*args).quick, "the full path did not write the record again"
