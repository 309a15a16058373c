"""The env store: content-addressed environments, per-plugin pointers, locks and markers.

Layout under ``envs_dir`` (``<home>/plugin-envs``)::

    .store/<fp16>-<token>/      one built environment; never moved after it is built
        .installed              the marker (JSON), written last with os.replace
    .locks/<fp16>.lock          build lock of one fingerprint (beside the envs, not inside)
    .state/<name>.failed.json   the last failed install of a plugin
    .state/<name>.previous      the env a plugin used before its last update (a backup)
    .state/<name>.origin        the plugin directory whose env <name> points at
    .state/warm-index.<py>.bin  what warm loads derived from files (see warm_index.py)
    <name> -> .store/<...>      per-plugin pointer (a symlink, swapped atomically)

An env is *published* by writing its marker and then pointing ``<name>`` at it with one
``os.replace`` of a symlink, so a reader sees the old env or the new one, never a half one.
Because envs are built where they stay, nothing inside them (shebangs, ``pyvenv.cfg``,
activate scripts) is ever relocated. ``<home>/plugin-envs/<name>/bin/python3`` keeps working
as the original design promised. Plugins whose fingerprints are equal point at the same env.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import json
import os
import time
import zlib
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, Optional

import attrs

from .envs import EnvInfo, Interpreter
from .errors import EnvStoreError
from .paths import AllyPaths
from .warm_index import WarmIndex

__all__ = ["MARKER", "EnvStore", "Marker"]

MARKER = ".installed"
#: Seconds before a temporary pointer link counts as a leftover (another build may be
#: publishing through it right now). A link whose owner process is known to be gone is a
#: leftover at once (:func:`_stray_link`).
STRAY_LINK_GRACE = 60.0
MARKER_FORMAT = 1


@attrs.frozen
class Marker:
    """The content of ``.installed``: what was built, from what, and when."""

    fingerprint: str
    request_key: str
    runtime: str
    env: EnvInfo
    packages: Mapping[str, str] = attrs.field(factory=dict)
    created_at: str = ""
    plugin: str = ""
    format: int = MARKER_FORMAT
    #: What the request key was computed from (``Host.request_inputs``): a later rebuild
    #: names what changed. Empty in markers of older versions of ally.
    inputs: Mapping[str, Any] = attrs.field(factory=dict)


@functools.cache
def _converter() -> Any:
    """The cattrs converter that writes markers (made on the first write: reading uses
    :func:`_marker_from_json`, and cattrs costs every ``ally`` run its import)."""
    import cattrs

    conv = cattrs.Converter()
    conv.register_unstructure_hook(Path, str)
    conv.register_structure_hook(Path, lambda v, _t: Path(v))
    return conv


def _token(nbytes: int) -> str:
    """Random hex for temporary names (:func:`secrets.token_hex` without importing it)."""
    return os.urandom(nbytes).hex()


@functools.lru_cache(maxsize=64)
def _interpreter(
    path: str, version: str, kind: str, realpath: str, signature: tuple[int, ...]
) -> Interpreter:
    # Envs share a few base interpreters: one (immutable) object each.
    return Interpreter(path, version, kind, realpath, signature)


def _str_map(value: Any) -> dict[str, str]:
    if type(value) is not dict:
        raise TypeError("expected an object of strings")
    # str.join type-checks every item in C: a non-string key or value raises TypeError.
    "".join(value)
    "".join(value.values())
    return dict(value)  # never shared with the caller's data (the warm index keeps it)


def _marker_from_json(data: Any, env_dir: Optional[Path] = None) -> Marker:
    """Structure a marker by hand: it is read on every warm load, and this is ~5x faster
    than the generic converter (which still writes markers). Raises on any bad shape.

    ``env_dir``, the marker's directory, is reused as ``env.path`` when it is the same path.
    """
    env, interp = data["env"], data["env"]["interpreter"]
    interpreter = _interpreter(
        str(interp["path"]),
        str(interp["version"]),
        str(interp.get("kind", "")),
        str(interp.get("realpath", "")),
        tuple(map(int, interp.get("signature", ()))),
    )
    data_field = env.get("data", {})
    if not isinstance(data_field, dict):
        raise TypeError("env.data: expected an object")
    return Marker(
        fingerprint=str(data["fingerprint"]),
        request_key=str(data["request_key"]),
        runtime=str(data["runtime"]),
        env=EnvInfo(
            path=env_dir
            if env_dir is not None and str(env_dir) == env["path"]
            else Path(env["path"]),
            interpreter=interpreter,
            bin_dirs=tuple(map(str, env.get("bin_dirs", ()))),
            commands=_str_map(env.get("commands", {})),
            env_vars=_str_map(env.get("env_vars", {})),
            data=dict(data_field),
        ),
        packages=_str_map(data.get("packages", {})),
        created_at=str(data.get("created_at", "")),
        plugin=str(data.get("plugin", "")),
        format=int(data["format"]),
        inputs=dict(inputs) if type(inputs := data.get("inputs")) is dict else {},
    )


def now_iso() -> str:
    import datetime as _dt

    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def write_atomic(path: Path, data: bytes, mode: int = 0o644) -> None:
    """Write ``data`` to ``path`` so that readers see the old or the new content, never part."""
    tmp = path.with_name(f".{path.name}.{_token(4)}.tmp")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise


@contextlib.contextmanager
def store_errors(what: str) -> Iterator[None]:
    """Turn OS errors of the store (permissions, disk full) into one clear line."""
    try:
        yield
    except OSError as exc:
        reason = {
            errno.ENOSPC: "no space left on device",
            errno.EACCES: "permission denied",
            errno.EROFS: "read-only file system",
            errno.EDQUOT: "disk quota exceeded",
            errno.EPERM: "operation not permitted",
        }.get(exc.errno or 0, exc.strerror)
        where = f" ({exc.filename})" if exc.filename else ""
        raise EnvStoreError(f"{what}: {reason or exc}{where}") from exc


class EnvStore:
    """Operations on one ``envs_dir``. Cheap to create; holds no open resources."""

    def __init__(self, paths: AllyPaths, index: Optional[WarmIndex] = None) -> None:
        self.paths = paths
        #: Where markers parsed by an earlier process are found (see :mod:`.warm_index`).
        self.index = index
        self.root = paths.envs_dir
        self.store_dir = paths.store_dir
        # Markers never change once written (a rebuild makes a new env dir), so a parsed
        # marker is reused while the file's identity is the same.
        self._markers: dict[str, tuple[tuple[int, ...], Marker, Path]] = {}
        self._store_dir_str = str(self.store_dir)
        self._root_str = str(self.root)

    # -- reading (the warm path: no locks, no processes) --------------------------------------

    def pointer(self, name: str) -> Path:
        return self.root / name

    def current(self, name: str) -> Optional[tuple[Path, Marker]]:
        """The env ``name`` points at and its marker, if both exist and are valid."""
        try:
            # f-strings, not os.path.join: every warm load comes here for every plugin, and
            # plugin names are single entry names (check_plugin_name).
            target = os.readlink(f"{self._root_str}{os.sep}{name}")
        except OSError:
            return None
        # A pointer is always ".store/<dir>"; anything else (absolute, "..", nested) is
        # never followed.
        head, sep, tail = target.partition(os.sep)
        if (
            head != self.store_dir.name
            or not sep
            or not tail
            or os.sep in tail
            or tail in {".", ".."}
        ):
            return None
        return self._marker_at(f"{self._store_dir_str}{os.sep}{tail}{os.sep}{MARKER}", tail)

    def read_marker(self, env_dir: Path) -> Optional[Marker]:
        found = self._marker_at(os.path.join(env_dir, MARKER), env_dir)
        return found[1] if found is not None else None

    def _marker_at(self, path: str, env_dir: Path | str) -> Optional[tuple[Path, Marker]]:
        """The marker file ``path`` of ``env_dir`` (a Path, or a name in the store), parsed.

        Warm loads come here for every plugin: it costs one ``stat`` when the marker was
        parsed before (by this process, or by an earlier one: the warm index).
        """
        try:
            st = os.stat(path)
            signature = (st.st_size, st.st_mtime_ns, st.st_ino)
            cached = self._markers.get(path)
            if cached is not None and cached[0] == signature:
                return cached[2], cached[1]
            env_path = env_dir if isinstance(env_dir, Path) else self.store_dir / env_dir
            marker = None
            data = self.index.get("markers", path, list(signature)) if self.index else None
            if data is not None:
                # Written by ally from this very file; a malformed copy is a miss.
                with contextlib.suppress(TypeError, KeyError, ValueError, AttributeError):
                    if data["format"] == MARKER_FORMAT:
                        marker = _marker_from_json(data, env_path)
            if marker is None:
                with open(path, "rb") as fh:
                    data = json.loads(fh.read())
                if data.get("format") != MARKER_FORMAT:
                    return None
                marker = _marker_from_json(data, env_path)
                if self.index is not None:
                    self.index.put("markers", path, list(signature), data)
        except (
            OSError,
            ValueError,
            TypeError,
            KeyError,
            AttributeError,
        ):
            return None
        self._markers[path] = (signature, marker, env_path)
        return env_path, marker

    # -- building ------------------------------------------------------------------------------

    def lock(self, key: str, *, timeout: float = -1) -> Any:
        """A cross-process lock (filelock) for ``key``, kept in ``.locks`` beside the envs."""
        from filelock import FileLock

        with store_errors("cannot create the lock directory"):
            self.paths.locks_dir.mkdir(parents=True, exist_ok=True)
        return FileLock(str(self.paths.locks_dir / f"{key}.lock"), timeout=timeout)

    def new_env_dir(self, fingerprint: str) -> Path:
        """A fresh, not yet existing directory for an env of ``fingerprint``."""
        with store_errors("cannot create the env store"):
            self.store_dir.mkdir(parents=True, exist_ok=True)
        return self.store_dir / f"{fingerprint[:16]}-{_token(4)}"

    def find(self, fingerprint: str) -> Optional[tuple[Path, Marker]]:
        """The newest published env with exactly this fingerprint."""
        best: Optional[tuple[Path, Marker]] = None
        for env_dir in self.store_dir.glob(f"{fingerprint[:16]}-*"):
            marker = self.read_marker(env_dir)
            if (
                marker is not None
                and marker.fingerprint == fingerprint
                and (best is None or marker.created_at > best[1].created_at)
            ):
                best = (env_dir, marker)
        return best

    def find_all(self, fingerprint: str) -> list[tuple[Path, Marker]]:
        """Every published env with exactly this fingerprint."""
        found = []
        for env_dir in sorted(self.store_dir.glob(f"{fingerprint[:16]}-*")):
            marker = self.read_marker(env_dir)
            if marker is not None and marker.fingerprint == fingerprint:
                found.append((env_dir, marker))
        return found

    def backup(self, name: str) -> Optional[Path]:
        """The env ``name`` used before its last update or reinstall, if recorded."""
        link = self.paths.state_dir / f"{name}.previous"
        try:
            return (link.parent / os.readlink(link)).resolve()
        except OSError:
            return None

    def write_marker(self, env_dir: Path, marker: Marker) -> None:
        data = json.dumps(_converter().unstructure(marker), indent=2, sort_keys=True).encode()
        with store_errors(f"cannot write {env_dir / MARKER}"):
            write_atomic(env_dir / MARKER, data)

    def publish(self, name: str, env_dir: Path) -> None:
        """Point ``name`` at ``env_dir`` atomically; remember the previous env as backup."""
        pointer = self.pointer(name)
        with store_errors(f"cannot publish the env of {name!r}"):
            previous = self.current(name)
            if pointer.is_dir() and not pointer.is_symlink():
                # An env from before ally managed this home (a plain venv dir): keep it aside.
                pointer.rename(self.store_dir / f"legacy-{name}-{_token(4)}")
            link = _temp_link(self.root, name)
            os.symlink(os.path.relpath(env_dir, self.root), link)
            try:
                os.replace(link, pointer)
            except BaseException:
                with contextlib.suppress(OSError):
                    link.unlink()
                raise
            if previous is not None and previous[0] != env_dir:
                # Published already: a backup that cannot be recorded must not undo that.
                with contextlib.suppress(OSError):
                    self._set_backup(name, previous[0])

    def record_origin(self, name: str, origin: Path) -> None:
        """Remember the plugin directory ``name``'s env is published for: ``gc`` keeps the
        pointer while that directory still holds the plugin, even where it does not look."""
        if self.origin(name) == origin:
            return
        # A hint for gc only: a store whose state cannot be written still publishes.
        with contextlib.suppress(OSError):
            self.paths.state_dir.mkdir(parents=True, exist_ok=True)
            write_atomic(self.paths.state_dir / f"{name}.origin", str(origin).encode("utf-8"))

    def origin(self, name: str) -> Optional[Path]:
        """The plugin directory ``name``'s env was last published for, if recorded."""
        try:
            text = (self.paths.state_dir / f"{name}.origin").read_text("utf-8")
        except (OSError, ValueError):
            return None
        return Path(text) if os.path.isabs(text) else None

    def _set_backup(self, name: str, env_dir: Path) -> None:
        self.paths.state_dir.mkdir(parents=True, exist_ok=True)
        link = _temp_link(self.paths.state_dir, name)
        os.symlink(os.path.relpath(env_dir, self.paths.state_dir), link)
        os.replace(link, self.paths.state_dir / f"{name}.previous")

    def unpublish(self, name: str) -> bool:
        """Remove ``name``'s pointer (never an env another plugin may share)."""
        pointer = self.pointer(name)
        removed = False
        with store_errors(f"cannot remove the env of {name!r}"):
            if pointer.is_symlink():
                pointer.unlink()
                removed = True
            for suffix in (".previous", ".origin"):
                with contextlib.suppress(FileNotFoundError):
                    (self.paths.state_dir / f"{name}{suffix}").unlink()
        return removed

    def discard(self, env_dir: Path, *, unless_used: bool = False) -> bool:
        """Delete an env directory of the store (only ever one inside ``.store``).

        With ``unless_used``, a pointer to it that appears while it is being hidden (a plugin
        starting to share it, which takes no lock) gives it back: nothing is deleted and the
        result is ``False``. See ``Host._reuse`` for the other side.
        """
        if env_dir.parent != self.store_dir or env_dir.is_symlink():
            raise EnvStoreError(f"refusing to delete {env_dir}: not an env of the store")
        real = env_dir.resolve()  # as pointers() gives it
        # Hide it first (one rename) so no reader can see a half-deleted env.
        trash = self.store_dir / f".trash-{_token(6)}"
        try:
            env_dir.rename(trash)
        except FileNotFoundError:
            return False
        if unless_used and real in set(self.pointers().values()):
            trash.rename(env_dir)
            return False
        import shutil

        shutil.rmtree(trash, ignore_errors=True)
        return True

    # -- failure memory -----------------------------------------------------------------------

    def record_failure(self, name: str, request_key: str, reason: str) -> None:
        with contextlib.suppress(OSError):
            self.paths.state_dir.mkdir(parents=True, exist_ok=True)
            data = {"request_key": request_key, "reason": reason, "at": now_iso()}
            # 0600: the reason quotes installer output, which may quote files only the
            # user can read.
            write_atomic(
                self.paths.state_dir / f"{name}.failed.json", json.dumps(data).encode(), 0o600
            )

    def clear_failure(self, name: str) -> None:
        with contextlib.suppress(OSError):
            (self.paths.state_dir / f"{name}.failed.json").unlink()

    def last_failure(self, name: str) -> Optional[dict[str, Any]]:
        try:
            data = json.loads((self.paths.state_dir / f"{name}.failed.json").read_bytes())
            return data if isinstance(data, dict) else None
        except (OSError, ValueError):
            return None

    # -- cleaning -----------------------------------------------------------------------------

    def save_index(self) -> None:
        """Persist what this process derived into the warm index, keeping the parsed markers
        of the envs in use only (nothing is written when nothing changed)."""
        if self.index is not None and self.index.dirty:
            self.index.retain("markers", self.marker_paths_in_use())
            self.index.save()

    def marker_paths_in_use(self) -> list[str]:
        """The marker path of every env a pointer names (as :meth:`read_marker` spells it)."""
        out = []
        with contextlib.suppress(OSError):
            for entry in os.scandir(self.root):
                if entry.name.startswith("."):
                    continue
                with contextlib.suppress(OSError):
                    target = os.readlink(entry.path)
                    out.append(os.path.join(self.store_dir / os.path.basename(target), MARKER))
        return out

    def pointers(self) -> dict[str, Path]:
        """Plugin name -> env dir of every pointer (dangling ones included)."""
        out: dict[str, Path] = {}
        if not self.root.is_dir():
            return out
        for entry in self.root.iterdir():
            if entry.name.startswith(".") or not entry.is_symlink():
                continue
            out[entry.name] = (self.root / os.readlink(entry)).resolve()
        return out

    def unfinished(self, min_age: float = 0.0, busy: frozenset[str] = frozenset()) -> list[Path]:
        """Env dirs with no marker whose build lock is free: leftovers of killed builds.

        ``busy`` names fingerprint prefixes whose lock this process holds (skipped).
        """
        out: list[Path] = []
        if not self.store_dir.is_dir():
            return out
        now = time.time()
        for env_dir in self.store_dir.iterdir():
            if env_dir.name.startswith(".trash-"):
                out.append(env_dir)
                continue
            if (
                (env_dir / MARKER).exists()
                or not env_dir.is_dir()
                or env_dir.name.startswith(("legacy-", "."))
            ):
                continue
            with contextlib.suppress(OSError):
                if now - env_dir.stat().st_mtime < min_age:
                    continue
            if env_dir.name.split("-", 1)[0] in busy:
                # The caller holds this fingerprint's lock: no build of it is running.
                out.append(env_dir)
                continue
            from filelock import Timeout

            try:
                with self.lock(env_dir.name.split("-", 1)[0], timeout=0):
                    # Look again under the lock: the build that held it may have written the
                    # marker and published this very env since the first look (in another
                    # thread of a parallel install, or another process). Removing it then
                    # would leave a published pointer dangling.
                    if not (env_dir / MARKER).exists():
                        out.append(env_dir)
            except (Timeout, OSError):
                continue  # its build is running in another process (or the lock is unreadable)
        for directory in (self.root, self.paths.state_dir):
            for link in directory.glob(".*.link") if directory.is_dir() else ():
                if _stray_link(link, now):
                    out.append(link)
        return out

    def remove_path(self, path: Path) -> int:
        """Delete a leftover, returning the bytes freed."""
        size = disk_usage(path)
        if path.is_symlink() or path.is_file():
            path.unlink(missing_ok=True)
        elif path.parent == self.store_dir:
            import shutil

            self.discard(path) if not path.name.startswith(".trash-") else shutil.rmtree(
                path, ignore_errors=True
            )
        return size


