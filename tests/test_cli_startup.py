"""What ``ally`` imports and spawns to start: only what the command needs.

The times are measured by ``benchmarks/cli_startup.py`` (never asserted here); these tests
pin down the causes: which modules a warm ``ally list`` / ``ally run`` imports, that the
entry-point scan is remembered and forgotten exactly when an installed distribution changes,
and that ``ally run`` starts no process but the tool.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

#: Imported by nothing a warm list or run of a plugin without a schema needs.
NOT_ON_THE_WARM_PATH = (
    "importlib.metadata",  # the entry-point scan: remembered in the warm index
    "cattrs",  # manifests come from the warm index
    "jsonschema",  # no schema to check
    "_hashlib",  # OpenSSL: the env context's digest is BLAKE2
    "tarfile",
    "zipfile",
    "gzip",  # bundles
    "logging",  # nothing logged
    "secrets",
    "random",
    "concurrent.futures",
    "difflib",  # no guess to make
    "packaging",
    "rich",
    "virtualenv",
    "uv",
    "filelock",
)

#: Besides those: a warm list runs no process and reads no config, so it builds none of
#: what runs tools, parses TOML, or installs (the runtimes import their build code on use).
NOT_ON_A_WARM_LIST = (
    "tomllib",  # an unchanged config.toml comes from the warm index
    "tomli",
    "ally_core.tools",
    "ally_core.replies",
    "ally_core.forms",
    "ally_core.plugin_config",
    "ally_core.plugin_schema",
    "ally_core.config_home",
    "ally_core.installer_output",
    "ally_runtime_node._build",
    "ally_runtime_node._npm",
    "ally_runtime_node._bundle",
    "ally_runtime_node._interpreters",  # (a home without node or ruby plugins: the runtimes
    "ally_runtime_node._semver",  # import only their names)
    "ally_runtime_ruby._build",
    "ally_runtime_ruby._gemfile",
    "ally_runtime_ruby._interpreters",
    "ally_core.runtimes.python.build",
    "ally_core.runtimes.python.installers",  # (and through it pip, uv, virtualenv's code)
    "ally_core.runtimes.python.depfile",  # the key of an unchanged plugin is remembered
    "ally_core.runtimes.python.interpreters",
    "shutil",  # (it imports bz2 and lzma)
    "configparser",  # pip's config files are watched by identity, parsed when a key changes
)

PROBE = """
import json, subprocess, sys
spawned = []
original = subprocess.Popen.__init__
def record(self, args, *a, **kw):
    spawned.append([str(x) for x in args] if not isinstance(args, (str, bytes)) else [args])
    original(self, args, *a, **kw)
subprocess.Popen.__init__ = record
from ally_core.cli import main
import contextlib, io
out = io.StringIO()
with contextlib.redirect_stdout(out):
    code = main(sys.argv[1:])
print(json.dumps({"code": code, "modules": sorted(sys.modules), "spawned": spawned,
                  "stdout": out.getvalue()}), file=sys.stderr)
"""


def _probe(args: list[str], env: dict[str, str], cwd: Path) -> dict[str, Any]:
    proc = subprocess.run(
        [sys.executable, "-c", PROBE, *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=cwd,
        timeout=300,
    )
    data: dict[str, Any] = json.loads(proc.stderr.strip().splitlines()[-1])
    assert data["code"] == 0, proc.stderr
    return data


@pytest.fixture
def warm_home(ally_home: Path, make_plugin: Any, ally_cli: Any, tmp_path: Path) -> dict[str, Any]:
    """A home with a plugin with dependencies, installed, its warm index written."""
    make_plugin(
        "greeter",
        {
            "runtime": "python3",
            "dependencies": {"file": "requirements.txt"},
            "tools": [{"name": "hello", "command": "python3", "args": ["hello.py"]}],
        },
        files={
            "requirements.txt": "allydemo-greet\n",
            "hello.py": "import json; print(json.dumps({'success': True}))\n",
        },
    )
    assert ally_cli("install").returncode == 0
    time.sleep(2.2)  # ally persists nothing derived from files changed in the last 2 s
    env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1"}
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    for _ in range(2):  # the first one writes the warm index (and the entry points)
        _probe(["list"], env, cwd)
    return {"env": env, "cwd": cwd}


@pytest.mark.parametrize("args", [["list"], ["list", "--json"], ["run", "greeter", "hello"]])
def test_a_warm_command_imports_only_what_it_needs(warm_home: dict[str, Any], args: list[str]):
    data = _probe(args, warm_home["env"], warm_home["cwd"])
    heavy = [
        m
        for m in data["modules"]
        if any(m == h or m.startswith(h + ".") for h in NOT_ON_THE_WARM_PATH)
    ]
    assert heavy == [], f"ally {' '.join(args)} imported {heavy}"
    if args == ["list"]:  # (--json shows each plugin's config schema, its secrets masked)
        extra = [m for m in NOT_ON_A_WARM_LIST if m in data["modules"]]
        assert extra == [], f"ally {' '.join(args)} imported {extra}"


def test_ally_run_starts_no_process_but_the_tool(warm_home: dict[str, Any]):
    data = _probe(["run", "greeter", "hello"], warm_home["env"], warm_home["cwd"])
    assert len(data["spawned"]) == 1, data["spawned"]
    assert data["spawned"][0][-1] == "hello.py"


# ---------------------------------------------------------------------------------------------
# the entry-point scan, remembered

RUNTIME = """\
from ally_core import hookimpl


