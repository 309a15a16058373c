"""A failed install says why: the lines of the installer's output that carry the cause.

The selection (``ally_core.installer_output.error_lines``) on the output of npm, pip, uv and
bundler as they print it, then real pip and uv runs whose cause is not in their last lines.
The real npm case (an out-of-sync package-lock.json) is in the node runtime's tests.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from ally_core import Host
from ally_core.installer_output import error_lines
from ally_core.testing import build_wheel

NPM_USAGE_HELP = [
    "npm error",
    "npm error Clean install a project",
    "npm error",
    "npm error Usage:",
    "npm error npm ci",
    "npm error",
    "npm error Options:",
    "npm error [--install-strategy <hoisted|nested|shallow|linked>] [--legacy-bundling]",
    "npm error [--strict-peer-deps] [--foreground-scripts] [--ignore-scripts]",
    "npm error",
    "npm error   --install-links",
    "npm error     When set file: protocol dependencies will be packed and installed as",
    "npm error",
    "npm error aliases: clean-install, ic, install-clean, isntall-clean",
    "npm error",
    'npm error Run "npm help ci" for more info',
    "npm error A complete log of this run can be found in: /root/.npm/_logs/x-debug-0.log",
]

CASES = {
    "npm ci, lock out of sync": (
        [
            "npm error code EUSAGE",
            "npm error",
            "npm error `npm ci` can only install packages when your package.json and "
            "package-lock.json or npm-shrinkwrap.json are in sync. Please update your lock "
            "file with `npm install` before continuing.",
            "npm error",
            "npm error Missing: dep-a@1.0.0 from lock file",
            *NPM_USAGE_HELP,
        ],
        [
            "npm error code EUSAGE",
            "npm error `npm ci` can only install packages when your package.json and "
            "package-lock.json or npm-shrinkwrap.json are in sync. Please update your lock "
            "file with `npm install` before continuing.",
            "npm error Missing: dep-a@1.0.0 from lock file",
        ],
    ),
    "npm 404": (
        [
            "npm error code E404",
            "npm error 404 Not Found - GET http://127.0.0.1:4873/ally-nope - Not found",
            "npm error 404",
            "npm error 404  'ally-nope@^1.0.0' is not in this registry.",
            "npm error 404",
            "npm error 404 Note that you can also install from a",
            "npm error 404 tarball, folder, http url, or git url.",
            "npm error A complete log of this run can be found in: /root/.npm/_logs/x.log",
        ],
        [
            "npm error code E404",
            "npm error 404 Not Found - GET http://127.0.0.1:4873/ally-nope - Not found",
            "npm error 404  'ally-nope@^1.0.0' is not in this registry.",
        ],
    ),
    # pip: the ERROR lines on stderr, why the resolution is impossible on stdout.
    "pip conflict": (
        [
            "Looking in links: /wheels",
            "Processing /wheels/allydemo_shout-1.0.0-py3-none-any.whl",
            "INFO: pip is looking at multiple versions of allydemo-c4 to determine which "
            "version is compatible with other requirements. This could take a while.",
            "ERROR: Cannot install allydemo-shout==1.0.0 and allydemo-c3 because these "
            "package versions have conflicting dependencies.",
            "",
            "The conflict is caused by:",
            "    allydemo-shout 1.0.0 depends on allydemo-greet>=1.0",
            "    allydemo-c4 1.0.0 depends on allydemo-greet<1",
            "",
            "Additionally, some packages in these conflicts have no matching distributions "
            "available for your environment:",
            "    allydemo-greet",
            "",
            "To fix this you could try to:",
            "1. loosen the range of package versions you've specified",
            "2. remove package versions to allow pip to attempt to solve the dependency "
            "conflict",
            "",
            "ERROR: ResolutionImpossible: for help visit https://pip.pypa.io/en/latest/topics/"
            "dependency-resolution/#dealing-with-dependency-conflicts",
        ],
        [
            "ERROR: Cannot install allydemo-shout==1.0.0 and allydemo-c3 because these "
            "package versions have conflicting dependencies.",
            "The conflict is caused by:",
            "allydemo-shout 1.0.0 depends on allydemo-greet>=1.0",
            "allydemo-c4 1.0.0 depends on allydemo-greet<1",
        ],
    ),
    "pip no such version": (
        [
            "Looking in links: /wheels",
            "ERROR: Could not find a version that satisfies the requirement allydemo-greet==9 "
            "(from versions: 1.0.0, 2.0.0)",
            "ERROR: No matching distribution found for allydemo-greet==9",
        ],
        [
            "ERROR: Could not find a version that satisfies the requirement allydemo-greet==9 "
            "(from versions: 1.0.0, 2.0.0)",
            "ERROR: No matching distribution found for allydemo-greet==9",
        ],
    ),
    # uv as on a terminal: the headline, the first cause and the conclusion survive the cut.
    "uv derivation": (
        [
            "Using Python 3.11.7 environment at: /envs/x",
            "  \u00d7 No solution found when resolving dependencies:",
            "  ╰─▶ Because all versions of c4 depend on greet<1 and all versions of c3 depend "
            "on c4==1.0.0, we can conclude that all versions of c3 depend on greet<1.",
            "      And because all versions of c2 depend on c3==1.0.0, we can conclude that "
            "all versions of c2 depend on greet<1.",
            "      And because all versions of c1 depend on c2==1.0.0, we can conclude that "
            "all versions of c1 depend on greet<1.",
            "      And because shout depends on greet>=1.0, we can conclude that c1 and shout "
            "are incompatible.",
            "      And because you require c1 and shout, we can conclude that your "
            "requirements are unsatisfiable.",
        ],
        [
            "\u00d7 No solution found when resolving dependencies:",
            "╰─▶ Because all versions of c4 depend on greet<1 and all versions of c3 depend "
            "on c4==1.0.0, we can conclude that all versions of c3 depend on greet<1.",
            "And because all versions of c1 depend on c2==1.0.0, we can conclude that "
            "all versions of c1 depend on greet<1.",
            "And because shout depends on greet>=1.0, we can conclude that c1 and shout "
            "are incompatible.",
            "And because you require c1 and shout, we can conclude that your "
            "requirements are unsatisfiable.",
        ],
    ),
    "bundler, no such version": (
        [
            "Fetching gem metadata from file:///gems/.",
            "Resolving dependencies...",
            "Could not find gem 'allydemo_ruby (= 9.0.0)' in rubygems repository",
            "file:///gems/ or installed locally.",
            "",
            "The source contains the following gems matching 'allydemo_ruby':",
            "  * allydemo_ruby-1.0.0",
            "  * allydemo_ruby-2.0.0",
        ],
        [
            "Could not find gem 'allydemo_ruby (= 9.0.0)' in rubygems repository",
            "file:///gems/ or installed locally.",
        ],
    ),
    "bundler, Gemfile error": (
        [
            "",
            "[!] There was an error parsing `Gemfile`: You cannot specify the same gem twice "
            "with different version requirements.",
            "You specified: allydemo_ruby (= 1.0.0) and allydemo_ruby (= 2.0.0). Bundler "
            "cannot continue.",
            "",
            " #  from /plugins/conflict/Gemfile:3",
            " #  -------------------------------------------",
            ' #  gem "allydemo_ruby", "1.0.0"',
            ' >  gem "allydemo_ruby", "2.0.0"',
            " #  -------------------------------------------",
        ],
        [
            "[!] There was an error parsing `Gemfile`: You cannot specify the same gem twice "
            "with different version requirements.",
            "You specified: allydemo_ruby (= 1.0.0) and allydemo_ruby (= 2.0.0). Bundler "
            "cannot continue.",
        ],
    ),
}


@pytest.mark.parametrize("case", CASES)
def test_error_lines_pick_the_cause_out_of_each_installers_output(case: str) -> None:
    output, expected = CASES[case]
    assert error_lines(output) == expected


def test_error_lines_without_a_marker_pick_nothing_and_respect_the_limit() -> None:
    assert error_lines(["Resolving dependencies...", "killed", ""]) == []
    many = [f"error: step {i} failed" for i in range(8)]
    assert error_lines(many, limit=4) == [many[0], many[1], many[6], many[7]]
    assert error_lines(["error: " + "x" * 1000])[0].endswith("…")


# -- real installers --------------------------------------------------------------------------


@pytest.fixture
def chain_wheels(tmp_path: Path, wheelhouse: Path, ally_home: Path) -> Path:
    """Wheels whose dependencies conflict nine levels down, on top of the session's."""
    extra = tmp_path / "chain-wheels"
    extra.mkdir()
    build_wheel(extra, "allydemo-greet", "0.5.0")
    chain = [f"allydemo-c{i}" for i in range(1, 10)]
    for name, needs in zip(chain, chain[1:]):
        build_wheel(extra, name, "1.0.0", requires=[f"{needs}>=1"])
    build_wheel(extra, chain[-1], "1.0.0", requires=["allydemo-greet<1"])
    (ally_home / "config.toml").write_text(
        "[ally.index]\nno_index = true\nfind_links = "
        + json.dumps([str(wheelhouse), str(extra)])
        + "\n",
        "utf-8",
    )
    return extra


