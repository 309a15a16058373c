"""Offline bundles: `ally bundle NAME` then `ally install ARCHIVE --offline` with no network."""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from ally_core import Host
from ally_core.bundle import BundleError, install_bundle
from ally_core.testing import hermetic_environ, write_plugin

GREETER = {
    "version": "1.2.0",
    "runtime": "python3",
    "dependencies": {"file": "requirements.txt"},
    "tools": [{"name": "hello", "command": "python3", "args": ["main.py"]}],
}
GREETER_FILES = {
    "requirements.txt": "allydemo-shout\n",
    "main.py": "import json, sys, allydemo_greet, allydemo_shout\n"
    "who = json.load(sys.stdin).get('who', 'world')\n"
    "print(json.dumps({'success': True, 'result': allydemo_greet.greet(who)}))\n",
}


def _network_off_prefix() -> tuple[list[str], str]:
    """A command prefix that really removes the network, or none (and why)."""
    unshare = shutil.which("unshare")
    if unshare is None:
        return [], "unshare not available: index and cache disabled instead"
    probe = subprocess.run([unshare, "-n", "true"], capture_output=True)
    if probe.returncode != 0:
        probe = subprocess.run([unshare, "-rn", "true"], capture_output=True)
        if probe.returncode != 0:
            return [], "unshare -n not permitted: index and cache disabled instead"
        return [unshare, "-rn"], "network namespace without interfaces (unshare -rn)"
    return [unshare, "-n"], "network namespace without interfaces (unshare -n)"


def _cli(home: Path, *args: str, prefix: list[str] | None = None, input: str | None = None):
    env = hermetic_environ()
    env["ALLY_HOME"] = str(home)
    return subprocess.run(
        [*(prefix or []), sys.executable, "-m", "ally_core.cli", *args],
        capture_output=True, text=True, env=env, input=input, timeout=300,
    )


@pytest.fixture
def bundle(tmp_path: Path, make_plugin, ally_home: Path) -> Path:
    make_plugin("greeter", GREETER, GREETER_FILES)
    archive = tmp_path / "greeter.ally.tar.gz"
    proc = _cli(ally_home, "bundle", "greeter", "-o", str(archive))
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == str(archive)
    return archive


def test_bundle_holds_source_wheels_and_hashed_lock(bundle: Path):
    with tarfile.open(bundle) as tar:
        names = set(tar.getnames())
        info = json.load(tar.extractfile("bundle.json"))  # type: ignore[arg-type]
    assert {"plugin/plugin.json", "plugin/main.py", "plugin/requirements.txt"} <= names
    wheels = {n for n in names if n.endswith(".whl")}
    assert wheels == {
        "plugin/.ally-bundle/allydemo_greet-2.0.0-py3-none-any.whl",
        "plugin/.ally-bundle/allydemo_shout-1.0.0-py3-none-any.whl",
    }
    lock = {p["name"]: p for p in info["lock"]["packages"]}
    assert set(lock) == {"allydemo-greet", "allydemo-shout"}
    assert lock["allydemo-greet"]["version"] == "2.0.0"
    assert all(len(p["sha256"]) == 64 for p in lock.values())
    assert info["plugin"] == "greeter" and info["version"] == "1.2.0"
    assert set(info["files"]) >= {"plugin/plugin.json", *wheels}


def test_bundle_installs_and_runs_with_the_network_off(bundle: Path, tmp_path: Path):
    prefix, how = _network_off_prefix()
    fresh = tmp_path / "fresh-home"  # empty cache, no config: only the bundle can help
    fresh.mkdir()
    if not prefix:
        (fresh / "config.toml").write_text("[ally.index]\nno_index = true\n")
    proc = _cli(fresh, "install", str(bundle), "--offline", prefix=prefix)
    assert proc.returncode == 0, f"{how}: {proc.stderr}"
    assert not (fresh / "cache" / "uv").exists() or not any(
        (fresh / "cache" / "uv").glob("**/*.whl")
    ), "nothing may have been downloaded"
    run = _cli(fresh, "run", "greeter", "hello", "--input", '{"who": "offline"}', prefix=prefix)
    assert run.returncode == 0, f"{how}: {run.stderr}"
    assert json.loads(run.stdout) == {
        "success": True,
        "result": "hello offline from allydemo_greet 2.0.0",
    }
    # The artifacts stay with the plugin: a rebuild (repair) also works offline.
    again = _cli(fresh, "reinstall", "greeter", "--offline", prefix=prefix)
    assert again.returncode == 0, f"{how}: {again.stderr}"


