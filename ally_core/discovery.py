"""Finding plugins: the plugin dirs, the directories ``ally install PATH`` remembered, manifests.

A plugin is its directory. :class:`Discovery` lists every directory holding a
``plugin.json``, reads each manifest once while the file is unchanged (and keeps it in the
warm index for the next process), and blocks what cannot be a plugin with one line: an
unreadable or invalid manifest, one nested too deeply, and every directory of a name two
directories declare (neither may take the other's env, config or secrets).
"""

from __future__ import annotations

import json
import os
import stat
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any, Optional

import attrs

from .config import Settings
from .errors import AllyError, ManifestError, PluginNotFound
from .manifest import MANIFEST_NAME, Manifest, load_manifest, manifest_from_cache, manifest_to_cache
from .paths import AllyPaths
from .store import EnvStore, store_errors, write_atomic
from .warm_index import WarmIndex

__all__ = [
    "LINKS_NAME",
    "MAX_MANIFEST_DEPTH",
    "SETTLE_NS",
    "Discovery",
    "PluginSource",
    "check_names",
    "not_found_message",
    "settled",
]

#: The plugin directories ``ally install PATH`` remembered, in ``<envs_dir>/.state``.
LINKS_NAME = "plugin-dirs.json"

#: A file changed less than this long ago may change again without its identity changing
#: (same size, within one timestamp tick on filesystems with coarse timestamps): what was
#: derived from it is not persisted yet (git calls such files "racily clean").
SETTLE_NS = 2_000_000_000

#: How deeply the values of a ``plugin.json`` may nest (objects and arrays). Deeper ones block
#: the plugin: every later step (caching, schemas, JSON output) stays far from Python's
#: recursion limit.
MAX_MANIFEST_DEPTH = 100


@attrs.frozen
class PluginSource:
    """A discovered plugin directory, with its manifest or the error reading it."""

    plugin_dir: Path
    manifest: Optional[Manifest]
    error: Optional[AllyError] = None
    #: The identity of the ``plugin.json`` it was read from (size, mtime, inode, ctime).
    identity: Optional[list[int]] = attrs.field(default=None, eq=False, repr=False)

    @property
    def name(self) -> str:
        return self.manifest.name if self.manifest else self.plugin_dir.name


def settled(*identities: Any) -> bool:
    """Whether no file of these identities (``[size, mtime_ns, ino, ctime_ns]``, and for a
    symlink's :func:`~ally_core.warm_index.entry_identity` the identity of its target after
    those) is recent."""
    horizon = time.time_ns() - SETTLE_NS
    return all(
        ident is None
        or (ident[1] < horizon and ident[3] < horizon and (len(ident) < 5 or settled(ident[4])))
        for ident in identities
    )


def too_deep(manifest: Manifest) -> Optional[str]:
    """The JSON path of a part of ``manifest`` nested deeper than :data:`MAX_MANIFEST_DEPTH`.

    Iterative: a value too deep for recursion is measured without any.
    """
    roots: list[tuple[str, Any]] = [
        ("$.author", manifest.author),
        ("$.config", manifest.config),
        *((f"$.{k}", v) for k, v in manifest.extra.items()),
    ]
    if manifest.dependencies is not None:
        roots += [(f"$.dependencies.{k}", v) for k, v in manifest.dependencies.extra.items()]
    for i, tool in enumerate(manifest.tools):
        roots.append((f"$.tools[{i}].schema", tool.schema))
        roots += [(f"$.tools[{i}].{k}", v) for k, v in tool.extra.items()]
    for where, root in roots:
        # The root value sits one level inside plugin.json's object (two inside a tool).
        stack: list[tuple[Any, int]] = [(root, where.count(".") + where.count("["))]
        while stack:
            value, depth = stack.pop()
            if isinstance(value, dict):
                children: Iterable[Any] = value.values()
            elif isinstance(value, (list, tuple)):
                children = value
            else:
                continue
            if depth >= MAX_MANIFEST_DEPTH:
                return where
            stack.extend((child, depth + 1) for child in children)
    return None


def _manifest_failure(exc: BaseException) -> str:
    """One line for an unexpected error while loading a manifest."""
    if isinstance(exc, RecursionError):
        return "nested too deeply to load"
    if isinstance(exc, MemoryError):
        return "too large to load"
    if isinstance(exc, ValueError) and "integer string conversion" in str(exc):
        return "invalid JSON: a number has too many digits"
    text = " | ".join(line for line in str(exc).splitlines() if line.strip())
    return f"cannot be loaded: {exc.__class__.__name__}: {text or exc.__class__.__name__}"


