"""A plugin's config schema and tool input validation: which config keys exist and which are
secret, values converted from the command line and checked, ``PLUGIN_CONFIG_*`` text, and a
tool's input checked against its ``schema`` (see :mod:`.plugin_config` for the values stored).

A manifest's ``config`` is a JSON-Schema-like object (``{"type": "object", "properties":
{...}, "required": [...]}``, or the same under ``config.schema``). A property with
``"secret": true`` is masked in every output of ally; secret keys match in any case
(``TOKEN`` is the ``token`` secret).
"""

from __future__ import annotations

import functools
import json
from collections.abc import Mapping
from typing import Any, Optional

from .errors import ConfigError, ToolInputError
from .manifest import Manifest, Tool
from .text import MASK, mask_text

__all__ = [
    "as_env",
    "canonical_key",
    "check_key",
    "check_key_text",
    "coerce",
    "config_properties",
    "config_schema",
    "is_secret",
    "mask_values",
    "secret_keys",
    "secret_values",
    "validate_input",
    "validate_values",
]


def config_schema(manifest: Manifest) -> Optional[dict[str, Any]]:
    config = manifest.config
    if not config:
        return None
    schema = config.get("schema", config)
    return schema if isinstance(schema, dict) else None


def config_properties(manifest: Optional[Manifest]) -> dict[str, Any]:
    schema = config_schema(manifest) if manifest else None
    props = (schema or {}).get("properties")
    return props if isinstance(props, dict) else {}


def secret_keys(manifest: Optional[Manifest]) -> set[str]:
    """The config properties the manifest marks ``"secret": true``, as spelled there."""
    props = config_properties(manifest)
    return {k for k, v in props.items() if isinstance(v, dict) and v.get("secret") is True}


def is_secret(manifest: Optional[Manifest], key: str) -> bool:
    """Whether ``key`` is a secret, in any case: ``TOKEN`` and ``token`` both reach the tool as
    ``PLUGIN_CONFIG_TOKEN``, so both are the ``token`` secret."""
    wanted = key.upper()
    return any(k.upper() == wanted for k in secret_keys(manifest))


def canonical_key(manifest: Optional[Manifest], key: str) -> str:
    """The property ``key`` names, spelled as the schema spells it (``TOKEN`` -> ``token``)
    when exactly one property matches it case-insensitively; else ``key`` itself."""
    props = config_properties(manifest)
    if key in props:
        return key
    matches = [k for k in props if k.upper() == key.upper()]
    return matches[0] if len(matches) == 1 else key


def mask_values(manifest: Optional[Manifest], values: Mapping[str, Any]) -> dict[str, Any]:
    """``values`` with every secret (in any case) shown as the mask."""
    return {k: (MASK if is_secret(manifest, k) else v) for k, v in values.items()}


def secret_values(manifest: Optional[Manifest], values: Mapping[str, Any]) -> list[str]:
    """The secret values among ``values`` (config keys in any case, e.g. what
    :func:`~ally_core.plugin_config.resolve_config` returned), as the strings a tool or a
    message could show them: pass the result to :func:`~ally_core.text.mask_text`."""
    return [as_env(v) for k, v in values.items() if v is not None and is_secret(manifest, k)]


def check_key_text(manifest: Manifest, key: Any) -> None:
    """A key becomes part of an environment variable's name (``PLUGIN_CONFIG_<KEY>``)."""
    if not isinstance(key, str) or not key or "=" in key or "\0" in key:
        raise ConfigError(
            f"{manifest.name}: config: invalid key {key!r}: a key reaches the tool as "
            "PLUGIN_CONFIG_<KEY>, so it must be non-empty, without '=' or NUL"
        )


def check_key(manifest: Manifest, key: str) -> None:
    """Refuse a key the plugin's config schema does not declare (with a guess), unless the
    schema lets other keys in (``additionalProperties`` given and not false, or
    ``patternProperties``)."""
    check_key_text(manifest, key)
    schema = config_schema(manifest)
    if schema is None:
        raise ConfigError(f"{manifest.name}: declares no config, so it has no key {key!r}")
    props = config_properties(manifest)
    if key in props:
        return
    extra = schema.get("additionalProperties", False)
    if schema.get("patternProperties") or (extra is not False and "additionalProperties" in schema):
        return
    from .text import did_you_mean

    known = ", ".join(sorted(props)) or "none"
    raise ConfigError(
        f"{manifest.name}: config: unknown key {key!r}{did_you_mean(key, props)} (known: {known})"
    )


def coerce(manifest: Manifest, key: str, raw: Any) -> Any:
    """Turn a string given on a command line into the type the schema asks for."""
    check_key(manifest, key)
    props = config_properties(manifest)
    if isinstance(raw, str) and "\0" in raw:
        raise ConfigError(f"{manifest.name}: config: {key}: a value cannot contain a NUL byte")
    if not isinstance(raw, str):
        return raw
    kind = (props.get(key) or {}).get("type") if isinstance(props.get(key), dict) else None
    try:
        if kind == "integer":
            return int(raw)
        if kind == "number":
            return float(raw)
        if kind == "boolean":
            if raw.lower() not in {"true", "false", "1", "0", "yes", "no"}:
                raise ValueError(f"expected true or false, got {raw!r}")
            return raw.lower() in {"true", "1", "yes"}
        if kind in {"array", "object"}:
            return json.loads(raw)
    except RecursionError:
        raise ConfigError(f"{manifest.name}: config: {key}: nested too deeply") from None
    except ValueError as exc:
        # The parser's message quotes the value: never for a secret.
        detail = "invalid value" if is_secret(manifest, key) else str(exc)
        raise ConfigError(f"{manifest.name}: config: {key}: {detail}") from None
    return raw


