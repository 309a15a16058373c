"""Interactive tools: forms asked on stdout, answered on stdin (Code Ally's form protocol).

A tool declared ``"interactive": true`` gets its JSON input followed by a newline, and its
stdin stays open. To ask the user something it prints a JSON object carrying
``"__ally_form_request": true`` (other output may come before it)::

    {"__ally_form_request": true,
     "schema": {"title": "Solve", "description": "…",
                "fields": [{"name": "x", "type": "number", "label": "x", "required": true,
                            "default": 1, "validation": {"min": 0, "max": 10}}]},
     "initialValues": {"x": 2}}

ally removes that object from the output and answers with one stdin line::

    {"__ally_form_response": true, "success": true, "data": {"x": 3}}

or ``{"__ally_form_response": true, "success": false, "cancelled": true}`` when the user
cancels, or ``{…, "success": false, "error": "…"}`` when the form could not be shown. A call
may ask several forms. Field types, as Code Ally's form UI had them: ``string``,
``textarea``, ``number``, ``boolean``, ``choice`` (``choices``: values, or objects with
``value`` and ``label``; ``"multiSelect": true`` answers a list; a choice whose value is
``__other__`` lets the user type any text) and ``label`` (text shown, nothing asked).
``validation`` holds ``min``/``max`` (numbers) and ``minLength``/``maxLength``/``pattern``
(text).
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from typing import Any, Callable, Optional

import attrs

from .errors import ToolInputError

__all__ = [
    "FormCallback",
    "FormRequest",
    "extract_form_request",
    "form_response",
    "merged_values",
    "validate_form_values",
]

MARKER = '"__ally_form_request"'
FIELD_TYPES = ("string", "textarea", "number", "boolean", "choice", "label")
#: The choice value that stands for "any text the user types" (Code Ally's "Other").
OTHER = "__other__"
#: How many opening braces before the marker are tried as the start of the request.
_MAX_STARTS = 256


@attrs.frozen
class FormRequest:
    """One form an interactive tool asks for."""

    plugin: str
    tool: str
    schema: Mapping[str, Any]
    initial_values: Mapping[str, Any] = attrs.field(factory=dict)

    @property
    def title(self) -> str:
        title = self.schema.get("title")
        return title if isinstance(title, str) and title else f"{self.tool} form"

    @property
    def description(self) -> str:
        text = self.schema.get("description")
        return text if isinstance(text, str) else ""

    @property
    def fields(self) -> list[dict[str, Any]]:
        raw = self.schema.get("fields")
        if not isinstance(raw, list):
            return []
        return [f for f in raw if isinstance(f, dict) and isinstance(f.get("name"), str)]

    @classmethod
    def from_reply(cls, plugin: str, tool: str, data: Mapping[str, Any]) -> FormRequest:
        schema = data.get("schema")
        initial = data.get("initialValues")
        return cls(
            plugin,
            tool,
            schema if isinstance(schema, dict) else {},
            initial if isinstance(initial, dict) else {},
        )


#: Answers a form: the values, or ``None`` to cancel. Raising sends the tool an error.
FormCallback = Callable[[FormRequest], Optional[Mapping[str, Any]]]


def extract_form_request(buffer: str) -> Optional[tuple[dict[str, Any], int, int]]:
    """The first complete form request in ``buffer`` and where it starts and ends, or ``None``.

    The request may follow other output and its marker key need not come first: each ``{``
    before the marker is tried, nearest first, until one decodes to an object holding the
    marker. An incomplete request (the rest not read yet) gives ``None``.
    """
    at = buffer.find(MARKER)
    if at < 0:
        return None
    decoder = json.JSONDecoder()
    start = at
    for _ in range(_MAX_STARTS):
        start = buffer.rfind("{", 0, start)
        if start < 0:
            return None
        try:
            value, end = decoder.raw_decode(buffer, start)
        except (ValueError, RecursionError):
            continue
        if end > at and isinstance(value, dict) and value.get("__ally_form_request"):
            return value, start, end
    return None


def form_response(
    values: Optional[Mapping[str, Any]] = None, *, error: Optional[str] = None
) -> bytes:
    """The stdin line answering a form: values, a cancel (``None``) or an error."""
    if error is not None:
        body: dict[str, Any] = {"success": False, "error": error}
    elif values is None:
        body = {"success": False, "cancelled": True}
    else:
        body = {"success": True, "data": dict(values)}
    return (json.dumps({"__ally_form_response": True, **body}) + "\n").encode()


def merged_values(request: FormRequest, given: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Each field's default, under the request's initial values, under ``given``."""
    out: dict[str, Any] = {}
    for field in request.fields:
        if "default" in field:
            out[field["name"]] = field["default"]
    names = {f["name"] for f in request.fields}
    out.update({k: v for k, v in request.initial_values.items() if k in names or not names})
    out.update(given or {})
    return out


def _choices(field: Mapping[str, Any]) -> list[Any]:
    raw = field.get("choices")
    if not isinstance(raw, list):
        return []
    return [c.get("value") if isinstance(c, dict) else c for c in raw]


def coerce_field(field: Mapping[str, Any], value: Any) -> Any:
    """``value`` as the field's type (a string typed at a prompt becomes a number…)."""
    kind = field.get("type", "string")
    if kind == "number" and isinstance(value, str):
        try:
            number = float(value)
        except ValueError:
            return value
        return int(number) if number.is_integer() and "." not in value else number
    if kind == "boolean" and isinstance(value, str):
        lowered = value.strip().lower()
        if lowered in {"y", "yes", "true", "1"}:
            return True
        if lowered in {"n", "no", "false", "0"}:
            return False
    return value


def validate_form_values(request: FormRequest, values: Mapping[str, Any]) -> dict[str, Any]:
    """Check answers against the form's fields; return them. Raises :class:`ToolInputError`."""
    if not isinstance(values, Mapping):
        raise ToolInputError(f"{request.plugin}: form {request.title!r}: answers must be an object")
    out = dict(values)
    problems = []
    for field in request.fields:
        name = field["name"]
        kind = field.get("type", "string")
        if kind == "label":
            continue  # shown, not asked
        if name not in out or out[name] is None or out[name] == "" or out[name] == []:
            if field.get("required"):
                problems.append(f"{name}: required")
            continue
        value = out[name] = coerce_field(field, out[name])
        rules = field.get("validation")
        rules = rules if isinstance(rules, dict) else {}
        if kind == "number":
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                problems.append(f"{name}: expected a number, got {json.dumps(value)}")
                continue
            if not math.isfinite(value):
                problems.append(f"{name}: expected a finite number")
                continue
            low, high = rules.get("min"), rules.get("max")
            if isinstance(low, (int, float)) and value < low:
                problems.append(f"{name}: must be at least {low}")
            if isinstance(high, (int, float)) and value > high:
                problems.append(f"{name}: must be at most {high}")
        elif kind == "boolean" and not isinstance(value, bool):
            problems.append(f"{name}: expected true or false, got {json.dumps(value)}")
        elif kind == "choice":
            problems.extend(_choice_problems(field, name, value))
        elif kind in ("string", "textarea"):
            if not isinstance(value, str):
                problems.append(f"{name}: expected a string, got {json.dumps(value)}")
            else:
                problems.extend(_text_problems(rules, name, value))
    if problems:
        raise ToolInputError(f"{request.plugin}: form {request.title!r}: " + "; ".join(problems))
    return out


def _choice_problems(field: Mapping[str, Any], name: str, value: Any) -> list[str]:
    allowed = _choices(field)
    other = OTHER in allowed  # any text the user typed is an answer too
    if field.get("multiSelect") is True:
        if not isinstance(value, list):
            return [f"{name}: expected a list of choices, got {json.dumps(value)}"]
        picks = value
    else:
        picks = [value]
    shown = ", ".join(json.dumps(c) for c in allowed if c != OTHER)
    if other:
        shown += " or any other text"
    return [
        f"{name}: {json.dumps(pick)} is not one of {shown}"
        for pick in picks
        if pick == OTHER or (pick not in allowed and not (other and isinstance(pick, str)))
    ]


def _text_problems(rules: Mapping[str, Any], name: str, value: str) -> list[str]:
    problems = []
    shortest, longest, pattern = (
        rules.get("minLength"),
        rules.get("maxLength"),
        rules.get("pattern"),
    )
    if isinstance(shortest, int) and len(value) < shortest:
        problems.append(f"{name}: must be at least {shortest} characters")
    if isinstance(longest, int) and len(value) > longest:
        problems.append(f"{name}: must be at most {longest} characters")
    if isinstance(pattern, str):
        try:
            matched = re.search(pattern, value) is not None
        except re.error:
            matched = True  # a broken pattern in the tool's form is not the user's fault
        if not matched:
            problems.append(f"{name}: does not match the pattern {pattern!r}")
    return problems
