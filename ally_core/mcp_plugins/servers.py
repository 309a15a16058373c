"""Each MCP server's env: discovery, pinning, building, and the launch record.

A server started by a package runner or an interpreter (see :mod:`.launchers`) gets an env in
ally's store, published under ``<plugin>+<server>`` (a ``+`` no ``plugin.json`` name can
hold), built with :meth:`Host.ensure_env <ally_core.Host.ensure_env>`: the same locks, sharing,
health checks and marker-last publish as any plugin's env.

Package runners are pinned. ``ally install`` resolves the declared packages once
(``uv pip compile`` for ``uvx``; ``npm install --package-lock-only`` for ``npx``) into a lock
kept under ``<envs_dir>/.mcp/<plugin>+<server>/``::

    pins.json                   which lock is in use, and what it was resolved from
    <digest>/requirements.txt   uvx: every package pinned (==)
    <digest>/package.json       npx: the packages as declared
    <digest>/package-lock.json  npx: npm's lock of them
    launch.json                 the launch record (see warm_launch.py)

The env is built from that lock, so a rebuild (a repair, a reinstall) gets the same versions;
``ally update`` resolves again and builds only if something changed. Editing the declared
packages in ``.mcp.json`` resolves again on the next install or launch.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import threading
import time
from collections.abc import Iterable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Optional

import attrs

from ..envs import EnvSpec, ProgressEvent
from ..errors import AllyError, InstallFailed, ManifestError, PluginNotFound
from ..store import Marker, now_iso, store_errors, write_atomic
from .launchers import Launcher, classify
from .manifest import ClaudePlugin, McpServer, is_claude_plugin, load_claude_plugin
from .warm_launch import RECORD_FORMAT, content_digest, file_identity

if TYPE_CHECKING:
    from ..loader import Host

__all__ = [
    "ServerOutcome",
    "ServerRef",
    "collect_state",
    "discover",
    "ensure_server",
    "ensure_servers",
    "pointer_names",
    "server_status",
]

ProgressCallback = Callable[[ProgressEvent], None]

#: Where the servers' pins and launch records live, under ``envs_dir``.
STATE_DIR = ".mcp"
PINS = "pins.json"
RECORD = "launch.json"
PINS_FORMAT = 1
#: Directory of a bundled plugin holding each server's artifacts (``<slug>/`` below it).
BUNDLE_SUBDIR = "mcp"
#: A user-edited file changed less than this long ago is recorded with its content's digest
#: in a launch record (its identity could repeat within one timestamp tick; see
#: loader.SETTLE_NS).
SETTLE_NS = 2_000_000_000


def _silent(event: ProgressEvent) -> None:
    return None


@attrs.frozen
class PluginEntry:
    """A discovered Claude-style plugin, or why it cannot be read."""

    plugin_dir: Path
    plugin: Optional[ClaudePlugin]
    error: Optional[AllyError] = None

    @property
    def name(self) -> str:
        return self.plugin.name if self.plugin else self.plugin_dir.name


@attrs.frozen
class ServerRef:
    """One server of one plugin."""

    plugin: ClaudePlugin
    server: McpServer

    @property
    def label(self) -> str:
        return f"{self.plugin.name}/{self.server.name}"

    @property
    def pointer(self) -> str:
        """Its env's name in the store (``+`` keeps it apart from every plugin.json name)."""
        return f"{self.plugin.name}+{self.server.slug}"


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


# ---------------------------------------------------------------------------------------------
# discovery


def discover(host: Host) -> list[PluginEntry]:
    """Every Claude-style plugin (``.claude-plugin/plugin.json``) in the host's plugin dirs."""
    out: list[PluginEntry] = []
    seen: dict[str, Path] = {}
    for root in host.paths.plugin_dirs:
        try:
            names = sorted(e.name for e in os.scandir(root) if not e.name.startswith("."))
        except OSError:
            continue
        for name in names:
            plugin_dir = root / name
            if not is_claude_plugin(plugin_dir):
                continue
            try:
                plugin = load_claude_plugin(plugin_dir)
            except ManifestError as exc:
                out.append(PluginEntry(plugin_dir, None, exc))
                continue
            if plugin.name in seen:
                error = ManifestError(
                    plugin.name,
                    ".claude-plugin/plugin.json",
                    [f"$.name: duplicate plugin name, also used by {seen[plugin.name]}"],
                )
                out.append(PluginEntry(plugin_dir, None, error))
                continue
            seen[plugin.name] = plugin_dir
            out.append(PluginEntry(plugin_dir, plugin))
    return out


