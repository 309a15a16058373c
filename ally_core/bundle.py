"""Offline bundles: one archive with a plugin, its dependency artifacts and a lock.

``ally bundle NAME`` writes ``NAME-VERSION.ally.tar.gz``::

    bundle.json                 format, plugin, runtime, interpreter, platform, lock, file hashes
    plugin/                     the plugin's source (symlinks leaving it are dropped)
    plugin/.ally-bundle/        the runtime's artifacts (wheels, npm tarballs, gems) + its lock

``ally install ARCHIVE`` unpacks the plugin into the first plugins dir and builds its env from
``plugin/.ally-bundle`` alone (``EnvOptions.artifacts_dir``): no index, no network, no cache
needed. The artifacts stay with the plugin so later repairs work offline too.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import platform
import secrets
import shutil
import sys
import tarfile
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

from .errors import AllyError, PluginNotFound
from .manifest import load_manifest
from .paths import check_plugin_name
from .store import now_iso

if TYPE_CHECKING:
    from .loader import Host, ProgressCallback

__all__ = ["ARTIFACTS_DIR", "BUNDLE_FORMAT", "install_bundle", "make_bundle"]

BUNDLE_FORMAT = 1
#: Directory inside a plugin holding the artifacts of the bundle it came from.
ARTIFACTS_DIR = ".ally-bundle"
_SKIP = {".git", "__pycache__", "node_modules", ".venv", "venv", ".mypy_cache", ".pytest_cache"}


class BundleError(AllyError):
    """A bundle cannot be written or is not a valid ally bundle."""


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _copy_plugin(src: Path, dest: Path) -> None:
    """Copy the plugin source; symlinks are kept only if they stay inside the plugin."""
    src_real = os.path.realpath(src)

    def ignore(directory: str, names: list[str]) -> set[str]:
        skipped = {n for n in names if n in _SKIP or n == ARTIFACTS_DIR}
        for name in names:
            path = os.path.join(directory, name)
            if os.path.islink(path):
                target = os.path.realpath(path)
                if os.path.commonpath([src_real, target]) != src_real:
                    skipped.add(name)
        return skipped

    shutil.copytree(src, dest, symlinks=True, ignore=ignore)


def make_bundle(
    host: Host,
    name: str,
    output: Optional[Path] = None,
    progress: Optional[ProgressCallback] = None,
) -> Path:
    """Write the offline bundle of plugin ``name``; return the archive's path."""
    import attrs

    outcome = host.ensure(name, progress=progress)
    if not outcome.ready or outcome.manifest is None:
        raise PluginNotFound(f"{name}: cannot bundle a blocked plugin: {outcome.reason}")
    manifest = outcome.manifest
    version = manifest.version or "0"
    output = output or Path.cwd() / f"{manifest.name}-{version}.ally.tar.gz"
    with tempfile.TemporaryDirectory(prefix="ally-bundle-") as tmp:
        stage = Path(tmp)
        _copy_plugin(outcome.plugin_dir, stage / "plugin")
        artifacts = stage / "plugin" / ARTIFACTS_DIR
        artifacts.mkdir()
        lock: Any = None
        if outcome.env is not None and manifest.dependencies is not None:
            spec = host.spec_for(manifest, outcome.plugin_dir, env_dir=outcome.env.path)
            if progress is not None:
                progress_spec = attrs.evolve(spec, reporter=progress)
                progress_spec.progress("bundle", "Collecting dependency artifacts")
            lock = host.hook.bundle_artifacts(spec=spec, env=outcome.env, dest=artifacts)
            if lock is None:
                raise BundleError(
                    f"{name}: runtime {manifest.runtime!r} cannot make bundles "
                    "(it does not implement bundle_artifacts)"
                )
        files = {
            str(p.relative_to(stage)): _sha256(p)
            for p in sorted(stage.rglob("*"))
            if p.is_file() and not p.is_symlink()
        }
        info = {
            "format": BUNDLE_FORMAT,
            "plugin": manifest.name,
            "version": manifest.version,
            "runtime": manifest.runtime,
            "interpreter": {
                "kind": outcome.env.interpreter.kind,
                "version": outcome.env.interpreter.version,
            }
            if outcome.env
            else None,
            "platform": {"system": sys.platform, "machine": platform.machine()},
            "created_at": now_iso(),
            "lock": lock,
            "files": files,
        }
        (stage / "bundle.json").write_text(json.dumps(info, indent=2, sort_keys=True), "utf-8")
        output.parent.mkdir(parents=True, exist_ok=True)
        partial = output.with_name(f".{output.name}.{secrets.token_hex(4)}.part")
        try:
            with tarfile.open(partial, "w:gz") as tar:
                tar.add(stage / "bundle.json", arcname="bundle.json")
                tar.add(stage / "plugin", arcname="plugin")
            os.replace(partial, output)
        finally:
            with contextlib.suppress(FileNotFoundError):
                partial.unlink()
    return output


