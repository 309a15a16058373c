"""The semver range check agrees with npm's own ``semver`` package."""

from __future__ import annotations

import itertools
import json
import os
import random
import shutil
import subprocess

import pytest
from ally_runtime_node import satisfies
from ally_runtime_node._semver import parse_version

VERSIONS = [
    "0.0.0",
    "0.0.1",
    "0.0.3",
    "0.0.4",
    "0.1.0",
    "0.1.2",
    "0.2.0",
    "1.0.0",
    "1.2.0",
    "1.2.3",
    "1.2.4",
    "1.3.0",
    "1.9.9",
    "2.0.0",
    "3.0.0",
    "2.0.0-rc.1",
    "2.0.0-0",
    "1.2.3-beta.2",
    "1.2.3-beta.10",
    "1.2.3-alpha",
    "1.2.4-0",
    "18.19.0",
    "20.5.1",
    "20.6.0",
    "20.20.2",
    "22.0.0-nightly2024",
]
OPERATORS = ["", "=", ">", ">=", "<", "<=", "~", "^", "~>"]
PARTIALS = [
    "*",
    "x",
    "1",
    "1.x",
    "1.2",
    "1.2.x",
    "1.2.X",
    "1.2.3",
    "0",
    "0.0",
    "0.0.3",
    "0.0.x",
    "0.1",
    "0.1.2",
    "0.x",
    "2.0.0-rc.0",
    "1.2.3-beta.1",
    "20.6",
    "v1.2.3",
]
EXTRA_RANGES = [
    "",
    "1.2.3 - 2.0.0",
    "1.2 - 2",
    "0.1.x - 1.2.3",
    "* - 2",
    "1.2.3 - *",
    ">= 1.2.3 < 2",
    ">=1.2.3-beta.1 <1.2.4",
    "^1.2.3-beta.1",
    "~1.2.3-beta.1",
    ">=20.6.0 || >=18.19.0 <19.0.0-0",
    "1.x || >=2.5.0 || 5.0.0 - 7.2.3",
    "not-a-range",
    "1.2.3.4",
    ">=a",
    "^01.2.3",
]


def npm_semver_dir() -> str:
    npm = shutil.which("npm")
    if npm is None or shutil.which("node") is None:
        pytest.skip("node and npm are needed to compare with npm's semver")
    folder = os.path.join(os.path.dirname(os.path.dirname(os.path.realpath(npm))), "node_modules")
    if not os.path.isdir(os.path.join(folder, "semver")):
        pytest.skip("this npm does not ship the semver package")
    return os.path.join(folder, "semver")


def ours(version: str, range_: str) -> bool | None:
    try:
        return satisfies(version, range_)
    except ValueError:
        return None


def ranges() -> list[str]:
    atoms = [op + p for op, p in itertools.product(OPERATORS, PARTIALS)]
    rng = random.Random(20240601)
    composite = [f"{rng.choice(atoms)} {rng.choice(atoms)}" for _ in range(400)]
    composite += [f"{rng.choice(atoms)} || {rng.choice(atoms)}" for _ in range(200)]
    composite += [
        f"{rng.choice(atoms)} {rng.choice(atoms)} || {rng.choice(atoms)}" for _ in range(100)
    ]
    return atoms + EXTRA_RANGES + composite


def test_range_check_matches_npms_semver():
    semver = npm_semver_dir()
    cases = [(v, r) for r in ranges() for v in VERSIONS]
    script = (
        f"const semver = require({json.dumps(semver)});\n"
        "const cases = JSON.parse(require('fs').readFileSync(0, 'utf8'));\n"
        "console.log(JSON.stringify(cases.map(([v, r]) =>\n"
        "  semver.validRange(r) === null ? null : semver.satisfies(v, r))));\n"
    )
    out = subprocess.run(
        ["node", "-e", script], input=json.dumps(cases), capture_output=True, text=True, check=True
    ).stdout
    expected = json.loads(out)
    wrong = [
        (v, r, want, got) for (v, r), want in zip(cases, expected) if (got := ours(v, r)) != want
    ]
    assert not wrong, f"{len(wrong)} of {len(cases)} differ, e.g. {wrong[:10]}"
    assert len(cases) > 10_000


@pytest.mark.parametrize(
    ("version", "range_", "expected"),
    [
        ("20.11.1", ">=18", True),
        ("16.20.0", ">=18", False),
        ("20.11.1", "^20.6", True),
        ("21.0.0", "^20.6", False),
        ("18.19.0", ">=20.6.0 || >=18.19.0 <19.0.0-0", True),
        ("18.18.2", ">=20.6.0 || >=18.19.0 <19.0.0-0", False),
        ("20.0.0", "18.x || 20.x", True),
        ("20.11.1", "~20.11", True),
        ("20.12.0", "~20.11", False),
        ("22.0.0-nightly2024", ">=18", False),
    ],
)
def test_node_versions_against_typical_engines(version, range_, expected):
    assert satisfies(version, range_) is expected


def test_invalid_input_raises_value_error():
    with pytest.raises(ValueError):
        satisfies("20.1.0", ">=twenty")
    with pytest.raises(ValueError):
        parse_version("20.1")