def test_bundle_file_tampered_with_is_refused(bundle: Path, tmp_path: Path):
    tampered = tmp_path / "tampered.tar.gz"
    with tarfile.open(bundle) as src, tarfile.open(tampered, "w:gz") as dst:
        for member in src.getmembers():
            data = src.extractfile(member) if member.isfile() else None
            if member.name == "plugin/main.py":
                payload = b"import os; os.system('echo pwned')\n"
                member.size = len(payload)
                dst.addfile(member, io.BytesIO(payload))
            else:
                dst.addfile(member, data)
    host = Host(tmp_path / "home")
    with pytest.raises(BundleError, match="does not match its hash"):
        install_bundle(host, tampered)
    assert not (tmp_path / "home" / "plugins" / "greeter").exists()


@pytest.mark.parametrize(
    "member", ["../evil.txt", "/abs/evil.txt", "plugin/../../evil.txt", "other/x.txt"]
)
def test_bundle_with_path_leaving_the_plugin_is_refused(tmp_path: Path, member: str):
    archive = tmp_path / "evil.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        info = tarfile.TarInfo(member)
        info.size = 4
        tar.addfile(info, io.BytesIO(b"evil"))
    with pytest.raises(BundleError, match="unsafe path"):
        install_bundle(Host(tmp_path / "home"), archive)
    assert not (tmp_path / "evil.txt").exists()


def test_bundle_with_symlink_leaving_the_plugin_is_refused(tmp_path: Path):
    archive = tmp_path / "evil.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        info = tarfile.TarInfo("plugin/passwd")
        info.type = tarfile.SYMTYPE
        info.linkname = "/etc/passwd"
        tar.addfile(info)
    with pytest.raises(BundleError, match="symlink"):
        install_bundle(Host(tmp_path / "home"), archive)


def test_bundle_skips_symlinks_pointing_outside_the_plugin(
    make_plugin, ally_home: Path, tmp_path: Path
):
    plugin = make_plugin("nodeps", {"version": "1", "tools": []}, {"a.txt": "a"})
    secret = tmp_path / "secret.txt"
    secret.write_text("top secret")
    os.symlink(secret, plugin / "leak.txt")
    os.symlink("a.txt", plugin / "inside.txt")
    archive = tmp_path / "nodeps.tar.gz"
    proc = _cli(ally_home, "bundle", "nodeps", "-o", str(archive))
    assert proc.returncode == 0, proc.stderr
    with tarfile.open(archive) as tar:
        names = set(tar.getnames())
    assert "plugin/inside.txt" in names and "plugin/leak.txt" not in names


def test_installing_a_bundle_over_an_older_copy_needs_force_and_keeps_a_backup(
    bundle: Path, tmp_path: Path
):
    home = tmp_path / "home2"
    old = write_plugin(home / "plugins", "greeter", {"version": "0.1"}, {"stale.txt": "old"})
    host = Host(home)
    with pytest.raises(BundleError, match=f"{old} already exists"):
        install_bundle(host, bundle)
    assert (old / "stale.txt").read_text() == "old"
    done = install_bundle(host, bundle, force=True)
    assert done.name == "greeter" and done.plugin_dir == old
    assert not (old / "stale.txt").exists()
    assert json.loads((old / "plugin.json").read_text())["version"] == "1.2.0"
    assert done.backup is not None and (done.backup / "stale.txt").read_text() == "old"
    # Only the backup directory is left beside the plugins: no unpacking leftovers.
    assert [p.name for p in (home / "plugins").iterdir() if p.name.startswith(".")] == [
        ".ally-backup"
    ]
