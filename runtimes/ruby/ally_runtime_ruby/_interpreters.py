"""Finding a Ruby (with bundler) on this machine that satisfies a plugin's ``runtime_version``."""

from __future__ import annotations

import glob
import os

# shutil (which imports bz2 and lzma) is imported by the functions that use it: ally imports
# every runtime at each start.
import re
import threading
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, NamedTuple, Optional

from ally_core import EnvSpec, Interpreter, InterpreterNotFound, clean_environ

from ._names import RUBY_ENV_VAR

if TYPE_CHECKING:
    from packaging.specifiers import SpecifierSet

__all__ = [
    "RUBY_ENV_VAR",
    "RubyInfo",
    "candidate_paths",
    "find_ruby",
    "host_ruby_environ",
    "query_ruby",
    "version_specifier",
]


#: Variables of the host's Ruby setup that would point bundler or rubygems somewhere else than
#: the env (an activated bundle, another gem home, a pinned bundler). They are removed before
#: any Ruby process of ally starts; mirrors, credentials and the user's bundler config stay.
HOST_RUBY_VARS = frozenset(
    {
        "RUBYOPT",
        "RUBYLIB",
        "GEM_HOME",
        "GEM_PATH",
        "BUNDLER_VERSION",
        "BUNDLER_SETUP",
        "BUNDLE_BIN_PATH",
        "BUNDLE_GEMFILE",
        "BUNDLE_LOCKFILE",
        "BUNDLE_PATH",
        "BUNDLE_PATH__SYSTEM",
        "BUNDLE_APP_CONFIG",
        "BUNDLE_BIN",
        "BUNDLE_CACHE_PATH",
        "BUNDLE_CACHE_ALL",
        "BUNDLE_DEPLOYMENT",
        "BUNDLE_FROZEN",
        "BUNDLE_WITHOUT",
        "BUNDLE_WITH",
        "BUNDLE_ONLY",
        "BUNDLE_SYSTEM_BINDIR",
    }
)

# NUL-separated: engine, version, the real binary, the ABI directory name gems install under,
# and the bundler this Ruby would run (its ``bundle`` script and version), empty if none.
_QUERY = (
    "b = begin; Gem::Specification.find_by_name('bundler'); rescue Exception; nil; end; "
    "print [RUBY_ENGINE, RUBY_VERSION, RbConfig.ruby, RbConfig::CONFIG['ruby_version'], "
    "b ? b.bin_file('bundle') : '', b ? b.version.to_s : ''].join(\"\\0\")"
)


class RubyInfo(NamedTuple):
    """A Ruby found on this machine, and the bundler that comes with it."""

    interpreter: Interpreter
    #: ``RbConfig::CONFIG["ruby_version"]``: gems go to ``<BUNDLE_PATH>/ruby/<abi>``.
    abi: str
    #: bundler's ``bundle`` script, run as ``ruby <bundle_exe> ...``; ``""`` without bundler.
    bundle_exe: str
    bundler_version: str


