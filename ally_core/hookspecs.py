"""The runtime author's contract: the hooks ally calls to build and use environments.

A *runtime* is a pluggy plugin (a module or object with functions marked
:data:`ally_core.hookimpl`) registered through the ``ally`` entry-point group. The core knows
nothing about any language: everything language-specific happens in these hooks. The built-in
Python runtime (:mod:`ally_core.runtimes.python`) is registered exactly like a third-party one.

Call order when a plugin's env is not ready:

1. :func:`env_identity` (also on a Host's first warm load of a plugin, unless the warm index
   holds its key: it must be cheap and spawn nothing),
2. :func:`resolve_interpreter`,
3. :func:`create_env` into ``spec.env_dir`` (a fresh directory at its final location),
4. :func:`install_deps`,
5. :func:`health_check` with ``deep=True``; only a healthy env is published.

On a warm load only :func:`env_context` (once per runtime), :func:`env_identity` (when the
key is not cached) and :func:`health_check` with ``deep=False`` run; :func:`identity_files`
runs when a key is cached.
``ally bundle`` calls :func:`bundle_artifacts` on a ready env. ``ally run`` calls
:func:`watch_paths` on a ready env (the quick path's record).

Hooks may be called from several threads at once (different plugins build in parallel)
and from several processes (the core serialises builds of one env with a file lock).

The building hooks are ``firstresult``: an implementation returns ``None`` when
``spec.runtime`` is not one of its :func:`runtime_names`, and the next one is asked.
Errors are reported by raising :class:`ally_core.AllyError` subclasses
(:class:`~ally_core.InterpreterNotFound`, :class:`~ally_core.InstallFailed`); any other
exception blocks the plugin with the exception's text.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Optional

import pluggy

from .envs import EnvInfo, EnvOptions, EnvSpec, Health, InstallResult, Interpreter

__all__ = ["PROJECT_NAME", "hookimpl", "hookspec"]

#: The pluggy project name; also the entry-point group runtimes register under.
PROJECT_NAME = "ally"

#: Marks the hook specifications below (ally's own use).
hookspec = pluggy.HookspecMarker(PROJECT_NAME)
#: Marks a runtime's hook implementations: ``@hookimpl def create_env(spec, interpreter): ...``.
hookimpl = pluggy.HookimplMarker(PROJECT_NAME)


@hookspec
def runtime_names() -> Sequence[str]:  # type: ignore[empty-body]
    """Return the ``runtime`` values (as written in ``plugin.json``) this runtime serves.

    Called when ally needs to list installed runtimes (``ally runtimes``) and to word the
    error for a manifest whose ``runtime`` nobody serves. All results are collected.

    :return: e.g. ``["python3", "python"]``.

    .. versionadded:: 0.1
    """


@hookspec(firstresult=True)
def env_identity(spec: EnvSpec) -> Optional[Mapping[str, Any]]:
    """Return extra inputs that define the env, beyond what the core already hashes.

    The core's fingerprint already covers the runtime name, the dependency file's bytes,
    ``install_command``, the ``runtime_version`` constraint and the ``dependencies`` options.
    Add what else changes the result of an install: lock files, installer backend and
    version, index options, or ``spec.plugin_dir`` when the install reads other files of the
    plugin (an env that reads plugin files must not be shared with another plugin).

    Called on cold loads and on a Host's first warm load of each plugin (a Host reuses the
    result while the manifest and the dependency file are unchanged): it must not spawn
    processes and should cost microseconds. Values must be JSON-serialisable. It must not depend on
    ``spec.options.upgrade`` or ``spec.options.offline``: either would make the next normal
    load undo an update, or rebuild an env built online when going offline.

    :param spec: the env being loaded.
    :return: a JSON-serialisable mapping, or ``None`` if ``spec.runtime`` is not served.
        Stops at first non-None result.

    .. versionadded:: 0.1
    """


@hookspec(firstresult=True)
def env_context(runtime: str, options: EnvOptions) -> Optional[Mapping[str, Any]]:
    """Return everything outside the plugin that ``env_identity`` reads.

    Lets a fresh process trust a request key it persisted earlier instead of calling
    :func:`env_identity` for every plugin: the core keeps keys in a warm index and reuses one
    while the manifest, the dependency file, the files named by :func:`identity_files` and
    this context are all unchanged. Include environment variables and the identities of
    config files you read, tool versions you record, and your own package's version (so that
    upgrading the runtime is noticed). Leave out what comes from ``spec`` or the plugin's
    files.

    Called once per runtime for every load of a :class:`~ally_core.Host` (also on repeat
    loads of one Host, so a changed pip.conf is seen by a long-running host): it must not
    spawn processes and should cost microseconds. Not implementing it is correct, only
    slower: :func:`env_identity` is then called for each plugin by each new Host.

    :param runtime: a ``runtime`` value this runtime may serve (from a manifest).
    :param options: the host's env options (``upgrade`` and ``artifacts_dir`` unset).
    :return: a JSON-serialisable mapping, or ``None`` if ``runtime`` is not served.
        Stops at first non-None result.

    .. versionadded:: 0.1
    """


@hookspec(firstresult=True)
def identity_files(spec: EnvSpec) -> Optional[Sequence[Path]]:
    """Return the plugin files, besides the dependency file, that ``env_identity`` reads.

    For example lock files, ``.npmrc`` or a ``vendor/cache`` directory.

    Name files that may not exist yet as well: creating one must change the key. The core
    compares their stat identities (size, mtime, inode, ctime) on each warm load. Only
    consulted when :func:`env_context` is implemented for the runtime.

    :param spec: the env being loaded.
    :return: paths (existing or not), or ``None`` if ``spec.runtime`` is not served.
        Stops at first non-None result.

    .. versionadded:: 0.1
    """


@hookspec(firstresult=True)
def resolve_interpreter(spec: EnvSpec) -> Optional[Interpreter]:
    """Find the base interpreter to build the env with (and to run tools through).

    Called on a cold load, before :func:`create_env`. Must return an absolute path that is
    not a shim (resolve pyenv/asdf shims to the real binary) and honour
    ``spec.runtime_version`` if given. Fill ``realpath`` and ``signature`` (``st_size,
    st_mtime_ns, st_ino`` of the realpath): the core compares them on every load, without
    starting a process, to notice an interpreter that was removed or replaced. Raise
    :class:`~ally_core.InterpreterNotFound` with a one-line reason naming what was looked for
    if nothing fits.

    :param spec: the env being built.
    :return: the interpreter, or ``None`` if ``spec.runtime`` is not served.
        Stops at first non-None result.

    .. versionadded:: 0.1
    """


@hookspec(firstresult=True)
def create_env(spec: EnvSpec, interpreter: Interpreter) -> Optional[EnvInfo]:
    """Create an empty environment in ``spec.env_dir``.

    ``spec.env_dir`` does not exist yet; its parent does. The directory is the env's final
    location (ally publishes it by pointing the plugin at it, never by moving it), so
    absolute paths written into scripts stay valid. If the process is killed, the core removes
    the unfinished directory later: do not try to clean up here.

    Report phases through ``spec.progress(...)``.

    :param spec: the env being built.
    :param interpreter: the result of :func:`resolve_interpreter`.
    :return: how to run things in the env, or ``None`` if ``spec.runtime`` is not served.
        Stops at first non-None result.

    .. versionadded:: 0.1
    """


@hookspec(firstresult=True)
def install_deps(spec: EnvSpec, env: EnvInfo) -> Optional[InstallResult]:
    """Install the plugin's dependencies into ``env``.

    Install ``spec.dependency_file`` or, if ``spec.install_command`` is set, run that command
    (no shell, the env activated through its variables, in ``spec.plugin_dir`` — or in
    ``spec.env_dir`` for runtimes whose installer writes beside its dependency file, so that
    the plugin directory is never written to). Honour
    ``spec.options`` (offline, index, cache, ``upgrade``). Stream progress through
    ``spec.progress``. On failure raise :class:`~ally_core.InstallFailed` with the failing
    command and the tail of its stderr.

    :param spec: the env being built.
    :param env: the result of :func:`create_env`.
    :return: the installed packages (and, in :attr:`~ally_core.InstallResult.data`, what
        the install recorded of the env for its later health checks, added to the env's
        data in its marker), or ``None`` if ``spec.runtime`` is not served. Stops at first
        non-None result.

    .. versionadded:: 0.1
    """


@hookspec(firstresult=True)
def health_check(spec: EnvSpec, env: EnvInfo, deep: bool) -> Optional[Health]:
    """Check that a built env still works.

    With ``deep=False`` it is called on **every** load after the core has checked the marker,
    the fingerprint and that the base interpreter is unchanged: it must not spawn processes
    (check that files exist, symlinks resolve). With ``deep=True`` (after a build, and for
    ``ally doctor``) it may run the env's tools (``pip check``, ``npm ls``, imports).

    A problem marked ``repairable`` makes the core rebuild the env on the next load.

    :param spec: the env being checked.
    :param env: the env as recorded in its marker.
    :param deep: whether an expensive check is wanted.
    :return: the health, or ``None`` if ``spec.runtime`` is not served.
        Stops at first non-None result.

    .. versionadded:: 0.1
    """


@hookspec(firstresult=True)
def watch_paths(spec: EnvSpec, env: EnvInfo) -> Optional[Sequence[Path]]:
    """Return the paths whose identities decide this runtime's answers for a ready env.

    The quick ``ally run`` path (:mod:`ally_core.quick_run`) starts a tool without importing
    ally's core, so without calling any hook. It may do so while every path named here has
    the identity (size, mtime, inode, ctime, following symlinks; or absence) it had when the
    full path last found the env ready, and the environment variables are the same: the
    paths must be all that, besides variables and what the core watches itself (the
    manifest, the dependency file, :func:`identity_files`, the env's marker, its base
    interpreter, ally's own installation), :func:`env_context`, :func:`env_identity` and a
    quick :func:`health_check` read. Name directories whose entries matter (a directory's
    mtime changes when an entry is added, removed or renamed) and files that may not exist
    yet (creating one must count as a change).

    Called by the full path after a load found the env ready; it must not spawn processes.
    Not implementing it is correct, only slower: every ``ally run`` of the runtime's plugins
    takes the full path.

    :param spec: the env's spec (``env_dir`` is the plugin's pointer to its env).
    :param env: the ready env (as recorded in its marker).
    :return: paths (existing or not), or ``None`` if ``spec.runtime`` is not served.
        Stops at first non-None result.

    .. versionadded:: 0.2
    """


@hookspec(firstresult=True)
def bundle_artifacts(spec: EnvSpec, env: EnvInfo, dest: Path) -> Optional[Mapping[str, Any]]:
    """Save into ``dest`` every artifact needed to rebuild ``env`` with no network.

    Called by ``ally bundle`` on a ready env. Write the artifacts (wheels for this platform and
    interpreter, npm tarballs, gems, …) into ``dest`` (an existing empty directory) and
    return the lock: exact versions with hashes, e.g.
    ``{"packages": [{"name": "x", "version": "1.0", "file": "x-1.0.whl", "sha256": "…"}]}``.

    When the bundle is installed, ``spec.options.artifacts_dir`` points at a copy of ``dest``
    and :func:`install_deps` must install from it alone.

    :param spec: the env's spec.
    :param env: the ready env (as recorded in its marker).
    :param dest: the directory to fill.
    :return: the lock data (JSON-serialisable), or ``None`` if ``spec.runtime`` is not served.
        Stops at first non-None result.

    .. versionadded:: 0.1
    """