def _safe_members(tar: tarfile.TarFile, archive: Path) -> list[tarfile.TarInfo]:
    members = []
    for member in tar.getmembers():
        name = member.name
        parts = Path(name).parts
        if (
            name.startswith(("/", "\\"))
            or ".." in parts
            or (parts and parts[0] not in {"bundle.json", "plugin"})
        ):
            raise BundleError(f"{archive}: unsafe path in bundle: {name!r}")
        if member.issym():
            target = os.path.normpath(os.path.join(os.path.dirname(name), member.linkname))
            if os.path.isabs(member.linkname) or not target.startswith("plugin"):
                raise BundleError(f"{archive}: symlink leaving the plugin: {name!r}")
        elif not (member.isfile() or member.isdir()):
            raise BundleError(f"{archive}: unsupported member type in bundle: {name!r}")
        members.append(member)
    return members


def install_bundle(host: Host, archive: Path) -> str:
    """Unpack ``archive`` into the first plugins dir (replacing an older copy); return the name.

    Every file is checked against the hashes in ``bundle.json``. The env is built by the next
    load, from the bundle's artifacts only.
    """
    if not archive.is_file():
        raise BundleError(f"{archive}: no such bundle")
    plugins_root = host.paths.plugin_dirs[0]
    plugins_root.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".ally-unpack-", dir=plugins_root))
    try:
        try:
            with tarfile.open(archive, "r:*") as tar:
                members = _safe_members(tar, archive)
                # Members were checked above; the "data" filter (where available) adds
                # the standard library's own checks on top.
                if hasattr(tarfile, "data_filter"):
                    tar.extractall(staging, members=members, filter="data")
                else:  # pragma: no cover - Python without PEP 706 backports
                    tar.extractall(staging, members=members)  # noqa: S202 - checked above
        except (tarfile.TarError, OSError, EOFError) as exc:
            raise BundleError(f"{archive}: not a readable bundle: {exc}") from exc
        try:
            info = json.loads((staging / "bundle.json").read_text("utf-8"))
        except (OSError, ValueError) as exc:
            raise BundleError(f"{archive}: bundle.json missing or invalid: {exc}") from exc
        if not isinstance(info, dict) or info.get("format") != BUNDLE_FORMAT:
            raise BundleError(
                f"{archive}: unsupported bundle format {info.get('format')!r}"
                if isinstance(info, dict)
                else f"{archive}: invalid bundle.json"
            )
        for rel, digest in (info.get("files") or {}).items():
            path = staging / rel
            if not path.is_file() or _sha256(path) != digest:
                raise BundleError(f"{archive}: {rel} does not match its hash in bundle.json")
        manifest = load_manifest(staging / "plugin")
        name = check_plugin_name(manifest.name)
        target = plugins_root / name
        old = plugins_root / f".{name}.old-{secrets.token_hex(4)}"
        if target.exists() or target.is_symlink():
            target.rename(old)
        (staging / "plugin").rename(target)
        shutil.rmtree(old, ignore_errors=True)
        return name
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def artifacts_dir_of(plugin_dir: Path) -> Optional[Path]:
    path = plugin_dir / ARTIFACTS_DIR
    return path if os.path.isdir(path) else None
