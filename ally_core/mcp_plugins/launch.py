"""``ally mcp launch PLUGIN SERVER``: make the server's env ready, then become the server.

What a host runs instead of ``npx -y PKG`` or ``uvx PKG``. A ready server starts from its
launch record (see :mod:`.warm_launch`): no discovery, no process before the ``exec``. Otherwise
the plugin is read, the env checked and, if it is not ready, built by a **detached builder**:
a separate process in its own session, whose progress this one copies to stderr. A host that
gives up on a slow first start and kills the launcher (its handshake timeout) does not kill
the build: the builder finishes and publishes the env, and the host's next attempt waits for
it (the server's lock) or finds it ready. Either way no build is lost, and retries converge.

Nothing is ever written to stdout before the ``exec``: it belongs to the MCP protocol.
"""

from __future__ import annotations

import argparse
import os
import secrets
import subprocess
import sys
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Optional

from ..errors import AllyError, PluginNotFound
from .discovery import ServerRef, find_plugin, record_path, state_dir
from .servers import ensure_server, server_status
from .warm_launch import exec_server, read_record, server_argv, server_environ

if TYPE_CHECKING:
    from ..host import Host

__all__ = ["host_arguments", "launch"]

EXIT_BLOCKED = 4


def host_arguments(
    home: Optional[str],
    plugin_dirs: Sequence[str],
    *,
    offline: bool = False,
    installer: Optional[str] = None,
) -> list[str]:
    """The ``ally`` options that make another process see the same home and settings."""
    args = ["--home", home] if home else []
    for directory in plugin_dirs:
        args += ["--plugins-dir", directory]
    if offline:
        args.append("--offline")
    if installer:
        args += ["--installer", installer]
    return args


def _say(text: str) -> None:
    from ..text import printable

    sys.stderr.write(f"ally: {printable(text)}\n")
    sys.stderr.flush()


def start_record(record: dict[str, object], label: str) -> int:
    """Expand the record's templates from this environment and exec the server."""
    missing: list[str] = []
    argv = server_argv(record, os.environ, missing)
    env = server_environ(record, os.environ, missing)
    for name in missing:
        _say(f"{label}: ${{{name}}} is not set; passing an empty value")
    return exec_server(argv, env, label)


def launch(
    host: Host,
    plugin: str,
    server: str,
    *,
    builder_args: Sequence[str],
) -> int:
    """Start ``plugin``'s ``server`` (only returns if it cannot be started).

    ``builder_args`` are the ``ally`` options a detached builder needs to see this host
    (``--home``, ``--plugins-dir``, ``--offline``, ``--installer``).
    """
    found = find_plugin(host, plugin)
    ref = ServerRef(found, found.server(server))
    record = read_record(str(record_path(host, ref)))
    if record is not None:
        return start_record(record, ref.label)
    outcome = server_status(host, ref)
    if outcome.status == "pending":
        code = build_detached(host, ref, builder_args)
        if code != 0:
            return EXIT_BLOCKED
        outcome = server_status(host, ref)
    if not outcome.ready:
        _say(f"{ref.label}: {outcome.reason}")
        return EXIT_BLOCKED
    if outcome.record is None:
        raise PluginNotFound(
            f"{ref.label}: a {outcome.transport} server is not started by a command; "
            "hosts connect to its url"
        )
    return start_record(outcome.record, ref.label)


def build_detached(host: Host, ref: ServerRef, builder_args: Sequence[str]) -> int:
    """Build the server's env in a process of its own session; copy its log to stderr until
    it ends. Returns its exit code (0: the env is ready)."""
    folder = state_dir(host, ref)
    folder.mkdir(parents=True, exist_ok=True)
    log = folder / f".build-{os.getpid()}-{secrets.token_hex(4)}.log"
    argv = [
        sys.executable,
        "-m",
        "ally_core.mcp_plugins.launch",
        *builder_args,
        "--",
        ref.plugin.name,
        ref.server.name,
    ]
    # Two opens, two file offsets: the builder appends at its own, this process reads at its.
    writer = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND, 0o600)
    reader = open(log, "rb")  # noqa: SIM115 - read while the builder writes
    # Nobody else needs the log by its name: unlinked before the builder starts, it vanishes
    # with the last process that has it open (a launcher killed now leaves nothing behind).
    log.unlink()
    try:
        builder = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=writer,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    finally:
        os.close(writer)
    try:
        while True:
            done = builder.poll() is not None
            chunk = reader.read()
            if chunk:
                sys.stderr.buffer.write(chunk)
                sys.stderr.flush()
            if done:
                return int(builder.returncode)
            time.sleep(0.05)
    finally:
        reader.close()


def build_main(argv: Sequence[str]) -> int:
    """The detached builder: ``python -m ally_core.mcp_plugins.launch [ALLY OPTIONS] -- P S``."""
    from ..host import Host
    from ..progress import LogReporter

    parser = argparse.ArgumentParser(prog="ally-mcp-builder")
    parser.add_argument("--home")
    parser.add_argument("--plugins-dir", action="append", default=[])
    parser.add_argument("--offline", action="store_true")
    parser.add_argument("--installer")
    parser.add_argument("plugin")
    parser.add_argument("server")
    args = parser.parse_args([a for a in argv if a != "--"])
    settings: dict[str, object] = {}
    if args.offline:
        settings["offline"] = True
    if args.installer:
        settings["installer"] = args.installer
    try:
        host = Host(args.home, plugin_dirs=args.plugins_dir, settings=settings)
        found = find_plugin(host, args.plugin)
        ref = ServerRef(found, found.server(args.server))
        outcome = ensure_server(host, ref, progress=LogReporter(sys.stdout))
    except AllyError as exc:
        print(f"ally: error: {exc}", flush=True)
        return EXIT_BLOCKED
    if not outcome.ready:
        print(f"ally: error: {outcome.reason}", flush=True)
        return EXIT_BLOCKED
    return 0


if __name__ == "__main__":  # pragma: no cover - the detached builder (tests run it for real)
    sys.exit(build_main(sys.argv[1:]))
