"""Progress display: a live display on a terminal, the original log lines otherwise."""

from __future__ import annotations

import io
import os
import pty
import subprocess
import sys
from pathlib import Path

from ally_core import ProgressEvent
from ally_core.progress import LogReporter

MANIFEST = {"runtime": "python3", "dependencies": {"file": "requirements.txt"}}


def test_install_on_a_terminal_draws_a_live_display(make_plugin, ally_home: Path):
    make_plugin("alpha", MANIFEST, {"requirements.txt": "allydemo-greet\n"})
    make_plugin("beta", MANIFEST, {"requirements.txt": "allydemo-shout\n"})
    main, secondary = pty.openpty()
    proc = subprocess.Popen(
        [sys.executable, "-m", "ally_core.cli", "install"],
        stdin=subprocess.DEVNULL, stdout=secondary, stderr=secondary,
        env={**os.environ, "TERM": "xterm-256color", "COLUMNS": "120"},
    )
    os.close(secondary)
    chunks = []
    while True:
        try:
            data = os.read(main, 65536)
        except OSError:  # EIO: the child closed the terminal
            break
        if not data:
            break
        chunks.append(data)
    assert proc.wait(120) == 0
    os.close(main)
    screen = b"".join(chunks).decode("utf-8", "replace")
    assert "\x1b[" in screen, "a live display uses terminal control sequences"
    assert "alpha" in screen and "beta" in screen
    assert "done" in screen
    assert "[PluginEnvironmentManager]" not in screen


def test_log_lines_match_the_original_design():
    out = io.StringIO()
    report = LogReporter(out)
    for phase, message in [
        ("start", "Installing dependencies for 'dokuwiki-plugin'..."),
        ("create", "Creating virtual environment"),
        ("install", "Installing packages from requirements.txt"),
        ("output", "Collecting sympy"),
        ("done", "Dependencies installed for 'dokuwiki-plugin'"),
    ]:
        report(ProgressEvent("dokuwiki-plugin", phase, message))
    assert out.getvalue().splitlines() == [
        "[PluginEnvironmentManager] Installing dependencies for 'dokuwiki-plugin'...",
        "[PluginEnvironmentManager]   \u2192 Creating virtual environment",
        "[PluginEnvironmentManager]   \u2192 Installing packages from requirements.txt",
        "[PluginEnvironmentManager] \u2713 Dependencies installed for 'dokuwiki-plugin'",
    ]