def with_setting_dirs(paths: AllyPaths, settings: Settings) -> AllyPaths:
    """``paths`` with the ``plugin_dirs`` setting (config.toml, ``ALLY_PLUGIN_DIRS``) added
    to ``--plugins-dir``, each directory once. Relative entries of config.toml are relative to
    its directory, other ones to the working directory."""
    from_file = settings.sources.get("plugin_dirs") == str(paths.config_file)
    base = paths.config_dir if from_file else Path.cwd()
    extra = [base / Path(p).expanduser() for p in settings.plugin_dirs]
    unique = dict.fromkeys(
        Path(os.path.normpath(p.absolute())) for p in (*paths.plugin_dirs, *extra)
    )
    return attrs.evolve(paths, plugin_dirs=tuple(unique))


def check_names(
    names: Iterable[str],
    sources: Sequence[PluginSource],
    roots: Sequence[Path],
    *,
    dirs: bool = True,
) -> None:
    """Raise :class:`PluginNotFound`, with a guess, for names no plugin answers to
    (``dirs``: a plugin's directory name counts as a name)."""
    known = {s.name for s in sources}
    if dirs:
        known |= {s.plugin_dir.name for s in sources}
    missing = sorted(set(names) - known)
    if missing:
        raise PluginNotFound("; ".join(not_found_message(n, sources, roots) for n in missing))


def not_found_message(name: str, sources: Sequence[PluginSource], roots: Sequence[Path]) -> str:
    """``no plugin named …``, with the plugin a directory of that name holds and a guess."""
    from .text import did_you_mean

    message = f"no plugin named {name!r}"
    held = [s for s in sources if s.plugin_dir.name == name and s.manifest is not None]
    if held:
        assert held[0].manifest is not None
        message += (
            f": the directory {held[0].plugin_dir} holds the plugin {held[0].manifest.name!r}"
            f" (did you mean {held[0].manifest.name!r}?)"
        )
    else:
        message += did_you_mean(name, [s.name for s in sources])
    return f"{message} in {', '.join(str(p) for p in roots)}"


def _duplicate(source: PluginSource, others: Sequence[Path]) -> PluginSource:
    """``source`` blocked because ``others`` declare its name too."""
    assert source.manifest is not None
    name = source.manifest.name
    problem = (
        f"$.name: plugin name {name!r} is also declared by "
        f"{', '.join(str(d) for d in others)}: rename one of them"
    )
    return PluginSource(source.plugin_dir, None, ManifestError(name, MANIFEST_NAME, [problem]))


