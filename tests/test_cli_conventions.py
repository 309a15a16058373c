"""The conventions of the ``ally`` command line, each checked on a real ``ally`` process:
``help``, ``-q``/``-v`` and ``--json`` everywhere, ``--all``, option values checked like
settings, names said once, guesses for unknown plugins, tracebacks of hook errors."""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path
from typing import Any

import pytest

from ally_core.cli import build_parser

NO_JSON = {
    ("help",),
    ("completion",),
    ("mcp",),
    ("mcp", "serve"),
    ("mcp", "launch"),  # becomes the server
    ("mcp", "config"),  # prints an mcpServers document, JSON already
}

GREET = {
    "runtime": "python3",
    "dependencies": {"file": "requirements.txt"},
    "tools": [
        {"name": "hello", "command": "python3", "args": ["main.py"]},
        {"name": "fail", "command": "python3", "args": ["fail.py"]},
    ],
}
GREET_FILES = {
    "requirements.txt": "allydemo-greet\n",
    "main.py": "import json\nprint(json.dumps({'success': True, 'result': 'hi'}))\n",
    "fail.py": "import json\nprint(json.dumps({'success': False, 'error': 'nope'}))\n",
}
PLAIN = {"tools": [{"name": "t", "command": "python3", "args": ["-c", "pass"]}]}


def _leaves(
    parser: argparse.ArgumentParser, words: tuple[str, ...] = ()
) -> list[tuple[tuple[str, ...], argparse.ArgumentParser]]:
    out = [(words, parser)] if words else []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, child in action.choices.items():
                out += _leaves(child, (*words, name))
    return out


def _options(parser: argparse.ArgumentParser) -> dict[str, argparse.Action]:
    return {o: a for a in parser._actions for o in a.option_strings}


def error_line(proc: Any) -> str:
    assert proc.returncode != 0, proc
    assert "Traceback" not in proc.stderr, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    return str(lines[0])


# ---------------------------------------------------------------------------------------------
# help


@pytest.mark.parametrize("words", [(), ("run",), ("config", "set"), ("mcp", "serve")])
def test_help_command_prints_what_dash_dash_help_prints(ally_cli: Any, words: tuple[str, ...]):
    by_help = ally_cli("help", *words)
    by_flag = ally_cli(*words, "--help")
    assert by_help.returncode == 0 == by_flag.returncode, by_help.stderr
    assert by_help.stdout == by_flag.stdout
    assert by_help.stdout.startswith(f"usage: {' '.join(('ally', *words))} ")
    if not words:
        for command in ("list", "install", "run", "exec", "help"):
            assert re.search(rf"^\s+{command}\s", by_help.stdout, re.M), command


def test_help_of_an_unknown_command_is_a_usage_error_with_a_guess(ally_cli: Any):
    proc = ally_cli("help", "confg")
    assert proc.returncode == 2
    line = error_line(proc)
    assert line.startswith("ally: error: no command 'confg' (did you mean 'config'?)"), line
    sub = ally_cli("help", "config", "sett")
    assert sub.returncode == 2 and "(did you mean 'set'?)" in sub.stderr


# ---------------------------------------------------------------------------------------------
# -q / -v / --json everywhere


def test_every_command_takes_q_and_v_with_one_meaning_and_json_unless_it_cannot():
    root = build_parser()
    meaning = {o: a.help for o, a in _options(root).items() if o in {"-q", "-v"}}
    assert meaning["-q"] and meaning["-v"]
    leaves = _leaves(root)
    assert len(leaves) >= 17
    for words, parser in leaves:
        options = _options(parser)
        for flag, long in (("-q", "--quiet"), ("-v", "--verbose")):
            assert flag in options and long in options, words
            assert options[flag].help == meaning[flag], words
        assert ("--json" in options) == (words not in NO_JSON), words


def test_q_and_v_before_or_after_the_command(
    ally_cli: Any, make_plugin: Any, ally_home: Path
) -> None:
    make_plugin("plain", {**PLAIN, "colour": "red"})
    loud = ally_cli("list")
    assert "    warning: $.colour: unknown key (kept)" in loud.stdout.splitlines()
    for args in (("list", "-q"), ("-q", "list"), ("list", "--quiet")):
        quiet = ally_cli(*args)
        assert quiet.returncode == 0, quiet.stderr
        assert quiet.stdout.splitlines() == ["\u26a0 plain: t"], args
    # -v: ally's own debug log, here why the (damaged) warm index is not used.
    ally_cli("list")
    (index,) = (ally_home / "plugin-envs" / ".state").glob("warm-index.*.bin")
    index.write_bytes(b"not an index")
    for args in (("list", "-v"), ("-v", "list")):
        verbose = ally_cli(*args)
        assert verbose.returncode == 0, verbose.stderr
        assert re.search(r"^ally: debug: ignoring the warm index .*damaged", verbose.stderr, re.M)
        index.write_bytes(b"not an index")
    assert "debug" not in ally_cli("list").stderr
    both = ally_cli("-q", "list", "-v")
    assert both.returncode == 2 and "not allowed with argument" in both.stderr


