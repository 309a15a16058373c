"""The MCP server: ally's plugins' tools over stdio or Streamable HTTP, with the official SDK.

One long-running process serves every tool of every ready plugin. Plugins still building are
built in the background while the server already answers; each one that becomes ready (or a
change in the plugins directories, noticed by a cheap poll) is announced with
``notifications/tools/list_changed``. A call is validated against the tool's schema before
anything is spawned, runs as ``ally run`` would (stored config and secrets in its
environment), and its answer reaches the client with every secret value masked.

Logging goes to stderr; in stdio mode stdout carries protocol messages only (file descriptor
1 is pointed at stderr, so not even a stray print of a library reaches the client).
"""

from __future__ import annotations

import contextlib
import hmac
import ipaddress
import itertools
import json
import logging
import os
import secrets as _secrets
import socket
import sys
import threading
import weakref
from collections.abc import AsyncIterator, Awaitable, Sequence
from typing import TYPE_CHECKING, Any, Callable, Optional

import anyio
import anyio.to_thread
import mcp.types as types
from anyio.abc import TaskGroup
from anyio.from_thread import BlockingPortal
from mcp.server.lowlevel import NotificationOptions, Server
from mcp.server.session import ServerSession

from ..__about__ import __version__
from ..errors import AllyError, ConfigError, PluginNotFound, ToolError
from ..plugin_config import validate_input
from ..progress import LogReporter
from .catalog import Catalog, Entry, Masker, describe, form_request_schema, result_payload

if TYPE_CHECKING:
    from ..envs import ProgressEvent
    from ..forms import FormRequest
    from ..host import Host
    from ..replies import ToolResult

__all__ = ["POLL_SECONDS", "AllyServer", "parse_http_address", "serve"]

log = logging.getLogger("ally.mcp")

#: How often the plugins directories are checked for changes.
POLL_SECONDS = 2.0

INSTRUCTIONS = (
    "Tools of the plugins managed by ally: each runs in its plugin's own isolated environment. "
    "A tool's plugin is in its _meta under 'ally/plugin'."
)

Sender = Callable[[types.ServerNotification], Awaitable[None]]


def _error(text: str, structured: Optional[dict[str, Any]] = None) -> types.CallToolResult:
    return types.CallToolResult(
        content=[types.TextContent(type="text", text=text)],
        structuredContent=structured,
        isError=True,
    )


class _Call:
    """What one ``tools/call`` needs on the tool's thread: the session and its request."""

    def __init__(
        self,
        portal: BlockingPortal,
        session: ServerSession,
        request_id: Any,
        token: Any,
        masker: Masker,
    ) -> None:
        #: How the tool's threads (not anyio's) reach the event loop.
        self.portal = portal
        self.session = session
        self.request_id = request_id
        self.token = token
        self.masker = masker
        #: Lines added to the result for the client (forms that could not be shown, ...).
        self.notes: list[str] = []
        self._count = itertools.count(1)
        self.can_elicit = session.check_client_capability(
            types.ClientCapabilities(elicitation=types.ElicitationCapability())
        )

    def progress(self, event: ProgressEvent) -> None:
        """Send a progress notification (from a worker thread) while the plugin's env builds."""
        if event.phase == "output" or self.token is None or not event.message:
            return
        with contextlib.suppress(Exception):  # a closed session must not fail the build
            self.portal.call(
                self.session.send_progress_notification,
                self.token,
                float(next(self._count)),
                None,
                self.masker.text(f"{event.plugin}: {event.message}"),
                self.request_id,
            )

    def form(self, request: FormRequest) -> Optional[dict[str, Any]]:
        """Ask the user through the client (MCP elicitation); ``None`` means cancelled.

        Called on the tool's thread; ally checks the answers against the form's fields.
        """
        message, requested = form_request_schema(request)
        title = request.title
        if not self.can_elicit:
            self.notes.append(
                f"ally: the form {title!r} was cancelled: this MCP client does not support "
                "forms (elicitation)"
            )
            return None
        result: types.ElicitResult = self.portal.call(
            self.session.elicit_form,
            self.masker.text(message),
            self.masker.value(requested),
            self.request_id,
        )
        if result.action != "accept":
            word = "declined" if result.action == "decline" else "cancelled"
            self.notes.append(f"ally: the form {title!r} was {word} by the user")
            return None
        return dict(result.content or {})


