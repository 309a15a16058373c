"""Specs and request keys: what a plugin declares about its env, hashed; and the warm key cache.

A plugin's :class:`~ally_core.EnvSpec` is its manifest checked against the file system; its
*request key* hashes the env's inputs (:meth:`KeyMaker.request_inputs`): the runtime, the
dependency file's bytes, the install command, the options, and the runtime's
``env_identity``. An env is reused while its marker records the same key.

Warm loads must not ask the runtime for every plugin: :meth:`KeyMaker.spec_and_key` keeps the
key in memory and in the warm index while nothing it depends on changed (the manifest, the
dependency file, the runtime's ``env_context`` and ``identity_files``).
"""

from __future__ import annotations

import json
import os
import re
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Callable, Optional

import attrs

from .config import Settings
from .discovery import PluginSource, settled
from .dispatch import Dispatch
from .envs import EnvOptions, EnvSpec, ProgressEvent
from .errors import ManifestError, UnsafePath
from .manifest import MANIFEST_NAME, Dependencies, Manifest
from .paths import ARTIFACTS_DIR, AllyPaths, artifacts_dir_of, contained_path, relative_parts
from .store import EnvStore
from .warm_index import WarmIndex, entry_identity, identities, unchanged

__all__ = ["KeyMaker", "describe_change", "key_of"]

ProgressCallback = Callable[[ProgressEvent], None]


def _silent(event: ProgressEvent) -> None:
    return None


@attrs.frozen
class _KeyEntry:
    """What :meth:`KeyMaker.spec_and_key` derived for a plugin, and what it depends on."""

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


def _context_digest(data: bytes) -> str:
    """BLAKE2b of a runtime's env context: computed on every load, so without importing
    :mod:`hashlib`, which loads OpenSSL (a few ms per ``ally`` run); the builtin module it
    takes BLAKE2 from is used directly when it is there."""
    try:
        from _blake2 import blake2b
    except ImportError:  # pragma: no cover - a Python built without it
        from hashlib import blake2b
    return blake2b(data, digest_size=32).hexdigest()


def key_of(inputs: Mapping[str, Any]) -> str:
    """The request key of :meth:`KeyMaker.request_inputs`: a sha256 of the sorted JSON."""
    import hashlib  # not on warm loads: their keys come from the warm index

    return hashlib.sha256(json.dumps(inputs, sort_keys=True, default=str).encode()).hexdigest()


def _plain_file(relative: str, identity: Optional[list[Any]]) -> bool:
    """Whether the dependency file ``relative``, of this :func:`entry_identity`, lies right in
    the plugin dir and is not a symlink: then it cannot lie outside (no further system call).
    """
    return identity is not None and len(identity) == 4 and relative_parts(relative) == [relative]