def find_plugin(host: Host, name: str) -> ClaudePlugin:
    """The plugin called ``name`` (or in a directory of that name); raises if not found."""
    for root in host.paths.plugin_dirs:
        # The usual layout first: a directory named after the plugin (no scan).
        if is_claude_plugin(root / name):
            plugin = load_claude_plugin(root / name)
            if plugin.name == name:
                return plugin
    for entry in discover(host):
        if entry.name == name or entry.plugin_dir.name == name:
            if entry.plugin is None:
                assert entry.error is not None
                raise entry.error
            return entry.plugin
    raise PluginNotFound(f"no Claude-style plugin named {name!r} (with .claude-plugin/plugin.json)")


def claude_plugin_names(host: Host) -> set[str]:
    """Names (and directory names) of the Claude-style plugins, readable or not."""
    names = set()
    for entry in discover(host):
        names.add(entry.name)
        names.add(entry.plugin_dir.name)
    return names


def pointer_names(host: Host) -> set[str]:
    """The store names of every declared server's env (what ``ally gc`` keeps)."""
    return {
        ServerRef(entry.plugin, server).pointer
        for entry in discover(host)
        if entry.plugin is not None
        for server in entry.plugin.servers
    }


def server_refs(
    host: Host, plugins: Iterable[str] | None = None
) -> tuple[list[ServerRef], list[ServerOutcome]]:
    """The servers of ``plugins`` (default: every Claude-style plugin), and an outcome for
    each plugin that cannot be read."""
    wanted = set(plugins) if plugins is not None else None
    refs, broken = [], []
    found: set[str] = set()
    for entry in discover(host):
        if wanted is not None and not ({entry.name, entry.plugin_dir.name} & wanted):
            continue
        found |= {entry.name, entry.plugin_dir.name}
        if entry.plugin is None:
            assert entry.error is not None
            broken.append(
                ServerOutcome(
                    entry.name,
                    "*",
                    entry.plugin_dir,
                    "blocked",
                    str(entry.error),
                    error=entry.error,
                )
            )
            continue
        refs += [ServerRef(entry.plugin, server) for server in entry.plugin.servers]
    if wanted is not None and wanted - found:
        missing = ", ".join(sorted(map(repr, wanted - found)))
        raise PluginNotFound(f"no Claude-style plugin named {missing}")
    return refs, broken


# ---------------------------------------------------------------------------------------------
# pins and specs


def state_dir(host: Host, ref: ServerRef) -> Path:
    return host.paths.envs_dir / STATE_DIR / ref.pointer


def _bundle_dir(ref: ServerRef) -> Optional[Path]:
    from ..bundle import ARTIFACTS_DIR

    path = ref.plugin.plugin_dir / ARTIFACTS_DIR / BUNDLE_SUBDIR / ref.server.slug
    return path if path.is_dir() else None


def _dependency_name(launcher: Launcher) -> str:
    return "requirements.txt" if launcher.runtime == "python" else "package.json"


def read_pins(host: Host, ref: ServerRef) -> Optional[dict[str, Any]]:
    try:
        data = json.loads((state_dir(host, ref) / PINS).read_bytes())
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict) or data.get("format") != PINS_FORMAT:
        return None
    return data


def _labelled(ref: ServerRef, progress: ProgressCallback) -> ProgressCallback:
    """Progress of a server's env, shown as ``plugin/server`` (not its store name)."""
    quoted = f"'{ref.pointer}'"

    def report(event: ProgressEvent) -> None:
        progress(
            attrs.evolve(
                event, plugin=ref.label, message=event.message.replace(quoted, f"'{ref.label}'")
            )
        )

    return report


def _spec(
    host: Host,
    ref: ServerRef,
    launcher: Launcher,
    *,
    plugin_dir: Path,
    dependency_file: Optional[Path],
    progress: ProgressCallback,
    upgrade: bool = False,
    artifacts_dir: Optional[Path] = None,
) -> EnvSpec:
    assert launcher.runtime is not None
    return EnvSpec(
        runtime=launcher.runtime,
        plugin_name=ref.pointer,
        plugin_dir=plugin_dir,
        env_dir=host.store.pointer(ref.pointer),
        dependency_file=dependency_file,
        runtime_version=launcher.python,
        options=host.env_options(upgrade=upgrade, artifacts_dir=artifacts_dir),
        reporter=progress,
    )


