"""The plugin's package.json, lock and ``.npmrc``: read (cached), checked, copied into the env.

Everything here reads files only, so the warm path (``env_identity``) can use it without a
process; :func:`copy_inputs` is the build step that writes the env's copies.
"""

from __future__ import annotations

import functools
import json
import os

# shutil (which imports bz2 and lzma) is imported by the functions that use it: ally imports
# every runtime at each start.
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Optional

from ally_core import EnvSpec, InstallFailed, ManifestError, strip_credentials

__all__ = [
    "LOCK_FILES",
    "check_inside",
    "copy_inputs",
    "file_hash",
    "filter_npmrc",
    "include_dev",
    "installed_packages",
    "local_specs",
    "lock_entries",
    "package_name",
    "read_package_json",
    "registry_identity",
    "run_scripts",
]

#: Lock files honoured beside the dependency file, in npm's order of precedence.
LOCK_FILES = ("npm-shrinkwrap.json", "package-lock.json")
_DEP_FIELDS = ("dependencies", "devDependencies", "optionalDependencies")


# ---------------------------------------------------------------------------------------------
# manifest options


def _flag(spec: EnvSpec, key: str, default: bool) -> bool:
    value = spec.dependency_options.get(key, default)
    if not isinstance(value, bool):
        raise ManifestError(
            spec.plugin_name, "plugin.json", [f"$.dependencies.{key}: expected a boolean"]
        )
    return value


def include_dev(spec: EnvSpec) -> bool:
    """``"dependencies": {"dev": false}`` leaves devDependencies out (default: installed)."""
    return _flag(spec, "dev", True)


def run_scripts(spec: EnvSpec) -> bool:
    """``"dependencies": {"scripts": false}`` installs with ``--ignore-scripts``."""
    return _flag(spec, "scripts", True)


# ---------------------------------------------------------------------------------------------
# cached file reads (warm path: no process)


def _file_signature(path: Path) -> Optional[tuple[int, ...]]:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_size, st.st_mtime_ns, st.st_ino, st.st_ctime_ns)


@functools.lru_cache(maxsize=1024)
def _sha256_cached(path: str, signature: tuple[int, ...]) -> str:
    import hashlib

    with open(path, "rb") as fh:
        return hashlib.sha256(fh.read()).hexdigest()


def file_hash(path: Path) -> Optional[str]:
    """sha256 of ``path`` (cached while its stat signature is unchanged), ``None`` if absent."""
    signature = _file_signature(path)
    if signature is None:
        return None
    try:
        return _sha256_cached(str(path), signature)
    except OSError:
        return None


@functools.lru_cache(maxsize=1024)
def _read_json_cached(path: str, signature: tuple[int, ...]) -> Any:
    with open(path, encoding="utf-8") as fh:
        return json.load(fh)


