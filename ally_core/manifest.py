"""``plugin.json``: attrs models and the one cattrs converter that reads them.

Every problem of one manifest is reported together, each with its JSON path
(``$.tools[0].args: expected a list of strings``). Keys this model does not know are kept in
``extra`` (Code Ally's ``config``, ``activationMode``, ``requiresConfirmation``, … are known and
kept silently; anything else is kept with a warning) so a host never loses data and never
crashes on a manifest written for a newer version.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Optional

import attrs

from .errors import ManifestError

if TYPE_CHECKING:
    import cattrs
from .paths import PLUGIN_NAME_RE

__all__ = [
    "MANIFEST_NAME",
    "Dependencies",
    "Manifest",
    "Tool",
    "load_manifest",
    "manifest_warnings",
    "parse_manifest",
]

MANIFEST_NAME = "plugin.json"

#: Keys Code Ally's host read from a plugin.json (its ``PluginManifest``) or that package
#: manifests commonly carry: ally keeps them without a warning.
KNOWN_EXTRA_KEYS = frozenset(
    {
        "$schema",
        "activationMode",
        "agents",
        "visible_to",
        "homepage",
        "license",
        "repository",
        "keywords",
        "tags",
        "icon",
        "main",
        "type",
        "engines",
        "category",
        "warm",  # false: tools always spawn, never a warm worker (ally_core.workers)
    }
)
#: Keys of Code Ally's ``ToolDefinition`` (and common extras) kept without a warning.
KNOWN_TOOL_EXTRA_KEYS = frozenset(
    {
        "display_name",
        "interactive",
        "requiresConfirmation",
        "requires_confirmation",
        "subtext",
        "usageGuidance",
        "usage_guidance",
        "visible_to",
        "type",
        "category",
        "examples",
    }
)
#: Fields of Code Ally's ``AgentDefinition`` (``$.agents[i]``).
AGENT_KEYS = frozenset(
    {
        "name",
        "description",
        "system_prompt_file",
        "tools",
        "model",
        "temperature",
        "reasoning_effort",
        "usage_guidelines",
        "requirements",
        "visible_from_agents",
        "can_delegate_to_agents",
        "can_see_agents",
    }
)
#: A tool timeout at least this large is probably milliseconds, as Code Ally read it.
MILLISECONDS_HINT = 1000


@attrs.frozen
class Dependencies:
    """``$.dependencies``: what the runtime installs into the plugin's env."""

    file: Optional[str] = None
    install_command: Optional[str] = None
    #: Runtime-specific keys (e.g. ``"dev": false`` for node) passed on to the runtime.
    extra: Mapping[str, Any] = attrs.field(factory=dict)


@attrs.frozen
class Tool:
    """``$.tools[i]``: one command the host can run."""

    name: str
    command: str
    args: list[str] = attrs.field(factory=list)
    description: Optional[str] = None
    schema: Optional[dict[str, Any]] = None
    timeout: Optional[float] = None
    extra: Mapping[str, Any] = attrs.field(factory=dict)

    @property
    def interactive(self) -> bool:
        """Code Ally's ``interactive``: the tool may ask forms (see :mod:`ally_core.forms`)."""
        return self.extra.get("interactive") is True

    @property
    def requires_confirmation(self) -> bool:
        """Code Ally's ``requiresConfirmation``: a host asks the user before running it."""
        value = self.extra.get("requiresConfirmation", self.extra.get("requires_confirmation"))
        return value is True

    @property
    def visible_to(self) -> Optional[list[str]]:
        """Code Ally's ``visible_to``: the agents that see the tool (``None``: all)."""
        value = self.extra.get("visible_to")
        return list(value) if isinstance(value, list) else None

    @property
    def subtext(self) -> Optional[str]:
        """Code Ally's ``subtext``: a display template with ``{param}`` placeholders."""
        value = self.extra.get("subtext")
        return value if isinstance(value, str) else None

    @property
    def display_name(self) -> Optional[str]:
        value = self.extra.get("display_name")
        return value if isinstance(value, str) else None

    @property
    def usage_guidance(self) -> Optional[str]:
        value = self.extra.get("usageGuidance", self.extra.get("usage_guidance"))
        return value if isinstance(value, str) else None


