"""Plugin configuration (``PLUGIN_CONFIG_<KEY>``) and tool input validation.

A manifest's ``config`` is a JSON-Schema-like object (``{"type": "object", "properties":
{...}, "required": [...]}``, or the same under ``config.schema``). A property with
``"secret": true`` is masked in every output of ally.

Values come from, lowest to highest priority: the property's ``default``, the per-plugin
config file (``ally config set``), and the values the host passes for one call. Stored values
live in ``<config dir>/plugin-config/<name>.json`` with file mode 0600 — in plain text, readable by
the user only: ally does not use the OS keyring, so keep that file's directory private.
"""

from __future__ import annotations

import functools
import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

from .errors import ConfigError, ToolInputError
from .manifest import Manifest, Tool
from .paths import check_plugin_name

if TYPE_CHECKING:
    from .loader import Host, PluginOutcome

__all__ = [
    "MASK",
    "config_schema",
    "load_stored",
    "mask_values",
    "resolve_config",
    "secret_keys",
    "set_stored",
    "unset_stored",
    "validate_input",
]

MASK = "********"


def config_schema(manifest: Manifest) -> Optional[dict[str, Any]]:
    config = manifest.config
    if not config:
        return None
    schema = config.get("schema", config)
    return schema if isinstance(schema, dict) else None


def secret_keys(manifest: Optional[Manifest]) -> set[str]:
    schema = config_schema(manifest) if manifest else None
    props = (schema or {}).get("properties") or {}
    return {k for k, v in props.items() if isinstance(v, dict) and v.get("secret") is True}


def mask_values(manifest: Optional[Manifest], values: Mapping[str, Any]) -> dict[str, Any]:
    secrets = secret_keys(manifest)
    return {k: (MASK if k in secrets else v) for k, v in values.items()}


def _store_path(host: Host, name: str) -> Path:
    check_plugin_name(name, source="argument")
    return host.paths.config_dir / "plugin-config" / f"{name}.json"


def load_stored(host: Host, name: str) -> dict[str, Any]:
    path = _store_path(host, name)
    try:
        data = json.loads(path.read_text("utf-8"))
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{name}: cannot read {path}: {exc}") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"{name}: {path}: expected a JSON object")
    return data


def _write_stored(host: Host, name: str, data: Mapping[str, Any]) -> None:
    from .store import write_atomic

    path = _store_path(host, name)
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    write_atomic(path, json.dumps(data, indent=2, sort_keys=True).encode(), mode=0o600)
    os.chmod(path, 0o600)


def set_stored(host: Host, manifest: Manifest, key: str, raw: str) -> Any:
    """Store one value (validated against the manifest's config schema); return it typed."""
    value = _coerce(manifest, key, raw)
    data = load_stored(host, manifest.name)
    data[key] = value
    _validate(manifest, data, partial=True)
    _write_stored(host, manifest.name, data)
    return value


def unset_stored(host: Host, manifest: Manifest, key: str) -> bool:
    data = load_stored(host, manifest.name)
    if key not in data:
        return False
    del data[key]
    _write_stored(host, manifest.name, data)
    return True


def _coerce(manifest: Manifest, key: str, raw: Any) -> Any:
    """Turn a string given on a command line into the type the schema asks for."""
    schema = config_schema(manifest) or {}
    props = schema.get("properties") or {}
    if props and key not in props and schema.get("additionalProperties") is False:
        raise ConfigError(
            f"{manifest.name}: config: unknown key {key!r} (known: {', '.join(sorted(props))})"
        )
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
    except ValueError as exc:
        # The parser's message quotes the value: never for a secret.
        detail = "invalid value" if key in secret_keys(manifest) else str(exc)
        raise ConfigError(f"{manifest.name}: config: {key}: {detail}") from None
    return raw


def _validate(manifest: Manifest, values: Mapping[str, Any], *, partial: bool = False) -> None:
    schema = config_schema(manifest)
    if not schema:
        return
    if partial:
        schema = {k: v for k, v in schema.items() if k != "required"}
    import jsonschema

    validator = jsonschema.Draft202012Validator(schema)
    errors = sorted(validator.iter_errors(dict(values)), key=lambda e: list(e.absolute_path))
    if errors:
        secrets = secret_keys(manifest)
        parts = []
        for error in errors:
            where = ".".join(str(p) for p in error.absolute_path)
            # Never echo a secret value back in an error message.
            message = (
                error.message
                if not (error.absolute_path and error.absolute_path[0] in secrets)
                else "invalid value"
            )
            parts.append(f"{where}: {message}" if where else message)
        raise ConfigError(
            f"{manifest.name}: config: "
            + _mask_text("; ".join(parts), [values[k] for k in secrets if k in values])
        )


def resolve_config(host: Host, plugin: PluginOutcome, given: Mapping[str, Any]) -> dict[str, str]:
    """Defaults < stored < given, validated, as strings for ``PLUGIN_CONFIG_*``."""
    manifest = plugin.manifest
    if manifest is None:
        return {}
    schema = config_schema(manifest) or {}
    values: dict[str, Any] = {}
    for key, prop in (schema.get("properties") or {}).items():
        if isinstance(prop, dict) and "default" in prop:
            values[key] = prop["default"]
    values.update(load_stored(host, manifest.name))
    values.update({k: _coerce(manifest, k, v) for k, v in given.items()})
    _validate(manifest, values)
    return {k: _as_env(v) for k, v in values.items() if v is not None}


def _mask_text(text: str, secret_values: Sequence[Any]) -> str:
    """``text`` with every secret value (as str and as repr) replaced by the mask."""
    for value in secret_values:
        for shown in {str(value), repr(value)}:
            if shown:
                text = text.replace(shown, MASK)
    return text


def _as_env(value: Any) -> str:
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
