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
import gzip
import hashlib
import json
import os
import platform
import secrets
import shutil
import stat
import sys
import tarfile
import tempfile
import time
import zlib
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

import attrs

from .errors import AllyError, BundleError, PluginNotFound
from .manifest import load_manifest
from .paths import ARTIFACTS_DIR, BACKUP_DIR, artifacts_dir_of, check_plugin_name
from .store import now_iso

if TYPE_CHECKING:
    from .host import Host, PluginOutcome, ProgressCallback

__all__ = [
    "ARTIFACTS_DIR",
    "BACKUP_DIR",
    "BUNDLE_FORMAT",
    "BundleError",
    "InstalledBundle",
    "artifacts_dir_of",
    "install_bundle",
    "make_bundle",
]

BUNDLE_FORMAT = 1
_SKIP = {".git", "__pycache__", "node_modules", ".venv", "venv", ".mypy_cache", ".pytest_cache"}


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


_SPECIAL = {
    stat.S_IFIFO: "a FIFO (named pipe)",
    stat.S_IFCHR: "a character device",
    stat.S_IFBLK: "a block device",
    stat.S_IFSOCK: "a socket",
}


def _copy_plugin(src: Path, dest: Path, plugin: str) -> None:
    """Copy the plugin source; symlinks are kept only if they stay inside the plugin.

    Anything but files, directories and symlinks (FIFOs, devices, sockets) is refused: copying
    one would block, or read a device without end.
    """
    src_real = os.path.realpath(src)

    def ignore(directory: str, names: list[str]) -> set[str]:
        skipped = {n for n in names if n in _SKIP or n == ARTIFACTS_DIR}
        for name in names:
            if name in skipped:
                continue
            path = os.path.join(directory, name)
            mode = os.lstat(path).st_mode
            if stat.S_ISLNK(mode):
                target = os.path.realpath(path)
                if os.path.commonpath([src_real, target]) != src_real:
                    skipped.add(name)
            elif not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):
                what = _SPECIAL.get(stat.S_IFMT(mode), "not a regular file")
                raise BundleError(
                    f"{plugin}: cannot bundle {path}: it is {what}; a bundle holds only "
                    "files, directories and symlinks"
                )
        return skipped

    shutil.copytree(src, dest, symlinks=True, ignore=ignore)


def make_bundle(
    host: Host,
    name: str,
    output: Optional[Path] = None,
    progress: Optional[ProgressCallback] = None,
) -> Path:
    """Write the offline bundle of plugin ``name``; return the archive's path."""
    outcome = host.ensure(name, progress=progress)
    if not outcome.ready or outcome.manifest is None:
        raise PluginNotFound(f"{name}: cannot bundle a blocked plugin: {outcome.reason}")
    try:
        return _make(host, outcome, output, progress)
    except OSError as exc:
        # shutil.Error (copying the source) holds one (src, dst, why) per file: the first.
        first = exc.args[0][0] if isinstance(exc, shutil.Error) and exc.args[0] else None
        detail = f"{first[2]} ({first[0]})" if first else f"{exc.strerror or exc}"
        if not first and exc.filename:
            detail += f" ({exc.filename})"
        raise BundleError(f"{name}: cannot write the bundle: {detail}") from None


def _make(
    host: Host, outcome: PluginOutcome, output: Optional[Path], progress: Optional[ProgressCallback]
) -> Path:
    manifest = outcome.manifest
    assert manifest is not None
    name = manifest.name
    version = manifest.version or "0"
    output = output or Path.cwd() / f"{manifest.name}-{version}.ally.tar.gz"
    with tempfile.TemporaryDirectory(prefix="ally-bundle-") as tmp:
        stage = Path(tmp)
        _copy_plugin(outcome.plugin_dir, stage / "plugin", manifest.name)
        # The copy keeps the plugin's modes: a plugin installed read-only is staged writable.
        (stage / "plugin").chmod((stage / "plugin").stat().st_mode | stat.S_IRWXU)
        artifacts = stage / "plugin" / ARTIFACTS_DIR
        artifacts.mkdir()
        lock: Any = None
        if outcome.env is not None and manifest.dependencies is not None:
            spec = host.spec_for(manifest, outcome.plugin_dir, env_dir=outcome.env.path)
            if progress is not None:
                progress_spec = attrs.evolve(spec, reporter=progress)
                progress_spec.progress("bundle", "Collecting dependency artifacts")
            lock = host.dispatch.bundle_artifacts(spec, outcome.env, artifacts)
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
        write_archive(stage, info, output)
    return output