class AllyServer:
    """The low-level SDK server with ally's ``tools/list`` and ``tools/call``."""

    def __init__(self, catalog: Catalog, *, poll: float = POLL_SECONDS) -> None:
        self.catalog = catalog
        self.poll = poll
        self.server: Server[Any, Any] = Server(
            "ally", version=__version__, instructions=INSTRUCTIONS
        )
        self.sessions: weakref.WeakSet[ServerSession] = weakref.WeakSet()
        self._tg: Optional[TaskGroup] = None
        self._portal: Optional[BlockingPortal] = None
        self._builds = anyio.CapacityLimiter(max(1, catalog.build_host.settings.jobs))
        self._wake = anyio.Event()
        # The SDK's decorators are not typed; registering through them keeps its tool cache.
        self.server.list_tools()(self.list_tools)  # type: ignore[no-untyped-call]
        self.server.call_tool(validate_input=False)(self.call_tool)

    def options(self) -> Any:
        return self.server.create_initialization_options(
            notification_options=NotificationOptions(tools_changed=True)
        )

    def _remember_session(self) -> ServerSession:
        session = self.server.request_context.session
        self.sessions.add(session)
        return session

    # -- tools/list ----------------------------------------------------------------------------

    async def list_tools(self) -> list[types.Tool]:
        self._remember_session()
        return [types.Tool.model_validate(describe(entry)) for entry in self.catalog.tools()]

    # -- tools/call ----------------------------------------------------------------------------

    async def call_tool(self, name: str, arguments: dict[str, Any]) -> types.CallToolResult:
        session = self._remember_session()
        ctx = self.server.request_context
        entry = self.catalog.resolve(name)
        if entry is None:
            return _error(f"unknown tool {name!r}")
        masker = self.catalog.masker(entry.plugin)
        try:
            # Before any process: an invalid call names the JSON path and spawns nothing.
            validate_input(entry.plugin, entry.tool, arguments)
        except ToolError as exc:
            return _error(masker.text(str(exc)))
        token = ctx.meta.progressToken if ctx.meta is not None else None
        assert self._portal is not None
        call = _Call(self._portal, session, ctx.request_id, token, masker)
        try:
            return await self._run(entry, arguments, call)
        except AllyError as exc:
            return _error(masker.text(str(exc)))

    async def _run(
        self, entry: Entry, arguments: dict[str, Any], call: _Call
    ) -> types.CallToolResult:
        outcome = self.catalog.outcome(entry.plugin)
        if outcome is None or not outcome.ready:
            # Built now (or waited for), with progress notifications to the caller.
            outcome = await anyio.to_thread.run_sync(
                self.catalog.build, entry.plugin, call.progress, abandon_on_cancel=True
            )
            self.wake()
            if not outcome.ready:
                return _error(call.masker.text(f"{outcome.name}: blocked: {outcome.reason}"))
        bound = outcome.tool(entry.tool.name)
        cancel = threading.Event()

        def invoke() -> ToolResult:
            return bound.call(arguments, on_form=call.form, cancel=cancel)

        try:
            result = await anyio.to_thread.run_sync(invoke, abandon_on_cancel=True)
        except anyio.get_cancelled_exc_class():
            # notifications/cancelled, or the session ended: the tool's group is killed.
            cancel.set()
            raise
        payload = call.masker.value(result_payload(result))
        structured = payload if isinstance(payload, dict) else {"result": payload}
        notes = [types.TextContent(type="text", text=call.masker.text(n)) for n in call.notes]
        if not result.success:
            words = call.masker.text(str(result.error or "the tool failed"))
            return types.CallToolResult(
                content=[types.TextContent(type="text", text=words), *notes],
                structuredContent=structured,
                isError=True,
            )
        return types.CallToolResult(
            content=[types.TextContent(type="text", text=json.dumps(payload)), *notes],
            structuredContent=structured,
            isError=False,
        )

    # -- background: builds and the plugins directories ----------------------------------------

    def wake(self) -> None:
        """Re-read the plugins' states now (from the event loop's thread)."""
        self._wake.set()

    async def refresh(self) -> None:
        changed, to_build = await anyio.to_thread.run_sync(self.catalog.refresh)
        if changed:
            await self.broadcast()
        assert self._tg is not None
        for name in to_build:
            self._tg.start_soon(self._build, name)

    async def broadcast(self) -> None:
        """``notifications/tools/list_changed`` to every session that has asked for tools."""
        for session in list(self.sessions):
            try:
                await session.send_tool_list_changed()
            except (anyio.BrokenResourceError, anyio.ClosedResourceError):
                self.sessions.discard(session)

    async def _build(self, name: str) -> None:
        async with self._builds:
            try:
                await anyio.to_thread.run_sync(self.catalog.build, name, abandon_on_cancel=True)
            except Exception as exc:  # one plugin's failure never stops the server
                log.warning("%s: build failed: %s", name, exc)
        self.wake()

    async def watch(self) -> None:
        """Poll the plugins' states; rebuilds and announcements follow from :meth:`refresh`."""
        while True:
            with anyio.move_on_after(self.poll):
                await self._wake.wait()
            self._wake = anyio.Event()
            await self.refresh()

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[None]:
        """Background builds and polling for the lifetime of the block."""
        async with BlockingPortal() as portal, anyio.create_task_group() as tg:
            self._portal = portal
            self._tg = tg
            await self.refresh()
            tg.start_soon(self.watch)
            try:
                yield
            finally:
                self.catalog.stop.set()  # installers of unfinished builds are killed
                tg.cancel_scope.cancel()


