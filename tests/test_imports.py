"""`import ally_core`, `ally --help` and `ally list` stay cheap: no virtualenv, uv or rich;
no cattrs or filelock when everything comes from the warm index."""

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


WARM_PROBE = """
import json, sys
import ally_core.loader
from ally_core.cli import main
ally_core.loader.SETTLE_NS = 0  # the plugins were just written: let the index keep them
try:
    main(sys.argv[1:])
except SystemExit:
    pass
print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in {"cattrs", "filelock"})),
      file=sys.stderr)
"""


def test_a_warm_list_from_the_index_imports_neither_cattrs_nor_filelock(make_plugin, host):
    # cattrs validates plugin.json files and writes markers; filelock guards builds. A list
    # whose manifests, keys and markers all come from the warm index needs neither.
    make_plugin(
        "deps",
        {"runtime": "python3", "dependencies": {"file": "requirements.txt"}},
        {"requirements.txt": "allydemo-greet\n"},
    )
    assert all(o.ready for o in host.load())

    def run() -> list[str]:
        proc = subprocess.run(
            [sys.executable, "-c", WARM_PROBE, "list"], capture_output=True, text=True, timeout=60
        )
        assert proc.returncode == 0, proc.stderr
        return json.loads(proc.stderr.strip().splitlines()[-1])

    run()  # parses plugin.json once more (written in this test) and writes the index
    assert run() == []