def write_archive(stage: Path, info: dict[str, Any], output: Path) -> None:
    """Write ``stage/plugin`` and ``info`` (as ``bundle.json``) to the archive ``output``:
    beside it first, then renamed into place, so a reader never sees half an archive."""
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


#: Most members one bundle may hold (its headers are read before anything is unpacked).
MAX_MEMBERS = 100_000
#: Most bytes ``bundle.json`` may have.
MAX_INFO_BYTES = 64 << 20
#: Most symlinks followed while resolving one link target (as the kernel's ELOOP limit).
_MAX_HOPS = 40


def _member_kind(member: tarfile.TarInfo) -> str:
    if member.isdir():
        return "directory"
    if member.issym():
        return "symlink"
    if member.isfile():
        return "file"
    if member.islnk():
        return "hard link"
    if member.isfifo():
        return "FIFO"
    if member.ischr() or member.isblk():
        return "device"
    return "special file"


def _rel_parts(name: str) -> Optional[list[str]]:
    """The components of a member or ``files`` name, or None if it could leave the bundle."""
    if not name or name.startswith(("/", "\\")) or "\\" in name or "\0" in name:
        return None
    parts = [p for p in name.split("/") if p not in {"", "."}]
    if not parts or ".." in parts or ":" in parts[0]:
        return None
    return parts


def _resolve(
    parts: list[str], links: dict[str, str], budget: Optional[list[int]] = None
) -> Optional[list[str]]:
    """Where ``parts`` (inside the unpacked archive) leads once every symlink among ``links``
    (every link of the archive, wherever it stands in it) is followed; None if it leaves the
    archive's root, or follows more than 40 links in all (a loop), as the kernel's ELOOP."""
    budget = [_MAX_HOPS] if budget is None else budget
    done: list[str] = []
    for i, part in enumerate(parts):
        if part in {"", "."}:
            continue
        if part == "..":
            if not done:
                return None
            done.pop()
            continue
        done.append(part)
        target = links.get("/".join(done))
        if target is None:
            continue
        budget[0] -= 1
        if budget[0] < 0 or target.startswith(("/", "\\")) or "\\" in target:
            return None
        base = _resolve(done[:-1] + target.split("/"), links, budget)
        if base is None:
            return None
        return _resolve(base + parts[i + 1 :], links, budget)
    return done


def _check_members(
    tar: tarfile.TarFile, archive: Path, max_file: int, max_total: int
) -> tuple[list[tarfile.TarInfo], Optional[tarfile.TarInfo]]:
    """Every member, checked before anything is written; and the ``bundle.json`` member."""
    members: list[tarfile.TarInfo] = []
    seen: set[str] = set()
    links: dict[str, str] = {}
    total = 0
    info_member = None
    for member in tar:
        if len(members) >= MAX_MEMBERS:
            raise BundleError(f"{archive}: more than {MAX_MEMBERS} members in bundle")
        parts = _rel_parts(member.name)
        if parts is None or parts[0] not in {"bundle.json", "plugin"}:
            raise BundleError(f"{archive}: unsafe path in bundle: {member.name!r}")
        name = "/".join(parts)
        if name in seen:
            raise BundleError(f"{archive}: {name!r} appears twice in bundle")
        seen.add(name)
        kind = _member_kind(member)
        if kind not in {"file", "directory", "symlink"}:
            raise BundleError(f"{archive}: unsupported member type in bundle: {name!r} ({kind})")
        if parts[0] == "bundle.json" and (len(parts) > 1 or kind != "file"):
            raise BundleError(f"{archive}: unsafe path in bundle: {member.name!r}")
        if member.size > max_file:
            raise BundleError(
                f"{archive}: {name} unpacks to {member.size} bytes, more than the limit of "
                f"{max_file} (bundle_max_file)"
            )
        total += member.size
        if total > max_total:
            raise BundleError(
                f"{archive}: unpacks to more than {max_total} bytes (bundle_max_total)"
            )
        if kind == "symlink":
            links[name] = member.linkname
        if name == "bundle.json":
            info_member = member
        members.append(member)
    for member in members:
        name = "/".join(_rel_parts(member.name) or [])
        parent = name.split("/")[:-1]
        # No member is written through a symlink (a bundle ally makes never has one).
        if _resolve(parent, {k: v for k, v in links.items() if k != name}) != parent:
            raise BundleError(f"{archive}: {name!r} lies behind a symlink in bundle")
        if name in links:
            target = links[name]
            absolute = target.startswith(("/", "\\")) or "\\" in target or "\0" in target
            resolved = None if absolute else _resolve(parent + target.split("/"), links)
            if resolved is None or resolved[:1] != ["plugin"]:
                raise BundleError(f"{archive}: symlink leaving the plugin: {name!r}")
    return members, info_member