# -- transports --------------------------------------------------------------------------------


@contextlib.contextmanager
def _protocol_stdout() -> Any:
    """A private handle on the real stdout for the protocol; fd 1 then points at stderr."""
    sys.stdout.flush()
    fd = os.dup(1)
    os.dup2(2, 1)
    saved, sys.stdout = sys.stdout, sys.stderr
    try:
        with open(fd, "w", encoding="utf-8", newline="\n", closefd=True) as stream:
            yield stream
    finally:
        sys.stdout = saved


async def _serve_stdio(app: AllyServer) -> None:
    from mcp.server.stdio import stdio_server

    with _protocol_stdout() as out:
        async with app.running(), stdio_server(stdout=anyio.wrap_file(out)) as (read, write):
            await app.server.run(read, write, app.options())


def parse_http_address(text: str) -> tuple[str, int]:
    """``HOST:PORT`` (``[::1]:PORT`` for IPv6) on a loopback address, else a ConfigError."""
    host, sep, port_text = text.rpartition(":")
    if not sep or not host:
        raise ConfigError(f"--http: expected HOST:PORT (e.g. 127.0.0.1:8765), got {text!r}")
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    try:
        port = int(port_text)
    except ValueError:
        port = -1
    if not 0 <= port <= 65535:
        raise ConfigError(f"--http: invalid port {port_text!r}")
    loopback = host == "localhost"
    if not loopback:
        try:
            loopback = ipaddress.ip_address(host).is_loopback
        except ValueError:
            loopback = False
    if not loopback:
        raise ConfigError(
            f"--http: refusing to listen on {host!r}: only loopback addresses "
            "(127.0.0.1, ::1, localhost) are allowed"
        )
    return host, port