def test_run_failure_names_plugin_and_tool_once_and_q_keeps_stderr_empty(
    ally_cli: Any, make_plugin: Any
) -> None:
    make_plugin("greeter", GREET, files=GREET_FILES)
    assert ally_cli("install").returncode == 0
    failed = ally_cli("run", "greeter", "fail")
    assert failed.returncode == 3
    assert json.loads(failed.stdout) == {
        "success": False,
        "error": "nope",
        "error_type": "tool_error",
    }
    assert failed.stderr.splitlines() == ["ally: greeter: tool 'fail' failed: nope"]
    quiet = ally_cli("run", "greeter", "fail", "-q")
    assert quiet.returncode == 3 and quiet.stderr == ""
    as_json = ally_cli("run", "greeter", "fail", "--json")
    assert as_json.returncode == 3 and as_json.stderr == ""
    assert json.loads(as_json.stdout)["plugin"] == "greeter"


def test_exec_json_reports_the_program_its_exit_code_and_output(
    ally_cli: Any, make_plugin: Any
) -> None:
    make_plugin("greeter", GREET, files=GREET_FILES)
    code = "import sys; print('out'); print('err', file=sys.stderr); sys.exit(5)"
    proc = ally_cli("exec", "greeter", "--json", "--", "python", "-c", code)
    assert proc.returncode == 5, proc.stderr
    data = json.loads(proc.stdout)
    assert data["ally"] == 1 and data["plugin"] == "greeter" and data["exit_code"] == 5
    assert data["stdout"] == "out\n" and data["stderr"] == "err\n"
    assert data["command"][0] == str(Path(data["env"]) / "bin" / "python")
    assert data["command"][1:] == ["-c", code]
    # Options after `--` belong to the command, not to ally.
    passed = ally_cli("exec", "greeter", "--", "python", "-c", "import sys; print(sys.argv)", "-v")
    assert passed.stdout.strip() == "['-c', '-v']"
    unrunnable = ally_cli("exec", "greeter", "--", "./no-such-program")
    assert error_line(unrunnable).startswith("ally: error: greeter: cannot run ./no-such-program")


def test_remove_json_and_unknown_names_fail_with_a_guess(ally_cli: Any, make_plugin: Any):
    make_plugin("greeter", GREET, files=GREET_FILES)
    make_plugin("plain", PLAIN)
    assert ally_cli("install").returncode == 0
    for args in (("remove", "greeterr"), ("doctor", "greeterr"), ("update", "greeterr")):
        line = error_line(ally_cli(*args))
        assert "no plugin named 'greeterr'" in line and "(did you mean 'greeter'?)" in line, args
    proc = ally_cli("remove", "greeter", "plain", "--json")
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout)
    assert data["ally"] == 1
    assert [(e["name"], e["removed"]) for e in data["envs"]] == [
        ("greeter", True),
        ("plain", False),
    ]
    assert data["envs"][0]["freed_bytes"] > 0 and data["envs"][1]["freed_bytes"] == 0
    doctor = ally_cli("doctor", "plain", "--json")
    assert doctor.returncode == 0 and [p["name"] for p in json.loads(doctor.stdout)["plugins"]] == [
        "plain"
    ]


def test_remove_still_takes_the_env_of_a_plugin_that_is_gone(
    ally_cli: Any, make_plugin: Any
) -> None:
    import shutil

    plugin_dir = make_plugin("greeter", GREET, files=GREET_FILES)
    assert ally_cli("install").returncode == 0
    shutil.rmtree(plugin_dir)
    proc = ally_cli("remove", "greeter")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("removed the env of greeter")


# ---------------------------------------------------------------------------------------------
# update --all


def test_update_all_updates_every_plugin_and_wants_names_or_all(
    ally_cli: Any, make_plugin: Any
) -> None:
    make_plugin("greeter", GREET, files=GREET_FILES)
    make_plugin("other", GREET, files=GREET_FILES)
    make_plugin("plain", PLAIN)
    assert ally_cli("install").returncode == 0
    proc = ally_cli("update", "--all", "--json")
    assert proc.returncode == 0, proc.stderr
    actions = {p["name"]: p["action"] for p in json.loads(proc.stdout)["plugins"]}
    assert actions == {"greeter": "updated", "other": "updated", "plain": "none"}
    assert "give plugin names or --all" in error_line(ally_cli("update"))
    assert "not both" in error_line(ally_cli("update", "greeter", "--all"))
    rebuilt = ally_cli("reinstall", "--all", "--json")
    assert rebuilt.returncode == 0, rebuilt.stderr
    assert {p["name"] for p in json.loads(rebuilt.stdout)["plugins"]} == {
        "greeter",
        "other",
        "plain",
    }


