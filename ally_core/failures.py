"""Failure memory: a build that failed for some inputs is not retried at once for those inputs.

Two memories: this process's (monotonic time, so a clock change cannot shorten it) and the
env store's record, which other processes (``ally list`` after a failed ``ally install``) read.
A failure is remembered for exactly the request key it failed with: failures of other inputs
(an earlier dependency file, another ``ALLY_PYTHON``) say nothing about the current ones.
"""

from __future__ import annotations

import threading
import time
from typing import Optional

from .store import EnvStore

__all__ = ["FailureMemory"]


class FailureMemory:
    """Why the last build of a plugin failed, for ``retry_after`` seconds. Thread-safe."""

    def __init__(self, store: EnvStore, retry_after: float) -> None:
        self.store = store
        #: Seconds during which a load does not build again inputs that just failed.
        self.retry_after = retry_after
        self._lock = threading.Lock()
        self._failures: dict[str, tuple[str, float, str]] = {}

    def remember(self, name: str, key: str, reason: str) -> None:
        """The build of ``name`` for ``key`` failed with ``reason``."""
        with self._lock:
            self._failures[name] = (key, time.monotonic(), reason)
        self.store.record_failure(name, key, reason)

    def forget(self, name: str) -> None:
        """A build of ``name`` succeeded (or its env was removed)."""
        with self._lock:
            self._failures.pop(name, None)
        self.store.clear_failure(name)

    def recent(self, name: str, key: str) -> Optional[str]:
        """Why this process's last build of ``name`` for ``key`` failed, if it did lately."""
        with self._lock:
            failure = self._failures.get(name)
        if failure and failure[0] == key and time.monotonic() - failure[1] < self.retry_after:
            return failure[2]
        return None

    def reason(self, name: str, key: str, *, recent: bool) -> Optional[str]:
        """The reason the last build of ``name`` for exactly ``key`` failed, if it did.

        ``recent``: only a failure younger than ``retry_after`` (a load retries older ones).
        """
        remembered = self.recent(name, key)
        if remembered is not None:
            return remembered
        record = self.store.last_failure(name)
        if not record or record.get("request_key") != key:
            return None
        reason = record.get("reason")
        if not isinstance(reason, str):
            return None
        if recent:
            import datetime

            try:
                at = datetime.datetime.fromisoformat(str(record.get("at")))
                age = (datetime.datetime.now(datetime.timezone.utc) - at).total_seconds()
            except (TypeError, ValueError):
                return None
            if not 0 <= age < self.retry_after:
                return None
        return reason
