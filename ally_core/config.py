"""Settings: defaults < config file < environment variables < explicit arguments.

Every value remembers where it came from so ``ally config`` can say so.
"""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Callable, Optional, Protocol

import attrs

from .errors import ConfigError

__all__ = ["IndexOptions", "Settings", "load_settings", "strip_credentials"]


@attrs.frozen
class IndexOptions:
    """Package index settings handed to installers (only non-empty ones are passed on)."""

    index_url: Optional[str] = attrs.field(default=None, repr=lambda v: repr(strip_credentials(v)))
    extra_index_urls: tuple[str, ...] = attrs.field(
        default=(), repr=lambda v: repr(strip_credentials(v))
    )
    find_links: tuple[str, ...] = ()
    no_index: bool = False
    trusted_hosts: tuple[str, ...] = ()
    cert: Optional[str] = None
    constraints: tuple[str, ...] = ()

    def identity(self) -> dict[str, Any]:
        """What goes into an env's fingerprint (credentials in URLs are dropped)."""
        return {k: strip_credentials(v) for k, v in attrs.asdict(self).items() if v}


def strip_credentials(value: Any) -> Any:
    """Drop ``user:password@`` from URLs (also inside ``--opt=URL``), so they are never shown."""
    if isinstance(value, (list, tuple)):
        return [strip_credentials(v) for v in value]
    if isinstance(value, str) and "://" in value:
        return _CREDENTIALS_RE.sub(r"\1", value)
    return value


_CREDENTIALS_RE = re.compile(r"(\w[\w+.-]*://)[^/@\s]+@")


def _bool(text: str) -> bool:
    low = text.strip().lower()
    if low in {"1", "true", "yes", "on"}:
        return True
    if low in {"0", "false", "no", "off", ""}:
        return False
    raise ValueError(f"expected a boolean, got {text!r}")


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise ValueError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise ValueError(f"expected a positive integer, got {text!r}")
    return value


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise ValueError(f"expected a positive number, got {text!r}") from None
    if not value > 0:  # also NaN
        raise ValueError(f"expected a positive number, got {text!r}")
    return value


def _installer(text: str) -> str:
    if text not in {"auto", "uv", "pip"}:
        raise ValueError(f"expected one of auto, uv, pip; got {text!r}")
    return text


def _byte_size(text: str) -> int:
    """``1048576``, ``512K``, ``64M`` or ``2G`` (powers of 1024) as a positive number of bytes."""
    units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
    clean = text.strip().upper().removesuffix("B").removesuffix("I")
    factor = units.get(clean[-1:], 1)
    digits = clean[:-1] if clean[-1:] in units else clean
    if not digits.isdigit() or int(digits) * factor < 1:
        raise ValueError(f"expected a size in bytes (e.g. 512M, 2G), got {text!r}")
    return int(digits) * factor


def _secrets_backend(text: str) -> str:
    if text not in {"auto", "keyring", "file"}:
        raise ValueError(f"expected one of auto, keyring, file; got {text!r}")
    return text


def _words(text: str) -> tuple[str, ...]:
    return tuple(w for w in text.replace(",", " ").split() if w)


def _path_list(text: str) -> tuple[str, ...]:
    """Paths separated by ``os.pathsep`` (``:``, or ``;`` on Windows), as ``PATH`` is."""
    return tuple(p for p in text.split(os.pathsep) if p.strip())