def read_package_json(path: Path) -> dict[str, Any]:
    """The parsed ``package.json`` (cached while the file is unchanged); raises InstallFailed."""
    signature = _file_signature(path)
    try:
        if signature is None:
            raise OSError(f"cannot read {path}")
        data = _read_json_cached(str(path), signature)
    except (OSError, ValueError) as exc:
        raise InstallFailed(f"{path.name}: not readable JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise InstallFailed(f"{path.name}: expected a JSON object")
    return data


def _is_local_spec(value: Any) -> bool:
    return isinstance(value, str) and value.startswith(("file:", "link:", "./", "../", "/", "~/"))


def local_specs(data: Mapping[str, Any]) -> dict[tuple[str, str], str]:
    """``(field, name) -> spec`` of the dependencies that point at files of the plugin."""
    out = {}
    for field in _DEP_FIELDS:
        deps = data.get(field)
        if isinstance(deps, dict):
            out.update({(field, k): v for k, v in deps.items() if _is_local_spec(v)})
    return out


def lock_files(spec: EnvSpec) -> list[Path]:
    """The lock files beside the plugin's package.json, in npm's order of precedence."""
    assert spec.dependency_file is not None
    folder = spec.dependency_file.parent
    return [folder / name for name in LOCK_FILES if (folder / name).is_file()]


def registry_identity() -> dict[str, str]:
    """npm settings from the environment that change what gets installed (credentials dropped)."""
    out = {}
    for key, value in os.environ.items():
        low = key.lower()
        if low.startswith("npm_config_") and (
            low.endswith("registry") or low in {"npm_config_userconfig", "npm_config_globalconfig"}
        ):
            out[low] = str(strip_credentials(value))
    return dict(sorted(out.items()))


# ---------------------------------------------------------------------------------------------
# the env's copies


def _env_package_json(spec: EnvSpec) -> tuple[dict[str, Any], bool]:
    """The package.json written into the env, and whether it names local directories.

    The plugin's own lifecycle scripts are dropped: the env is not the plugin's source tree,
    so ``prepare``/``postinstall`` of the plugin would run against files that are not there.
    ``file:`` dependencies are made absolute and must stay inside the plugin directory.
    """
    assert spec.dependency_file is not None
    try:
        data = dict(read_package_json(spec.dependency_file))
    except InstallFailed as exc:
        raise InstallFailed(f"{spec.plugin_name}: {exc}") from exc
    if "workspaces" in data:
        raise InstallFailed(
            f"{spec.plugin_name}: {spec.dependency_file.name}: npm workspaces are not supported "
            "in a plugin's package.json"
        )
    data.pop("scripts", None)
    has_dirs = False
    root = os.path.realpath(spec.dependency_file.parent)
    plugin_root = os.path.realpath(spec.plugin_dir)
    for (field, name), value in local_specs(data).items():
        if value.startswith("link:"):
            raise InstallFailed(
                f"{spec.plugin_name}: {field}.{name}: 'link:' dependencies are not supported "
                "(use 'file:')"
            )
        rel = value[len("file:") :] if value.startswith("file:") else value
        target = os.path.realpath(os.path.join(root, os.path.expanduser(rel)))
        if os.path.commonpath([plugin_root, target]) != plugin_root:
            raise InstallFailed(
                f"{spec.plugin_name}: {field}.{name}: {value!r} is outside the plugin directory"
            )
        if not os.path.exists(target):
            raise InstallFailed(f"{spec.plugin_name}: {field}.{name}: {value!r} does not exist")
        has_dirs = has_dirs or os.path.isdir(target)
        data[field] = {**data[field], name: f"file:{target}"}
    return data, has_dirs


#: ``.npmrc`` settings a plugin may make for its env: where packages come from, credentials,
#: TLS, peer-dependency handling. Anything else (``prefix``, ``global``, ``cache``,
#: ``script-shell``, ``node-options``, …) could reach outside the env and is dropped.
_NPMRC_KEYS = re.compile(
    r"^(?:registry|@[^:]+:registry|//.*|strict-ssl|ca|cafile|always-auth|legacy-peer-deps|"
    r"strict-peer-deps|engine-strict|fetch-retries|fetch-timeout|proxy|https-proxy|noproxy)$"
)


def filter_npmrc(text: str) -> tuple[str, list[str]]:
    """The lines of a plugin's ``.npmrc`` that are kept, and the keys that are dropped."""
    kept, dropped = [], []
    for line in text.splitlines():
        stripped = line.strip()
        if not stripped or stripped.startswith((";", "#")):
            continue
        key = stripped.partition("=")[0].strip()
        if _NPMRC_KEYS.match(key):
            kept.append(stripped)
        else:
            dropped.append(key)
    return "".join(f"{line}\n" for line in kept), dropped


def check_inside(spec: EnvSpec, path: Path) -> None:
    """Refuse ``path`` (a file the install reads beside package.json) when it is a symlink
    leading out of the plugin directory: the env would depend on a file that is not the
    plugin's (a lock, an ``.npmrc`` with credentials)."""
    if not os.path.islink(path):
        return
    root = os.path.realpath(spec.plugin_dir)
    target = os.path.realpath(path)
    if os.path.commonpath([root, target]) != root:
        rel = os.path.relpath(path, spec.plugin_dir)
        raise InstallFailed(
            f"{spec.plugin_name}: {rel} is a symlink to {target}, outside the plugin "
            "directory; copy the file into the plugin"
        )


def copy_inputs(spec: EnvSpec) -> tuple[Optional[Path], bool]:
    """Write package.json, the lock and .npmrc into the env; return the lock and dirs flag."""
    import shutil

    assert spec.dependency_file is not None
    folder = spec.dependency_file.parent
    for path in (spec.dependency_file, folder / ".npmrc", *(folder / n for n in LOCK_FILES)):
        check_inside(spec, path)
    data, has_dirs = _env_package_json(spec)
    env_dir = spec.env_dir
    (env_dir / "package.json").write_text(json.dumps(data, indent=2) + "\n", "utf-8")
    npmrc = spec.dependency_file.parent / ".npmrc"
    if npmrc.is_file():
        kept, dropped = filter_npmrc(npmrc.read_text("utf-8", "replace"))
        (env_dir / ".npmrc").write_text(kept, "utf-8")
        if dropped:
            spec.progress("install", f".npmrc: ignored {', '.join(dropped)}")
    locks = lock_files(spec)
    if not locks or spec.options.upgrade:
        return None, has_dirs
    if local_specs(data):
        # Its relative paths would not match the absolute ones above: npm resolves afresh.
        spec.progress("install", f"{locks[0].name} ignored: the plugin has file: dependencies")
        return None, has_dirs
    lock = env_dir / locks[0].name
    shutil.copyfile(locks[0], lock)
    return lock, has_dirs


# ---------------------------------------------------------------------------------------------
# what got installed


def lock_entries(env_dir: Path) -> Mapping[str, Any]:
    """The ``packages`` of what npm installed (its hidden lock), else of the env's lock."""
    for path in (
        env_dir / "node_modules" / ".package-lock.json",
        *(env_dir / name for name in LOCK_FILES),
    ):
        try:
            data = json.loads(path.read_text("utf-8"))
        except (OSError, ValueError):
            continue
        packages = data.get("packages") if isinstance(data, dict) else None
        if isinstance(packages, dict):
            return packages
    return {}


def package_name(key: str, entry: Mapping[str, Any]) -> str:
    """The package name of a lock entry (``key`` is its ``node_modules/...`` path)."""
    name = entry.get("name")
    return name if isinstance(name, str) else key.rpartition("node_modules/")[2]


def installed_packages(env_dir: Path) -> dict[str, str]:
    """Name -> version of the installed packages (top-level ones win over nested copies)."""
    out: dict[str, str] = {}
    entries = lock_entries(env_dir)
    for key in sorted(entries, key=lambda k: (k.count("node_modules/"), k)):
        entry = entries[key]
        if not key or not isinstance(entry, dict) or entry.get("link"):
            continue
        version = entry.get("version")
        if isinstance(version, str) and (env_dir / key).is_dir():
            out.setdefault(package_name(key, entry), version)
    return dict(sorted(out.items()))
