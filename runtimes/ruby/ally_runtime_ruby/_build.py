"""The work of the ``ruby`` runtime's hooks: a Ruby plugin's gems installed by bundler into
its own env. :mod:`._hooks` imports this module when a hook for a ruby plugin runs, so that
ally, which imports every runtime at each start, loads none of it for a home without ruby
plugins.

Layout of an env (``spec.env_dir``)::

    Gemfile             evaluates Gemfile.plugin as if it were the plugin's Gemfile (see _gemfile)
    Gemfile.plugin      snapshot of the plugin's Gemfile
    Gemfile.lock        the plugin's lock when it has one, then whatever bundler resolved
    .bundle/            BUNDLE_APP_CONFIG: bundler's config and plugins stay in the env
    vendor/bundle/      BUNDLE_PATH: ruby/<abi>/{gems,specifications,cache,bin}
    bin/                ruby (symlink to the base Ruby), bundle, gem: first on a tool's PATH

Tools get ``RUBYOPT=-rbundler/setup`` and ``BUNDLE_GEMFILE`` etc., so a plain ``ruby main.rb``
can ``require`` the bundled gems, and ``BUNDLE_FROZEN=true`` so nothing rewrites the env later.
"""

from __future__ import annotations

import json
import os

# shutil (which imports bz2 and lzma) is imported by the functions that use it: ally imports
# every runtime at each start.
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Optional

from ally_core import (
    AllyError,
    EnvInfo,
    EnvSpec,
    Health,
    InstallFailed,
    InstallResult,
    Interpreter,
    ManifestError,
    Problem,
    run_checks,
)

from ._gemfile import (
    ENV_GEMFILE,
    ENV_LOCK,
    LockedGem,
    lock_path_for,
    read_lock,
    reads_plugin_files,
    ruby_string,
    write_env_gemfile,
)
from ._interpreters import RubyInfo, find_ruby, host_ruby_environ, query_ruby
from ._names import LAYOUT, LOCK_NAME, NAMES, RUBY_ENV_VAR

__all__ = [
    "bundle_artifacts",
    "create_env",
    "env_identity",
    "health_check",
    "identity_files",
    "install_deps",
    "resolve_interpreter",
    "watch_paths",
]

#: Set for tools (not for installers: bundler/setup would fail before the gems are there).
_TOOL_ONLY = {"RUBYOPT": "-rbundler/setup", "BUNDLE_FROZEN": "true"}


def _serves(spec: EnvSpec) -> bool:
    return spec.runtime in NAMES


# ---------------------------------------------------------------------------------------------
# identity (every load: no process)


def _without_groups(spec: EnvSpec) -> tuple[str, ...]:
    """``dependencies.without``: Gemfile groups not installed (e.g. ``["development"]``)."""
    value = spec.dependency_options.get("without", [])
    if not isinstance(value, list) or not all(
        isinstance(v, str) and v and ":" not in v for v in value
    ):
        raise ManifestError(
            spec.plugin_name,
            "plugin.json",
            ["$.dependencies.without: expected a list of Gemfile group names"],
        )
    return tuple(value)


def _inside(spec: EnvSpec, path: Path) -> bool:
    """Whether ``path`` (symlinks resolved) lies inside the plugin directory."""
    root = os.path.realpath(spec.plugin_dir)
    return os.path.commonpath([root, os.path.realpath(path)]) == root


def _plugin_lock(spec: EnvSpec) -> Optional[Path]:
    """The plugin's ``Gemfile.lock``, if it has one inside its directory."""
    assert spec.dependency_file is not None
    path = lock_path_for(spec.dependency_file)
    return path if os.path.isfile(path) and _inside(spec, path) else None


def _plugin_cache(spec: EnvSpec) -> Optional[Path]:
    """The plugin's own ``vendor/cache`` of ``.gem`` files (``bundle cache``), if it has one."""
    assert spec.dependency_file is not None
    path = spec.dependency_file.parent / "vendor" / "cache"
    return path if os.path.isdir(path) and _inside(spec, path) else None


def _file_sha256(path: Path) -> Optional[str]:
    import hashlib

    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()
    except OSError:
        return None


def identity_files(spec: EnvSpec) -> Optional[Sequence[Path]]:
    if not _serves(spec):
        return None
    if spec.dependency_file is None:
        return []
    return [lock_path_for(spec.dependency_file), spec.dependency_file.parent / "vendor" / "cache"]


