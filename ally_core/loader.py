"""The host API: discover plugins, validate them, make their envs ready, hand out their tools.

:class:`Host` is what a host application embeds and what the ``ally`` CLI drives. One broken
plugin never stops the others: :meth:`Host.load` returns a :class:`PluginOutcome` per plugin,
ready (with its tools) or blocked (with a one-line reason).
"""

from __future__ import annotations

import json
import os
import re
import stat
import threading
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Optional

import attrs
import pluggy

from .config import Settings, load_settings
from .envs import EnvInfo, EnvOptions, EnvSpec, Health, Problem, ProgressEvent
from .errors import (
    AllyError,
    InstallFailed,
    ManifestError,
    PluginNotFound,
    RuntimeNotFound,
    UnsafePath,
)
from .forms import FormCallback
from .manifest import (
    MANIFEST_NAME,
    Dependencies,
    Manifest,
    Tool,
    load_manifest,
    manifest_from_cache,
    manifest_to_cache,
    manifest_warnings,
)
from .paths import ARTIFACTS_DIR, AllyPaths, artifacts_dir_of, contained_path, relative_parts
from .plugin_manager import make_plugin_manager
from .process import cancel_token
from .replies import ToolResult
from .store import MARKER, EnvStore, Marker, now_iso, store_errors, write_atomic
from .text import log
from .warm_index import (
    INDEX_NAME,
    LEGACY_NAMES,
    WarmIndex,
    entry_identity,
    identities,
    unchanged,
)

if TYPE_CHECKING:
    from .workers import WorkerOptions, WorkerPool

__all__ = ["BoundTool", "Host", "PluginOutcome", "PluginSource", "Removal"]

#: The plugin directories ``ally install PATH`` remembered, in ``<envs_dir>/.state``.
LINKS_NAME = "plugin-dirs.json"

ProgressCallback = Callable[[ProgressEvent], None]


def _silent(event: ProgressEvent) -> None:
    return None


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


@attrs.frozen
class _KeyEntry:
    """What :meth:`Host._spec_and_key` derived for a plugin, and what it depends on."""

    source: PluginSource
    signature: list[Any]
    context: Optional[str]
    watch: list[list[Any]]
    spec: EnvSpec
    key: str
    #: Whether it is in the warm index (files changed in the last seconds are not, yet).
    saved: bool = False
    #: What the key was computed from (``None`` when it came from the warm index).
    inputs: Optional[dict[str, Any]] = None


@attrs.define
class PluginOutcome:
    """The result of loading one plugin."""

    name: str
    plugin_dir: Path
    #: ``"ready"``, ``"blocked"`` or (from :meth:`Host.status` and :meth:`Host.doctor`, which
    #: build nothing) ``"pending"``.
    status: str
    reason: str = ""
    manifest: Optional[Manifest] = None
    env: Optional[EnvInfo] = None
    tools: list[BoundTool] = attrs.field(factory=list)
    warnings: list[str] = attrs.field(factory=list)
    #: What this load did: ``"none"`` (nothing to do / warm), ``"built"``, ``"shared"`` (reused
    #: an identical env), ``"repaired"`` (rebuilt because a check failed), ``"updated"``.
    action: str = "none"
    #: Why an existing env was rebuilt.
    repair_reason: str = ""
    #: Ready on an env built for earlier inputs (a changed dependency file, another
    #: interpreter setting…) because the build for the current ones failed: ``reason`` says why.
    stale: bool = False
    packages: Mapping[str, str] = attrs.field(factory=dict)
    error: Optional[AllyError] = attrs.field(default=None, repr=False)

    @property
    def ready(self) -> bool:
        return self.status == "ready"

    def tool(self, name: str) -> BoundTool:
        for tool in self.tools:
            if tool.name == name:
                return tool
        known = ", ".join(t.name for t in self.tools) or "none"
        raise PluginNotFound(f"{self.name}: no tool named {name!r} (tools: {known})")


@attrs.frozen
class BoundTool:
    """A tool of a ready plugin, callable from the host."""

    host: Host = attrs.field(repr=False)
    plugin: PluginOutcome = attrs.field(repr=False)
    spec: Tool

    @property
    def name(self) -> str:
        return self.spec.name

    def call(
        self,
        arguments: Any = None,
        *,
        timeout: float | None = None,
        config: Mapping[str, str] | None = None,
        on_form: Optional[FormCallback] = None,
        on_output: Optional[Callable[[str, str], None]] = None,
        cancel: Optional[threading.Event] = None,
    ) -> ToolResult:
        """Run the tool with ``arguments`` as its JSON input; return its :class:`ToolResult`.

        ``on_form`` answers an interactive tool's forms (return the values, or ``None`` to
        cancel; without it every form is cancelled); ``on_output(stream, text)`` receives the
        tool's stdout and stderr as they arrive; setting the ``cancel`` event kills the tool
        (:class:`ToolError` with ``error_type`` ``"cancelled"``). Secret config values are
        masked in every text of the result.
        """
        from .tools import run_tool

        return run_tool(
            self.host,
            self.plugin,
            self.spec,
            arguments,
            timeout=timeout,
            config=config,
            on_form=on_form,
            on_output=on_output,
            cancel=cancel,
        )


@attrs.frozen
class Removal:
    """What :meth:`Host.remove` did. True when the plugin had an env pointer."""

    name: str
    #: Whether the plugin had an env pointer.
    pointer: bool
    #: Env directories deleted, with the bytes they held.
    deleted: tuple[tuple[Path, int], ...] = ()
    #: Env directories kept because another plugin uses them.
    shared: tuple[Path, ...] = ()
    #: Remembered plugin directories forgotten (their files are untouched).
    forgot: tuple[Path, ...] = ()

    def __bool__(self) -> bool:
        return self.pointer

    @property
    def freed(self) -> int:
        return sum(size for _path, size in self.deleted)


def _pending(source: PluginSource, reason: str) -> PluginOutcome:
    """The outcome of a plugin whose env is not ready and was not built (yet)."""
    return PluginOutcome(
        source.name, source.plugin_dir, "pending", reason=reason, manifest=source.manifest
    )


#: A file changed less than this long ago may change again without its identity changing
#: (same size, within one timestamp tick on filesystems with coarse timestamps): what was
#: derived from it is not persisted yet (git calls such files "racily clean").
SETTLE_NS = 2_000_000_000


def _settled(*identities: Any) -> bool:
    """Whether no file of these identities (``[size, mtime_ns, ino, ctime_ns]``, and for a
    symlink's :func:`entry_identity` the identity of its target after those) is recent."""
    horizon = time.time_ns() - SETTLE_NS
    return all(
        ident is None
        or (ident[1] < horizon and ident[3] < horizon and (len(ident) < 5 or _settled(ident[4])))
        for ident in identities
    )


def _plain_file(relative: str, identity: Optional[list[Any]]) -> bool:
    """Whether the dependency file ``relative``, of this :func:`entry_identity`, lies right in
    the plugin dir and is not a symlink: then it cannot lie outside (no further system call).
    """
    return identity is not None and len(identity) == 4 and relative_parts(relative) == [relative]


def _context_digest(data: bytes) -> str:
    """BLAKE2b of a runtime's env context: computed on every load, so without importing
    :mod:`hashlib`, which loads OpenSSL (a few ms per ``ally`` run); the builtin module it
    takes BLAKE2 from is used directly when it is there."""
    try:
        from _blake2 import blake2b
    except ImportError:  # pragma: no cover - a Python built without it
        from hashlib import blake2b
    return blake2b(data, digest_size=32).hexdigest()


