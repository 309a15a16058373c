"""pyproject.toml as a dependency file: PEP 621 dependencies, PEP 735 dependency groups
(``dependencies.groups``), and never a "ready" env with packages silently missing."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from ally_core import Host
from ally_core.runtimes.python import installed_packages

MAIN = (
    "import json, sys\njson.load(sys.stdin)\nprint(json.dumps({'success': True, 'result': 'ok'}))\n"
)


def _plugin(make_plugin, pyproject: str, **deps: Any) -> Path:
    return make_plugin(
        "pp",
        {
            "runtime": "python3",
            "dependencies": {"file": "pyproject.toml", **deps},
            "tools": [{"name": "v", "command": "python3", "args": ["main.py"]}],
        },
        {"pyproject.toml": pyproject, "main.py": MAIN},
    )


GROUPS = """
[project]
name = "pp"
version = "1"
dependencies = ["allydemo-greet==1.0.0"]

[dependency-groups]
Loud = ["allydemo-shout"]
all = [{include-group = "loud"}, "allydemo-greet>=1"]
"""


@pytest.mark.parametrize("backend", ["uv", "pip"])
def test_named_dependency_groups_are_installed_with_their_includes(
    backend, ally_home: Path, make_plugin
):
    _plugin(make_plugin, GROUPS, groups=["all"])
    (outcome,) = Host(ally_home, settings={"installer": backend}).load()
    assert outcome.ready, outcome.reason
    packages = installed_packages(outcome.env.path)
    assert packages["allydemo-greet"] == "1.0.0"
    assert packages["allydemo-shout"] == "1.0.0"


def test_without_groups_only_the_project_dependencies_are_installed(ally_home: Path, make_plugin):
    _plugin(make_plugin, GROUPS)
    (outcome,) = Host(ally_home).load()
    assert outcome.ready, outcome.reason
    assert outcome.packages == {"allydemo-greet": "1.0.0"}


def test_changing_the_groups_rebuilds_the_env(ally_home: Path, make_plugin):
    plugin = _plugin(make_plugin, GROUPS)
    first = Host(ally_home).ensure("pp")
    assert first.ready and "allydemo-shout" not in first.packages
    _plugin(make_plugin, GROUPS, groups=["loud"])
    assert plugin.is_dir()
    second = Host(ally_home).ensure("pp")
    assert second.ready, second.reason
    assert second.action == "repaired"
    assert "allydemo-shout" in second.packages


@pytest.mark.parametrize(
    ("pyproject", "deps", "expected"),
    [
        pytest.param(
            '[tool.poetry]\nname = "pp"\n\n[tool.poetry.dependencies]\npython = "^3.9"\n'
            'allydemo-greet = "^1.0"\n',
            {},
            "only in [tool.poetry.dependencies], Poetry's own format",
            id="poetry only",
        ),
        pytest.param(
            '[project]\nname = "pp"\nversion = "1"\n\n[dependency-groups]\n'
            'runtime = ["allydemo-greet"]\n',
            {},
            "no [project].dependencies, only [dependency-groups] (runtime)",
            id="groups only, none named",
        ),
        pytest.param(
            '[project]\nname = "pp"\nversion = "1"\ndynamic = ["dependencies"]\n',
            {},
            "[project].dependencies is dynamic",
            id="dynamic dependencies",
        ),
        pytest.param(GROUPS, {"groups": ["docs"]}, "has no group 'docs'", id="unknown group"),
        pytest.param(
            '[project]\nname = "pp"\nversion = "1"\ndependencies = []\n',
            {"groups": ["dev"]},
            "has no [dependency-groups] table",
            id="no groups table",
        ),
        pytest.param(
            '[dependency-groups]\na = [{include-group = "b"}]\nb = [{include-group = "a"}]\n',
            {"groups": ["a"]},
            "includes itself (a -> b -> a)",
            id="cycle",
        ),
        pytest.param(
            '[dependency-groups]\na = ["allydemo-greet", 3]\n',
            {"groups": ["a"]},
            "[dependency-groups].a[1]: expected a requirement string",
            id="bad entry",
        ),
        pytest.param(GROUPS, {"groups": "all"}, "expected a list of group names", id="not a list"),
    ],
)
def test_a_pyproject_that_would_install_less_than_it_says_blocks_in_one_line(
    pyproject, deps, expected, ally_home: Path, make_plugin
):
    _plugin(make_plugin, pyproject, **deps)
    (outcome,) = Host(ally_home).load()
    assert not outcome.ready, outcome.packages
    assert "\n" not in outcome.reason
    assert expected in outcome.reason, outcome.reason
    store = ally_home / "plugin-envs" / ".store"
    assert not store.exists() or not any(store.iterdir()), "nothing is built"


def test_groups_with_a_requirements_file_are_refused(ally_home: Path, make_plugin):
    make_plugin(
        "req",
        {
            "runtime": "python3",
            "dependencies": {"file": "requirements.txt", "groups": ["dev"]},
        },
        {"requirements.txt": "allydemo-greet\n"},
    )
    (outcome,) = Host(ally_home).load()
    assert not outcome.ready
    assert "$.dependencies.groups: dependency groups are read from a pyproject.toml" in (
        outcome.reason
    )


def test_a_poetry_2_file_with_project_dependencies_is_read(ally_home: Path, make_plugin):
    _plugin(
        make_plugin,
        '[project]\nname = "pp"\nversion = "1"\ndependencies = ["allydemo-greet==1.0.0"]\n\n'
        '[tool.poetry.dependencies]\npython = "^3.9"\nallydemo-greet = "^1.0"\n',
    )
    (outcome,) = Host(ally_home).load()
    assert outcome.ready, outcome.reason
    assert outcome.packages == {"allydemo-greet": "1.0.0"}