def env_identity(spec: EnvSpec) -> Optional[Mapping[str, Any]]:
    if not _serves(spec):
        return None
    identity: dict[str, Any] = {
        "layout": LAYOUT,
        "ruby": os.environ.get(RUBY_ENV_VAR),
        "without": list(_without_groups(spec)),
    }
    gemfile = spec.dependency_file
    if gemfile is not None:
        # Not left out when upgrading: an updated env must stay in use on the next load.
        lock = _plugin_lock(spec)
        identity["lock_sha256"] = _file_sha256(lock) if lock else None
        if spec.install_command or reads_plugin_files(gemfile) or _plugin_cache(spec):
            # The install reads the plugin's own files: this env belongs to this plugin only.
            identity["plugin_dir"] = str(spec.plugin_dir)
    elif spec.install_command:
        identity["plugin_dir"] = str(spec.plugin_dir)
    return identity


# ---------------------------------------------------------------------------------------------
# interpreter


def resolve_interpreter(spec: EnvSpec) -> Optional[Interpreter]:
    if not _serves(spec):
        return None
    return find_ruby(spec).interpreter


def _ruby_info(spec: EnvSpec, interpreter: Interpreter) -> RubyInfo:
    info = query_ruby(interpreter.path)
    if info is None or not info.bundle_exe:
        raise InstallFailed(
            f"{spec.plugin_name}: Ruby {interpreter.path} stopped working or lost bundler"
        )
    return info


# ---------------------------------------------------------------------------------------------
# building


def _gem_dir(env_dir: Path, info: RubyInfo, gemfile: bool) -> Path:
    """Where gems are installed: bundler's ``<BUNDLE_PATH>/ruby/<abi>``, else a GEM_HOME."""
    return env_dir / "vendor" / "bundle" / "ruby" / info.abi if gemfile else env_dir / "gems"


def _write_script(path: Path, text: str) -> None:
    path.write_text(text, "utf-8")
    path.chmod(0o755)


def _write_bin(env_dir: Path, info: RubyInfo) -> Path:
    """``bin/ruby``, ``bin/bundle`` and ``bin/gem``, all bound to the env's base Ruby."""
    ruby = info.interpreter.path
    bin_dir = env_dir / "bin"
    bin_dir.mkdir()
    # Gem executables written with "#!/usr/bin/env ruby" find this one first on PATH.
    (bin_dir / "ruby").symlink_to(ruby)
    header = f"#!{ruby}\n# Written by ally-runtime-ruby: {{}} of the env's Ruby.\n"
    _write_script(
        bin_dir / "bundle", header.format("bundler") + f"load {ruby_string(info.bundle_exe)}\n"
    )
    _write_script(
        bin_dir / "gem",
        header.format("RubyGems")
        + 'require "rubygems/gem_runner"\n'
        + "begin\n  Gem::GemRunner.new.run ARGV.clone\n"
        + "rescue Gem::SystemExitException => e\n  exit e.exit_code\nend\n",
    )
    return bin_dir


def _bundle_lock_text(spec: EnvSpec) -> Optional[str]:
    """The lock the env starts from: the bundle's, else the plugin's (unless upgrading)."""
    artifacts = spec.options.artifacts_dir
    candidates: list[Optional[Path]] = [artifacts / ENV_LOCK] if artifacts is not None else []
    if not spec.options.upgrade:
        candidates.append(_plugin_lock(spec))
    for path in candidates:
        if path is not None and path.is_file():
            return path.read_text("utf-8")
    return None


