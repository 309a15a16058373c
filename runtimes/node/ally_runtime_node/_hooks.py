"""The hook implementations of the ``node`` runtime.

Env layout (``spec.env_dir``, in ally's env store; the plugin's directory is never written)::

    package.json                the plugin's, without its own lifecycle scripts
    package-lock.json           the plugin's lock (or npm-shrinkwrap.json), else npm's new one
    .npmrc                      the plugin's, when it ships one
    node_modules/               what npm installed; NODE_PATH, and .bin first on PATH
    .ally/register.mjs          preloaded with NODE_OPTIONS=--import: registers the ESM hook
    .ally/resolve-hooks.mjs     lets ``import "pkg"`` fall back to the env's node_modules
    .ally/bin/node              symlink to the node the env was built with (for ``#!`` lines)
    .ally/bin/npm, npx          that node running its own npm (npx looks in the env's bins)
"""

from __future__ import annotations

import base64
import functools
import hashlib
import json
import os
import re
import shlex
import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Optional

from ally_core import (
    EnvInfo,
    EnvOptions,
    EnvSpec,
    Health,
    InstallFailed,
    InstallResult,
    Interpreter,
    InterpreterNotFound,
    ManifestError,
    Problem,
    hookimpl,
    run_installer,
)
from ally_core.config import strip_credentials

from .__about__ import __version__
from ._interpreters import (
    NODE_ENV_VAR,
    NodeInfo,
    NpmInfo,
    candidate_paths,
    find_npm,
    host_node_environ,
    node_on_path,
    query_node,
)
from ._semver import parse_version, satisfies, validate_range

__all__ = [
    "LOCK_FILES",
    "LOCK_NAME",
    "NAMES",
    "bundle_artifacts",
    "create_env",
    "env_identity",
    "health_check",
    "install_deps",
    "resolve_interpreter",
    "runtime_names",
]

NAMES = ("node", "nodejs")
#: Lock files honoured beside the dependency file, in npm's order of precedence.
LOCK_FILES = ("npm-shrinkwrap.json", "package-lock.json")
#: What :func:`bundle_artifacts` writes beside the tarballs: the packages with their hashes.
LOCK_NAME = "npm-bundle.json"
#: The env's own lock file, copied into a bundle.
BUNDLE_PACKAGE_LOCK = "package-lock.json"
#: ``module.register`` (needed for the ESM resolve hook) exists from Node.js 20.6 and 18.19.
ESM_HOOKS_RANGE = ">=20.6.0 || >=18.19.0 <19.0.0-0"
_ESM_DIR = Path(__file__).parent / "esm"
_ESM_FILES = ("register.mjs", "resolve-hooks.mjs")
_DEP_FIELDS = ("dependencies", "devDependencies", "optionalDependencies")
#: Boilerplate npm prints with every error: dropped from the tail shown to the user.
_NPM_NOISE = re.compile(
    r"^npm (?:error|ERR!)(?: \d{3})?\s*$|A complete log of this run|Note that you can also "
    r"install from a|tarball, folder, http url, or git url"
)


def _serves(spec: EnvSpec) -> bool:
    return spec.runtime in NAMES


@hookimpl
def runtime_names() -> Sequence[str]:
    return list(NAMES)


# ---------------------------------------------------------------------------------------------
# manifest options and identity (warm path: no process, cached file reads)


def _flag(spec: EnvSpec, key: str, default: bool) -> bool:
    value = spec.dependency_options.get(key, default)
    if not isinstance(value, bool):
        raise ManifestError(
            spec.plugin_name, "plugin.json", [f"$.dependencies.{key}: expected a boolean"]
        )
    return value


def include_dev(spec: EnvSpec) -> bool:
    """``"dependencies": {"dev": false}`` leaves devDependencies out (default: installed)."""
    return _flag(spec, "dev", True)


def run_scripts(spec: EnvSpec) -> bool:
    """``"dependencies": {"scripts": false}`` installs with ``--ignore-scripts``."""
    return _flag(spec, "scripts", True)


