"""Where ally keeps things.

Without ``ALLY_HOME`` the directories come from platformdirs (data, cache and config dirs of
the ``ally`` app). With ``ALLY_HOME=DIR`` everything lives under ``DIR`` in the layout of the
original design: ``DIR/plugins/<name>/plugin.json`` and ``DIR/plugin-envs/<name>/``.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Optional

import attrs

from .errors import UnsafePath

__all__ = [
    "ARTIFACTS_DIR",
    "BACKUP_DIR",
    "AllyPaths",
    "artifacts_dir_of",
    "check_plugin_name",
    "command_lookup_paths",
    "contained_path",
]

#: Directory inside a plugin holding the artifacts of the bundle it came from.
ARTIFACTS_DIR = ".ally-bundle"
#: Directory in a plugins dir where ``ally install --force ARCHIVE`` keeps replaced plugins.
BACKUP_DIR = ".ally-backup"

#: A plugin name becomes a directory name in the env store, so it is restricted to a safe set.
PLUGIN_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")


@attrs.frozen
class AllyPaths:
    """The directories one ally home uses."""

    home: Path
    plugin_dirs: tuple[Path, ...]
    envs_dir: Path
    cache_dir: Path
    config_dir: Path

    @classmethod
    def from_env(
        cls,
        home: str | os.PathLike[str] | None = None,
        extra_plugin_dirs: Sequence[str | os.PathLike[str]] = (),
        environ: Mapping[str, str] | None = None,
    ) -> AllyPaths:
        """Build the paths for ``home`` (or ``$ALLY_HOME``, or the platformdirs defaults)."""
        environ = os.environ if environ is None else environ
        home = home or environ.get("ALLY_HOME") or None
        extra = tuple(Path(p).expanduser().absolute() for p in extra_plugin_dirs)
        if home is not None:
            root = Path(home).expanduser().absolute()
            return cls(
                home=root,
                plugin_dirs=(root / "plugins", *extra),
                envs_dir=root / "plugin-envs",
                cache_dir=root / "cache",
                config_dir=root,
            )
        import platformdirs

        data = platformdirs.user_data_path("ally", appauthor=False)
        return cls(
            home=data,
            plugin_dirs=(data / "plugins", *extra),
            envs_dir=data / "plugin-envs",
            cache_dir=platformdirs.user_cache_path("ally", appauthor=False),
            config_dir=platformdirs.user_config_path("ally", appauthor=False),
        )

    @property
    def store_dir(self) -> Path:
        """Content-addressed environments; ``envs_dir/<name>`` points into it."""
        return self.envs_dir / ".store"

    @property
    def locks_dir(self) -> Path:
        """Lock files live beside the envs, never inside them."""
        return self.envs_dir / ".locks"

    @property
    def state_dir(self) -> Path:
        """Per-plugin state that is not an env: failure records."""
        return self.envs_dir / ".state"

    @property
    def config_file(self) -> Path:
        return self.config_dir / "config.toml"


def check_plugin_name(name: str, *, source: str = "plugin.json") -> str:
    """Return ``name`` if it is a safe plugin name, else raise :class:`UnsafePath`."""
    if not PLUGIN_NAME_RE.fullmatch(name) or name in {".", ".."}:
        raise UnsafePath(
            name or "<unnamed>",
            source,
            [f"$.name: {name!r} is not a valid plugin name (letters, digits, '.', '_', '-')"],
        )
    return name


def relative_parts(relative: str) -> list[str] | None:
    """The components of a path meant to stay below some directory, or ``None`` if it cannot.

    Absolute paths, ``~``, drive-relative names (``C:req.txt`` on Windows: relative to drive
    C's current dir) and ``..`` components are refused; empty and ``.`` components dropped.
    Symlinks are :func:`contained_path`'s business.
    """
    if not relative or os.path.isabs(relative) or relative.startswith(("~", "\\")):
        return None
    if os.path.splitdrive(relative)[0]:
        return None
    parts = [p for p in relative.replace("\\", "/").split("/") if p not in ("", ".")]
    if not parts or ".." in parts:
        return None
    return parts


def contained_path(base: Path, relative: str) -> Path | None:
    """Resolve ``relative`` inside ``base``; ``None`` if it would leave ``base``.

    Absolute paths, ``..`` components and symlinks pointing outside all count as leaving.
    ``base`` itself may be (or lie under) a symlink: containment is judged against its
    real path.
    """
    parts = relative_parts(relative)
    if parts is None:
        return None
    # Fast path (every load goes through here): no component below base is a symlink, so
    # the joined path cannot leave base. Only when one is, pay for a full realpath.
    current = str(base)
    for part in parts:
        current = os.path.join(current, part)
        try:
            if os.path.islink(current):
                break
        except OSError:
            break
    else:
        return Path(current)
    base_real = os.path.realpath(base)
    target = os.path.realpath(os.path.join(base, *parts))
    if os.path.commonpath([base_real, target]) != base_real:
        return None
    return Path(target)


def command_lookup_paths(command: str, path: Optional[str] = None) -> list[str]:
    """The files ``shutil.which(command, path=path)`` looks at, in its order, up to the one it
    finds (all of them when it finds none). No process is started.

    What a runtime's ``watch_paths`` names for a command it looks up on ``PATH``: while none of
    these files changes (created, removed, replaced, made executable or not), the lookup finds
    the same file. ``path`` is a ``PATH`` value, as for ``shutil.which``; ``None`` reads
    ``$PATH``, or the system's default search path when it is unset. A ``command`` with a
    directory part is not looked up: it is its only candidate. Relative ``PATH`` entries stay
    relative (``which`` reads them from the current directory). POSIX only: on Windows the
    current directory and ``PATHEXT`` take part too.
    """
    if os.path.dirname(command):
        return [command]
    if path is None:
        path = os.environ.get("PATH")
        if path is None:
            try:
                path = os.confstr("CS_PATH") or ""
            except (AttributeError, ValueError):
                path = os.defpath
    found: list[str] = []
    for directory in dict.fromkeys(path.split(os.pathsep) if path else ()):
        candidate = os.path.join(directory, command)
        found.append(candidate)
        if (
            os.path.exists(candidate)
            and os.access(candidate, os.F_OK | os.X_OK)
            and not os.path.isdir(candidate)
        ):
            break
    return found


def artifacts_dir_of(plugin_dir: Path) -> Path | None:
    """The bundle artifacts a plugin carries (``plugin_dir/.ally-bundle``), if any."""
    path = plugin_dir / ARTIFACTS_DIR
    return path if os.path.isdir(path) else None