def _runtime_error(plugin: str, exc: Exception) -> InstallFailed:
    """A runtime's bug as the one-line error of its plugin; the original exception, with its
    traceback, stays its ``__cause__`` (``ally --debug`` shows it)."""
    error = InstallFailed(f"{plugin}: runtime error: {exc.__class__.__name__}: {exc}")
    error.__cause__ = exc
    return error


#: How deeply the values of a ``plugin.json`` may nest (objects and arrays). Deeper ones block
#: the plugin: every later step (caching, schemas, JSON output) stays far from Python's
#: recursion limit.
MAX_MANIFEST_DEPTH = 100


def _too_deep(manifest: Manifest) -> Optional[str]:
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
    return f"cannot be loaded: {exc.__class__.__name__}: {_one_line(exc)}"


def _key_of(inputs: Mapping[str, Any]) -> str:
    """The request key of :meth:`Host.request_inputs` (as it always was: a sha256 of the
    sorted JSON)."""
    import hashlib

    return hashlib.sha256(json.dumps(inputs, sort_keys=True, default=str).encode()).hexdigest()


#: What each of an env's inputs is called when it changes (others by their key).
_INPUT_LABELS = {
    "runtime": "runtime",
    "dependency_file": "dependency file",
    "install_command": "install_command",
    "runtime_version": "runtime_version",
    "dependency_options": "dependencies options",
    "artifacts_dir": "bundle artifacts",
}
#: Keys of the runtimes' env_identity, as a user knows them.
_IDENTITY_LABELS = {
    "backend": "installer",
    "python": "interpreter (ALLY_PYTHON)",
    "index": "package index settings",
    "plugin_dir": "plugin directory",
    "includes": "included requirement files",
    "node": "node",
    "registry": "registry settings",
    "locks": "lock file",
    "npmrc": ".npmrc",
    "dev": "devDependencies setting",
    "scripts": "install scripts setting",
}


def _shown(value: Any) -> Optional[str]:
    """A short rendering of a changed scalar input, ``None`` for structured ones."""
    if value is None:
        return "unset"
    if isinstance(value, (bool, int, float)):
        return json.dumps(value)
    if isinstance(value, str) and not _DIGEST.fullmatch(value):
        return value if len(value) <= 120 else value[:117] + "..."
    return None


#: A file's hash, as runtimes put it into an identity: never worth showing.
_DIGEST = re.compile(r"[0-9a-f]{32,}")


def _changed(label: str, old: Any, new: Any) -> str:
    before, after = _shown(old), _shown(new)
    if old is None and after is None:
        return f"{label} added"
    if new is None and before is None:
        return f"{label} removed"
    if before is None or after is None:
        return f"{label} changed"
    return f"{label} changed ({before} \u2192 {after})"


def describe_change(old: Mapping[str, Any], new: Mapping[str, Any]) -> str:
    """What differs between an env's recorded inputs and the current ones, in words:
    ``"requirements.txt changed"``, ``"installer changed (uv → pip)"``…"""
    if not old:
        return "dependencies or settings changed (the env does not record its inputs)"
    changes: list[str] = []
    if old.get("dependency_file") != new.get("dependency_file"):
        changes.append(
            _changed("dependency file", old.get("dependency_file"), new.get("dependency_file"))
        )
    elif old.get("dependency_sha256") != new.get("dependency_sha256"):
        changes.append(f"{new.get('dependency_file') or 'dependency file'} changed")
    for key, label in _INPUT_LABELS.items():
        if key != "dependency_file" and old.get(key) != new.get(key):
            changes.append(_changed(label, old.get(key), new.get(key)))
    before: dict[str, Any] = old["identity"] if isinstance(old.get("identity"), dict) else {}
    after: dict[str, Any] = new["identity"] if isinstance(new.get("identity"), dict) else {}
    for key in sorted(set(before) | set(after), key=lambda k: (k not in _IDENTITY_LABELS, k)):
        if before.get(key) != after.get(key):
            label = _IDENTITY_LABELS.get(key, f"{new.get('runtime') or 'runtime'} {key}")
            changes.append(_changed(label, before.get(key), after.get(key)))
    known = {"dependency_sha256", "identity", *_INPUT_LABELS}
    for key in sorted((set(old) | set(new)) - known):
        if old.get(key) != new.get(key):
            changes.append(_changed(key, old.get(key), new.get(key)))
    return "; ".join(changes) or "dependencies changed"


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


def _one_line(error: BaseException, plugin: str = "") -> str:
    """``error`` as one line; without a leading ``"<plugin>: "``, as the reason of that
    plugin's outcome, which carries its name already (a name is said once per message)."""
    text = " | ".join(line for line in str(error).splitlines() if line.strip()) or (
        error.__class__.__name__
    )
    prefix = f"{plugin}: "
    return text[len(prefix) :] if plugin and text.startswith(prefix) else text