def server_spec(
    host: Host,
    ref: ServerRef,
    launcher: Launcher,
    *,
    progress: ProgressCallback = _silent,
    upgrade: bool = False,
    pins: Optional[Mapping[str, Any]] = None,
) -> Optional[EnvSpec]:
    """The spec of a managed server's env; ``None`` for a package runner not pinned yet.

    A bundled plugin's server is built from its bundle (``.ally-bundle/mcp/<server>/``) alone;
    a package runner's from its pins (``pins`` if given, else the recorded ones); an
    interpreter's from the plugin's dependency file.
    """
    bundle = _bundle_dir(ref)
    if launcher.pinned:
        if bundle is not None:
            return _spec(
                host,
                ref,
                launcher,
                plugin_dir=bundle,
                dependency_file=bundle / _dependency_name(launcher),
                progress=progress,
                upgrade=upgrade,
                artifacts_dir=bundle,
            )
        pins = pins if pins is not None else read_pins(host, ref)
        if pins is None or pins.get("declared") != launcher.declared_digest():
            return None
        lock_dir = state_dir(host, ref) / str(pins["lock"])
        return _spec(
            host,
            ref,
            launcher,
            plugin_dir=lock_dir,
            dependency_file=lock_dir / _dependency_name(launcher),
            progress=progress,
            upgrade=upgrade,
        )
    return _spec(
        host,
        ref,
        launcher,
        plugin_dir=ref.plugin.plugin_dir,
        dependency_file=launcher.dependency_file,
        progress=progress,
        upgrade=upgrade,
        artifacts_dir=bundle,
    )


def _base_spec(host: Host, ref: ServerRef, launcher: Launcher, work: Path, **kw: Any) -> EnvSpec:
    return _spec(host, ref, launcher, plugin_dir=work, dependency_file=None, **kw)


def resolve(
    host: Host, ref: ServerRef, launcher: Launcher, *, upgrade: bool, progress: ProgressCallback
) -> dict[str, Any]:
    """Resolve a package runner's packages to a lock; return the pins naming it (not yet
    recorded: they are recorded once an env was built from them)."""
    state = state_dir(host, ref)
    with store_errors(f"cannot write {state}"):
        state.mkdir(parents=True, exist_ok=True)
    work = Path(_mkdtemp(state, ".resolve-"))
    try:
        shown = " ".join(launcher.packages)
        progress(ProgressEvent(ref.label, "resolve", f"Resolving {shown}"))
        if launcher.runtime == "python":
            files = {
                "requirements.txt": _compile_python(host, ref, launcher, work, upgrade, progress)
            }
        else:
            files = _lock_node(host, ref, launcher, work, upgrade, progress)
        digest = hashlib.sha256(
            b"\0".join(name.encode() + b"\0" + data for name, data in sorted(files.items()))
        ).hexdigest()[:16]
        target = state / digest
        if not target.is_dir():
            staged = work / "lock"
            staged.mkdir()
            for name, data in files.items():
                (staged / name).write_bytes(data)
            with contextlib.suppress(OSError):  # another process published the same lock
                os.rename(staged, target)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return {
        "format": PINS_FORMAT,
        "declared": launcher.declared_digest(),
        "packages": list(launcher.packages),
        "lock": digest,
        "resolved_at": now_iso(),
    }


def _mkdtemp(parent: Path, prefix: str) -> str:
    import tempfile

    return tempfile.mkdtemp(prefix=prefix, dir=parent)


def _compile_python(
    host: Host,
    ref: ServerRef,
    launcher: Launcher,
    work: Path,
    upgrade: bool,
    progress: ProgressCallback,
) -> bytes:
    """``uv pip compile`` of the requirements for the interpreter the env will be built with."""
    from ..process import run_installer
    from ..runtimes.python import _index_args, _uv_bin_cached, _uv_environ, effective_index

    spec = _base_spec(host, ref, launcher, work, progress=progress)
    interpreter = host.hook.resolve_interpreter(spec=spec)
    uv = _uv_bin_cached()
    if interpreter is None or uv is None:
        raise InstallFailed(f"{ref.label}: pinning uvx packages needs uv and a Python")
    (work / "requirements.in").write_text("\n".join(launcher.packages) + "\n", "utf-8")
    options = spec.options
    argv = [
        uv,
        "pip",
        "compile",
        "requirements.in",
        "--python",
        interpreter.path,
        "--no-config",
        "--no-header",
        "--no-annotate",
        "--quiet",
        *(["--upgrade", "--refresh"] if upgrade else []),
        *_index_args(effective_index(options.index), backend="uv", offline=options.offline),
    ]
    out = run_installer(
        argv,
        cwd=work,
        env=_uv_environ(spec),
        timeout=options.install_timeout,
        on_line=lambda line: progress(ProgressEvent(ref.label, "output", line)),
        what=f"{ref.label}: resolving {' '.join(launcher.packages)}",
    )
    pins = [line.strip() for line in out.splitlines() if line.strip() and not line.startswith("#")]
    return ("\n".join(pins) + "\n").encode()