#: key -> (env var, parser, default, description)
SETTINGS: dict[str, tuple[str, Callable[[str], Any], Any, str]] = {
    "installer": ("ALLY_INSTALLER", _installer, "auto", "Python installer backend: auto, uv, pip"),
    "offline": ("ALLY_OFFLINE", _bool, False, "never touch the network when installing"),
    "jobs": ("ALLY_JOBS", _positive_int, min(4, os.cpu_count() or 1), "parallel env builds"),
    "tool_timeout": (
        "ALLY_TOOL_TIMEOUT",
        _positive_float,
        120.0,
        "seconds before a tool is killed",
    ),
    "install_timeout": (
        "ALLY_INSTALL_TIMEOUT",
        _positive_float,
        1800.0,
        "seconds before an install is killed",
    ),
    "output_limit": (
        "ALLY_OUTPUT_LIMIT",
        _positive_int,
        10 * 1024 * 1024,
        "max bytes read from a tool",
    ),
    "pass_env": ("ALLY_PASS_ENV", _words, (), "extra host variables passed to tools"),
    "retry_after": (
        "ALLY_RETRY_AFTER",
        _positive_float,
        60.0,
        "seconds a failed install is not retried within one process",
    ),
    "python": ("ALLY_PYTHON", str, None, "default base interpreter for Python plugins"),
    "plugin_dirs": (
        "ALLY_PLUGIN_DIRS",
        _path_list,
        (),
        "more directories to discover plugins in (os.pathsep-separated in the variable)",
    ),
    "manifest_max_bytes": (
        "ALLY_MANIFEST_MAX_BYTES",
        _positive_int,
        1024 * 1024,
        "max size of a plugin.json; a larger one blocks its plugin unread",
    ),
    "bundle_max_file": (
        "ALLY_BUNDLE_MAX_FILE",
        _byte_size,
        1 << 30,
        "largest file a bundle may unpack (bytes, or 512M, 2G)",
    ),
    "bundle_max_total": (
        "ALLY_BUNDLE_MAX_TOTAL",
        _byte_size,
        4 << 30,
        "most bytes one bundle may unpack in all",
    ),
    "secrets_backend": (
        "ALLY_SECRETS_BACKEND",
        _secrets_backend,
        "auto",
        "where secret plugin config is stored: auto (OS keyring if usable), keyring, file",
    ),
}


@attrs.frozen
class Settings:
    """Effective settings and where each one came from."""

    values: Mapping[str, Any]
    sources: Mapping[str, str]
    index: IndexOptions = IndexOptions()

    def __getattr__(self, name: str) -> Any:
        try:
            return self.values[name]
        except KeyError:
            raise AttributeError(name) from None

    @property
    def installer(self) -> str:
        return str(self.values["installer"])

    @property
    def offline(self) -> bool:
        return bool(self.values["offline"])

    @property
    def jobs(self) -> int:
        return int(self.values["jobs"])

    @property
    def tool_timeout(self) -> float:
        return float(self.values["tool_timeout"])

    @property
    def install_timeout(self) -> float:
        return float(self.values["install_timeout"])

    @property
    def output_limit(self) -> int:
        return int(self.values["output_limit"])

    @property
    def pass_env(self) -> tuple[str, ...]:
        return tuple(self.values["pass_env"])

    @property
    def retry_after(self) -> float:
        return float(self.values["retry_after"])

    @property
    def plugin_dirs(self) -> tuple[str, ...]:
        return tuple(self.values["plugin_dirs"])

    @property
    def manifest_max_bytes(self) -> int:
        return int(self.values["manifest_max_bytes"])


_EXPECTED: dict[Callable[[str], Any], str] = {
    _positive_int: "a positive integer",
    _positive_float: "a positive number",
    _byte_size: "a size in bytes",
}


class _Cache(Protocol):
    """What :func:`load_settings` needs of a :class:`~ally_core.warm_index.WarmIndex`."""

    def get(self, table: str, key: str, identity: Any) -> Any: ...

    def put(self, table: str, key: str, identity: Any, value: Any) -> None: ...


def _plain(value: Any) -> bool:
    """Whether ``value`` is made of what the warm index stores (not TOML's dates and times)."""
    if isinstance(value, dict):
        return all(isinstance(k, str) and _plain(v) for k, v in value.items())
    if isinstance(value, list):
        return all(_plain(v) for v in value)
    return isinstance(value, (str, int, float, bool))


def _read_toml(path: Path, cache: Optional[_Cache] = None) -> dict[str, Any]:
    """The parsed file; from ``cache`` while the file's bytes are the ones parsed then, so
    that a command does not import a TOML parser to read an unchanged config file. A file
    with an ``@`` (an index URL may carry a password) is never copied into the cache."""
    try:
        with path.open("rb") as fh:
            raw = fh.read()
    except FileNotFoundError:
        return {}  # the usual case: no TOML parser imported
    except OSError as exc:
        raise ConfigError(f"{path}: {exc}") from exc
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: {exc}") from exc
    if "@" in text:
        cache = None
    cached = cache.get("config", str(path), text) if cache is not None else None
    if type(cached) is dict:
        return cached
    if sys.version_info >= (3, 11):
        import tomllib
    else:  # pragma: no cover - exercised on 3.9/3.10 only
        import tomli as tomllib
    try:
        data: dict[str, Any] = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: {exc}") from exc
    if cache is not None and _plain(data):
        cache.put("config", str(path), text, data)
    return data