def create_env(spec: EnvSpec, interpreter: Interpreter) -> Optional[EnvInfo]:
    if not _serves(spec):
        return None
    info = _ruby_info(spec, interpreter)
    env_dir = spec.env_dir
    spec.progress("create", f"Creating Ruby {interpreter.version} environment")
    env_dir.mkdir()
    bin_dir = _write_bin(env_dir, info)
    has_gemfile = spec.dependency_file is not None
    gem_dir = _gem_dir(env_dir, info, has_gemfile)
    gem_dir.mkdir(parents=True)
    env_vars: dict[str, str] = {}
    if spec.dependency_file is not None:
        write_env_gemfile(env_dir, spec.dependency_file, _bundle_lock_text(spec))
        (env_dir / ".bundle").mkdir()
        env_vars.update(
            BUNDLE_GEMFILE=str(env_dir / ENV_GEMFILE),
            BUNDLE_PATH=str(env_dir / "vendor" / "bundle"),
            BUNDLE_APP_CONFIG=str(env_dir / ".bundle"),
            BUNDLE_USER_PLUGIN=str(env_dir / ".bundle" / "plugin"),
            **_TOOL_ONLY,
        )
        without = _without_groups(spec)
        if without:
            env_vars["BUNDLE_WITHOUT"] = ":".join(without)
    else:
        # Only an install_command: a plain gem home, e.g. for "gem install ...".
        env_vars.update(GEM_HOME=str(gem_dir), GEM_PATH=str(gem_dir))
    return EnvInfo(
        path=env_dir,
        interpreter=interpreter,
        bin_dirs=(str(bin_dir), str(gem_dir / "bin")),
        commands={
            "ruby": interpreter.path,
            "bundle": str(bin_dir / "bundle"),
            "gem": str(bin_dir / "gem"),
        },
        env_vars=env_vars,
        data={
            "abi": info.abi,
            "bundle_exe": info.bundle_exe,
            "bundler": info.bundler_version,
            "gemfile": has_gemfile,
        },
    )


def _installer_environ(spec: EnvSpec, env: EnvInfo, extra: Mapping[str, str]) -> dict[str, str]:
    values = {k: v for k, v in env.env_vars.items() if k not in _TOOL_ONLY}
    values["BUNDLE_SILENCE_ROOT_WARNING"] = "1"
    if spec.options.cache_dir is not None:
        # Bundler's index cache is shared by every env; it never decides what gets installed.
        values["BUNDLE_USER_CACHE"] = str(spec.options.cache_dir / "ruby" / "bundler")
    values.update(extra)
    return host_ruby_environ(path_prefix=env.bin_dirs, extra=values)


def _shared_gem_cache(spec: EnvSpec) -> Optional[Path]:
    """``.gem`` files ally downloaded for earlier envs: offline builds install from there."""
    return spec.options.cache_dir / "ruby" / "gems" if spec.options.cache_dir else None


def _verified_artifacts(spec: EnvSpec, artifacts: Path) -> None:
    """Check every ``.gem`` of an offline bundle against the hash its lock records."""
    try:
        lock = json.loads((artifacts / LOCK_NAME).read_text("utf-8"))
        entries = [(p["file"], p["sha256"]) for p in lock["packages"]]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise InstallFailed(
            f"{spec.plugin_name}: the bundle's {LOCK_NAME} is missing or invalid: {exc}"
        ) from exc
    for name, digest in entries:
        if not isinstance(name, str) or os.path.basename(name) != name or name in {".", ".."}:
            raise InstallFailed(f"{spec.plugin_name}: {LOCK_NAME}: invalid file name {name!r}")
        if _file_sha256(artifacts / name) != digest:
            raise InstallFailed(
                f"{spec.plugin_name}: {name} in the bundle does not match its hash in {LOCK_NAME}"
            )


def _gem_source(spec: EnvSpec) -> tuple[Optional[Path], bool, str]:
    """Where bundler takes ``.gem`` files from besides the Gemfile's sources, whether it must
    stay local (``--local``: no source is contacted), and how to say so."""
    assert spec.dependency_file is not None
    artifacts = spec.options.artifacts_dir
    if artifacts is not None and (artifacts / LOCK_NAME).is_file():
        _verified_artifacts(spec, artifacts)
        return artifacts, True, "from the bundle's gems"
    plugin_cache = _plugin_cache(spec)
    if plugin_cache is not None:
        return plugin_cache, spec.options.offline, "using the plugin's vendor/cache"
    if spec.options.offline:
        shared = _shared_gem_cache(spec)
        return (shared if shared and shared.is_dir() else None), True, "offline"
    return None, False, ""


