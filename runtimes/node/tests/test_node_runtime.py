"""The node runtime end to end: real node, real npm, packages from a registry on 127.0.0.1."""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from ally_core import ToolError

if shutil.which("node") is None or shutil.which("npm") is None:
    pytest.skip("node and npm are needed for the node runtime's tests", allow_module_level=True)

pytestmark = pytest.mark.usefixtures("npm_env")

READ_STDIN_JS = (
    "let input = '';\n"
    "for await (const chunk of process.stdin) input += chunk;\n"
    "const args = JSON.parse(input || '{}');\n"
)


def node_plugin(make_plugin, name, package, files=None, *, tools=None, deps=None, **manifest):
    """A ``"runtime": "node"`` plugin with ``package`` as its package.json."""
    return make_plugin(
        name,
        {
            "runtime": "node",
            "dependencies": {"file": "package.json", **(deps or {})},
            "tools": tools or [],
            **manifest,
        },
        files={
            "package.json": json.dumps({"name": name, "private": True, **package}),
            **(files or {}),
        },
    )


def tree(path: Path) -> dict[str, str]:
    """Every entry below ``path`` with its type and content hash: to prove nothing changed."""
    out = {}
    for p in sorted(path.rglob("*")):
        rel = str(p.relative_to(path))
        out[rel] = "dir" if p.is_dir() else p.read_text("utf-8", "replace")
    return out


CJS_TOOL = {"name": "add", "command": "node", "args": ["add.js"]}
CJS_FILES = {
    "add.js": "const lib = require('ally-cjs-lib');\n"
    "let input = '';\n"
    "process.stdin.on('data', (c) => (input += c));\n"
    "process.stdin.on('end', () => {\n"
    "  const { a, b } = JSON.parse(input);\n"
    "  console.log(JSON.stringify({ success: true, result: { sum: lib.add(a, b),"
    " version: lib.version } }));\n"
    "});\n"
}


def test_first_load_builds_once_then_warm_load_spawns_nothing(host, make_plugin, no_spawn):
    plugin = node_plugin(
        make_plugin,
        "adder",
        {"dependencies": {"ally-cjs-lib": "^1.0.0"}},
        CJS_FILES,
        tools=[CJS_TOOL],
    )
    before = tree(plugin)
    (outcome,) = host.load()
    assert outcome.ready, outcome.reason
    assert outcome.action == "built"
    assert outcome.packages == {"ally-cjs-lib": "1.1.0"}
    result = outcome.tool("add").call({"a": 2, "b": 40})
    assert result.success, result
    assert result.result == {"sum": 42, "version": "1.1.0"}

    with no_spawn():
        (again,) = type(host)(host.paths.home).load()
    assert again.ready and again.action == "none"
    assert again.env.path == outcome.env.path
    # The env lives in the store; the plugin's directory was not written to.
    assert tree(plugin) == before
    assert outcome.env.path.parent == host.paths.store_dir
    assert (outcome.env.path / "node_modules" / "ally-cjs-lib").is_dir()


def test_changed_package_json_rebuilds_the_env(host, make_plugin):
    plugin = node_plugin(
        make_plugin,
        "adder",
        {"dependencies": {"ally-cjs-lib": "1.0.0"}},
        CJS_FILES,
        tools=[CJS_TOOL],
    )
    (first,) = host.load()
    assert first.ready, first.reason
    assert first.tool("add").call({"a": 1, "b": 1}).result["version"] == "1.0.0"

    package = json.loads((plugin / "package.json").read_text())
    package["dependencies"]["ally-cjs-lib"] = "1.1.0"
    (plugin / "package.json").write_text(json.dumps(package))
    (second,) = host.load()
    assert second.ready, second.reason
    assert second.action == "repaired"
    assert second.repair_reason == "dependencies changed"
    assert second.env.path != first.env.path
    assert second.tool("add").call({"a": 1, "b": 1}).result["version"] == "1.1.0"


