"""What a reader sees while ally publishes envs: only complete, healthy envs, swapped at once.

"Readers" here are other processes that look at ``<envs>/<name>`` the way a host, a shell
script or ``ally list`` would: following the pointer, never knowing about ally's internals. The
tests fail if a build that failed its deep health check is published (even for a moment), if
the pointer swap leaves a moment without a pointer, or if a kill right after the swap can leave
a pointer to an env without its marker.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

from ally_core import Host

MAIN = (
    "import json, sys, allydemo_greet\n"
    "json.load(sys.stdin)\n"
    "print(json.dumps({'success': True, 'result': allydemo_greet.__version__}))\n"
)
TOOLS = [{"name": "version", "command": "python3", "args": ["main.py"]}]

# Installs allydemo-greet; with a file "break" in the plugin dir it also leaves a distribution
# whose requirement is missing: the env's python works, but `pip check` (the deep check) fails.
INSTALL = """\
import os, subprocess, sys, sysconfig
subprocess.check_call([sys.executable, "-m", "pip", "install", "-q", "--no-index",
                       "--find-links", sys.argv[1], "allydemo-greet==1.0.0"])
if os.path.exists("break"):
    info = os.path.join(sysconfig.get_paths()["purelib"], "allydemo_broken-1.0.dist-info")
    os.makedirs(info)
    with open(os.path.join(info, "METADATA"), "w") as fh:
        fh.write("Metadata-Version: 2.1\\nName: allydemo-broken\\nVersion: 1.0\\n"
                 "Requires-Dist: allydemo-not-installed\\n")
"""

# Records every target the pointer had while it runs (one per line, in order of appearance)
# and, for each look, whether <pointer>/bin/python existed; stops when argv[3] exists.
READER = """\
import os, sys
pointer, out, stop = sys.argv[1], sys.argv[2], sys.argv[3]
python = os.path.join(pointer, "bin", "python")
seen, looks, missing = [], 0, 0
print("ready", flush=True)
while not os.path.exists(stop):
    for _ in range(200):
        looks += 1
        if not os.path.exists(python):
            missing += 1
        try:
            target = os.readlink(pointer)
        except OSError:
            target = None
        if not seen or seen[-1] != target:
            seen.append(target)
with open(out, "w") as fh:
    fh.write(__import__("json").dumps({"seen": seen, "looks": looks, "missing": missing}))
"""


def _cli(*args: str, stdin=subprocess.DEVNULL, **kw) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "ally_core.cli", *args],
        capture_output=True,
        text=True,
        timeout=300,
        stdin=stdin,
        **kw,
    )


class Reader:
    """A process looking at a plugin's pointer in a tight loop until stopped."""

    def __init__(self, home: Path, name: str, tmp: Path) -> None:
        self.out = tmp / f"reader-{name}.json"
        self.stop = tmp / f"reader-{name}.stop"
        pointer = home / "plugin-envs" / name
        self.proc = subprocess.Popen(
            [sys.executable, "-c", READER, str(pointer), str(self.out), str(self.stop)],
            stdout=subprocess.PIPE,
            text=True,
        )
        # Looking before anything is published: it says so on its stdout (a blocking read).
        assert self.proc.stdout is not None
        assert self.proc.stdout.readline() == "ready\n", "the reader never started"

    def finish(self) -> dict:
        self.stop.touch()
        assert self.proc.wait(60) == 0
        return json.loads(self.out.read_text())

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


def _checked_plugin(make_plugin, wheelhouse: Path) -> Path:
    return make_plugin(
        "checked",
        {
            "runtime": "python3",
            "dependencies": {"install_command": f"python install.py {wheelhouse}"},
            "tools": TOOLS,
        },
        {"install.py": INSTALL, "main.py": MAIN},
    )


def _listed(home: Path, name: str) -> dict:
    proc = _cli("list", "--json")
    assert proc.returncode == 0, proc.stderr
    (entry,) = [p for p in json.loads(proc.stdout)["plugins"] if p["name"] == name]
    return entry


def _store_dirs(home: Path) -> list[str]:
    store = home / "plugin-envs" / ".store"
    return sorted(os.listdir(store)) if store.is_dir() else []


def test_a_first_build_failing_its_deep_check_is_never_published(
    ally_home: Path, make_plugin, wheelhouse: Path, tmp_path: Path
):
    plugin = _checked_plugin(make_plugin, wheelhouse)
    (plugin / "break").touch()
    reader = Reader(ally_home, "checked", tmp_path)
    try:
        proc = _cli("install", "checked")
        seen = reader.finish()
    finally:
        reader.kill()
    assert proc.returncode == 4, proc.stdout + proc.stderr
    assert "failed its health check" in proc.stdout + proc.stderr
    assert "allydemo-not-installed" in proc.stdout + proc.stderr
    # Seen from outside: there never was a pointer, ally list does not call it ready, and the
    # failed env is not kept around for another plugin to share.
    assert seen["seen"] == [None], seen
    assert not os.path.lexists(ally_home / "plugin-envs" / "checked")
    assert _listed(ally_home, "checked")["status"] != "ready"
    assert _store_dirs(ally_home) == []
    # Repaired, the same plugin builds and runs.
    (plugin / "break").unlink()
    assert _cli("install", "checked").returncode == 0
    ran = _cli("run", "checked", "version", "--input", "{}", "-q")
    assert json.loads(ran.stdout)["result"] == "1.0.0", ran.stderr


