"""What a tool gets and what it cannot get: plugin config, secrets, environment, input, time.

Plugin config is stored with ``ally config set`` and reaches tools as ``PLUGIN_CONFIG_<KEY>``;
secret values never show up in anything ally prints. Tools run with a minimal environment,
validated input and Code Ally's result protocol (timeouts and leftover processes:
test_tools.py).
Every tool here is a real process; every CLI call is a real ``python -m ally_core.cli``.
"""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path
from typing import Any

import pytest

from ally_core import Host
from ally_core.errors import ConfigError, ToolInputError

SECRET = "tok-7f3a9c1e5b2d-SECRETVALUE"


def _sha256(text: str) -> str:
    import hashlib

    return hashlib.sha256(text.encode()).hexdigest()

OTHER_SECRET = "tok-0d8e4b6a2c9f-CALLSECRET"

# One script, one mode per tool: `python3 tool.py MODE`.
TOOL = r"""
import json, os, sys

mode = sys.argv[1]
args = json.load(sys.stdin)

if mode == "env":
    import hashlib
    token = os.environ.get("PLUGIN_CONFIG_TOKEN", "").encode()
    print(json.dumps({"success": True, "result": dict(os.environ),
                      "token_sha256": hashlib.sha256(token).hexdigest()}))
elif mode == "echo":
    print(json.dumps({"success": True, "result": args}))
elif mode == "fail":
    sys.stderr.write("looking up the city\nno row for " + str(args.get("city")) + "\n")
    out = {"success": False, "error": "no such city: " + str(args.get("city"))}
    if args.get("typed", True):
        out["error_type"] = "not_found"
    print(json.dumps(out))
elif mode == "crash":
    sys.stderr.write("Traceback (most recent call last):\nRuntimeError: database is locked\n")
    sys.exit(2)
elif mode == "noisy":
    sys.stderr.write("x" * args["size"] + "END-OF-STDERR\n")
    print(json.dumps({"success": True, "result": "done"}))
"""

CONFIG_SCHEMA = {
    "type": "object",
    "properties": {
        "api_url": {"type": "string", "default": "https://api.example.invalid"},
        "retries": {"type": "integer", "minimum": 0, "maximum": 10},
        "verbose": {"type": "boolean"},
        "color": {"type": "string", "enum": ["red", "green"]},
        "token": {"type": "string", "secret": True, "pattern": "^tok-", "minLength": 12},
    },
    "required": ["token"],
    "additionalProperties": False,
}

TOOLS = [
    {"name": m, "command": "python3", "args": ["tool.py", m]}
    for m in ("env", "echo", "fail", "crash", "noisy")
]
TOOLS.append(
    {
        "name": "forecast",
        "command": "python3",
        "args": ["tool.py", "echo"],
        "schema": {
            "type": "object",
            "properties": {
                "city": {"type": "string"},
                "days": {"type": "integer", "minimum": 1},
            },
            "required": ["city"],
        },
    }
)


def _plugin(make_plugin, name: str = "safe", *, deps: bool = False, config=CONFIG_SCHEMA) -> Path:
    manifest: dict[str, Any] = {"runtime": "python3", "tools": TOOLS}
    if config is not None:
        manifest["config"] = config
    files = {"tool.py": TOOL}
    if deps:
        manifest["dependencies"] = {"file": "requirements.txt"}
        files["requirements.txt"] = "allydemo-greet==1.0.0\n"
    return make_plugin(name, manifest, files)


def _store_file(home: Path, name: str = "safe") -> Path:
    return Host(home).paths.config_dir / "plugin-config" / f"{name}.json"


def _stored(home: Path, name: str = "safe") -> dict[str, Any]:
    """The values in the store file for the plugin directory ``plugins/name``."""
    data = json.loads(_store_file(home, name).read_text())
    entry = data["dirs"].get(os.path.realpath(home / "plugins" / name)) or {}
    return entry.get("values", {})


