"""Building a Python env: ``create_env``, ``install_deps`` (with the cache check that heals a
modified cache entry) and ``bundle_artifacts``.

Imported by the hooks in :mod:`.hooks` when a build needs it: ally imports every runtime when
it starts, and loading plugins whose envs are ready never needs the installers' code.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Optional

import attrs

from ...config import IndexOptions, strip_credentials
from ...envs import EnvInfo, EnvSpec, InstallResult, Interpreter
from ...errors import InstallFailed
from ...process import clean_environ
from .backend import Backend
from .checks import dependency_packages, installed_packages
from .depfile import includes_of, refuse_outside, requirements_file
from .index import effective_index
from .installers import backend_for, backend_of, seed_pip
from .integrity import make_read_only, record_mismatches, startup_hooks
from .layout import BIN, LOCK_NAME, env_python

__all__ = ["bundle_artifacts", "create_env", "install_deps"]


def create_env(spec: EnvSpec, interpreter: Interpreter) -> EnvInfo:
    backend = backend_for(spec)
    spec.progress("create", "Creating virtual environment")
    has_pip = backend.create_venv(spec, interpreter)
    py = env_python(spec.env_dir)
    pip_data: dict[str, Any] = {}
    if not has_pip:
        launcher = backend.pip_launcher(spec, interpreter, py)
        if launcher is None:
            seed_pip(spec, interpreter, py)
        else:
            pip_data = launcher
    short = ".".join(interpreter.version.split(".")[:2])
    pip = str(spec.env_dir / BIN / ("pip.exe" if os.name == "nt" else "pip"))
    return EnvInfo(
        path=spec.env_dir,
        interpreter=interpreter,
        bin_dirs=(str(spec.env_dir / BIN),),
        commands={
            "python": str(py),
            "python3": str(py),
            f"python{short}": str(py),
            # Every env has its own pip (the seed's ``<env>/bin/pip list`` check, Code
            # Ally's ``{pip}``): these names never reach a pip outside the env.
            "pip": pip,
            "pip3": pip,
            f"pip{short}": pip,
        },
        env_vars={"VIRTUAL_ENV": str(spec.env_dir)},
        # What the env holds before its dependencies: not reported as installed packages.
        data={"backend": backend.name, "seeded": installed_packages(spec.env_dir), **pip_data},
    )


def install_deps(spec: EnvSpec, env: EnvInfo) -> InstallResult:
    result = _install(spec, env)
    # Modes first, then the record of the startup hooks (a chmod changes a file's ctime).
    make_read_only(spec.env_dir)
    return attrs.evolve(result, data={"startup_hooks": startup_hooks(spec.env_dir)})


def _install(spec: EnvSpec, env: EnvInfo) -> InstallResult:
    environ = clean_environ(path_prefix=env.bin_dirs, extra=dict(env.env_vars))
    if spec.install_command:
        # Code Ally's placeholder: ``{pip}`` is this env's own pip (every env has one).
        pip = env.commands.get("pip") or str(Path(env.bin_dirs[0], "pip"))
        argv = [word.replace("{pip}", pip) for word in spec.install_command]
        argv[0] = env.commands.get(argv[0]) or _in_env(env, argv[0]) or argv[0]
        shown = strip_credentials(" ".join(spec.install_command))
        spec.progress("install", f"Running {shown}")
        spec.run(argv, env=environ, what="install_command")
        return InstallResult(packages=dependency_packages(env), command=tuple(argv))
    if spec.dependency_file is None:
        return InstallResult()
    index = effective_index(spec.options.index)
    offline = spec.options.offline
    artifacts = spec.options.artifacts_dir
    if artifacts is not None and (artifacts / LOCK_NAME).is_file():
        # From an offline bundle: exactly the locked wheels, hashes checked, no index at all.
        requirements = artifacts / LOCK_NAME
        index = IndexOptions(find_links=(str(artifacts),), no_index=True)
        offline = True
        spec.progress("install", f"Installing packages from the bundle ({LOCK_NAME})")
    else:
        refuse_outside(spec, includes_of(spec))
        requirements = requirements_file(spec)
        spec.progress("install", f"Installing packages from {spec.dependency_file.name}")
    backend = backend_of(env)
    argv, environ = backend.install_command(
        spec, env, requirements, index, offline=offline, environ=environ
    )
    what = f"installing {requirements.name}"
    if offline and artifacts is None:
        what += " offline (no index: only the cache and find-links)"
    spec.run(argv, env=environ, what=what)
    _heal_from_cache(spec, backend, argv, environ, what)
    return InstallResult(packages=dependency_packages(env), command=tuple(argv))


def _heal_from_cache(
    spec: EnvSpec, backend: Backend, argv: list[str], environ: dict[str, str], what: str
) -> None:
    """A rebuild never reuses a modified cache entry: after an install from a cache whose
    entries the installer links or copies as they are (uv), every installed file is checked
    against its ``RECORD``. The packages that do not match are purged from the cache and
    installed once more, from the index or find-links; if they still do not match, the build
    fails naming the package and the file."""
    if backend.purge_command((), environ) is None:
        return  # pip: fresh copies from wheels, and a RECORD written from what it wrote
    bad = record_mismatches(spec.env_dir)
    if not bad:
        return
    names = sorted({m.dist for m in bad if m.dist and not m.dist.startswith("-")})
    if not names:  # no name uv could be given (an odd .dist-info): nothing to purge
        raise InstallFailed(f"{spec.plugin_name}: installed files do not match: {bad[0]}")
    spec.progress(
        "install",
        f"Installed files of {', '.join(names)} do not match their RECORD ({bad[0]}): "
        "removing them from the cache and installing them again",
    )
    purge = backend.purge_command(names, environ)
    assert purge is not None
    spec.run(purge[0], env=purge[1], what=f"removing {', '.join(names)} from the cache")
    again = [*argv]
    for name in names:
        again += ["--reinstall-package", name]
    spec.run(again, env=environ, what=what)
    still = record_mismatches(spec.env_dir, dists=names)
    if still:
        raise InstallFailed(
            f"{spec.plugin_name}: {still[0].dist}: {still[0].path} does not match the hash in "
            f"its RECORD, even after removing {still[0].dist} from the cache and installing it "
            "again (the wheel on the index or in find-links is damaged)"
        )


def _in_env(env: EnvInfo, name: str) -> Optional[str]:
    if os.sep in name:
        return None
    for directory in env.bin_dirs:
        path = os.path.join(directory, name)
        if os.path.isfile(path):
            return path
    return None


# ---------------------------------------------------------------------------------------------
# bundles


def bundle_artifacts(spec: EnvSpec, env: EnvInfo, dest: Path) -> Mapping[str, Any]:
    import hashlib

    packages = dependency_packages(env, for_bundle=True)
    lines = [f"{name}=={version}" for name, version in packages.items()]
    if lines:
        pins = dest / "pins.txt"
        pins.write_text("\n".join(lines) + "\n", "utf-8")
        spec.progress("bundle", f"Collecting {len(lines)} wheel(s)")
        argv, environ = backend_of(env).bundle_command(spec, env, dest, pins)
        spec.run(argv, env=environ, what="collecting wheels")
        pins.unlink()
    locked = []
    for wheel in sorted(dest.glob("*.whl")):
        name, version = wheel.name.split("-")[:2]
        digest = hashlib.sha256(wheel.read_bytes()).hexdigest()
        locked.append(
            {
                "name": name.lower().replace("_", "-"),
                "version": version,
                "file": wheel.name,
                "sha256": digest,
            }
        )
    (dest / LOCK_NAME).write_text(
        "".join(f"{p['name']}=={p['version']} --hash=sha256:{p['sha256']}\n" for p in locked),
        "utf-8",
    )
    return {"format": "python-wheels", "python": env.interpreter.version, "packages": locked}
