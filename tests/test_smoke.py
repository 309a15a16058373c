from __future__ import annotations

import json


def test_plugin_with_deps_is_built_once_and_warm_load_spawns_nothing(
    host, make_plugin, no_spawn
):
    make_plugin(
        "greeter",
        {
            "runtime": "python3",
            "dependencies": {"file": "requirements.txt"},
            "tools": [{"name": "hello", "command": "python3", "args": ["main.py"]}],
        },
        files={
            "requirements.txt": "allydemo-greet==1.0.0\n",
            "main.py": "import json, sys, allydemo_greet\n"
            "args = json.load(sys.stdin)\n"
            "print(json.dumps({'success': True, 'result': allydemo_greet.greet(args['who'])}))\n",
        },
    )
    (outcome,) = host.load()
    assert outcome.ready, outcome.reason
    assert outcome.action == "built"
    assert outcome.packages == {"allydemo-greet": "1.0.0"}
    result = outcome.tool("hello").call({"who": "ally"})
    assert result.success and result.result == "hello ally from allydemo_greet 1.0.0"

    with no_spawn():
        (again,) = type(host)(host.paths.home).load()
    assert again.ready and again.action == "none"
    assert again.env.path == outcome.env.path
    marker = json.loads((host.paths.envs_dir / "greeter" / ".installed").read_text())
    assert marker["packages"] == {"allydemo-greet": "1.0.0"}


def test_pip_backend_builds_with_virtualenv_and_pip(ally_home, make_plugin, monkeypatch):
    from ally_core import Host

    monkeypatch.setenv("ALLY_INSTALLER", "pip")
    make_plugin(
        "greeter",
        {"runtime": "python3", "dependencies": {"file": "requirements.txt"},
         "tools": [{"name": "hello", "command": "allydemo-greet", "args": ["pip"]}]},
        files={"requirements.txt": "allydemo-shout\n"},
    )
    (outcome,) = Host(ally_home).load()
    assert outcome.ready, outcome.reason
    assert outcome.env.data["backend"] == "pip"
    assert set(outcome.packages) >= {"allydemo-greet", "allydemo-shout", "pip"}