def _ok(proc) -> str:
    assert proc.returncode == 0, (proc.args, proc.stdout, proc.stderr)
    return proc.stdout


def _one_error_line(proc) -> str:
    """The CLI failed with exactly one line on stderr, ``ally: error: …`` (after the progress
    of a first build: plugins with a runtime get an env even without dependencies)."""
    assert proc.returncode != 0, proc.stdout
    lines = [
        line
        for line in proc.stderr.strip().splitlines()
        if not line.startswith("[PluginEnvironmentManager]")
    ]
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("ally: error: "), lines[0]
    return lines[0]


def _stored_token(host: Host) -> None:
    from ally_core.plugin_config import set_stored

    set_stored(host, host.source("safe").manifest, "token", SECRET)


# ---------------------------------------------------------------------------------------------
# ally config set / show / unset


def test_config_set_show_unset_round_trip_with_the_secret_masked(ally_home, make_plugin, ally_cli):
    _plugin(make_plugin)
    assert _ok(ally_cli("config", "set", "safe", "api_url", "http://127.0.0.1:9/api")) == (
        "safe: api_url = http://127.0.0.1:9/api\n"
    )
    assert _ok(ally_cli("config", "set", "safe", "retries", "4")) == "safe: retries = 4\n"
    assert _ok(ally_cli("config", "set", "safe", "token", SECRET)) == "safe: token = ********\n"

    shown = _ok(ally_cli("config", "show", "safe"))
    assert shown.splitlines() == [
        "api_url = http://127.0.0.1:9/api",
        "retries = 4",
        "token = ********",
    ]
    data = json.loads(_ok(ally_cli("config", "show", "safe", "--json")))
    assert data["plugin"] == "safe"
    assert data["config"] == {
        "api_url": "http://127.0.0.1:9/api",
        "retries": 4,
        "token": "********",
    }
    # The file holds the real values, typed by the schema.
    stored = _stored(ally_home)
    assert stored == {"api_url": "http://127.0.0.1:9/api", "retries": 4, "token": SECRET}

    assert _ok(ally_cli("config", "unset", "safe", "token")) == "safe: token removed\n"
    assert _ok(ally_cli("config", "unset", "safe", "token")) == "safe: token was not set\n"
    assert "token" not in _ok(ally_cli("config", "show", "safe"))
    assert _stored(ally_home) == {
        "api_url": "http://127.0.0.1:9/api",
        "retries": 4,
    }


def test_stored_config_file_is_readable_by_the_user_only(ally_home, make_plugin, ally_cli):
    _plugin(make_plugin)
    path = _store_file(ally_home)
    # Even a file that already existed world-readable ends up 0600.
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("{}")
    os.chmod(path, 0o644)
    _ok(ally_cli("config", "set", "safe", "token", SECRET))
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    _ok(ally_cli("config", "set", "safe", "retries", "1"))
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    _ok(ally_cli("config", "unset", "safe", "retries"))
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    # No temporary copy of the secrets is left beside it.
    assert [p.name for p in path.parent.iterdir() if p.is_file() and p.name != ".lock"] == [
        "safe.json"
    ]
    assert (path.parent / ".lock").stat().st_size == 0


@pytest.mark.parametrize(
    ("key", "value", "says"),
    [
        ("retries", "-1", "minimum"),
        ("retries", "11", "maximum"),
        ("retries", "three", "retries"),
        ("verbose", "maybe", "true or false"),
        ("color", "blue", "'blue' is not one of"),
        ("colour", "red", "unknown key 'colour'"),
        ("token", "not-a-token-at-all", "token"),
    ],
)
def test_config_value_violating_the_schema_is_rejected_in_one_line(
    key, value, says, ally_home, make_plugin, ally_cli
):
    _plugin(make_plugin)
    _ok(ally_cli("config", "set", "safe", "retries", "2"))
    before = _store_file(ally_home).read_bytes()
    line = _one_error_line(ally_cli("config", "set", "safe", key, value))
    assert line.startswith("ally: error: safe: config: "), line
    assert says in line, line
    assert _store_file(ally_home).read_bytes() == before