def _read_info(
    tar: tarfile.TarFile, archive: Path, member: Optional[tarfile.TarInfo]
) -> dict[str, Any]:
    """``bundle.json``, read from the archive and checked for shape before anything is written."""
    if member is None:
        raise BundleError(f"{archive}: bundle.json missing")
    if member.size > MAX_INFO_BYTES:
        raise BundleError(f"{archive}: bundle.json is larger than {MAX_INFO_BYTES} bytes")
    fh = tar.extractfile(member)
    try:
        info = json.loads(fh.read() if fh is not None else b"")
    except (ValueError, RecursionError) as exc:
        what = "nested too deeply" if isinstance(exc, RecursionError) else exc
        raise BundleError(f"{archive}: bundle.json is not valid JSON: {what}") from None
    if not isinstance(info, dict):
        raise BundleError(f"{archive}: bundle.json must hold a JSON object")
    if info.get("format") != BUNDLE_FORMAT:
        raise BundleError(f"{archive}: unsupported bundle format {info.get('format')!r}")
    problems = []
    if not isinstance(info.get("plugin"), str):
        problems.append("plugin: expected a string")
    files = info.get("files")
    if not isinstance(files, dict):
        problems.append("files: expected an object of path: sha256")
    else:
        for key, digest in files.items():
            if not (isinstance(digest, str) and len(digest) == 64 and _is_hex(digest)):
                problems.append(f"files[{key!r}]: expected a sha256 in hex")
                break
    lock = info.get("lock")
    if lock is not None and not isinstance(lock, dict):
        problems.append("lock: expected an object or null")
    if problems:
        raise BundleError(f"{archive}: bundle.json: " + "; ".join(problems))
    return info


def _is_hex(text: str) -> bool:
    return all(c in "0123456789abcdef" for c in text)


def _lock_files(lock: Any) -> list[str]:
    """The file names a runtime's lock points at (``lockfile``, each package's ``file``)."""
    names: list[Any] = []
    if isinstance(lock, dict):
        if "lockfile" in lock:
            names.append(lock["lockfile"])
        packages = lock.get("packages")
        if isinstance(packages, list):
            names += [p["file"] for p in packages if isinstance(p, dict) and "file" in p]
    return names


def _check_listing(archive: Path, info: dict[str, Any], members: list[tarfile.TarInfo]) -> None:
    """Each regular file is listed in ``files`` and each entry names a file of the archive;
    each file the runtime's lock names lies in the bundle's artifacts."""
    regular = {"/".join(_rel_parts(m.name) or []) for m in members if m.isfile()}
    regular.discard("bundle.json")
    listed: set[str] = set()
    for key in info["files"]:
        parts = _rel_parts(key) if isinstance(key, str) else None
        if parts is None or parts[0] != "plugin" or "/".join(parts) not in regular:
            raise BundleError(
                f"{archive}: bundle.json lists {key!r}, which is not a file in the bundle"
            )
        listed.add("/".join(parts))
    unlisted = sorted(regular - listed)
    if unlisted:
        more = f" (and {len(unlisted) - 1} more)" if len(unlisted) > 1 else ""
        raise BundleError(f"{archive}: {unlisted[0]!r} is not listed in bundle.json{more}: refused")
    for name in _lock_files(info.get("lock")):
        if not (
            isinstance(name, str)
            and _rel_parts(name) == [name]
            and f"plugin/{ARTIFACTS_DIR}/{name}" in listed
        ):
            raise BundleError(
                f"{archive}: the lock in bundle.json names {name!r}, which is not a file "
                f"of the bundle's {ARTIFACTS_DIR}"
            )


@attrs.frozen
class InstalledBundle:
    """What :func:`install_bundle` did."""

    name: str
    plugin_dir: Path
    #: Where the directory that was replaced (``force=True``) was moved to, if there was one.
    backup: Optional[Path] = None


