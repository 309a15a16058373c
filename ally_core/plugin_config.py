"""Plugin configuration (``PLUGIN_CONFIG_<KEY>``): the values stored for each plugin, and
the values a tool gets.

Values come from, lowest to highest priority: the property's ``default``, the values stored
with ``ally config set``, and the values the host passes for one call. Stored values belong to
the plugin's directory (its real path), never to another directory declaring the same name.
They live in ``<config dir>/plugin-config/<name>.json`` (mode 0600), except secret values,
which go to the OS keyring when one is usable (:func:`secret_store`).

Secret keys match in any case (``TOKEN`` is the ``token`` secret): :func:`secret_values` and
:func:`mask_text` are how every output of ally masks them.

This module is also the public face of its two neighbours: :mod:`.plugin_schema` (the config
schema, its secrets and the validation of values and tool input) and :mod:`.config_home`
(where a home keeps config, and the keyring or file backend of secrets).
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Optional

from .config_home import (
    ConfigHome,
    HasConfigHome,
    SecretStore,
    Where,
    home_of,
    keyring_backend,
    ring_call,
    ring_read,
    ring_service,
    ring_username,
    secret_store,
)
from .errors import ConfigError, PluginNotFound
from .manifest import Manifest
from .paths import check_plugin_name
from .plugin_schema import (
    as_env,
    canonical_key,
    check_key,
    check_key_text,
    coerce,
    config_schema,
    is_secret,
    mask_values,
    secret_keys,
    secret_values,
    validate_input,
    validate_values,
)
from .text import MASK, log, mask_text

if TYPE_CHECKING:
    from .outcomes import PluginOutcome

__all__ = [
    "MASK",
    "ConfigHome",
    "HasConfigHome",
    "SecretStore",
    "Where",
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


#: Version of the stored config files: values are kept per plugin directory.
STORE_FORMAT = 2


def plugin_id(plugin_dir: str | os.PathLike[str]) -> str:
    """What stored config is bound to: the real path of the plugin's directory."""
    return os.path.realpath(plugin_dir)


def _store_path(home: ConfigHome, name: str) -> Path:
    check_plugin_name(name, source="argument")
    return home.config_dir / "plugin-config" / f"{name}.json"


def store_path(where: Where, name: str) -> Path:
    """The file the config values of the plugin ``name`` are stored in (it may not exist)."""
    return _store_path(home_of(where), name)


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
    home = home_of(where)
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
        backend, why = keyring_backend()
        if backend is None:
            raise ConfigError(
                f"{name}: config: {', '.join(map(repr, in_keyring))} "
                f"{'is' if len(in_keyring) == 1 else 'are'} kept in the OS keyring, which is "
                f"not usable now: {why} (set {'it' if len(in_keyring) == 1 else 'them'} again "
                "to store in the file instead)"
            )
        values.update(ring_read(home, name, pid, in_keyring, backend))
    return values


def stored_view(
    where: Where, manifest: Manifest, plugin_dir: str | os.PathLike[str]
) -> dict[str, Any]:
    """The stored values of the plugin in ``plugin_dir`` as ``config show`` prints them:
    secrets masked, and those in the OS keyring not read at all."""
    home = home_of(where)
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
    home = home_of(where)
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
        backend = keyring_backend()[0]
    ringed = ring_read(home, name, pid, in_keyring, backend) if backend is not None else {}
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
    service = ring_service(home)
    try:
        for k, v in secret.items():
            if k in ringed and ringed[k] == v:
                continue
            ring_call(
                name,
                f"store {k!r}",
                functools.partial(
                    backend.set_password, service, ring_username(pid, k), json.dumps(v)
                ),
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
                    backend.delete_password(service, ring_username(pid, k))
                else:
                    backend.set_password(service, ring_username(pid, k), json.dumps(old))
        raise
    for k in set(ringed) - set(secret):
        # Moved to the file, or removed: the keyring entry goes (best effort).
        with contextlib.suppress(Exception):
            backend.delete_password(service, ring_username(pid, k))
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
    home = home_of(where)
    key = canonical_key(manifest, key)
    value = coerce(manifest, key, raw)

    def change(values: dict[str, Any]) -> bool:
        _drop(values, key)
        values[key] = value
        validate_values(manifest, values, partial=True)
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
    home = home_of(where)

    key = canonical_key(manifest, key)

    def change(values: dict[str, Any]) -> bool:
        if not any(k.upper() == key.upper() for k in values):
            check_key(manifest, key)  # not stored: a typo gets a guess, not "was not set"
        return _drop(values, key)

    return _update(home, manifest, plugin_dir, key, change)


def resolve_config(where: Where, plugin: PluginOutcome, given: Mapping[str, Any]) -> dict[str, str]:
    """Defaults < stored < given, validated, as strings for ``PLUGIN_CONFIG_*``."""
    home = home_of(where)
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
        values[key] = coerce(manifest, key, value)
    validate_values(manifest, values)
    out = {}
    for key, value in values.items():
        if value is None:
            continue
        check_key_text(manifest, key)
        text = as_env(value)
        if "\0" in text:
            raise ConfigError(f"{manifest.name}: config: {key}: a value cannot contain a NUL byte")
        out[key] = text
    return out
