"""Tests a plugin author writes: the plugin builds, its tools answer, warm loads are free.

ally's pytest plugin (installed with ally-core) provides the fixtures ``ally_home``,
``make_plugin``, ``host``, ``no_spawn`` and ``ally_cli``.
"""

import json

from ally_core import Host

GREETER = {
    "runtime": "python3",
    "dependencies": {"file": "requirements.txt"},
    "tools": [
        {
            "name": "hello",
            "command": "python3",
            "args": ["main.py"],
            "schema": {"type": "object", "properties": {"who": {"type": "string"}}},
        }
    ],
}
FILES = {
    # allydemo-greet is one of the wheels the session's local wheelhouse holds.
    "requirements.txt": "allydemo-greet==1.0.0\n",
    "main.py": (
        "import json, sys, allydemo_greet\n"
        "args = json.load(sys.stdin)\n"
        "print(json.dumps({'success': True, 'result': allydemo_greet.greet(args['who'])}))\n"
    ),
}


def test_tool_answers_in_its_own_env(host, make_plugin):
    make_plugin("greeter", GREETER, FILES)
    (outcome,) = host.load()
    assert outcome.ready, outcome.reason
    assert outcome.packages == {"allydemo-greet": "1.0.0"}
    result = outcome.tool("hello").call({"who": "tests"}, timeout=60)
    assert result.success, result.error
    assert result.result == "hello tests from allydemo_greet 1.0.0"


def test_second_load_is_instant(ally_home, make_plugin, no_spawn):
    make_plugin("greeter", GREETER, FILES)
    assert Host(ally_home).load()[0].action == "built"
    with no_spawn():  # any subprocess started in here fails the test
        (outcome,) = Host(ally_home).load()
    assert outcome.ready and outcome.action == "none"


def test_cli_runs_the_tool(make_plugin, ally_cli):
    make_plugin("greeter", GREETER, FILES)
    proc = ally_cli("run", "greeter", "hello", "--input", '{"who": "cli"}')
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["result"].startswith("hello cli")
