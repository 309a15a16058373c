"""Compatibility: the host API's former home. Import from :mod:`ally_core` (or
:mod:`ally_core.host`) instead; the names below stay importable from here."""

from __future__ import annotations

from .discovery import SETTLE_NS, PluginSource, not_found_message
from .host import Host, ProgressCallback
from .keys import describe_change
from .maintenance import Removal
from .outcomes import BoundTool, PluginOutcome

__all__ = [
    "SETTLE_NS",
    "BoundTool",
    "Host",
    "PluginOutcome",
    "PluginSource",
    "ProgressCallback",
    "Removal",
    "describe_change",
    "not_found_message",
]
