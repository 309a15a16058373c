"""A real keyring backend for tests: passwords in a JSON file (not collected as a test).

``keyring.set_keyring(FileKeyring(path))`` in this process, or, for a subprocess,
``PYTHON_KEYRING_BACKEND=ally_test_keyring.FileKeyring`` with this directory on
``PYTHONPATH`` and ``ALLY_TEST_KEYRING_FILE`` naming the file. It is viable only where that
variable is set, so keyring never picks it by itself.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Optional

from jaraco.classes.properties import classproperty
from keyring.backend import KeyringBackend
from keyring.errors import PasswordDeleteError

VARIABLE = "ALLY_TEST_KEYRING_FILE"


class FileKeyring(KeyringBackend):
    @classproperty
    def priority(cls) -> float:
        if not os.environ.get(VARIABLE):
            raise RuntimeError(f"test keyring: {VARIABLE} is not set")
        return 1.0

    def __init__(self, path: Optional[Path] = None) -> None:
        super().__init__()
        self.path = Path(path or os.environ[VARIABLE])

    def _load(self) -> dict[str, str]:
        try:
            return json.loads(self.path.read_text("utf-8"))
        except FileNotFoundError:
            return {}

    def _save(self, data: dict[str, str]) -> None:
        self.path.write_text(json.dumps(data, indent=1, sort_keys=True), "utf-8")

    @staticmethod
    def _key(service: str, username: str) -> str:
        return json.dumps([service, username])

    def get_password(self, service: str, username: str) -> Optional[str]:
        return self._load().get(self._key(service, username))

    def set_password(self, service: str, username: str, password: str) -> None:
        data = self._load()
        data[self._key(service, username)] = password
        self._save(data)

    def delete_password(self, service: str, username: str) -> None:
        data = self._load()
        if data.pop(self._key(service, username), None) is None:
            raise PasswordDeleteError("no such password")
        self._save(data)