class Discovery:
    """The plugins of one ally home. Thread-safe."""

    def __init__(
        self, paths: AllyPaths, settings: Settings, index: WarmIndex, store: EnvStore
    ) -> None:
        self.paths = paths
        self.settings = settings
        self.index = index
        self.store = store
        self._lock = threading.Lock()
        self._sources: dict[str, PluginSource] = {}
        # plugin.json paths parsed while too fresh to be put into the warm index.
        self._unsaved: set[str] = set()
        # The remembered plugin dirs and the identity of the file they were read from.
        self._links: Optional[tuple[tuple[int, ...], list[Path]]] = None

    def select(
        self, sources: Sequence[PluginSource], names: Iterable[str] | None, *, dirs: bool = True
    ) -> list[PluginSource]:
        """The ``sources`` that ``names`` name (all for ``None``); :class:`PluginNotFound`,
        with a guess, for a name none answers to (``dirs``: a directory name counts)."""
        if names is None:
            return list(sources)
        wanted = set(names)
        check_names(wanted, sources, self.paths.plugin_dirs, dirs=dirs)
        return [s for s in sources if s.name in wanted or (dirs and s.plugin_dir.name in wanted)]

    def discover(self) -> list[PluginSource]:
        """Every plugin directory in the plugin dirs, with its manifest or its error."""
        sources: list[PluginSource] = []
        declared: dict[str, list[Path]] = {}
        for root, name in self._candidates():
            source = self.read_source(root, name)
            if source is None:
                continue
            if source.manifest is not None:
                declared.setdefault(source.manifest.name, []).append(source.plugin_dir)
            sources.append(source)
        # A plugin is its directory: two directories declaring one name are both blocked
        # (neither may take the other's env, config or secrets), each naming the other.
        for i, source in enumerate(sources):
            manifest = source.manifest
            if manifest is not None and len(holders := declared[manifest.name]) > 1:
                sources[i] = _duplicate(source, [d for d in holders if d != source.plugin_dir])
        # Plugins that are gone leave the index when it is next written.
        self.index.retain("keys", dirs := [str(s.plugin_dir) for s in sources])
        self.index.retain("manifests", [f"{d}{os.sep}{MANIFEST_NAME}" for d in dirs])
        return sources

    def source(self, name: str) -> PluginSource:
        """The plugin named ``name`` in its manifest (a plugin that cannot be read: its
        directory's name). A directory's name never stands for the plugin it holds."""
        sources = self.discover()
        for source in sources:
            if source.name == name and source.manifest is not None:
                return source
        for source in sources:
            if source.manifest is None and (
                source.name == name or getattr(source.error, "plugin", None) == name
            ):
                return source
        raise PluginNotFound(not_found_message(name, sources, self.paths.plugin_dirs))

    def _candidates(self) -> Iterator[tuple[Path, str]]:
        """``(root, name)`` of every directory that may hold a plugin, in discovery order:
        the entries of each plugin dir (sorted, no dot names), then the remembered ones."""
        for root in self.paths.plugin_dirs:
            try:
                entries = sorted(os.scandir(root), key=lambda e: e.name)
            except OSError:
                continue
            for entry in entries:
                if not entry.name.startswith("."):
                    yield root, entry.name
        roots = set(self.paths.plugin_dirs)
        for plugin_dir in self.linked_dirs():
            if plugin_dir.parent not in roots:
                yield plugin_dir.parent, plugin_dir.name

    def watched_paths(self) -> list[str]:
        """What decides which directory answers to a plugin name, as paths whose identities
        tell a change: each plugin dir (its entries), the ``plugin.json`` of every directory
        that may hold a plugin (a second one of a name blocks both), and the file of the
        remembered plugin dirs."""
        out = [str(root) for root in self.paths.plugin_dirs]
        out += [f"{folder}{os.sep}{MANIFEST_NAME}" for folder in self.candidate_dirs()]
        out.append(str(self._links_file))
        return out

    def candidate_dirs(self) -> list[str]:
        """Every directory that may hold a plugin, in discovery order."""
        return [f"{root}{os.sep}{name}" for root, name in self._candidates()]

    # -- plugin directories installed by path --------------------------------------------------

    @property
    def _links_file(self) -> Path:
        return self.paths.state_dir / LINKS_NAME

    def linked_dirs(self) -> list[Path]:
        """Plugin directories ``ally install PATH`` remembered (see :meth:`add_plugin_dir`)."""
        path = self._links_file
        try:
            st = os.stat(path)
        except OSError:
            return []
        identity = (st.st_size, st.st_mtime_ns, st.st_ino, st.st_ctime_ns)
        if self._links is not None and self._links[0] == identity:
            return list(self._links[1])
        try:
            data = json.loads(path.read_bytes())
            dirs = [Path(d) for d in data["dirs"] if isinstance(d, str) and os.path.isabs(d)]
        except (OSError, ValueError, TypeError, KeyError):
            dirs = []
        self._links = (identity, dirs)
        return list(dirs)

    def _write_links(self, change: Callable[[list[Path]], list[Path]]) -> None:
        with store_errors("cannot record the plugin directories"):
            self.paths.state_dir.mkdir(parents=True, exist_ok=True)
            with self.store.lock("plugin-dirs"):
                dirs = change(self.linked_dirs())
                data = json.dumps({"dirs": [str(d) for d in dirs]}, indent=2).encode()
                write_atomic(self._links_file, data)
        self._links = None

    def add_plugin_dir(self, path: str | os.PathLike[str]) -> PluginSource:
        """Make the plugin in directory ``path`` known to this home, for good.

        A directory outside the plugin dirs is remembered in the env store's state, so later
        loads, ``list``, ``run`` and ``gc`` of any process see it (until it is removed).
        Raises if ``path`` holds no ``plugin.json`` or its manifest is invalid.
        """
        plugin_dir = Path(os.path.normpath(Path(path).expanduser().absolute()))
        if not (plugin_dir / MANIFEST_NAME).is_file():
            raise PluginNotFound(f"{path}: not a plugin directory (no {MANIFEST_NAME})")
        source = self.read_source(plugin_dir.parent, plugin_dir.name)
        if source is None or source.manifest is None:
            raise (source.error if source is not None and source.error else None) or (
                PluginNotFound(f"{path}: cannot read {MANIFEST_NAME}")
            )
        if plugin_dir.parent not in set(self.paths.plugin_dirs):
            self._write_links(lambda dirs: dirs if plugin_dir in dirs else [*dirs, plugin_dir])
        return source

    def forget_plugin_dirs(self, dirs: Iterable[Path]) -> None:
        """Stop remembering these plugin directories (their files are never touched)."""
        gone = set(dirs)
        if gone & set(self.linked_dirs()):
            self._write_links(lambda known: [d for d in known if d not in gone])

    # -- manifests -----------------------------------------------------------------------------

    def read_source(self, root: Path, name: str) -> Optional[PluginSource]:
        """The manifest of ``root/name`` (cached while ``plugin.json`` is unchanged).

        Whatever goes wrong with one manifest (too large, too deep, not loadable, not
        cacheable) blocks that plugin alone, with one line: never the discovery of others.
        """
        # f-strings, not os.path.join (a Python function): this runs for every plugin on
        # every load, and ``name`` is a directory entry's name. (A root that ends with a
        # separator, "/" or "D:\\", is joined as os.path.join would.)
        prefix = str(root)
        directory = f"{prefix}{name}" if prefix.endswith(os.sep) else f"{prefix}{os.sep}{name}"
        path = f"{directory}{os.sep}{MANIFEST_NAME}"
        try:
            st = os.stat(path)
        except (OSError, ValueError):
            return None
        if not stat.S_ISREG(st.st_mode):
            return None
        identity = [st.st_size, st.st_mtime_ns, st.st_ino, st.st_ctime_ns]
        cached = self._sources.get(path)
        if cached is not None and cached.identity == identity:
            if path in self._unsaved and cached.manifest is not None and settled(identity):
                # Parsed while plugin.json was fresh; now it can go into the index.
                self._cache_manifest(path, identity, cached.manifest)
                self._unsaved.discard(path)
            return cached
        plugin_dir = root / name
        try:
            source = self._parse_source(plugin_dir, path, identity)
        except ManifestError as exc:
            source = PluginSource(plugin_dir, None, exc, identity=identity)
        except Exception as exc:  # one manifest never stops the others
            error = ManifestError(name, MANIFEST_NAME, [_manifest_failure(exc)])
            source = PluginSource(plugin_dir, None, error, identity=identity)
        with self._lock:
            self._sources[path] = source
        return source

    def _parse_source(self, plugin_dir: Path, path: str, identity: list[int]) -> PluginSource:
        """Read, validate and cache one manifest (:meth:`read_source` contains any error)."""
        limit = self.settings.manifest_max_bytes
        if identity[0] > limit:
            # Checked before reading: a huge file costs one stat, on every load.
            raise ManifestError(
                plugin_dir.name,
                MANIFEST_NAME,
                [
                    f"is {identity[0]} bytes, larger than the limit of {limit} bytes "
                    "(setting manifest_max_bytes, ALLY_MANIFEST_MAX_BYTES)"
                ],
            )
        manifest: Optional[Manifest] = None
        data = self.index.get("manifests", path, identity)
        if data is not None:
            try:
                manifest = manifest_from_cache(data)
            except Exception:  # a malformed entry is a miss
                manifest = None
        if manifest is None:
            manifest = load_manifest(plugin_dir, max_bytes=limit)
            deep = too_deep(manifest)
            if deep is not None:
                raise ManifestError(
                    manifest.name,
                    MANIFEST_NAME,
                    [f"{deep}: nested more than {MAX_MANIFEST_DEPTH} levels deep"],
                )
            if settled(identity):
                self._cache_manifest(path, identity, manifest)
            else:
                self._unsaved.add(path)
        return PluginSource(plugin_dir, manifest, identity=identity)

    def _cache_manifest(self, path: str, identity: list[int], manifest: Manifest) -> None:
        self.index.put("manifests", path, identity, manifest_to_cache(manifest))