@pytest.mark.parametrize(
    ("backend", "expected"),
    [
        (
            "uv",
            [
                "No solution found when resolving dependencies",
                "Because all versions of allydemo-c9 depend on allydemo-greet<1",
                "we can conclude that your requirements are unsatisfiable",
            ],
        ),
        (
            "pip",
            [
                "because these package versions have conflicting dependencies",
                "allydemo-shout 1.0.0 depends on allydemo-greet>=1.0",
                "allydemo-c9 1.0.0 depends on allydemo-greet<1",
            ],
        ),
    ],
)
def test_an_impossible_pin_is_reported_with_its_cause(
    chain_wheels: Path,
    ally_home: Path,
    make_plugin: Any,
    monkeypatch: pytest.MonkeyPatch,
    backend: str,
    expected: list[str],
) -> None:
    monkeypatch.setenv("ALLY_INSTALLER", backend)
    make_plugin(
        "impossible",
        {"runtime": "python3", "dependencies": {"file": "requirements.txt"}},
        files={"requirements.txt": "allydemo-c1\nallydemo-shout==1.0.0\n"},
    )
    (outcome,) = Host(ally_home).load()
    assert outcome.status == "blocked"
    assert "\n" not in outcome.reason
    for text in expected:
        assert text in outcome.reason
    for noise in ("Using Python", "To fix this", "remove package versions", "ResolutionImpossible"):
        assert noise not in outcome.reason
