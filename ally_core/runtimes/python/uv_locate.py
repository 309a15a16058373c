"""Where uv is, and whether it can be used: asked on every load (the env context), so this
module imports nothing of the installers (those are imported when a build needs them)."""

from __future__ import annotations

import functools
import importlib.util
import threading
from typing import Optional

__all__ = [
    "SYSCONFIG_LOCK",
    "usable_uv",
    "uv_available",
    "uv_bin",
    "uv_package_found",
]

#: Serialises the first uses of ``sysconfig`` (not thread-safe) by parallel builds: uv's
#: ``find_uv_bin`` and the stdlib's ``venv.EnvBuilder`` both read it.
SYSCONFIG_LOCK = threading.Lock()
_UV_BIN: list[Optional[str]] = []


def uv_bin() -> Optional[str]:
    """The uv binary (the ``uv`` distribution's, else one on PATH), looked up once.

    Under a lock: ``uv.find_uv_bin`` reads ``sysconfig``, whose first use is not thread-safe,
    and parallel builds ask from several threads at once.
    """
    with SYSCONFIG_LOCK:
        if not _UV_BIN:
            try:
                from uv import find_uv_bin

                _UV_BIN.append(str(find_uv_bin()))
            except (ImportError, OSError, TypeError):
                import shutil

                _UV_BIN.append(shutil.which("uv"))
        return _UV_BIN[0]


def uv_package_found() -> bool:
    """Whether the ``uv`` distribution is importable by ally's Python (without importing it).

    ``find_spec`` answers from the import system's directory caches, which importing ally
    filled already; listing ``sys.path`` for ``uv-*.dist-info`` would cost a millisecond.
    """
    spec = importlib.util.find_spec("uv")
    # A bare "uv" directory on sys.path (the current one, say) is a namespace package
    # without an origin: not the uv distribution.
    return spec is not None and spec.origin is not None


@functools.lru_cache(maxsize=1)
def uv_available() -> bool:
    """Whether uv can be used, without importing it (this runs on the first warm load): the
    ``uv`` distribution, else a ``uv`` on ``PATH``."""
    if uv_package_found():
        return True
    import shutil  # (it imports bz2 and lzma: not on a warm load where uv is installed)

    return shutil.which("uv") is not None


def usable_uv() -> Optional[str]:
    """The uv binary if uv can be used, else ``None`` (what seeds pip and checks envs)."""
    return uv_bin() if uv_available() else None
