"""Where a home keeps plugin config: :class:`ConfigHome` (a config dir and the
``secrets_backend`` setting), and where secret values go (:func:`secret_store`): the OS
keyring through the ``keyring`` package when one is usable, else the 0600 file beside the
other values. The values themselves are read and written by :mod:`.plugin_config`.
"""

from __future__ import annotations

import functools
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Protocol, Union

import attrs

from .errors import ConfigError, PluginNotFound
from .text import mask_text

if TYPE_CHECKING:
    from .config import Settings
    from .discovery import PluginSource

__all__ = [
    "ConfigHome",
    "HasConfigHome",
    "SecretStore",
    "Where",
    "home_of",
    "keyring_backend",
    "ring_call",
    "ring_read",
    "ring_service",
    "ring_username",
    "secret_store",
]


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

    @classmethod
    def of(
        cls,
        config_dir: Path,
        settings: Settings,
        discover: Callable[[], Sequence[PluginSource]] = _no_sources,
        source: Callable[[str], PluginSource] = _no_source,
    ) -> ConfigHome:
        """The config home of ``config_dir`` with the ``secrets_backend`` of ``settings``."""
        backend = str(settings.values["secrets_backend"])
        where = settings.sources["secrets_backend"]
        return cls(config_dir, backend, where, discover, source)


class HasConfigHome(Protocol):
    """An object that knows its :class:`ConfigHome` (a :class:`~ally_core.Host` does)."""

    def config_home(self) -> ConfigHome: ...


#: Where the functions below read and write: a :class:`ConfigHome` or what has one.
Where = Union[ConfigHome, HasConfigHome]


def home_of(where: Where) -> ConfigHome:
    return where if isinstance(where, ConfigHome) else where.config_home()


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


def keyring_backend() -> tuple[Any, str]:
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
    home = home_of(where)
    mode = home.secrets_backend
    folder = str(home.config_dir / "plugin-config")
    setting = f"secrets_backend = {mode} ({home.secrets_source})"
    if mode == "file":
        return SecretStore("file", True, folder, setting)
    backend, name = keyring_backend()
    if backend is not None:
        return SecretStore("keyring", True, name, setting)
    if mode == "keyring":
        return SecretStore("keyring", False, name, f"{setting}, but {name}")
    return SecretStore("file", True, folder, f"{setting}: {name}")


def ring_service(home: ConfigHome) -> str:
    return f"ally plugin config {os.path.realpath(home.config_dir)}"


def ring_username(pid: str, key: str) -> str:
    return json.dumps([pid, key], ensure_ascii=False)


def ring_call(name: str, what: str, call: Callable[[], Any], hide: Sequence[Any] = ()) -> Any:
    try:
        return call()
    except Exception as exc:
        detail = mask_text(f"{exc.__class__.__name__}: {exc}", hide)
        raise ConfigError(f"{name}: OS keyring: cannot {what}: {detail}") from None


def ring_read(
    home: ConfigHome, name: str, pid: str, keys: Sequence[str], backend: Any
) -> dict[str, Any]:
    """The values of ``keys`` in the keyring (a key whose entry is gone is left out)."""
    out = {}
    for key in keys:
        text = ring_call(
            name,
            f"read {key!r}",
            functools.partial(backend.get_password, ring_service(home), ring_username(pid, key)),
        )
        if text is None:
            continue
        try:
            out[key] = json.loads(text)
        except (ValueError, RecursionError):
            out[key] = text
    return out
