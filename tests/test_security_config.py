"""Hostile or odd input to ``ally config``: secrets in any case, unknown names, odd keys and
values, deep schemas, terminal control characters, disks that refuse.

Every CLI call is a real ``python -m ally_core.cli`` (or ``main()`` in this process where the
operating system cannot carry the input, e.g. a NUL in an argument); tools are real processes.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from ally_core import Host

SECRET = "tok-9c2e4a6b8d1f-CASESECRET"

ENV_TOOL = (
    "import json, os, sys\n"
    "json.load(sys.stdin)\n"
    "print(json.dumps({'success': True, 'result': {k: v for k, v in os.environ.items()"
    " if k.startswith('PLUGIN_CONFIG_')}}))\n"
)
SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "token": {"type": "string", "secret": True},
        "retries": {"type": "integer", "minimum": 0},
        "api_url": {"type": "string"},
    },
}


def _plugin(make_plugin, name: str = "safe", schema: Any = SCHEMA) -> Path:
    manifest: dict[str, Any] = {
        "tools": [{"name": "env", "command": "python3", "args": ["tool.py"]}],
    }
    if schema is not None:
        manifest["config"] = schema
    return make_plugin(name, manifest, {"tool.py": ENV_TOOL})


def _ok(proc) -> str:
    assert proc.returncode == 0, (proc.args, proc.stdout, proc.stderr)
    return proc.stdout


def _fails(proc) -> str:
    assert proc.returncode not in (0, None), proc.stdout
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("ally: error: "), lines[0]
    assert "internal error" not in lines[0]
    return lines[0]


def _store(home: Path, name: str = "safe") -> Path:
    return Host(home).paths.config_dir / "plugin-config" / f"{name}.json"


def _write_old_store(home: Path, values: dict[str, Any], name: str = "safe") -> Path:
    path = _store(home, name)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(values))
    os.chmod(path, 0o600)
    return path


# ---------------------------------------------------------------------------------------------
# secret keys in any case


def test_a_stored_secret_in_another_case_is_masked_and_reaches_the_tool(
    ally_home: Path, make_plugin, ally_cli
):
    _plugin(make_plugin)
    _write_old_store(ally_home, {"TOKEN": SECRET, "retries": 2})

    shown = _ok(ally_cli("config", "show", "safe"))
    assert shown.splitlines() == ["TOKEN = ********", "retries = 2"]
    data = _ok(ally_cli("config", "show", "safe", "--json"))
    assert json.loads(data)["config"] == {"TOKEN": "********", "retries": 2}
    env = json.loads(_ok(ally_cli("run", "safe", "env", "--input", "{}")))["result"]
    assert env["PLUGIN_CONFIG_TOKEN"] == SECRET
    assert SECRET not in shown + data


def test_setting_a_secret_in_another_case_stores_it_under_its_declared_name(
    ally_home: Path, make_plugin, ally_cli
):
    plugin = _plugin(make_plugin)
    _write_old_store(ally_home, {"TOKEN": "tok-old-value-123"})
    assert _ok(ally_cli("config", "set", "safe", "Token", SECRET)) == "safe: token = ********\n"
    values = json.loads(_store(ally_home).read_text())["dirs"][os.path.realpath(plugin)]
    assert values == {"values": {"token": SECRET}}
    assert _ok(ally_cli("config", "unset", "safe", "TOKEN")) == "safe: TOKEN removed\n"
    assert "token" not in _ok(ally_cli("config", "show", "safe")).lower()


def test_an_error_quoting_the_whole_config_masks_a_secret_in_any_case(
    ally_home: Path, make_plugin, ally_cli
):
    # A root-level error quotes the whole instance: the secret in it must not show, and not in
    # the --debug traceback either.
    _plugin(make_plugin, schema={**SCHEMA, "maxProperties": 1})
    _ok(ally_cli("config", "set", "safe", "retries", "1"))
    for args in (("config",), ("--debug", "config")):
        proc = ally_cli(*args, "set", "safe", "TOKEN", SECRET)
        assert proc.returncode != 0
        assert "has too many properties" in proc.stderr
        assert SECRET not in proc.stdout + proc.stderr
    proc = ally_cli("run", "safe", "env", "--input", "{}", "--config", f"TOKEN={SECRET}")
    assert "has too many properties" in _fails(proc)
    assert SECRET not in proc.stdout + proc.stderr


def test_mask_text_masks_every_form_of_every_secret():
    from ally_core.plugin_config import MASK, mask_text

    secrets = ['p"a\\ss', "abc", "abcdef", 4242]
    text = json.dumps({"k": 'p"a\\ss'}) + " " + repr('p"a\\ss') + " abcdefg abc 4242"
    masked = mask_text(text, secrets)
    assert masked == f'{{"k": "{MASK}"}} {MASK} {MASK}g {MASK} {MASK}', masked
    assert mask_text("nothing here", []) == "nothing here"
    assert mask_text("x", ["", None]) == "x"


def test_secret_values_finds_secrets_by_any_case_from_resolved_config(
    ally_home: Path, make_plugin
):
    from ally_core.plugin_config import resolve_config, secret_values

    _plugin(make_plugin)
    _write_old_store(ally_home, {"TOKEN": SECRET, "retries": 2})
    host = Host(ally_home)
    outcome = host.ensure("safe")
    resolved = resolve_config(host, outcome, {"api_url": "http://127.0.0.1:9"})
    assert resolved == {"token": SECRET, "retries": "2", "api_url": "http://127.0.0.1:9"}
    assert secret_values(outcome.manifest, resolved) == [SECRET]
    assert secret_values(outcome.manifest, {"ToKeN": "x"}) == ["x"]
