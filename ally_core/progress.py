"""Showing progress: the original design's log lines, or a live display on a terminal.

Both are callables taking a :class:`~ally_core.ProgressEvent`, safe to call from several build
threads at once. A host application can pass its own callable instead.
"""

from __future__ import annotations

import sys
import threading
from typing import Any, Optional, TextIO

from .envs import ProgressEvent

__all__ = ["LiveReporter", "LogReporter", "make_reporter"]

TAG = "[PluginEnvironmentManager]"


class LogReporter:
    """Plain lines, one per phase (what a log file or a CI run wants)."""

    def __init__(self, stream: Optional[TextIO] = None, *, verbose: bool = False) -> None:
        self.stream = stream or sys.stderr
        self.verbose = verbose
        self._lock = threading.Lock()

    def __call__(self, event: ProgressEvent) -> None:
        if event.phase == "output" and not self.verbose:
            return
        if event.phase in {"start", "waiting"}:
            line = f"{TAG} {event.message}"
        elif event.phase == "done":
            line = f"{TAG} \u2713 {event.message}"
        elif event.phase == "failed":
            line = f"{TAG} \u2717 {event.plugin}: {event.message}"
        elif event.phase == "output":
            line = f"{TAG}     {event.plugin}: {event.message}"
        else:
            line = f"{TAG}   \u2192 {event.message}" if event.message else ""
        if line:
            with self._lock:
                self.stream.write(line + "\n")
                self.stream.flush()

    def close(self) -> None:
        return None


class LiveReporter:
    """One live row per plugin (rich), showing its phase and the installer's last line."""

    def __init__(self, stream: Optional[TextIO] = None) -> None:
        from rich.console import Console
        from rich.live import Live

        self.console = Console(file=stream or sys.stderr)
        self._rows: dict[str, tuple[str, str, Optional[float]]] = {}
        self._lock = threading.Lock()
        self._live = Live(
            self._render(), console=self.console, refresh_per_second=8, transient=False
        )
        self._live.start()

    def _render(self) -> Any:
        from rich.progress_bar import ProgressBar
        from rich.table import Table

        table = Table.grid(padding=(0, 1))
        for name, (phase, message, fraction) in self._rows.items():
            done = phase in {"done", "failed"}
            bar = ProgressBar(
                total=1.0,
                completed=fraction if fraction is not None else (1.0 if done else 0.0),
                pulse=fraction is None and not done,
                width=20,
            )
            style = "green" if phase == "done" else "red" if phase == "failed" else "cyan"
            table.add_row(f"[bold]{name}[/]", bar, f"[{style}]{phase}[/]", message[-70:])
        return table

    def __call__(self, event: ProgressEvent) -> None:
        with self._lock:
            previous = self._rows.get(event.plugin, ("", "", None))
            if event.phase == "output":
                self._rows[event.plugin] = (previous[0], event.message, previous[2])
            else:
                self._rows[event.plugin] = (event.phase, event.message, event.fraction)
            self._live.update(self._render())

    def close(self) -> None:
        self._live.stop()


def make_reporter(
    *, quiet: bool = False, verbose: bool = False, stream: Optional[TextIO] = None
) -> Any:
    """A live display on a TTY, plain lines otherwise, nothing with ``quiet``."""
    stream = stream or sys.stderr
    if quiet:
        return None
    if stream.isatty() and not verbose:
        return LiveReporter(stream)
    return LogReporter(stream, verbose=verbose)