# ---------------------------------------------------------------------------------------------
# config values reaching tools


def test_missing_required_config_blocks_the_tool_before_it_starts(
    ally_home, make_plugin, host, no_spawn, ally_cli
):
    _plugin(make_plugin)
    outcome = host.ensure("safe")
    assert outcome.ready, outcome.reason
    with no_spawn(), pytest.raises(ConfigError) as info:
        outcome.tool("echo").call({})
    assert "'token' is a required property" in str(info.value)
    assert str(info.value).startswith("safe: config: ")

    proc = ally_cli("run", "safe", "echo", "--input", "{}")
    line = _one_error_line(proc)
    assert "safe: config: 'token' is a required property" in line
    assert proc.stdout == ""


def test_stored_config_and_defaults_reach_the_tool_upper_cased(ally_home, make_plugin, ally_cli):
    _plugin(make_plugin, deps=True)
    _ok(ally_cli("config", "set", "safe", "token", SECRET))
    _ok(ally_cli("config", "set", "safe", "retries", "5"))
    _ok(ally_cli("config", "set", "safe", "verbose", "yes"))
    env = Host(ally_home).ensure("safe").tool("env").call({}).result
    got = {k: v for k, v in env.items() if k.startswith("PLUGIN_CONFIG_")}
    assert got == {
        "PLUGIN_CONFIG_API_URL": "https://api.example.invalid",
        "PLUGIN_CONFIG_RETRIES": "5",
        "PLUGIN_CONFIG_VERBOSE": "true",
        "PLUGIN_CONFIG_TOKEN": SECRET,
    }


def test_config_given_for_one_call_wins_over_stored_values(ally_home, make_plugin, ally_cli):
    _plugin(make_plugin)
    _ok(ally_cli("config", "set", "safe", "token", SECRET))
    _ok(ally_cli("config", "set", "safe", "retries", "5"))

    # API: config= for this call only.
    outcome = Host(ally_home).ensure("safe")
    env = outcome.tool("env").call({}, config={"retries": "7", "color": "red"}).result
    assert env["PLUGIN_CONFIG_RETRIES"] == "7"
    assert env["PLUGIN_CONFIG_COLOR"] == "red"
    assert env["PLUGIN_CONFIG_TOKEN"] == SECRET
    # ...and nothing of it was stored.
    assert outcome.tool("env").call({}).result["PLUGIN_CONFIG_RETRIES"] == "5"
    assert "PLUGIN_CONFIG_COLOR" not in outcome.tool("env").call({}).result

    # CLI: --config K=V, repeatable.
    proc = ally_cli(
        "run", "safe", "env", "--input", "{}",
        "--config", f"token={OTHER_SECRET}", "--config", "api_url=http://127.0.0.1:1/x",
    )  # fmt: skip
    reply = json.loads(_ok(proc))
    env = reply["result"]
    # The tool got the value; ally's output shows it masked.
    assert reply["token_sha256"] == _sha256(OTHER_SECRET)
    assert env["PLUGIN_CONFIG_TOKEN"] == "********"
    assert env["PLUGIN_CONFIG_API_URL"] == "http://127.0.0.1:1/x"
    assert env["PLUGIN_CONFIG_RETRIES"] == "5"
    assert _stored(ally_home)["token"] == SECRET


def test_config_given_for_one_call_is_validated_too(ally_home, make_plugin, ally_cli, host):
    _plugin(make_plugin)
    _stored_token(host)
    line = _one_error_line(
        ally_cli("run", "safe", "echo", "--input", "{}", "--config", "retries=99")
    )
    assert "safe: config: retries: 99 is greater than the maximum of 10" in line
    line = _one_error_line(ally_cli("run", "safe", "echo", "--input", "{}", "--config", "oops"))
    assert "--config expects KEY=VALUE" in line