def _node_tag() -> str:
    """This machine, as a temporary link names it: a hash of its node name."""
    node = os.uname().nodename if hasattr(os, "uname") else os.environ.get("COMPUTERNAME", "")
    return f"{zlib.crc32(node.encode('utf-8', 'replace')):08x}"


def _owner_tag() -> str:
    """This machine and process, as a temporary link names them: ``<node hash>-<pid>``."""
    return f"{_node_tag()}-{os.getpid()}"


def _temp_link(directory: Path, name: str) -> Path:
    """A new temporary link's path: ``.<name>.<owner tag>.<random>.link``."""
    return directory / f".{name}.{_owner_tag()}.{_token(4)}.link"


def _stray_link(link: Path, now: float) -> bool:
    """Whether a temporary pointer link is a leftover of a killed publish.

    A publish holds its link for microseconds, between ``symlink()`` and ``os.replace()``.
    A link made on this machine by a process that no longer exists is a leftover at once;
    any other (another machine sharing the home, a live or unknown owner, a link from an
    older ally without a tag) only once it is older than :data:`STRAY_LINK_GRACE`.
    """
    try:
        if now - link.lstat().st_mtime >= STRAY_LINK_GRACE:
            return True
    except OSError:
        return False
    parts = link.name[: -len(".link")].rsplit(".", 2)
    if os.name != "posix" or len(parts) != 3:
        return False
    node, _, pid = parts[1].partition("-")
    if node != _node_tag() or not pid.isdigit() or int(pid) <= 0:
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True  # its owner is gone: nobody can still be publishing through it
    except OSError:
        pass  # it exists (another user's process)
    return False


def disk_usage(path: Path) -> int:
    """Bytes used by ``path``, counting each hardlinked inode once."""
    if path.is_symlink() or path.is_file():
        return path.lstat().st_size
    seen: set[tuple[int, int]] = set()
    total = 0
    for root, _dirs, files in os.walk(path):
        for name in files:
            try:
                st = os.lstat(os.path.join(root, name))
            except OSError:
                continue
            if (st.st_dev, st.st_ino) in seen:
                continue
            seen.add((st.st_dev, st.st_ino))
            total += st.st_size
    return total