def test_lock_file_is_installed_exactly_with_npm_ci(host, make_plugin, tmp_path):
    # A lock pinning 1.0.0 although the range allows the newer 1.1.0.
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    (scratch / "package.json").write_text(
        json.dumps({"name": "pinned", "dependencies": {"ally-cjs-lib": "1.0.0"}})
    )
    subprocess.run(
        ["npm", "install", "--package-lock-only", "--no-audit", "--no-fund"],
        cwd=scratch,
        check=True,
        capture_output=True,
        env={**os.environ, "npm_config_cache": str(tmp_path / "npm-cache")},
    )
    lock = (scratch / "package-lock.json").read_text()
    node_plugin(
        make_plugin,
        "pinned",
        {"dependencies": {"ally-cjs-lib": "^1.0.0"}},
        {
            **CJS_FILES,
            "package-lock.json": lock.replace(
                '"ally-cjs-lib": "1.0.0"', '"ally-cjs-lib": "^1.0.0"'
            ),
        },
        tools=[CJS_TOOL],
    )
    (outcome,) = host.load()
    assert outcome.ready, outcome.reason
    assert outcome.packages == {"ally-cjs-lib": "1.0.0"}
    assert outcome.tool("add").call({"a": 1, "b": 2}).result == {"sum": 3, "version": "1.0.0"}
    marker = json.loads((host.paths.envs_dir / "pinned" / ".installed").read_text())
    assert marker["env"]["interpreter"]["kind"] == "node"


def test_failed_install_blocks_only_that_plugin_with_npms_error(host, make_plugin):
    node_plugin(make_plugin, "missing-pkg", {"dependencies": {"ally-no-such-package": "^1.0.0"}})
    node_plugin(make_plugin, "missing-version", {"dependencies": {"ally-cjs-lib": "^9.0.0"}})
    node_plugin(make_plugin, "fine", {"dependencies": {"ally-cjs-lib": "^1.0.0"}})
    make_plugin(
        "py-greeter",
        {"runtime": "python3", "dependencies": {"file": "requirements.txt"}},
        files={"requirements.txt": "allydemo-greet==1.0.0\n"},
    )
    outcomes = {o.name: o for o in host.load()}
    assert outcomes["fine"].ready, outcomes["fine"].reason
    assert outcomes["py-greeter"].ready, outcomes["py-greeter"].reason

    missing = outcomes["missing-pkg"]
    assert missing.status == "blocked"
    assert "missing-pkg: npm install failed" in missing.reason
    assert "404" in missing.reason and "ally-no-such-package" in missing.reason
    assert "A complete log" not in missing.reason

    version = outcomes["missing-version"]
    assert version.status == "blocked"
    assert "ETARGET" in version.reason or "No matching version" in version.reason
    assert "ally-cjs-lib@^9.0.0" in version.reason
    assert not (host.paths.envs_dir / "missing-pkg").exists()
    # No half-built env is left in the store: only the two good ones.
    assert len([p for p in host.paths.store_dir.iterdir() if not p.name.startswith(".")]) == 2