@hookimpl
def runtime_names():
    return ["{name}"]
"""


def _write_dist(site: Path, ep_name: str) -> Path:
    info = site / "ally_runtime_extra-0.1.dist-info"
    info.mkdir(parents=True, exist_ok=True)
    (site / "ally_runtime_extra.py").write_text(RUNTIME.format(name=ep_name), "utf-8")
    (info / "METADATA").write_text(
        "Metadata-Version: 2.1\nName: ally-runtime-extra\nVersion: 0.1\n", "utf-8"
    )
    (info / "entry_points.txt").write_text(f"[ally]\n{ep_name} = ally_runtime_extra\n", "utf-8")
    return info


def test_entry_points_are_remembered_until_a_distribution_changes(
    make_plugin: Any, tmp_path: Path
) -> None:
    make_plugin("plain")
    site = tmp_path / "site"
    site.mkdir()
    cwd = tmp_path / "cwd"  # sys.path[0] of `python -c`: a directory nothing changes
    cwd.mkdir()
    env = {**os.environ, "PYTHONPATH": str(site)}

    def runtimes(environ: dict[str, str] = env) -> tuple[set[str], bool]:
        """The runtimes ``ally runtimes`` lists, and whether it scanned entry points."""
        data = _probe(["runtimes", "--json"], environ, cwd)
        listed = json.loads(data["stdout"])["runtimes"]
        return {r["name"] for r in listed}, "importlib.metadata" in data["modules"]

    _probe(["list"], env, cwd)  # scans, and remembers in the warm index
    names, scanned = runtimes()
    assert "extra" not in names and not scanned

    info = _write_dist(site, "extra")  # installed: a directory of sys.path changes
    names, scanned = runtimes()
    assert "extra" in names and scanned
    _probe(["list"], env, cwd)
    names, scanned = runtimes()
    assert "extra" in names and not scanned

    # entry_points.txt edited in place: no directory of sys.path changes
    (info / "entry_points.txt").write_text("[ally]\nrenamed = ally_runtime_extra\n", "utf-8")
    names, scanned = runtimes()
    assert "renamed" in names and "extra" not in names and scanned
    _probe(["list"], env, cwd)

    for path in sorted(info.iterdir()):
        path.unlink()
    info.rmdir()  # uninstalled
    names, scanned = runtimes()
    assert not {"extra", "renamed"} & names and scanned
    # Another sys.path is another answer.
    other = _write_dist(tmp_path / "other", "extra").parent
    names, scanned = runtimes({**os.environ, "PYTHONPATH": str(other)})
    assert "extra" in names and scanned


def test_a_damaged_entry_point_cache_is_a_scan(ally_cli: Any, make_plugin: Any, tmp_path: Path):
    from ally_core.entry_points import ally_entry_points
    from ally_core.warm_index import WarmIndex

    index = WarmIndex(tmp_path / "index.bin")
    first = ally_entry_points(index)
    assert {ep[0] for ep in first} >= {"node", "ruby"}
    for bad in (None, 3, ["x"], [[], "y"], [[1, 2, 3], [["a"]]]):
        index.put("entry_points", "ally", None, bad)
        assert ally_entry_points(index) == first
    assert ally_entry_points(index) == first  # and the scan was remembered again


def test_no_config_file_no_toml_parser(ally_home: Path, make_plugin: Any, tmp_path: Path):
    make_plugin("plain", {"tools": [{"name": "t", "command": "python3"}]})
    (ally_home / "config.toml").unlink()
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    _probe(["list"], dict(os.environ), cwd)  # the entry-point scan (email imports datetime)
    data = _probe(["list"], dict(os.environ), cwd)
    assert not {"tomllib", "tomli", "datetime"} & set(data["modules"])


def test_an_unchanged_config_file_is_parsed_once(
    warm_home: dict[str, Any], ally_home: Path, ally_cli: Any
):
    config = ally_home / "config.toml"
    assert config.is_file()
    assert "tomllib" not in _probe(["list"], warm_home["env"], warm_home["cwd"])["modules"]
    # A change is read at once: a bad value now fails every command.
    original = config.read_text("utf-8")
    config.write_text("[ally]\njobs = 0\n" + original, "utf-8")
    failed = ally_cli("list")
    assert failed.returncode != 0 and "jobs" in failed.stderr, failed.stderr
    # A file with an @ (an index URL may carry a password) is parsed every time, and never
    # copied into the warm index.
    config.write_text("# maintained by ops@example.org\n" + original, "utf-8")
    for _ in range(2):
        assert "tomllib" in _probe(["list"], warm_home["env"], warm_home["cwd"])["modules"]
    from ally_core.paths import AllyPaths
    from ally_core.warm_index import INDEX_NAME

    index = AllyPaths.from_env(ally_home, (), os.environ).state_dir / INDEX_NAME
    assert index.is_file()
    assert b"ops@example.org" not in index.read_bytes()


def test_the_cheap_look_for_claude_style_plugins_looks_where_they_are_read():
    from ally_core.mcp_plugins import commands, manifest

    assert "/".join(commands._CLAUDE_MANIFEST) == manifest.CLAUDE_MANIFEST


def test_help_builds_its_parser_without_the_models():
    probe = (
        "import sys\n"
        "from ally_core.cli import build_parser\n"
        "build_parser().format_help()\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in"
        " {'attr', 'attrs', 'pluggy', 'cattrs', 'shutil'}))\n"
    )
    proc = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"


@pytest.mark.parametrize(
    "argv",
    [
        ["list"],
        ["-q", "list", "--json"],
        ["--home", "/h", "--plugins-dir", "/p", "-v", "install", "a", "b", "-j", "2"],
        ["--home=/h", "update", "--all", "--offline"],
        ["--debug", "run", "p", "t", "--input", "{}", "--config", "k=v", "--timeout", "5"],
        ["exec", "p", "--", "python", "-V"],
        ["config", "set", "p", "k", "v"],
        ["config", "--json"],
        ["mcp", "serve", "--plugin", "p", "--no-warm-workers"],
        ["mcp", "config", "--via-launch", "p"],
        ["remove", "x"],
        ["gc", "--dry-run"],
        ["doctor", "--fix", "p"],
        ["bundle", "p", "-o", "out.tar.gz"],
        ["completion", "bash"],
        ["schema"],
        ["runtimes", "--json"],
    ],
)
def test_the_parser_of_one_command_parses_as_the_whole_parser(argv: list[str]):
    from ally_core.cli import _command_of, build_parser

    only = _command_of(argv)
    assert only is not None and only in argv

    def parsed(parser: Any) -> dict[str, Any]:
        values = vars(parser.parse_args(argv))
        func = values.pop("func")
        cells = [c.cell_contents for c in func.__closure__ or ()]
        return {**values, "func": (func.__code__, cells)}

    assert parsed(build_parser(only)) == parsed(build_parser())


@pytest.mark.parametrize(
    "argv", [[], ["--help"], ["help", "run"], ["lst"], ["--home"], ["-x", "list"], ["--version"]]
)
def test_help_errors_and_guesses_use_the_whole_parser(argv: list[str]):
    from ally_core.cli import _command_of

    assert _command_of(argv) is None


def test_the_command_words_are_the_parsers_commands():
    from ally_core.cli import _COMMANDS, build_parser
    from ally_core.cli_options import _subcommands

    # `help` is left out on purpose: it prints the whole parser's help anyway.
    assert set(_subcommands(build_parser())) - {"help"} == _COMMANDS


@pytest.mark.parametrize(
    "argv",
    [
        ["list", "--bogus"],
        ["run", "p"],
        ["install", "-j", "0"],
        ["-q", "remove"],
        ["config", "set", "p"],
        ["mcp", "serve", "--http"],
        ["update", "--all", "x", "-q", "-v", "--nope"],
    ],
)
def test_a_command_lines_errors_read_the_same_with_its_parser_alone(argv: list[str]):
    import contextlib
    import io

    from ally_core.cli import _command_of, build_parser

    def error(parser: Any) -> str:
        err = io.StringIO()
        with contextlib.redirect_stderr(err), pytest.raises(SystemExit) as exit_:
            parser.parse_args(argv)
        assert exit_.value.code == 2
        return err.getvalue()

    only = _command_of(argv)
    assert only is not None
    assert error(build_parser(only)) == error(build_parser())
