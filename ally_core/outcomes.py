"""What loading a plugin gives: a :class:`PluginOutcome`, and the tools of a ready one.

Value types only: running a tool goes through a :class:`ToolRunner` (the
:class:`~ally_core.Host` that loaded the plugin), so nothing here knows how tools run.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Literal, Optional, Protocol

import attrs

from .envs import EnvInfo
from .errors import AllyError, ToolNotFound
from .manifest import Manifest, Tool

if TYPE_CHECKING:  # annotations only: a warm `ally list` never imports them
    from .forms import FormCallback
    from .replies import ToolResult

__all__ = ["Action", "BoundTool", "PluginOutcome", "Status", "ToolRunner"]

#: A plugin's state: ``"ready"``, ``"blocked"`` or (from :meth:`Host.status` and
#: :meth:`Host.doctor`, which build nothing) ``"pending"``.
Status = Literal["ready", "blocked", "pending"]
#: What a load did: ``"none"`` (nothing to do / warm), ``"built"``, ``"shared"`` (reused an
#: identical env), ``"repaired"`` (rebuilt because a check failed), ``"updated"``, or
#: ``"failed"`` (a build failed; the outcome says whether a previous env still serves).
Action = Literal["none", "built", "shared", "repaired", "updated", "failed"]

OutputCallback = Callable[[str, str], None]


class ToolRunner(Protocol):
    """Runs a tool of a ready plugin (a :class:`~ally_core.Host` is one)."""

    def run_tool(
        self,
        plugin: PluginOutcome,
        tool: Tool,
        arguments: Any = None,
        *,
        timeout: float | None = None,
        config: Mapping[str, str] | None = None,
        on_form: Optional[FormCallback] = None,
        on_output: Optional[OutputCallback] = None,
        cancel: Optional[threading.Event] = None,
    ) -> ToolResult: ...


@attrs.define
class PluginOutcome:
    """The result of loading one plugin."""

    name: str
    plugin_dir: Path
    #: ``"ready"``, ``"blocked"`` or (from :meth:`Host.status` and :meth:`Host.doctor`, which
    #: build nothing) ``"pending"``.
    status: Status
    reason: str = ""
    manifest: Optional[Manifest] = None
    env: Optional[EnvInfo] = None
    tools: list[BoundTool] = attrs.field(factory=list)
    warnings: list[str] = attrs.field(factory=list)
    #: What this load did: ``"none"`` (nothing to do / warm), ``"built"``, ``"shared"``
    #: (reused an identical env), ``"repaired"``, ``"updated"`` or ``"failed"``.
    action: Action = "none"
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
        """The tool called ``name``; ``ToolNotFound`` (a ``PluginNotFound``) if none."""
        for tool in self.tools:
            if tool.name == name:
                return tool
        known = ", ".join(t.name for t in self.tools) or "none"
        raise ToolNotFound(f"{self.name}: no tool named {name!r} (tools: {known})")


@attrs.frozen
class BoundTool:
    """A tool of a ready plugin, callable from the host."""

    runner: ToolRunner = attrs.field(repr=False)
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
        on_output: Optional[OutputCallback] = None,
        cancel: Optional[threading.Event] = None,
    ) -> ToolResult:
        """Run the tool with ``arguments`` as its JSON input; return its :class:`ToolResult`.

        ``on_form`` answers an interactive tool's forms (return the values, or ``None`` to
        cancel; without it every form is cancelled); ``on_output(stream, text)`` receives the
        tool's stdout and stderr as they arrive; setting the ``cancel`` event kills the tool
        (:class:`ToolError` with ``error_type`` ``"cancelled"``). Secret config values are
        masked in every text of the result.
        """
        return self.runner.run_tool(
            self.plugin,
            self.spec,
            arguments,
            timeout=timeout,
            config=config,
            on_form=on_form,
            on_output=on_output,
            cancel=cancel,
        )
