"""Which package indexes an install uses: pip's configuration, read as pip reads it, with
ally's own ``[ally.index]`` settings laid over it.

The uv backend honours what pip would (uv reads no pip configuration, and ally tells it to
read none of its own); both backends get index options whose values hold credentials as
variables instead of arguments (see :meth:`.backend.Backend.index_args`).
"""

from __future__ import annotations

import functools
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ...config import IndexOptions, strip_credentials


def _pip_config_files(environ: Mapping[str, str]) -> list[Path]:
    override = environ.get("PIP_CONFIG_FILE")
    if override == os.devnull:
        return []
    xdg_dirs = environ.get("XDG_CONFIG_DIRS", "/etc/xdg").split(os.pathsep)
    home = Path(environ.get("HOME", str(Path.home())))
    xdg_home = Path(environ.get("XDG_CONFIG_HOME", str(home / ".config")))
    files = [Path(d) / "pip" / "pip.conf" for d in reversed(xdg_dirs) if d]
    files += [Path("/etc/pip.conf"), home / ".pip" / "pip.conf", xdg_home / "pip" / "pip.conf"]
    if override:
        files.append(Path(override))
    return files


def read_pip_config(environ: Mapping[str, str] | None = None) -> IndexOptions:
    """The index options pip would use: its config files, then ``PIP_*`` variables."""
    import configparser

    environ = os.environ if environ is None else environ
    merged: dict[str, str] = {}
    for path in _pip_config_files(environ):
        parser = configparser.RawConfigParser()
        try:
            parser.read(path, encoding="utf-8")
        except (configparser.Error, OSError, UnicodeDecodeError):
            continue
        for section in ("global", "install"):
            if parser.has_section(section):
                merged.update({k.replace("_", "-"): v for k, v in parser.items(section)})
    for key in (
        "index-url",
        "extra-index-url",
        "find-links",
        "no-index",
        "trusted-host",
        "cert",
        "constraint",
    ):
        var = "PIP_" + key.upper().replace("-", "_")
        if environ.get(var):
            merged[key] = environ[var]

    def words(key: str) -> tuple[str, ...]:
        return tuple(merged.get(key, "").split())

    return IndexOptions(
        index_url=merged.get("index-url") or None,
        extra_index_urls=words("extra-index-url"),
        find_links=words("find-links"),
        no_index=merged.get("no-index", "").lower() in {"1", "true", "yes", "on"},
        trusted_hosts=words("trusted-host"),
        cert=merged.get("cert") or None,
        constraints=words("constraint"),
    )


@functools.lru_cache(maxsize=8)
def _pip_config_cached(
    key: tuple[tuple[str, str], ...], files: tuple[tuple[str, int, int, int], ...]
) -> IndexOptions:
    # ``files`` (the config files' identities) is part of the key so an edit is noticed.
    return read_pip_config(dict(key))


@functools.lru_cache(maxsize=8)
def _pip_config_paths(key: tuple[tuple[str, str], ...]) -> tuple[str, ...]:
    return tuple(str(p) for p in _pip_config_files(dict(key)))


def _file_identities(paths: Sequence[str]) -> tuple[tuple[str, int, int, int], ...]:
    out = []
    for path in paths:
        try:
            st = os.stat(path)
        except OSError:
            continue
        out.append((path, st.st_size, st.st_mtime_ns, st.st_ino))
    return tuple(out)


#: Variables that change what pip's configuration says.
_PIP_CONFIG_VARS = (
    "PIP_CONFIG_FILE",
    "PIP_INDEX_URL",
    "PIP_EXTRA_INDEX_URL",
    "PIP_FIND_LINKS",
    "PIP_NO_INDEX",
    "PIP_TRUSTED_HOST",
    "PIP_CERT",
    "PIP_CONSTRAINT",
    "XDG_CONFIG_DIRS",
    "XDG_CONFIG_HOME",
    "HOME",
)


def _pip_config_vars() -> tuple[tuple[str, str], ...]:
    """The variables that change what pip's configuration says, as they are set now."""
    values = tuple(map(os.environ.get, _PIP_CONFIG_VARS))
    return tuple((k, v) for k, v in zip(_PIP_CONFIG_VARS, values) if v is not None)


def pip_config_candidates() -> tuple[str, ...]:
    """Every file pip's configuration is read from in the current environment, existing or
    not (creating one changes the effective index): what :func:`effective_index` and
    :func:`index_context` read, for ``watch_paths``."""
    return _pip_config_paths(_pip_config_vars())


