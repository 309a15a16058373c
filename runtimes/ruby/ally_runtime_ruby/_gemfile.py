"""The plugin's Gemfile and lock as the env sees them; reading ``Gemfile.lock`` without Ruby.

Bundler writes the lock beside the Gemfile named by ``BUNDLE_GEMFILE`` (bundler before 2.6 has
no way to put it elsewhere), and the plugin directory must stay untouched. So the env gets its
own ``Gemfile``: a two-line file that evaluates a snapshot of the plugin's Gemfile (copied into
the env as ``Gemfile.plugin``) *as if it were at its original path*, with bundler's own
``eval_gemfile(path, contents)``. Relative paths in it (``path:``, ``gemspec``,
``eval_gemfile``, ``__dir__``) therefore resolve against the plugin directory, while the lock,
the installed gems and bundler's config all live in the env.
"""

from __future__ import annotations

import functools
import os
import re
from pathlib import Path
from typing import NamedTuple, Optional

__all__ = [
    "ENV_GEMFILE",
    "ENV_LOCK",
    "PLUGIN_SNAPSHOT",
    "LockedGem",
    "lock_path_for",
    "parse_lock",
    "read_lock",
    "reads_plugin_files",
    "ruby_string",
    "strip_bundled_with",
    "write_env_gemfile",
]

ENV_GEMFILE = "Gemfile"
ENV_LOCK = "Gemfile.lock"
PLUGIN_SNAPSHOT = "Gemfile.plugin"

#: Gemfile code that reads other files of the plugin: such envs are never shared between
#: plugins. A false positive only costs sharing; ``path``/``git`` also match option keys.
_LOCAL_REF = re.compile(
    r"\b(path|git|gemspec|eval_gemfile|__dir__|__FILE__|File|Dir|Pathname|require_relative"
    r"|require|load)\b"
)
_SECTION = re.compile(r"^([A-Z][A-Z ]*)$")
_SPEC = re.compile(r"^    (\S+) \(([^)]+)\)$")


class LockedGem(NamedTuple):
    """One gem of a ``Gemfile.lock``: its section (``GEM``, ``PATH``, ``GIT``) and source."""

    name: str
    version: str
    platform: str
    section: str
    remote: str

    @property
    def file_name(self) -> str:
        """The ``.gem`` file name RubyGems uses for it."""
        suffix = f"-{self.platform}" if self.platform and self.platform != "ruby" else ""
        return f"{self.name}-{self.version}{suffix}.gem"

    @property
    def full_name(self) -> str:
        return self.file_name[: -len(".gem")]


def lock_path_for(gemfile: Path) -> Path:
    """Where bundler keeps the lock of ``gemfile`` (``gems.rb`` → ``gems.locked``)."""
    if gemfile.name == "gems.rb":
        return gemfile.with_name("gems.locked")
    return gemfile.with_name(gemfile.name + ".lock")


def reads_plugin_files(gemfile: Path) -> bool:
    """Whether installing ``gemfile`` may read other files of its plugin (no process)."""
    try:
        st = os.stat(gemfile)
    except OSError:
        return False
    return _scan(str(gemfile), (st.st_size, st.st_mtime_ns, st.st_ino))


@functools.lru_cache(maxsize=1024)
def _scan(path: str, signature: tuple[int, ...]) -> bool:
    try:
        with open(path, encoding="utf-8", errors="replace") as fh:
            code = "\n".join(line.split("#", 1)[0] for line in fh)
    except OSError:
        return False
    return bool(_LOCAL_REF.search(code))


def parse_lock(text: str) -> list[LockedGem]:
    """The gems listed under ``specs:`` of the ``GEM``, ``PATH`` and ``GIT`` sections."""
    gems: list[LockedGem] = []
    section = ""
    remote = ""
    for line in text.splitlines():
        header = _SECTION.match(line)
        if header:
            section, remote = header.group(1), ""
            continue
        if section not in {"GEM", "PATH", "GIT"}:
            continue
        if line.startswith("  remote: "):
            remote = line[len("  remote: ") :].strip()
            continue
        spec = _SPEC.match(line)
        if spec:
            # RubyGems versions never contain "-": what follows one is the platform.
            version, _, platform = spec.group(2).partition("-")
            gems.append(LockedGem(spec.group(1), version, platform, section, remote))
    return gems


def read_lock(path: Path) -> list[LockedGem]:
    """:func:`parse_lock` of the file at ``path`` (``[]`` if there is none)."""
    try:
        return parse_lock(path.read_text("utf-8"))
    except (OSError, UnicodeDecodeError):
        return []


def strip_bundled_with(text: str) -> str:
    """``text`` without its ``BUNDLED WITH`` section.

    A lock written by a newer bundler makes ``bundle install`` download that bundler from
    rubygems.org and re-run itself with it. The env uses the bundler of its Ruby instead; it
    records its own version when it rewrites the lock.
    """
    out: list[str] = []
    skipping = False
    for line in text.splitlines(keepends=True):
        if line.rstrip("\r\n") == "BUNDLED WITH":
            skipping = True
            continue
        if skipping and line.startswith(" "):
            continue
        skipping = False
        out.append(line)
    return "".join(out).rstrip("\n") + "\n"


def ruby_string(value: str) -> str:
    """``value`` as a single-quoted Ruby string literal (no interpolation, no escapes but two)."""
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def write_env_gemfile(env_dir: Path, gemfile: Path, lock_text: Optional[str]) -> None:
    """Write the env's ``Gemfile`` (evaluating a snapshot of ``gemfile``) and its lock."""
    (env_dir / PLUGIN_SNAPSHOT).write_bytes(gemfile.read_bytes())
    (env_dir / ENV_GEMFILE).write_text(
        "# Written by ally-runtime-ruby. The plugin's Gemfile as it was when this env was built\n"
        f"# ({PLUGIN_SNAPSHOT}), evaluated as if it were still at its own path, so that relative\n"
        "# paths in it resolve against the plugin directory.\n"
        f"eval_gemfile {ruby_string(str(gemfile))}, "
        f"File.read(File.join(__dir__, {ruby_string(PLUGIN_SNAPSHOT)}))\n",
        "utf-8",
    )
    if lock_text is not None:
        (env_dir / ENV_LOCK).write_text(strip_bundled_with(lock_text), "utf-8")
