"""The Python runtime's deep check, and the pip backend's pip seeded from virtualenv's app-data."""

from __future__ import annotations

import base64
import hashlib
import os
import subprocess
import sys
from pathlib import Path

import attrs
import pytest

from ally_core import Host, run_checks
from ally_core.runtimes.python import verify_records

MANIFEST = {
    "runtime": "python3",
    "dependencies": {"file": "requirements.txt"},
    "tools": [{"name": "v", "command": "python3", "args": ["main.py"]}],
}
MAIN = (
    "import json, allydemo_greet\n"
    "print(json.dumps({'success': True, 'result': allydemo_greet.__version__}))\n"
)


def _dist_info(site: Path, name: str, record: str) -> None:
    info = site / f"{name}-1.0.dist-info"
    info.mkdir(parents=True)
    (info / "RECORD").write_text(record)


def _sha(text: str) -> str:
    digest = hashlib.sha256(text.encode()).digest()
    return "sha256=" + base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


def test_verify_records_reports_missing_resized_and_edited_files_only(tmp_path: Path):
    site = tmp_path / "lib" / "python3.11" / "site-packages"
    site.mkdir(parents=True)
    (site / "good.py").write_text("x = 1\n")  # 6 bytes
    (site / "resized.py").write_text("x = 100\n")  # 8 bytes, RECORD says 6
    (site / "edited.py").write_text("x = 2\n")  # 6 bytes, as recorded, another content
    (tmp_path / "bin").mkdir()
    (tmp_path / "bin" / "tool").write_text("#!/bin/sh\n")  # 10 bytes, outside site-packages
    one, gone, tool = _sha("x = 1\n"), _sha("y\n\n"), _sha("#!/bin/sh\n")
    _dist_info(
        site,
        "demo",
        f"good.py,{one},6\n"
        f"resized.py,{one},6\n"
        f"edited.py,{one},6\n"
        f"gone.py,{gone},3\n"
        f"../../../bin/tool,{tool},10\n"
        "demo-1.0.dist-info/RECORD,,\n"
        "__pycache__/nothashed.cpython-311.pyc,,\n",
    )
    _dist_info(site, "clean", f"good.py,{one},6\n")

    assert verify_records(tmp_path) == [
        "demo: resized.py was modified",
        "demo: edited.py was modified",
        "demo: gone.py is missing",
    ]
    # Sizes only: the same-size edit passes.
    assert verify_records(tmp_path, hashes=False) == [
        "demo: resized.py was modified",
        "demo: gone.py is missing",
    ]
    (site / "resized.py").write_text("x = 1\n")
    (site / "edited.py").write_text("x = 1\n")
    (site / "gone.py").write_text("y\n\n")
    assert verify_records(tmp_path) == []


def test_deep_check_of_a_built_env_passes_and_catches_a_deleted_module(host: Host, make_plugin):
    make_plugin("greeter", MANIFEST, {"requirements.txt": "allydemo-greet\n", "main.py": MAIN})
    (outcome,) = host.load()
    assert outcome.ready, outcome.reason
    spec = host.spec_for(outcome.manifest, outcome.plugin_dir)
    health = host.hook.health_check(spec=spec, env=outcome.env, deep=True)
    assert health.ok, health.describe()

    (module,) = outcome.env.path.glob("lib/python*/site-packages/allydemo_greet.py")
    module.unlink()
    health = host.hook.health_check(spec=spec, env=outcome.env, deep=True)
    assert not health.ok
    assert "installed files: allydemo" in health.describe()
    assert "allydemo_greet.py is missing" in health.describe()


def test_deep_check_notices_an_env_python_that_cannot_start(host: Host, make_plugin):
    make_plugin("greeter", MANIFEST, {"requirements.txt": "allydemo-greet\n", "main.py": MAIN})
    (outcome,) = host.load()
    spec = host.spec_for(outcome.manifest, outcome.plugin_dir)
    (encodings,) = outcome.env.path.glob("lib/python*/site-packages")
    # A site-packages .pth line that raises stops `import site` with an error.
    (encodings / "zz-broken.pth").write_text("import sys; sys.exit('broken startup')\n")
    health = host.hook.health_check(spec=spec, env=outcome.env, deep=True)
    # The new .pth is noticed first (on every load, before any process starts) ...
    (problem,) = health.problems
    assert problem.message.startswith("startup hook "), problem
    assert problem.message.endswith("/site-packages/zz-broken.pth appeared after the env was built")
    # ... and without the record of the env's startup hooks, the interpreter's start fails.
    data = {k: v for k, v in outcome.env.data.items() if k != "startup_hooks"}
    env = attrs.evolve(outcome.env, data=data)
    health = host.hook.health_check(spec=spec, env=env, deep=True)
    assert not health.ok
    assert any(p.message.startswith("env python:") for p in health.problems), health.describe()