def _lock_node(
    host: Host,
    ref: ServerRef,
    launcher: Launcher,
    work: Path,
    upgrade: bool,
    progress: ProgressCallback,
) -> dict[str, bytes]:
    """``npm install --package-lock-only`` in a scratch env made by the node runtime's own
    hooks (its node, npm, registry settings and cache)."""
    from .launchers import npm_spec

    dependencies = {}
    for package in launcher.packages:
        parsed = npm_spec(package)
        assert parsed is not None
        dependencies[parsed[0]] = parsed[1]
    package_json = _package_json(dependencies)
    (work / "package.json").write_bytes(package_json)
    options = host.env_options()
    command = [
        "npm",
        "install",
        "--package-lock-only",
        "--ignore-scripts",
        "--no-audit",
        "--no-fund",
        "--global=false",
        "--offline" if options.offline else "--prefer-online" if upgrade else "--prefer-offline",
    ]
    spec = attrs.evolve(
        _base_spec(host, ref, launcher, work, progress=progress),
        env_dir=work / "env",
        dependency_file=work / "package.json",
        install_command=tuple(command),
    )
    interpreter = host.hook.resolve_interpreter(spec=spec)
    env = host.hook.create_env(spec=spec, interpreter=interpreter) if interpreter else None
    if env is None:
        raise InstallFailed(
            f"{ref.label}: no runtime serves 'node' (pip install ally-runtime-node)"
        )
    host.hook.install_deps(spec=spec, env=env)
    try:
        lock = json.loads((work / "env" / "package-lock.json").read_bytes())
        # The declared ranges and tags ("latest") become the versions npm chose, in the
        # package.json and in the lock's root alike: a later npm ci (a repair, a bundle
        # install offline) then has nothing left to look up.
        exact = {name: lock["packages"][f"node_modules/{name}"]["version"] for name in dependencies}
        lock["packages"][""]["dependencies"] = exact
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise InstallFailed(f"{ref.label}: npm wrote no usable package-lock.json ({exc})") from exc
    return {
        "package.json": _package_json(exact),
        "package-lock.json": (json.dumps(lock, indent=2) + "\n").encode(),
    }


def _package_json(dependencies: Mapping[str, str]) -> bytes:
    data = {
        "name": "ally-mcp-server",
        "version": "0.0.0",
        "private": True,
        "dependencies": dict(dependencies),
    }
    return (json.dumps(data, indent=2, sort_keys=True) + "\n").encode()


def write_pins(host: Host, ref: ServerRef, pins: Mapping[str, Any]) -> None:
    path = state_dir(host, ref) / PINS
    with store_errors(f"cannot write {path}"):
        write_atomic(path, (json.dumps(pins, indent=2, sort_keys=True) + "\n").encode())


# ---------------------------------------------------------------------------------------------
# ensuring


@contextlib.contextmanager
def _server_lock(host: Host, ref: ServerRef) -> Iterator[None]:
    """One resolve-and-build of a server at a time, across processes (a second launch waits,
    then finds the env ready)."""
    key = "mcp-" + hashlib.sha256(ref.pointer.encode()).hexdigest()[:16]
    lock = host.store.lock(key)
    from filelock import Timeout

    with store_errors("cannot take the server's lock"):
        try:
            lock.acquire(timeout=0)
        except Timeout:
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
            return _outcome(ref, "pending", reason="not installed", launcher=launcher)
        marker, reason = host.current_env(spec)
    except AllyError as exc:
        return _blocked(ref, exc, launcher=launcher)
    except OSError as exc:
        return _blocked(ref, InstallFailed(f"{ref.label}: {exc}"), launcher=launcher)
    if marker is None:
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
    report = _labelled(ref, progress or _silent)
    try:
        with _server_lock(host, ref):
            # A pinned env is built from its lock as it is: never with --upgrade (npm would
            # drop the lock); updating it means resolving again.
            build_upgrade = upgrade and not launcher.pinned
            spec = server_spec(host, ref, launcher, progress=report, upgrade=build_upgrade)
            pins = None
            if launcher.pinned and _bundle_dir(ref) is None and (spec is None or upgrade):
                pins = resolve(host, ref, launcher, upgrade=upgrade, progress=report)
                spec = server_spec(host, ref, launcher, progress=report, pins=pins)
            assert spec is not None
            marker, action = host.ensure_env(spec, force=force or build_upgrade, progress=report)
            if pins is not None:
                write_pins(host, ref, pins)
            if upgrade and action in {"built", "shared", "repaired"}:
                action = "updated"
            return _finish(host, ref, launcher, marker, action)
    except AllyError as exc:
        report(ProgressEvent(ref.pointer, "failed", str(exc)))
        return _blocked(ref, exc, launcher=launcher)


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

    pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="ally-mcp")
    try:
        futures = [pool.submit(one, ref) for ref in refs]
        return [f.result() for f in futures]
    except BaseException:
        cancel.set()
        raise
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


