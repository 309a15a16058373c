"""Warm workers: a Python tool call in a long-running host forks a process that already holds
the plugin's imports, instead of starting an interpreter (``Host(warm_workers=True)``).

``server.py`` runs in the env's interpreter (a fork server per plugin); :mod:`.pool` is ally's
side. See ``docs/embedding.md`` ("Warm workers") and ``docs/guarantees.md``.
"""

from __future__ import annotations

from .pool import WorkerInfo, WorkerOptions, WorkerPool, WorkerProcess

__all__ = ["WorkerInfo", "WorkerOptions", "WorkerPool", "WorkerProcess"]
