"""Hostile or odd input to ``ally config``: secrets in any case, unknown names, odd keys and
values, deep schemas, terminal control characters, disks that refuse.

Every CLI call is a real ``python -m ally_core.cli`` (or ``main()`` in this process where the
operating system cannot carry the input, e.g. a NUL in an argument); tools are real processes.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import pytest

from ally_core import Host

SECRET = "tok-9c2e4a6b8d1f-CASESECRET"

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
    assert env["PLUGIN_CONFIG_TOKEN"] == _seen(SECRET)
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


# ---------------------------------------------------------------------------------------------
# unknown plugins and keys: a guess and a non-zero exit, nothing stored


def test_config_for_an_unknown_plugin_fails_with_a_guess(ally_home: Path, make_plugin, ally_cli):
    _plugin(make_plugin)
    for args in (("set", "sfe", "token", SECRET), ("show", "safee"), ("unset", "Safe", "token")):
        line = _fails(ally_cli("config", *args))
        assert f"no plugin named {args[1]!r} (did you mean 'safe'?)" in line
        assert SECRET not in line
    assert not _store(ally_home).exists()
    line = _fails(ally_cli("config", "set", "zzzzzz", "token", "x"))
    assert "no plugin named 'zzzzzz' in" in line and "did you mean" not in line


def test_config_set_with_an_unknown_key_fails_with_a_guess(ally_home: Path, make_plugin, ally_cli):
    _plugin(make_plugin)
    line = _fails(ally_cli("config", "set", "safe", "tokn", SECRET))
    assert "unknown key 'tokn' (did you mean 'token'?) (known: api_url, retries, token)" in line
    assert SECRET not in line
    assert not _store(ally_home).exists()
    line = _fails(ally_cli("config", "unset", "safe", "retires"))
    assert "unknown key 'retires' (did you mean 'retries'?)" in line
    # A known key that is not set is no error.
    assert _ok(ally_cli("config", "unset", "safe", "retries")) == "safe: retries was not set\n"
    line = _fails(ally_cli("run", "safe", "env", "--input", "{}", "--config", "api_ur=x"))
    assert "unknown key 'api_ur' (did you mean 'api_url'?)" in line


def test_config_set_for_a_plugin_without_config_fails(ally_home: Path, make_plugin, ally_cli):
    _plugin(make_plugin, "plain", schema=None)
    line = _fails(ally_cli("config", "set", "plain", "token", "x"))
    assert "plain: declares no config, so it has no key 'token'" in line


def test_a_schema_open_to_other_keys_accepts_them(ally_home: Path, make_plugin, ally_cli):
    _plugin(make_plugin, schema={**SCHEMA, "additionalProperties": {"type": "string"}})
    assert _ok(ally_cli("config", "set", "safe", "extra", "1")) == "safe: extra = 1\n"
    env = json.loads(_ok(ally_cli("run", "safe", "env", "--input", "{}")))["result"]
    assert env["PLUGIN_CONFIG_EXTRA"] == _seen("1")


# ---------------------------------------------------------------------------------------------
# a config store that cannot be written: one line, the old values intact


def test_config_set_where_the_store_directory_is_a_file_is_one_line(
    ally_home: Path, make_plugin, ally_cli
):
    _plugin(make_plugin)
    (ally_home / "plugin-config").write_text("a file, not a directory")
    line = _fails(ally_cli("config", "set", "safe", "retries", "3"))
    assert f"safe: cannot store config in {ally_home / 'plugin-config'}" in line
    assert (ally_home / "plugin-config").read_text() == "a file, not a directory"


@pytest.fixture
def small_mount(ally_home: Path):
    """``<home>/plugin-config`` on its own 1 MB tmpfs: ``mount(opts)`` (needs mount rights)."""
    target = ally_home / "plugin-config"
    target.mkdir()
    mounted: list[str] = []

    def mount(options: str) -> Path:
        import subprocess

        proc = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(target)], capture_output=True
        )
        if proc.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here: {proc.stderr.decode().strip()}")
        mounted.append(str(target))
        return target

    yield mount
    import subprocess

    for path in mounted:
        subprocess.run(["umount", "-l", path], check=False)


def test_config_set_on_a_full_disk_is_one_line_and_keeps_the_stored_values(
    ally_home: Path, make_plugin, ally_cli, small_mount
):
    plugin = _plugin(make_plugin)
    store = small_mount("size=1m")
    _ok(ally_cli("config", "set", "safe", "token", SECRET))
    before = (store / "safe.json").read_bytes()
    fd = os.open(store / "filler", os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        while True:
            os.write(fd, b"\0" * 4096)
    except OSError:
        pass
    finally:
        os.close(fd)
    proc = ally_cli("config", "set", "safe", "api_url", "x" * 20000)
    line = _fails(proc)
    assert "safe: cannot store config in" in line and "No space left on device" in line
    assert SECRET not in proc.stdout + proc.stderr
    assert (store / "safe.json").read_bytes() == before
    assert sorted(p.name for p in store.iterdir()) == [".lock", "filler", "safe.json"]
    values = json.loads(before)["dirs"][os.path.realpath(plugin)]["values"]
    assert values == {"token": SECRET}


def test_config_set_on_a_read_only_disk_is_one_line(
    ally_home: Path, make_plugin, ally_cli, small_mount
):
    _plugin(make_plugin)
    small_mount("ro,size=1m")
    line = _fails(ally_cli("config", "set", "safe", "retries", "3"))
    assert "safe: cannot store config in" in line and "Read-only file system" in line
    # Reading still works.
    assert _ok(ally_cli("config", "show", "safe")) == ""


# ---------------------------------------------------------------------------------------------
# odd input: one line, never an internal error


@pytest.fixture
def main_in_process(ally_home: Path, capsys):
    """``ally`` in this process, for arguments no ``exec`` can carry (a NUL byte)."""
    import signal

    from ally_core.cli import main

    saved = signal.getsignal(signal.SIGTERM)

    def run(*args: str) -> tuple[int, str, str]:
        code = main(list(args))
        captured = capsys.readouterr()
        return code, captured.out, captured.err

    yield run
    signal.signal(signal.SIGTERM, saved)


def _one_line(code: int, out: str, err: str) -> str:
    assert code not in (0, None), out
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("ally: error: ") and "internal error" not in lines[0], lines[0]
    return lines[0]


@pytest.mark.parametrize("key", ["a=b", "=", "tok\0en", ""])
def test_a_config_key_that_cannot_be_a_variable_name_is_one_line(
    ally_home: Path, make_plugin, main_in_process, key: str
):
    _plugin(make_plugin, schema={**SCHEMA, "additionalProperties": True})
    line = _one_line(*main_in_process("config", "set", "safe", key, "x"))
    assert "invalid key" in line and "PLUGIN_CONFIG_<KEY>" in line
    assert not _store(ally_home).exists()


def test_a_declared_or_stored_key_with_equals_blocks_the_call_in_one_line(
    ally_home: Path, make_plugin, ally_cli
):
    schema = {"type": "object", "properties": {"a=b": {"type": "string", "default": "x"}}}
    _plugin(make_plugin, schema=schema)
    line = _fails(ally_cli("run", "safe", "env", "--input", "{}"))
    assert "invalid key 'a=b'" in line
    # The same for a key stored by hand (or by an older ally).
    _plugin(make_plugin, "other")
    _write_old_store(ally_home, {"x=y": "1"}, name="other")
    line = _fails(ally_cli("run", "other", "env", "--input", "{}"))
    assert "invalid key 'x=y'" in line


def test_nul_in_config_values_and_arguments_is_one_line(
    ally_home: Path, make_plugin, main_in_process, ally_cli
):
    _plugin(make_plugin)
    line = _one_line(*main_in_process("config", "set", "safe", "api_url", "http://a\0b"))
    assert "api_url: a value cannot contain a NUL byte" in line
    line = _one_line(*main_in_process("config", "set", "sa\0fe", "api_url", "x"))
    assert "no plugin named 'sa\\x00fe'" in line
    line = _one_line(
        *main_in_process("run", "safe", "env", "--input", "{}", "--config", "api_url=a\0b")
    )
    assert "a value cannot contain a NUL byte" in line
    assert not _store(ally_home).exists()
    # A NUL stored by hand (JSON "\u0000") blocks the call in one line, too.
    _write_old_store(ally_home, {"api_url": "a\0b"})
    line = _fails(ally_cli("run", "safe", "env", "--input", "{}"))
    assert "api_url: a value cannot contain a NUL byte" in line


def _deep_schema(depth: int) -> dict[str, Any]:
    node: dict[str, Any] = {"type": "string"}
    for _ in range(depth):
        node = {"type": "object", "properties": {"x": node}}
    return {"type": "object", "properties": {"token": {"type": "string"}, "deep": node}}


def test_a_deeply_nested_config_schema_is_one_line(ally_home: Path, make_plugin, ally_cli):
    # Deeper than jsonschema can follow (about 100 levels): plugin.json is refused when it is
    # loaded (nothing ally accepts is too deep for its own checks), its plugin blocked.
    _plugin(make_plugin, schema=_deep_schema(150))
    listed = json.loads(_ok(ally_cli("list", "--json")))["plugins"]
    assert listed[0]["status"] == "blocked", listed
    assert listed[0]["reason"] == "plugin.json: $.config: nested more than 100 levels deep"
    line = _fails(ally_cli("config", "set", "safe", "token", "x"))
    assert "nested more than 100 levels deep" in line
    line = _fails(ally_cli("run", "safe", "env", "--input", "{}"))
    assert "nested more than 100 levels deep" in line


def test_a_deeply_nested_config_value_is_one_line(ally_home: Path, make_plugin, main_in_process):
    _plugin(make_plugin, schema={**SCHEMA, "properties": {"list": {"type": "array"}}})
    deep = "[" * 100_000 + "]" * 100_000
    line = _one_line(*main_in_process("config", "set", "safe", "list", deep))
    assert "list: nested too deeply" in line


# ---------------------------------------------------------------------------------------------
# control characters never reach the terminal

RAW = ("\x1b", "\x07", "\x9b", "\u202e", "\r", "\x08")


def test_names_and_messages_are_printed_without_control_characters(
    ally_home: Path, make_plugin, ally_cli
):
    evil = "t\x1b[2J\x1b]0;pwned\x07\u202eevil\r\x08"
    make_plugin(
        "loud",
        {
            "config": {"type": "object", "properties": {"note": {"type": "string"}}},
            "tools": [
                {"name": evil, "command": "python3", "args": ["tool.py"]},
                {"name": "shout", "command": "python3", "args": ["tool.py"]},
            ],
        },
        {
            "tool.py": "import sys\n"
            "sys.stderr.write('\\x1b[31mred\\x1b]0;title\\x07\\u202ereversed\\r\\x9bX')\n"
            "sys.exit(1)\n"
        },
    )
    shown = _ok(ally_cli("list"))
    assert "\\x1b[2J\\x1b]0;pwned\\x07\\u202eevil\\r\\x08" in shown
    # The tool's failure is its result, as JSON (which escapes control characters).
    proc = ally_cli("run", "loud", "shout", "--input", "{}")
    assert proc.returncode == 3, proc.stderr
    assert "\x1b[31mred" in json.loads(proc.stdout)["error"]
    _ok(ally_cli("config", "set", "loud", "note", "a\x1b[2Jb"))
    shown += _ok(ally_cli("config", "show", "loud"))
    assert "note = a\\x1b[2Jb" in shown
    for char in RAW:
        assert char not in shown + proc.stdout + proc.stderr, repr(char)


def test_printable_escapes_every_control_and_invisible_format_character():
    from ally_core.text import printable

    assert printable("plain ✓ text é 漢字") == "plain ✓ text é 漢字"
    assert printable("a\x1b[0mb\tc\nd\x7f\x9b\u200b\u2066\ufeff") == (
        "a\\x1b[0mb\\tc\\nd\\x7f\\x9b\\u200b\\u2066\\ufeff"
    )