# ---------------------------------------------------------------------------------------------
# the command line and the launch record


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


def _npx_bin(ref: ServerRef, launcher: Launcher, marker: Marker) -> str:
    """The file npx would run: the only bin of the package, or the one named after it."""
    from .launchers import npm_spec

    parsed = npm_spec(launcher.packages[0])
    assert parsed is not None
    name = parsed[0]
    modules = marker.env.path / "node_modules"
    if launcher.entry:
        path = modules / ".bin" / launcher.entry
        if not os.path.exists(path):
            raise InstallFailed(f"{ref.label}: no package provides the command {launcher.entry!r}")
        return os.path.realpath(path)
    try:
        data = json.loads((modules / name / "package.json").read_text("utf-8"))
    except (OSError, ValueError) as exc:
        raise InstallFailed(f"{ref.label}: {name} is not installed in its env") from exc
    bins = data.get("bin")
    unscoped = name.rpartition("/")[2]
    if isinstance(bins, str):
        bins = {unscoped: bins}
    if not isinstance(bins, dict) or not bins:
        raise InstallFailed(f"{ref.label}: {name} has no bin to run")
    chosen = next(iter(bins.values())) if len(bins) == 1 else bins.get(unscoped)
    if not isinstance(chosen, str):
        raise InstallFailed(
            f"{ref.label}: {name} has several bins ({', '.join(sorted(bins))}) and none is "
            f"named {unscoped!r}: name one with npx -p {name} BIN"
        )
    return os.path.realpath(modules / name / chosen)


def _is_node_script(path: str) -> bool:
    try:
        with open(path, "rb") as fh:
            first = fh.readline(200)
    except OSError:
        return False
    return not first.startswith(b"#!") or b"node" in first


def command_line(
    ref: ServerRef, launcher: Launcher, marker: Optional[Marker]
) -> tuple[list[str], dict[str, str], list[str], list[str]]:
    """``(argv templates, runtime env, PATH prefix, files run)`` of a server.

    The arguments are the declared ones (``${VAR}`` is expanded at each start); the command
    points into the env: the executable uvx would run, the bin npx would run (with the env's
    node), the env's interpreter for a script.
    """
    args = list(launcher.args)
    if marker is None:
        return [ref.server.command, *args], {}, [], []
    env = marker.env
    prefix = list(env.bin_dirs)
    if launcher.kind == "uvx":
        exe = os.path.join(env.bin_dirs[0], launcher.entry)
        if not os.path.isfile(exe):
            have = sorted(
                n
                for n in os.listdir(env.bin_dirs[0])
                if not n.startswith(("python", "activate", "deactivate", "pip", "pydoc", "."))
            )
            raise InstallFailed(
                f"{ref.label}: {launcher.packages[0]} provides no executable {launcher.entry!r}"
                f" (it has: {', '.join(have) or 'none'}); name one with uvx --from PKG CMD"
            )
        return [exe, *args], {}, prefix, [exe]
    if launcher.kind == "npx":
        script = _npx_bin(ref, launcher, marker)
        node = env.interpreter.path
        if _is_node_script(script):
            return [node, script, *args], {}, prefix, [script]
        return [script, *args], {}, prefix, [script]
    command = env.commands.get("python3" if launcher.kind == "python" else "node", "")
    return [command, *args], dict(env.env_vars), prefix, [command]