def _bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    if host == "localhost":
        host, family = "127.0.0.1", socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise ConfigError(
            f"--http: cannot listen on {host}:{port}: {exc.strerror or exc}"
        ) from None
    sock.listen(128)
    sock.set_inheritable(False)
    return sock


async def _serve_http(app: AllyServer, host: str, port: int, *, token: str = "") -> None:
    import uvicorn
    from mcp.server.streamable_http_manager import StreamableHTTPSessionManager
    from mcp.server.transport_security import TransportSecuritySettings
    from starlette.responses import JSONResponse
    from starlette.types import Receive, Scope, Send

    sock = _bind(host, port)
    port = sock.getsockname()[1]
    names = ["127.0.0.1", "localhost", "[::1]"]
    security = TransportSecuritySettings(
        enable_dns_rebinding_protection=True,
        allowed_hosts=[f"{n}:{port}" for n in names],
        allowed_origins=[f"http://{n}:{port}" for n in names],
    )
    manager = StreamableHTTPSessionManager(app=app.server, security_settings=security)
    token = token or _secrets.token_urlsafe(32)
    expected = f"Bearer {token}".encode()

    async def asgi(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        given = dict(scope.get("headers") or []).get(b"authorization", b"")
        if not hmac.compare_digest(given, expected):
            response = JSONResponse(
                {"error": "unauthorized: send the token ally printed as 'Authorization: Bearer'"},
                status_code=401,
                headers={"WWW-Authenticate": "Bearer"},
            )
            await response(scope, receive, send)
            return
        if scope.get("path", "").rstrip("/") != "/mcp":
            await JSONResponse({"error": "not found: the endpoint is /mcp"}, status_code=404)(
                scope, receive, send
            )
            return
        await manager.handle_request(scope, receive, send)

    shown = f"[{host}]" if ":" in host else host
    url = f"http://{shown}:{port}/mcp"
    config = uvicorn.Config(asgi, log_config=None, access_log=False, lifespan="off")
    web = uvicorn.Server(config)
    async with app.running(), manager.run():
        # Printed once: whoever can read this process's stderr may call the tools.
        sys.stderr.write(f"ally mcp: serving {url}\nally mcp: bearer token: {token}\n")
        sys.stderr.flush()
        await web.serve(sockets=[sock])


def _setup_logging() -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("ally mcp: %(message)s"))
    for name, level in (
        ("ally", logging.INFO),
        ("mcp", logging.ERROR),
        ("uvicorn", logging.WARNING),
    ):
        logger = logging.getLogger(name)
        logger.setLevel(level)
        if name != "uvicorn" or not logger.handlers:
            logger.addHandler(handler)
        logger.propagate = False


def serve(
    make_host: Callable[[], Host],
    *,
    plugins: Sequence[str] = (),
    http: Optional[str] = None,
    poll: float = POLL_SECONDS,
    warm_workers: bool = True,
) -> int:
    """Serve until the client disconnects (stdio) or the process is interrupted (HTTP).

    With ``warm_workers`` Python tools run in their plugin's warm worker
    (:mod:`ally_core.workers`), one pool shared by the reading and the building host.
    """
    address = parse_http_address(http) if http else None
    _setup_logging()
    host, build_host = make_host(), make_host()
    if warm_workers:
        from ..workers import WorkerPool

        host.workers = build_host.workers = WorkerPool(pass_env=build_host.settings.pass_env)
    try:
        catalog = Catalog(
            host, build_host, plugins=plugins, progress=lambda name: LogReporter(sys.stderr)
        )
        missing = catalog.missing()
        if missing:
            raise PluginNotFound(f"no plugin named {', '.join(map(repr, missing))}")
        app = AllyServer(catalog, poll=poll)
        if address is None:
            anyio.run(_serve_stdio, app)
        else:
            anyio.run(lambda: _serve_http(app, *address))
    finally:
        build_host.close()  # the shared pool: every worker stops with the server
    return 0
