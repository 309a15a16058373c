"""An env's life: when it is rebuilt, update/reinstall/remove/gc, and where its files live.

Builds are counted as published envs in the store (a rebuild always makes a new env dir,
a marker is written only when an env is complete) or, for ``install_command`` plugins, as
lines the install command appends to a counter file.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ally_core import Host
from ally_core.testing import build_wheel

MAIN = (
    "import json, sys, allydemo_greet\n"
    "args = json.load(sys.stdin)\n"
    "print(json.dumps({'success': True, 'result': allydemo_greet.greet(args.get('who', 'x'))}))\n"
)
GREETER = {
    "runtime": "python3",
    "dependencies": {"file": "requirements.txt"},
    "tools": [{"name": "hello", "command": "python3", "args": ["main.py"]}],
}
# An install command that counts its runs, then installs like pip would.
COUNTING_INSTALL = (
    "import subprocess, sys\n"
    "with open('builds.log', 'a') as fh:\n"
    "    fh.write(' '.join(sys.argv[1:]) + '\\n')\n"
    "subprocess.check_call([sys.executable, '-m', 'pip', 'install', '-q', '--no-index',\n"
    "                       '--find-links', sys.argv[1], '-r', 'requirements.txt'])\n"
)


def _corrupt_wheel(index: Path, version: str) -> Path:
    """A wheel whose metadata reads fine but whose module's bytes are damaged (bad CRC)."""
    wheel = build_wheel(
        index, "allydemo-greet", version, files={"allydemo_greet.py": "x = 1\n" * 2000}
    )
    data = bytearray(wheel.read_bytes())
    start = data.find(b"allydemo_greet.py") + len("allydemo_greet.py") + 20
    for i in range(start, start + 30):
        data[i] ^= 0xFF
    wheel.write_bytes(bytes(data))
    return wheel


def _greeter(make_plugin, name: str = "greeter", requirements: str = "allydemo-greet\n"):
    return make_plugin(name, GREETER, {"requirements.txt": requirements, "main.py": MAIN})


def _published(home: Path) -> list[Path]:
    """Env dirs of the store that are complete (have their marker)."""
    store = home / "plugin-envs" / ".store"
    return sorted(p for p in store.iterdir() if (p / ".installed").is_file())


def _unfinished(home: Path) -> list[Path]:
    store = home / "plugin-envs" / ".store"
    return sorted(p for p in store.iterdir() if not (p / ".installed").exists())


def _pointer(home: Path, name: str) -> str:
    return os.readlink(home / "plugin-envs" / name)


def _run_tool(ally_cli, name: str = "greeter", who: str = "ally") -> str:
    proc = ally_cli("run", name, "hello", "--input", json.dumps({"who": who}), "-q")
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert result["success"], result
    return str(result["result"])


def _json(proc: subprocess.CompletedProcess[str]) -> dict:
    return {p["name"]: p for p in json.loads(proc.stdout)["plugins"]}