@attrs.frozen
class Manifest:
    """A whole ``plugin.json``."""

    name: str
    version: Optional[str] = None
    description: Optional[str] = None
    author: Any = None
    runtime: Optional[str] = None
    #: Version constraint for the runtime's interpreter (PEP 440 for python, semver for node).
    runtime_version: Optional[str] = None
    dependencies: Optional[Dependencies] = None
    tools: list[Tool] = attrs.field(factory=list)
    config: Optional[dict[str, Any]] = None
    extra: Mapping[str, Any] = attrs.field(factory=dict)

    def tool(self, name: str) -> Tool | None:
        return next((t for t in self.tools if t.name == name), None)

    @property
    def activation_mode(self) -> str:
        """Code Ally's ``activationMode``: ``"always"`` (default) or ``"tagged"``."""
        value = self.extra.get("activationMode")
        return value if isinstance(value, str) else "always"

    @property
    def agents(self) -> list[dict[str, Any]]:
        """Code Ally's agent definitions (``$.agents``), as written."""
        value = self.extra.get("agents")
        return [a for a in value if isinstance(a, dict)] if isinstance(value, list) else []


def _strict(kind: type, label: str) -> Callable[[Any, Any], Any]:
    def hook(value: Any, _type: Any) -> Any:
        # bool is an int subclass; a JSON true is never a number here.
        if not isinstance(value, kind) or (kind is not bool and isinstance(value, bool)):
            raise TypeError(f"expected {label}, got {_json_type(value)}")
        return value

    return hook


def _json_type(value: Any) -> str:
    names = {
        dict: "an object",
        list: "an array",
        str: "a string",
        bool: "a boolean",
        int: "a number",
        float: "a number",
        type(None): "null",
    }
    return names.get(type(value), type(value).__name__)


@functools.cache
def _converter() -> cattrs.Converter:
    """The converter, made on the first manifest parsed cold (a warm load rebuilds manifests
    from the warm index without it, and importing cattrs costs every ``ally`` run)."""
    import cattrs

    conv = cattrs.Converter(detailed_validation=True, forbid_extra_keys=False)
    conv.register_structure_hook(str, _strict(str, "a string"))
    conv.register_structure_hook(bool, _strict(bool, "a boolean"))
    conv.register_structure_hook(float, lambda v, t: float(_strict((int, float), "a number")(v, t)))  # type: ignore[arg-type]
    conv.register_structure_hook_func(lambda t: t == dict[str, Any], _strict(dict, "an object"))

    # cattrs would happily iterate a string into a list of characters: check the JSON type
    # first, then let cattrs' own list hook structure (and path-annotate) the items. Order
    # matters: generated hooks capture the hooks of their field types when they are made.
    _register_strict_list(conv, list[str], "a list of strings")
    for cls in (Dependencies, Tool, Manifest):
        conv.register_structure_hook(cls, _with_extra(conv, cls))
        if cls is Tool:
            _register_strict_list(conv, list[Tool], "a list of tools")
    return conv


def _register_strict_list(conv: cattrs.Converter, list_type: Any, label: str) -> None:
    hook = _strict_list(conv.get_structure_hook(list_type), label)
    conv.register_structure_hook_func(lambda t: t == list_type, hook)


def _strict_list(items_hook: Callable[[Any, Any], Any], label: str) -> Callable[[Any, Any], Any]:
    def hook(value: Any, type_: Any) -> Any:
        if not isinstance(value, list):
            raise TypeError(f"expected {label}, got {_json_type(value)}")
        return items_hook(value, type_)

    return hook


