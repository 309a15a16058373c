"""What an env holds and whether it is whole: its distributions (read from ``*.dist-info``,
no process), the files their ``RECORD`` lists, and the health check built on them."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Optional

from ...envs import EnvInfo, EnvSpec, Health, Problem
from ...process import clean_environ
from .integrity import dist_infos as _dist_infos
from .integrity import record_mismatches, startup_hook_paths, startup_hook_problem


def installed_packages(env_dir: Path) -> dict[str, str]:
    """Name -> version of the distributions in the env, read from ``*.dist-info`` (no process)."""
    packages = {}
    for path in _dist_infos(env_dir):
        stem = os.path.basename(path)[: -len(".dist-info")]
        name, _, version = stem.partition("-")
        packages[name.lower().replace("_", "-")] = version
    return dict(sorted(packages.items()))


def dependency_packages(env: EnvInfo, *, for_bundle: bool = False) -> dict[str, str]:
    """The packages an install reports: without the pip the env was seeded with, unless its
    backend lists it (:attr:`.backend.Backend.lists_seeded_pip`).

    A bundle leaves it out on both backends (pip is seeded again from a local wheel on
    install). An env whose data names no backend (built before it was recorded) leaves it out.
    """
    seeded: Mapping[str, str] = env.data.get("seeded") or {"pip": "*"}
    packages = installed_packages(env.path)
    from .installers import BACKENDS  # builds and deep checks only

    backend = BACKENDS.get(env.data.get("backend", ""))
    if backend is not None and backend.lists_seeded_pip and not for_bundle:
        return packages
    return {n: v for n, v in packages.items() if seeded.get(n) not in (v, "*")}


def verify_records(env_dir: Path, *, hashes: bool = True) -> list[str]:
    """Files that a distribution's ``RECORD`` lists with a hash but that are gone, resized
    or (with ``hashes``) of another content: one line each (see
    :func:`.integrity.record_mismatches`)."""
    return [str(m) for m in record_mismatches(env_dir, hashes=hashes)]


def pyvenv_cfg_problem(env_dir: Path) -> Optional[str]:
    """What is wrong with ``env_dir/pyvenv.cfg``, or ``None``.

    Python reads it at every start: without ``home`` it may not find its standard library, and
    without ``include-system-site-packages = false`` the base interpreter's packages leak into
    the env (the default when the key is missing). The deep check reads it; the cheap check on
    every load only ``stat``s it.
    """
    try:
        with open(env_dir / "pyvenv.cfg", encoding="utf-8", errors="replace") as fh:
            lines = fh.read().splitlines()
    except OSError as exc:
        return f"pyvenv.cfg is unreadable: {exc.strerror or exc}"
    keys = {}
    for line in lines:
        key, sep, value = line.partition("=")
        if sep:
            keys[key.strip().lower()] = value.strip().lower()
    if not keys.get("home"):
        return "pyvenv.cfg is damaged: it names no home interpreter"
    if keys.get("include-system-site-packages") != "false":
        return "pyvenv.cfg is damaged: the base interpreter's packages would leak into the env"
    return None


def quick_check_paths(spec: EnvSpec, env: EnvInfo) -> list[str]:
    """Every path whose identity decides what :func:`check_env` answers without ``deep``:
    the env's python (``stat`` follows its symlink to the base interpreter), ``pyvenv.cfg``,
    and the recorded startup hooks with their site-packages."""
    paths = [env.commands.get("python", ""), f"{spec.env_dir}{os.sep}pyvenv.cfg"]
    hooks = env.data.get("startup_hooks")
    if hooks:
        paths += startup_hook_paths(str(spec.env_dir), hooks)
    return [p for p in paths if p]


def check_env(spec: EnvSpec, env: EnvInfo, deep: bool) -> Health:
    """The env's health: a few ``stat``s (warm), or also its interpreter, its dependency
    metadata, its installed files and its pip (``deep``)."""
    py = env.commands.get("python", "")
    # exists() follows the venv's symlink to the base interpreter, so this also notices a
    # deleted base Python without starting a process.
    if not py or not os.path.exists(py):
        return Health((Problem(f"env python {py or '?'} is missing or its base was removed"),))
    if not os.path.isfile(f"{spec.env_dir}{os.sep}pyvenv.cfg"):
        return Health((Problem("pyvenv.cfg is missing"),))
    hooks = env.data.get("startup_hooks")
    if hooks:
        # A .pth (or sitecustomize) added to a shared env would run in every plugin's
        # processes: checked on every load, root included.
        problem = startup_hook_problem(str(spec.env_dir), hooks, full=deep)
        if problem is not None:
            return Health((Problem(problem),))
    if not deep:
        return Health()
    cfg = pyvenv_cfg_problem(spec.env_dir)
    if cfg is not None:
        return Health((Problem(cfg),))
    # The installers' code only now: the quick check above runs on every load.
    from ...checks import run_checks
    from .installers import fastest_available
    from .pip_seed import check_pip_launcher

    environ = clean_environ(path_prefix=env.bin_dirs, extra=dict(env.env_vars))
    check = fastest_available().check_command(spec, py, environ)
    from concurrent.futures import ThreadPoolExecutor

    # The dependency check runs while this thread verifies the installed files.
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="ally-check") as pool:
        checks = [("env python", [py, "-c", "import encodings, site"], environ), check]
        pending = pool.submit(run_checks, checks, cwd=spec.env_dir)
        missing = verify_records(spec.env_dir)
        metadata = pending.result()
    problems: tuple[Problem, ...] = (
        (Problem("installed files: " + " | ".join(missing[:5])),) if missing else ()
    )
    pip = env.commands.get("pip")
    if pip and not os.path.exists(pip):  # (envs built before every env had pip have no entry)
        problems += (Problem(f"{pip} is missing (every env has its own pip)"),)
    launcher = check_pip_launcher(env)
    if launcher is not None:
        problems += (launcher,)
    return Health(problems + metadata.problems)