def host_ruby_environ(
    base: Mapping[str, str] | None = None,
    *,
    path_prefix: Sequence[str] = (),
    extra: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """The host environment without host Python and Ruby activation variables, plus ``extra``."""
    environ = clean_environ(base, path_prefix=path_prefix)
    for key in list(environ):
        if key in HOST_RUBY_VARS or key.startswith("BUNDLER_ORIG_"):
            del environ[key]
    environ.update(extra or {})
    return environ


def _signature(path: str) -> tuple[int, ...]:
    st = os.stat(path)
    return (st.st_size, st.st_mtime_ns, st.st_ino)


_CACHE: dict[tuple[str, tuple[int, ...]], Optional[RubyInfo]] = {}
_CACHE_LOCK = threading.Lock()


def query_ruby(path: str) -> Optional[RubyInfo]:
    """Ask the Ruby at ``path`` (may be a shim) who it really is; ``None`` if it does not run.

    Answers are cached while the file at ``path`` is unchanged, under its own path and under
    the real binary's, so a build asks each Ruby once.
    """
    try:
        key = (path, _signature(os.path.realpath(path)))
    except OSError:
        return None
    with _CACHE_LOCK:
        if key in _CACHE:
            return _CACHE[key]
    import subprocess  # only when a ruby is queried: not on a warm load

    try:
        out = subprocess.run(
            [path, "-e", _QUERY],
            capture_output=True,
            timeout=60,
            check=True,
            env=host_ruby_environ(),
        ).stdout.decode("utf-8", "replace")
    except (OSError, subprocess.SubprocessError):
        return None
    fields = out.split("\0")
    info: Optional[RubyInfo] = None
    if len(fields) == 6 and os.path.isabs(fields[2]):
        _engine, version, binary, abi, bundle_exe, bundler_version = fields
        real = os.path.realpath(binary)
        try:
            interpreter = Interpreter(
                path=binary, version=version, kind="ruby", realpath=real, signature=_signature(real)
            )
        except OSError:
            return None
        info = RubyInfo(interpreter, abi, bundle_exe, bundler_version)
    with _CACHE_LOCK:
        _CACHE[key] = info
        if info is not None:
            _CACHE[(info.interpreter.path, info.interpreter.signature)] = info
    return info


def candidate_paths(environ: Mapping[str, str] | None = None) -> list[str]:
    """Rubies on this machine: ``ruby``/``rubyX.Y`` on PATH, then version managers' rubies."""
    environ = os.environ if environ is None else environ
    found: list[str] = []
    pattern = re.compile(r"^ruby(\d+(\.\d+)*)?$")
    for directory in environ.get("PATH", "").split(os.pathsep):
        if not directory:
            continue
        try:
            names = sorted(n for n in os.listdir(directory) if pattern.match(n))
        except OSError:
            continue
        # Plain "ruby" first: it is the one the user would get by typing "ruby".
        for name in sorted(names, key=lambda n: n != "ruby"):
            path = os.path.join(directory, name)
            if os.path.isfile(path) and os.access(path, os.X_OK):
                found.append(path)
    home = environ.get("HOME") or os.path.expanduser("~")
    rbenv = environ.get("RBENV_ROOT") or os.path.join(home, ".rbenv")
    for root in (
        os.path.join(rbenv, "versions", "*"),
        os.path.join(home, ".rubies", "*"),
        "/opt/rubies/*",
        os.path.join(home, ".asdf", "installs", "ruby", "*"),
        os.path.join(home, ".rvm", "rubies", "*"),
    ):
        found += sorted(glob.glob(os.path.join(root, "bin", "ruby")))
    return list(dict.fromkeys(found))


def version_specifier(spec: EnvSpec) -> Optional[SpecifierSet]:
    """``spec.runtime_version`` as a :class:`~packaging.specifiers.SpecifierSet` (or ``None``).

    PEP 440 syntax (``>=3.1``, ``>=3.0,<4``) is taken as is; RubyGems' pessimistic operator
    (``~> 3.1``) means the same as PEP 440's ``~=``; a bare version (``3.2``) means ``3.2.*``.
    """
    constraint = spec.runtime_version
    if not constraint:
        return None
    from packaging.specifiers import InvalidSpecifier, SpecifierSet

    text = constraint.strip()
    text = re.sub(r"~>\s*(\d+)\s*$", r"==\1.*", text)
    text = re.sub(r"~>\s*", "~=", text)
    if re.fullmatch(r"\d+(\.\d+)*", text):
        text = f"=={text}.*"
    try:
        return SpecifierSet(text)
    except InvalidSpecifier:
        raise InterpreterNotFound(
            f"{spec.plugin_name}: plugin.json: $.runtime_version: {constraint!r} is not a "
            "valid Ruby version constraint (e.g. '>=3.1' or '~> 3.2')"
        ) from None


def _fits(specifier: Optional[SpecifierSet], version: str) -> bool:
    return specifier is None or specifier.contains(version, prereleases=True)


def _version_key(info: RubyInfo) -> tuple[int, ...]:
    return tuple(int(p) for p in re.findall(r"\d+", info.interpreter.version))


def _usable(info: Optional[RubyInfo], specifier: Optional[SpecifierSet]) -> bool:
    return (
        info is not None
        and _fits(specifier, info.interpreter.version)
        and bool(info.bundle_exe)
        and os.path.isfile(info.bundle_exe)
    )


def find_ruby(spec: EnvSpec, environ: Mapping[str, str] | None = None) -> RubyInfo:
    """The Ruby to build ``spec``'s env with: ``ALLY_RUBY``, else ``ruby`` on PATH if it fits,
    else the newest fitting one found. It must have bundler.

    Raises :class:`~ally_core.InterpreterNotFound` with what was found when nothing fits.
    """
    import shutil

    environ = os.environ if environ is None else environ
    specifier = version_specifier(spec)
    constraint = f" satisfying runtime_version {spec.runtime_version!r}" if specifier else ""
    chosen = environ.get(RUBY_ENV_VAR)
    if chosen:
        path = chosen if os.sep in chosen else shutil.which(chosen, path=environ.get("PATH"))
        info = query_ruby(path) if path else None
        if info is None:
            raise InterpreterNotFound(
                f"{spec.plugin_name}: Ruby {chosen!r} ({RUBY_ENV_VAR}) not found or not runnable"
            )
        candidates: Sequence[RubyInfo] = [info]
    else:
        # The Ruby a user gets by typing "ruby" wins when it fits: no need to look further.
        default = shutil.which("ruby", path=environ.get("PATH"))
        info = query_ruby(default) if default else None
        if info is not None and _usable(info, specifier):
            return info
        seen: dict[str, RubyInfo] = {}
        for path in candidate_paths(environ):
            found = query_ruby(path)
            if found is not None:
                seen.setdefault(found.interpreter.realpath, found)
        candidates = list(seen.values())
        if not candidates:
            raise InterpreterNotFound(
                f"{spec.plugin_name}: no Ruby found on PATH (install Ruby and bundler, e.g. "
                f"'apt-get install ruby ruby-bundler', or set {RUBY_ENV_VAR})"
            )
    fitting = [c for c in candidates if _fits(specifier, c.interpreter.version)]
    if not fitting:
        versions = {c.interpreter.version: c for c in candidates}
        # In version order (2.7 before 3.10), each version once.
        have = ", ".join(sorted(versions, key=lambda v: _version_key(versions[v])))
        raise InterpreterNotFound(
            f"{spec.plugin_name}: no Ruby{constraint} found (found: {have}); install one "
            f"or point {RUBY_ENV_VAR} at it"
        )
    usable = [c for c in fitting if _usable(c, specifier)]
    if not usable:
        names = ", ".join(f"{c.interpreter.path} ({c.interpreter.version})" for c in fitting)
        raise InterpreterNotFound(
            f"{spec.plugin_name}: Ruby{constraint} found but without bundler: {names}; "
            "install it with 'gem install bundler' (or 'apt-get install ruby-bundler')"
        )
    return max(usable, key=_version_key)