# ---------------------------------------------------------------------------------------------
# secrets never shown


def test_secret_config_value_appears_in_no_output_of_ally(ally_home, make_plugin, ally_cli):
    _plugin(make_plugin, deps=True)
    outputs: list[str] = []

    def cli(*args: str, code: int = 0) -> None:
        proc = ally_cli(*args)
        assert proc.returncode == code, (args, proc.stdout, proc.stderr)
        outputs.append(proc.stdout + proc.stderr)

    cli("config", "set", "safe", "token", SECRET)
    cli("config", "set", "safe", "retries", "3")
    cli("install", "-v")
    cli("install", "safe", "--json")
    cli("list")
    cli("list", "--json")
    cli("config")
    cli("config", "--json")
    cli("config", "show", "safe")
    cli("config", "show", "safe", "--json")
    cli("doctor", "--json")
    cli("run", "safe", "echo", "--input", '{"a": 1}')
    # The tool's error paths: an error result, a crash, a timeout.
    cli("run", "safe", "fail", "--input", '{"city": "Oslo"}', code=3)
    cli("run", "safe", "crash", "--input", "{}", code=3)
    cli("run", "safe", "forecast", "--input", '{"days": 0}', code=1)
    # A secret given for one call, and one that does not pass the schema.
    cli("run", "safe", "echo", "--input", "{}", "--config", f"token={OTHER_SECRET}")
    cli("run", "safe", "echo", "--input", "{}", "--config", f"token=x{OTHER_SECRET}", code=1)
    cli("config", "set", "safe", "token", f"bad-{SECRET}", code=1)
    cli("config", "set", "safe", "verbose", "nope", code=1)

    text = "\n".join(outputs)
    assert "********" in text  # the masked value was shown where the secret would be
    for secret in (SECRET, OTHER_SECRET):
        assert secret not in text
        assert secret[4:16] not in text  # not even a part of it


@pytest.mark.parametrize(
    ("key", "value"),
    [("pin", "secret-pin-93817"), ("flag", "secret-flag-56102"), ("token", "secret-token-41177")],
)
def test_invalid_secret_value_is_not_echoed_whatever_the_reason(
    key, value, ally_home, make_plugin, ally_cli, host
):
    """A secret rejected by its type (not only by a keyword) is not repeated in the error."""
    schema = {
        "type": "object",
        "properties": {
            "pin": {"type": "integer", "secret": True},
            "flag": {"type": "boolean", "secret": True},
            "token": {"type": "string", "secret": True, "maxLength": 8},
        },
    }
    _plugin(make_plugin, config=schema)
    line = _one_error_line(ally_cli("config", "set", "safe", key, value))
    assert f"safe: config: {key}" in line
    assert value not in line, line
    line = _one_error_line(
        ally_cli("run", "safe", "echo", "--input", "{}", "--config", f"{key}={value}")
    )
    assert value not in line, line
    outcome = host.ensure("safe")
    with pytest.raises(ConfigError) as info:
        outcome.tool("echo").call({}, config={key: value})
    assert value not in str(info.value)


def test_secrets_are_not_echoed_by_errors_about_the_whole_config(ally_home, make_plugin, ally_cli):
    """A rule over several keys (token and password are exclusive) fails on the whole object."""
    schema = {
        "type": "object",
        "properties": {
            "token": {"type": "string", "secret": True},
            "password": {"type": "string", "secret": True},
        },
        "not": {"required": ["token", "password"]},
    }
    _plugin(make_plugin, config=schema)
    _ok(ally_cli("config", "set", "safe", "token", SECRET))
    line = _one_error_line(ally_cli("config", "set", "safe", "password", OTHER_SECRET))
    assert line.startswith("ally: error: safe: config: "), line
    assert SECRET not in line and OTHER_SECRET not in line, line


# ---------------------------------------------------------------------------------------------
# the tool's environment

