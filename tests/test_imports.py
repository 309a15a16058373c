"""`import ally_core`, `ally --help` and `ally list` stay cheap: no virtualenv, uv or rich."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

HEAVY = ("virtualenv", "uv", "rich", "jsonschema", "packaging")

PROBE = """
import json, sys
from ally_core.cli import main
try:
    main(sys.argv[1:])
except SystemExit:
    pass
print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in {heavy!r})),
      file=sys.stderr)
"""


@pytest.mark.parametrize("args", [["--help"], ["list"], ["list", "--json"]])
def test_cli_does_not_import_heavy_modules(args, make_plugin, ally_home, host):
    make_plugin("wc", {"runtime": "python3", "tools": [{"name": "t", "command": "python3"}]})
    make_plugin(
        "deps",
        {"runtime": "python3", "dependencies": {"file": "requirements.txt"}},
        {"requirements.txt": "allydemo-greet\n"},
    )
    assert all(o.ready for o in host.load())  # the warm path is what `list` must keep cheap
    proc = subprocess.run(
        [sys.executable, "-c", PROBE.format(heavy=set(HEAVY)), *args],
        capture_output=True, text=True, timeout=60,
    )
    imported = json.loads(proc.stderr.strip().splitlines()[-1])
    assert imported == [], f"ally {' '.join(args)} imported {imported}"


def test_the_public_api_is_imported_on_first_use():
    probe = (
        "import json, sys, ally_core\n"
        "before = sorted(m for m in sys.modules if m.startswith('ally_core'))\n"
        "from ally_core import Host\n"
        "print(json.dumps([before, 'ally_core.host' in sys.modules]))\n"
    )
    proc = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    before, loaded = json.loads(proc.stdout)
    assert before == ["ally_core", "ally_core.__about__"]
    assert loaded


def test_every_public_name_resolves_to_the_object_of_its_module():
    import importlib

    import ally_core

    assert set(ally_core._LAZY) == set(ally_core.__all__) - {"__version__"}
    for name, module in ally_core._LAZY.items():
        obj = getattr(importlib.import_module(f"ally_core.{module}"), name)
        assert getattr(ally_core, name) is obj, name
    assert set(dir(ally_core)) >= set(ally_core.__all__)
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        ally_core.nope