def _file_signature(path: Path) -> Optional[tuple[int, ...]]:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_size, st.st_mtime_ns, st.st_ino, st.st_ctime_ns)


@functools.lru_cache(maxsize=1024)
def _sha256_cached(path: str, signature: tuple[int, ...]) -> str:
    with open(path, "rb") as fh:
        return hashlib.sha256(fh.read()).hexdigest()


def _file_hash(path: Path) -> Optional[str]:
    signature = _file_signature(path)
    if signature is None:
        return None
    try:
        return _sha256_cached(str(path), signature)
    except OSError:
        return None


@functools.lru_cache(maxsize=1024)
def _read_json_cached(path: str, signature: tuple[int, ...]) -> Any:
    with open(path, encoding="utf-8") as fh:
        return json.load(fh)


def read_package_json(path: Path) -> dict[str, Any]:
    """The parsed ``package.json`` (cached while the file is unchanged); raises InstallFailed."""
    signature = _file_signature(path)
    try:
        if signature is None:
            raise OSError(f"cannot read {path}")
        data = _read_json_cached(str(path), signature)
    except (OSError, ValueError) as exc:
        raise InstallFailed(f"{path.name}: not readable JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise InstallFailed(f"{path.name}: expected a JSON object")
    return data


def _is_local_spec(value: Any) -> bool:
    return isinstance(value, str) and value.startswith(("file:", "link:", "./", "../", "/", "~/"))


def _local_specs(data: Mapping[str, Any]) -> dict[tuple[str, str], str]:
    """``(field, name) -> spec`` of the dependencies that point at files of the plugin."""
    out = {}
    for field in _DEP_FIELDS:
        deps = data.get(field)
        if isinstance(deps, dict):
            out.update({(field, k): v for k, v in deps.items() if _is_local_spec(v)})
    return out


def _lock_files(spec: EnvSpec) -> list[Path]:
    assert spec.dependency_file is not None
    folder = spec.dependency_file.parent
    return [folder / name for name in LOCK_FILES if (folder / name).is_file()]


def _registry_identity() -> dict[str, str]:
    """npm settings from the environment that change what gets installed (credentials dropped)."""
    out = {}
    for key, value in os.environ.items():
        low = key.lower()
        if low.startswith("npm_config_") and (
            low.endswith("registry") or low in {"npm_config_userconfig", "npm_config_globalconfig"}
        ):
            out[low] = str(strip_credentials(value))
    return dict(sorted(out.items()))


@hookimpl
def env_context(runtime: str, options: EnvOptions) -> Optional[Mapping[str, Any]]:
    if runtime not in NAMES:
        return None
    # What env_identity reads from outside the plugin: the node it would find, npm's registry
    # settings from the environment, and this package's version.
    return {"runtime": __version__, "node": node_on_path(), "registry": _registry_identity()}


@hookimpl
def identity_files(spec: EnvSpec) -> Optional[Sequence[Path]]:
    if not _serves(spec):
        return None
    if spec.dependency_file is None:
        return []
    folder = spec.dependency_file.parent
    return [folder / name for name in (*LOCK_FILES, ".npmrc")]


@hookimpl
def env_identity(spec: EnvSpec) -> Optional[Mapping[str, Any]]:
    if not _serves(spec):
        return None
    identity: dict[str, Any] = {
        "node": node_on_path(),
        "dev": include_dev(spec),
        "scripts": run_scripts(spec),
        "registry": "bundle" if spec.options.artifacts_dir else _registry_identity(),
    }
    if spec.dependency_file is not None:
        folder = spec.dependency_file.parent
        identity["locks"] = {
            name: digest for name in LOCK_FILES if (digest := _file_hash(folder / name))
        }
        identity["npmrc"] = _file_hash(folder / ".npmrc")
        try:
            local = bool(_local_specs(read_package_json(spec.dependency_file)))
        except InstallFailed:
            local = False  # the build reports the broken file
        if local:
            # The install reads other files of the plugin: this env belongs to it alone.
            identity["plugin_dir"] = str(spec.plugin_dir)
    if spec.install_command:
        identity["plugin_dir"] = str(spec.plugin_dir)
    return identity


# ---------------------------------------------------------------------------------------------
# interpreters


def _constraints(spec: EnvSpec) -> list[tuple[str, str]]:
    """``(range, where it comes from)`` the node must satisfy."""
    out = []
    if spec.runtime_version:
        out.append((spec.runtime_version, "runtime_version in plugin.json"))
    if spec.dependency_file is not None and spec.dependency_file.is_file():
        try:
            engines = read_package_json(spec.dependency_file).get("engines")
        except InstallFailed as exc:
            raise InstallFailed(f"{spec.plugin_name}: {exc}") from exc
        wanted = engines.get("node") if isinstance(engines, dict) else None
        if isinstance(wanted, str) and wanted.strip():
            out.append((wanted, f"engines.node in {spec.dependency_file.name}"))
    for range_, where in out:
        try:
            validate_range(range_)
        except ValueError:
            raise InterpreterNotFound(
                f"{spec.plugin_name}: {where}: {range_!r} is not a valid semver range "
                "(e.g. '>=18', '^20.11', '18 || 20')"
            ) from None
    return out


def _fits(interpreter: Interpreter, constraints: Sequence[tuple[str, str]]) -> Optional[str]:
    """The first constraint ``interpreter`` fails, worded for the user, or ``None``."""
    for range_, where in constraints:
        if not satisfies(interpreter.version, range_):
            return f"{range_!r} ({where})"
    return None


@hookimpl
def resolve_interpreter(spec: EnvSpec) -> Optional[Interpreter]:
    if not _serves(spec):
        return None
    constraints = _constraints(spec)
    first = node_on_path()
    named = bool(os.environ.get(NODE_ENV_VAR, "").strip())
    if first is None:
        raise InterpreterNotFound(
            f"{spec.plugin_name}: Node.js not found (no 'node' on PATH); install Node.js or "
            f"point {NODE_ENV_VAR} at a node binary"
        )
    info = query_node(first)
    if info is None:
        raise InterpreterNotFound(
            f"{spec.plugin_name}: Node.js at {first} is not runnable"
            + (f" ({NODE_ENV_VAR})" if named else "")
        )
    failed = _fits(info.interpreter, constraints)
    chosen: Optional[NodeInfo] = info if failed is None else None
    seen = [info]
    if chosen is None and not named:
        for path in candidate_paths():
            other = query_node(path)
            if other is None or other.interpreter.realpath in {
                s.interpreter.realpath for s in seen
            }:
                continue
            seen.append(other)
            if _fits(other.interpreter, constraints) is None and (
                chosen is None
                or parse_version(other.interpreter.version)
                > parse_version(chosen.interpreter.version)
            ):
                chosen = other
    if chosen is None:
        found = ", ".join(f"{s.interpreter.version} at {s.interpreter.path}" for s in seen)
        raise InterpreterNotFound(
            f"{spec.plugin_name}: Node.js {info.interpreter.version} does not satisfy {failed}"
            f" (found: {found}); install a Node.js that does or point {NODE_ENV_VAR} at one"
        )
    if chosen.npm is None:
        raise InterpreterNotFound(
            f"{spec.plugin_name}: npm not found for Node.js {chosen.interpreter.version} at "
            f"{chosen.interpreter.path}; install npm"
        )
    return chosen.interpreter


# ---------------------------------------------------------------------------------------------
# building


def _ally_dir(env_dir: Path) -> Path:
    return env_dir / ".ally"


def _npm_of(interpreter: Interpreter) -> NpmInfo:
    npm = find_npm(interpreter.path, interpreter.realpath)
    if npm is None:
        raise InterpreterNotFound(
            f"npm not found for Node.js {interpreter.version} at {interpreter.path}; install npm"
        )
    return npm


def _write_script(path: Path, argv: Sequence[str]) -> None:
    """A POSIX sh script that execs ``argv`` followed by its own arguments."""
    line = " ".join(shlex.quote(a) for a in argv)
    path.write_text(
        f'#!/bin/sh\n# written by ally-runtime-node\nexec {line} "$@"\n', encoding="utf-8"
    )
    path.chmod(0o755)


def _esm_hooks_supported(version: str) -> bool:
    return satisfies(version, ESM_HOOKS_RANGE)


@hookimpl
def create_env(spec: EnvSpec, interpreter: Interpreter) -> Optional[EnvInfo]:
    if not _serves(spec):
        return None
    spec.progress("create", "Creating the node env")
    npm = _npm_of(interpreter)
    env_dir = spec.env_dir
    ally_dir = _ally_dir(env_dir)
    bin_dir = ally_dir / "bin"
    bin_dir.mkdir(parents=True)
    for name in _ESM_FILES:
        shutil.copyfile(_ESM_DIR / name, ally_dir / name)
    node = interpreter.realpath or interpreter.path
    os.symlink(node, bin_dir / "node")
    _write_script(bin_dir / "npm", [node, npm.npm_cli])
    commands = {"node": interpreter.path, "nodejs": interpreter.path, "npm": str(bin_dir / "npm")}
    if npm.npx_cli:
        # npx only looks for bins in the project of its working directory (the plugin's),
        # never on PATH: --prefix makes it look in the env's node_modules/.bin.
        _write_script(bin_dir / "npx", [node, npm.npx_cli, "--prefix", str(env_dir)])
        commands["npx"] = str(bin_dir / "npx")
    env_vars = {"NODE_PATH": str(env_dir / "node_modules")}
    esm = _esm_hooks_supported(interpreter.version)
    if esm:
        # A file: URL needs no quoting inside NODE_OPTIONS, even with spaces in the path.
        env_vars["NODE_OPTIONS"] = f"--import={(ally_dir / 'register.mjs').as_uri()}"
    return EnvInfo(
        path=env_dir,
        interpreter=interpreter,
        bin_dirs=(str(env_dir / "node_modules" / ".bin"), str(bin_dir)),
        commands=commands,
        env_vars=env_vars,
        data={
            "npm_cli": npm.npm_cli,
            "npm_version": npm.version,
            "dev": include_dev(spec),
            "esm_hooks": esm,
        },
    )


def _cache_dir(spec: EnvSpec) -> Optional[Path]:
    return spec.options.cache_dir / "npm" if spec.options.cache_dir else None


_FORCED_NPM_VARS = {"npm_config_global": "false", "npm_config_location": "project"}


def npm_environ(spec: EnvSpec, env: EnvInfo) -> dict[str, str]:
    """The environment of npm processes: the env's node first on PATH, ally's cache."""
    extra = {
        "PATH": os.pathsep.join(
            [*env.bin_dirs[1:], *env.bin_dirs[:1], os.environ.get("PATH", os.defpath)]
        ),
        "npm_config_update_notifier": "false",
        "npm_config_fund": "false",
        "npm_config_audit": "false",
    }
    cache = _cache_dir(spec)
    if cache is not None:
        extra["npm_config_cache"] = str(cache)
    environ = {
        k: v
        for k, v in host_node_environ().items()
        # npm reads these case-insensitively: drop every spelling before setting ours.
        if k.lower() not in {*_FORCED_NPM_VARS, *(x.lower() for x in extra)}
    }
    # Every npm process works on the env as a local project, whatever the host says.
    environ.update(_FORCED_NPM_VARS)
    environ.update(extra)
    return environ


def _npm(env: EnvInfo) -> list[str]:
    return [env.interpreter.realpath or env.interpreter.path, str(env.data["npm_cli"])]


def _omit_args(dev: bool) -> list[str]:
    # Explicit either way: NODE_ENV=production or a user's npmrc would change npm's default.
    return ["--include=dev"] if dev else ["--omit=dev"]


def run_npm(
    spec: EnvSpec,
    env: EnvInfo,
    argv: Sequence[str],
    what: str,
    *,
    timeout: Optional[float] = None,
    quiet: bool = False,
) -> str:
    """Run npm in the env dir with its output streamed as progress; a tidy error on failure."""
    try:
        return run_installer(
            argv,
            cwd=env.path,
            env=npm_environ(spec, env),
            timeout=timeout or spec.options.install_timeout,
            on_line=None if quiet else (lambda line: spec.progress("output", line)),
            what=f"{spec.plugin_name}: {what}",
        )
    except InstallFailed as exc:
        tail = "\n".join(
            line for line in exc.stderr_tail.splitlines() if not _NPM_NOISE.search(line)
        )
        raise InstallFailed(exc.message, command=exc.command, stderr_tail=tail) from exc


def _env_package_json(spec: EnvSpec) -> tuple[dict[str, Any], bool]:
    """The package.json written into the env, and whether it names local directories.

    The plugin's own lifecycle scripts are dropped: the env is not the plugin's source tree,
    so ``prepare``/``postinstall`` of the plugin would run against files that are not there.
    ``file:`` dependencies are made absolute and must stay inside the plugin directory.
    """
    assert spec.dependency_file is not None
    try:
        data = dict(read_package_json(spec.dependency_file))
    except InstallFailed as exc:
        raise InstallFailed(f"{spec.plugin_name}: {exc}") from exc
    if "workspaces" in data:
        raise InstallFailed(
            f"{spec.plugin_name}: {spec.dependency_file.name}: npm workspaces are not supported "
            "in a plugin's package.json"
        )
    data.pop("scripts", None)
    has_dirs = False
    root = os.path.realpath(spec.dependency_file.parent)
    plugin_root = os.path.realpath(spec.plugin_dir)
    for (field, name), value in _local_specs(data).items():
        if value.startswith("link:"):
            raise InstallFailed(
                f"{spec.plugin_name}: {field}.{name}: 'link:' dependencies are not supported "
                "(use 'file:')"
            )
        rel = value[len("file:") :] if value.startswith("file:") else value
        target = os.path.realpath(os.path.join(root, os.path.expanduser(rel)))
        if os.path.commonpath([plugin_root, target]) != plugin_root:
            raise InstallFailed(
                f"{spec.plugin_name}: {field}.{name}: {value!r} is outside the plugin directory"
            )
        if not os.path.exists(target):
            raise InstallFailed(f"{spec.plugin_name}: {field}.{name}: {value!r} does not exist")
        has_dirs = has_dirs or os.path.isdir(target)
        data[field] = {**data[field], name: f"file:{target}"}
    return data, has_dirs


#: ``.npmrc`` settings a plugin may make for its env: where packages come from, credentials,
#: TLS, peer-dependency handling. Anything else (``prefix``, ``global``, ``cache``,
#: ``script-shell``, ``node-options``, …) could reach outside the env and is dropped.
_NPMRC_KEYS = re.compile(
    r"^(?:registry|@[^:]+:registry|//.*|strict-ssl|ca|cafile|always-auth|legacy-peer-deps|"
    r"strict-peer-deps|engine-strict|fetch-retries|fetch-timeout|proxy|https-proxy|noproxy)$"
)


def filter_npmrc(text: str) -> tuple[str, list[str]]:
    """The lines of a plugin's ``.npmrc`` that are kept, and the keys that are dropped."""
    kept, dropped = [], []
    for line in text.splitlines():
        stripped = line.strip()
        if not stripped or stripped.startswith((";", "#")):
            continue
        key = stripped.partition("=")[0].strip()
        if _NPMRC_KEYS.match(key):
            kept.append(stripped)
        else:
            dropped.append(key)
    return "".join(f"{line}\n" for line in kept), dropped


def _copy_inputs(spec: EnvSpec) -> tuple[Optional[Path], bool]:
    """Write package.json, the lock and .npmrc into the env; return the lock and dirs flag."""
    assert spec.dependency_file is not None
    data, has_dirs = _env_package_json(spec)
    env_dir = spec.env_dir
    (env_dir / "package.json").write_text(json.dumps(data, indent=2) + "\n", "utf-8")
    npmrc = spec.dependency_file.parent / ".npmrc"
    if npmrc.is_file():
        kept, dropped = filter_npmrc(npmrc.read_text("utf-8", "replace"))
        (env_dir / ".npmrc").write_text(kept, "utf-8")
        if dropped:
            spec.progress("install", f".npmrc: ignored {', '.join(dropped)}")
    locks = _lock_files(spec)
    if not locks or spec.options.upgrade:
        return None, has_dirs
    if _local_specs(data):
        # Its relative paths would not match the absolute ones above: npm resolves afresh.
        spec.progress("install", f"{locks[0].name} ignored: the plugin has file: dependencies")
        return None, has_dirs
    lock = env_dir / locks[0].name
    shutil.copyfile(locks[0], lock)
    return lock, has_dirs


@hookimpl
def install_deps(spec: EnvSpec, env: EnvInfo) -> Optional[InstallResult]:
    if not _serves(spec):
        return None
    if spec.dependency_file is None and not spec.install_command:
        # A plugin without dependencies: an empty env, whose node tools run on.
        (env.path / "node_modules").mkdir(exist_ok=True)
        return InstallResult()
    dev = include_dev(spec)
    # --global=false: neither an npm_config_global of the host nor an npmrc may send the
    # install anywhere but the env.
    common = [
        "--no-audit",
        "--no-fund",
        "--no-update-notifier",
        "--progress=false",
        "--global=false",
    ]
    if not run_scripts(spec):
        common.append("--ignore-scripts")
    artifacts = spec.options.artifacts_dir
    if spec.dependency_file is not None:
        lock, has_dirs = _copy_inputs(spec)
    else:
        lock, has_dirs = None, False
        # Without one npm would look for a project in the env's parent directories.
        (env.path / "package.json").write_text('{"private": true}\n', "utf-8")
    if spec.install_command:
        argv = list(spec.install_command)
        argv[0] = env.commands.get(argv[0], argv[0])
        spec.progress("install", f"Running {strip_credentials(' '.join(spec.install_command))}")
        run_npm(spec, env, argv, "install_command")
    elif artifacts is not None and (artifacts / LOCK_NAME).is_file():
        argv = _bundle_install_argv(spec, env, artifacts) + common + _omit_args(dev)
        spec.progress("install", "Installing npm packages from the bundle")
        run_npm(spec, env, argv, "npm ci (from the bundle)")
    else:
        verb = "ci" if lock is not None else "install"
        argv = [*_npm(env), verb, *common, *_omit_args(dev)]
        if verb == "install":
            argv.append("--package-lock=true")  # the env keeps a lock: bundles are made from it
        if has_dirs:
            argv.append("--install-links")  # copy file: directories, never link into the plugin
        argv.append("--offline" if spec.options.offline else "--prefer-offline")
        source = lock.name if lock is not None else "package.json"
        spec.progress("install", f"Installing npm packages from {source} (npm {verb})")
        run_npm(spec, env, argv, f"npm {verb}")
    # npm creates no node_modules for a package.json without dependencies; the health check
    # expects one.
    (env.path / "node_modules").mkdir(exist_ok=True)
    return InstallResult(packages=installed_packages(env.path), command=tuple(argv))


def _lock_entries(env_dir: Path) -> Mapping[str, Any]:
    """The ``packages`` of what npm installed (its hidden lock), else of the env's lock."""
    for path in (
        env_dir / "node_modules" / ".package-lock.json",
        *(env_dir / name for name in LOCK_FILES),
    ):
        try:
            data = json.loads(path.read_text("utf-8"))
        except (OSError, ValueError):
            continue
        packages = data.get("packages") if isinstance(data, dict) else None
        if isinstance(packages, dict):
            return packages
    return {}


def _package_name(key: str, entry: Mapping[str, Any]) -> str:
    name = entry.get("name")
    return name if isinstance(name, str) else key.rpartition("node_modules/")[2]


def installed_packages(env_dir: Path) -> dict[str, str]:
    """Name -> version of the installed packages (top-level ones win over nested copies)."""
    out: dict[str, str] = {}
    entries = _lock_entries(env_dir)
    for key in sorted(entries, key=lambda k: (k.count("node_modules/"), k)):
        entry = entries[key]
        if not key or not isinstance(entry, dict) or entry.get("link"):
            continue
        version = entry.get("version")
        if isinstance(version, str) and (env_dir / key).is_dir():
            out.setdefault(_package_name(key, entry), version)
    return dict(sorted(out.items()))


# ---------------------------------------------------------------------------------------------
# health


@hookimpl
def health_check(spec: EnvSpec, env: EnvInfo, deep: bool) -> Optional[Health]:
    if not _serves(spec):
        return None
    env_dir = env.path
    ally_dir = _ally_dir(env_dir)
    problems = []
    if not os.path.exists(env.interpreter.path):
        problems.append(Problem(f"node {env.interpreter.path} is gone"))
    elif not os.path.exists(ally_dir / "bin" / "node"):
        problems.append(Problem(f"{ally_dir / 'bin' / 'node'} is missing or dangling"))
    if not os.path.isdir(env_dir / "node_modules"):
        problems.append(Problem("node_modules is missing"))
    if env.data.get("esm_hooks") and not all(os.path.isfile(ally_dir / f) for f in _ESM_FILES):
        problems.append(Problem("the ESM resolve hook files in .ally/ are missing"))
    npm_cli = str(env.data.get("npm_cli", ""))
    if not os.path.isfile(npm_cli):
        problems.append(Problem(f"npm {npm_cli or '?'} is gone"))
    if problems or not deep:
        return Health(tuple(problems))
    checks: list[tuple[list[str], str, Mapping[str, str]]] = [
        (
            [*_npm(env), "ls", "--all", *_omit_args(bool(env.data.get("dev", True)))],
            "npm ls",
            {},
        ),
        # Starts node the way tools do: proves the preloaded ESM hook still loads.
        ([env.interpreter.path, "-e", "0"], "node", env.env_vars),
    ]
    for argv, what, extra in checks:
        try:
            run_installer(
                argv,
                cwd=env_dir,
                env={**npm_environ(spec, env), **extra},
                timeout=120,
                what=what,
            )
        except InstallFailed as exc:
            tail = " | ".join(
                line
                for line in exc.stderr_tail.strip().splitlines()[-3:]
                if line.strip() and not _NPM_NOISE.search(line)
            )
            problems.append(Problem(f"{what} failed" + (f": {tail}" if tail else "")))
    return Health(tuple(problems))


# ---------------------------------------------------------------------------------------------
# offline bundles


def _integrity(path: Path, algorithm: str) -> str:
    digest = hashlib.new(algorithm, path.read_bytes()).digest()
    return f"{algorithm}-{base64.b64encode(digest).decode()}"


def _env_lock(env_dir: Path) -> tuple[Path, dict[str, Any]]:
    for name in LOCK_FILES:
        path = env_dir / name
        if path.is_file():
            data = json.loads(path.read_text("utf-8"))
            if isinstance(data, dict) and isinstance(data.get("packages"), dict):
                return path, data
    raise InstallFailed(
        f"{env_dir}: no package-lock.json (lockfileVersion 2 or 3) to make a bundle from"
    )


def _pack_spec(key: str, entry: Mapping[str, Any]) -> str:
    """What ``npm pack`` fetches the installed tarball of a lock entry by."""
    resolved = entry.get("resolved")
    if isinstance(resolved, str) and "/-/" not in resolved:
        return resolved  # git, a tarball URL, a file: path
    # A registry package (npm may omit its URL: omit-lockfile-registry-resolved).
    return f"{_package_name(key, entry)}@{entry['version']}"


@hookimpl
def bundle_artifacts(spec: EnvSpec, env: EnvInfo, dest: Path) -> Optional[Mapping[str, Any]]:
    if not _serves(spec):
        return None
    lock_path, lock = _env_lock(env.path)
    wanted: dict[str, list[str]] = {}  # pack spec -> lock keys installed from it
    for key, entry in lock["packages"].items():
        if (
            not key
            or not isinstance(entry, dict)
            or entry.get("link")
            or entry.get("inBundle")
            or "version" not in entry
            or not (env.path / key).is_dir()
        ):
            continue
        wanted.setdefault(_pack_spec(key, entry), []).append(key)
    packed: list[dict[str, Any]] = []
    if wanted:
        spec.progress("bundle", f"Collecting {len(wanted)} npm package(s)")
        argv = [
            *_npm(env),
            "pack",
            *wanted,
            "--json",
            "--pack-destination",
            str(dest),
            "--ignore-scripts",
            "--offline" if spec.options.offline else "--prefer-offline",
        ]
        out = run_npm(spec, env, argv, "npm pack", quiet=True)
        try:
            packed = json.loads(out[out.index("[") :])
        except ValueError as exc:
            raise InstallFailed(f"{spec.plugin_name}: npm pack printed no JSON: {exc}") from exc
    packages = []
    for pack_spec, info in zip(wanted, packed):
        tarball = dest / info["filename"]
        keys = wanted[pack_spec]
        expected = lock["packages"][keys[0]].get("integrity")
        if isinstance(expected, str):
            algorithm = expected.split("-", 1)[0]
            if _integrity(tarball, algorithm) != expected.split()[0]:
                raise InstallFailed(
                    f"{spec.plugin_name}: {pack_spec}: the packed tarball does not match "
                    "the integrity in the lock"
                )
        packages.append(
            {
                "name": _package_name(keys[0], lock["packages"][keys[0]]),
                "version": lock["packages"][keys[0]]["version"],
                "file": tarball.name,
                "sha256": hashlib.sha256(tarball.read_bytes()).hexdigest(),
                "integrity": _integrity(tarball, "sha512"),
                "paths": keys,
            }
        )
    shutil.copyfile(lock_path, dest / BUNDLE_PACKAGE_LOCK)
    data = {
        "format": "npm-tarballs",
        "node": env.interpreter.version,
        "lockfile": BUNDLE_PACKAGE_LOCK,
        "packages": packages,
    }
    (dest / LOCK_NAME).write_text(json.dumps(data, indent=2) + "\n", "utf-8")
    return data


def _bundle_install_argv(spec: EnvSpec, env: EnvInfo, artifacts: Path) -> list[str]:
    """Point the bundled lock at the bundled tarballs (hashes checked): ``npm ci --offline``."""
    try:
        bundle = json.loads((artifacts / LOCK_NAME).read_text("utf-8"))
        lock = json.loads((artifacts / bundle["lockfile"]).read_text("utf-8"))
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise InstallFailed(
            f"{spec.plugin_name}: the bundle's npm lock is unreadable: {exc}"
        ) from exc
    for package in bundle.get("packages", []):
        tarball = artifacts / os.path.basename(package["file"])
        if (
            not tarball.is_file()
            or hashlib.sha256(tarball.read_bytes()).hexdigest() != package["sha256"]
        ):
            raise InstallFailed(
                f"{spec.plugin_name}: bundle file {package['file']} is missing or does not "
                "match its sha256"
            )
        for key in package["paths"]:
            entry = lock["packages"].get(key)
            if isinstance(entry, dict):
                entry["resolved"] = f"file:{tarball.resolve()}"
                entry["integrity"] = package["integrity"]
    for name in LOCK_FILES:
        (env.path / name).unlink(missing_ok=True)
    (env.path / "package-lock.json").write_text(json.dumps(lock, indent=2) + "\n", "utf-8")
    return [*_npm(env), "ci", "--offline"]