HOST_SECRETS = {
    "AWS_SECRET_ACCESS_KEY": "aws-host-secret-1234",
    "GITHUB_TOKEN": "ghp_hostsecret5678",
    "DATABASE_URL": "postgres://u:p@db/x",
}


@pytest.fixture
def host_env(monkeypatch) -> dict[str, str]:
    values = {
        **HOST_SECRETS,
        "LANG": "C.UTF-8",
        "LC_TIME": "C",
        "LC_NOT_A_LOCALE": "lookalike-host-secret",  # starts with LC_, is no locale variable
        "HOME": os.environ.get("HOME") or "/root",
        "PYTHONPATH": "/nonexistent/host/pythonpath",
    }
    for key, value in values.items():
        monkeypatch.setenv(key, value)
    return values


def test_tool_sees_a_minimal_environment_without_host_secrets(
    ally_home, make_plugin, host_env, ally_cli, monkeypatch
):
    _plugin(make_plugin, deps=True)
    _stored_token(Host(ally_home))
    # Through the CLI, whose own environment has the host secrets.
    reply = json.loads(_ok(ally_cli("run", "safe", "env", "--input", "{}")))
    env = reply["result"]
    assert not set(HOST_SECRETS) & set(env)
    assert reply["token_sha256"] == _sha256(SECRET)
    assert env["PLUGIN_CONFIG_TOKEN"] == "********"

    # Through the API, in a host process whose Python variables must not leak either (set
    # only now: PYTHONHOME would break the CLI's own interpreter above).
    monkeypatch.setenv("PYTHONHOME", "/nonexistent/host/pythonhome")
    outcome = Host(ally_home).ensure("safe")
    assert outcome.ready, outcome.reason
    env = outcome.tool("env").call({}).result
    for key in HOST_SECRETS:
        assert key not in env
    for value in HOST_SECRETS.values():
        assert value not in json.dumps(env)
    assert "PYTHONPATH" not in env and "PYTHONHOME" not in env
    bin_dir = str(outcome.env.path / "bin")
    assert env["PATH"].split(os.pathsep)[0] == bin_dir
    assert env["PATH"].split(os.pathsep)[1:] == os.environ["PATH"].split(os.pathsep)
    assert env["VIRTUAL_ENV"] == str(outcome.env.path)
    assert env["HOME"] == host_env["HOME"]
    assert env["LANG"] == "C.UTF-8"
    assert env["LC_TIME"] == "C"
    assert "LC_NOT_A_LOCALE" not in env
    assert env["PLUGIN_CONFIG_TOKEN"] == SECRET
    assert env["PLUGIN_CONFIG_API_URL"] == "https://api.example.invalid"
    assert env["ALLY_PLUGIN_NAME"] == "safe"


@pytest.mark.parametrize("how", ["environment", "config.toml"])
def test_ally_pass_env_lets_named_host_variables_through(
    how, ally_home, make_plugin, host_env, ally_cli
):
    _plugin(make_plugin)
    _stored_token(Host(ally_home))
    extra: dict[str, str] = {}
    if how == "environment":
        extra["ALLY_PASS_ENV"] = "GITHUB_TOKEN DATABASE_URL"
    else:
        config = ally_home / "config.toml"
        config.write_text(
            '[ally]\npass_env = ["GITHUB_TOKEN", "DATABASE_URL"]\n' + config.read_text()
        )
    env = json.loads(_ok(ally_cli("run", "safe", "env", "--input", "{}", env=extra)))["result"]
    assert env["GITHUB_TOKEN"] == HOST_SECRETS["GITHUB_TOKEN"]
    assert env["DATABASE_URL"] == HOST_SECRETS["DATABASE_URL"]
    assert "AWS_SECRET_ACCESS_KEY" not in env


# ---------------------------------------------------------------------------------------------
# input validation