def _pip_inputs() -> tuple[tuple[tuple[str, str], ...], tuple[tuple[str, int, int, int], ...]]:
    """The variables that change what pip's configuration says, and its files' identities."""
    relevant = _pip_config_vars()
    return relevant, _file_identities(_pip_config_paths(relevant))


def effective_index(ally_index: IndexOptions) -> IndexOptions:
    """pip's configuration overlaid with ally's own ``[index]`` settings."""
    relevant, files = _pip_inputs()
    return _effective_index(ally_index, relevant, files)


def index_context(ally_index: IndexOptions) -> list[Any]:
    """What :func:`effective_index` is made of, without reading pip's files: the variables
    (credentials stripped), the identities of pip's config files and ally's settings.

    For ``env_context``, asked on every load: it changes whenever the effective index may
    have (a file touched without a change only costs recomputing the keys once), and it
    spares a warm load parsing pip's configuration (configparser alone is a millisecond).
    """
    relevant, files = _pip_inputs()
    return [
        [[k, strip_credentials(v)] for k, v in relevant],
        [list(f) for f in files],
        ally_index.identity(),
    ]


@functools.lru_cache(maxsize=16)
def _effective_index(
    ally_index: IndexOptions,
    relevant: tuple[tuple[str, str], ...],
    files: tuple[tuple[str, int, int, int], ...],
) -> IndexOptions:
    pip = _pip_config_cached(relevant, files)
    return IndexOptions(
        index_url=ally_index.index_url or pip.index_url,
        extra_index_urls=pip.extra_index_urls + ally_index.extra_index_urls,
        find_links=pip.find_links + ally_index.find_links,
        no_index=ally_index.no_index or pip.no_index,
        trusted_hosts=pip.trusted_hosts + ally_index.trusted_hosts,
        cert=ally_index.cert or pip.cert,
        constraints=pip.constraints + ally_index.constraints,
    )


class UrlOption:
    """An index option that may hold URLs, thus credentials."""

    # A plain class: a NamedTuple costs a third of a millisecond to create at import time.
    __slots__ = ("attr", "option", "pip_var", "uv_sep", "uv_var")

    def __init__(self, attr: str, option: str, pip_var: str, uv_var: str, uv_sep: str) -> None:
        #: The :class:`~ally_core.config.IndexOptions` attribute.
        self.attr = attr
        #: The installer's option (the same for pip and uv).
        self.option = option
        #: pip's variable for it (several values separated by spaces).
        self.pip_var = pip_var
        #: uv's variable for it.
        self.uv_var = uv_var
        #: How uv's variable separates several values.
        self.uv_sep = uv_sep

    def values(self, index: IndexOptions) -> tuple[str, ...]:
        """This option's values in ``index`` (none, one or several)."""
        value = getattr(index, self.attr)
        return (value,) if isinstance(value, str) else tuple(value or ())


URL_OPTIONS = (
    UrlOption("index_url", "--index-url", "PIP_INDEX_URL", "UV_INDEX_URL", " "),
    UrlOption(
        "extra_index_urls", "--extra-index-url", "PIP_EXTRA_INDEX_URL", "UV_EXTRA_INDEX_URL", " "
    ),
    UrlOption("find_links", "--find-links", "PIP_FIND_LINKS", "UV_FIND_LINKS", ","),
    UrlOption("constraints", "--constraint", "PIP_CONSTRAINT", "UV_CONSTRAINT", " "),
)
#: uv's own index variables in ally's environment: not passed on (uv reads pip's settings
#: through ally, as it reads no uv.toml), so that only what the env's identity holds counts.
UV_INDEX_VARS = (
    "UV_INDEX_URL",
    "UV_EXTRA_INDEX_URL",
    "UV_DEFAULT_INDEX",
    "UV_INDEX",
    "UV_FIND_LINKS",
    "UV_NO_INDEX",
    "UV_CONSTRAINT",
    "UV_INDEX_STRATEGY",
)


def has_credentials(value: str) -> bool:
    """Whether ``value`` (a URL, or any option value) holds ``user:password@``."""
    return bool(strip_credentials(value) != value)


@functools.lru_cache(maxsize=16)
def index_identity(index: IndexOptions) -> Mapping[str, Any]:
    """``index`` as it goes into an env's identity (credentials stripped)."""
    return index.identity()