def load_settings(
    config_file: Path,
    environ: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
    *,
    cache: Optional[_Cache] = None,
) -> Settings:
    """Read ``config_file`` (TOML, table ``[ally]`` or top level), then env vars, then overrides.

    With a ``cache`` (the home's warm index), the parsed file is kept there, keyed on its bytes.

    ``overrides`` (``Host(settings=...)``, the CLI's options) are checked with the rules and
    messages of the config file: ``Host(settings=...): jobs: expected a positive integer``.
    """
    environ = os.environ if environ is None else environ
    data = _read_toml(config_file, cache)
    table: dict[str, Any] = dict(data.get("ally", data))
    index_table = table.pop("index", {})
    _check_known(table, str(config_file))
    given = {k: v for k, v in (overrides or {}).items() if v is not None}
    _check_known(given, OVERRIDES_SOURCE)
    values: dict[str, Any] = {}
    sources: dict[str, str] = {}
    for key, (var, parse, default, _doc) in SETTINGS.items():
        values[key], sources[key] = default, "default"
        if key in table:
            values[key] = _checked(key, parse, table[key], str(config_file))
            sources[key] = str(config_file)
        if environ.get(var):
            try:
                values[key] = parse(environ[var])
            except ValueError as exc:
                raise ConfigError(f"${var}: {exc}") from exc
            sources[key] = f"${var}"
        if key in given:
            values[key] = _checked(key, parse, given[key], OVERRIDES_SOURCE)
            sources[key] = "argument"
    return Settings(values=values, sources=sources, index=_index_options(index_table, config_file))


#: How errors name the settings a host passes to :class:`~ally_core.Host`.
OVERRIDES_SOURCE = "Host(settings=...)"


def _check_known(table: Mapping[str, Any], source: str) -> None:
    """One line naming every key that is no setting, with a guess for the first."""
    unknown = sorted(set(table) - set(SETTINGS))
    if unknown:
        from .text import did_you_mean

        raise ConfigError(
            f"{source}: unknown setting(s): {', '.join(unknown)}"
            + did_you_mean(unknown[0], SETTINGS)
        )


def _checked(key: str, parse: Callable[[str], Any], raw: Any, source: str) -> Any:
    """``raw`` (a string, or a TOML/Python value) as setting ``key``, or a one-line error."""
    try:
        return parse(raw) if isinstance(raw, str) else _coerce(parse, raw)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{source}: {key}: {exc}") from exc


def _coerce(parse: Callable[[str], Any], raw: Any) -> Any:
    if parse is _words or parse is _path_list:
        if not isinstance(raw, (list, tuple)) or not all(isinstance(x, str) for x in raw):
            raise TypeError("expected a list of strings")
        return tuple(raw)
    if parse is _bool:
        if not isinstance(raw, bool):
            raise TypeError("expected true or false")
        return raw
    if isinstance(raw, (dict, list, tuple)) or (isinstance(raw, bool) and parse is not str):
        raise TypeError(f"expected {_EXPECTED.get(parse, 'a string')}, got {raw!r}")
    return parse(str(raw))


def _index_options(table: Mapping[str, Any], source: Path) -> IndexOptions:
    try:
        return IndexOptions(
            index_url=table.get("index_url"),
            extra_index_urls=tuple(table.get("extra_index_urls", ())),
            find_links=tuple(table.get("find_links", ())),
            no_index=bool(table.get("no_index", False)),
            trusted_hosts=tuple(table.get("trusted_hosts", ())),
            cert=table.get("cert"),
            constraints=tuple(table.get("constraints", ())),
        )
    except TypeError as exc:
        raise ConfigError(f"{source}: [index]: {exc}") from exc