def test_pip_backend_seeds_pip_from_the_shared_app_data_and_it_works(
    ally_home: Path, make_plugin, monkeypatch: pytest.MonkeyPatch
):
    monkeypatch.setenv("ALLY_INSTALLER", "pip")
    make_plugin("one", MANIFEST, {"requirements.txt": "allydemo-greet\n", "main.py": MAIN})
    make_plugin("two", MANIFEST, {"requirements.txt": "allydemo-shout\n", "main.py": MAIN})
    host = Host(ally_home)
    outcomes = {o.name: o for o in host.load()}
    assert all(o.ready for o in outcomes.values()), [o.reason for o in outcomes.values()]
    app_data = os.path.realpath(host.paths.cache_dir / "virtualenv")
    targets = set()
    for outcome in outcomes.values():
        (pip_dir,) = outcome.env.path.glob("lib/python*/site-packages/pip")
        assert pip_dir.is_symlink()
        target = os.path.realpath(pip_dir)
        assert target.startswith(app_data + os.sep), target
        targets.add(target)
        proc = subprocess.run(
            [outcome.env.commands["python"], "-m", "pip", "--version"],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert proc.returncode == 0 and "pip" in proc.stdout, proc.stderr
    assert len(targets) == 1  # one compiled copy of pip serves both envs


def test_verify_records_reads_pypy_layouts_and_a_lib64_symlink_once(tmp_path: Path):
    site = tmp_path / "lib" / "pypy3.10" / "site-packages"
    site.mkdir(parents=True)
    (tmp_path / "lib64").symlink_to("lib")
    _dist_info(site, "demo", "gone.py,sha256=abc,3\n")
    assert verify_records(tmp_path) == ["demo: gone.py is missing"]


def test_a_uv_directory_on_sys_path_is_not_taken_for_the_uv_distribution(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    # A bare "uv" directory (in the current directory, say) is found as a namespace
    # package: no origin, no uv binary. ally must fall back to pip, not pick uv and fail.
    import importlib.machinery
    import importlib.util
    import shutil

    from ally_core.runtimes import python as runtime

    (tmp_path / "uv").mkdir()
    monkeypatch.syspath_prepend(str(tmp_path))
    namespace = importlib.machinery.ModuleSpec("uv", None, is_package=True)
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: namespace)
    monkeypatch.setattr(shutil, "which", lambda name: None)
    runtime._uv_available.cache_clear()
    try:
        assert runtime._uv_available() is False
        real = importlib.machinery.ModuleSpec("uv", None, origin=str(tmp_path / "uv.py"))
        monkeypatch.setattr(importlib.util, "find_spec", lambda name: real)
        runtime._uv_available.cache_clear()
        assert runtime._uv_available() is True
    finally:
        monkeypatch.undo()
        runtime._uv_available.cache_clear()


def _script(code: str) -> list[str]:
    return [sys.executable, "-c", code]


def test_run_checks_runs_the_checks_at_the_same_time(tmp_path: Path):
    # The first check can only pass if the second one is running while it waits: run one
    # after the other, the first would time out before the second ever started.
    flag = tmp_path / "second-started"
    waits = (
        "import os, sys, time\n"
        f"end = time.monotonic() + 30\n"
        f"while not os.path.exists({str(flag)!r}):\n"
        "    if time.monotonic() > end: sys.exit('the second check never ran alongside')\n"
        "    time.sleep(0.01)\n"
    )
    touches = f"open({str(flag)!r}, 'w').close()"
    env = dict(os.environ)
    health = run_checks(
        [("first", _script(waits), env), ("second", _script(touches), env)], cwd=tmp_path
    )
    assert health.ok, health.describe()


def test_run_checks_reports_each_failure_in_order_with_its_output(tmp_path: Path):
    env = dict(os.environ)
    health = run_checks(
        [
            ("ok", _script("pass"), env),
            ("bad", _script("import sys; print('to stdout'); sys.exit('broken: to stderr')"), env),
            ("missing", [str(tmp_path / "no-such-program")], env),
            ("slow", _script("import time; time.sleep(60)"), env),
        ],
        cwd=tmp_path,
        timeout=3,
    )
    messages = [p.message for p in health.problems]
    assert len(messages) == 3, messages
    assert messages[0].startswith("bad: ") and "to stdout" in messages[0]
    assert "broken: to stderr" in messages[0]
    assert messages[1].startswith("missing: could not run:")
    assert messages[2] == "slow: timed out after 3 s"