def _watched(path: str, user_files: set[str]) -> list[Any]:
    """``[path, identity, sha256 or None]``: the content's digest too for a file people edit
    that changed in the last seconds (see :func:`.warm_launch.read_record`). ally's own files
    (markers, pins, env files) are replaced whole, never edited in place."""
    identity = file_identity(path)
    digest = None
    if (
        identity is not None
        and path in user_files
        and max(identity[1], identity[3]) >= time.time_ns() - SETTLE_NS
    ):
        digest = content_digest(path)
    return [path, identity, digest]


def make_record(
    host: Host, ref: ServerRef, launcher: Launcher, marker: Optional[Marker]
) -> dict[str, Any]:
    """The launch record of a ready server (see :mod:`.warm_launch`)."""
    from ..tools import LOCALE_VARS, PASSED_VARS

    argv, runtime_env, prefix, runs = command_line(ref, launcher, marker)
    watch = [*ref.plugin.files, str(host.paths.config_file)]
    user_files = set(watch)
    links: list[list[str]] = []
    if marker is not None:
        from ..bundle import ARTIFACTS_DIR

        pointer = host.store.pointer(ref.pointer)
        with contextlib.suppress(OSError):
            links.append([str(pointer), os.readlink(pointer)])
        watch += [
            str(marker.env.path / ".installed"),
            str(ref.plugin.plugin_dir / ARTIFACTS_DIR),
            *runs,
        ]
        if marker.env.interpreter.realpath:
            watch.append(marker.env.interpreter.realpath)
        if launcher.pinned:
            watch.append(str(state_dir(host, ref) / PINS))
        if launcher.dependency_file is not None:
            watch.append(str(launcher.dependency_file))
    return {
        "format": RECORD_FORMAT,
        "label": ref.label,
        "kind": launcher.kind,
        "root": str(ref.plugin.plugin_dir),
        "argv": argv,
        "env": dict(ref.server.env),
        "runtime_env": runtime_env,
        "path_prefix": prefix,
        "pass": sorted({*PASSED_VARS, *host.settings.pass_env}),
        "locale": sorted(LOCALE_VARS),
        "watch": [_watched(path, user_files) for path in dict.fromkeys(watch)],
        "links": links,
    }


def save_record(host: Host, ref: ServerRef, record: Mapping[str, Any]) -> bool:
    """Write the launch record (``False`` when the store is read-only: every start then takes
    the full path)."""
    path = state_dir(host, ref) / RECORD
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(path, json.dumps(record, indent=1, sort_keys=True).encode())
    except OSError:
        return False
    return True


def record_path(host: Host, ref: ServerRef) -> Path:
    return state_dir(host, ref) / RECORD


# ---------------------------------------------------------------------------------------------
# gc


def collect_state(host: Host, keep: set[str], *, dry_run: bool) -> list[tuple[Path, int, str]]:
    """Remove what ``.mcp/`` holds for servers that are gone, locks no pins name, and scratch
    directories of killed resolves. Returns ``(path, bytes, why)`` for each."""
    from ..store import disk_usage

    root = host.paths.envs_dir / STATE_DIR
    removed: list[tuple[Path, int, str]] = []
    if not root.is_dir():
        return removed
    for folder in sorted(root.iterdir()):
        if folder.name not in keep:
            removed.append((folder, disk_usage(folder), "MCP server is gone"))
            continue
        try:
            pins = json.loads((folder / PINS).read_bytes())
            current = pins.get("lock") if isinstance(pins, dict) else None
        except (OSError, ValueError):
            current = None
        for item in sorted(folder.iterdir()):
            if item.is_dir() and item.name != current:
                removed.append((item, disk_usage(item), "lock no pins name"))
    if not dry_run:
        for path, _size, _why in removed:
            # A resolve running now holds its server's lock: leave its scratch dir.
            if path.name.startswith(".resolve-") and _busy(host, path.parent.name):
                continue
            shutil.rmtree(path, ignore_errors=True)
    return removed


def _busy(host: Host, pointer: str) -> bool:
    from filelock import Timeout

    key = "mcp-" + hashlib.sha256(pointer.encode()).hexdigest()[:16]
    try:
        with host.store.lock(key, timeout=0):
            return False
    except Timeout:
        return True


def unique_keys(outcomes: list[ServerOutcome]) -> dict[str, ServerOutcome]:
    """Names for an ``mcpServers`` object: the server's name, or ``plugin-server`` where two
    plugins declare the same name."""
    counts: dict[str, int] = {}
    for o in outcomes:
        counts[o.server] = counts.get(o.server, 0) + 1
    return {(o.server if counts[o.server] == 1 else f"{o.plugin}-{o.server}"): o for o in outcomes}
