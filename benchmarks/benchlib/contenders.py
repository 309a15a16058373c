"""The contenders: the seed's run.sh, virtualenv + pip, run.sh with uv, ally (pip), ally (uv).

Each one gets its own root with its own empty cache, data and config dirs (and, for ally, its
own ``ALLY_HOME``), so that every "cold" number really starts from nothing.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Optional

from benchlib import inprocess
from benchlib.common import HERE, last_json, uv_bin
from benchlib.plugins import PLUGINS

SEED_RUN_SH = """\
#!/bin/bash
PLUGIN_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
if [ ! -d "$PLUGIN_DIR/venv" ]; then
    python3 -m venv "$PLUGIN_DIR/venv"
    "$PLUGIN_DIR/venv/bin/pip" install -r "$PLUGIN_DIR/requirements.txt"
fi
exec "$PLUGIN_DIR/venv/bin/python3" "$PLUGIN_DIR/main.py" "$@"
"""

#: The seed's script with virtualenv (the same version ally uses) instead of ``-m venv``.
VIRTUALENV_SH = SEED_RUN_SH.replace('python3 -m venv "', '"$BENCH_VIRTUALENV" "')

#: The seed's script written for uv (the same uv ally uses): the fastest hand-written wrapper,
#: and the reference for what ally itself adds to a uv install.
UV_SH = """\
#!/bin/bash
PLUGIN_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
if [ ! -d "$PLUGIN_DIR/venv" ]; then
    "$BENCH_UV" venv --quiet --python python3 "$PLUGIN_DIR/venv"
    "$BENCH_UV" pip install --python "$PLUGIN_DIR/venv/bin/python3" $BENCH_UV_INDEX \\
        -r "$PLUGIN_DIR/requirements.txt"
fi
exec "$PLUGIN_DIR/venv/bin/python3" "$PLUGIN_DIR/main.py" "$@"
"""
SCRIPTS = {"runsh": SEED_RUN_SH, "virtualenv": VIRTUALENV_SH, "uv-sh": UV_SH}


CONTENDERS = ("runsh", "virtualenv", "uv-sh", "ally-pip", "ally-uv")
TITLES = {
    "runsh": "run.sh (baseline)",
    "virtualenv": "virtualenv + pip",
    "uv-sh": "run.sh with uv",
    "ally-pip": "ally, ALLY_INSTALLER=pip",
    "ally-uv": "ally, uv (default)",
}


def write_plugin(plugins_dir: Path, name: str, kind: str, contender: str) -> Path:
    """Plugin ``kind`` (a key of PLUGINS) as ``name``, shaped for ``contender``."""
    info = PLUGINS[kind]
    d = plugins_dir / name
    d.mkdir(parents=True, exist_ok=True)
    (d / "requirements.txt").write_text(info["requirements"])
    (d / "main.py").write_text(info["main"])
    tool: dict[str, Any] = {"name": info["tool"], "schema": info["schema"]}
    manifest: dict[str, Any] = {"name": name, "version": "1.0.0"}
    if contender.startswith("ally"):
        manifest["runtime"] = "python3"
        manifest["dependencies"] = {"file": "requirements.txt"}
        tool.update(command="python3", args=["main.py", *info["args"]])
    else:
        (d / "run.sh").write_text(SCRIPTS[contender])
        (d / "run.sh").chmod(0o755)
        tool.update(command="./run.sh", args=info["args"])
    manifest["tools"] = [tool]
    (d / "plugin.json").write_text(json.dumps(manifest, indent=2))
    return d


def run_in_process(op: str, params: dict[str, Any], env: Mapping[str, str]) -> dict[str, Any]:
    """:func:`benchlib.inprocess.measure` in a fresh process with ``env``; its result."""
    proc = subprocess.run(
        [sys.executable, str(HERE / "bench.py"), inprocess.FLAG, op, json.dumps(params)],
        capture_output=True,
        text=True,
        env=dict(env),
        timeout=1200,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"in-process {op} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


_TRACE = re.compile(r"^\++([0-9]+[.,][0-9]+) (.*)$")


def run_script(plugin_dir: Path, info: dict[str, Any], env: Mapping[str, str]) -> dict[str, Any]:
    """Run the plugin's run.sh traced; env-ready time = when its ``exec`` line starts."""
    # bash ignores PS4 from the environment when run as root; BASH_ENV sets it instead.
    rc = plugin_dir.parent.parent / "bash_env"
    rc.write_text("PS4='+${EPOCHREALTIME} '\n")
    env = {**env, "BASH_ENV": str(rc)}
    t0 = time.time()
    proc = subprocess.run(
        ["bash", "-x", str(plugin_dir / "run.sh"), *info["args"]],
        cwd=plugin_dir,
        input=json.dumps(info["input"]).encode(),
        capture_output=True,
        env=env,
        timeout=1200,
    )
    t1 = time.time()
    err = proc.stderr.decode("utf-8", "replace")
    ready = None
    for line in err.splitlines():
        m = _TRACE.match(line)
        if m and m.group(2).startswith("exec "):
            ready = float(m.group(1).replace(",", ".")) - t0
    result = last_json(proc.stdout.decode("utf-8", "replace"))
    if proc.returncode != 0 or ready is None:
        raise RuntimeError(f"{plugin_dir}/run.sh failed ({proc.returncode}):\n{err[-3000:]}")
    return {"ready": ready, "first_result": t1 - t0, "result": result}


