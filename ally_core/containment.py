"""Keeping a tool call's processes inside the call.

Every tool runs in a new session (its own process group), which ally kills when the call
ends. A process group is only a convention, though: a descendant that calls ``setsid()``
leaves it, and a tool outlives ally when ally itself is killed with SIGKILL. On Linux ally
uses what the kernel offers:

* **parent-death signal** (``PR_SET_PDEATHSIG``): the tool process gets SIGKILL when the
  ally thread that started it dies, SIGKILL of ally included;
* **a cgroup v2 per call**, when ally may create one (root, or a delegated subtree such as a
  systemd user session): the tool starts inside it, so do all its descendants, ``setsid()``
  or not; when the call ends, ``cgroup.kill`` ends every one of them at once. A call's
  cgroup is named after the ally process that made it; one left behind by a killed ally is
  killed and removed by the next tool call of any ally process.

Elsewhere (macOS, no writable cgroup) the process-group kill is what holds; see
``docs/guarantees.md``. ``ALLY_TOOL_CGROUP=0`` turns the cgroup off.
"""

from __future__ import annotations

import functools
import itertools
import os
import signal
import sys
from pathlib import Path
from typing import Callable, Optional

from .lean import CGROUP_PREFIX, cgroup_wanted, kill_cgroup, own_cgroup2
from .lean import reap_stale as _reap_stale
from .text import log

__all__ = ["CallScope", "cgroup_root", "open_scope"]


PR_SET_PDEATHSIG = 1
PREFIX = CGROUP_PREFIX
_counter = itertools.count()
_root: Optional[Path] = None
_root_checked = False


@functools.cache
def _libc_prctl() -> Optional[Callable[..., int]]:
    """libc's ``prctl``, loaded on the first tool call. The usual soname first: looking libc
    up with :func:`ctypes.util.find_library` runs ``ldconfig -p``, a process per call."""
    if not sys.platform.startswith("linux"):
        return None
    import ctypes

    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
    except OSError:
        import ctypes.util

        try:
            libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        except OSError:
            return None
    prctl: Callable[..., int] = libc.prctl
    return prctl


def cgroup_root() -> Optional[Path]:
    """Where ally may create per-call cgroups, or ``None`` (checked once per process)."""
    global _root, _root_checked
    if _root_checked:
        return _root
    _root_checked = True
    if not cgroup_wanted(os.environ):
        return None
    found = own_cgroup2()
    if found is None:
        return None
    base = Path(found)
    probe = base / f"{PREFIX}{os.getpid()}-probe"
    try:
        probe.mkdir()
        probe.rmdir()
    except OSError:
        return None
    _root = base
    return _root


def _kill_cgroup(path: Path) -> None:
    """Kill every process in the cgroup ``path`` and remove it (best effort, bounded)."""
    kill_cgroup(str(path))
    if os.path.isdir(path):
        log.debug("cgroup %s is not empty yet; left for the next call", path)


def reap_stale(root: Path) -> None:
    """Kill and remove the call cgroups of ally processes that are gone."""
    _reap_stale(str(root))


class CallScope:
    """The processes of one tool call: set up in the child before exec, killed at the end."""

    def __init__(self, cgroup: Optional[Path]) -> None:
        self.cgroup = cgroup
        self._procs_fd: Optional[int] = None
        if cgroup is not None:
            try:
                cgroup.mkdir()
                self._procs_fd = os.open(cgroup / "cgroup.procs", os.O_WRONLY)
            except OSError as exc:
                log.debug("no cgroup for this tool call: %s", exc)
                self._remove()
                self.cgroup = None

    @property
    def contained(self) -> bool:
        """Whether descendants that leave the process group are still ended with the call."""
        return self._procs_fd is not None

    @property
    def procs_fd(self) -> Optional[int]:
        """The call cgroup's ``cgroup.procs``, open for writing (``None`` without a cgroup):
        a process that writes ``0`` to it joins the call (a warm worker's forked child)."""
        return self._procs_fd

    def preexec(self) -> Optional[Callable[[], None]]:
        """What the child runs between fork and exec (only system calls: no locks taken)."""
        prctl = _libc_prctl()
        if prctl is None and self._procs_fd is None:
            return None
        fd = self._procs_fd

        def setup() -> None:
            if fd is not None:
                os.write(fd, b"0")  # "0": the writing process joins the cgroup
            if prctl is not None:
                prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)

        return setup

    def adopt(self, other: CallScope) -> None:
        """Make ``other``'s cgroup this call's, and remove this scope's own (empty) one: a
        warm worker's call process joined a cgroup made ahead of the call, off its path."""
        if other.cgroup is None or other._procs_fd is None:
            raise ValueError("that scope has no cgroup")
        self._remove()
        self.cgroup, self._procs_fd = other.cgroup, other._procs_fd
        other.cgroup, other._procs_fd = None, None

    def kill(self) -> None:
        """End every process of the call that is still there (the cgroup's members)."""
        if self.cgroup is not None and self.contained:
            try:
                (self.cgroup / "cgroup.kill").write_text("1")
            except OSError:
                pass

    def populated(self) -> bool:
        if self.cgroup is None:
            return False
        try:
            return "populated 1" in (self.cgroup / "cgroup.events").read_text()
        except OSError:
            return False

    def close(self) -> None:
        """Kill what is left and remove the cgroup."""
        if self._procs_fd is not None:
            os.close(self._procs_fd)
            self._procs_fd = None
        if self.cgroup is not None:
            _kill_cgroup(self.cgroup)
            self.cgroup = None

    def _remove(self) -> None:
        if self._procs_fd is not None:
            os.close(self._procs_fd)
            self._procs_fd = None
        if self.cgroup is not None:
            try:
                self.cgroup.rmdir()
            except OSError:
                pass


def open_scope() -> CallScope:
    """A scope for one tool call: a fresh cgroup when ally may make one."""
    root = cgroup_root()
    if root is None:
        return CallScope(None)
    reap_stale(root)
    return CallScope(root / f"{PREFIX}{os.getpid()}-{next(_counter)}")
