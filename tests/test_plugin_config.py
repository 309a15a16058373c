"""Where secret plugin config is kept: the OS keyring when one is usable, else a 0600 file.

The keyring is a real ``keyring`` backend (tests/ally_test_keyring.py, a KeyringBackend that
keeps its passwords in a JSON file), selected the way keyring selects any backend:
``keyring.set_keyring`` in this process, ``PYTHON_KEYRING_BACKEND`` for a CLI subprocess.
Without it this machine has no keyring: keyring's ``fail`` backend, as on a headless server.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import stat
from pathlib import Path

import pytest

from ally_core import Host
from ally_core.plugin_config import (
    MASK,
    load_stored,
    resolve_config,
    secret_store,
    set_stored,
    stored_view,
    unset_stored,
)

SECRET = "tok-3b7d9f1a5c2e-KEYRINGSECRET"
TESTS = Path(__file__).parent
# Prints the SHA-256 of each PLUGIN_CONFIG_* it got: ally masks secret values in what a
# tool returns, so the tool proves it got a value without showing it.
ENV_TOOL = (
    "import hashlib, json, os, sys\n"
    "json.load(sys.stdin)\n"
    "print(json.dumps({'success': True, 'result': {k: hashlib.sha256(v.encode()).hexdigest()"
    " for k, v in os.environ.items() if k.startswith('PLUGIN_CONFIG_')}}))\n"
)


def _seen(value: str) -> str:
    """What ENV_TOOL reports for ``value``."""
    return hashlib.sha256(value.encode()).hexdigest()


SCHEMA = {
    "type": "object",
    "properties": {
        "token": {"type": "string", "secret": True},
        "pin": {"type": "integer", "secret": True},
        "retries": {"type": "integer"},
    },
}


def _plugin(make_plugin, name: str = "safe") -> Path:
    return make_plugin(
        name,
        {"config": SCHEMA, "tools": [{"name": "env", "command": "python3", "args": ["tool.py"]}]},
        {"tool.py": ENV_TOOL},
    )


def _ok(proc) -> str:
    assert proc.returncode == 0, (proc.args, proc.stdout, proc.stderr)
    return proc.stdout


def _fails(proc) -> str:
    assert proc.returncode != 0, proc.stdout
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("ally: error: ") and "internal error" not in lines[0], lines[0]
    return lines[0]


def _store_text(home: Path, name: str = "safe") -> str:
    return (Host(home).paths.config_dir / "plugin-config" / f"{name}.json").read_text()


@pytest.fixture
def ring_file(tmp_path: Path) -> Path:
    return tmp_path / "keyring.json"


@pytest.fixture
def keyring_env(ring_file: Path) -> dict[str, str]:
    """The environment that gives a CLI subprocess the test keyring."""
    return {
        "PYTHON_KEYRING_BACKEND": "ally_test_keyring.FileKeyring",
        "PYTHONPATH": str(TESTS),
        "ALLY_TEST_KEYRING_FILE": str(ring_file),
    }


@pytest.fixture
def in_process_keyring(ring_file: Path):
    """The test keyring as this process's keyring, for the duration of a test."""
    import keyring

    path = TESTS / "ally_test_keyring.py"
    spec = importlib.util.spec_from_file_location("ally_test_keyring", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    previous = keyring.get_keyring()
    keyring.set_keyring(module.FileKeyring(ring_file))
    yield ring_file
    keyring.set_keyring(previous)


# ---------------------------------------------------------------------------------------------
# no keyring on this machine: the 0600 file, and ally says so


def test_without_a_keyring_secrets_go_to_the_0600_file_and_config_says_so(
    ally_home: Path, make_plugin, ally_cli
):
    _plugin(make_plugin)
    text = _ok(ally_cli("config"))
    where = ally_home / "plugin-config"
    assert (
        f"secrets: 0600 plain-text files in {where}  (secrets_backend = auto (default): "
        "no usable OS keyring (keyring.backends.fail.Keyring))"
    ) in text
    data = json.loads(_ok(ally_cli("config", "--json")))["secrets"]
    assert data == {
        "backend": "file",
        "available": True,
        "detail": str(where),
        "reason": "secrets_backend = auto (default): no usable OS keyring "
        "(keyring.backends.fail.Keyring)",
    }
    _ok(ally_cli("config", "set", "safe", "token", SECRET))
    assert SECRET in _store_text(ally_home)
    assert stat.S_IMODE((where / "safe.json").stat().st_mode) == 0o600


def test_keyrings_null_backend_counts_as_no_keyring(ally_home: Path, ally_cli):
    env = {"PYTHON_KEYRING_BACKEND": "keyring.backends.null.Keyring"}
    data = json.loads(_ok(ally_cli("config", "--json", env=env)))["secrets"]
    assert data["backend"] == "file"
    assert "no usable OS keyring (keyring.backends.null.Keyring)" in data["reason"]


def test_asking_for_the_keyring_without_one_refuses_secrets_in_one_line(
    ally_home: Path, make_plugin, ally_cli
):
    _plugin(make_plugin)
    env = {"ALLY_SECRETS_BACKEND": "keyring"}
    data = json.loads(_ok(ally_cli("config", "--json", env=env)))["secrets"]
    assert data["backend"] == "keyring" and data["available"] is False
    assert "secrets: none usable" in _ok(ally_cli("config", env=env))
    proc = ally_cli("config", "set", "safe", "token", SECRET, env=env)
    line = _fails(proc)
    assert "cannot store a secret" in line and "ALLY_SECRETS_BACKEND=file" in line
    assert SECRET not in proc.stdout + proc.stderr
    # Values that are not secret are stored as ever.
    assert _ok(ally_cli("config", "set", "safe", "retries", "2", env=env)) == "safe: retries = 2\n"
    assert SECRET not in _store_text(ally_home)
    # A secret already in the file (stored with secrets_backend = file) stays usable and does
    # not stop other changes; setting it again is refused.
    _ok(ally_cli("config", "set", "safe", "token", SECRET, env={"ALLY_SECRETS_BACKEND": "file"}))
    assert _ok(ally_cli("config", "set", "safe", "retries", "3", env=env)) == "safe: retries = 3\n"
    line = _fails(ally_cli("config", "set", "safe", "token", "tok-x", env=env))
    assert "cannot store a secret" in line
    ran = json.loads(_ok(ally_cli("run", "safe", "env", "--input", "{}", env=env)))["result"]
    assert ran["PLUGIN_CONFIG_TOKEN"] == _seen(SECRET)
    assert ran["PLUGIN_CONFIG_RETRIES"] == _seen("3")


# ---------------------------------------------------------------------------------------------
# a real keyring backend


def test_secrets_are_kept_in_the_keyring_and_only_there(
    ally_home: Path, make_plugin, in_process_keyring: Path
):
    plugin = _plugin(make_plugin)
    host = Host(ally_home)
    store = secret_store(host)
    assert (store.backend, store.available) == ("keyring", True)
    assert store.detail == "ally_test_keyring.FileKeyring"
    manifest = host.source("safe").manifest

    set_stored(host, manifest, "token", SECRET)
    set_stored(host, manifest, "pin", "4321")
    set_stored(host, manifest, "retries", "3")
    text = _store_text(ally_home)
    assert SECRET not in text and "4321" not in text
    entry = json.loads(text)["dirs"][os.path.realpath(plugin)]
    assert entry == {"values": {"retries": 3}, "keyring": ["pin", "token"]}
    ring = json.loads(in_process_keyring.read_text())
    assert sorted(ring.values()) == sorted([json.dumps(4321), json.dumps(SECRET)])

    assert load_stored(host, "safe", plugin) == {"token": SECRET, "pin": 4321, "retries": 3}
    assert stored_view(host, manifest, plugin) == {"token": MASK, "pin": MASK, "retries": 3}
    outcome = host.ensure("safe")
    resolved = resolve_config(host, outcome, {})
    assert resolved == {"token": SECRET, "pin": "4321", "retries": "3"}
    assert outcome.tool("env").call({}).result["PLUGIN_CONFIG_TOKEN"] == _seen(SECRET)

    assert unset_stored(host, manifest, "token") is True
    assert SECRET not in in_process_keyring.read_text()
    assert load_stored(host, "safe", plugin) == {"pin": 4321, "retries": 3}

    # Forced to the file: the secret moves out of the keyring.
    host = Host(ally_home, settings={"secrets_backend": "file"})
    assert secret_store(host).backend == "file"
    set_stored(host, manifest, "token", SECRET)
    assert json.loads(in_process_keyring.read_text()) == {}
    assert json.loads(_store_text(ally_home))["dirs"][os.path.realpath(plugin)] == {
        "values": {"pin": 4321, "retries": 3, "token": SECRET}
    }


def test_the_cli_moves_secrets_into_the_keyring_and_tools_still_get_them(
    ally_home: Path, make_plugin, ally_cli, keyring_env: dict[str, str], ring_file: Path
):
    _plugin(make_plugin)
    # Stored in the file first (as by an ally without keyring, or on a machine without one).
    _ok(ally_cli("config", "set", "safe", "token", SECRET, env={"ALLY_SECRETS_BACKEND": "file"}))
    assert SECRET in _store_text(ally_home)

    data = json.loads(_ok(ally_cli("config", "--json", env=keyring_env)))["secrets"]
    assert data["backend"] == "keyring" and data["detail"] == "ally_test_keyring.FileKeyring"
    assert "secrets: the OS keyring (ally_test_keyring.FileKeyring)" in _ok(
        ally_cli("config", env=keyring_env)
    )
    # The next change moves the plain-text secret into the keyring.
    _ok(ally_cli("config", "set", "safe", "retries", "2", env=keyring_env))
    assert SECRET not in _store_text(ally_home)
    assert SECRET in ring_file.read_text()
    env = json.loads(_ok(ally_cli("run", "safe", "env", "--input", "{}", env=keyring_env)))
    assert env["result"]["PLUGIN_CONFIG_TOKEN"] == _seen(SECRET)
    shown = _ok(ally_cli("config", "show", "safe", env=keyring_env))
    assert shown.splitlines() == ["retries = 2", "token = ********"]

    # The keyring goes away: show still works, the tool is not run without its secret.
    assert _ok(ally_cli("config", "show", "safe")) == shown
    line = _fails(ally_cli("run", "safe", "env", "--input", "{}"))
    assert "'token' is kept in the OS keyring, which is not usable now" in line
    # Setting it again without a keyring puts it in the file.
    _ok(ally_cli("config", "set", "safe", "token", "tok-new-value-0001"))
    env = json.loads(_ok(ally_cli("run", "safe", "env", "--input", "{}")))
    assert env["result"]["PLUGIN_CONFIG_TOKEN"] == _seen("tok-new-value-0001")


def test_a_keyring_that_fails_to_store_is_one_line_and_changes_nothing(
    ally_home: Path, make_plugin, ally_cli, keyring_env: dict[str, str], ring_file: Path
):
    _plugin(make_plugin)
    _ok(ally_cli("config", "set", "safe", "retries", "1", env=keyring_env))
    before = _store_text(ally_home)
    ring_file.mkdir()  # the backend cannot write its file: a real failure inside keyring
    proc = ally_cli("config", "set", "safe", "token", SECRET, env=keyring_env)
    line = _fails(proc)
    assert "OS keyring: cannot store 'token'" in line
    assert SECRET not in proc.stdout + proc.stderr
    assert _store_text(ally_home) == before


def test_the_secrets_backend_setting_is_checked(ally_home: Path, ally_cli):
    line = _fails(ally_cli("config", env={"ALLY_SECRETS_BACKEND": "vault"}))
    assert "$ALLY_SECRETS_BACKEND: expected one of auto, keyring, file; got 'vault'" in line
