"""Making each MCP server ready: its launcher, its env (pinned), its launch record.

A server started by a package runner or an interpreter (see :mod:`.launchers`) gets an env in
ally's store, published under ``<plugin>+<server>`` and built with
:meth:`Host.ensure_env <ally_core.Host.ensure_env>`: the same locks, sharing, health checks
and marker-last publish as any plugin's env. Package runners are pinned (see :mod:`.pins`):
a rebuild (a repair, a reinstall) gets the same versions, ``ally update`` resolves again and
builds only if something changed, and editing the declared packages in ``.mcp.json``
resolves again on the next install or launch.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

import attrs

from ..envs import ProgressEvent
from ..errors import AllyError, InstallFailed, ManifestError
from ..store import Marker, store_errors
from .discovery import PluginEntry, ServerRef
from .launchers import Launcher, classify
from .pins import resolve, write_pins
from .records import make_record, save_record
from .specs import ProgressCallback, bundle_dir, labelled, no_progress, server_spec
from .state import lock_key

if TYPE_CHECKING:
    from ..host import Host

__all__ = [
    "ServerOutcome",
    "broken_outcome",
    "ensure_server",
    "ensure_servers",
    "server_status",
    "unique_keys",
]


@attrs.define
class ServerOutcome:
    """What ally knows or did about one server."""

    plugin: str
    server: str
    plugin_dir: Path
    #: ``"ready"``, ``"blocked"`` or (nothing was built) ``"pending"``.
    status: str
    reason: str = ""
    launcher: Optional[Launcher] = None
    marker: Optional[Marker] = None
    #: ``"none"``, ``"built"``, ``"shared"``, ``"repaired"``, ``"updated"``.
    action: str = "none"
    #: The launch record (command line and environment templates) of a ready stdio server.
    record: Optional[dict[str, Any]] = None
    transport: str = "stdio"
    error: Optional[AllyError] = attrs.field(default=None, repr=False)
    ref: Optional[ServerRef] = attrs.field(default=None, repr=False)

    @property
    def ready(self) -> bool:
        return self.status == "ready"

    @property
    def label(self) -> str:
        return f"{self.plugin}/{self.server}"

    @property
    def packages(self) -> Mapping[str, str]:
        return self.marker.packages if self.marker else {}


def broken_outcome(entry: PluginEntry) -> ServerOutcome:
    """The outcome standing for every server of a plugin that cannot be read."""
    assert entry.error is not None
    return ServerOutcome(
        entry.name, "*", entry.plugin_dir, "blocked", str(entry.error), error=entry.error
    )


# ---------------------------------------------------------------------------------------------
# ensuring


@contextlib.contextmanager
def _server_lock(host: Host, ref: ServerRef, report: ProgressCallback) -> Iterator[None]:
    """One resolve-and-build of a server at a time, across processes (a second launch waits,
    then finds the env ready)."""
    lock = host.store.lock(lock_key(ref.pointer))
    from filelock import Timeout

    with store_errors("cannot take the server's lock"):
        try:
            lock.acquire(timeout=0)
        except Timeout:
            message = f"Waiting for another process installing '{ref.label}'..."
            report(ProgressEvent(ref.pointer, "waiting", message))
            lock.acquire()
    try:
        yield
    finally:
        lock.release()


def _outcome(ref: ServerRef, status: str, **kw: Any) -> ServerOutcome:
    return ServerOutcome(
        ref.plugin.name,
        ref.server.name,
        ref.plugin.plugin_dir,
        status,
        transport=ref.server.transport,
        ref=ref,
        **kw,
    )


def _blocked(ref: ServerRef, error: AllyError, **kw: Any) -> ServerOutcome:
    reason = " | ".join(line for line in str(error).splitlines() if line.strip())
    return _outcome(ref, "blocked", reason=reason, error=error, **kw)


def _launcher(host: Host, ref: ServerRef) -> Launcher | ServerOutcome:
    """The server's launcher, or the outcome saying why it has none."""
    if ref.server.problems:
        return _blocked(ref, ref.server.error(ref.plugin.name))
    if ref.server.transport != "stdio":
        return _outcome(ref, "ready", reason=f"{ref.server.transport} server: nothing to install")
    try:
        return classify(ref.server, ref.plugin.name, ref.plugin.plugin_dir, os.environ)
    except ManifestError as exc:
        return _blocked(ref, exc)


def server_status(host: Host, ref: ServerRef) -> ServerOutcome:
    """The server's state without building or resolving anything (no process started)."""
    launcher = _launcher(host, ref)
    if isinstance(launcher, ServerOutcome):
        return launcher
    if not launcher.managed:
        return _finish(host, ref, launcher, None, "none")
    try:
        spec = server_spec(host, ref, launcher)
        if spec is None:
            failure = host.store.last_failure(ref.pointer)
            reason = f"install failed: {failure.get('reason')}" if failure else "not installed"
            return _outcome(ref, "pending", reason=reason, launcher=launcher)
        marker, reason = host.current_env(spec)
    except AllyError as exc:
        return _blocked(ref, exc, launcher=launcher)
    except OSError as exc:
        return _blocked(ref, InstallFailed(f"{ref.label}: {exc}"), launcher=launcher)
    if marker is None:
        failure = host.store.last_failure(ref.pointer)
        if failure and reason == "not installed":
            reason = f"install failed: {failure.get('reason')}"
        return _outcome(ref, "pending", reason=reason, launcher=launcher)
    return _finish(host, ref, launcher, marker, "none")


