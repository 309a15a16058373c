"""Deep checks of a built env: a runtime's ``health_check(deep=True)`` runs commands in it.

Apart from :mod:`ally_core.process` (which knows no ally types): this turns the commands'
outcomes into a :class:`~ally_core.Health`.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from .envs import Health, Problem

if TYPE_CHECKING:
    import subprocess

__all__ = ["run_checks"]


def run_checks(
    checks: Sequence[tuple[str, Sequence[str], Mapping[str, str]]],
    *,
    cwd: Path,
    timeout: float = 120.0,
) -> Health:
    """Run ``(label, argv, env)`` deep checks; each one that fails or cannot run is a problem.

    The checks run at the same time (they are independent reads of one env), so a build's
    check phase costs its slowest check, not their sum. A problem reads
    ``"<label>: <last lines of its output>"``, in the order of ``checks``.
    For ``health_check(deep=True)``.
    """
    import subprocess  # deep checks only: a warm load runs no process

    # Each check's process, or why it could not start; in the order of ``checks``.
    started: list[tuple[str, subprocess.Popen[bytes] | str]] = []
    for label, argv, environ in checks:
        try:
            child = subprocess.Popen(
                list(argv),
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                env=dict(environ),
                cwd=cwd,
                stdin=subprocess.DEVNULL,
            )
        except (OSError, ValueError, subprocess.SubprocessError) as exc:
            started.append((label, f"could not run: {exc}"))
        else:
            started.append((label, child))
    deadline = time.monotonic() + timeout
    problems = []
    try:
        for label, proc in started:
            if isinstance(proc, str):
                problems.append(Problem(f"{label}: {proc}"))
                continue
            try:
                out, _ = proc.communicate(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.communicate()
                problems.append(Problem(f"{label}: timed out after {timeout:g} s"))
                continue
            if proc.returncode != 0:
                text = out.decode("utf-8", "replace").strip().splitlines()
                problems.append(Problem(f"{label}: " + " | ".join(text[-3:])))
    finally:
        for _, left in started:
            if not isinstance(left, str) and left.poll() is None:
                left.kill()
                left.wait()
    return Health(tuple(problems))
