"""Plugin configuration (``PLUGIN_CONFIG_<KEY>``) and tool input validation.

A manifest's ``config`` is a JSON-Schema-like object (``{"type": "object", "properties":
{...}, "required": [...]}``, or the same under ``config.schema``). A property with
``"secret": true`` is masked in every output of ally.

Values come from, lowest to highest priority: the property's ``default``, the values stored
with ``ally config set``, and the values the host passes for one call. Stored values belong to
the plugin's directory (its real path), never to another directory declaring the same name.
They live in ``<config dir>/plugin-config/<name>.json`` (mode 0600), except secret values,
which go to the OS keyring when one is usable (:func:`secret_store`).

Secret keys match in any case (``TOKEN`` is the ``token`` secret): :func:`secret_values` and
:func:`mask_text` are how every output of ally masks them.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Optional, Protocol, Union

import attrs

from .errors import ConfigError, PluginNotFound, ToolInputError
from .manifest import Manifest, Tool
from .paths import check_plugin_name

if TYPE_CHECKING:
    from .discovery import PluginSource
    from .outcomes import PluginOutcome

__all__ = [
    "MASK",
    "ConfigHome",
    "HasConfigHome",
    "SecretStore",
    "canonical_key",
    "check_key",
    "config_schema",
    "is_secret",
    "load_stored",
    "mask_text",
    "mask_values",
    "plugin_id",
    "resolve_config",
    "secret_keys",
    "secret_store",
    "secret_values",
    "set_stored",
    "stored_elsewhere",
    "stored_view",
    "unset_stored",
    "validate_input",
]

from .text import MASK, log, mask_text


def _no_sources() -> list[PluginSource]:
    return []


def _no_source(name: str) -> PluginSource:
    raise PluginNotFound(f"no plugin named {name!r}")


@attrs.frozen
class ConfigHome:
    """Where plugin config is kept: a config dir and the ``secrets_backend`` setting.

    ``discover`` and ``source`` find plugin directories by name (a file of the format before
    directories is given to the one directory declaring its name; a value set without a
    directory goes to that plugin's): without them only calls naming a directory work.
    """

    config_dir: Path
    secrets_backend: str = "auto"
    #: Where the ``secrets_backend`` value came from, for messages.
    secrets_source: str = "default"
    discover: Callable[[], Sequence[PluginSource]] = _no_sources
    source: Callable[[str], PluginSource] = _no_source


class HasConfigHome(Protocol):
    """An object that knows its :class:`ConfigHome` (a :class:`~ally_core.Host` does)."""

    def config_home(self) -> ConfigHome: ...


#: Where the functions below read and write: a :class:`ConfigHome` or what has one.
Where = Union[ConfigHome, HasConfigHome]


def _home(where: Where) -> ConfigHome:
    return where if isinstance(where, ConfigHome) else where.config_home()


def config_schema(manifest: Manifest) -> Optional[dict[str, Any]]:
    config = manifest.config
    if not config:
        return None
    schema = config.get("schema", config)
    return schema if isinstance(schema, dict) else None


def _properties(manifest: Optional[Manifest]) -> dict[str, Any]:
    schema = config_schema(manifest) if manifest else None
    props = (schema or {}).get("properties")
    return props if isinstance(props, dict) else {}


def secret_keys(manifest: Optional[Manifest]) -> set[str]:
    """The config properties the manifest marks ``"secret": true``, as spelled there."""
    props = _properties(manifest)
    return {k for k, v in props.items() if isinstance(v, dict) and v.get("secret") is True}


def is_secret(manifest: Optional[Manifest], key: str) -> bool:
    """Whether ``key`` is a secret, in any case: ``TOKEN`` and ``token`` both reach the tool as
    ``PLUGIN_CONFIG_TOKEN``, so both are the ``token`` secret."""
    wanted = key.upper()
    return any(k.upper() == wanted for k in secret_keys(manifest))


def canonical_key(manifest: Optional[Manifest], key: str) -> str:
    """The property ``key`` names, spelled as the schema spells it (``TOKEN`` -> ``token``)
    when exactly one property matches it case-insensitively; else ``key`` itself."""
    props = _properties(manifest)
    if key in props:
        return key
    matches = [k for k in props if k.upper() == key.upper()]
    return matches[0] if len(matches) == 1 else key


def mask_values(manifest: Optional[Manifest], values: Mapping[str, Any]) -> dict[str, Any]:
    """``values`` with every secret (in any case) shown as the mask."""
    return {k: (MASK if is_secret(manifest, k) else v) for k, v in values.items()}


def secret_values(manifest: Optional[Manifest], values: Mapping[str, Any]) -> list[str]:
    """The secret values among ``values`` (config keys in any case, e.g. what
    :func:`resolve_config` returned), as the strings a tool or a message could show them:
    pass the result to :func:`mask_text`."""
    return [_as_env(v) for k, v in values.items() if v is not None and is_secret(manifest, k)]


#: Version of the stored config files: values are kept per plugin directory.
STORE_FORMAT = 2


def plugin_id(plugin_dir: str | os.PathLike[str]) -> str:
    """What stored config is bound to: the real path of the plugin's directory."""
    return os.path.realpath(plugin_dir)


def _store_path(home: ConfigHome, name: str) -> Path:
    check_plugin_name(name, source="argument")
    return home.config_dir / "plugin-config" / f"{name}.json"


def _is_current(data: Any) -> bool:
    return (
        isinstance(data, dict)
        and data.get("format") == STORE_FORMAT
        and isinstance(data.get("dirs"), dict)
        and all(isinstance(v, dict) for v in data["dirs"].values())
    )


def _read_file(home: ConfigHome, name: str) -> Optional[dict[str, Any]]:
    """The stored file of ``name`` as it is (either format), or None if there is none."""
    path = _store_path(home, name)
    try:
        data = json.loads(path.read_text("utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError, RecursionError) as exc:
        detail = exc.strerror if isinstance(exc, OSError) and exc.strerror else exc
        if isinstance(exc, RecursionError):
            detail = "nested too deeply"
        raise ConfigError(f"{name}: cannot read {path}: {detail}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{name}: {path}: expected a JSON object")
    return data


def _entry(data: Mapping[str, Any], pid: str) -> dict[str, Any]:
    """The values kept in the file for ``pid`` (not those in the OS keyring)."""
    entry = data["dirs"].get(pid) or {}
    values = entry.get("values")
    return dict(values) if isinstance(values, dict) else {}


def _in_keyring(data: Mapping[str, Any], pid: str) -> list[str]:
    """The keys of ``pid`` whose values are in the OS keyring."""
    keys = (data["dirs"].get(pid) or {}).get("keyring")
    return [k for k in keys if isinstance(k, str)] if isinstance(keys, list) else []


# -- where secrets are kept -------------------------------------------------------------------


@attrs.frozen
class SecretStore:
    """Where ``ally config set`` keeps secret values (see :func:`secret_store`)."""

    #: ``"keyring"`` (the OS keyring, through the ``keyring`` package) or ``"file"``.
    backend: str
    #: Whether secrets can be stored there now.
    available: bool
    #: The keyring backend's class, or the file's location.
    detail: str
    #: Why this one: the ``secrets_backend`` setting and what was found.
    reason: str


def _keyring() -> tuple[Any, str]:
    """The usable OS keyring backend and its name, or None and why there is none. keyring's
    ``fail`` and ``null`` backends (what it picks when nothing real is there) do not count."""
    try:
        import keyring
        from keyring.backends import chainer, fail, null
    except ImportError as exc:
        return None, f"the keyring package cannot be imported ({exc.name})"
    try:
        backend = keyring.get_keyring()
    except Exception as exc:
        return None, f"keyring failed to load a backend ({exc.__class__.__name__})"
    kind = type(backend)
    name = f"{kind.__module__}.{kind.__qualname__}"
    if isinstance(backend, (fail.Keyring, null.Keyring)) or (
        isinstance(backend, chainer.ChainerBackend) and not backend.backends
    ):
        return None, f"no usable OS keyring ({name})"
    return backend, name


def secret_store(where: Where) -> SecretStore:
    """Where secrets are kept: the OS keyring when one is usable (setting
    ``secrets_backend`` ``auto``, the default, or ``keyring``), else the 0600 file."""
    home = _home(where)
    mode = home.secrets_backend
    folder = str(home.config_dir / "plugin-config")
    setting = f"secrets_backend = {mode} ({home.secrets_source})"
    if mode == "file":
        return SecretStore("file", True, folder, setting)
    backend, name = _keyring()
    if backend is not None:
        return SecretStore("keyring", True, name, setting)
    if mode == "keyring":
        return SecretStore("keyring", False, name, f"{setting}, but {name}")
    return SecretStore("file", True, folder, f"{setting}: {name}")


def _service(home: ConfigHome) -> str:
    return f"ally plugin config {os.path.realpath(home.config_dir)}"


def _username(pid: str, key: str) -> str:
    return json.dumps([pid, key], ensure_ascii=False)


def _ring_call(name: str, what: str, call: Callable[[], Any], hide: Sequence[Any] = ()) -> Any:
    try:
        return call()
    except Exception as exc:
        detail = mask_text(f"{exc.__class__.__name__}: {exc}", hide)
        raise ConfigError(f"{name}: OS keyring: cannot {what}: {detail}") from None


def _ring_read(
    home: ConfigHome, name: str, pid: str, keys: Sequence[str], backend: Any
) -> dict[str, Any]:
    """The values of ``keys`` in the keyring (a key whose entry is gone is left out)."""
    out = {}
    for key in keys:
        text = _ring_call(
            name,
            f"read {key!r}",
            functools.partial(backend.get_password, _service(home), _username(pid, key)),
        )
        if text is None:
            continue
        try:
            out[key] = json.loads(text)
        except (ValueError, RecursionError):
            out[key] = text
    return out


def _sole_dir(home: ConfigHome, name: str) -> Optional[str]:
    """The plugin directory declaring ``name`` if exactly one does (duplicates are blocked)."""
    dirs = [
        s.plugin_dir for s in home.discover() if s.manifest is not None and s.manifest.name == name
    ]
    return plugin_id(dirs[0]) if len(dirs) == 1 else None


def _migrated(home: ConfigHome, name: str, data: dict[str, Any]) -> Optional[dict[str, Any]]:
    """A file of the format before directories (one flat object per name), bound to the
    directory that declares ``name`` now, if exactly one does; else None (given to nobody)."""
    pid = _sole_dir(home, name)
    if pid is None:
        return None
    current = {"format": STORE_FORMAT, "plugin": name, "dirs": {pid: {"values": data}}}
    try:
        _write_file(home, name, current)
    except ConfigError:
        log.debug("%s: stored config not migrated (kept as it was)", name)
    return current


def load_stored(
    where: Where, name: str, plugin_dir: str | os.PathLike[str] | None = None
) -> dict[str, Any]:
    """The values stored for the plugin ``name`` in ``plugin_dir`` (default: the one directory
    declaring ``name``). Values stored for another directory are never returned."""
    home = _home(where)
    data = _read_file(home, name)
    if data is None:
        return {}
    pid = plugin_id(plugin_dir) if plugin_dir is not None else _sole_dir(home, name)
    if pid is None:
        return {}
    if not _is_current(data):
        migrated = _migrated(home, name, data)
        if migrated is None:
            return {}
        data = migrated
    values = _entry(data, pid)
    in_keyring = _in_keyring(data, pid)
    if in_keyring:
        backend, why = _keyring()
        if backend is None:
            raise ConfigError(
                f"{name}: config: {', '.join(map(repr, in_keyring))} "
                f"{'is' if len(in_keyring) == 1 else 'are'} kept in the OS keyring, which is "
                f"not usable now: {why} (set {'it' if len(in_keyring) == 1 else 'them'} again "
                "to store in the file instead)"
            )
        values.update(_ring_read(home, name, pid, in_keyring, backend))
    return values


def stored_view(
    where: Where, manifest: Manifest, plugin_dir: str | os.PathLike[str]
) -> dict[str, Any]:
    """The stored values of the plugin in ``plugin_dir`` as ``config show`` prints them:
    secrets masked, and those in the OS keyring not read at all."""
    home = _home(where)
    data = _read_file(home, manifest.name)
    if data is None:
        return {}
    pid = plugin_id(plugin_dir)
    if not _is_current(data):
        values = load_stored(home, manifest.name, plugin_dir)
        return mask_values(manifest, values)
    values = _entry(data, pid)
    values.update(dict.fromkeys(_in_keyring(data, pid), MASK))
    return mask_values(manifest, values)


def stored_elsewhere(where: Where, name: str, plugin_dir: str | os.PathLike[str]) -> list[str]:
    """The other directories the stored config of ``name`` holds values for (never used for
    ``plugin_dir``: a plugin directory that moved or a second one declaring the same name)."""
    home = _home(where)
    data = _read_file(home, name)
    if data is None or not _is_current(data):
        return []
    pid = plugin_id(plugin_dir)
    return sorted(
        d for d, e in data["dirs"].items() if d != pid and (e.get("values") or e.get("keyring"))
    )


def _write_file(home: ConfigHome, name: str, data: Mapping[str, Any]) -> None:
    from .store import write_atomic

    path = _store_path(home, name)
    try:
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        write_atomic(path, json.dumps(data, indent=2, sort_keys=True).encode(), mode=0o600)
        os.chmod(path, 0o600)
    except OSError as exc:
        where = exc.filename or path
        raise ConfigError(
            f"{name}: cannot store config in {where}: {exc.strerror or exc}"
        ) from None


def _update(
    home: ConfigHome,
    manifest: Manifest,
    plugin_dir: str | os.PathLike[str] | None,
    key: str,
    change: Callable[[dict[str, Any]], bool],
) -> bool:
    """Apply ``change`` (about ``key``) to the values of the plugin's directory and store them
    if it says something changed: secrets in the OS keyring when one is used, the rest in the
    file. Under a lock, so that concurrent ``config set`` calls lose nothing."""
    from filelock import FileLock

    name = manifest.name
    pid = plugin_id(plugin_dir) if plugin_dir is not None else _plugin_dir_of(home, name)
    path = _store_path(home, name)
    try:
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        lock = FileLock(str(path.with_name(".lock")))
        lock.acquire()
    except OSError as exc:
        where = exc.filename or path.parent
        raise ConfigError(
            f"{name}: cannot store config in {where}: {exc.strerror or exc}"
        ) from None
    try:
        data = _read_file(home, name)
        if data is not None and not _is_current(data):
            data = _migrated(home, name, data)
            if data is None:
                # Never overwrite values an older ally stored while it is unclear whose they are.
                raise ConfigError(
                    f"{name}: {path} holds config stored by an older ally for whichever "
                    f"directory declared {name!r}; with no single such directory now it "
                    "cannot be changed (remove the file to start afresh)"
                )
        if data is None:
            data = {"format": STORE_FORMAT, "plugin": name, "dirs": {}}
        return _apply(home, manifest, data, pid, key, change)
    finally:
        lock.release()


def _apply(
    home: ConfigHome,
    manifest: Manifest,
    data: dict[str, Any],
    pid: str,
    key: str,
    change: Callable[[dict[str, Any]], bool],
) -> bool:
    name = manifest.name
    store = secret_store(home)
    in_keyring = _in_keyring(data, pid)
    backend: Any = None
    if store.backend == "keyring" or in_keyring:
        backend = _keyring()[0]
    ringed = _ring_read(home, name, pid, in_keyring, backend) if backend is not None else {}
    # Keyring entries that cannot be read now stay where they are, unless this changes them.
    unread = [k for k in in_keyring if k not in ringed and k.upper() != key.upper()]
    values = {**_entry(data, pid), **ringed}
    if not change(values):
        return False
    use_ring = store.backend == "keyring" and store.available
    if (
        store.backend == "keyring"
        and not store.available
        and is_secret(manifest, key)
        and any(k.upper() == key.upper() for k in values)
    ):
        raise ConfigError(
            f"{name}: config: cannot store a secret: {store.reason} "
            "(set ALLY_SECRETS_BACKEND=file to keep secrets in the 0600 file)"
        )
    plain = {k: v for k, v in values.items() if not (use_ring and is_secret(manifest, k))}
    secret = {k: v for k, v in values.items() if k not in plain}
    # Keyring first: the file never names a keyring entry that is not there.
    written: dict[str, Any] = {}
    service = _service(home)
    try:
        for k, v in secret.items():
            if k in ringed and ringed[k] == v:
                continue
            _ring_call(
                name,
                f"store {k!r}",
                functools.partial(backend.set_password, service, _username(pid, k), json.dumps(v)),
                hide=[v],
            )
            written[k] = ringed.get(k, _GONE)
        entry: dict[str, Any] = {}
        if plain:
            entry["values"] = plain
        if secret or unread:
            entry["keyring"] = sorted({*secret, *unread})
        if entry:
            data["dirs"][pid] = entry
        else:
            data["dirs"].pop(pid, None)
        _write_file(home, name, data)
    except BaseException:
        for k, old in written.items():  # put the keyring back as the file still says
            with contextlib.suppress(Exception):
                if old is _GONE:
                    backend.delete_password(service, _username(pid, k))
                else:
                    backend.set_password(service, _username(pid, k), json.dumps(old))
        raise
    for k in set(ringed) - set(secret):
        # Moved to the file, or removed: the keyring entry goes (best effort).
        with contextlib.suppress(Exception):
            backend.delete_password(service, _username(pid, k))
    return True


_GONE = object()


def _plugin_dir_of(home: ConfigHome, name: str) -> str:
    source = home.source(name)
    if source.manifest is None:
        raise source.error or PluginNotFound(name)
    return plugin_id(source.plugin_dir)


def set_stored(
    where: Where,
    manifest: Manifest,
    key: str,
    raw: str,
    *,
    plugin_dir: str | os.PathLike[str] | None = None,
) -> Any:
    """Store one value (validated against the manifest's config schema) for the plugin in
    ``plugin_dir`` (default: the one directory declaring ``manifest.name``); return it typed."""
    home = _home(where)
    key = canonical_key(manifest, key)
    value = _coerce(manifest, key, raw)

    def change(values: dict[str, Any]) -> bool:
        _drop(values, key)
        values[key] = value
        _validate(manifest, values, partial=True)
        return True

    _update(home, manifest, plugin_dir, key, change)
    return value


def _drop(values: dict[str, Any], key: str) -> bool:
    """Remove ``key`` in every spelling that reaches the tool as the same variable."""
    found = [k for k in values if k.upper() == key.upper()]
    for k in found:
        del values[k]
    return bool(found)


def unset_stored(
    where: Where,
    manifest: Manifest,
    key: str,
    *,
    plugin_dir: str | os.PathLike[str] | None = None,
) -> bool:
    """Remove one stored value of the plugin in ``plugin_dir``; return whether it was set."""
    home = _home(where)

    key = canonical_key(manifest, key)

    def change(values: dict[str, Any]) -> bool:
        if not any(k.upper() == key.upper() for k in values):
            check_key(manifest, key)  # not stored: a typo gets a guess, not "was not set"
        return _drop(values, key)

    return _update(home, manifest, plugin_dir, key, change)


def _check_key_text(manifest: Manifest, key: Any) -> None:
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
    _check_key_text(manifest, key)
    schema = config_schema(manifest)
    if schema is None:
        raise ConfigError(f"{manifest.name}: declares no config, so it has no key {key!r}")
    props = _properties(manifest)
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


def _coerce(manifest: Manifest, key: str, raw: Any) -> Any:
    """Turn a string given on a command line into the type the schema asks for."""
    check_key(manifest, key)
    props = _properties(manifest)
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


def _validate(manifest: Manifest, values: Mapping[str, Any], *, partial: bool = False) -> None:
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


def resolve_config(where: Where, plugin: PluginOutcome, given: Mapping[str, Any]) -> dict[str, str]:
    """Defaults < stored < given, validated, as strings for ``PLUGIN_CONFIG_*``."""
    home = _home(where)
    manifest = plugin.manifest
    if manifest is None:
        return {}
    schema = config_schema(manifest) or {}
    values: dict[str, Any] = {}
    for key, prop in (schema.get("properties") or {}).items():
        if isinstance(prop, dict) and "default" in prop:
            values[key] = prop["default"]
    for key, value in load_stored(home, manifest.name, plugin.plugin_dir).items():
        values[canonical_key(manifest, key)] = value
    for key, value in given.items():
        key = canonical_key(manifest, key)
        values[key] = _coerce(manifest, key, value)
    _validate(manifest, values)
    out = {}
    for key, value in values.items():
        if value is None:
            continue
        _check_key_text(manifest, key)
        text = _as_env(value)
        if "\0" in text:
            raise ConfigError(f"{manifest.name}: config: {key}: a value cannot contain a NUL byte")
        out[key] = text
    return out


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