def _with_extra(conv: cattrs.Converter, cls: type) -> Callable[[Any, Any], Any]:
    from cattrs.gen import make_dict_structure_fn, override

    base: Callable[[Any, Any], Any] = make_dict_structure_fn(cls, conv, extra=override(omit=True))
    names = {a.name for a in attrs.fields(cls)} - {"extra"}

    def hook(value: Any, _type: Any) -> Any:
        if not isinstance(value, dict):
            raise TypeError(f"expected an object, got {_json_type(value)}")
        obj = base({k: v for k, v in value.items() if k in names}, cls)
        extra = {k: v for k, v in value.items() if k not in names}
        return attrs.evolve(obj, extra=extra) if extra else obj

    return hook


def __getattr__(name: str) -> Any:
    if name == "CONVERTER":  # the converter, for code that used the module attribute
        return _converter()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _format_exception(exc: BaseException, _type: Any) -> str:
    if isinstance(exc, KeyError):
        return "required field missing"
    if isinstance(exc, (TypeError, ValueError)) and str(exc):
        return str(exc)
    return f"invalid value ({exc.__class__.__name__})"


def _paths(exc: BaseException) -> list[str]:
    out = []
    import cattrs

    for msg in cattrs.transform_error(exc, path="$", format_exception=_format_exception):
        text, _, where = msg.rpartition(" @ ")
        out.append(f"{where}: {text}" if text else msg)
    return out


def parse_manifest(data: Any, *, source: str = MANIFEST_NAME, plugin: str = "") -> Manifest:
    """Structure and validate decoded JSON; raise :class:`ManifestError` listing all problems."""
    label = plugin or (data.get("name") if isinstance(data, dict) else None) or "<unnamed>"
    label = label if isinstance(label, str) else "<unnamed>"
    if not isinstance(data, dict):
        raise ManifestError(label, source, [f"$: expected an object, got {_json_type(data)}"])
    problems: list[str] = []
    manifest: Manifest | None = None
    conv = _converter()
    import cattrs  # imported by _converter() already

    try:
        manifest = conv.structure(data, Manifest)
    except (cattrs.BaseValidationError, TypeError, ValueError) as exc:
        problems.extend(_paths(exc))
    problems.extend(_semantic_problems(data))
    if problems or manifest is None:
        raise ManifestError(label, source, _dedupe(problems) or ["$: invalid manifest"])
    return manifest


def _dedupe(items: list[str]) -> list[str]:
    return list(dict.fromkeys(items))


def _semantic_problems(data: Mapping[str, Any]) -> list[str]:
    """Rules a type cannot express. Reads the raw dict so they add to, not hide, type errors."""
    problems = []
    name = data.get("name")
    if isinstance(name, str) and not PLUGIN_NAME_RE.fullmatch(name):
        problems.append(
            f"$.name: {name!r} is not a valid plugin name "
            "(start with a letter or digit; then letters, digits, '.', '_', '-')"
        )
    deps = data.get("dependencies")
    if isinstance(deps, dict):
        if not deps.get("file") and not deps.get("install_command"):
            problems.append("$.dependencies: needs 'file' or 'install_command'")
        if not data.get("runtime"):
            problems.append("$.runtime: required when 'dependencies' is given")
    problems.extend(_extra_type_problems(data))
    tools = data.get("tools")
    if isinstance(tools, list):
        seen: set[str] = set()
        for i, tool in enumerate(tools):
            if not isinstance(tool, dict):
                continue
            tname, command = tool.get("name"), tool.get("command")
            if isinstance(tname, str):
                if not tname:
                    problems.append(f"$.tools[{i}].name: must not be empty")
                elif tname in seen:
                    problems.append(f"$.tools[{i}].name: duplicate tool name {tname!r}")
                seen.add(tname)
            if isinstance(command, str) and not command.strip():
                problems.append(f"$.tools[{i}].command: must not be empty")
            timeout = tool.get("timeout")
            if isinstance(timeout, (int, float)) and not isinstance(timeout, bool):
                import math  # (a manifest checked cold: warm loads take it from the index)

                if not math.isfinite(timeout):
                    problems.append(f"$.tools[{i}].timeout: must be a finite number")
                elif timeout <= 0:
                    problems.append(f"$.tools[{i}].timeout: must be positive")
    return problems