# ---------------------------------------------------------------------------------------------
# option values checked as settings are


def test_jobs_zero_is_refused_as_the_setting_is(ally_cli: Any, make_plugin: Any, ally_home: Path):
    make_plugin("plain", PLAIN)
    expected = "expected a positive integer, got '0'"
    option = ally_cli("install", "-j", "0")
    assert option.returncode == 2
    assert f"argument -j/--jobs: {expected}" in option.stderr
    variable = ally_cli("install", env={"ALLY_JOBS": "0"})
    assert error_line(variable) == f"ally: error: $ALLY_JOBS: {expected}"
    config = ally_home / "config.toml"
    config.write_text("[ally]\njobs = 0\n" + config.read_text("utf-8"), "utf-8")
    in_file = ally_cli("install")
    assert error_line(in_file) == f"ally: error: {config}: jobs: {expected}"
    timeout = ally_cli("run", "plain", "t", "--timeout", "0")
    assert timeout.returncode == 2 and "expected a positive number, got '0'" in timeout.stderr


@pytest.mark.parametrize(
    ("settings", "toml", "expected"),
    [
        ({"jobs": 0}, "jobs = 0", "jobs: expected a positive integer, got '0'"),
        ({"jobs": "many"}, 'jobs = "many"', "jobs: expected a positive integer, got 'many'"),
        ({"offline": "maybe"}, 'offline = "maybe"', "offline: expected a boolean, got 'maybe'"),
        ({"offline": 1}, "offline = 1", "offline: expected true or false"),
        ({"installer": "conda"}, 'installer = "conda"', "installer: expected one of auto, uv"),
        ({"tool_timeout": -1}, "tool_timeout = -1", "tool_timeout: expected a positive number"),
        ({"pass_env": "A B"}, 'pass_env = "A B"', None),
        ({"pass_env": [1]}, "pass_env = [1]", "pass_env: expected a list of strings"),
        ({"jobz": 2}, "jobz = 2", "unknown setting(s): jobz (did you mean 'jobs'?)"),
    ],
)
def test_host_settings_are_checked_with_the_rules_and_messages_of_config_toml(
    ally_home: Path, settings: dict[str, Any], toml: str, expected: str | None
) -> None:
    from ally_core import ConfigError, Host

    config = ally_home / "config.toml"
    index = config.read_text("utf-8")
    if expected is None:
        assert Host(ally_home, settings=settings).settings.pass_env == ("A", "B")
        config.write_text(f"[ally]\n{toml}\n{index}", "utf-8")
        assert Host(ally_home).settings.pass_env == ("A", "B")
        return
    with pytest.raises(ConfigError) as by_argument:
        Host(ally_home, settings=settings)
    config.write_text(f"[ally]\n{toml}\n{index}", "utf-8")
    with pytest.raises(ConfigError) as by_file:
        Host(ally_home)
    said = str(by_argument.value).split(": ", 1)
    assert said[0] == "Host(settings=...)" and said[1].startswith(expected), said
    assert str(by_file.value) == f"{config}: {said[1]}"


# ---------------------------------------------------------------------------------------------
# names once, versions in order


def test_a_blocked_plugin_is_named_once_in_list_and_run(ally_cli: Any, make_plugin: Any):
    make_plugin("broken", {"tools": "x"})
    listed = ally_cli("list")
    (line,) = [x for x in listed.stdout.splitlines() if "broken" in x]
    assert line.startswith("\u2717 broken: plugin.json: $.tools: expected a list of tools")
    assert line.count("broken") == 1
    data = json.loads(ally_cli("list", "--json").stdout)
    assert data["plugins"][0]["reason"].startswith("plugin.json: $.tools")
    run = error_line(ally_cli("run", "broken", "t"))
    assert run.startswith("ally: error: broken: blocked: plugin.json: $.tools"), run
    assert run.count("broken") == 1


def test_versions_found_are_listed_in_version_order(ally_cli: Any, make_plugin: Any):
    make_plugin(
        "future",
        {"runtime": "python3", "runtime_version": ">=3.99", "dependencies": {"file": "r.txt"}},
        files={"r.txt": "allydemo-greet\n"},
    )
    proc = ally_cli("install", "--json")
    assert proc.returncode == 4
    (plugin,) = json.loads(proc.stdout)["plugins"]
    found = re.search(r"\(found: ([^)]*)\)", plugin["reason"])
    assert found, plugin["reason"]
    versions = found.group(1).split(", ")
    as_tuples = [tuple(int(p) for p in v.split(".")[:3]) for v in versions]
    assert as_tuples == sorted(as_tuples), versions
    assert len(versions) == len(set(versions))