def test_require_and_esm_import_work_with_a_read_only_plugin_dir(host, make_plugin):
    plugin = node_plugin(
        make_plugin,
        "esm",
        {
            "type": "module",
            "dependencies": {"@ally-test/esm-lib": "^2.0.0", "ally-cjs-lib": "^1.0.0"},
        },
        {
            "main.mjs": 'import { shout, sum } from "@ally-test/esm-lib";\n'
            'import cjs from "ally-cjs-lib";\n'
            'import { helper } from "./lib/helper.js";\n'
            + READ_STDIN_JS
            + "console.log(JSON.stringify({ success: true, result: {\n"
            "  shout: shout(args.text), sum: sum(1, 2), version: cjs.version, helper: helper() }"
            " }));\n",
            # A nested module of the plugin importing a dependency: resolved from the env too.
            "lib/helper.js": 'import { shout } from "@ally-test/esm-lib";\n'
            "export const helper = () => shout('nested');\n",
            "main.cjs": "const cjs = require('ally-cjs-lib');\n"
            "import('@ally-test/esm-lib').then((m) => console.log(JSON.stringify(\n"
            "  { success: true, result: { shout: m.shout('cjs'), version: cjs.version } })));\n",
            "no-such.mjs": 'import "ally-not-installed";\n',
        },
        tools=[
            {"name": "esm", "command": "node", "args": ["main.mjs"]},
            {"name": "cjs", "command": "node", "args": ["main.cjs"]},
            {"name": "broken", "command": "node", "args": ["no-such.mjs"]},
        ],
    )
    before = tree(plugin)
    modes = {p: p.stat().st_mode for p in [plugin, *plugin.rglob("*")]}
    for p in modes:
        p.chmod(stat.S_IMODE(modes[p]) & ~0o222)
    try:
        (outcome,) = host.load()
        assert outcome.ready, outcome.reason
        esm = outcome.tool("esm").call({"text": "hi"})
        assert esm.success, esm.stderr
        assert esm.result == {"shout": "HI!", "sum": 3, "version": "1.1.0", "helper": "NESTED!"}
        cjs = outcome.tool("cjs").call({})
        assert cjs.success, cjs.stderr
        assert cjs.result == {"shout": "CJS!", "version": "1.1.0"}
        # A package that is nowhere still fails, naming the plugin's file.
        with pytest.raises(ToolError) as broken:
            outcome.tool("broken").call({})
        assert "ally-not-installed" in broken.value.stderr
        assert "no-such.mjs" in broken.value.stderr
    finally:
        for p, mode in modes.items():
            p.chmod(stat.S_IMODE(mode))
    assert tree(plugin) == before


def test_package_bins_run_by_name_and_through_npx(host, make_plugin):
    node_plugin(
        make_plugin,
        "bins",
        {"dependencies": {"ally-hello-bin": "1.0.0"}},
        tools=[
            {"name": "direct", "command": "ally-hello", "args": ["x"]},
            {"name": "npx", "command": "npx", "args": ["ally-hello", "--flag"]},
        ],
    )
    (outcome,) = host.load()
    assert outcome.ready, outcome.reason
    direct = outcome.tool("direct").call({"who": "ally"})
    assert direct.success, direct.stderr
    assert direct.result["hello"] == "ally" and direct.result["argv"] == ["x"]
    # The bin's `#!/usr/bin/env node` finds the node the env was built with.
    assert os.path.realpath(direct.result["node"]) == outcome.env.interpreter.realpath
    assert direct.result["cwd"] == str(outcome.plugin_dir)
    via_npx = outcome.tool("npx").call({"who": "npx"})
    assert via_npx.success, via_npx.stderr
    assert via_npx.result["hello"] == "npx" and via_npx.result["argv"] == ["--flag"]
    assert via_npx.result["cwd"] == str(outcome.plugin_dir)


TS_TOOL = {
    "tool.ts": 'import { shout } from "@ally-test/esm-lib";\n'
    "interface Greeting {\n  text: string;\n}\n"
    "const greet = (g: Greeting): string => shout(g.text);\n"
    "const n: number = 41;\n"
    "console.log(JSON.stringify({ success: true, result: { text: greet({ text: 'ts' }),"
    " n: n + 1 } }));\n"
}


def test_typescript_tool_runs_with_npx_tsx_from_a_dev_dependency(host, make_plugin):
    node_plugin(
        make_plugin,
        "ts",
        {
            "dependencies": {"@ally-test/esm-lib": "^2.0.0"},
            "devDependencies": {"ally-fake-tsx": "^1.0.0"},
        },
        TS_TOOL,
        tools=[{"name": "ts", "command": "npx", "args": ["tsx", "tool.ts"]}],
    )
    (outcome,) = host.load()
    assert outcome.ready, outcome.reason
    assert set(outcome.packages) == {"@ally-test/esm-lib", "ally-cjs-lib", "ally-fake-tsx"}
    result = outcome.tool("ts").call({})
    assert result.success, result.stderr
    assert result.result == {"text": "TS!", "n": 42}