@pytest.mark.parametrize(
    ("arguments", "says"),
    [
        ({}, "input $: 'city' is a required property"),
        ({"city": 3}, "input $.city: 3 is not of type 'string'"),
        ({"city": "Oslo", "days": 0}, "input $.days: 0 is less than the minimum of 1"),
        ([1, 2], "input $: [1, 2] is not of type 'object'"),
    ],
)
def test_invalid_input_is_rejected_before_anything_is_spawned(
    arguments, says, ally_home, make_plugin, host, no_spawn
):
    _plugin(make_plugin)
    _stored_token(host)
    outcome = host.ensure("safe")
    with no_spawn(), pytest.raises(ToolInputError) as info:
        outcome.tool("forecast").call(arguments)
    assert str(info.value) == f"safe: tool 'forecast': {says}"
    assert info.value.error_type == "invalid_input"
    # Valid input does run.
    assert outcome.tool("forecast").call({"city": "Oslo", "days": 2}).result == {
        "city": "Oslo",
        "days": 2,
    }


def test_invalid_input_through_the_cli_is_one_line_naming_the_field(
    ally_home, make_plugin, host, ally_cli
):
    _plugin(make_plugin)
    _stored_token(host)
    proc = ally_cli("run", "safe", "forecast", "--input", '{"city": "Oslo", "days": "two"}')
    line = _one_error_line(proc)
    assert "safe: tool 'forecast': input $.days: 'two' is not of type 'integer'" in line
    assert proc.stdout == ""
    line = _one_error_line(ally_cli("run", "safe", "forecast", "--input", "{not json"))
    assert "--input is not valid JSON" in line


# Timeouts and the processes a tool leaves behind: test_tools.py (test_timeout_kills_*,
# test_children_a_finished_tool_left_behind_*).


# ---------------------------------------------------------------------------------------------
# results


def test_error_result_maps_to_tool_result_and_exit_code_3(ally_home, make_plugin, host, ally_cli):
    _plugin(make_plugin)
    _stored_token(host)
    result = host.ensure("safe").tool("fail").call({"city": "Atlantis"})
    assert result.success is False
    assert result.error == "no such city: Atlantis"
    assert result.error_type == "not_found"
    assert result.result is None
    assert result.exit_code == 0
    assert result.stderr == "looking up the city\nno row for Atlantis\n"
    assert result.to_json() == {
        "success": False,
        "error": "no such city: Atlantis",
        "error_type": "not_found",
    }
    untyped = host.ensure("safe").tool("fail").call({"city": "Mu", "typed": False})
    assert untyped.error_type == "tool_error"

    proc = ally_cli("run", "safe", "fail", "--input", '{"city": "Atlantis"}')
    assert proc.returncode == 3, proc.stderr
    assert json.loads(proc.stdout) == {
        "success": False,
        "error": "no such city: Atlantis",
        "error_type": "not_found",
    }


def test_crashing_tool_reports_its_exit_code_and_stderr_tail(
    ally_home, make_plugin, host, ally_cli
):
    _plugin(make_plugin)
    _stored_token(host)
    result = host.ensure("safe").tool("crash").call({})
    assert not result.success and result.exit_code == 2
    assert result.error_type == "exit_code"
    assert result.error is not None
    assert "safe: tool 'crash' exited with code 2" in result.error
    assert "RuntimeError: database is locked" in result.error
    assert "RuntimeError: database is locked" in result.stderr
    proc = ally_cli("run", "safe", "crash", "--input", "{}")
    assert proc.returncode == 3
    error = json.loads(proc.stdout)["error"]
    assert "exited with code 2" in error and "database is locked" in error


def test_stderr_is_kept_in_the_result_but_capped(ally_home, make_plugin, host):
    _plugin(make_plugin)
    _stored_token(host)
    size = 200_000
    result = host.ensure("safe").tool("noisy").call({"size": size})
    assert result.success and result.result == "done"
    assert result.stderr.endswith("END-OF-STDERR\n")  # the tail is what is kept
    assert 0 < len(result.stderr) < size
    assert set(result.stderr[: -len("END-OF-STDERR\n")]) == {"x"}
