"""Offline bundles: the installed packages' tarballs out of an env, and back into a new one.

:func:`collect` runs ``npm pack`` for every package the env's lock installed, checks each
tarball against the lock's ``integrity`` and writes :data:`LOCK_NAME` beside them.
:func:`install_argv` points a copy of the bundled lock at those tarballs for
``npm ci --offline``.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ally_core import EnvInfo, EnvSpec, InstallFailed

from ._layout import LOCK_NAME  # what collect() writes beside the tarballs
from ._npm import npm_argv, run_npm
from ._package import LOCK_FILES, package_name

__all__ = ["BUNDLE_PACKAGE_LOCK", "LOCK_NAME", "collect", "install_argv"]

#: The env's own lock file, copied into a bundle.
BUNDLE_PACKAGE_LOCK = "package-lock.json"


def _integrity(path: Path, algorithm: str) -> str:
    import base64
    import hashlib

    digest = hashlib.new(algorithm, path.read_bytes()).digest()
    return f"{algorithm}-{base64.b64encode(digest).decode()}"


def _env_lock(env_dir: Path) -> tuple[Path, dict[str, Any]]:
    for name in LOCK_FILES:
        path = env_dir / name
        if path.is_file():
            data = json.loads(path.read_text("utf-8"))
            if isinstance(data, dict) and isinstance(data.get("packages"), dict):
                return path, data
    raise InstallFailed(
        f"{env_dir}: no package-lock.json (lockfileVersion 2 or 3) to make a bundle from"
    )


def _pack_spec(key: str, entry: Mapping[str, Any]) -> str:
    """What ``npm pack`` fetches the installed tarball of a lock entry by."""
    resolved = entry.get("resolved")
    if isinstance(resolved, str) and "/-/" not in resolved:
        return resolved  # git, a tarball URL, a file: path
    # A registry package (npm may omit its URL: omit-lockfile-registry-resolved).
    return f"{package_name(key, entry)}@{entry['version']}"


def collect(spec: EnvSpec, env: EnvInfo, dest: Path) -> dict[str, Any]:
    """Pack every installed package into ``dest``; write and return :data:`LOCK_NAME`'s data."""
    import hashlib

    lock_path, lock = _env_lock(env.path)
    wanted: dict[str, list[str]] = {}  # pack spec -> lock keys installed from it
    for key, entry in lock["packages"].items():
        if (
            not key
            or not isinstance(entry, dict)
            or entry.get("link")
            or entry.get("inBundle")
            or "version" not in entry
            or not (env.path / key).is_dir()
        ):
            continue
        wanted.setdefault(_pack_spec(key, entry), []).append(key)
    packed: list[dict[str, Any]] = []
    if wanted:
        spec.progress("bundle", f"Collecting {len(wanted)} npm package(s)")
        argv = [
            *npm_argv(env),
            "pack",
            *wanted,
            "--json",
            "--pack-destination",
            str(dest),
            "--ignore-scripts",
            "--offline" if spec.options.offline else "--prefer-offline",
        ]
        out = run_npm(spec, env, argv, "npm pack", quiet=True)
        try:
            packed = json.loads(out[out.index("[") :])
        except ValueError as exc:
            raise InstallFailed(f"{spec.plugin_name}: npm pack printed no JSON: {exc}") from exc
    packages = []
    for pack_spec, info in zip(wanted, packed):
        tarball = dest / info["filename"]
        keys = wanted[pack_spec]
        expected = lock["packages"][keys[0]].get("integrity")
        if isinstance(expected, str):
            algorithm = expected.split("-", 1)[0]
            if _integrity(tarball, algorithm) != expected.split()[0]:
                raise InstallFailed(
                    f"{spec.plugin_name}: {pack_spec}: the packed tarball does not match "
                    "the integrity in the lock"
                )
        packages.append(
            {
                "name": package_name(keys[0], lock["packages"][keys[0]]),
                "version": lock["packages"][keys[0]]["version"],
                "file": tarball.name,
                "sha256": hashlib.sha256(tarball.read_bytes()).hexdigest(),
                "integrity": _integrity(tarball, "sha512"),
                "paths": keys,
            }
        )
    shutil.copyfile(lock_path, dest / BUNDLE_PACKAGE_LOCK)
    data = {
        "format": "npm-tarballs",
        "node": env.interpreter.version,
        "lockfile": BUNDLE_PACKAGE_LOCK,
        "packages": packages,
    }
    (dest / LOCK_NAME).write_text(json.dumps(data, indent=2) + "\n", "utf-8")
    return data


def install_argv(spec: EnvSpec, env: EnvInfo, artifacts: Path) -> list[str]:
    """Point the bundled lock at the bundled tarballs (hashes checked): ``npm ci --offline``."""
    import hashlib

    try:
        bundle = json.loads((artifacts / LOCK_NAME).read_text("utf-8"))
        # Only a name inside the bundle's artifacts dir, whatever the file says.
        lock = json.loads((artifacts / os.path.basename(bundle["lockfile"])).read_text("utf-8"))
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise InstallFailed(
            f"{spec.plugin_name}: the bundle's npm lock is unreadable: {exc}"
        ) from exc
    for package in bundle.get("packages", []):
        tarball = artifacts / os.path.basename(package["file"])
        if (
            not tarball.is_file()
            or hashlib.sha256(tarball.read_bytes()).hexdigest() != package["sha256"]
        ):
            raise InstallFailed(
                f"{spec.plugin_name}: bundle file {package['file']} is missing or does not "
                "match its sha256"
            )
        for key in package["paths"]:
            entry = lock["packages"].get(key)
            if isinstance(entry, dict):
                entry["resolved"] = f"file:{tarball.resolve()}"
                entry["integrity"] = package["integrity"]
    for name in LOCK_FILES:
        (env.path / name).unlink(missing_ok=True)
    (env.path / "package-lock.json").write_text(json.dumps(lock, indent=2) + "\n", "utf-8")
    return [*npm_argv(env), "ci", "--offline"]
