"""Names and paths of a node env that both the hooks and the build use (no imports of ally)."""

from __future__ import annotations

from pathlib import Path

__all__ = [
    "ENV_PATH_PLACEHOLDER",
    "ESM_DIR",
    "ESM_FILES",
    "ESM_HOOKS_RANGE",
    "LOCK_NAME",
    "NAMES",
    "ally_dir_of",
]

NAMES = ("node", "nodejs")
#: ``module.register`` (needed for the ESM resolve hook) exists from Node.js 20.6 and 18.19.
ESM_HOOKS_RANGE = ">=20.6.0 || >=18.19.0 <19.0.0-0"
ESM_DIR = Path(__file__).parent / "esm"
ESM_FILES = ("register.mjs", "resolve-hooks.mjs")
#: What an offline bundle's npm artifacts are described by (see ``_bundle``).
LOCK_NAME = "npm-bundle.json"
#: Replaced by the env directory in ``install_command`` (Code Ally's placeholder).
ENV_PATH_PLACEHOLDER = "{envPath}"


def ally_dir_of(env_dir: Path) -> Path:
    """The env's own directory of ally's files (``.ally/``)."""
    return env_dir / ".ally"
