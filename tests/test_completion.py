"""Shell completion: the scripts ``ally completion SHELL`` prints, run in the real shells.

bash is always there; zsh and fish are used when installed (skipped with the reason
otherwise). The scripts call ``ally`` from ``PATH``: a wrapper running this interpreter's
``ally_core.cli`` is put first on it.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

GREETER = {
    "runtime": "python3",
    "tools": [{"name": "hello", "command": "python3"}, {"name": "shout", "command": "python3"}],
    "config": {"type": "object", "properties": {"token": {"type": "string"}, "lang": {}}},
}


@pytest.fixture
def shell_env(tmp_path: Path, ally_home: Path, make_plugin: Any) -> dict[str, str]:
    """An environment whose ``ally`` is this checkout's, with three plugins in the home."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    wrapper = bin_dir / "ally"
    wrapper.write_text(f'#!/bin/sh\nexec "{sys.executable}" -m ally_core.cli "$@"\n', "utf-8")
    wrapper.chmod(0o755)
    make_plugin("greeter", GREETER)
    make_plugin("grapher", {"tools": [{"name": "plot", "command": "python3"}]})
    make_plugin("dir-name", {"name": "declared-name"})
    return {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"}


def _bash(env: dict[str, str], words: list[str], cword: int) -> list[str]:
    """``_ally`` of the generated script in a real bash, as bash calls it on <TAB>."""
    program = (
        "source <(ally completion bash) || exit 9\n"
        'COMP_WORDS=("$@"); COMP_CWORD=$CWORD; COMP_LINE="$*"; COMP_POINT=${#COMP_LINE}\n'
        "_ally ally\n"
        'printf "%s\\n" "${COMPREPLY[@]}"\n'
    )
    proc = subprocess.run(
        ["bash", "--norc", "--noprofile", "-c", program, "bash", *words],
        env={**env, "CWORD": str(cword)},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    return [line for line in proc.stdout.splitlines() if line]


@pytest.mark.parametrize(
    ("words", "cword", "expected"),
    [
        (["ally", ""], 1, {"list", "install", "run", "exec", "help", "completion", "config"}),
        (["ally", "r"], 1, ["reinstall", "remove", "run", "runtimes"]),
        (["ally", "run", ""], 2, ["declared-name", "grapher", "greeter"]),
        (["ally", "run", "gre"], 2, ["greeter"]),
        (["ally", "run", "greeter", ""], 3, ["hello", "shout"]),
        (["ally", "run", "greeter", "hello", ""], 4, []),
        (["ally", "config", "set", "greeter", ""], 4, ["lang", "token"]),
        (["ally", "config", ""], 2, ["show", "set", "unset"]),
        (["ally", "doctor", "grapher", ""], 3, ["declared-name", "grapher", "greeter"]),
        (["ally", "list", "--"], 2, ["--help", "--quiet", "--verbose", "--json"]),
        (["ally", "install", "--installer", ""], 3, ["auto", "uv", "pip"]),
        (["ally", "install", "--installer", "=", "u"], 4, ["uv"]),
        (["ally", "install", "--installer", "=", "uv", "gra"], 5, ["grapher"]),
        (["ally", "help", "con"], 2, ["config"]),
        (["ally", "help", "config", "s"], 3, ["show", "set"]),
        (["ally", "completion", ""], 2, ["bash", "zsh", "fish"]),
        (["ally", "exec", "greeter", "--", "ls", ""], 5, []),
        (["ally", "nosuch", ""], 2, []),
    ],
)
def test_bash_completes_commands_options_plugins_and_tools(
    shell_env: dict[str, str], words: list[str], cword: int, expected: Any
) -> None:
    got = _bash(shell_env, words, cword)
    if isinstance(expected, set):
        assert expected <= set(got), got
        assert "__complete" not in got
    else:
        assert got == expected


def test_bash_completion_reads_the_home_given_on_the_command_line(
    shell_env: dict[str, str], tmp_path: Path
) -> None:
    other = tmp_path / "other-home"
    (other / "plugins" / "elsewhere").mkdir(parents=True)
    (other / "plugins" / "elsewhere" / "plugin.json").write_text(json.dumps({"name": "far"}))
    words = ["ally", "--home", str(other), "run", ""]
    assert _bash(shell_env, words, 4) == ["far"]
    extra = ["ally", "--plugins-dir", str(other / "plugins"), "remove", "f"]
    assert _bash(shell_env, extra, 4) == ["far"]


def test_a_broken_manifest_is_skipped_and_a_tab_never_prints_a_traceback(
    shell_env: dict[str, str], make_plugin: Any, ally_home: Path
) -> None:
    (ally_home / "plugins" / "bad").mkdir()
    (ally_home / "plugins" / "bad" / "plugin.json").write_text("{nope")
    assert _bash(shell_env, ["ally", "run", ""], 2) == ["declared-name", "grapher", "greeter"]
    proc = subprocess.run(
        ["ally", "__complete", "bash", "x"], env=shell_env, capture_output=True, text=True
    )
    assert proc.returncode == 2 and proc.stdout == "" and proc.stderr == ""


def test_complete_imports_nothing_heavy(shell_env: dict[str, str]) -> None:
    probe = (
        "import sys\n"
        "from ally_core.cli import main\n"
        "main(['__complete', 'bash', '2', 'ally', 'run', ''])\n"
        "heavy = ('virtualenv', 'uv', 'rich', 'jsonschema', 'packaging', 'cattrs', 'pluggy',\n"
        "         'filelock', 'ally_core.loader', 'ally_core.manifest', 'ally_core.runtimes')\n"
        "print(sorted(m for m in sys.modules if m.startswith(heavy)), file=sys.stderr)\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", probe], env=shell_env, capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == ["declared-name", "grapher", "greeter"]
    assert proc.stderr.strip() == "[]"


@pytest.mark.skipif(shutil.which("zsh") is None, reason="zsh is not installed")
def test_zsh_script_is_valid_and_completes(shell_env: dict[str, str]) -> None:
    script = subprocess.run(
        ["ally", "completion", "zsh"], env=shell_env, capture_output=True, text=True, check=True
    ).stdout
    check = subprocess.run(["zsh", "-n"], input=script, capture_output=True, text=True)
    assert check.returncode == 0, check.stderr
    # Outside a completion widget: compdef, compadd and _files stand in for zsh's own.
    program = (
        'compdef() { :; }; compadd() { print -l -- "$@" }; _files() { print FILES }\n'
        "source <(ally completion zsh)\n"
        'words=(ally run greeter ""); CURRENT=4; _ally\n'
        'words=(ally exec greeter -- ""); CURRENT=5; _ally\n'
    )
    proc = subprocess.run(
        ["zsh", "-f", "-c", program], env=shell_env, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["-Q", "--", "hello", "shout", "FILES"]


@pytest.mark.skipif(shutil.which("fish") is None, reason="fish is not installed")
def test_fish_script_is_valid_and_completes(shell_env: dict[str, str]) -> None:
    script = subprocess.run(
        ["ally", "completion", "fish"], env=shell_env, capture_output=True, text=True, check=True
    ).stdout
    check = subprocess.run(["fish", "--no-execute"], input=script, capture_output=True, text=True)
    assert check.returncode == 0, check.stderr
    program = (
        "ally completion fish | source\n"
        "complete -C'ally run gr'\n"
        "echo ---\n"
        "complete -C'ally run greeter '\n"
    )
    proc = subprocess.run(
        ["fish", "--no-config", "-c", program],
        env=shell_env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    first, second = proc.stdout.split("---\n")
    assert [line.split("\t")[0] for line in first.splitlines()] == ["grapher", "greeter"]
    assert [line.split("\t")[0] for line in second.splitlines()] == ["hello", "shout"]