class Contender:
    def __init__(self, name: str, root: Path, env: Mapping[str, str], local: Optional[Path]):
        self.name = name
        self.root = root
        self.local = local
        self.plugins = root / ("home/plugins" if self.is_ally else "plugins")
        self.plugins.mkdir(parents=True)
        xdg = root / "xdg"
        self.env = {
            **env,
            "XDG_CACHE_HOME": str(xdg / "cache"),
            "XDG_DATA_HOME": str(xdg / "data"),
            "XDG_CONFIG_HOME": str(xdg / "config"),
            "BENCH_VIRTUALENV": str(Path(sys.executable).parent / "virtualenv"),
            "BENCH_UV": uv_bin(),
            "BENCH_UV_INDEX": "",
        }
        if self.is_ally:
            home = root / "home"
            self.env["ALLY_HOME"] = str(home)
            self.env["ALLY_INSTALLER"] = "pip" if name == "ally-pip" else "auto"
            if local is not None:
                (home / "config.toml").write_text(
                    f"[ally.index]\nno_index = true\nfind_links = [{json.dumps(str(local))}]\n"
                )
        elif local is not None:
            self.env["PIP_NO_INDEX"] = "1"
            self.env["PIP_FIND_LINKS"] = str(local)
            if " " in str(local):
                raise SystemExit(f"the wheelhouse path may not contain spaces: {local}")
            self.env["BENCH_UV_INDEX"] = f"--no-index --find-links {local}"

    @property
    def is_ally(self) -> bool:
        return self.name.startswith("ally")

    @property
    def home(self) -> Path:
        return self.root / "home"

    def add(self, name: str, kind: str) -> Path:
        return write_plugin(self.plugins, name, kind, self.name)

    def load(self, name: str, kind: str, *, call: bool) -> dict[str, Any]:
        """Make ``name`` ready (and, with ``call``, run its tool once)."""
        info = PLUGINS[kind]
        # Flush what earlier steps wrote (another contender's 100 MB env, say): its writeback
        # would otherwise compete with this contender's disk writes.
        os.sync()
        if not self.is_ally:
            r = run_script(self.plugins / name, info, self.env)
            r["env"] = str(self.plugins / name / "venv")
            r["spawned"] = None
            return r
        params: dict[str, Any] = {"home": str(self.home), "names": [name]}
        if call:
            params["call"] = {"tool": info["tool"], "input": info["input"]}
        r = run_in_process("load", params, self.env)
        (o,) = r["outcomes"]
        if o["status"] != "ready":
            raise RuntimeError(f"{self.name}: {name} not ready: {o['reason']}")
        out = {"ready": r["seconds"], "env": o["env"], "action": o["action"]}
        out["spawned"] = r["spawned"]
        if call:
            out["first_result"] = r["seconds"] + r["first_call"]
            out["result"] = r["result"]
        return out

    def caches(self) -> list[Path]:
        return [self.root / "xdg", *([self.home / "cache"] if self.is_ally else [])]