def ensure_server(
    host: Host,
    ref: ServerRef,
    *,
    force: bool = False,
    upgrade: bool = False,
    progress: ProgressCallback | None = None,
) -> ServerOutcome:
    """Make one server ready: pin (resolve) if needed, build its env, write its launch record.

    ``upgrade`` resolves a package runner's packages again (an interpreter's dependency file
    is installed with ``--upgrade``); ``force`` rebuilds. On failure the previous env, pins
    and record stay in use and the outcome says why.
    """
    launcher = _launcher(host, ref)
    if isinstance(launcher, ServerOutcome):
        return launcher
    if not launcher.managed:
        return _finish(host, ref, launcher, None, "none")
    report = labelled(ref, progress or no_progress)
    try:
        with _server_lock(host, ref, report):
            # A pinned env is built from its lock as it is: never with --upgrade (npm would
            # drop the lock); updating it means resolving again.
            build_upgrade = upgrade and not launcher.pinned
            spec = server_spec(host, ref, launcher, progress=report, upgrade=build_upgrade)
            pins = None
            if launcher.pinned and bundle_dir(ref) is None and (spec is None or upgrade):
                pins = resolve(host, ref, launcher, upgrade=upgrade, progress=report)
                spec = server_spec(host, ref, launcher, progress=report, pins=pins)
            assert spec is not None
            marker, action = host.ensure_env(spec, force=force or build_upgrade, progress=report)
            if action in {"built", "repaired"} and launcher.runtime == "python":
                _compile_bytecode(ref, marker, report, spec.options.install_timeout)
            if pins is not None:
                write_pins(host, ref, pins)
            if upgrade and action in {"built", "shared", "repaired"}:
                action = "updated"
            host.store.clear_failure(ref.pointer)
            return _finish(host, ref, launcher, marker, action)
    except AllyError as exc:
        outcome = _blocked(ref, exc, launcher=launcher)
        report(ProgressEvent(ref.pointer, "failed", outcome.reason))
        host.store.record_failure(ref.pointer, "", outcome.reason)  # for `ally list`
        return outcome


def _compile_bytecode(
    ref: ServerRef, marker: Marker, report: ProgressCallback, timeout: float
) -> None:
    """Compile a new Python env's modules now, not on the server's first start.

    A host waits for that start, often with a timeout, and uv installs without bytecode: a
    big server's first import would compile hundreds of modules. Best effort: a file that
    does not compile (a template, a module for another Python) is left to its import.
    """
    import glob

    from ..process import clean_environ, run_installer

    python = marker.env.commands.get("python")
    sites = sorted(glob.glob(os.path.join(marker.env.path, "lib", "*", "site-packages")))
    if not python or not sites:
        return
    report(ProgressEvent(ref.pointer, "compile", "Compiling bytecode for a fast first start"))
    with contextlib.suppress(InstallFailed):
        run_installer(
            [python, "-m", "compileall", "-q", "-j", "0", *sites],
            cwd=marker.env.path,
            env=clean_environ(),
            timeout=timeout,
            what=f"{ref.label}: compiling bytecode",
        )


def ensure_servers(
    host: Host,
    refs: list[ServerRef],
    *,
    force: bool = False,
    upgrade: bool = False,
    progress: ProgressCallback | None = None,
    jobs: int | None = None,
) -> list[ServerOutcome]:
    """:func:`ensure_server` for each server, ``jobs`` at a time (default: the settings')."""
    if not refs:
        return []
    workers = max(1, min(jobs or host.settings.jobs, len(refs)))
    from ..process import cancel_token

    cancel = threading.Event()

    def one(ref: ServerRef) -> ServerOutcome:
        with cancel_token(cancel):
            return ensure_server(host, ref, force=force, upgrade=upgrade, progress=progress)

    from concurrent.futures import ThreadPoolExecutor

    pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="ally-mcp")
    try:
        futures = [pool.submit(one, ref) for ref in refs]
        return [f.result() for f in futures]
    except BaseException:
        cancel.set()
        raise
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def _finish(
    host: Host, ref: ServerRef, launcher: Launcher, marker: Optional[Marker], action: str
) -> ServerOutcome:
    """The ready outcome with its launch record (written when it can be trusted later)."""
    try:
        record = make_record(host, ref, launcher, marker)
    except AllyError as exc:
        return _blocked(ref, exc, launcher=launcher, marker=marker)
    save_record(host, ref, record)
    return _outcome(ref, "ready", launcher=launcher, marker=marker, action=action, record=record)


def unique_keys(outcomes: list[ServerOutcome]) -> dict[str, ServerOutcome]:
    """Names for an ``mcpServers`` object: the server's name, or ``plugin-server`` where two
    plugins declare the same name."""
    counts: dict[str, int] = {}
    for o in outcomes:
        counts[o.server] = counts.get(o.server, 0) + 1
    return {(o.server if counts[o.server] == 1 else f"{o.plugin}-{o.server}"): o for o in outcomes}
