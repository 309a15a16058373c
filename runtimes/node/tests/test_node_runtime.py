"""The node runtime end to end: real node, real npm, packages from a registry on 127.0.0.1."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tarfile
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
    node = outcome.env.interpreter
    assert node.kind == "node" and node.realpath == os.path.realpath(shutil.which("node"))
    st = os.stat(node.realpath)
    assert node.signature == (st.st_size, st.st_mtime_ns, st.st_ino)
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
    assert second.repair_reason == "package.json changed"
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
    events = []
    (outcome,) = host.load(progress=events.append)
    assert outcome.ready, outcome.reason
    assert outcome.packages == {"ally-cjs-lib": "1.0.0"}
    assert outcome.tool("add").call({"a": 1, "b": 2}).result == {"sum": 3, "version": "1.0.0"}
    marker = json.loads((host.paths.envs_dir / "pinned" / ".installed").read_text())
    assert marker["env"]["interpreter"]["kind"] == "node"
    assert "Installing npm packages from package-lock.json (npm ci)" in [e.message for e in events]

    # `ally update` re-resolves within package.json's ranges; the plugin's lock is untouched.
    plugin_lock = (outcome.plugin_dir / "package-lock.json").read_text()
    updated = host.ensure("pinned", upgrade=True)
    assert updated.ready and updated.action == "updated", updated.reason
    assert updated.packages == {"ally-cjs-lib": "1.1.0"}
    assert (outcome.plugin_dir / "package-lock.json").read_text() == plugin_lock
    (after,) = type(host)(host.paths.home).load()
    assert after.action == "none" and after.env.path == updated.env.path
    assert after.packages == {"ally-cjs-lib": "1.1.0"}


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
    assert missing.reason.startswith("npm install failed")
    assert "404" in missing.reason and "ally-no-such-package" in missing.reason
    assert "A complete log" not in missing.reason

    version = outcomes["missing-version"]
    assert version.status == "blocked"
    assert "ETARGET" in version.reason or "No matching version" in version.reason
    assert "ally-cjs-lib@^9.0.0" in version.reason
    assert not (host.paths.envs_dir / "missing-pkg").exists()
    # No half-built env is left in the store: only the two good ones.
    assert len([p for p in host.paths.store_dir.iterdir() if not p.name.startswith(".")]) == 2


def test_out_of_sync_lock_is_reported_with_npms_cause_not_its_usage_help(
    host, make_plugin, tmp_path
):
    # npm's lock for one dependency, beside a package.json that has gained a second one.
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    (scratch / "package.json").write_text(
        json.dumps({"name": "stale", "dependencies": {"ally-cjs-lib": "1.0.0"}})
    )
    subprocess.run(
        ["npm", "install", "--package-lock-only", "--no-audit", "--no-fund"],
        cwd=scratch,
        check=True,
        capture_output=True,
        env={**os.environ, "npm_config_cache": str(tmp_path / "npm-cache")},
    )
    node_plugin(
        make_plugin,
        "stale",
        {"dependencies": {"ally-cjs-lib": "1.0.0", "ally-hello-bin": "1.0.0"}},
        {"package-lock.json": (scratch / "package-lock.json").read_text()},
    )
    (outcome,) = host.load()
    assert outcome.status == "blocked"
    assert outcome.reason.startswith("npm ci failed (")
    assert "are in sync. Please update your lock file" in outcome.reason
    assert outcome.reason.endswith("npm error Missing: ally-hello-bin@1.0.0 from lock file")
    assert "Usage" not in outcome.reason and "--install-links" not in outcome.reason


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
        broken = outcome.tool("broken").call({})
        assert not broken.success and broken.error_type == "exit_code"
        assert "ally-not-installed" in broken.stderr
        assert "no-such.mjs" in broken.stderr
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


def test_npx_runs_only_what_the_env_holds_and_never_downloads(
    ally_home, make_plugin, npm_env, monkeypatch
):
    # The tools see the registry, which holds ally-hello-bin: only the env's npx stands
    # between a tool and a download of it.
    monkeypatch.setenv(
        "ALLY_PASS_ENV", "npm_config_registry npm_config_userconfig npm_config_globalconfig"
    )
    node_plugin(
        make_plugin,
        "frugal",
        {"dependencies": {"ally-cjs-lib": "1.0.0"}},
        tools=[
            {"name": "plain", "command": "npx", "args": ["ally-hello"]},
            {"name": "yes", "command": "npx", "args": ["--yes", "ally-hello"]},
            {"name": "pinned", "command": "npx", "args": ["-y", "ally-hello-bin@1.0.0"]},
            {"name": "exec", "command": "npm", "args": ["exec", "--", "ally-hello-bin@1.0.0"]},
            {"name": "local", "command": "npx", "args": ["ally-cjs-lib@1.0.0"]},
        ],
    )
    from ally_core import Host

    (outcome,) = Host(ally_home).load()
    assert outcome.ready, outcome.reason
    npm_env.requests.clear()

    def failure(name: str) -> str:
        result = outcome.tool(name).call({})
        assert not result.success and result.error_type == "exit_code", result
        return f"{result.error} {result.stderr}"

    for name in ("plain", "yes"):
        assert (
            "npx: ally-hello is not installed in this plugin's env: add the package that "
            "provides it to package.json (npx never downloads packages when a tool runs)"
        ) in failure(name)
    assert "ENOTCACHED" in failure("pinned")
    # npx resolves a package of the env by name and version without the registry (this one
    # has no bin, which is npm's own error).
    assert "could not determine executable to run" in failure("local")
    assert npm_env.requests == []
    # `npm exec` asks the registry what the spec is, but installs nothing.
    assert "npx canceled due to missing packages" in failure("exec")
    assert npm_env.tarball_requests() == []
    assert not (outcome.env.path / "node_modules" / "ally-hello-bin").exists()
    assert list((outcome.env.path / ".ally" / "npx-cache").iterdir()) == []


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
    assert outcome.reason.startswith("Node.js ")
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
    assert outcome.reason.startswith("Node.js at") and "ALLY_NODE" in outcome.reason


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


def network_off_prefix() -> list[str]:
    """``unshare -n`` (a network namespace without interfaces) when permitted, else nothing."""
    unshare = shutil.which("unshare")
    for prefix in ([unshare, "-n"], [unshare, "-rn"]) if unshare else ():
        if subprocess.run([*prefix, "true"], capture_output=True).returncode == 0:
            return prefix
    return []


def test_offline_bundle_installs_from_its_tarballs_alone(
    ally_home, make_plugin, npm_env, tmp_path, monkeypatch
):
    node_plugin(
        make_plugin,
        "bundled",
        {"type": "module", "dependencies": {"@ally-test/esm-lib": "^2.0.0"}},
        {
            "main.mjs": 'import { sum } from "@ally-test/esm-lib";\n'
            "console.log(JSON.stringify({ success: true, result: sum(20, 22) }));\n"
        },
        tools=[{"name": "sum", "command": "node", "args": ["main.mjs"]}],
        version="1.0.0",
    )
    archive = tmp_path / "bundled.ally.tar.gz"

    def cli(home, *args, prefix=()):
        env = {**os.environ, "ALLY_HOME": str(home)}
        argv = [*prefix, sys.executable, "-m", "ally_core.cli", *args]
        return subprocess.run(argv, capture_output=True, text=True, env=env, timeout=300)

    made = cli(ally_home, "bundle", "bundled", "-o", str(archive))
    assert made.returncode == 0, made.stderr
    with tarfile.open(archive) as tar:
        info = json.load(tar.extractfile("bundle.json"))
        names = set(tar.getnames())
    lock = info["lock"]
    assert lock["format"] == "npm-tarballs"
    assert {(p["name"], p["version"]) for p in lock["packages"]} == {
        ("@ally-test/esm-lib", "2.0.0"),
        ("ally-cjs-lib", "1.1.0"),
    }
    assert all(len(p["sha256"]) == 64 for p in lock["packages"])
    assert {f"plugin/.ally-bundle/{p['file']}" for p in lock["packages"]} <= names

    # Another home with an empty npm cache, and no network (or at least no registry) at all.
    prefix = network_off_prefix()
    monkeypatch.setenv("npm_config_registry", "http://127.0.0.1:9/")
    npm_env.requests.clear()
    fresh = tmp_path / "offline-home"
    installed = cli(fresh, "install", str(archive), "--offline", "--json", prefix=prefix)
    assert installed.returncode == 0, installed.stderr
    (outcome,) = json.loads(installed.stdout)["plugins"]
    assert outcome["packages"] == {"@ally-test/esm-lib": "2.0.0", "ally-cjs-lib": "1.1.0"}
    run = cli(fresh, "run", "bundled", "sum", "--input", "{}", prefix=prefix)
    assert run.returncode == 0, run.stderr
    assert json.loads(run.stdout) == {"success": True, "result": 42}
    # The tarballs stay with the plugin: a rebuild works offline too.
    again = cli(fresh, "reinstall", "bundled", "--offline", prefix=prefix)
    assert again.returncode == 0, again.stderr
    assert npm_env.requests == []


def test_broken_env_is_found_and_repaired(host, make_plugin):
    node_plugin(
        make_plugin,
        "fragile",
        {"dependencies": {"@ally-test/esm-lib": "^2.0.0"}},
        CJS_FILES,
        tools=[CJS_TOOL],
    )
    (outcome,) = host.load()
    assert outcome.ready, outcome.reason
    env = outcome.env.path

    # A transitive package deleted: only the deep check (npm ls) notices.
    shutil.rmtree(env / "node_modules" / "ally-cjs-lib")
    ((_, health),) = host.doctor()
    assert not health.ok
    assert "npm ls failed" in health.describe() and "ally-cjs-lib" in health.describe()
    ((fixed, _),) = host.doctor(fix=True)
    assert fixed.ready and fixed.action == "repaired", fixed.reason
    assert fixed.tool("add").call({"a": 1, "b": 2}).result == {"sum": 3, "version": "1.1.0"}

    # node_modules gone entirely: the cheap check on the next load rebuilds.
    shutil.rmtree(fixed.env.path / "node_modules")
    (again,) = type(host)(host.paths.home).load()
    assert again.ready and again.action == "repaired", again.reason
    assert "node_modules is missing" in again.repair_reason
    assert again.tool("add").call({"a": 2, "b": 2}).result == {"sum": 4, "version": "1.1.0"}


def test_doctor_finds_files_deleted_or_edited_inside_packages_and_fix_rebuilds(
    host, make_plugin
):
    node_plugin(
        make_plugin,
        "tampered",
        {"dependencies": {"@ally-test/esm-lib": "^2.0.0"}},
        CJS_FILES,
        tools=[CJS_TOOL],
    )
    (outcome,) = host.load()
    assert outcome.ready, outcome.reason
    ((_, health),) = host.doctor()
    assert health.ok, health.describe()
    lib = outcome.env.path / "node_modules" / "ally-cjs-lib" / "index.js"
    original = lib.read_bytes()
    stat_before = lib.stat()

    # An edit of the same size, with the old mtime put back: npm ls sees nothing.
    edited = original.replace(b"a + b", b"a - b")
    assert len(edited) == len(original) and edited != original
    lib.write_bytes(edited)
    os.utime(lib, ns=(stat_before.st_atime_ns, stat_before.st_mtime_ns))
    assert outcome.tool("add").call({"a": 5, "b": 3}).result["sum"] == 2
    ((_, health),) = host.doctor()
    assert not health.ok
    assert health.describe() == (
        "1 installed file changed: node_modules/ally-cjs-lib/index.js was modified"
    )
    ((fixed, _),) = host.doctor(fix=True)
    assert fixed.ready and fixed.action == "repaired", fixed.reason
    assert fixed.tool("add").call({"a": 5, "b": 3}).result == {"sum": 8, "version": "1.1.0"}
    ((_, health),) = host.doctor()
    assert health.ok, health.describe()

    # A file deleted from a package whose package.json is still there.
    esm = Path("node_modules", "@ally-test", "esm-lib", "index.js")
    (fixed.env.path / esm).unlink()
    ((_, health),) = host.doctor()
    assert health.describe() == (
        "1 installed file changed: node_modules/@ally-test/esm-lib/index.js is missing"
    )
    ((again, _),) = host.doctor(fix=True)
    assert again.ready and again.action == "repaired", again.reason
    assert (again.env.path / esm).is_file()
    ((_, health),) = host.doctor()
    assert health.ok, health.describe()


def test_install_scripts_run_unless_the_manifest_turns_them_off(host, make_plugin):
    tool = {"name": "ran", "command": "node", "args": ["ran.js"]}
    files = {
        "ran.js": "console.log(JSON.stringify(require('ally-postinstall')));\n",
        # The plugin's own lifecycle scripts never run: the env is not its source tree.
    }
    package = {
        "dependencies": {"ally-postinstall": "1.0.0"},
        "scripts": {"postinstall": 'node -e "process.exit(1)"'},
    }
    node_plugin(make_plugin, "scripts-on", package, files, tools=[tool])
    node_plugin(make_plugin, "scripts-off", package, files, tools=[tool], deps={"scripts": False})
    outcomes = {o.name: o for o in host.load()}
    assert outcomes["scripts-on"].ready, outcomes["scripts-on"].reason
    assert outcomes["scripts-off"].ready, outcomes["scripts-off"].reason
    assert outcomes["scripts-on"].tool("ran").call({}).result is True
    assert outcomes["scripts-off"].tool("ran").call({}).result is False


def test_file_dependencies_inside_the_plugin_install_and_outside_are_refused(
    host, make_plugin, npm_tarballs
):
    tarball = next(p for p in npm_tarballs if p.name == "ally-cjs-lib-1.0.0.tgz")
    plugin = node_plugin(
        make_plugin,
        "vendored",
        {"dependencies": {"ally-cjs-lib": "file:vendor/ally-cjs-lib-1.0.0.tgz"}},
        CJS_FILES,
        tools=[CJS_TOOL],
    )
    (plugin / "vendor").mkdir()
    shutil.copyfile(tarball, plugin / "vendor" / tarball.name)
    node_plugin(
        make_plugin,
        "escaping",
        {"dependencies": {"ally-cjs-lib": f"file:../../{tarball.name}"}},
    )
    outcomes = {o.name: o for o in host.load()}
    vendored = outcomes["vendored"]
    assert vendored.ready, vendored.reason
    assert vendored.tool("add").call({"a": 1, "b": 1}).result["version"] == "1.0.0"
    assert not (plugin / "node_modules").exists()
    escaping = outcomes["escaping"]
    assert escaping.status == "blocked"
    assert "is outside the plugin directory" in escaping.reason


@pytest.mark.network
def test_real_tsx_runs_a_typescript_tool_importing_a_real_package(host, make_plugin, monkeypatch):
    registry = "https://registry.npmjs.org/"
    try:
        socket.create_connection(("registry.npmjs.org", 443), timeout=5).close()
    except OSError as exc:
        pytest.skip(f"registry.npmjs.org not reachable: {exc}")
    monkeypatch.setenv("npm_config_registry", registry)
    node_plugin(
        make_plugin,
        "real-ts",
        {"type": "module", "dependencies": {"slugify": "^1.6.6"}, "devDependencies": {"tsx": "^4"}},
        {
            "tool.ts": 'import slugify from "slugify";\n'
            "interface Input { text: string }\n"
            "const input: Input = { text: 'Hello TypeScript World' };\n"
            "const slug: string = slugify(input.text, { lower: true });\n"
            "console.log(JSON.stringify({ success: true, result: slug }));\n"
        },
        tools=[{"name": "slug", "command": "npx", "args": ["tsx", "tool.ts"]}],
    )
    (outcome,) = host.load()
    assert outcome.ready, outcome.reason
    assert "tsx" in outcome.packages
    result = outcome.tool("slug").call({})
    assert result.success, result.stderr
    assert result.result == "hello-typescript-world"


def test_offline_installs_use_only_npms_shared_cache(host, make_plugin, npm_env, no_spawn):
    node_plugin(make_plugin, "online", {"dependencies": {"ally-cjs-lib": "1.0.0"}})
    (online,) = host.load()
    assert online.ready, online.reason
    assert (host.paths.cache_dir / "npm" / "_cacache").is_dir()

    # Same registry (npm's cache is keyed by URLs), which must not be asked anything now.
    npm_env.requests.clear()
    node_plugin(
        make_plugin,
        "cached",
        {"description": "same package, other plugin", "dependencies": {"ally-cjs-lib": "1.0.0"}},
    )
    node_plugin(make_plugin, "uncached", {"dependencies": {"ally-hello-bin": "1.0.0"}})
    offline = type(host)(host.paths.home, settings={"offline": True})
    # An env built online is complete: going offline does not rebuild it.
    with no_spawn():
        (still,) = offline.load(["online"])
    assert still.ready and still.action == "none" and still.env.path == online.env.path
    outcomes = {o.name: o for o in offline.load(["cached", "uncached"])}
    assert outcomes["cached"].ready, outcomes["cached"].reason
    assert outcomes["cached"].packages == {"ally-cjs-lib": "1.0.0"}
    assert outcomes["uncached"].status == "blocked"
    assert "--offline" in outcomes["uncached"].reason
    assert "ENOTCACHED" in outcomes["uncached"].reason
    assert npm_env.requests == []


def test_host_node_and_npm_settings_do_not_leak_into_the_env(
    host, make_plugin, monkeypatch, tmp_path
):
    monkeypatch.setenv("NODE_OPTIONS", "--require=/nonexistent/ally-host-preload.js")
    monkeypatch.setenv("NODE_PATH", "/nonexistent/host-modules")
    monkeypatch.setenv("NODE_ENV", "production")
    monkeypatch.setenv("npm_config_global", "true")
    # Were the install made global, it would land here (not in the machine's prefix).
    monkeypatch.setenv("npm_config_prefix", str(tmp_path / "global-prefix"))
    node_plugin(
        make_plugin,
        "isolated",
        {
            "dependencies": {"ally-cjs-lib": "1.0.0"},
            "devDependencies": {"ally-hello-bin": "1.0.0"},
        },
        CJS_FILES,
        tools=[CJS_TOOL, {"name": "hello", "command": "ally-hello"}],
    )
    (outcome,) = host.load()
    assert outcome.ready, outcome.reason
    assert outcome.packages == {"ally-cjs-lib": "1.0.0", "ally-hello-bin": "1.0.0"}
    assert outcome.tool("add").call({"a": 1, "b": 2}).result == {"sum": 3, "version": "1.0.0"}
    assert outcome.tool("hello").call({"who": "dev"}).result["hello"] == "dev"
    assert not (tmp_path / "global-prefix").exists()


@pytest.mark.parametrize("name", ["package-lock.json", "npm-shrinkwrap.json", ".npmrc"])
def test_a_lock_or_npmrc_symlinked_from_outside_the_plugin_is_refused(
    host, make_plugin, tmp_path, npm_env, name
):
    outside = tmp_path / "outside"
    outside.mkdir()
    content = (
        f"registry={npm_env.url}\n"
        if name == ".npmrc"
        else json.dumps({"name": "linked", "lockfileVersion": 3, "packages": {}})
    )
    (outside / name).write_text(content)
    plugin = node_plugin(make_plugin, "linked", {"dependencies": {"ally-cjs-lib": "1.0.0"}})
    (plugin / name).symlink_to(outside / name)
    # The same file through a symlink that stays inside the plugin is fine.
    inside = node_plugin(make_plugin, "inside", {"dependencies": {"ally-cjs-lib": "1.0.0"}})
    (inside / "kept").mkdir()
    (inside / "kept" / ".npmrc").write_text(f"registry={npm_env.url}\n")
    (inside / ".npmrc").symlink_to(Path("kept", ".npmrc"))
    outcomes = {o.name: o for o in host.load()}
    linked = outcomes["linked"]
    assert linked.status == "blocked"
    assert linked.reason == (
        f"{name} is a symlink to {outside / name}, outside the plugin directory; "
        "copy the file into the plugin"
    )
    assert outcomes["inside"].ready, outcomes["inside"].reason


def test_a_package_json_symlinked_from_outside_the_plugin_is_refused(host, make_plugin, tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "package.json").write_text(json.dumps({"name": "x", "dependencies": {}}))
    plugin = node_plugin(make_plugin, "linked", {})
    (plugin / "package.json").unlink()
    (plugin / "package.json").symlink_to(outside / "package.json")
    (outcome,) = host.load()
    assert outcome.status == "blocked"
    assert "\n" not in outcome.reason
    assert "$.dependencies.file: 'package.json' is outside the plugin directory" in outcome.reason


def test_plugin_npmrc_gives_the_registry_and_nothing_else(host, make_plugin, monkeypatch, npm_env):
    monkeypatch.delenv("npm_config_registry")
    plugin = node_plugin(make_plugin, "own-registry", {"dependencies": {"ally-cjs-lib": "1.0.0"}})
    (plugin / ".npmrc").write_text(
        f"; the plugin's registry\nregistry={npm_env.url}\nprefix=/\nglobal=true\n"
    )
    events = []
    (outcome,) = host.load(progress=events.append)
    assert outcome.ready, outcome.reason
    assert outcome.packages == {"ally-cjs-lib": "1.0.0"}
    assert npm_env.tarball_requests() == ["/ally-cjs-lib/-/ally-cjs-lib-1.0.0.tgz"]
    assert (outcome.env.path / ".npmrc").read_text() == f"registry={npm_env.url}\n"
    assert ".npmrc: ignored prefix, global" in [e.message for e in events]


def test_install_command_runs_in_the_env_with_its_npm(host, make_plugin):
    plugin = make_plugin(
        "commanded",
        {
            "runtime": "node",
            "dependencies": {"install_command": "npm install ally-cjs-lib@1.0.0 --no-audit"},
            "tools": [CJS_TOOL],
        },
        files=CJS_FILES,
    )
    before = tree(plugin)
    (outcome,) = host.load()
    assert outcome.ready, outcome.reason
    assert outcome.packages == {"ally-cjs-lib": "1.0.0"}
    assert outcome.tool("add").call({"a": 2, "b": 3}).result == {"sum": 5, "version": "1.0.0"}
    assert tree(plugin) == before


def test_install_command_env_path_placeholder_installs_into_the_env(
    host, make_plugin, npm_tarballs, npm_env
):
    # Code Ally's form: the command names the env with {envPath} and runs in the plugin
    # directory, so a tarball shipped with the plugin is found by its relative path.
    (tarball,) = [t for t in npm_tarballs if t.name == "ally-cjs-lib-1.0.0.tgz"]
    shipped = make_plugin(
        "shipped",
        {
            "runtime": "node",
            "dependencies": {
                "install_command": "npm install --prefix {envPath} --no-audit --no-fund "
                "./vendor/ally-cjs-lib-1.0.0.tgz"
            },
            "tools": [CJS_TOOL],
        },
        files=CJS_FILES,
    )
    (shipped / "vendor").mkdir()
    shutil.copyfile(tarball, shipped / "vendor" / tarball.name)
    # The other form: the plugin's package.json, installed from the registry into the env.
    registry = node_plugin(
        make_plugin,
        "prefixed",
        {"dependencies": {"ally-cjs-lib": "1.1.0"}},
        CJS_FILES,
        tools=[CJS_TOOL],
        deps={"install_command": "npm install --prefix={envPath} --no-audit --no-fund"},
    )
    before = {p: tree(p) for p in (shipped, registry)}
    for plugin in before:
        for p in [plugin, *plugin.rglob("*")]:
            p.chmod(p.stat().st_mode & ~0o222)  # npm must not write here
    try:
        outcomes = {o.name: o for o in host.load()}
    finally:
        for plugin in before:
            for p in [plugin, *plugin.rglob("*")]:
                p.chmod(p.stat().st_mode | 0o200)
    for name, version in (("shipped", "1.0.0"), ("prefixed", "1.1.0")):
        outcome = outcomes[name]
        assert outcome.ready, outcome.reason
        assert outcome.packages == {"ally-cjs-lib": version}
        assert (outcome.env.path / "node_modules" / "ally-cjs-lib").is_dir()
        assert outcome.tool("add").call({"a": 2, "b": 3}).result == {"sum": 5, "version": version}
        assert not list(outcome.env.path.rglob("*{envPath}*"))
    assert {p: tree(p) for p in before} == before
    assert npm_env.tarball_requests() == ["/ally-cjs-lib/-/ally-cjs-lib-1.1.0.tgz"]


def test_invalid_engines_range_is_reported(host, make_plugin):
    node_plugin(make_plugin, "typo", {"engines": {"node": ">= banana"}})
    (outcome,) = host.load()
    assert outcome.status == "blocked"
    assert "engines.node in package.json: '>= banana' is not a valid semver range" in (
        outcome.reason
    )


def processes_working_in(store_dir: Path) -> list[int]:
    """Processes whose working directory is inside ``store_dir`` (the npm ally started)."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                cwd = os.readlink(f"/proc/{entry}/cwd")
            except OSError:
                continue
            if cwd.startswith(f"{store_dir}{os.sep}"):
                found.append(int(entry))
    return found


