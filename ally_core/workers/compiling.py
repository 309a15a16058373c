"""A fresh env's bytecode, for a plugin whose tools do not run in a worker (``"warm": false``).

uv installs without compiling; the first call would compile every module it imports. Right
after a build a process of its own (``server.py compile``) imports what the tool scripts
import, helped by a forked compile of the same files from the other end, then compiles the
whole packages at the lowest priority. A call that starts meanwhile waits for the imports
(:attr:`BackgroundCompile.imported`) instead of compiling the same modules at the same time.
"""

from __future__ import annotations

import json
import logging
import socket
import subprocess
import threading
from collections.abc import Mapping
from typing import Any, Callable, Optional

from .call import read_answer
from .plan import Plan
from .worker import SERVER_SCRIPT

log = logging.getLogger("ally")


class BackgroundCompile:
    def __init__(
        self,
        popen: Callable[..., subprocess.Popen[bytes]],
        name: str,
        plugin_dir: str,
        plan: Plan,
        environ: Mapping[str, str],
        timeout: float,
        on_imported: Callable[[BackgroundCompile], None],
    ) -> None:
        self.popen, self.name, self.plugin_dir = popen, name, plugin_dir
        self.plan, self.environ, self.timeout = plan, dict(environ), timeout
        self.on_imported = on_imported
        #: Set once the imports are done (or the compile failed).
        self.imported = threading.Event()
        self.proc: Optional[subprocess.Popen[bytes]] = None
        self.lock = threading.Lock()
        self.stopped = False

    def start(self) -> None:
        threading.Thread(target=self._run, name="ally-compile", daemon=True).start()

    def _run(self) -> None:
        ours, theirs = socket.socketpair()
        try:
            argv = [self.plan.python, str(SERVER_SCRIPT), "compile", str(theirs.fileno())]
            proc = self.popen(
                argv,
                cwd=self.plugin_dir,
                env=self.environ,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                pass_fds=(theirs.fileno(),),
                start_new_session=True,
            )
            theirs.close()
            with self.lock:
                self.proc = proc
                stopped = self.stopped
            if stopped:
                self.stop()
                return
            spec: dict[str, Any] = {
                "plugin_dir": self.plugin_dir,
                "scripts": self.plan.scripts,
                "modules": self.plan.modules,
            }
            ours.sendall(json.dumps(spec).encode() + b"\n")
            ours.settimeout(self.timeout)
            read_answer(ours)
        except Exception as exc:  # the calls compile what they import themselves
            log.debug("%s: background compile failed: %s", self.name, exc)
        finally:
            ours.close()
            theirs.close()
            self.imported.set()
            self.on_imported(self)

    def stop(self) -> None:
        """Kill the compile (the host closes)."""
        with self.lock:
            self.stopped = True
            proc = self.proc
        if proc is not None:
            if proc.poll() is None:
                proc.kill()
            proc.wait()