class Host:
    """One ally home: its plugins, its env store, its settings and its runtimes.

    Thread-safe: :meth:`load` may be called from several threads, and two hosts with
    different homes can live in one process.
    """

    def __init__(
        self,
        home: str | os.PathLike[str] | None = None,
        *,
        plugin_dirs: Sequence[str | os.PathLike[str]] = (),
        settings: Mapping[str, Any] | None = None,
        environ: Mapping[str, str] | None = None,
        plugin_manager: pluggy.PluginManager | None = None,
        warm_workers: bool | WorkerOptions = False,
    ) -> None:
        env = dict(os.environ if environ is None else environ)
        paths = AllyPaths.from_env(home, plugin_dirs, env)
        #: Effective settings (defaults < config file < env vars < ``settings``).
        self.settings: Settings = load_settings(paths.config_file, env, settings)
        # The plugin_dirs setting (config.toml, ALLY_PLUGIN_DIRS) adds to --plugins-dir.
        # Relative entries of config.toml are relative to its directory.
        base = (
            paths.config_dir
            if self.settings.sources.get("plugin_dirs") == str(paths.config_file)
            else Path.cwd()
        )
        extra = [base / Path(p).expanduser() for p in self.settings.plugin_dirs]
        unique = dict.fromkeys(
            Path(os.path.normpath(p.absolute())) for p in (*paths.plugin_dirs, *extra)
        )
        #: The directories of this home.
        self.paths = attrs.evolve(paths, plugin_dirs=tuple(unique))
        #: What warm loads derive from files, persisted for the next process.
        self.index = WarmIndex(self.paths.state_dir / INDEX_NAME)
        #: The pluggy plugin manager with every enabled runtime registered.
        self.pm = plugin_manager or make_plugin_manager(env, index=self.index)
        #: Shortcut to ``pm.hook``: how ally calls the runtimes.
        self.hook = self.pm.hook
        #: The env store under ``paths.envs_dir``.
        self.store = EnvStore(self.paths, index=self.index)
        self._failures: dict[str, tuple[str, float, str]] = {}
        self._lock = threading.Lock()
        self._runtime_names: Optional[dict[str, str]] = None
        self._served: Optional[dict[str, list[str]]] = None
        self._sources: dict[str, PluginSource] = {}
        self._keys: dict[str, _KeyEntry] = {}
        # Digest of each runtime's env_context, computed once per discover() (once per load).
        self._contexts: dict[Optional[str], Optional[str]] = {}
        self._base_options: Optional[EnvOptions] = None
        # plugin.json paths parsed while too fresh to be put into the warm index.
        self._unsaved: set[str] = set()
        # Base interpreter path -> its (size, mtime, inode), once per discover() (once per load).
        self._interpreters: dict[str, Optional[tuple[int, int, int]]] = {}
        # The remembered plugin dirs and the identity of the file they were read from.
        self._links: Optional[tuple[tuple[int, ...], list[Path]]] = None
        #: Warm workers of Python tools (``warm_workers``), or ``None``; see :meth:`close`.
        self.workers: Optional[WorkerPool] = None
        if warm_workers:
            from .workers import WorkerOptions, WorkerPool

            options = warm_workers if isinstance(warm_workers, WorkerOptions) else None
            self.workers = WorkerPool(options, pass_env=self.settings.pass_env)

    # -- lifetime ------------------------------------------------------------------------------

    def close(self) -> None:
        """Stop this host's warm workers (and the tool calls running in them)."""
        if self.workers is not None:
            self.workers.close()

    def __enter__(self) -> Host:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- runtimes ------------------------------------------------------------------------------

    def runtimes(self) -> dict[str, str]:
        """``runtime`` value -> registration name of the runtime serving it."""
        if self._runtime_names is None:
            names: dict[str, str] = {}
            # Hook implementations are listed last-registered first: the first one wins.
            for plugin, values in reversed(self._served_by_plugin().items()):
                for value in values:
                    names.setdefault(value, plugin)
            self._runtime_names = names
        return self._runtime_names

    # -- discovery -----------------------------------------------------------------------------

    def discover(self) -> list[PluginSource]:
        """Every plugin directory in the plugin dirs, with its manifest or its error."""
        sources: list[PluginSource] = []
        declared: dict[str, list[Path]] = {}
        self._contexts = {}
        self._interpreters = {}
        for root, name in self._candidates():
            source = self._read_source(root, name)
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
                others = ", ".join(str(d) for d in holders if d != source.plugin_dir)
                sources[i] = PluginSource(
                    source.plugin_dir,
                    None,
                    ManifestError(
                        manifest.name,
                        MANIFEST_NAME,
                        [
                            f"$.name: plugin name {manifest.name!r} is also declared by "
                            f"{others}: rename one of them"
                        ],
                    ),
                )
        # Plugins that are gone leave the index when it is next written.
        self.index.retain("keys", dirs := [str(s.plugin_dir) for s in sources])
        self.index.retain("manifests", [f"{d}{os.sep}{MANIFEST_NAME}" for d in dirs])
        return sources

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
        loads, ``list``, ``run`` and ``gc`` of any process see it (until :meth:`remove`).
        Raises if ``path`` holds no ``plugin.json`` or its manifest is invalid.
        """
        plugin_dir = Path(os.path.normpath(Path(path).expanduser().absolute()))
        if not (plugin_dir / MANIFEST_NAME).is_file():
            raise PluginNotFound(f"{path}: not a plugin directory (no {MANIFEST_NAME})")
        source = self._read_source(plugin_dir.parent, plugin_dir.name)
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

    def _read_source(self, root: Path, name: str) -> Optional[PluginSource]:
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
            if path in self._unsaved and cached.manifest is not None and _settled(identity):
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
        """Read, validate and cache one manifest (:meth:`_read_source` contains any error)."""
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
            deep = _too_deep(manifest)
            if deep is not None:
                raise ManifestError(
                    manifest.name,
                    MANIFEST_NAME,
                    [f"{deep}: nested more than {MAX_MANIFEST_DEPTH} levels deep"],
                )
            if _settled(identity):
                self._cache_manifest(path, identity, manifest)
            else:
                self._unsaved.add(path)
        return PluginSource(plugin_dir, manifest, identity=identity)

    def _cache_manifest(self, path: str, identity: list[int], manifest: Manifest) -> None:
        self.index.put("manifests", path, identity, manifest_to_cache(manifest))

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

    # -- specs ---------------------------------------------------------------------------------

    def env_options(
        self, *, upgrade: bool = False, artifacts_dir: Path | None = None
    ) -> EnvOptions:
        if not upgrade and artifacts_dir is None:
            if self._base_options is None:
                self._base_options = self._make_options(False, None)
            return self._base_options
        return self._make_options(upgrade, artifacts_dir)

    def _make_options(self, upgrade: bool, artifacts_dir: Path | None) -> EnvOptions:
        return EnvOptions(
            artifacts_dir=artifacts_dir,
            offline=self.settings.offline,
            index=self.settings.index,
            cache_dir=self.paths.cache_dir,
            installer=self.settings.installer,
            install_timeout=self.settings.install_timeout,
            upgrade=upgrade,
            default_interpreter=self.settings.values.get("python"),
        )

    def spec_for(
        self,
        manifest: Manifest,
        plugin_dir: Path,
        *,
        env_dir: Path | None = None,
        progress: ProgressCallback = _silent,
        upgrade: bool = False,
    ) -> EnvSpec:
        """Validate the parts of ``manifest`` that need the file system and the runtimes.

        A manifest with a ``runtime`` and no ``dependencies`` gets the spec of an empty env:
        its tools run on the runtime's interpreter, never on whatever is first on ``PATH``.
        """
        assert manifest.runtime is not None
        problems: list[str] = []
        if manifest.runtime not in self.runtimes():
            raise self._unknown_runtime(manifest)
        deps = manifest.dependencies or Dependencies()
        dep_file: Optional[Path] = None
        if deps.file:
            dep_file = contained_path(plugin_dir, deps.file)
            if dep_file is None:
                raise UnsafePath(
                    manifest.name,
                    MANIFEST_NAME,
                    [f"$.dependencies.file: {deps.file!r} is outside the plugin directory"],
                )
            if not dep_file.is_file():
                problems.append(
                    f"$.dependencies.file: {deps.file!r} does not exist in {plugin_dir}"
                )
        command: Optional[tuple[str, ...]] = None
        if deps.install_command:
            try:
                import shlex

                command = tuple(shlex.split(deps.install_command))
            except ValueError as exc:
                problems.append(f"$.dependencies.install_command: {exc}")
            if command == ():
                problems.append("$.dependencies.install_command: is empty")
            if "\0" in deps.install_command:
                problems.append("$.dependencies.install_command: contains a NUL byte")
        if problems:
            raise ManifestError(manifest.name, MANIFEST_NAME, problems)
        return self._make_spec(
            manifest,
            plugin_dir,
            dep_file,
            command,
            self.env_options(
                upgrade=upgrade,
                # Nothing to install: the empty env stays the one every such plugin shares.
                artifacts_dir=artifacts_dir_of(plugin_dir) if manifest.dependencies else None,
            ),
            env_dir=env_dir,
            progress=progress,
        )

    def _make_spec(
        self,
        manifest: Manifest,
        plugin_dir: Path,
        dependency_file: Optional[Path],
        install_command: Optional[tuple[str, ...]],
        options: EnvOptions,
        *,
        env_dir: Path | None = None,
        progress: ProgressCallback = _silent,
    ) -> EnvSpec:
        """The spec of a manifest whose dependency file and command were validated."""
        assert manifest.runtime is not None
        extra = manifest.dependencies.extra if manifest.dependencies else {}
        return EnvSpec(
            runtime=manifest.runtime,
            plugin_name=manifest.name,
            plugin_dir=plugin_dir,
            env_dir=env_dir or self.store.pointer(manifest.name),
            dependency_file=dependency_file,
            install_command=install_command,
            runtime_version=manifest.runtime_version,
            dependency_options=dict(extra),
            options=options,
            reporter=progress,
        )

    def request_key(self, spec: EnvSpec) -> str:
        """Hash of everything the plugin declares about its env (cheap: no processes)."""
        return _key_of(self.request_inputs(spec))

    def request_inputs(self, spec: EnvSpec) -> dict[str, Any]:
        """What :meth:`request_key` hashes, as plain JSON data: the env's inputs.

        Each env's marker keeps them, so a rebuild can say what changed.
        """
        import hashlib

        dep_bytes = spec.dependency_file.read_bytes() if spec.dependency_file else b""
        identity = self.hook.env_identity(spec=spec)
        request = {
            "runtime": spec.runtime,
            "dependency_file": spec.dependency_file.name if spec.dependency_file else None,
            "dependency_sha256": hashlib.sha256(dep_bytes).hexdigest(),
            "install_command": spec.install_command,
            "runtime_version": spec.runtime_version,
            "dependency_options": spec.dependency_options,
            "artifacts_dir": str(spec.options.artifacts_dir)
            if spec.options.artifacts_dir
            else None,
            "identity": identity,
        }
        plain: dict[str, Any] = json.loads(json.dumps(request, sort_keys=True, default=str))
        return plain

    # -- loading -------------------------------------------------------------------------------

    def load(
        self,
        names: Iterable[str] | None = None,
        *,
        progress: ProgressCallback | None = None,
        jobs: int | None = None,
    ) -> list[PluginOutcome]:
        """Discover plugins and make each one ready; return one outcome per plugin.

        Plugins whose env is ready cost a few file reads and no process. The others are
        built in parallel (``jobs`` workers, default from the settings).
        """
        progress = progress or _silent
        wanted = set(names) if names is not None else None
        sources = self.discover()
        if wanted is not None:
            self._check_names(wanted, sources)
            sources = [s for s in sources if s.name in wanted or s.plugin_dir.name in wanted]
        outcomes: list[Optional[PluginOutcome]] = []
        cold: list[int] = []
        for i, source in enumerate(sources):
            outcome = self._warm(source)
            outcomes.append(outcome)
            if outcome is None:
                cold.append(i)
        if cold:
            workers = max(1, min(jobs or self.settings.jobs, len(cold)))
            cancel = threading.Event()

            def build(source: PluginSource) -> PluginOutcome:
                with cancel_token(cancel):
                    return self._cold(source, progress)

            from concurrent.futures import ThreadPoolExecutor

            pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="ally-build")
            try:
                futures = {i: pool.submit(build, sources[i]) for i in cold}
                for i, future in futures.items():
                    outcomes[i] = future.result()
            except BaseException:
                # Ctrl-C / SIGTERM: stop the installers; each build removes its unfinished env.
                cancel.set()
                raise
            finally:
                pool.shutdown(wait=True, cancel_futures=True)
            for i in cold:
                built = outcomes[i]
                if built is not None and built.ready:
                    # Record what the next process's warm load needs (no process started).
                    self._warm(sources[i])
        self._save_index()
        return [o for o in outcomes if o is not None]

    def ensure(
        self,
        name: str,
        *,
        force: bool = False,
        upgrade: bool = False,
        progress: ProgressCallback | None = None,
    ) -> PluginOutcome:
        """Make one plugin ready. ``force`` rebuilds; ``upgrade`` re-resolves to newest versions.

        With ``force``/``upgrade`` the new env is built beside the old one and published only
        when healthy: on failure the old env stays in use and the outcome says why.
        """
        source = self.source(name)
        if not force and not upgrade:
            warm = self._warm(source)
            if warm is not None:
                self._save_index()
                return warm
        return self._cold(source, progress or _silent, force=force or upgrade, upgrade=upgrade)

    def _check_names(
        self, names: Iterable[str], sources: Sequence[PluginSource], *, dirs: bool = True
    ) -> None:
        """Raise :class:`PluginNotFound`, with a guess, for names no plugin answers to
        (``dirs``: a plugin's directory name counts as a name)."""
        known = {s.name for s in sources} | (
            {s.plugin_dir.name for s in sources} if dirs else set()
        )
        missing = sorted(set(names) - known)
        if missing:
            raise PluginNotFound(
                "; ".join(not_found_message(n, sources, self.paths.plugin_dirs) for n in missing)
            )

    # -- envs no plugin.json declares (MCP servers' envs) ---------------------------------------

    def current_env(self, spec: EnvSpec) -> tuple[Optional[Marker], str]:
        """The marker of the env published as ``spec.plugin_name``, if it can be used as is;
        else ``None`` and why not. Starts no process.

        For envs made with :meth:`ensure_env` (``ally_core.mcp_plugins`` gives each MCP server
        one): the same checks as a plugin's warm load.
        """
        current = self.store.current(spec.plugin_name)
        if current is None:
            return None, "not installed"
        env_dir, marker = current
        problem = self.cheap_problem(attrs.evolve(spec, env_dir=env_dir), marker)
        if problem is None and marker.request_key != self.request_key(spec):
            problem = "dependencies changed"
        return (marker, "") if problem is None else (None, problem)

    def ensure_env(
        self, spec: EnvSpec, *, force: bool = False, progress: ProgressCallback | None = None
    ) -> tuple[Marker, str]:
        """Make the env of ``spec`` ready and publish it as ``spec.plugin_name``.

        What :meth:`ensure` does for a plugin, for an env described by a spec alone: the same
        store, fingerprint lock, sharing of identical envs, health check and marker-last
        publish. ``force`` builds a new env beside the current one (with
        ``spec.options.upgrade`` for newest versions); the current one stays published if the
        build fails. Returns the env's marker and what was done: ``"none"`` (it was ready),
        ``"built"``, ``"shared"`` or ``"repaired"``. Raises :class:`AllyError`.
        """
        repair = ""
        if not force:
            marker, repair = self.current_env(spec)
            if marker is not None:
                return marker, "none"
            if repair == "not installed":
                repair = ""
        try:
            inputs = self.request_inputs(spec)
            _env, marker, action = self._build(
                spec, _key_of(inputs), inputs, reuse=not force, progress=progress or _silent
            )
        except AllyError:
            raise
        except Exception as exc:  # a runtime's bug, worded like a plugin's
            raise _runtime_error(spec.plugin_name, exc) from exc
        return marker, "repaired" if repair and action == "built" else action

    def _blocked(
        self, source: PluginSource, error: AllyError, *, reason: str = "", **kw: Any
    ) -> PluginOutcome:
        reason = reason or _one_line(error, source.name)
        return PluginOutcome(
            source.name,
            source.plugin_dir,
            "blocked",
            reason=reason,
            manifest=source.manifest,
            error=error,
            **kw,
        )

    def _ready(self, source: PluginSource, env: Optional[EnvInfo], **kw: Any) -> PluginOutcome:
        manifest = source.manifest
        assert manifest is not None
        outcome = PluginOutcome(
            manifest.name,
            source.plugin_dir,
            "ready",
            manifest=manifest,
            env=env,
            warnings=manifest_warnings(manifest),
            **kw,
        )
        outcome.tools = [BoundTool(self, outcome, tool) for tool in manifest.tools]
        return outcome

    def _kept(
        self, source: PluginSource, marker: Marker, failure: str, *, stale: bool, **kw: Any
    ) -> PluginOutcome:
        """Ready on the env published before a rebuild that failed with ``failure``.

        ``stale``: that env was built for other inputs than the plugin's current ones.
        """
        return self._ready(
            source,
            marker.env,
            packages=marker.packages,
            reason=f"{failure} (the previous env is kept and still used)",
            stale=stale,
            **kw,
        )

    def _failure(self, name: str, key: str, *, recent: bool) -> Optional[str]:
        """The reason the last build of ``name`` for exactly ``key`` failed, if it did.

        ``recent``: only a failure younger than ``retry_after`` (a load retries older ones).
        Failures of other inputs (an earlier dependency file, another ALLY_PYTHON) are never
        reported: they say nothing about the current ones.
        """
        remembered = self._recent_failure(name, key)
        if remembered is not None:
            return remembered
        record = self.store.last_failure(name)
        if not record or record.get("request_key") != key:
            return None
        reason = record.get("reason")
        if not isinstance(reason, str):
            return None
        if recent:
            import datetime

            try:
                at = datetime.datetime.fromisoformat(str(record.get("at")))
                age = (datetime.datetime.now(datetime.timezone.utc) - at).total_seconds()
            except (TypeError, ValueError):
                return None
            if not 0 <= age < self.settings.retry_after:
                return None
        return reason

    def _ready_without_env(self, source: PluginSource) -> PluginOutcome:
        """A plugin without a runtime: its tools run plain commands, ready at once."""
        return self._ready(source, None)

    def _unknown_runtime(self, manifest: Manifest) -> RuntimeNotFound:
        assert manifest.runtime is not None
        installed = ", ".join(sorted(self.runtimes())) or "none"
        package = f"ally-runtime-{manifest.runtime.rstrip('0123456789')}"
        return RuntimeNotFound(
            f"{manifest.name}: {MANIFEST_NAME}: $.runtime: unknown runtime "
            f"{manifest.runtime!r} (installed runtimes: {installed}; a runtime is added by "
            f"installing its package, e.g. {package})"
        )

    def _warm(self, source: PluginSource) -> Optional[PluginOutcome]:
        """The outcome if nothing needs building, else ``None``. Spawns no process."""
        if source.manifest is None:
            assert source.error is not None
            return self._blocked(source, source.error)
        manifest = source.manifest
        if manifest.runtime is None:
            return self._ready_without_env(source)
        try:
            spec, key = self._spec_and_key(source)
        except AllyError as exc:
            return self._blocked(source, exc)
        except OSError as exc:
            return self._blocked(
                source,
                ManifestError(
                    manifest.name,
                    MANIFEST_NAME,
                    [f"$.dependencies.file: cannot read: {exc.strerror or exc}"],
                ),
            )
        except Exception as exc:  # a runtime's bug in env_identity blocks its plugin only
            return self._blocked(source, _runtime_error(manifest.name, exc))
        current = self.store.current(manifest.name)
        if current is None:
            return None
        marker = current[1]
        if marker.request_key != key:
            # A rebuild for exactly these inputs failed a moment ago: the previous env keeps
            # serving the plugin (if it still works) until retry_after has passed.
            failure = self._failure(manifest.name, key, recent=True)
            if failure is None or self.cheap_problem(spec, marker) is not None:
                return None
            return self._kept(source, marker, failure, stale=True)
        if self.cheap_problem(spec, marker) is not None:
            return None
        return self._ready(source, marker.env, packages=marker.packages)

    def _spec_and_key(self, source: PluginSource) -> tuple[EnvSpec, str]:
        """The warm path's spec and request key, reused while nothing they depend on changed.

        They depend on the manifest (``source`` is replaced when plugin.json changes), the
        dependency file's bytes, whether the plugin carries bundle artifacts, the runtime's
        :func:`~ally_core.hookspecs.env_context` (recomputed on every load) and the files its
        :func:`~ally_core.hookspecs.identity_files` names. A key found in the warm index under
        the same identities is used without asking the runtime for its env identity. For a
        runtime without ``env_context``, settings, environment variables and config files are
        read once per Host: a host picks up changes to those by creating a new :class:`Host`.
        """
        manifest = source.manifest
        assert manifest is not None
        deps = manifest.dependencies
        plugin_dir = str(source.plugin_dir)
        signature: list[Any] = [
            entry_identity(os.path.join(plugin_dir, deps.file)) if deps and deps.file else None,
            deps is not None and os.path.isdir(f"{plugin_dir}{os.sep}{ARTIFACTS_DIR}"),
        ]
        context = self._context(manifest.runtime)
        cached = self._keys.get(plugin_dir)
        index_id = [source.identity, signature, context] if context and source.identity else None
        if (
            cached is not None
            and cached.source is source
            and cached.signature == signature
            and cached.context == context
            and unchanged(cached.watch)
            and self._still_contained(source, signature[0], cached.spec.dependency_file)
        ):
            if not cached.saved and index_id and self._save_key(plugin_dir, index_id, cached):
                with self._lock:
                    self._keys[plugin_dir] = attrs.evolve(cached, saved=True)
            return cached.spec, cached.key
        found = self.index.get("keys", plugin_dir, index_id) if index_id else None
        indexed = self._indexed_spec(source, found, signature) if found else None
        if indexed is not None:
            spec, key, watch = indexed
        else:
            # The env_dir is the plugin's pointer: checks through it see the current env.
            spec = self.spec_for(manifest, source.plugin_dir)
            # Identities first, then the key: a file edited meanwhile is seen next time.
            files = self.hook.identity_files(spec=spec) if context else None
            watch = identities(map(str, files or ()))
            inputs = self.request_inputs(spec)
            key = _key_of(inputs)
            if context is not None and self._context_now(manifest.runtime) != context:
                # The outside inputs changed while the key was computed: which ones the key
                # saw is unknown, so it is used once and not remembered.
                return spec, key
        entry = _KeyEntry(
            source,
            signature,
            context,
            watch,
            spec,
            key,
            saved=indexed is not None,
            inputs=None if indexed is not None else inputs,
        )
        if not entry.saved and index_id and self._save_key(plugin_dir, index_id, entry):
            entry = attrs.evolve(entry, saved=True)
        with self._lock:
            self._keys[plugin_dir] = entry
        return spec, key

    def _save_key(self, plugin_dir: str, index_id: list[Any], entry: _KeyEntry) -> bool:
        """Put a key into the warm index, unless a file it depends on is too fresh."""
        if not _settled(entry.source.identity, entry.signature[0], *(w[1] for w in entry.watch)):
            return False
        spec = entry.spec
        value = {
            "key": entry.key,
            "watch": entry.watch,
            "dependency_file": str(spec.dependency_file) if spec.dependency_file else None,
            "install_command": spec.install_command,
        }
        self.index.put("keys", plugin_dir, index_id, value)
        return True

    def _indexed_spec(
        self, source: PluginSource, entry: Any, signature: list[Any]
    ) -> Optional[tuple[EnvSpec, str, list[list[Any]]]]:
        """The spec, key and watched files of an index entry, or ``None`` if it cannot be used.

        The entry was stored for this very manifest and dependency file, so the spec is the one
        :meth:`spec_for` gave then; only the containment of the dependency file is checked
        again (it, or a directory on its path, may have become a symlink). A malformed entry
        (another build of ally, a damaged file) is a miss, never an error.
        """
        manifest = source.manifest
        assert manifest is not None and manifest.runtime
        try:
            dep, command, watch = entry["dependency_file"], entry["install_command"], entry["watch"]
            key = entry["key"]
            if not isinstance(key, str) or not unchanged(watch):
                return None
            dep_file = None
            name = manifest.dependencies.file if manifest.dependencies else None
            if name and _plain_file(name, signature[0]):
                if dep != f"{source.plugin_dir}{os.sep}{name}":
                    return None
                dep_file = source.plugin_dir / name
            elif name:
                dep_file = contained_path(source.plugin_dir, name)
                if dep_file is None or str(dep_file) != dep:
                    return None
            spec = self._make_spec(
                manifest,
                source.plugin_dir,
                dep_file,
                tuple(map(str, command)) if command is not None else None,
                self.env_options(
                    artifacts_dir=source.plugin_dir / ARTIFACTS_DIR if signature[1] else None
                ),
            )
        except (KeyError, TypeError, ValueError):
            return None
        return spec, key, watch

    def _still_contained(
        self, source: PluginSource, identity: Optional[list[Any]], dep_file: Optional[Path]
    ) -> bool:
        """Whether the dependency file found at ``dep_file`` before still lies there.

        An unchanged identity does not tell: a directory on its path may have been moved
        out and replaced by a symlink to it (its files keep their identities).
        """
        deps = source.manifest.dependencies if source.manifest else None
        name = deps.file if deps else None
        if not name or _plain_file(name, identity):
            return True
        return contained_path(source.plugin_dir, name) == dep_file

    def _context(self, runtime: Optional[str]) -> Optional[str]:
        """Digest of ``runtime``'s :func:`~ally_core.hookspecs.env_context` (once per load)."""
        contexts = self._contexts
        if runtime not in contexts:
            contexts[runtime] = self._context_now(runtime)
        return contexts[runtime]

    def _context_now(self, runtime: Optional[str]) -> Optional[str]:
        """The digest, or ``None`` when keys of ``runtime`` must not be persisted.

        That is when no runtime describes the context, when its hook fails, and when any
        registered plugin implements ``env_identity`` without ``env_context``: its identity
        could answer (firstresult) with inputs no context describes. The registered plugins
        are part of the digest, so installing or removing one recomputes every key once.
        """
        caller = self.hook.env_context
        described = {impl.plugin_name for impl in caller.get_hookimpls()}
        served = self._served_by_plugin()
        for impl in self.hook.env_identity.get_hookimpls():
            # A plugin that declares its runtime_names answers for those only (the hook
            # contract); one that declares none may answer for any runtime.
            if impl.plugin_name not in described and runtime in served.get(
                impl.plugin_name, [runtime]
            ):
                return None
        try:
            value = caller(runtime=runtime, options=self.env_options())
        except Exception as exc:  # a runtime's bug: fall back to env_identity per plugin
            log.debug("env_context of %r failed: %s", runtime, exc)
            return None
        if value is None:
            return None
        plugins = sorted(name for name, _ in self.pm.list_name_plugin())
        payload = json.dumps([runtime, value, plugins], sort_keys=True, default=str)
        return _context_digest(payload.encode())

    def _served_by_plugin(self) -> dict[str, list[str]]:
        """Registration name -> the ``runtime`` values its ``runtime_names`` declares."""
        if self._served is None:
            self._served = {
                impl.plugin_name: list(impl.function())  # type: ignore[call-overload]
                for impl in self.hook.runtime_names.get_hookimpls()
            }
        return self._served

    def _save_index(self) -> None:
        """Persist what this load derived (only if anything changed)."""
        if self.index.dirty:
            self.index.retain("markers", self.store.marker_paths_in_use())
            self.index.save()

    def cheap_problem(self, spec: EnvSpec, marker: Marker) -> Optional[str]:
        """Why a published env cannot be used as is, or ``None`` (no process is started)."""
        interp = marker.env.interpreter
        if interp.realpath and interp.signature:
            # Plugins share a few base interpreters: each is looked at once per load.
            seen = self._interpreters
            if interp.realpath not in seen:
                try:
                    st = os.stat(interp.realpath)
                    seen[interp.realpath] = (st.st_size, st.st_mtime_ns, st.st_ino)
                except OSError:
                    seen[interp.realpath] = None
            signature = seen[interp.realpath]
            if signature is None:
                return f"interpreter {interp.path} ({interp.kind} {interp.version}) is gone"
            if signature != tuple(interp.signature):
                return (
                    f"interpreter {interp.path} changed since the env was built "
                    f"(was {interp.kind} {interp.version})"
                )
        health: Optional[Health] = self.hook.health_check(spec=spec, env=marker.env, deep=False)
        if health is not None and any(p.repairable for p in health.problems):
            return health.describe()
        return None

    def _recent_failure(self, name: str, key: str) -> Optional[str]:
        with self._lock:
            failure = self._failures.get(name)
        if (
            failure
            and failure[0] == key
            and time.monotonic() - failure[1] < self.settings.retry_after
        ):
            return failure[2]
        return None

    def _cold(
        self,
        source: PluginSource,
        progress: ProgressCallback,
        *,
        force: bool = False,
        upgrade: bool = False,
    ) -> PluginOutcome:
        manifest = source.manifest
        if manifest is None:
            assert source.error is not None
            return self._blocked(source, source.error)
        if manifest.runtime is None:
            return self._ready_without_env(source)
        try:
            spec = self.spec_for(manifest, source.plugin_dir, progress=progress, upgrade=upgrade)
            inputs = self.request_inputs(spec)
            key = _key_of(inputs)
        except AllyError as exc:
            return self._blocked(source, exc)
        except Exception as exc:  # a runtime's bug in env_identity blocks its plugin only
            return self._blocked(source, _runtime_error(manifest.name, exc))
        current = self.store.current(manifest.name)
        # The published env, if it can be used as is: it keeps serving the plugin when a
        # rebuild fails (an update, a reinstall, a changed dependency file).
        previous: Optional[Marker] = None
        repair = ""
        if current is not None:
            env_dir, marker = current
            problem = self.cheap_problem(attrs.evolve(spec, env_dir=env_dir), marker)
            previous = marker if problem is None else None
            if not force:
                # The most specific reason first: a vanished interpreter also changes the
                # key when it was chosen by a setting (ALLY_PYTHON).
                repair = problem or (
                    describe_change(marker.inputs, inputs) if marker.request_key != key else ""
                )
        remembered = None if force else self._recent_failure(manifest.name, key)
        if remembered is not None:
            if previous is not None:
                return self._kept(source, previous, remembered, stale=True)
            return self._blocked(source, InstallFailed(remembered))
        try:
            try:
                env, marker, action = self._build(
                    spec, key, inputs, reuse=not force, progress=progress
                )
            except AllyError:
                raise
            except Exception as exc:
                # A runtime's bug blocks its plugin only (KeyboardInterrupt still propagates).
                raise _runtime_error(manifest.name, exc) from exc
        except AllyError as exc:
            reason = _one_line(exc, source.name)
            if previous is None or previous.request_key != key:
                # Remembered for these inputs: until they change (or retry_after passes),
                # loads do not build again, and `list` says why.
                with self._lock:
                    self._failures[manifest.name] = (key, time.monotonic(), reason)
                self.store.record_failure(manifest.name, key, reason)
            if previous is not None:
                # The previous env was never unpublished: it keeps serving the plugin.
                kept = self._kept(
                    source, previous, reason, stale=previous.request_key != key, action="failed"
                )
                progress(ProgressEvent(manifest.name, "failed", kept.reason))
                return kept
            progress(ProgressEvent(manifest.name, "failed", reason))
            return self._blocked(source, exc, action="failed", reason=reason)
        with self._lock:
            self._failures.pop(manifest.name, None)
        self.store.clear_failure(manifest.name)
        if upgrade:
            action = "updated"
        elif repair and action == "built":
            action = "repaired"
        outcome = self._ready(
            source, env, action=action, repair_reason=repair, packages=marker.packages
        )
        if self.workers is not None and action != "none":
            self.workers.after_build(outcome)  # background bytecode compile, warm worker
        return outcome

    def _build(
        self,
        spec: EnvSpec,
        key: str,
        inputs: Mapping[str, Any],
        *,
        reuse: bool,
        progress: ProgressCallback,
    ) -> tuple[EnvInfo, Marker, str]:
        name = spec.plugin_name
        interpreter = self.hook.resolve_interpreter(spec=spec)
        if interpreter is None:
            raise RuntimeNotFound(
                f"{name}: no runtime resolved an interpreter for {spec.runtime!r}"
            )
        import hashlib

        fingerprint = hashlib.sha256(
            f"{key}\0{interpreter.realpath or interpreter.path}\0{interpreter.version}".encode()
        ).hexdigest()
        # An identical env that is already published needs no lock: its marker was written
        # last, so it is complete (this is the fast path of a second plugin).
        shared = self._reuse(spec, fingerprint) if reuse else None
        if shared is not None:
            return shared
        lock = self.store.lock(fingerprint[:16])
        from filelock import Timeout

        with store_errors("cannot take the build lock"):
            try:
                lock.acquire(timeout=0)
            except Timeout:
                progress(
                    ProgressEvent(
                        name, "waiting", f"Waiting for another process installing '{name}'..."
                    )
                )
                lock.acquire()
        try:
            # Another process may have built it while this one waited for the lock.
            shared = self._reuse(spec, fingerprint) if reuse else None
            if shared is not None:
                return shared
            for leftover in self.store.unfinished(busy=frozenset({fingerprint[:16]})):
                self.store.remove_path(leftover)
            env_dir = self.store.new_env_dir(fingerprint)
            built = attrs.evolve(spec, env_dir=env_dir)
            progress(ProgressEvent(name, "start", f"Installing dependencies for '{name}'..."))
            try:
                env, marker = self._build_into(built, key, inputs, fingerprint, interpreter)
                self.store.record_origin(name, spec.plugin_dir)
                self.store.publish(name, env_dir)
            except BaseException:
                published = self.store.current(name)
                if published is None or published[0] != env_dir:
                    self.store.discard(env_dir)
                raise
            progress(ProgressEvent(name, "done", f"Dependencies installed for '{name}'", 1.0))
            return env, marker, "built"
        finally:
            lock.release()

    def _reuse(self, spec: EnvSpec, fingerprint: str) -> Optional[tuple[EnvInfo, Marker, str]]:
        """Point the plugin at a published, healthy env of ``fingerprint``, if there is one.

        No lock (a lock file costs a 10 ms import of filelock): gc may be deleting the env
        that ``find`` just returned. Both sides write, then look: this side publishes and
        then checks the env is still there; gc hides the env and then checks no pointer
        appeared (and gives it back if one did). Whatever the interleaving, one of them sees
        the other, so a pointer never stays on a deleted env.
        """
        found = self.store.find(fingerprint)
        if (
            found is None
            or self.cheap_problem(attrs.evolve(spec, env_dir=found[0]), found[1]) is not None
        ):
            return None
        self.store.record_origin(spec.plugin_name, spec.plugin_dir)
        self.store.publish(spec.plugin_name, found[0])
        if not os.path.isfile(found[0] / MARKER):
            # gc took it between find and publish: build (or wait for gc to give it back).
            return None
        action = "shared" if found[1].plugin != spec.plugin_name else "none"
        return found[1].env, found[1], action

    def _build_into(
        self,
        spec: EnvSpec,
        key: str,
        inputs: Mapping[str, Any],
        fingerprint: str,
        interpreter: Any,
    ) -> tuple[EnvInfo, Marker]:
        env = self.hook.create_env(spec=spec, interpreter=interpreter)
        if env is None:
            raise RuntimeNotFound(
                f"{spec.plugin_name}: no runtime created an env for {spec.runtime!r}"
            )
        result = self.hook.install_deps(spec=spec, env=env)
        spec.progress("check", "Checking the environment")
        health = self.hook.health_check(spec=spec, env=env, deep=True) or Health()
        if not health.ok:
            raise InstallFailed(
                f"{spec.plugin_name}: the new env failed its health check: {health.describe()}"
            )
        marker = Marker(
            fingerprint=fingerprint,
            request_key=key,
            runtime=spec.runtime,
            env=env,
            packages=dict(result.packages) if result else {},
            created_at=now_iso(),
            plugin=spec.plugin_name,
            inputs=dict(inputs),
        )
        self.store.write_marker(spec.env_dir, marker)
        return env, marker

    # -- inspection and maintenance ------------------------------------------------------------

    def status(self) -> list[PluginOutcome]:
        """Every plugin's state without building anything (for ``ally list``)."""
        outcomes = [self._warm(source) or self._explain(source) for source in self.discover()]
        self._save_index()
        return outcomes

    def _explain(self, source: PluginSource) -> PluginOutcome:
        """The state of a plugin :meth:`_warm` cannot make ready, and why, judged with the
        current inputs only (no process; nothing is built)."""
        manifest = source.manifest
        assert manifest is not None
        try:
            spec, key = self._spec_and_key(source)
        except Exception as exc:  # _warm reported it already; here it is only a reason
            return _pending(source, _one_line(exc))
        failure = self._failure(manifest.name, key, recent=False)
        current = self.store.current(manifest.name)
        if current is None:
            if failure is not None:
                return _pending(source, f"install failed: {failure}")
            if os.path.lexists(self.store.pointer(manifest.name)):
                return _pending(source, "needs rebuild: its env is missing or incomplete")
            return _pending(source, "not installed")
        marker = current[1]
        problem = self.cheap_problem(spec, marker)
        if problem is not None:
            if failure is not None:
                return _pending(source, f"install failed: {failure}")
            return _pending(source, f"needs rebuild: {problem}")
        if failure is not None:
            # What a load does within retry_after, and again after a retry that fails.
            return self._kept(source, marker, failure, stale=True)
        entry = self._keys.get(str(source.plugin_dir))
        inputs = entry.inputs if entry is not None and entry.spec is spec else None
        try:
            inputs = inputs if inputs is not None else self.request_inputs(spec)
        except Exception as exc:  # a runtime's bug: the state is still known
            return _pending(source, f"needs rebuild ({_one_line(exc)})")
        return _pending(source, f"needs rebuild: {describe_change(marker.inputs, inputs)}")

    def doctor(
        self,
        names: Iterable[str] | None = None,
        *,
        fix: bool = False,
        progress: ProgressCallback | None = None,
    ) -> list[tuple[PluginOutcome, Health]]:
        """Deep-check envs; with ``fix`` rebuild the broken ones."""
        wanted = set(names) if names else None
        reports = []
        sources = self.discover()
        if wanted is not None:
            self._check_names(wanted, sources, dirs=False)
        for source in sources:
            if wanted is not None and source.name not in wanted:
                continue
            outcome = self._warm(source) or self._explain(source)
            if outcome.status == "pending":
                health = Health((Problem(outcome.reason),))
            elif outcome.env is None:
                health = Health() if outcome.ready else Health((Problem(outcome.reason, False),))
            else:
                assert outcome.manifest is not None
                spec = self.spec_for(outcome.manifest, source.plugin_dir)
                spec = attrs.evolve(spec, env_dir=outcome.env.path)
                health = self.hook.health_check(spec=spec, env=outcome.env, deep=True) or Health()
            if (
                fix
                and not health.ok
                and source.manifest is not None
                and any(p.repairable for p in health.problems)
            ):
                outcome = self.ensure(source.name, force=True, progress=progress)
                if outcome.ready and outcome.action != "failed":
                    outcome.action = "repaired"
                    outcome.repair_reason = health.describe()
            reports.append((outcome, health))
        return reports

    def remove(self, name: str) -> Removal:
        """Remove a plugin's env (never its source): its pointer, and the env itself unless
        another plugin uses it. Returns a ``Removal``, true if a pointer existed.

        The env it used before its last update (the backup) and other copies of the same
        env go too, so a later install builds afresh: damage in the old env is never reused.
        A plugin directory :meth:`add_plugin_dir` remembered for ``name`` is forgotten.
        """
        from filelock import Timeout

        from .paths import check_plugin_name
        from .store import disk_usage

        check_plugin_name(name, source="argument")
        forgot = [
            d
            for d in self.linked_dirs()
            if d.name == name
            or ((source := self._read_source(d.parent, d.name)) is not None and source.name == name)
        ]
        self.forget_plugin_dirs(forgot)
        self.store.clear_failure(name)
        with store_errors(f"cannot remove the env of {name!r}"):
            envs = [
                env
                for env in (
                    self.store.pointers().get(name),
                    self.store.backup(name),
                )
                if env is not None and env.parent == self.store.store_dir.resolve()
            ]
            fingerprints = {m.fingerprint for e in envs if (m := self.store.read_marker(e))}
            existed = self.store.unpublish(name)
            for fingerprint in fingerprints:
                envs += [e.resolve() for e, _m in self.store.find_all(fingerprint)]
            deleted: list[tuple[Path, int]] = []
            shared: list[Path] = []
            for env in dict.fromkeys(envs):
                env_dir = self.store.store_dir / env.name
                try:
                    with self.store.lock(env.name.split("-", 1)[0], timeout=0):
                        if env in set(self.store.pointers().values()):
                            shared.append(env_dir)
                            continue
                        size = disk_usage(env_dir) if env_dir.is_dir() else 0
                        if self.store.discard(env_dir, unless_used=True):
                            deleted.append((env_dir, size))
                        elif env_dir.is_dir():
                            shared.append(env_dir)
                except Timeout:
                    continue  # a build of this very env is running: it publishes it anew
        return Removal(name, existed, tuple(deleted), tuple(shared), tuple(forgot))

    def _still_installed(self, name: str) -> bool:
        """Whether the directory ``name``'s env was published for still holds that plugin."""
        origin = self.store.origin(name)
        if origin is None:
            return False
        source = self._read_source(origin.parent, origin.name)
        if source is None:
            return False
        # A manifest that cannot be read right now is still a plugin there.
        return source.manifest is None or source.manifest.name == name

    def _state_files(self, pattern: str) -> list[Path]:
        state = self.paths.state_dir
        return sorted(state.glob(pattern)) if state.is_dir() else []

    def gc(self, *, dry_run: bool = False) -> list[tuple[Path, int, str]]:
        """Remove envs nobody points to, pointers of plugins that are gone, leftovers, backups.

        Returns ``(path, bytes, why)`` for everything removed (or that would be).
        """
        from filelock import Timeout

        from .mcp_plugins.discovery import pointer_names
        from .mcp_plugins.servers import collect_state
        from .store import disk_usage

        # MCP servers' envs are published under names no plugin.json can take.
        plugins = {s.name for s in self.discover()} | pointer_names(self)
        removed: list[tuple[Path, int, str]] = collect_state(self, plugins, dry_run=dry_run)
        with store_errors("gc"):
            gone_dirs = [d for d in self.linked_dirs() if not (d / MANIFEST_NAME).is_file()]
            removed += [(d, 0, "remembered plugin directory is gone") for d in gone_dirs]
            if gone_dirs and not dry_run:
                self.forget_plugin_dirs(gone_dirs)
            for name in sorted(self.store.pointers()):
                if name in plugins:
                    continue
                if self._still_installed(name):
                    # In a directory this process does not look in (another --plugins-dir,
                    # ALLY_PLUGIN_DIRS of another shell): its env stays.
                    plugins.add(name)
                    continue
                removed.append((self.store.pointer(name), 0, f"plugin {name!r} is gone"))
                if not dry_run:
                    self.store.unpublish(name)
            for backup in self._state_files("*.previous"):
                removed.append((backup, 0, "backup from an update"))
                if not dry_run:
                    backup.unlink()
            for partial in self._state_files(".warm-index.*.tmp"):
                # A write of a warm index (of any Python) killed before its os.replace.
                removed.append((partial, disk_usage(partial), "unfinished warm-index write"))
                if not dry_run:
                    partial.unlink(missing_ok=True)
            for legacy in (f for n in LEGACY_NAMES for f in self._state_files(n)):
                removed.append((legacy, disk_usage(legacy), "warm index of an older ally"))
                if not dry_run:
                    legacy.unlink(missing_ok=True)
            for leftover in self.store.unfinished(min_age=0):
                removed.append((leftover, disk_usage(leftover), "unfinished build"))
                if not dry_run:
                    self.store.remove_path(leftover)
            referenced = (
                {p for p in self.store.pointers().values()}
                if not dry_run
                else {p for n, p in self.store.pointers().items() if n in plugins}
            )
            if self.store.store_dir.is_dir():
                for env_dir in sorted(self.store.store_dir.iterdir()):
                    if env_dir.name.startswith(".") or env_dir.resolve() in referenced:
                        continue
                    if any(env_dir == r[0] for r in removed):
                        continue
                    if dry_run:
                        removed.append((env_dir, disk_usage(env_dir), "no plugin uses it"))
                        continue
                    # Its fingerprint's lock: a build publishing it right now keeps it.
                    try:
                        with self.store.lock(env_dir.name.split("-", 1)[0], timeout=0):
                            if env_dir.resolve() in set(self.store.pointers().values()):
                                continue
                            size = disk_usage(env_dir)
                            # A plugin starting to share it (no lock) may point at it after
                            # the look above: discard looks again once it is hidden.
                            if self.store.discard(env_dir, unless_used=True):
                                removed.append((env_dir, size, "no plugin uses it"))
                    except Timeout:
                        continue
        return removed