def test_dev_false_leaves_dev_dependencies_out(host, make_plugin):
    node_plugin(
        make_plugin,
        "prod",
        {
            "dependencies": {"ally-cjs-lib": "^1.0.0"},
            "devDependencies": {"ally-hello-bin": "^1.0.0"},
        },
        deps={"dev": False},
        tools=[{"name": "hello", "command": "ally-hello"}],
    )
    (outcome,) = host.load()
    assert outcome.ready, outcome.reason
    assert outcome.packages == {"ally-cjs-lib": "1.1.0"}
    assert not (outcome.env.path / "node_modules" / "ally-hello-bin").exists()
    with pytest.raises(ToolError, match="not found"):
        outcome.tool("hello").call({})
    # The deep check agrees that this env is complete without them.
    ((_, health),) = host.doctor()
    assert health.ok, health.describe()


def test_dev_flag_must_be_a_boolean(host, make_plugin):
    node_plugin(make_plugin, "bad", {}, deps={"dev": "no"})
    (outcome,) = host.load()
    assert outcome.status == "blocked"
    assert "$.dependencies.dev: expected a boolean" in outcome.reason


@pytest.mark.parametrize(
    ("where", "extra", "text"),
    [
        ("engines", {}, "engines.node in package.json"),
        ("runtime_version", {"runtime_version": ">=99"}, "runtime_version in plugin.json"),
    ],
)
def test_node_too_old_for_the_plugin_is_a_clear_error(host, make_plugin, where, extra, text):
    package = {"engines": {"node": ">=99.0.0"}} if where == "engines" else {}
    node_plugin(make_plugin, "future", package, **extra)
    (outcome,) = host.load()
    assert outcome.status == "blocked"
    assert "future: Node.js " in outcome.reason
    assert "does not satisfy '>=99" in outcome.reason and text in outcome.reason
    assert not host.paths.store_dir.exists() or not any(host.paths.store_dir.iterdir())


def test_satisfied_engines_and_runtime_version_build(host, make_plugin):
    node_plugin(
        make_plugin,
        "current",
        {"engines": {"node": ">=16 <1000 || ^15"}},
        runtime_version=">= 14.x",
    )
    (outcome,) = host.load()
    assert outcome.ready, outcome.reason
    assert outcome.packages == {}


def test_missing_node_is_a_clear_error(host, make_plugin, monkeypatch, tmp_path):
    monkeypatch.setenv("ALLY_NODE", str(tmp_path / "no-node-here"))
    node_plugin(make_plugin, "nonode", {})
    (outcome,) = host.load()
    assert outcome.status == "blocked"
    assert "nonode: Node.js at" in outcome.reason and "ALLY_NODE" in outcome.reason


def test_two_concurrent_installs_build_the_env_once(ally_home, make_plugin, npm_env):
    node_plugin(make_plugin, "shared", {"dependencies": {"ally-cjs-lib": "^1.0.0"}})
    argv = [sys.executable, "-m", "ally_core.cli", "install", "--json"]
    procs = [
        subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for _ in range(2)
    ]
    results = [p.communicate(timeout=300) for p in procs]
    for proc, (_out, err) in zip(procs, results):
        assert proc.returncode == 0, err
    actions = sorted(json.loads(out)["plugins"][0]["action"] for out, _ in results)
    store = ally_home / "plugin-envs" / ".store"
    envs = [p for p in store.iterdir() if not p.name.startswith(".")]
    assert len(envs) == 1, envs
    assert actions == ["built", "none"], results
