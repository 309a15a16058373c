"""``ally install PATH``: plugin directories (remembered) and bundles of any file name; extra
plugin dirs from config.toml and ``ALLY_PLUGIN_DIRS``; gc never takes the env of a plugin that
still exists where it was installed from. Real CLI processes, real envs.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

from ally_core.testing import write_plugin

PROBE = "import json, sys; print(json.dumps({'success': True, 'result': sys.prefix}))"


def _plugin(root: Path, name: str) -> Path:
    return write_plugin(
        root,
        name,
        {
            "runtime": "python3",
            "tools": [{"name": "where", "command": "python3", "args": ["-c", PROBE]}],
        },
    )


def _listed(ally_cli: Any, *args: str, env: Any = None) -> dict[str, Any]:
    proc = ally_cli(*args, "list", "--json", env=env)
    assert proc.returncode == 0, proc.stderr
    return {p["name"]: p for p in json.loads(proc.stdout)["plugins"]}


def _run(ally_cli: Any, *args: str, env: Any = None) -> str:
    proc = ally_cli(*args, "-q", env=env)
    assert proc.returncode == 0, proc.stderr
    return str(json.loads(proc.stdout)["result"])


def test_install_a_plugin_directory_remembers_it_for_later_commands(
    ally_home: Path, ally_cli: Any, tmp_path: Path
) -> None:
    plugin = _plugin(tmp_path / "checkouts", "mine")
    proc = ally_cli("install", str(plugin), "--json")
    assert proc.returncode == 0, proc.stderr
    (installed,) = json.loads(proc.stdout)["plugins"]
    assert installed["name"] == "mine" and installed["status"] == "ready"
    assert installed["dir"] == str(plugin)
    # Later processes see it without being told where it is.
    listed = _listed(ally_cli)
    assert listed["mine"]["status"] == "ready" and listed["mine"]["dir"] == str(plugin)
    env = listed["mine"]["env"]
    assert os.path.realpath(_run(ally_cli, "run", "mine", "where")) == os.path.realpath(env)
    gc = ally_cli("gc")
    assert gc.returncode == 0 and str(env) not in gc.stdout and "mine" not in gc.stdout
    assert _listed(ally_cli)["mine"]["env"] == env
    # plugin.json itself names the directory too; installing again is harmless.
    assert ally_cli("install", str(plugin / "plugin.json"), "-q").returncode == 0
    state = json.loads((ally_home / "plugin-envs" / ".state" / "plugin-dirs.json").read_text())
    assert state == {"dirs": [str(plugin)]}
    # remove forgets it (its files stay).
    assert ally_cli("remove", "mine").returncode == 0
    assert "mine" not in _listed(ally_cli)
    assert (plugin / "plugin.json").is_file()


def test_install_of_a_directory_whose_plugin_is_broken_is_one_line_and_remembers_nothing(
    ally_home: Path, ally_cli: Any, tmp_path: Path
) -> None:
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "plugin.json").write_text('{"name": "broken", "tools": "nope"}')
    proc = ally_cli("install", str(broken))
    assert proc.returncode == 1
    (line,) = proc.stderr.splitlines()
    assert line.startswith("ally: error: broken: plugin.json: $.tools: expected a list")
    not_a_plugin = tmp_path / "empty"
    not_a_plugin.mkdir()
    proc = ally_cli("install", str(not_a_plugin))
    (line,) = proc.stderr.splitlines()
    assert proc.returncode == 1 and "not a plugin directory (no plugin.json)" in line
    assert not (ally_home / "plugin-envs" / ".state" / "plugin-dirs.json").exists()


def test_install_a_bundle_of_any_file_name_recognised_by_content(
    ally_home: Path, ally_cli: Any, tmp_path: Path
) -> None:
    source = _plugin(tmp_path / "src", "shipped")
    made = tmp_path / "made.ally.tar.gz"
    proc = ally_cli("--plugins-dir", str(source.parent), "bundle", "shipped", "-o", str(made))
    assert proc.returncode == 0, proc.stderr
    for name in ("shipped.zip", "no-extension", "shipped.ally.tar.gz"):
        archive = tmp_path / name
        shutil.copyfile(made, archive)
        shutil.rmtree(ally_home / "plugins" / "shipped", ignore_errors=True)
        proc = ally_cli("install", str(archive), "--json")
        assert proc.returncode == 0, (name, proc.stderr)
        (outcome,) = json.loads(proc.stdout)["plugins"]
        assert outcome["status"] == "ready"
        assert outcome["dir"] == str(ally_home / "plugins" / "shipped")
    # A file that is not a bundle, whatever its name, is one line.
    fake = tmp_path / "fake.ally.tar.gz"
    fake.write_text("not a tar")
    proc = ally_cli("install", str(fake))
    (line,) = proc.stderr.splitlines()
    assert proc.returncode == 1
    assert "neither a plugin directory (with plugin.json) nor an ally bundle" in line


def test_gc_keeps_the_env_of_a_plugin_in_a_directory_it_does_not_see(
    ally_home: Path, ally_cli: Any, tmp_path: Path
) -> None:
    extra = tmp_path / "extra-plugins"
    plugin = _plugin(extra, "elsewhere")
    proc = ally_cli("--plugins-dir", str(extra), "install", "--json")
    assert proc.returncode == 0, proc.stderr
    env = json.loads(proc.stdout)["plugins"][0]["env"]
    for dry in (["--dry-run"], []):
        gc = ally_cli("gc", *dry)
        assert gc.returncode == 0, gc.stderr
        assert "elsewhere" not in gc.stdout and env not in gc.stdout, gc.stdout
    assert Path(env).is_dir()
    again = _listed(ally_cli, "--plugins-dir", str(extra))["elsewhere"]
    assert again["status"] == "ready" and again["env"] == env
    # Once the plugin is gone from where it was installed from, gc takes it.
    shutil.rmtree(plugin)
    gc = ally_cli("gc")
    assert "plugin 'elsewhere' is gone" in gc.stdout and f"removed {env}" in gc.stdout
    assert not Path(env).exists()


def test_plugin_dirs_from_config_file_and_variable(
    ally_home: Path, ally_cli: Any, tmp_path: Path
) -> None:
    _plugin(ally_home / "team-plugins", "team")
    _plugin(tmp_path / "a", "alpha")
    _plugin(tmp_path / "b", "beta")
    config = ally_home / "config.toml"
    config.write_text('[ally]\nplugin_dirs = ["team-plugins"]\n' + config.read_text())
    env = {"ALLY_PLUGIN_DIRS": os.pathsep.join([str(tmp_path / "a"), str(tmp_path / "b")])}
    assert set(_listed(ally_cli, env=env)) == {"alpha", "beta"}  # the variable wins
    assert set(_listed(ally_cli)) == {"team"}
    shown = json.loads(ally_cli("config", "--json", env=env).stdout)
    assert shown["paths"]["plugin_dirs"] == [
        str(ally_home / "plugins"),
        str(tmp_path / "a"),
        str(tmp_path / "b"),
    ]
    assert shown["settings"]["plugin_dirs"]["source"] == "$ALLY_PLUGIN_DIRS"
    assert _run(ally_cli, "run", "beta", "where", env=env)