def test_a_reinstall_failing_its_deep_check_keeps_the_previous_env_published(
    ally_home: Path, make_plugin, wheelhouse: Path, tmp_path: Path
):
    plugin = _checked_plugin(make_plugin, wheelhouse)
    assert _cli("install", "checked").returncode == 0
    before = os.readlink(ally_home / "plugin-envs" / "checked")
    (plugin / "break").touch()
    reader = Reader(ally_home, "checked", tmp_path)
    try:
        proc = _cli("reinstall", "checked")
        seen = reader.finish()
    finally:
        reader.kill()
    assert proc.returncode == 4, proc.stdout + proc.stderr
    text = proc.stdout + proc.stderr
    assert "failed its health check" in text and "the previous env is kept" in text, text
    assert seen["seen"] == [before], seen  # not even for a moment
    assert os.readlink(ally_home / "plugin-envs" / "checked") == before
    listed = _listed(ally_home, "checked")
    assert listed["status"] == "ready"
    assert os.path.basename(listed["env"]) == os.path.basename(before)
    assert _store_dirs(ally_home) == [os.path.basename(before)]
    ran = _cli("run", "checked", "version", "--input", "{}", "-q")
    assert json.loads(ran.stdout)["result"] == "1.0.0", ran.stderr


def test_a_reader_in_another_process_never_misses_the_pointer_while_it_is_swapped(
    ally_home: Path, make_plugin, tmp_path: Path
):
    """Many swaps between two ready envs, a reader looking at ``<name>/bin/python`` in a tight
    loop: with the swap done as "unlink, then rename", the reader catches the gap."""
    plugin = make_plugin(
        "greeter",
        {"runtime": "python3", "dependencies": {"file": "requirements.txt"}, "tools": TOOLS},
        {"requirements.txt": "allydemo-greet==1.0.0\n", "main.py": MAIN},
    )
    requirements = plugin / "requirements.txt"
    pins = ["allydemo-greet==1.0.0\n", "allydemo-greet==2.0.0\n"]
    host = Host(ally_home)
    for pin in pins:  # both envs built once; from now on a load only swaps the pointer
        requirements.write_text(pin)
        (outcome,) = host.load(["greeter"])
        assert outcome.ready and outcome.action in ("built", "repaired"), outcome.reason
    reader = Reader(ally_home, "greeter", tmp_path)
    swaps = 400
    try:
        for i in range(swaps):
            requirements.write_text(pins[i % 2])
            (outcome,) = host.load(["greeter"])
            assert outcome.ready and outcome.action == "none", (i, outcome.action, outcome.reason)
        seen = reader.finish()
    finally:
        reader.kill()
    # The reader really watched the swaps (it saw the pointer change many times)...
    assert len(seen["seen"]) > swaps // 4, seen["seen"][:10]
    # ...and <name>/bin/python was there at every look, the pointer too.
    assert seen["missing"] == 0, f"{seen['missing']} of {seen['looks']} looks found no python"
    assert None not in seen["seen"]


# The CLI, killed (SIGKILL, by itself) right after its pointer rename returned: a reader at
# that moment must find the env complete, marker included.
_DIE_AFTER_PUBLISH = """
import os, signal, sys
real_replace = os.replace
def replace(src, dst, *args, **kwargs):
    real_replace(src, dst, *args, **kwargs)
    if str(src).endswith(".link") and os.path.basename(str(dst)) == "greeter":
        os.kill(os.getpid(), signal.SIGKILL)
os.replace = replace
from ally_core.cli import main
sys.exit(main(sys.argv[1:]))
"""


def test_kill_9_right_after_the_pointer_swap_leaves_a_pointer_to_a_complete_env(
    ally_home: Path, make_plugin
):
    make_plugin(
        "greeter",
        {"runtime": "python3", "dependencies": {"file": "requirements.txt"}, "tools": TOOLS},
        {"requirements.txt": "allydemo-greet==2.0.0\n", "main.py": MAIN},
    )
    for command in ("install", "reinstall"):
        proc = subprocess.run(
            [sys.executable, "-c", _DIE_AFTER_PUBLISH, command, "-q", "greeter"],
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert proc.returncode == -signal.SIGKILL, proc.stderr
        pointer = ally_home / "plugin-envs" / "greeter"
        target = Path(os.path.realpath(pointer))
        assert target.parent == ally_home / "plugin-envs" / ".store", target
        marker = json.loads((target / ".installed").read_text())
        assert marker["plugin"] == "greeter"
        # What the marker promises is there: the package, importable by the env's python.
        check = subprocess.run(
            [str(pointer / "bin" / "python"), "-c", "import allydemo_greet"], capture_output=True
        )
        assert check.returncode == 0, check.stderr
        ran = _cli("run", "greeter", "version", "--input", "{}", "-q")
        assert json.loads(ran.stdout)["result"] == "2.0.0", ran.stderr