_BOOL_TOOL_KEYS = ("interactive", "requiresConfirmation", "requires_confirmation")
_STR_TOOL_KEYS = ("subtext", "display_name", "usageGuidance", "usage_guidance")


def _extra_type_problems(data: Mapping[str, Any]) -> list[str]:
    """Type rules of the Code Ally keys ally reads (kept in ``extra``)."""
    problems = []
    mode = data.get("activationMode")
    if mode is not None and mode not in ("always", "tagged"):
        problems.append(f"$.activationMode: expected 'always' or 'tagged', got {mode!r}")
    agents = data.get("agents")
    if agents is not None:
        if not isinstance(agents, list):
            problems.append(f"$.agents: expected a list of agents, got {_json_type(agents)}")
        else:
            for i, agent in enumerate(agents):
                if not isinstance(agent, dict):
                    problems.append(f"$.agents[{i}]: expected an object, got {_json_type(agent)}")
                elif not isinstance(agent.get("name"), str) or not agent.get("name"):
                    problems.append(f"$.agents[{i}].name: required field missing")
    tools = data.get("tools")
    for i, tool in enumerate(tools if isinstance(tools, list) else []):
        if not isinstance(tool, dict):
            continue
        for key in _BOOL_TOOL_KEYS:
            if key in tool and not isinstance(tool[key], bool):
                problems.append(
                    f"$.tools[{i}].{key}: expected a boolean, got {_json_type(tool[key])}"
                )
        for key in _STR_TOOL_KEYS:
            if key in tool and not isinstance(tool[key], str):
                problems.append(
                    f"$.tools[{i}].{key}: expected a string, got {_json_type(tool[key])}"
                )
        visible = tool.get("visible_to")
        if visible is not None and not (
            isinstance(visible, list) and all(isinstance(v, str) for v in visible)
        ):
            problems.append(f"$.tools[{i}].visible_to: expected a list of strings")
    return problems


def _one_edit_apart(a: str, b: str) -> bool:
    """Whether ``a`` becomes ``b`` by one insertion, deletion, substitution or swap of
    neighbours (case ignored: ``Dependencies`` is ``dependencies``)."""
    a, b = a.lower(), b.lower()
    if a == b:
        return True
    if abs(len(a) - len(b)) > 1:
        return False
    if len(a) == len(b):
        diff = [i for i in range(len(a)) if a[i] != b[i]]
        if len(diff) == 1:
            return True
        i = diff[0]
        return len(diff) == 2 and diff[1] == i + 1 and a[i] == b[i + 1] and a[i + 1] == b[i]
    short, long = (a, b) if len(a) < len(b) else (b, a)
    i = next((k for k in range(len(short)) if short[k] != long[k]), len(short))
    return short[i:] == long[i + 1 :]


def _unknown(key: str, known: Iterable[str]) -> str:
    near = [k for k in sorted(known) if _one_edit_apart(key, k)]
    return f"unknown key (kept); did you mean {near[0]!r}?" if near else "unknown key (kept)"


_MANIFEST_KEYS = frozenset(a.name for a in attrs.fields(Manifest)) - {"extra"} | KNOWN_EXTRA_KEYS
_TOOL_KEYS = frozenset(a.name for a in attrs.fields(Tool)) - {"extra"} | KNOWN_TOOL_EXTRA_KEYS
_DEPENDENCY_KEYS = frozenset(a.name for a in attrs.fields(Dependencies)) - {"extra"}


