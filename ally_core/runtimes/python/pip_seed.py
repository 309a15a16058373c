"""pip inside every env: the pip wheel for an interpreter (virtualenv's embedded one, else
its own ``ensurepip``'s), and the ``bin/pip`` launcher a uv env gets instead of installing it.

Never from an index: every env's pip comes from a wheel already on this machine.
"""

from __future__ import annotations

import functools
import importlib.util
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any, Optional

from ...envs import EnvInfo, EnvSpec, Interpreter, Problem
from ...errors import InstallFailed
from ...process import clean_environ
from .layout import BIN


@functools.lru_cache(maxsize=32)
def embedded_pip(version: str) -> Optional[Path]:
    """The newest pip wheel embedded in virtualenv that supports Python ``version``.

    Read from the wheels' metadata (``Requires-Python``) instead of importing virtualenv
    (~0.1 s), which the uv backend does not otherwise need.
    """
    import zipfile

    from packaging.specifiers import InvalidSpecifier, SpecifierSet
    from packaging.version import InvalidVersion, Version

    spec = importlib.util.find_spec("virtualenv")
    if spec is None or not spec.submodule_search_locations:
        return None
    best: Optional[tuple[Version, Path]] = None
    for root in spec.submodule_search_locations:
        for wheel in Path(root, "seed", "wheels", "embed").glob("pip-*.whl"):
            try:
                wheel_version = Version(wheel.name.split("-")[1])
                with zipfile.ZipFile(wheel) as zf:
                    meta = next(n for n in zf.namelist() if n.endswith(".dist-info/METADATA"))
                    text = zf.read(meta).decode("utf-8", "replace")
            except (OSError, StopIteration, InvalidVersion, zipfile.BadZipFile):
                continue
            found = re.search(r"^Requires-Python:\s*(.+)$", text, re.MULTILINE)
            try:
                fits = found is None or SpecifierSet(found.group(1).strip()).contains(version)
            except InvalidSpecifier:
                fits = False
            if fits and (best is None or wheel_version > best[0]):
                best = (wheel_version, wheel)
    return best[1] if best else None


#: Asks an interpreter where its ensurepip keeps the pip wheel (Python 3.6+, also Debian's
#: patched ensurepip that reads /usr/share/python-wheels).
_ENSUREPIP_QUERY = (
    "import glob, os, ensurepip\n"
    "dirs = [os.path.join(os.path.dirname(ensurepip.__file__), '_bundled'),\n"
    "        getattr(ensurepip, '_WHEEL_PKG_DIR', None) or '']\n"
    "for d in dirs:\n"
    "    for p in sorted(glob.glob(os.path.join(d, 'pip-*.whl'))) if d else ():\n"
    "        print(p)\n"
)


def ensurepip_wheel(env_python: Path) -> Optional[Path]:
    """The pip wheel the interpreter's own ``ensurepip`` would install, if it has one."""
    try:
        out = subprocess.run(
            [str(env_python), "-I", "-c", _ENSUREPIP_QUERY],
            capture_output=True,
            text=True,
            timeout=60,
            env=clean_environ(),
            check=True,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    from packaging.version import InvalidVersion, Version

    def version(path: str) -> Version:
        try:
            return Version(os.path.basename(path).split("-")[1])
        except (IndexError, InvalidVersion):
            return Version("0")

    wheels = [line for line in out.splitlines() if line.endswith(".whl")]
    return Path(max(wheels, key=version)) if wheels else None


def pip_wheel(spec: EnvSpec, interpreter: Interpreter, env_python: Path) -> Path:
    """The pip wheel for ``interpreter``: virtualenv's, else its own ``ensurepip``'s (raises
    one line if it has neither)."""
    wheel = embedded_pip(interpreter.version) or ensurepip_wheel(env_python)
    if wheel is None:
        raise InstallFailed(
            f"{spec.plugin_name}: no pip for Python {interpreter.version} at "
            f"{interpreter.path}: ally's virtualenv has no pip wheel for it and it has no "
            "ensurepip; use another Python (ALLY_PYTHON or runtime_version)"
        )
    return wheel


#: Where a uv env keeps the pip wheel its ``bin/pip`` launcher runs.
PIP_WHEEL_DIR = "ally-pip"

_LAUNCHER = """#!/bin/sh
# This env's pip, written by ally: pip's own code, run from the wheel beside this env by the
# env's python, so it lists and changes this env (and reads pip's configuration as pip does).
exec {python} {wheel}/pip "$@"
"""


def write_pip_launcher(spec: EnvSpec, interpreter: Interpreter, env_python: Path) -> dict[str, Any]:
    """Give a uv env ``bin/pip``: a launcher running pip from a wheel kept in the env.

    Measured against installing pip into every env (uv, from the same local wheel): the
    launcher adds ~2 ms and the wheel's size (~2 MB, a copy) to a build,
    where installing pip adds 0.07-0.3 s (cold cache 0.12-0.3 s) and ~1000 files; pip runs
    ~0.3 s slower from a wheel, which only its rare direct uses pay. It depends on nothing
    but the env's own python and the wheel inside the env: upgrading ally, uv or virtualenv,
    or deleting ally's cache, does not break it. The deep check verifies the wheel's hash.
    """
    import hashlib
    import shlex

    source = pip_wheel(spec, interpreter, env_python)
    target_dir = spec.env_dir / PIP_WHEEL_DIR
    target_dir.mkdir()
    target = target_dir / source.name
    try:
        # A copy, never a hardlink: an env shares no writable inode with a cache or with
        # another env, so an edit of one env's wheel changes that env alone.
        shutil.copyfile(source, target)
        digest = hashlib.sha256(target.read_bytes()).hexdigest()
        text = _LAUNCHER.format(python=shlex.quote(str(env_python)), wheel=shlex.quote(str(target)))
        short = ".".join(interpreter.version.split(".")[:2])
        for name in ("pip", "pip3", f"pip{short}"):
            script = spec.env_dir / BIN / name
            script.write_text(text, "utf-8")
            script.chmod(0o755)
    except OSError as exc:
        raise InstallFailed(f"{spec.plugin_name}: writing the env's pip failed: {exc}") from exc
    return {"pip_wheel": str(target), "pip_wheel_sha256": digest}


def check_pip_launcher(env: EnvInfo) -> Optional[Problem]:
    """What is wrong with a uv env's pip launcher (its wheel gone or changed, or ``bin/pip``
    no longer running it), or ``None``; ``None`` too for an env without one."""
    import hashlib

    wheel = env.data.get("pip_wheel")
    if not wheel:
        return None
    try:
        digest = hashlib.sha256(Path(wheel).read_bytes()).hexdigest()
    except OSError:
        return Problem(f"the env's pip is broken: {wheel} is missing")
    if digest != env.data.get("pip_wheel_sha256"):
        return Problem(f"the env's pip is broken: {wheel} was modified")
    pip = env.commands.get("pip", "")
    try:
        launcher = Path(pip).read_text("utf-8", errors="replace")
    except OSError:
        return None  # a missing bin/pip is reported by the caller
    if wheel not in launcher:
        return Problem(f"the env's pip is broken: {pip} no longer runs {wheel}")
    return None
