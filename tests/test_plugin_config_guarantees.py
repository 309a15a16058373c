"""Stored plugin config on disk: what another user of the machine could see of it.

``ally config set`` keeps values (secrets included) in plain text, so the only protection is
the file system: the file is ``0600`` and the directory ally creates for it ``0700``, whatever
the umask of the process that ran ``ally``.
"""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

SCHEMA = {
    "type": "object",
    "properties": {"token": {"type": "string", "secret": True}},
}


def _config_set(umask: int, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "ally_core.cli", "config", "set", *args],
        capture_output=True,
        text=True,
        timeout=120,
        stdin=subprocess.DEVNULL,
        preexec_fn=lambda: os.umask(umask),
        # The file is what is checked (a usable OS keyring would take the secret instead).
        env={**os.environ, "ALLY_SECRETS_BACKEND": "file"},
    )


@pytest.mark.parametrize("umask", [0o022, 0o002, 0o000], ids=["022", "002", "000"])
def test_the_config_directory_ally_creates_is_0700_and_the_file_0600(
    ally_home: Path, make_plugin, umask: int
):
    make_plugin("safe", {"config": SCHEMA})
    directory = ally_home / "plugin-config"
    assert not directory.exists()  # a fresh home: ally creates it
    proc = _config_set(umask, "safe", "token", "tok-0123456789")
    assert proc.returncode == 0, proc.stderr
    assert stat.S_IMODE(directory.stat().st_mode) == 0o700
    (stored,) = [p for p in directory.iterdir() if p.suffix == ".json"]
    assert stat.S_IMODE(stored.stat().st_mode) == 0o600
    assert "tok-0123456789" in stored.read_text()  # plain text: the modes are the protection