def install_deps(spec: EnvSpec, env: EnvInfo) -> Optional[InstallResult]:
    if not _serves(spec):
        return None
    ruby = env.interpreter.path
    bundle_exe = str(env.data["bundle_exe"])
    if spec.install_command:
        argv = list(spec.install_command)
        argv[0] = env.commands.get(argv[0], argv[0])
        spec.progress("install", f"Running {' '.join(spec.install_command)}")
        spec.run(argv, env=_installer_environ(spec, env, {}), what="install_command")
        return InstallResult(packages=_packages(env), command=tuple(argv))
    if spec.dependency_file is None:
        return InstallResult()
    cache_path, local, how = _gem_source(spec)
    argv = [ruby, bundle_exe, "install"]
    extra: dict[str, str] = {}
    if local:
        argv.append("--local")
    if cache_path is not None:
        # Read .gem files from there, and never write into it (it is not the env's).
        extra["BUNDLE_CACHE_PATH"] = str(cache_path)
        argv.append("--no-cache")
    where = f" ({how})" if how else ""
    spec.progress("install", f"Installing gems from {spec.dependency_file.name}{where}")
    spec.run(
        argv,
        env=_installer_environ(spec, env, extra),
        what=f"bundle install{where}",
        cwd=spec.env_dir,
    )
    if not local:
        _keep_downloaded_gems(spec, env)
    return InstallResult(packages=_packages(env), command=tuple(argv))


def _packages(env: EnvInfo) -> dict[str, str]:
    """Name -> version of the gems the env provides, read from files (no process).

    A gem of the lock's ``GEM`` sections counts once its spec is installed in the env: gems of
    ``without`` groups are locked but not installed, and Ruby's default gems stay outside.
    """
    gem_dir = _gem_dir(env.path, _info_of(env), bool(env.data.get("gemfile")))
    specs = gem_dir / "specifications"
    if env.data.get("gemfile"):
        return {
            g.name: g.version
            for g in sorted(read_lock(env.path / ENV_LOCK))
            if g.section != "GEM" or (specs / f"{g.full_name}.gemspec").is_file()
        }
    found = {}
    for path in sorted(specs.glob("*.gemspec")) if specs.is_dir() else []:
        name, _, version = path.name[: -len(".gemspec")].rpartition("-")
        found[name] = version
    return found


def _keep_downloaded_gems(spec: EnvSpec, env: EnvInfo) -> None:
    """Copy the ``.gem`` files bundler downloaded into the shared cache (for offline builds)."""
    import shutil

    shared = _shared_gem_cache(spec)
    cache = _gem_dir(env.path, _info_of(env), True) / "cache"
    if shared is None or not cache.is_dir():
        return
    shared.mkdir(parents=True, exist_ok=True)
    for gem in cache.glob("*.gem"):
        target = shared / gem.name
        if target.exists():
            continue
        partial = shared / f".{gem.name}.{os.urandom(4).hex()}.part"
        try:
            shutil.copyfile(gem, partial)
            os.replace(partial, target)
        except OSError:
            partial.unlink(missing_ok=True)


def _info_of(env: EnvInfo) -> RubyInfo:
    data = env.data
    return RubyInfo(
        env.interpreter,
        str(data.get("abi", "")),
        str(data.get("bundle_exe", "")),
        str(data.get("bundler", "")),
    )


# ---------------------------------------------------------------------------------------------
# health


_GEMS_PRESENT = (
    "gone = Bundler.load.specs.reject { |s| s.name == 'bundler' || s.default_gem? || "
    "File.directory?(s.full_gem_path) }; "
    "abort('gems missing from the env: ' + gone.map(&:full_name).join(', ')) unless gone.empty?"
)


def health_check(spec: EnvSpec, env: EnvInfo, deep: bool) -> Optional[Health]:
    if not _serves(spec):
        return None
    ruby = env.interpreter.path
    info = _info_of(env)
    bundle_exe = info.bundle_exe
    if not info.abi:
        return Health((Problem("the env's marker does not say which Ruby ABI it was built for"),))
    if not os.path.exists(ruby):
        return Health((Problem(f"Ruby {ruby} is gone"),))
    if not bundle_exe or not os.path.isfile(bundle_exe):
        return Health((Problem(f"bundler {bundle_exe or '?'} of Ruby {ruby} is gone"),))
    has_gemfile = bool(env.data.get("gemfile"))
    needed = [env.path / "bin" / "bundle", _gem_dir(env.path, info, has_gemfile)]
    if has_gemfile:
        needed += [env.path / ENV_GEMFILE, env.path / ENV_LOCK]
    missing = [str(p.relative_to(env.path)) for p in needed if not p.exists()]
    if missing:
        return Health((Problem(f"missing from the env: {', '.join(missing)}"),))
    if not deep or not has_gemfile:
        return Health()
    tool_environ = host_ruby_environ(path_prefix=env.bin_dirs, extra=dict(env.env_vars))
    bundler_environ = {k: v for k, v in tool_environ.items() if k != "RUBYOPT"}
    checks = [
        ("bundle check", [ruby, bundle_exe, "check"], bundler_environ),
        # What every tool does first (load bundler/setup), then: is every gem still there?
        ("ruby -rbundler/setup", [ruby, "-e", _GEMS_PRESENT], tool_environ),
    ]
    return run_checks(checks, cwd=env.path)


