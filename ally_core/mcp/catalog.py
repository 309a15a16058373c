"""Which tools an MCP client sees, under which names, and how their answers are shown.

Nothing here imports the MCP SDK: the protocol side lives in :mod:`ally_core.mcp.server`.

Naming rule (MCP tool names are ``[A-Za-z0-9_.-]``, at most 64 characters here, the limit the
strictest hosts apply):

1. a tool is listed under its own name, any other character replaced by ``_``, when no other
   tool of the served plugins (ready or not) has that name;
2. otherwise under ``<plugin>__<tool>`` (two underscores), sanitized the same way;
3. a name that is still taken, or longer than 64 characters, becomes its first 55 characters,
   ``_`` and 8 hex digits of the SHA-256 of ``<plugin>/<tool>``.

The names depend only on the set of plugins served, never on build order, so they are the
same in every session over the same plugins.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import threading
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Callable, Optional

import attrs

from ..config import strip_credentials
from ..manifest import Manifest, Tool
from ..plugin_config import MASK, config_schema, load_stored, secret_keys
from ..process import cancel_token

if TYPE_CHECKING:
    from ..envs import ProgressEvent
    from ..forms import FormRequest
    from ..host import Host, PluginOutcome
    from ..replies import ToolResult

__all__ = [
    "MAX_NAME",
    "Catalog",
    "Entry",
    "Masker",
    "describe",
    "exposed_names",
    "form_request_schema",
    "input_schema",
    "result_payload",
]

log = logging.getLogger("ally.mcp")

MAX_NAME = 64
SEPARATOR = "__"
_BAD_CHARS = re.compile(r"[^A-Za-z0-9_.-]")
#: ``_meta`` key prefix of what ally adds to a tool.
META = "ally/"


def _sanitize(text: str) -> str:
    return _BAD_CHARS.sub("_", text) or "_"


def _hashed(base: str, plugin: str, tool: str) -> str:
    digest = hashlib.sha256(f"{plugin}/{tool}".encode()).hexdigest()[:8]
    return f"{base[: MAX_NAME - 9]}_{digest}"


def exposed_names(pairs: Iterable[tuple[str, str]]) -> dict[tuple[str, str], str]:
    """``(plugin, tool)`` -> its MCP name, by the rule of this module's docstring."""
    pairs = sorted(set(pairs))
    plain = Counter(_sanitize(tool) for _, tool in pairs)
    first: dict[tuple[str, str], str] = {}
    for plugin, tool in pairs:
        base = _sanitize(tool)
        if plain[base] > 1:
            base = f"{_sanitize(plugin)}{SEPARATOR}{base}"
        first[(plugin, tool)] = base
    taken = Counter(first.values())
    return {
        pair: name
        if taken[name] == 1 and len(name) <= MAX_NAME
        else _hashed(name, pair[0], pair[1])
        for pair, name in first.items()
    }


def input_schema(tool: Tool) -> Optional[dict[str, Any]]:
    """The tool's schema as an MCP ``inputSchema``; ``None`` when it does not take an object."""
    schema = tool.schema
    if not schema:
        return {"type": "object"}
    kind = schema.get("type")
    if kind is None:
        return {"type": "object", **schema}
    if kind == "object":
        return dict(schema)
    return None


@attrs.frozen
class Entry:
    """One tool of one plugin under its MCP name."""

    name: str
    plugin: str
    tool: Tool
    #: The plugin's manifest description, a fallback for tools without one.
    plugin_description: Optional[str] = None


def describe(entry: Entry) -> dict[str, Any]:
    """The ``Tool`` object of ``tools/list`` for ``entry`` (``inputSchema`` must be valid)."""
    tool = entry.tool
    confirm, asks = tool.requires_confirmation, tool.interactive
    out: dict[str, Any] = {
        "name": entry.name,
        "description": tool.description or entry.plugin_description or "",
        "inputSchema": input_schema(tool),
        "_meta": {
            f"{META}plugin": entry.plugin,
            f"{META}tool": tool.name,
            f"{META}requiresConfirmation": confirm,
            f"{META}interactive": asks,
        },
    }
    if confirm:
        # A tool its author wants confirmed is treated as one that changes things.
        out["annotations"] = {"readOnlyHint": False, "destructiveHint": True}
    return out


