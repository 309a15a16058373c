"""ally's own tests use the fixtures its pytest plugin (ally_core.testing) ships, plus the
helpers below that only its own suite needs (shared here so that each exists once)."""

from __future__ import annotations

import json
import os
import select
import shutil
import signal
import subprocess
import time
from collections.abc import Iterable, Iterator
from pathlib import Path

import pytest

from ally_core.testing import build_wheel


class Processes:
    """Processes a test started indirectly (a tool's children, an installer): wait for them to
    end, and kill, at teardown, whatever a failing test left running (by pid, one by one)."""

    def __init__(self) -> None:
        self._leftovers: list[tuple[int, int]] = []  # (pid, pidfd or -1)

    def reap(self, *pids: int) -> None:
        """Kill ``pids`` at teardown if they still run. Each is held by a pidfd from now on,
        so a pid reused by an unrelated process after it ended is never signalled."""
        for pid in pids:
            try:
                self._leftovers.append((pid, os.pidfd_open(pid)))
            except ProcessLookupError:
                continue
            except (AttributeError, OSError):
                self._leftovers.append((pid, -1))

    @staticmethod
    def running(pid: int) -> bool:
        """Whether ``pid`` runs (a zombie waiting for its reaper runs no code: it does not)."""
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            return False
        return stat.rpartition(")")[2].split()[0] not in {"Z", "X"}

    def wait_gone(self, pids: Iterable[int], timeout: float = 10.0) -> list[int]:
        """The pids still running after up to ``timeout`` seconds (signals are delivered
        asynchronously). Waits on a pidfd, which the kernel makes readable when the process
        exits: no polling, except where pidfds do not exist (then every 20 ms)."""
        deadline = time.monotonic() + timeout
        return [pid for pid in pids if not self._wait_one(pid, deadline)]

    def _wait_one(self, pid: int, deadline: float) -> bool:
        try:
            fd = os.pidfd_open(pid)
        except ProcessLookupError:
            return True
        except (AttributeError, OSError):  # no pidfd_open (kernel < 5.3, not Linux)
            while self.running(pid) and time.monotonic() < deadline:
                time.sleep(0.02)
            return not self.running(pid)
        try:
            select.select([fd], [], [], max(0.0, deadline - time.monotonic()))
        finally:
            os.close(fd)
        return not self.running(pid)

    def kill_leftovers(self) -> None:
        for pid, fd in self._leftovers:
            try:
                if fd >= 0:
                    signal.pidfd_send_signal(fd, signal.SIGKILL)
                else:
                    os.kill(pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
            finally:
                if fd >= 0:
                    os.close(fd)


@pytest.fixture
def processes() -> Iterator[Processes]:
    """Wait for processes to end; kill the ones a failing test leaves running."""
    watched = Processes()
    yield watched
    watched.kill_leftovers()


@pytest.fixture
def unprivileged() -> list[str]:
    """A command prefix that runs a command as root minus the capabilities that ignore file
    modes (``setpriv``), so that ``chmod -w`` means something; skips where that is impossible."""
    setpriv = shutil.which("setpriv")
    if setpriv is None or os.geteuid() != 0:
        pytest.skip("needs root and setpriv to run a process that respects file permissions")
    prefix = [setpriv, "--inh-caps=-all", "--bounding-set=-dac_override,-dac_read_search,-fowner"]
    probe = subprocess.run([*prefix, "true"], capture_output=True)
    if probe.returncode != 0:
        pytest.skip(f"setpriv cannot drop capabilities here: {probe.stderr.decode().strip()}")
    return prefix


@pytest.fixture
def hook_wheel(ally_home: Path, wheelhouse: Path, tmp_path: Path) -> Path:
    """The wheel of ``allydemo-hook`` 1.0.0, a package that ships a startup hook
    (``allydemo_hook.pth``, as coverage and editable installs do), in a directory the home's
    ``config.toml`` finds beside the session's wheelhouse (no index)."""
    house = tmp_path / "hook-wheels"
    wheel = build_wheel(
        house,
        "allydemo-hook",
        "1.0.0",
        files={"allydemo_hook.pth": "import os\n", "allydemo_hook.py": "x = 1\n"},
    )
    (ally_home / "config.toml").write_text(
        "[ally.index]\nno_index = true\n"
        f"find_links = [{json.dumps(str(wheelhouse))}, {json.dumps(str(house))}]\n",
        "utf-8",
    )
    return wheel
