"""The names and places the Python runtime's modules share: what it serves, an env's layout."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

from ...envs import EnvSpec

#: The runtime names this runtime serves.
NAMES = ("python3", "python")
#: The lock an offline bundle carries: ``name==version --hash=sha256:…`` per wheel.
LOCK_NAME = "requirements.lock"
BIN = "Scripts" if os.name == "nt" else "bin"
EXE = "python.exe" if os.name == "nt" else "python"

#: What every env holds besides its packages. 2: its own pip (``bin/pip``). 3: files copied
#: from uv's cache (not hardlinked) and read-only, its startup hooks recorded in the marker.
#: Envs of an older layout are rebuilt once, so that the promises hold for them too.
ENV_LAYOUT = 3


def serves(spec: EnvSpec) -> bool:
    """Whether this runtime builds ``spec``'s env."""
    return spec.runtime in NAMES


def env_python(env_dir: Path) -> Path:
    """The interpreter of the env at ``env_dir``."""
    return env_dir / BIN / EXE


def cache(spec: EnvSpec, name: str) -> Optional[Path]:
    """The cache dir ``name`` (``uv``, ``pip``, ``virtualenv``) under ally's
    cache dir, or ``None`` when there is none."""
    return spec.options.cache_dir / name if spec.options.cache_dir else None