def test_version_sorted_compares_versions_not_text():
    from ally_core.text import version_sorted

    assert version_sorted(["3.10.13", "3.9.18", "3.11.7", "3.9.18", "v?", "20.11.1"]) == [
        "3.9.18",
        "3.10.13",
        "3.11.7",
        "20.11.1",
        "v?",
    ]


# ---------------------------------------------------------------------------------------------
# --debug: the traceback of a runtime hook's error

BOOM_RUNTIME = """\
from ally_core import hookimpl


@hookimpl
def runtime_names():
    return ["boomrt"]


def explode(spec):
    raise RuntimeError("boom in " + spec.plugin_name)


@hookimpl
def env_identity(spec):
    if spec.runtime == "boomrt":
        explode(spec)
    return None
"""


@pytest.fixture
def boom_runtime(tmp_path: Path, make_plugin: Any) -> dict[str, str]:
    site = tmp_path / "site"
    info = site / "ally_runtime_boom-0.1.dist-info"
    info.mkdir(parents=True)
    (site / "ally_runtime_boom.py").write_text(BOOM_RUNTIME, "utf-8")
    (info / "METADATA").write_text(
        "Metadata-Version: 2.1\nName: ally-runtime-boom\nVersion: 0.1\n", "utf-8"
    )
    (info / "entry_points.txt").write_text("[ally]\nboomrt = ally_runtime_boom\n", "utf-8")
    make_plugin(
        "boomy",
        {
            "runtime": "boomrt",
            "dependencies": {"file": "deps"},
            "tools": [{"name": "t", "command": "x"}],
        },
        files={"deps": "x\n"},
    )
    return {"PYTHONPATH": str(site)}


@pytest.mark.parametrize("args", [("list",), ("install",), ("run", "boomy", "t")])
def test_debug_shows_the_traceback_of_a_hook_error(
    ally_cli: Any, boom_runtime: dict[str, str], args: tuple[str, ...]
) -> None:
    plain = ally_cli(*args, env=boom_runtime)
    assert "runtime error: RuntimeError: boom in boomy" in plain.stdout + plain.stderr
    assert "Traceback" not in plain.stderr
    debug = ally_cli("--debug", *args, env=boom_runtime)
    assert "runtime error: RuntimeError: boom in boomy" in debug.stdout + debug.stderr
    assert "ally: debug: boomy: the error of its runtime:" in debug.stderr
    assert "Traceback (most recent call last)" in debug.stderr
    assert re.search(r"ally_runtime_boom\.py\", line \d+, in explode", debug.stderr)
    assert "RuntimeError: boom in boomy" in debug.stderr


# ---------------------------------------------------------------------------------------------
# warnings once per change


def _warning_lines(proc: Any) -> list[str]:
    assert proc.returncode == 0, proc.stderr
    return [line for line in proc.stdout.splitlines() if line.startswith("    warning: ")]


def test_manifest_warnings_are_shown_once_per_change(
    ally_cli: Any, make_plugin: Any, ally_home: Path
) -> None:
    for name in ("a", "b", "c"):
        make_plugin(name, {**PLAIN, "colour": "red"})
    as_json = ally_cli("list", "--json")  # machines get every warning, and nothing is recorded
    assert [p["warnings"] for p in json.loads(as_json.stdout)["plugins"]] == [
        ["$.colour: unknown key (kept)"]
    ] * 3
    first = ally_cli("list")
    assert _warning_lines(first) == ["    warning: $.colour: unknown key (kept)"] * 3
    assert "with warnings shown before" not in first.stderr
    again = ally_cli("list")
    assert _warning_lines(again) == []
    assert [line[0] for line in again.stdout.splitlines()] == ["\u26a0"] * 3
    assert "ally: 3 plugin(s) with warnings shown before (-v shows them again)" in again.stderr
    assert _warning_lines(ally_cli("install")) == []  # one memory for every command
    assert len(_warning_lines(ally_cli("list", "-v"))) == 3
    assert ally_cli("list", "-q").stderr == ""
    for data in json.loads(ally_cli("list", "--json").stdout)["plugins"]:
        assert data["warnings"] == ["$.colour: unknown key (kept)"]
    # A changed plugin.json shows its warnings again, the others stay quiet.
    make_plugin("b", {**PLAIN, "colour": "blue", "descripton": "x"})
    changed = ally_cli("list")
    assert _warning_lines(changed) == [
        "    warning: $.colour: unknown key (kept)",
        "    warning: $.descripton: unknown key (kept); did you mean 'description'?",
    ]
    assert _warning_lines(ally_cli("list")) == []
    (state,) = (ally_home / "plugin-envs" / ".state").glob("seen-warnings.json")
    assert state.stat().st_mode & 0o777 == 0o600
