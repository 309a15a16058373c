"""Dependency files stay inside the plugin: includes are checked, fingerprinted and kept private.

A requirements file may include other files (``-r``, ``-c``), local packages (``-e``,
``./pkg``, ``name @ file:…``) and local indexes (``-f``): each must lie inside the plugin
directory, and editing an included file rebuilds the env. What ally writes about a build
(failure records, translated requirements, the warm index) is readable by its owner only.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from ally_core import Host
from ally_core.testing import build_wheel

MAIN = (
    "import json, sys, allydemo_greet\n"
    "json.load(sys.stdin)\n"
    "print(json.dumps({'success': True, 'result': allydemo_greet.__version__}))\n"
)
MANIFEST = {
    "runtime": "python3",
    "dependencies": {"file": "requirements.txt"},
    "tools": [{"name": "v", "command": "python3", "args": ["main.py"]}],
}


@pytest.fixture
def outside(tmp_path: Path) -> Path:
    """Files outside every plugin: a requirements file, a constraints file, a package dir."""
    root = tmp_path / "outside"
    root.mkdir()
    (root / "reqs.txt").write_text("allydemo-greet==1.0.0\n")
    (root / "pkg").mkdir()
    (root / "pkg" / "setup.py").write_text("raise SystemExit('never run')\n")
    build_wheel(root / "wheels", "allydemo-greet", "1.0.0")
    return root


def _lines(outside: Path) -> dict[str, str]:
    return {
        "-r absolute": f"-r {outside}/reqs.txt",
        "--requirement=absolute": f"--requirement={outside}/reqs.txt",
        "-r glued": f"-r{outside}/reqs.txt",
        "-r relative escape": "-r ../../../outside/reqs.txt",
        "-r file url": f"-r {(outside / 'reqs.txt').as_uri()}",
        "-c absolute": f"allydemo-greet\n-c {outside}/reqs.txt",
        "--constraint absolute": f"allydemo-greet\n--constraint {outside}/reqs.txt",
        "-e absolute": f"-e {outside}/pkg",
        "--editable file url": f"--editable {(outside / 'pkg').as_uri()}",
        "local path": f"{outside}/pkg",
        "direct reference": f"allydemo-greet @ {(outside / 'wheels').as_uri()}/"
        "allydemo_greet-1.0.0-py3-none-any.whl",
        "-f absolute": f"--no-index\n-f {outside}/wheels\nallydemo-greet",
        "continued line": f"-r \\\n  {outside}/reqs.txt",
    }


CASES = [
    "-r absolute",
    "--requirement=absolute",
    "-r glued",
    "-r relative escape",
    "-r file url",
    "-c absolute",
    "--constraint absolute",
    "-e absolute",
    "--editable file url",
    "local path",
    "direct reference",
    "-f absolute",
    "continued line",
]


@pytest.mark.parametrize("case", CASES)
def test_a_requirements_line_leaving_the_plugin_blocks_it_in_one_line(
    case, ally_home: Path, make_plugin, outside: Path
):
    line = _lines(outside)[case]
    make_plugin("esc", MANIFEST, {"requirements.txt": f"# deps\n{line}\n", "main.py": MAIN})
    host = Host(ally_home)
    (outcome,) = host.load()
    assert not outcome.ready
    reason = outcome.reason
    assert "\n" not in reason
    assert "requirements.txt line " in reason, reason
    assert "outside the plugin directory" in reason, reason
    # Nothing was built: no installer ever read the outside file.
    store = ally_home / "plugin-envs" / ".store"
    assert not store.exists() or not any(store.iterdir())


def test_an_include_of_an_include_leaving_the_plugin_names_its_file_and_line(
    ally_home: Path, make_plugin, outside: Path
):
    make_plugin(
        "nested",
        MANIFEST,
        {
            "requirements.txt": "-r reqs/base.txt\n",
            "reqs/base.txt": f"allydemo-greet\n\n-c {outside}/reqs.txt\n",
            "main.py": MAIN,
        },
    )
    (outcome,) = Host(ally_home).load()
    assert not outcome.ready
    assert f"reqs/base.txt line 3: '-c {outside}/reqs.txt'" in outcome.reason, outcome.reason


def test_a_pyproject_dependency_on_a_file_outside_is_refused(
    ally_home: Path, make_plugin, outside: Path
):
    wheel = (outside / "wheels" / "allydemo_greet-1.0.0-py3-none-any.whl").as_uri()
    make_plugin(
        "pp",
        {**MANIFEST, "dependencies": {"file": "pyproject.toml"}},
        {
            "pyproject.toml": '[project]\nname = "pp"\nversion = "1"\n'
            f'dependencies = ["allydemo-greet @ {wheel}"]\n',
            "main.py": MAIN,
        },
    )
    (outcome,) = Host(ally_home).load()
    assert not outcome.ready
    assert "pyproject.toml: 'allydemo-greet @ file:" in outcome.reason, outcome.reason
    assert f"reads {outside}/wheels/allydemo_greet" in outcome.reason
    assert "outside the plugin directory" in outcome.reason


def test_a_symlinked_include_pointing_outside_is_refused(
    ally_home: Path, make_plugin, outside: Path
):
    plugin = make_plugin("link", MANIFEST, {"requirements.txt": "-r more.txt\n", "main.py": MAIN})
    (plugin / "more.txt").symlink_to(outside / "reqs.txt")
    (outcome,) = Host(ally_home).load()
    assert not outcome.ready
    assert "requirements.txt line 1: '-r more.txt'" in outcome.reason, outcome.reason


def test_includes_inside_the_plugin_work_also_from_a_subdirectory(
    ally_home: Path, make_plugin, wheelhouse: Path
):
    make_plugin(
        "inside",
        {**MANIFEST, "dependencies": {"file": "reqs/main.txt"}},
        {
            "reqs/main.txt": "-r ../base.txt  # the shared pins\n-c pins.txt\n",
            "base.txt": "allydemo-greet\n",
            "reqs/pins.txt": "allydemo-greet==1.0.0\n",
            "main.py": MAIN,
        },
    )
    (outcome,) = Host(ally_home).load()
    assert outcome.ready, outcome.reason
    assert outcome.packages == {"allydemo-greet": "1.0.0"}


@pytest.mark.parametrize("fresh_host", [False, True], ids=["same host", "new host"])
def test_editing_an_included_file_rebuilds_the_env(fresh_host: bool, ally_home: Path, make_plugin):
    plugin = make_plugin(
        "inc",
        MANIFEST,
        {
            "requirements.txt": "-r base.txt\n",
            "base.txt": "-c pins.txt\nallydemo-greet\n",
            "pins.txt": "allydemo-greet==1.0.0\n",
            "main.py": MAIN,
        },
    )
    host = Host(ally_home)
    first = host.ensure("inc")
    assert first.ready and first.action == "built", first.reason
    assert first.packages == {"allydemo-greet": "1.0.0"}
    assert first.tool("v").call({}).result == "1.0.0"
    # Two levels down, same size: only the content changes.
    (plugin / "pins.txt").write_text("allydemo-greet==2.0.0\n")
    again = (Host(ally_home) if fresh_host else host).ensure("inc")
    assert again.ready, again.reason
    assert again.action == "repaired"
    assert again.repair_reason == "included requirement files changed"
    assert again.packages == {"allydemo-greet": "2.0.0"}
    assert again.tool("v").call({}).result == "2.0.0"


def test_unchanged_includes_keep_the_env_without_spawning(ally_home: Path, make_plugin, no_spawn):
    make_plugin(
        "inc",
        MANIFEST,
        {"requirements.txt": "-r base.txt\n", "base.txt": "allydemo-greet\n", "main.py": MAIN},
    )
    first = Host(ally_home).ensure("inc")
    assert first.ready and first.action == "built", first.reason
    with no_spawn():
        again = Host(ally_home).ensure("inc")
    assert again.ready and again.action == "none"


# ---------------------------------------------------------------------------------------------
# what ally writes stays private


def _readable_by_others(root: Path, needle: str, skip: Path) -> list[str]:
    found = []
    for path in root.rglob("*"):
        if path.is_symlink() or not path.is_file() or path.is_relative_to(skip):
            continue
        try:
            text = path.read_bytes().decode("utf-8", "replace")
        except OSError:
            continue
        if needle in text and path.stat().st_mode & (stat.S_IRGRP | stat.S_IROTH):
            found.append(f"{path} {oct(path.stat().st_mode & 0o777)}")
    return found


def test_a_private_files_content_never_lands_in_a_file_others_can_read(
    ally_home: Path, make_plugin, monkeypatch
):
    """An installer error quoting a 0600 file ends up in a failure record: 0600 as well."""
    secret = "topsecret-value-7c1f"
    plugin = make_plugin(
        "private",
        MANIFEST,
        {"requirements.txt": "-r private.txt\n", "private.txt": f"{secret} ==\n", "main.py": MAIN},
    )
    os.chmod(plugin / "private.txt", 0o600)
    monkeypatch.setenv("ALLY_INSTALLER", "uv")
    (outcome,) = Host(ally_home).load()
    assert not outcome.ready
    assert secret in outcome.reason  # the installer quoted it: ally keeps its words
    records = list(ally_home.rglob("private.failed.json"))
    assert records and all(stat.S_IMODE(r.stat().st_mode) == 0o600 for r in records)
    assert _readable_by_others(ally_home, secret, skip=ally_home / "plugins") == []


def test_a_private_pyproject_is_translated_into_a_private_file(ally_home: Path, make_plugin):
    marker = "allydemo-greet==1.0.0"
    plugin = make_plugin(
        "pp",
        {**MANIFEST, "dependencies": {"file": "pyproject.toml"}},
        {
            "pyproject.toml": '[project]\nname = "pp"\nversion = "1"\n'
            f'dependencies = ["{marker}"]\n',
            "main.py": MAIN,
        },
    )
    os.chmod(plugin / "pyproject.toml", 0o600)
    (outcome,) = Host(ally_home).load()
    assert outcome.ready, outcome.reason
    assert _readable_by_others(ally_home, marker, skip=ally_home / "plugins") == []


def test_state_files_are_private(ally_home: Path, make_plugin):
    """The warm index (it holds install commands) and the state dir."""
    from ally_core.warm_index import INDEX_NAME

    make_plugin(
        "idx",
        {"runtime": "python3", "dependencies": {"install_command": "python -c pass"}},
    )
    host = Host(ally_home)
    (outcome,) = host.load()
    assert outcome.ready, outcome.reason
    Host(ally_home).load()
    index = host.paths.state_dir / INDEX_NAME
    assert index.is_file()
    assert stat.S_IMODE(index.stat().st_mode) == 0o600