#: Code Ally's config property types that JSON Schema does not have; their values are text.
_TEXT_TYPES = frozenset({"choice", "filepath", "directory"})


def _as_json_schema(schema: dict[str, Any]) -> dict[str, Any]:
    """Code Ally's config format read as the JSON Schema it means: a property's own
    ``"required": true|false`` (its ``ConfigProperty.required``) becomes the object's
    ``required`` list, and its types ``choice`` (one of ``choices``), ``filepath`` and
    ``directory`` become strings. A plain JSON Schema comes back unchanged."""
    props = schema.get("properties")
    if not isinstance(props, dict):
        return schema
    required = list(schema["required"]) if isinstance(schema.get("required"), list) else []
    out: dict[str, Any] = {}
    changed = False
    for key, prop in props.items():
        if isinstance(prop, dict) and (
            isinstance(prop.get("required"), bool) or prop.get("type") in _TEXT_TYPES
        ):
            changed = True
            prop = dict(prop)
            if prop.pop("required", False) is True and key not in required:
                required.append(key)
            if prop.get("type") in _TEXT_TYPES:
                choices = prop.get("choices") if prop["type"] == "choice" else None
                prop["type"] = "string"
                if isinstance(choices, list):
                    prop["enum"] = [c.get("value") if isinstance(c, dict) else c for c in choices]
        out[key] = prop
    if not changed:
        return schema
    return {**schema, "properties": out, **({"required": required} if required else {})}


def validate_values(
    manifest: Manifest, values: Mapping[str, Any], *, partial: bool = False
) -> None:
    schema = config_schema(manifest)
    if not schema:
        return
    schema = _as_json_schema(schema)
    if partial:
        schema = {k: v for k, v in schema.items() if k != "required"}
    import jsonschema

    try:
        validator = _validator(json.dumps(schema, sort_keys=True))
        errors = sorted(validator.iter_errors(dict(values)), key=lambda e: list(e.absolute_path))
    except jsonschema.SchemaError as exc:
        raise ConfigError(
            f"{manifest.name}: config: the plugin's config schema is invalid: "
            + mask_text(exc.message, secret_values(manifest, values))
        ) from None
    except RecursionError:
        raise ConfigError(
            f"{manifest.name}: config: the config schema or a value is nested too deeply"
        ) from None
    except Exception as exc:  # e.g. a $ref that cannot be resolved
        raise ConfigError(
            f"{manifest.name}: config: the plugin's config schema cannot be used: "
            f"{exc.__class__.__name__}"
        ) from None
    if errors:
        parts = []
        for error in errors:
            where = ".".join(str(p) for p in error.absolute_path)
            # Never echo a secret value back in an error message.
            first = error.absolute_path[0] if error.absolute_path else None
            secret = isinstance(first, str) and is_secret(manifest, first)
            message = "invalid value" if secret else error.message
            parts.append(f"{where}: {message}" if where else message)
        raise ConfigError(
            f"{manifest.name}: config: "
            + mask_text("; ".join(parts), secret_values(manifest, values))
        )


def as_env(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (dict, list)):
        return json.dumps(value)
    return str(value)


@functools.lru_cache(maxsize=256)
def _validator(schema_json: str) -> Any:
    """A checked validator per schema (checking a schema costs more than using it)."""
    import jsonschema

    schema = json.loads(schema_json)
    cls = jsonschema.validators.validator_for(schema, default=jsonschema.Draft202012Validator)
    cls.check_schema(schema)
    return cls(schema)


def validate_input(plugin: str, tool: Tool, arguments: Any) -> None:
    """Check ``arguments`` against the tool's ``schema`` before anything is spawned."""
    if not tool.schema:
        return
    import jsonschema

    data = {} if arguments is None else arguments
    try:
        validator = _validator(json.dumps(tool.schema, sort_keys=True))
    except RecursionError:
        raise ToolInputError(
            f"{plugin}: tool {tool.name!r}: its schema is nested too deeply"
        ) from None
    except jsonschema.SchemaError as exc:
        raise ToolInputError(
            f"{plugin}: tool {tool.name!r}: its schema is invalid: {exc.message}"
        ) from None
    try:
        error = jsonschema.exceptions.best_match(validator.iter_errors(data))
    except RecursionError:
        raise ToolInputError(
            f"{plugin}: tool {tool.name!r}: input or schema is nested too deeply to check"
        ) from None
    if error is not None:
        where = "$" + "".join(
            f"[{p}]" if isinstance(p, int) else f".{p}" for p in error.absolute_path
        )
        raise ToolInputError(f"{plugin}: tool {tool.name!r}: input {where}: {error.message}")