def watch_paths(spec: EnvSpec, env: EnvInfo) -> Optional[Sequence[Path]]:
    if not _serves(spec):
        return None
    # What the quick health_check stats (exists/isfile follow symlinks, as the core's stat
    # does). env_context and env_identity read no file outside the plugin: ALLY_RUBY is a
    # variable, and the plugin's lock and vendor/cache are identity_files.
    info = _info_of(env)
    paths = [env.interpreter.path, info.bundle_exe]
    if info.abi:
        has_gemfile = bool(env.data.get("gemfile"))
        paths += [str(env.path / "bin" / "bundle"), str(_gem_dir(env.path, info, has_gemfile))]
        if has_gemfile:
            paths += [str(env.path / ENV_GEMFILE), str(env.path / ENV_LOCK)]
    return [Path(p) for p in dict.fromkeys(paths) if p]


# ---------------------------------------------------------------------------------------------
# offline bundles


class BundleNotPossible(AllyError):
    """The env uses gems that cannot be put into an offline bundle."""


def bundle_artifacts(spec: EnvSpec, env: EnvInfo, dest: Path) -> Optional[Mapping[str, Any]]:
    import shutil

    if not _serves(spec):
        return None
    if not env.data.get("gemfile"):
        raise BundleNotPossible(
            f"{spec.plugin_name}: only Gemfile-based Ruby envs can be bundled "
            "(this one was made by an install_command)"
        )
    info = _info_of(env)
    gem_dir = _gem_dir(env.path, info, True)
    plugin_real = os.path.realpath(spec.plugin_dir)
    locked: list[dict[str, str]] = []
    system: list[dict[str, str]] = []
    for gem in read_lock(env.path / ENV_LOCK):
        if gem.section == "GIT":
            raise BundleNotPossible(
                f"{spec.plugin_name}: gem {gem.name} comes from git ({gem.remote}); "
                "offline bundles support gems from gem servers and paths inside the plugin"
            )
        if gem.section == "PATH":
            _check_path_gem(spec, env, gem, plugin_real)
            continue
        cached = gem_dir / "cache" / gem.file_name
        if not cached.is_file():
            if (gem_dir / "gems" / gem.full_name).is_dir():
                raise BundleNotPossible(
                    f"{spec.plugin_name}: {gem.file_name} is missing from the env's gem cache"
                )
            # Not installed into the env: it came with Ruby (a default gem).
            system.append({"name": gem.name, "version": gem.version})
            continue
        shutil.copyfile(cached, dest / gem.file_name)
        locked.append(
            {
                "name": gem.name,
                "version": gem.version,
                "file": gem.file_name,
                "sha256": _file_sha256(dest / gem.file_name) or "",
            }
        )
    shutil.copyfile(env.path / ENV_LOCK, dest / ENV_LOCK)
    lock = {
        "format": "ruby-gems",
        "ruby": env.interpreter.version,
        "bundler": info.bundler_version,
        "packages": locked,
        "from_ruby": system,
    }
    (dest / LOCK_NAME).write_text(json.dumps(lock, indent=2, sort_keys=True) + "\n", "utf-8")
    spec.progress("bundle", f"Collected {len(locked)} gem(s)")
    return lock


def _check_path_gem(spec: EnvSpec, env: EnvInfo, gem: LockedGem, plugin_real: str) -> None:
    """A ``path:`` gem travels with the plugin's source only if it lies inside the plugin."""
    where = os.path.realpath(os.path.join(env.path, gem.remote))
    if os.path.commonpath([plugin_real, where]) != plugin_real:
        raise BundleNotPossible(
            f"{spec.plugin_name}: gem {gem.name} comes from {where}, outside the plugin "
            "directory, so an offline bundle cannot carry it"
        )