def manifest_warnings(manifest: Manifest) -> list[str]:
    """Unknown keys (kept, but probably typos: one edit from a known key says which), and
    a tool timeout that looks like Code Ally's milliseconds."""
    warnings = [
        f"$.{k}: {_unknown(k, _MANIFEST_KEYS)}" for k in manifest.extra if k not in _MANIFEST_KEYS
    ]
    deps = manifest.dependencies
    if deps is not None:
        warnings.extend(
            f"$.dependencies.{k}: unknown key (kept); did you mean {near!r}?"
            for k in deps.extra
            for near in [next((n for n in sorted(_DEPENDENCY_KEYS) if _one_edit_apart(k, n)), "")]
            if near and k != near
        )
    for i, tool in enumerate(manifest.tools):
        warnings.extend(
            f"$.tools[{i}].{k}: {_unknown(k, _TOOL_KEYS)}"
            for k in tool.extra
            if k not in _TOOL_KEYS
        )
        if tool.timeout is not None and tool.timeout >= MILLISECONDS_HINT:
            warnings.append(
                f"$.tools[{i}].timeout: {tool.timeout:g} is read as seconds "
                f"(Code Ally read milliseconds: write {tool.timeout / 1000:g} for the same limit)"
            )
    for i, agent in enumerate(manifest.agents):
        warnings.extend(
            f"$.agents[{i}].{k}: {_unknown(k, AGENT_KEYS)}" for k in agent if k not in AGENT_KEYS
        )
    return warnings


class _NonFiniteNumber(ValueError):
    pass


def _reject_constant(name: str) -> Any:
    # Python's json accepts NaN/Infinity, which are not JSON and break every timeout.
    raise _NonFiniteNumber(name)


def load_manifest(plugin_dir: Path, *, max_bytes: Optional[int] = None) -> Manifest:
    """Read ``plugin_dir/plugin.json``; any problem raises :class:`ManifestError`.

    With ``max_bytes``, at most that many bytes are read: a longer file is refused.
    """
    path = plugin_dir / MANIFEST_NAME
    label = plugin_dir.name
    try:
        with path.open("rb") as fh:
            raw = fh.read() if max_bytes is None else fh.read(max_bytes + 1)
    except OSError as exc:
        raise ManifestError(label, MANIFEST_NAME, [f"cannot read: {exc.strerror or exc}"]) from exc
    if max_bytes is not None and len(raw) > max_bytes:
        raise ManifestError(label, MANIFEST_NAME, [f"larger than {max_bytes} bytes"])
    try:
        data = json.loads(raw.decode("utf-8"), parse_constant=_reject_constant)
    except UnicodeDecodeError as exc:
        raise ManifestError(label, MANIFEST_NAME, [f"not UTF-8 ({exc.reason})"]) from exc
    except json.JSONDecodeError as exc:
        raise ManifestError(
            label,
            MANIFEST_NAME,
            [f"invalid JSON at line {exc.lineno} column {exc.colno}: {exc.msg}"],
        ) from exc
    except _NonFiniteNumber as exc:
        raise ManifestError(label, MANIFEST_NAME, [f"invalid JSON: {exc} is not allowed"]) from exc
    except RecursionError as exc:
        raise ManifestError(label, MANIFEST_NAME, ["invalid JSON: nested too deeply"]) from exc
    name = data.get("name") if isinstance(data, dict) else None
    return parse_manifest(data, plugin=name if isinstance(name, str) else label)


def manifest_to_cache(manifest: Manifest) -> dict[str, Any]:
    """A validated manifest as plain JSON data, for :func:`manifest_from_cache`."""
    return attrs.asdict(manifest, recurse=True)


def manifest_from_cache(data: Mapping[str, Any]) -> Manifest:
    """Rebuild a manifest from :func:`manifest_to_cache` data without validating it again.

    Only for data ally wrote itself from a validated manifest (the warm index): it is a few
    times faster than :func:`parse_manifest`. Raises ``TypeError``/``KeyError`` on bad shapes.
    """
    deps = data["dependencies"]
    return Manifest(
        **{
            **data,
            "dependencies": Dependencies(**deps) if deps is not None else None,
            "tools": [Tool(**tool) for tool in data["tools"]],
        }
    )