def _tree(plugin_dir: Path) -> dict[str, str]:
    return {
        str(p.relative_to(plugin_dir)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(plugin_dir.rglob("*"))
        if p.is_file()
    }


# -- rebuild rules -----------------------------------------------------------------------------


def test_unchanged_plugin_is_not_rebuilt_and_spawns_nothing(ally_home: Path, make_plugin, no_spawn):
    plugin = _greeter(make_plugin)
    (first,) = Host(ally_home).load()
    assert first.action == "built"
    # Files the env does not depend on may change freely.
    (plugin / "main.py").write_text(MAIN + "# edited\n")
    (plugin / "README.md").write_text("notes\n")
    with no_spawn():
        (again,) = Host(ally_home).load()
    assert again.ready and again.action == "none"
    assert again.env.path == first.env.path
    assert _published(ally_home) == [first.env.path]


def test_changed_dependency_file_rebuilds_once(ally_home: Path, make_plugin):
    plugin = _greeter(make_plugin, requirements="allydemo-greet==1.0.0\n")
    (first,) = Host(ally_home).load()
    assert first.packages == {"allydemo-greet": "1.0.0"}
    (plugin / "requirements.txt").write_text("allydemo-greet==2.0.0\n")
    (second,) = Host(ally_home).load()
    assert second.ready, second.reason
    assert second.action in {"built", "repaired"}
    assert second.packages == {"allydemo-greet": "2.0.0"}
    assert second.env.path != first.env.path
    assert len(_published(ally_home)) == 2
    assert second.tool("hello").call({"who": "a"}).result == "hello a from allydemo_greet 2.0.0"
    (third,) = Host(ally_home).load()
    assert third.action == "none" and len(_published(ally_home)) == 2


def test_changed_install_command_rebuilds(ally_home: Path, make_plugin, wheelhouse: Path):
    def write(tag: str) -> Path:
        manifest = {
            **GREETER,
            "dependencies": {"install_command": f"python install.py {wheelhouse} {tag}"},
        }
        return make_plugin(
            "greeter",
            manifest,
            {
                "install.py": COUNTING_INSTALL,
                "requirements.txt": "allydemo-greet==1.0.0\n",
                "main.py": MAIN,
            },
        )

    plugin = write("one")
    (first,) = Host(ally_home).load()
    assert first.ready, first.reason
    (same,) = Host(ally_home).load()
    assert same.action == "none"
    assert (plugin / "builds.log").read_text().split("\n")[:-1] == [f"{wheelhouse} one"]

    write("two")
    (second,) = Host(ally_home).load()
    assert second.ready, second.reason
    assert second.action in {"built", "repaired"}
    assert second.env.path != first.env.path
    assert (plugin / "builds.log").read_text().split("\n")[:-1] == [
        f"{wheelhouse} one",
        f"{wheelhouse} two",
    ]
    assert second.tool("hello").call({"who": "b"}).result == "hello b from allydemo_greet 1.0.0"


def test_changed_base_interpreter_rebuilds_with_the_new_one(
    ally_home: Path, make_plugin, monkeypatch
):
    other = Path.home() / ".pyenv" / "versions" / "3.12.1" / "bin" / "python3.12"
    if not other.exists():
        pytest.skip(f"{other} is not installed")
    _greeter(make_plugin)
    (first,) = Host(ally_home).load()
    assert first.env.interpreter.version == ".".join(map(str, sys.version_info[:3]))
    monkeypatch.setenv("ALLY_PYTHON", str(other))
    (second,) = Host(ally_home).load()
    assert second.ready, second.reason
    assert second.action in {"built", "repaired"}
    assert second.env.interpreter.version == "3.12.1"
    assert second.env.path != first.env.path
    version = subprocess.run(
        [
            str(ally_home / "plugin-envs" / "greeter" / "bin" / "python"),
            "-c",
            "import sys; print(sys.version_info[:2])",
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    assert version == "(3, 12)"
    assert len(_published(ally_home)) == 2


def test_every_state_says_why_with_the_current_inputs_only(
    ally_home: Path, make_plugin, ally_cli, tmp_path: Path
):
    _greeter(make_plugin)
    assert ally_cli("install", "-q").returncode == 0
    # Another installer: list says so before, and the rebuild names it after.
    pip = {"ALLY_INSTALLER": "pip"}
    listed = _json(ally_cli("list", "--json", env=pip))["greeter"]
    assert (listed["status"], listed["reason"]) == (
        "pending",
        "needs rebuild: installer changed (uv \u2192 pip)",
    )
    installed = _json(ally_cli("install", "--json", env=pip))["greeter"]
    assert installed["action"] == "repaired"
    assert installed["repair_reason"] == "installer changed (uv \u2192 pip)"
    # Another interpreter setting (the same Python through another path).
    python = tmp_path / "python3"
    python.symlink_to(os.path.realpath(sys.executable))
    chosen = {**pip, "ALLY_PYTHON": str(python)}
    change = f"interpreter (ALLY_PYTHON) changed (unset \u2192 {python})"
    assert _json(ally_cli("list", "--json", env=chosen))["greeter"]["reason"] == (
        f"needs rebuild: {change}"
    )
    text = ally_cli("install", env=chosen)
    assert text.returncode == 0, text.stderr
    assert f"\u2713 greeter: hello (repaired: {change})" in text.stdout.splitlines()
    # A damaged env says what is wrong with it.
    env = Path(_json(ally_cli("list", "--json", env=chosen))["greeter"]["env"])
    (env / "bin" / "python").unlink()
    reason = _json(ally_cli("list", "--json", env=chosen))["greeter"]["reason"]
    assert reason.startswith("needs rebuild: env python ") and "is missing" in reason
    # A failure is shown for the inputs it happened with, never once they changed back.
    make_plugin("fresh", GREETER, {"requirements.txt": "allydemo-greet\n", "main.py": MAIN})
    missing = {**pip, "ALLY_PYTHON": str(tmp_path / "no-such-python")}
    assert ally_cli("install", "fresh", "-q", env=missing).returncode == 4
    reason = _json(ally_cli("list", "--json", env=missing))["fresh"]["reason"]
    assert reason.startswith("install failed: ") and "no-such-python" in reason
    listed = _json(ally_cli("list", "--json", env=pip))["fresh"]
    assert (listed["status"], listed["reason"]) == ("pending", "not installed")


# -- update, reinstall, remove, gc ------------------------------------------------------------


@pytest.fixture
def own_index(ally_home: Path, tmp_path: Path) -> Path:
    """A find-links dir of the home's own that starts with allydemo-greet 1.0.0 only."""
    index = tmp_path / "index"
    build_wheel(
        index, "allydemo-greet", "1.0.0", console_scripts={"allydemo-greet": "allydemo_greet:cli"}
    )
    (ally_home / "config.toml").write_text(
        f"[ally.index]\nno_index = true\nfind_links = [{json.dumps(str(index))}]\n"
    )
    return index


def test_update_moves_to_the_newest_allowed_version_only_when_asked(
    ally_home: Path, make_plugin, own_index: Path, ally_cli, no_spawn
):
    _greeter(make_plugin, requirements="allydemo-greet>=1.0\n")
    assert _run_tool(ally_cli) == "hello ally from allydemo_greet 1.0.0"
    old = _pointer(ally_home, "greeter")

    build_wheel(
        own_index,
        "allydemo-greet",
        "2.0.0",
        console_scripts={"allydemo-greet": "allydemo_greet:cli"},
    )
    # A plain load keeps what was resolved: nothing changed in the plugin.
    with no_spawn():
        (outcome,) = Host(ally_home).load()
    assert outcome.packages == {"allydemo-greet": "1.0.0"}

    proc = ally_cli("update", "greeter", "--json")
    assert proc.returncode == 0, proc.stderr
    updated = _json(proc)["greeter"]
    assert updated["action"] == "updated"
    assert updated["packages"] == {"allydemo-greet": "2.0.0"}
    assert _pointer(ally_home, "greeter") != old
    assert _run_tool(ally_cli) == "hello ally from allydemo_greet 2.0.0"
    # The env it replaced is kept as the backup until gc.
    backup = ally_home / "plugin-envs" / ".state" / "greeter.previous"
    assert backup.resolve() == (ally_home / "plugin-envs" / old).resolve()


def test_failed_update_to_a_corrupt_wheel_keeps_the_old_env_working(
    ally_home: Path, make_plugin, own_index: Path, ally_cli
):
    _greeter(make_plugin, requirements="allydemo-greet>=1.0\n")
    assert _run_tool(ally_cli).endswith("1.0.0")
    old = _pointer(ally_home, "greeter")
    _corrupt_wheel(own_index, "3.0.0")

    proc = ally_cli("update", "greeter")
    assert proc.returncode != 0
    assert proc.returncode == 4
    (line,) = [line for line in proc.stdout.splitlines() if "greeter" in line]
    assert line.startswith("! greeter: hello; ")
    assert "3.0.0" in line and "previous env is kept" in line
    assert _pointer(ally_home, "greeter") == old
    assert _unfinished(ally_home) == []
    assert _run_tool(ally_cli).endswith("1.0.0")
    # A failed update is not remembered as a failure of the plugin: its env still matches it.
    listed = _json(ally_cli("list", "--json"))["greeter"]
    assert (listed["status"], listed["reason"], listed["stale"]) == ("ready", None, False)


def test_failed_update_to_an_unsatisfiable_requirement_keeps_serving_the_old_env(
    ally_home: Path, make_plugin, own_index: Path, ally_cli
):
    plugin = _greeter(make_plugin, requirements="allydemo-greet>=1.0\n")
    assert _run_tool(ally_cli).endswith("1.0.0")
    old = _pointer(ally_home, "greeter")
    (plugin / "requirements.txt").write_text("allydemo-greet>=9\n")

    proc = ally_cli("update", "greeter", "--json")
    assert proc.returncode == 4, proc.stderr
    failed = _json(proc)["greeter"]
    assert (failed["status"], failed["action"], failed["stale"]) == ("ready", "failed", True)
    assert "allydemo-greet" in failed["reason"]
    assert failed["reason"].endswith("(the previous env is kept and still used)")
    assert "\n" not in failed["reason"]
    assert _pointer(ally_home, "greeter") == old
    assert _unfinished(ally_home) == []
    python = ally_home / "plugin-envs" / "greeter" / "bin" / "python"
    subprocess.run([str(python), "-c", "import allydemo_greet"], check=True)
    # What update said holds for every later command: the old env is used, and each says why.
    run = ally_cli("run", "greeter", "hello", "--input", '{"who": "still"}')
    assert run.returncode == 0, run.stderr
    assert json.loads(run.stdout)["result"] == "hello still from allydemo_greet 1.0.0"
    assert run.stderr.startswith("ally: warning: greeter: ") and "allydemo-greet" in run.stderr
    quiet = ally_cli("run", "greeter", "hello", "--input", '{"who": "still"}', "-q")
    assert quiet.returncode == 0 and quiet.stderr == ""  # -q: results and errors only
    listed = _json(ally_cli("list", "--json"))["greeter"]
    assert (listed["status"], listed["stale"], listed["env"]) == ("ready", True, failed["env"])
    assert listed["reason"] == failed["reason"]
    text = ally_cli("list").stdout
    assert text.startswith("! greeter: hello; ") and "previous env is kept" in text
    install = ally_cli("install", "greeter", "--json")
    assert install.returncode == 4
    assert _json(install)["greeter"]["reason"] == failed["reason"]
    assert _pointer(ally_home, "greeter") == old
    # Fixed inputs build again, and nothing stale is reported any more.
    (plugin / "requirements.txt").write_text("allydemo-greet>=1.0,<9\n")
    fixed = ally_cli("install", "greeter", "--json")
    assert fixed.returncode == 0, fixed.stderr
    assert _json(fixed)["greeter"]["stale"] is False
    listed = _json(ally_cli("list", "--json"))["greeter"]
    assert (listed["status"], listed["reason"], listed["stale"]) == ("ready", None, False)


def test_failed_first_install_is_blocked_everywhere_with_the_same_reason(
    ally_home: Path, make_plugin, own_index: Path, ally_cli
):
    _greeter(make_plugin, requirements="allydemo-greet>=9\n")
    install = ally_cli("install", "greeter", "--json")
    assert install.returncode == 4
    blocked = _json(install)["greeter"]
    assert blocked["status"] == "blocked" and "allydemo-greet" in blocked["reason"]
    assert "previous env" not in blocked["reason"]
    run = ally_cli("run", "greeter", "hello", "-q")
    assert run.returncode == 1 and "allydemo-greet" in run.stderr
    listed = _json(ally_cli("list", "--json"))["greeter"]
    assert listed["status"] == "pending"
    assert listed["reason"].startswith("install failed: ") and "allydemo-greet" in listed["reason"]


def test_reinstall_builds_a_fresh_env_and_keeps_the_old_one_as_backup(
    ally_home: Path, make_plugin, ally_cli
):
    _greeter(make_plugin)
    assert _run_tool(ally_cli).endswith("2.0.0")
    old = _pointer(ally_home, "greeter")
    proc = ally_cli("reinstall", "greeter", "--json")
    assert proc.returncode == 0, proc.stderr
    assert _json(proc)["greeter"]["action"] == "built"
    new = _pointer(ally_home, "greeter")
    assert new != old
    assert len(_published(ally_home)) == 2
    backup = ally_home / "plugin-envs" / ".state" / "greeter.previous"
    assert backup.resolve() == (ally_home / "plugin-envs" / old).resolve()
    assert _run_tool(ally_cli).endswith("2.0.0")


def test_remove_drops_only_the_env_pointer_never_the_plugin_source(
    ally_home: Path, make_plugin, ally_cli
):
    plugin = _greeter(make_plugin)
    assert _run_tool(ally_cli).endswith("2.0.0")
    source = _tree(plugin)
    proc = ally_cli("remove", "greeter")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("removed the env of greeter (freed ")
    assert not os.path.lexists(ally_home / "plugin-envs" / "greeter")
    assert _tree(plugin) == source
    assert ally_cli("remove", "greeter").stdout.strip() == "greeter has no env"
    listed = _json(ally_cli("list", "--json"))["greeter"]
    assert listed["status"] == "pending" and listed["reason"] == "not installed"
    assert _run_tool(ally_cli).endswith("2.0.0")


def test_remove_deletes_the_env_and_its_backup_so_a_following_install_builds_afresh(
    ally_home: Path, make_plugin, ally_cli
):
    _greeter(make_plugin)
    assert _run_tool(ally_cli).endswith("2.0.0")
    assert ally_cli("reinstall", "greeter", "-q").returncode == 0
    env = (ally_home / "plugin-envs" / "greeter").resolve()
    backup = (ally_home / "plugin-envs" / ".state" / "greeter.previous").resolve()
    assert env != backup and len(_published(ally_home)) == 2
    # Damage the cheap check does not see: a module of the env deleted.
    (module,) = env.glob("lib/python*/site-packages/allydemo_greet.py")
    module.unlink()
    proc = ally_cli("remove", "greeter")
    assert proc.returncode == 0, proc.stderr
    assert not env.exists() and not backup.exists()
    assert _published(ally_home) == []
    assert proc.stdout.startswith("removed the env of greeter (freed ")
    proc = ally_cli("install", "greeter", "--json")
    assert proc.returncode == 0, proc.stderr
    again = _json(proc)["greeter"]
    assert again["action"] == "built" and Path(again["env"]) not in {env, backup}
    assert _run_tool(ally_cli).endswith("2.0.0")


def test_gc_frees_envs_of_gone_plugins_leftovers_and_backups_and_says_so(
    ally_home: Path, make_plugin, ally_cli
):
    gone = _greeter(make_plugin, "gone", "allydemo-greet==1.0.0\n")
    _greeter(make_plugin, "kept", "allydemo-greet==2.0.0\n")
    assert ally_cli("install", "-q").returncode == 0
    gone_env = (ally_home / "plugin-envs" / "gone").resolve()
    assert ally_cli("reinstall", "kept", "-q").returncode == 0
    backup_env = (ally_home / "plugin-envs" / ".state" / "kept.previous").resolve()
    kept_env = (ally_home / "plugin-envs" / "kept").resolve()
    store = ally_home / "plugin-envs" / ".store"
    stale = store / "0123456789abcdef-deadbeef"  # what a killed build leaves
    (stale / "lib").mkdir(parents=True)
    (stale / "lib" / "half.py").write_bytes(b"x" * 100_000)
    for child in sorted(gone.rglob("*"), reverse=True):
        child.unlink() if child.is_file() else child.rmdir()
    gone.rmdir()

    dry = ally_cli("gc", "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert "would free" in dry.stdout
    assert stale.exists() and gone_env.exists() and backup_env.exists()

    proc = ally_cli("gc")
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert "plugin 'gone' is gone" in out
    assert f"removed {stale}" in out and "unfinished build" in out
    assert "backup from an update" in out
    assert f"removed {gone_env}" in out and f"removed {backup_env}" in out
    freed = out.strip().splitlines()[-1]
    assert freed.startswith("freed ") and freed != "freed 0 B"
    assert not stale.exists() and not gone_env.exists() and not backup_env.exists()
    assert not os.path.lexists(ally_home / "plugin-envs" / "gone")
    assert _published(ally_home) == [kept_env]
    assert _run_tool(ally_cli, "kept").endswith("2.0.0")
    # Nothing left to free.
    assert ally_cli("gc").stdout.strip() == "freed 0 B"


def test_removing_one_of_two_plugins_sharing_an_env_keeps_the_other_working(
    ally_home: Path, make_plugin, ally_cli
):
    first = _greeter(make_plugin, "first", "allydemo-greet==1.0.0\n")
    _greeter(make_plugin, "second", "allydemo-greet==1.0.0\n")
    proc = ally_cli("install", "--json")
    assert proc.returncode == 0, proc.stderr
    outcomes = _json(proc)
    assert outcomes["first"]["env"] == outcomes["second"]["env"]
    shared = Path(outcomes["second"]["env"])
    proc = ally_cli("remove", "first")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == [
        "removed the env of first",
        f"    kept {shared}: other plugins use it",
    ]
    assert shared.is_dir()
    for child in sorted(first.rglob("*"), reverse=True):
        child.unlink() if child.is_file() else child.rmdir()
    first.rmdir()
    gc = ally_cli("gc")
    assert str(shared) not in gc.stdout
    assert shared.is_dir()
    assert _run_tool(ally_cli, "second").endswith("1.0.0")
    listed = _json(ally_cli("list", "--json"))
    assert list(listed) == ["second"] and listed["second"]["status"] == "ready"


# -- where the env's files live ----------------------------------------------------------------


@pytest.mark.parametrize("installer", ["uv", "pip"])
def test_published_env_runs_through_its_pointer_path(
    ally_home: Path, make_plugin, ally_cli, installer: str
):
    _greeter(make_plugin, requirements="allydemo-greet==1.0.0\n")
    proc = ally_cli("install", "--installer", installer, "--json")
    assert proc.returncode == 0, proc.stderr
    env_dir = Path(_json(proc)["greeter"]["env"])
    bin_dir = ally_home / "plugin-envs" / "greeter" / "bin"

    script = bin_dir / "allydemo-greet"
    out = subprocess.run([str(script), "relocated"], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "hello relocated from allydemo_greet 1.0.0"
    # Built at its final place: the script names the store env, not some temporary dir.
    shebang = script.read_text().splitlines()[0]
    assert shebang.startswith(f"#!{env_dir}/bin/python") or (
        # long paths get pip's /bin/sh trampoline; it still names the env's python
        str(env_dir / "bin" / "python") in script.read_text()
    )
    out = subprocess.run(
        [
            str(bin_dir / "python3"),
            "-c",
            "import sys, allydemo_greet; print(allydemo_greet.__file__); print(sys.prefix)",
        ],
        capture_output=True,
        text=True,
        check=True,
        env={"PATH": os.defpath},
    )
    module, prefix = out.stdout.splitlines()
    assert Path(module).resolve().is_relative_to(env_dir)
    assert Path(prefix).resolve() == env_dir

    # After an update the same path runs the new env; the old env's own paths still work.
    (ally_home / "plugins" / "greeter" / "requirements.txt").write_text("allydemo-greet==2.0.0\n")
    assert ally_cli("install", "--installer", installer, "-q").returncode == 0
    out = subprocess.run([str(script)], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "hello world from allydemo_greet 2.0.0"
    old = subprocess.run(
        [str(env_dir / "bin" / "allydemo-greet")], capture_output=True, text=True, check=True
    )
    assert old.stdout.strip() == "hello world from allydemo_greet 1.0.0"


def _run_records(home: Path, name: str) -> list[Path]:
    folder = home / "plugin-envs" / ".run"
    return sorted(folder.glob(f"{name}.*")) if folder.is_dir() else []


def test_remove_and_gc_drop_the_quick_run_records_of_their_plugins(
    ally_home: Path, make_plugin, ally_cli
):
    tool = "import json, sys; json.load(sys.stdin); print(json.dumps({'ok': 1}))\n"
    for name in ("dropped", "gone", "kept"):
        make_plugin(
            name,
            {"tools": [{"name": "t", "command": "python3", "args": ["t.py"]}]},
            {"t.py": tool},
        )
    time.sleep(2.2)  # a run record is written once nothing it watches is this fresh
    for name in ("dropped", "gone", "kept"):
        assert ally_cli("run", name, "t", input="{}").returncode == 0
        assert len(_run_records(ally_home, name)) == 1, name

    assert ally_cli("remove", "dropped").returncode == 0
    assert _run_records(ally_home, "dropped") == []
    assert len(_run_records(ally_home, "gone")) == 1

    shutil.rmtree(ally_home / "plugins" / "gone")
    (record,) = _run_records(ally_home, "gone")
    proc = ally_cli("gc")
    assert proc.returncode == 0, proc.stderr
    assert f"removed {record}" in proc.stdout and "plugin 'gone' is gone" in proc.stdout
    assert _run_records(ally_home, "gone") == []
    assert len(_run_records(ally_home, "kept")) == 1
    assert json.loads(ally_cli("run", "kept", "t", "--input", "{}").stdout)["ok"] == 1
