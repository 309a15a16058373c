"""The env store against a hostile or damaged ``plugin-envs``: pointers it must not follow,
directories it must not delete, an env whose ``pyvenv.cfg`` is gone.

An attacker (or a careless script) who can write ``plugin-envs`` plants symlinks and
directories there. ally only follows a pointer of the form ``.store/<dir>`` and only ever
deletes directories inside ``.store``: whatever is planted, the files outside stay untouched
and no code outside the store runs as a plugin's tool.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from ally_core import Host
from ally_core.errors import EnvStoreError

MAIN = (
    "import json, sys, allydemo_greet\n"
    "json.load(sys.stdin)\n"
    "print(json.dumps({'success': True, 'result': allydemo_greet.__version__}))\n"
)
GREETER = {
    "runtime": "python3",
    "dependencies": {"file": "requirements.txt"},
    "tools": [{"name": "version", "command": "python3", "args": ["main.py"]}],
}
# What the planted env runs instead of python3: it leaves a mark and answers like a tool.
IMPOSTOR = """#!/bin/sh
touch "$(dirname "$0")/../PWNED"
cat >/dev/null
echo '{"success": true, "result": "impostor"}'
"""


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "ally_core.cli", *args],
        capture_output=True,
        text=True,
        timeout=300,
        stdin=subprocess.DEVNULL,
    )


def _greeter(make_plugin) -> Path:
    return make_plugin(
        "greeter", GREETER, {"requirements.txt": "allydemo-greet==1.0.0\n", "main.py": MAIN}
    )


def _built(ally_home: Path, make_plugin) -> Path:
    """Build the greeter; return its env dir (in the store)."""
    _greeter(make_plugin)
    (outcome,) = Host(ally_home).load(["greeter"])
    assert outcome.ready, outcome.reason
    return Path(os.path.realpath(ally_home / "plugin-envs" / "greeter"))


def _impostor_env(real_env: Path, dest: Path) -> Path:
    """A copy of a real env whose marker describes the copy and whose python3 is a script:
    an env the cheap check would accept, anywhere an attacker can write."""
    shutil.copytree(real_env, dest, symlinks=True)
    marker = json.loads((dest / ".installed").read_text())
    marker["env"]["path"] = str(dest)
    marker["env"]["bin_dirs"] = [str(dest / "bin")]
    marker["env"]["commands"] = {
        k: v.replace(str(real_env), str(dest)) for k, v in marker["env"]["commands"].items()
    }
    (dest / ".installed").write_text(json.dumps(marker))
    script = dest / "bin" / "python3"
    script.unlink()
    script.write_text(IMPOSTOR)
    script.chmod(0o755)
    return dest


# Pointers an attacker could plant, as (link text, where the impostor env lies relative to the
# ally home). Every one resolves to a directory outside .store.
PLANTED = [
    pytest.param("{abs}", "outside/env", id="absolute"),
    pytest.param("../evil", "evil", id="dotdot"),
    pytest.param(".store/../../evil", "evil", id="store-then-dotdot"),
    pytest.param(".store/{real}/../../../evil", "evil", id="nested-dotdot"),
    pytest.param(".store/{real}/../../../evil/.", "evil", id="trailing-dot"),
]


@pytest.mark.parametrize(("link", "where"), PLANTED)
def test_a_pointer_outside_the_store_is_never_followed(
    ally_home: Path, make_plugin, link: str, where: str
):
    real = _built(ally_home, make_plugin)
    impostor = _impostor_env(real, ally_home / where)
    pointer = ally_home / "plugin-envs" / "greeter"
    pointer.unlink()
    os.symlink(link.format(abs=impostor, real=real.name), pointer)
    assert os.path.realpath(pointer) == str(impostor)  # the plant resolves where intended

    # ally list, a new host's load and ally run: none of them takes the impostor for the env.
    listed = json.loads(_cli("list", "--json").stdout)["plugins"]
    assert all(str(impostor) != p["env"] for p in listed), listed
    (outcome,) = Host(ally_home).load(["greeter"])
    assert outcome.ready, outcome.reason
    assert Path(outcome.env.path).parent == ally_home / "plugin-envs" / ".store"
    assert outcome.tool("version").call({}).result == "1.0.0"
    ran = _cli("run", "greeter", "version", "--input", "{}", "-q")
    assert json.loads(ran.stdout)["result"] == "1.0.0", ran.stderr
    assert not (impostor / "PWNED").exists()
    # The load put the pointer back where it belongs.
    assert os.readlink(pointer).startswith(".store" + os.sep)


def test_discard_refuses_anything_but_an_env_directory_of_the_store(
    ally_home: Path, make_plugin, tmp_path: Path
):
    real = _built(ally_home, make_plugin)
    store = Host(ally_home).store
    outside = tmp_path / "precious"
    outside.mkdir()
    (outside / "data").write_text("keep me")
    shutil.copy(real / ".installed", outside / ".installed")  # looks like an env
    link_in_store = store.store_dir / f"{real.name[:16]}-deadbeef"
    os.symlink(outside, link_in_store)
    dotdot = store.store_dir / ".." / "precious-too"
    dotdot.mkdir()
    (dotdot / "data").write_text("keep me too")
    for victim in (outside, link_in_store, dotdot, store.store_dir, store.root, real.parent):
        with pytest.raises(EnvStoreError, match="refusing to delete"):
            store.discard(victim)
    assert (outside / "data").read_text() == "keep me"
    assert os.path.islink(link_in_store)
    assert (dotdot / "data").read_text() == "keep me too"
    assert (real / ".installed").is_file()
    # A real env of the store is what it does delete.
    assert store.discard(real) is True
    assert not real.exists()


def test_gc_never_deletes_outside_the_store_whatever_is_planted_in_it(
    ally_home: Path, make_plugin, tmp_path: Path
):
    real = _built(ally_home, make_plugin)
    envs = ally_home / "plugin-envs"
    victims = {}
    for name in ("with-marker", "without-marker", "trash", "backup", "pointer", "legacy"):
        victim = tmp_path / "outside" / name
        victim.mkdir(parents=True)
        (victim / "data").write_text(name)
        victims[name] = victim
    shutil.copy(real / ".installed", victims["with-marker"] / ".installed")
    os.symlink(victims["with-marker"], envs / ".store" / f"{real.name[:16]}-0badc0de")
    os.symlink(victims["without-marker"], envs / ".store" / "0123456789abcdef-00000000")
    os.symlink(victims["trash"], envs / ".store" / ".trash-0123456789ab")
    os.symlink(victims["legacy"], envs / ".store" / "legacy-greeter-01234567")
    (envs / ".state").mkdir(exist_ok=True)
    os.symlink(victims["backup"], envs / ".state" / "greeter.previous")
    os.symlink(victims["pointer"], envs / "gone-plugin")  # a plugin that does not exist

    proc = _cli("gc")
    assert "Traceback" not in proc.stderr, proc.stderr
    for name, victim in victims.items():
        assert (victim / "data").read_text() == name, f"gc deleted {name} outside the store"
    ran = _cli("run", "greeter", "version", "--input", "{}", "-q")
    assert json.loads(ran.stdout)["result"] == "1.0.0", ran.stderr


def test_a_removed_pyvenv_cfg_is_repaired_by_the_next_load(ally_home: Path, make_plugin):
    real = _built(ally_home, make_plugin)
    (real / "pyvenv.cfg").unlink()
    (outcome,) = Host(ally_home).load(["greeter"])
    assert outcome.ready, outcome.reason
    assert outcome.action == "repaired", outcome.action
    assert "pyvenv.cfg" in (outcome.repair_reason or ""), outcome.repair_reason
    assert outcome.tool("version").call({}).result == "1.0.0"
    assert (Path(outcome.env.path) / "pyvenv.cfg").is_file()


@pytest.mark.parametrize(
    "content",
    ["", "\x00\x01 not a venv config\n", "home = /usr/bin\n"],
    ids=["emptied", "garbage", "without-isolation"],
)
def test_a_damaged_pyvenv_cfg_is_found_by_doctor_and_repaired_by_fix(
    ally_home: Path, make_plugin, content: str
):
    """A damaged pyvenv.cfg still lets the env's python start, with the base interpreter's
    packages on its path (Python's default): only the deep check reads it."""
    real = _built(ally_home, make_plugin)
    (real / "pyvenv.cfg").write_text(content)
    doctor = _cli("doctor", "--json")
    assert doctor.returncode == 4, doctor.stdout + doctor.stderr
    (report,) = json.loads(doctor.stdout)["plugins"]
    assert "pyvenv.cfg is damaged" in json.dumps(report), report
    fixed = _cli("doctor", "--fix")
    assert fixed.returncode == 0, fixed.stdout + fixed.stderr
    env = Path(os.path.realpath(ally_home / "plugin-envs" / "greeter"))
    assert env != real
    assert "include-system-site-packages = false" in (env / "pyvenv.cfg").read_text()
    ran = _cli("run", "greeter", "version", "--input", "{}", "-q")
    assert json.loads(ran.stdout)["result"] == "1.0.0", ran.stderr


def test_a_read_only_plugin_directory_is_never_written_to(
    ally_home: Path, make_plugin, unprivileged: list[str]
):
    """Envs, locks, caches and state live in ally's own directories: a plugin installed
    read-only builds, runs, is checked, rebuilt and bundled (the bundle written elsewhere)."""
    plugin = _greeter(make_plugin)
    before = sorted((p.relative_to(plugin), p.stat().st_mtime_ns) for p in plugin.rglob("*"))
    modes = {p: p.stat().st_mode for p in [plugin, *plugin.rglob("*")]}
    for path, mode in modes.items():
        path.chmod(mode & ~0o222)
    try:
        for args in (
            ("install", "-q", "greeter"),
            ("run", "greeter", "version", "--input", "{}", "-q"),
            ("list",),
            ("doctor",),
            ("reinstall", "-q", "greeter"),
            ("bundle", "greeter", "-o", str(ally_home / "greeter.bundle.tar.gz")),
        ):
            proc = subprocess.run(
                [*unprivileged, sys.executable, "-m", "ally_core.cli", *args],
                capture_output=True,
                text=True,
                timeout=300,
                stdin=subprocess.DEVNULL,
            )
            assert proc.returncode == 0, (args, proc.stdout + proc.stderr)
    finally:
        for path, mode in modes.items():
            path.chmod(mode)
    after = sorted((p.relative_to(plugin), p.stat().st_mtime_ns) for p in plugin.rglob("*"))
    assert after == before