def install_bundle(host: Host, archive: Path, *, force: bool = False) -> InstalledBundle:
    """Unpack ``archive`` into the first plugins dir as a new plugin directory.

    An existing directory of that name is never overwritten: without ``force`` the install is
    refused, with ``force`` the old directory is moved aside (``InstalledBundle.backup``).
    Every member is checked before anything is written (paths, types, symlinks, sizes,
    ``bundle.json``'s shape and listing), then every file against its hash. The env is built
    by the next load, from the bundle's artifacts only.
    """
    if not archive.is_file():
        raise BundleError(f"{archive}: no such bundle")
    try:
        return _install(host, archive, force)
    except OSError as exc:
        where = f" ({exc.filename})" if exc.filename else ""
        raise BundleError(f"{archive}: cannot install: {exc.strerror or exc}{where}") from exc


def _install(host: Host, archive: Path, force: bool) -> InstalledBundle:
    settings = host.settings
    max_file = int(settings.values["bundle_max_file"])
    max_total = int(settings.values["bundle_max_total"])
    try:
        with tarfile.open(archive, "r:*") as tar:
            members, info_member = _check_members(tar, archive, max_file, max_total)
            info = _read_info(tar, archive, info_member)
            _check_listing(archive, info, members)
            plugins_root = host.paths.plugin_dirs[0]
            plugins_root.mkdir(parents=True, exist_ok=True)
            staging = Path(tempfile.mkdtemp(prefix=".ally-unpack-", dir=plugins_root))
            try:
                return _unpack(host, archive, tar, members, info, staging, force)
            finally:
                shutil.rmtree(staging, ignore_errors=True)
    except (tarfile.TarError, EOFError, zlib.error, gzip.BadGzipFile) as exc:
        raise BundleError(f"{archive}: not a readable bundle: {exc}") from exc


def _unpack(
    host: Host,
    archive: Path,
    tar: tarfile.TarFile,
    members: list[tarfile.TarInfo],
    info: dict[str, Any],
    staging: Path,
    force: bool,
) -> InstalledBundle:
    # Members were checked above; the "data" filter (where available) adds the standard
    # library's own checks on top.
    if hasattr(tarfile, "data_filter"):
        tar.extractall(staging, members=members, filter="data")
    else:  # pragma: no cover - Python without PEP 706 backports
        tar.extractall(staging, members=members)  # noqa: S202 - checked above
    for rel, digest in info["files"].items():
        path = staging / rel
        if path.is_symlink() or not path.is_file() or _sha256(path) != digest:
            raise BundleError(f"{archive}: {rel} does not match its hash in bundle.json")
    try:
        name = check_plugin_name(_bundled_name(staging / "plugin"))
    except AllyError:
        raise
    except Exception as exc:
        raise BundleError(
            f"{archive}: plugin.json cannot be read: {exc.__class__.__name__}"
        ) from None
    if info["plugin"] != name:
        raise BundleError(
            f"{archive}: bundle.json names plugin {info['plugin']!r}, its plugin.json {name!r}"
        )
    plugins_root = host.paths.plugin_dirs[0]
    target = plugins_root / name
    for source in host.discover():
        declared = source.name if source.manifest else getattr(source.error, "plugin", None)
        if declared == name and source.plugin_dir != target:
            raise BundleError(
                f"{archive}: a plugin named {name!r} is already installed at "
                f"{source.plugin_dir}; remove it first"
            )
    backup = None
    if target.exists() or target.is_symlink():
        if not force:
            raise BundleError(
                f"{target} already exists; refusing to replace it (use --force to replace "
                "it and keep the old directory as a backup)"
            )
        backups = plugins_root / BACKUP_DIR
        backups.mkdir(exist_ok=True)
        stamp = time.strftime("%Y%m%dT%H%M%S")
        backup = backups / f"{name}.{stamp}.{secrets.token_hex(2)}"
        target.rename(backup)
    try:
        (staging / "plugin").rename(target)
    except BaseException:
        if backup is not None and not (target.exists() or target.is_symlink()):
            backup.rename(target)
        raise
    return InstalledBundle(name, target, backup)


def _bundled_name(plugin_dir: Path) -> str:
    """The name of an unpacked plugin: its plugin.json's, else its Claude-style manifest's."""
    if not (plugin_dir / "plugin.json").exists():
        from .mcp_plugins.manifest import is_claude_plugin, load_claude_plugin

        if is_claude_plugin(plugin_dir):
            return load_claude_plugin(plugin_dir).name
    return load_manifest(plugin_dir).name