class KeyMaker:
    """Specs and request keys of one home's plugins. Thread-safe."""

    def __init__(
        self,
        paths: AllyPaths,
        settings: Settings,
        store: EnvStore,
        index: WarmIndex,
        dispatch: Dispatch,
    ) -> None:
        self.paths = paths
        self.settings = settings
        self.store = store
        self.index = index
        self.dispatch = dispatch
        self._lock = threading.Lock()
        self._keys: dict[str, _KeyEntry] = {}
        # Digest of each runtime's env_context, computed once per load (see new_load).
        self._contexts: dict[Optional[str], Optional[str]] = {}
        self._base_options: Optional[EnvOptions] = None

    def new_load(self) -> None:
        """Forget what is computed once per load (the runtimes' contexts)."""
        self._contexts = {}

    # -- specs ---------------------------------------------------------------------------------

    def env_options(
        self, *, upgrade: bool = False, artifacts_dir: Path | None = None
    ) -> EnvOptions:
        """The options every env of this home is built with."""
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
        self.dispatch.check_runtime(manifest.name, manifest.runtime)
        problems: list[str] = []
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
            import shlex

            try:
                command = tuple(shlex.split(deps.install_command))
            except ValueError as exc:
                problems.append(f"$.dependencies.install_command: {exc}")
            if command == ():
                problems.append("$.dependencies.install_command: is empty")
            if "\0" in deps.install_command:
                problems.append("$.dependencies.install_command: contains a NUL byte")
        if problems:
            raise ManifestError(manifest.name, MANIFEST_NAME, problems)
        # Nothing to install: the empty env stays the one every such plugin shares.
        artifacts = artifacts_dir_of(plugin_dir) if manifest.dependencies else None
        return self.make_spec(
            manifest,
            plugin_dir,
            dep_file,
            command,
            self.env_options(upgrade=upgrade, artifacts_dir=artifacts),
            env_dir=env_dir,
            progress=progress,
        )

    def make_spec(
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

    # -- request keys --------------------------------------------------------------------------

    def request_inputs(self, spec: EnvSpec) -> dict[str, Any]:
        """What the request key hashes, as plain JSON data: the env's inputs.

        Each env's marker keeps them, so a rebuild can say what changed.
        """
        import hashlib

        dep_bytes = spec.dependency_file.read_bytes() if spec.dependency_file else b""
        identity = self.dispatch.env_identity(spec)
        artifacts = spec.options.artifacts_dir
        request = {
            "runtime": spec.runtime,
            "dependency_file": spec.dependency_file.name if spec.dependency_file else None,
            "dependency_sha256": hashlib.sha256(dep_bytes).hexdigest(),
            "install_command": spec.install_command,
            "runtime_version": spec.runtime_version,
            "dependency_options": spec.dependency_options,
            "artifacts_dir": str(artifacts) if artifacts else None,
            "identity": identity,
        }
        plain: dict[str, Any] = json.loads(json.dumps(request, sort_keys=True, default=str))
        return plain

    def request_key(self, spec: EnvSpec) -> str:
        """Hash of everything the plugin declares about its env (cheap: no processes)."""
        return key_of(self.request_inputs(spec))

    def inputs_of(self, source: PluginSource, spec: EnvSpec) -> Optional[dict[str, Any]]:
        """The inputs :meth:`spec_and_key` computed ``spec``'s key from, if it did."""
        entry = self._keys.get(str(source.plugin_dir))
        return entry.inputs if entry is not None and entry.spec is spec else None

    def watched_files(self, source: PluginSource) -> Optional[list[str]]:
        """The files the runtime's ``identity_files`` named for the key :meth:`spec_and_key`
        holds for ``source`` (``None`` when it holds none)."""
        entry = self._keys.get(str(source.plugin_dir))
        return [str(w[0]) for w in entry.watch] if entry is not None else None

    def spec_and_key(self, source: PluginSource) -> tuple[EnvSpec, str]:
        """The warm path's spec and request key, reused while nothing they depend on changed.

        They depend on the manifest (``source`` is replaced when plugin.json changes), the
        dependency file's bytes, whether the plugin carries bundle artifacts, the runtime's
        :func:`~ally_core.hookspecs.env_context` (recomputed on every load) and the files its
        :func:`~ally_core.hookspecs.identity_files` names. A key found in the warm index under
        the same identities is used without asking the runtime for its env identity. For a
        runtime without ``env_context``, settings, environment variables and config files are
        read once per Host: a host picks up changes to those by creating a new Host.
        """
        manifest = source.manifest
        assert manifest is not None
        deps = manifest.dependencies
        plugin_dir = str(source.plugin_dir)
        signature: list[Any] = [
            entry_identity(os.path.join(plugin_dir, deps.file)) if deps and deps.file else None,
            deps is not None and os.path.isdir(f"{plugin_dir}{os.sep}{ARTIFACTS_DIR}"),
        ]
        context = self.context(manifest.runtime)
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
        inputs: Optional[dict[str, Any]] = None
        if indexed is not None:
            spec, key, watch = indexed
        else:
            # The env_dir is the plugin's pointer: checks through it see the current env.
            spec = self.spec_for(manifest, source.plugin_dir)
            # Identities first, then the key: a file edited meanwhile is seen next time.
            files = self.dispatch.identity_files(spec) if context else None
            watch = identities(map(str, files or ()))
            inputs = self.request_inputs(spec)
            key = key_of(inputs)
            if context is not None and self.context_now(manifest.runtime) != context:
                # The outside inputs changed while the key was computed: which ones the key
                # saw is unknown, so it is used once and not remembered.
                return spec, key
        entry = _KeyEntry(
            source, signature, context, watch, spec, key, saved=indexed is not None, inputs=inputs
        )
        if not entry.saved and index_id and self._save_key(plugin_dir, index_id, entry):
            entry = attrs.evolve(entry, saved=True)
        with self._lock:
            self._keys[plugin_dir] = entry
        return spec, key

    def _save_key(self, plugin_dir: str, index_id: list[Any], entry: _KeyEntry) -> bool:
        """Put a key into the warm index, unless a file it depends on is too fresh."""
        if not settled(entry.source.identity, entry.signature[0], *(w[1] for w in entry.watch)):
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
            artifacts = source.plugin_dir / ARTIFACTS_DIR if signature[1] else None
            spec = self.make_spec(
                manifest,
                source.plugin_dir,
                dep_file,
                tuple(map(str, command)) if command is not None else None,
                self.env_options(artifacts_dir=artifacts),
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

    # -- the runtimes' contexts ----------------------------------------------------------------

    def context(self, runtime: Optional[str]) -> Optional[str]:
        """Digest of ``runtime``'s :func:`~ally_core.hookspecs.env_context` (once per load)."""
        contexts = self._contexts
        if runtime not in contexts:
            contexts[runtime] = self.context_now(runtime)
        return contexts[runtime]

    def context_now(self, runtime: Optional[str]) -> Optional[str]:
        """The digest, or ``None`` when keys of ``runtime`` must not be persisted.

        That is when no runtime describes the context, when its hook fails, and when any
        registered plugin implements ``env_identity`` without ``env_context``: its identity
        could answer (firstresult) with inputs no context describes. The registered plugins
        are part of the digest, so installing or removing one recomputes every key once.
        """
        if runtime is None:
            return None
        dispatch = self.dispatch
        described = set(dispatch.implementers("env_context"))
        for plugin in dispatch.implementers("env_identity"):
            if plugin not in described and dispatch.serves(plugin, runtime):
                return None
        value = dispatch.env_context(runtime, self.env_options())
        if value is None:
            return None
        payload = json.dumps([runtime, value, dispatch.plugin_names()], sort_keys=True, default=str)
        return _context_digest(payload.encode())


# -- what changed between an env's inputs and the current ones ---------------------------------

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
#: A file's hash, as runtimes put it into an identity: never worth showing.
_DIGEST = re.compile(r"[0-9a-f]{32,}")


def _shown(value: Any) -> Optional[str]:
    """A short rendering of a changed scalar input, ``None`` for structured ones."""
    if value is None:
        return "unset"
    if isinstance(value, (bool, int, float)):
        return json.dumps(value)
    if isinstance(value, str) and not _DIGEST.fullmatch(value):
        return value if len(value) <= 120 else value[:117] + "..."
    return None


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