class Masker:
    """Replaces a plugin's secret config values in every text shown to a client."""

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        # Longest first: a secret containing another is masked whole.
        self.secrets = sorted({s for s in secrets if s}, key=len, reverse=True)

    def text(self, text: str) -> str:
        for secret in self.secrets:
            text = text.replace(secret, MASK)
        return strip_credentials(text)  # type: ignore[no-any-return]

    def value(self, value: Any) -> Any:
        """``value`` (decoded JSON) with every string masked, keys too."""
        if isinstance(value, str):
            return self.text(value)
        if isinstance(value, dict):
            return {self.text(str(k)): self.value(v) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return [self.value(v) for v in value]
        return value


def secret_values(host: Host, manifest: Optional[Manifest]) -> list[str]:
    """The plugin's secret config values (stored or default), as the tool receives them."""
    if manifest is None:
        return []
    keys = secret_keys(manifest)
    if not keys:
        return []
    props = (config_schema(manifest) or {}).get("properties") or {}
    values = {k: props[k]["default"] for k in keys if "default" in props.get(k, {})}
    try:
        values.update({k: v for k, v in load_stored(host, manifest.name).items() if k in keys})
    except Exception:  # an unreadable store fails the call later, with its own message
        log.debug("cannot read the stored config of %s", manifest.name)
    out = []
    for value in values.values():
        if value is None:
            continue
        out.append(value if isinstance(value, str) else json.dumps(value))
        out.append(str(value))
    return out


def result_payload(result: ToolResult) -> dict[str, Any]:
    """What the tool answered (its whole reply plus ally's verdict), secrets masked."""
    return result.masked().to_json()


def form_request_schema(request: FormRequest) -> tuple[str, dict[str, Any]]:
    """An interactive tool's form as an MCP elicitation: ``(message, requestedSchema)``.

    Fields are ``{name, type: string|number|boolean|choice, label, description, required,
    default, choices, validation: {min, max}}``; a form's initial values win over defaults.
    """
    props: dict[str, Any] = {}
    required: list[str] = []
    initial_values = request.initial_values
    for field in request.fields:
        name = field["name"]
        kind = field.get("type", "string")
        prop: dict[str, Any] = {}
        raw = field.get("validation")
        validation: Mapping[str, Any] = raw if isinstance(raw, Mapping) else {}
        if kind == "choice":
            values, labels = [], []
            for choice in field.get("choices") or []:
                if isinstance(choice, Mapping):
                    values.append(str(choice.get("value", choice.get("label", ""))))
                    labels.append(str(choice.get("label", choice.get("value", ""))))
                else:
                    values.append(str(choice))
                    labels.append(str(choice))
            prop = {"type": "string", "enum": values}
            if labels != values:
                prop["enumNames"] = labels
        elif kind == "number":
            prop = {"type": "number"}
            for key, target in (("min", "minimum"), ("max", "maximum")):
                if isinstance(validation.get(key), (int, float)):
                    prop[target] = validation[key]
        elif kind == "boolean":
            prop = {"type": "boolean"}
        else:
            prop = {"type": "string"}
            for key, target in (("min", "minLength"), ("max", "maxLength")):
                if isinstance(validation.get(key), int):
                    prop[target] = validation[key]
        if isinstance(field.get("label"), str):
            prop["title"] = field["label"]
        if isinstance(field.get("description"), str):
            prop["description"] = field["description"]
        default = initial_values.get(name, field.get("default"))
        if default is not None:
            prop["default"] = default
        props[name] = prop
        if field.get("required") is True:
            required.append(name)
    requested: dict[str, Any] = {"type": "object", "properties": props}
    if required:
        requested["required"] = required
    title, description = request.title, request.description
    return (f"{title}\n{description}" if description else title), requested


ProgressFactory = Callable[[str], Callable[["ProgressEvent"], None]]


class Catalog:
    """The served plugins, their state and their tools' MCP names; safe across threads.

    :meth:`refresh` reads every plugin's state without starting a process (a warm check,
    about 100 µs a plugin) and says whether the listed tools changed and which plugins need a
    build; :meth:`build` makes one ready (call it from a worker thread).
    """

    def __init__(
        self,
        host: Host,
        build_host: Host,
        *,
        plugins: Sequence[str] = (),
        progress: Optional[ProgressFactory] = None,
    ) -> None:
        #: Reads states (one thread at a time: :meth:`refresh` holds a lock).
        self.host = host
        #: Builds envs and runs tools (thread-safe, separate so reads never wait for it).
        self.build_host = build_host
        self.wanted = set(plugins)
        self.progress = progress
        self.stop = threading.Event()
        self._lock = threading.Lock()
        self._refreshing = threading.Lock()
        self._outcomes: dict[str, PluginOutcome] = {}
        self._entries: dict[str, Entry] = {}
        self._listed: list[Entry] = []
        self._signature: Any = None
        self._logged: dict[str, str] = {}
        self._attempted: dict[str, tuple[str, Any]] = {}
        self._building: set[str] = set()

    # -- reading -------------------------------------------------------------------------------

    def _selected(self, outcomes: Sequence[PluginOutcome]) -> list[PluginOutcome]:
        if not self.wanted:
            return list(outcomes)
        return [o for o in outcomes if o.name in self.wanted or o.plugin_dir.name in self.wanted]

    def missing(self) -> list[str]:
        """Names given with ``--plugin`` that match no plugin (reads the states, builds nothing)."""
        if not self.wanted:
            return []
        with self._refreshing:
            outcomes = self.host.status()
        found = {o.name for o in outcomes} | {o.plugin_dir.name for o in outcomes}
        return sorted(self.wanted - found)

    def refresh(self) -> tuple[bool, list[str]]:
        """Re-read every plugin's state: ``(listed tools changed, plugins to build now)``."""
        with self._refreshing:
            outcomes = self._selected(self.host.status())
            return self._update(outcomes)

    def _update(self, outcomes: Sequence[PluginOutcome]) -> tuple[bool, list[str]]:
        pairs = [
            (o.name, t.name) for o in outcomes if o.manifest is not None for t in o.manifest.tools
        ]
        names = exposed_names(pairs)
        entries: dict[str, Entry] = {}
        listed: list[Entry] = []
        for outcome in outcomes:
            manifest = outcome.manifest
            if manifest is None:
                continue
            for tool in manifest.tools:
                entry = Entry(
                    names[(outcome.name, tool.name)], outcome.name, tool, manifest.description
                )
                if input_schema(tool) is None:
                    self._log_once(
                        f"{outcome.name}/{tool.name}",
                        f"{outcome.name}: tool {tool.name!r} is not exposed: its schema's "
                        f"type is {tool.schema.get('type') if tool.schema else None!r}, "
                        "MCP tools take an object",
                    )
                    continue
                entries[entry.name] = entry
                if outcome.ready:
                    listed.append(entry)
        signature = [(e.name, json.dumps(describe(e), sort_keys=True)) for e in listed]
        to_build = []
        with self._lock:
            self._outcomes = {o.name: o for o in outcomes}
            self._entries = entries
            self._listed = listed
            changed = signature != self._signature
            self._signature = signature
            for outcome in outcomes:
                if outcome.status == "blocked":
                    self._log_once(outcome.name, f"{outcome.name}: blocked: {outcome.reason}")
                elif outcome.status == "ready":
                    self._logged.pop(outcome.name, None)
                elif outcome.status == "pending":
                    state = (outcome.reason, outcome.manifest)
                    if (
                        outcome.name not in self._building
                        and self._attempted.get(outcome.name) != state
                    ):
                        self._attempted[outcome.name] = state
                        self._building.add(outcome.name)
                        to_build.append(outcome.name)
        return changed, to_build

    def _log_once(self, key: str, message: str) -> None:
        if self._logged.get(key) != message:
            self._logged[key] = message
            log.warning("%s", message)

    def tools(self) -> list[Entry]:
        """The tools of ready plugins, in plugin order."""
        with self._lock:
            return list(self._listed)

    def resolve(self, name: str) -> Optional[Entry]:
        """The tool listed (or to be listed once its plugin is ready) under ``name``."""
        with self._lock:
            return self._entries.get(name)

    def outcome(self, plugin: str) -> Optional[PluginOutcome]:
        with self._lock:
            return self._outcomes.get(plugin)

    def masker(self, plugin: str) -> Masker:
        outcome = self.outcome(plugin)
        return Masker(secret_values(self.host, outcome.manifest if outcome else None))

    # -- building ------------------------------------------------------------------------------

    def build(
        self, plugin: str, progress: Optional[Callable[[ProgressEvent], None]] = None
    ) -> PluginOutcome:
        """Make ``plugin`` ready (or learn why not); installers stop when :attr:`stop` is set."""
        if progress is None and self.progress is not None:
            progress = self.progress(plugin)
        try:
            with cancel_token(self.stop):
                outcome = self.build_host.ensure(plugin, progress=progress)
        finally:
            with self._lock:
                self._building.discard(plugin)
        if outcome.ready:
            with self._lock:
                self._logged.pop(plugin, None)
        else:
            with self._lock:
                self._log_once(plugin, f"{plugin}: blocked: {outcome.reason}")
        return outcome
