"""A plugin is its directory: stored config and secrets never go to another directory.

Every CLI call is a real ``python -m ally_core.cli``; every tool is a real process that prints
the environment it got.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Any

from ally_core import Host

SECRET = "tok-5e1d7c3b9a2f-IDENTITYSECRET"

# Prints the SHA-256 of each PLUGIN_CONFIG_* it got: ally masks secret values in what a
# tool returns, so the tool proves it got a value without showing it.
ENV_TOOL = (
    "import hashlib, json, os, sys\n"
    "json.load(sys.stdin)\n"
    "print(json.dumps({'success': True, 'result': {k: hashlib.sha256(v.encode()).hexdigest()"
    " for k, v in os.environ.items() if k.startswith('PLUGIN_CONFIG_')}}))\n"
)


def _seen(value: str) -> str:
    """What ENV_TOOL reports for ``value``."""
    return hashlib.sha256(value.encode()).hexdigest()


SCHEMA = {
    "type": "object",
    "properties": {
        "token": {"type": "string", "secret": True},
        "retries": {"type": "integer"},
    },
}


def _manifest(name: str) -> dict[str, Any]:
    return {
        "name": name,
        "config": SCHEMA,
        "tools": [{"name": "env", "command": "python3", "args": ["tool.py"]}],
    }


def _plugin(make_plugin, directory: str, name: str) -> Path:
    return make_plugin(directory, _manifest(name), {"tool.py": ENV_TOOL})


def _ok(proc) -> str:
    assert proc.returncode == 0, (proc.args, proc.stdout, proc.stderr)
    return proc.stdout


def _fails(proc) -> str:
    assert proc.returncode != 0, proc.stdout
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("ally: error: "), lines[0]
    return lines[0]


def _env_of(ally_cli, name: str) -> dict[str, str]:
    return json.loads(_ok(ally_cli("run", name, "env", "--input", "{}")))["result"]


def _store(home: Path, name: str) -> Path:
    return Host(home).paths.config_dir / "plugin-config" / f"{name}.json"


def test_a_secret_set_for_one_directory_is_never_given_to_another_of_the_same_name(
    ally_home: Path, make_plugin, ally_cli, tmp_path: Path
):
    victim = _plugin(make_plugin, "safe", "safe")
    _ok(ally_cli("config", "set", "safe", "token", SECRET))
    assert _env_of(ally_cli, "safe")["PLUGIN_CONFIG_TOKEN"] == _seen(SECRET)

    # The plugin goes away; another directory now declares its name.
    shutil.move(str(victim), str(tmp_path / "safe-elsewhere"))
    impostor = _plugin(make_plugin, "aaa-impostor", "safe")
    env = _env_of(ally_cli, "safe")
    assert "PLUGIN_CONFIG_TOKEN" not in env, "the secret went to another directory"
    show = ally_cli("config", "show", "safe")
    shown = _ok(show)
    assert "token" not in shown  # the values: none (the note about the others is on stderr)
    note = f"values stored for {os.path.realpath(victim)} are not used for {impostor}"
    assert note in show.stderr
    shown += show.stderr
    data = json.loads(_ok(ally_cli("config", "show", "safe", "--json")))
    assert data["config"] == {} and data["not_used"] == [os.path.realpath(victim)]
    assert SECRET not in shown + json.dumps(data)

    # Its own value is its own; the first directory's value is kept for it.
    _ok(ally_cli("config", "set", "safe", "token", "tok-impostor"))
    assert _env_of(ally_cli, "safe")["PLUGIN_CONFIG_TOKEN"] == _seen("tok-impostor")
    shutil.rmtree(impostor)
    shutil.move(str(tmp_path / "safe-elsewhere"), str(victim))
    assert _env_of(ally_cli, "safe")["PLUGIN_CONFIG_TOKEN"] == _seen(SECRET)


def test_two_directories_declaring_one_name_are_both_blocked_and_neither_gets_secrets(
    ally_home: Path, make_plugin, ally_cli
):
    victim = _plugin(make_plugin, "safe", "safe")
    _ok(ally_cli("config", "set", "safe", "token", SECRET))
    # Sorts first: it used to win the name, and the secret with it.
    impostor = _plugin(make_plugin, "aaa-impostor", "safe")

    listed = {p["dir"]: p for p in json.loads(_ok(ally_cli("list", "--json")))["plugins"]}
    assert listed[str(victim)]["status"] == listed[str(impostor)]["status"] == "blocked"
    assert f"'safe' is also declared by {impostor}" in listed[str(victim)]["reason"]
    assert f"'safe' is also declared by {victim}" in listed[str(impostor)]["reason"]

    for name in ("safe", "aaa-impostor"):
        proc = ally_cli("run", name, "env", "--input", "{}")
        line = _fails(proc)
        assert "is also declared by" in line
        assert SECRET not in proc.stdout + proc.stderr
    line = _fails(ally_cli("config", "show", "safe"))
    assert "is also declared by" in line
    _fails(ally_cli("config", "set", "safe", "token", "tok-other"))

    # API: the same, and nothing resolves the secret for either directory.
    for outcome in Host(ally_home).load():
        assert outcome.status == "blocked"
        assert outcome.name in {"safe", "aaa-impostor"}


def test_a_directory_name_never_addresses_another_plugin(ally_home: Path, make_plugin, ally_cli):
    # The directory "weather" holds the plugin "forecast"; the plugin "weather" lives in "zzz".
    forecast = _plugin(make_plugin, "weather", "forecast")
    weather = _plugin(make_plugin, "zzz", "weather")
    _ok(ally_cli("config", "set", "weather", "token", SECRET))
    assert _env_of(ally_cli, "weather")["PLUGIN_CONFIG_TOKEN"] == _seen(SECRET)
    assert "PLUGIN_CONFIG_TOKEN" not in _env_of(ally_cli, "forecast")
    stored = json.loads(_store(ally_home, "weather").read_text())
    assert list(stored["dirs"]) == [os.path.realpath(weather)]
    assert not _store(ally_home, "forecast").exists()

    # With no plugin of that name, the directory's name is not taken for the plugin it holds.
    os.rename(weather, ally_home / "elsewhere-not-a-plugin-dir")
    (ally_home / "elsewhere-not-a-plugin-dir" / "plugin.json").unlink()
    line = _fails(ally_cli("config", "set", "weather", "retries", "3"))
    assert f"the directory {forecast} holds the plugin 'forecast'" in line
    assert "did you mean 'forecast'?" in line
    assert not _store(ally_home, "forecast").exists()
    line = _fails(ally_cli("run", "weather", "env", "--input", "{}"))
    assert "did you mean 'forecast'?" in line


def test_values_stored_by_the_previous_format_keep_working_for_their_plugin(
    ally_home: Path, make_plugin, ally_cli
):
    plugin = _plugin(make_plugin, "safe", "safe")
    old = _store(ally_home, "safe")
    old.parent.mkdir(parents=True)
    old.write_text(json.dumps({"token": SECRET, "retries": 3}))
    os.chmod(old, 0o600)

    env = _env_of(ally_cli, "safe")
    assert env["PLUGIN_CONFIG_TOKEN"] == _seen(SECRET)
    assert env["PLUGIN_CONFIG_RETRIES"] == _seen("3")
    # Now bound to the directory it was used by.
    data = json.loads(old.read_text())
    assert data["format"] == 2
    assert data["dirs"] == {os.path.realpath(plugin): {"values": {"token": SECRET, "retries": 3}}}
    assert oct(old.stat().st_mode & 0o777) == "0o600"
    assert _ok(ally_cli("config", "show", "safe")).splitlines() == [
        "retries = 3",
        "token = ********",
    ]


def test_values_of_the_previous_format_go_to_nobody_while_two_directories_claim_them(
    ally_home: Path, make_plugin, ally_cli
):
    _plugin(make_plugin, "safe", "safe")
    impostor = _plugin(make_plugin, "aaa-impostor", "safe")
    old = _store(ally_home, "safe")
    old.parent.mkdir(parents=True)
    before = json.dumps({"token": SECRET})
    old.write_text(before)

    from ally_core.plugin_config import load_stored

    host = Host(ally_home)
    assert load_stored(host, "safe", impostor) == {}
    assert load_stored(host, "safe", ally_home / "plugins" / "safe") == {}
    assert old.read_text() == before, "an old file is never rewritten while it is ambiguous"
