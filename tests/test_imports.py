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