@pytest.mark.skipif(not os.path.isdir("/proc"), reason="finds npm processes through /proc")
def test_interrupted_install_stops_npm_and_leaves_no_half_env(host, make_plugin, npm_env):
    node_plugin(make_plugin, "slow", {"dependencies": {"ally-cjs-lib": "1.0.0"}})
    store_dir = host.paths.store_dir
    npm_env.hold.set()
    cli = subprocess.Popen(
        [sys.executable, "-m", "ally_core.cli", "install", "slow", "-q"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        # npm has resolved and is downloading the tarball: the env is half built.
        assert npm_env.tarball_requested.wait(120), "npm never asked for the tarball"
        assert processes_working_in(store_dir), "npm is not running in the env"
        cli.send_signal(signal.SIGTERM)
        _, err = cli.communicate(timeout=60)
        assert cli.returncode != 0, err
        # npm runs in its own session; ally ended that whole process group.
        assert processes_working_in(store_dir) == []
    finally:
        npm_env.release.set()
        if cli.poll() is None:
            cli.kill()
            cli.wait()
    assert host.store.current("slow") is None  # nothing half-built was published
    assert [p for p in store_dir.iterdir() if not p.name.startswith(".")] == []

    (outcome,) = type(host)(host.paths.home).load()
    assert outcome.ready and outcome.action == "built", outcome.reason


def test_runtime_is_registered_through_its_entry_point_only(ally_cli):
    listed = ally_cli("runtimes", "--json")
    assert listed.returncode == 0, listed.stderr
    rows = {r["name"]: r for r in json.loads(listed.stdout)["runtimes"]}
    assert rows["node"]["serves"] == ["node", "nodejs"]
    assert rows["node"]["distribution"].startswith("ally-runtime-node ")
    # The core knows nothing about it: a third party could ship it the same way.
    import ally_core

    core = Path(ally_core.__file__).parent
    assert not [p for p in core.rglob("*.py") if "ally_runtime_node" in p.read_text("utf-8")]


def test_disabled_runtime_blocks_its_plugins_with_a_clear_reason(
    ally_home, make_plugin, monkeypatch
):
    from ally_core import Host

    monkeypatch.setenv("ALLY_DISABLED_PLUGINS", "node")
    node_plugin(make_plugin, "orphan", {})
    (outcome,) = Host(ally_home).load()
    assert outcome.status == "blocked"
    assert "unknown runtime 'node'" in outcome.reason and "ally-runtime-node" in outcome.reason
