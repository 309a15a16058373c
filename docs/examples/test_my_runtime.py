"""Tests a runtime author writes, here for ally_runtime_pytarget.py (see "Writing a runtime").

The runtime is registered into a plugin manager of its own, so it needs no installing; an
installed runtime is found through its entry point by the plain ``host`` fixture instead.
"""

import importlib.util
import sys
from pathlib import Path

import pytest

from ally_core import Host
from ally_core.plugin_manager import make_plugin_manager

RUNTIME_FILE = Path(__file__).with_name("ally_runtime_pytarget.py")
PLUGIN = {
    "runtime": "python-target",
    "dependencies": {"file": "requirements.txt"},
    "tools": [{"name": "hello", "command": "python3", "args": ["main.py"]}],
}
FILES = {
    "requirements.txt": "allydemo-shout==1.0.0\n",  # depends on allydemo-greet
    "main.py": (
        "import json, allydemo_greet\n"
        "print(json.dumps({'success': True, 'result': allydemo_greet.__version__}))\n"
    ),
}


@pytest.fixture
def runtime_host(ally_home):
    spec = importlib.util.spec_from_file_location("ally_runtime_pytarget", RUNTIME_FILE)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    pm = make_plugin_manager(load_entrypoints=False)  # built-ins only, then ours
    pm.register(module, name="pytarget")
    return lambda: Host(ally_home, plugin_manager=pm)


def test_builds_and_runs_tools(runtime_host, make_plugin):
    make_plugin("greeter", PLUGIN, FILES)
    (outcome,) = runtime_host().load()
    assert outcome.ready, outcome.reason
    assert outcome.packages == {"allydemo-greet": "2.0.0", "allydemo-shout": "1.0.0"}
    assert outcome.tool("hello").call({}).result == "2.0.0"


def test_warm_load_spawns_nothing(runtime_host, make_plugin, no_spawn):
    make_plugin("greeter", PLUGIN, FILES)
    runtime_host().load()
    with no_spawn():  # env_identity and health_check(deep=False) must not start processes
        (outcome,) = runtime_host().load()
    assert outcome.ready and outcome.action == "none"


def test_unsatisfiable_runtime_version_blocks_with_one_line(runtime_host, make_plugin):
    make_plugin("future", {**PLUGIN, "runtime_version": ">=99"}, FILES)
    (outcome,) = runtime_host().load()
    assert outcome.status == "blocked"
    assert "runtime_version '>=99'" in outcome.reason and "\n" not in outcome.reason


def test_deleted_env_directory_is_rebuilt(runtime_host, make_plugin):
    make_plugin("greeter", PLUGIN, FILES)
    (first,) = runtime_host().load()
    (first.env.path / "site").rename(first.env.path / "gone")  # health_check notices
    (again,) = runtime_host().load()
    assert again.ready and again.action == "repaired"
