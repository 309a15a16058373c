"""``ally mcp serve``: every plugin's tools to any Model Context Protocol client.

:mod:`ally_core.mcp.catalog` knows which tools are exposed under which names and how a call's
answer is shown; it needs nothing beyond ally itself. :mod:`ally_core.mcp.server` speaks the
protocol with the official ``mcp`` SDK, an optional dependency: ``pip install 'ally-core[mcp]'``
(Python >= 3.10).
"""

from __future__ import annotations

__all__ = ["INSTALL_HINT", "sdk_missing"]

#: The one line printed when the SDK is not installed.
INSTALL_HINT = "ally mcp serve needs the MCP SDK: pip install 'ally-core[mcp]' (Python >= 3.10)"


def sdk_missing(exc: ImportError) -> bool:
    """Whether ``exc`` says the ``mcp`` SDK (not something else) cannot be imported."""
    name = exc.name or ""
    return name == "mcp" or name.startswith("mcp.")
