"""Fixtures for the Ruby runtime's tests: gems built in the session, served from local sources.

Nothing here reaches the network. ``gem_repo`` is a gem source directory (the classic
``specs.4.8.gz`` + ``quick/`` index, written by a few lines of Ruby so that no ``gem
generate_index`` is needed) that Gemfiles name as ``file://...``; ``gem_server`` serves the
same directory over HTTP on 127.0.0.1 and can hold ``.gem`` downloads until told to go on.
"""

from __future__ import annotations

import functools
import http.server
import json
import os
import shutil
import subprocess
import threading
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, Callable

import pytest

RUBY_VARS = ("RUBYOPT", "RUBYLIB", "GEM_HOME", "GEM_PATH", "BUNDLE_GEMFILE", "BUNDLER_VERSION")


@functools.lru_cache(maxsize=1)
def ruby_missing() -> str:
    """Why the Ruby tests cannot run here, or ``""``."""
    for tool in ("ruby", "gem"):
        if shutil.which(tool) is None:
            return f"{tool!r} is not on PATH (Debian: apt-get install ruby ruby-bundler)"
    probe = subprocess.run(
        ["ruby", "-e", "require 'bundler'; print Bundler::VERSION"],
        capture_output=True,
        text=True,
        env=ruby_free_environ(),
    )
    if probe.returncode != 0:
        return "bundler is not installed for this Ruby (Debian: apt-get install ruby-bundler)"
    return ""


def ruby_free_environ(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """``os.environ`` without variables that activate another Ruby setup."""
    env = {k: v for k, v in os.environ.items() if k not in RUBY_VARS}
    env.update(extra or {})
    return env


# Index the gems of a source directory the way `gem generate_index` does (the parts bundler
# reads: the spec lists and one marshalled spec per gem).
INDEXER = """
require "fileutils"
require "rubygems/package"
require "zlib"
dir = ARGV.fetch(0)
specs = Dir[File.join(dir, "gems", "*.gem")].sort.map { |f| Gem::Package.new(f).spec }
tuples = specs.map { |s| [s.name, s.version, s.original_platform] }
latest = tuples.group_by(&:first).map { |_, v| v.max_by { |t| t[1] } }
{ "specs" => tuples, "latest_specs" => latest, "prerelease_specs" => [] }.each do |name, list|
  File.binwrite(File.join(dir, "#{name}.4.8.gz"), Gem::Util.gzip(Marshal.dump(list)))
end
quick = File.join(dir, "quick", "Marshal.4.8")
FileUtils.mkdir_p(quick)
specs.each do |s|
  data = Zlib::Deflate.deflate(Marshal.dump(s))
  File.binwrite(File.join(quick, "#{s.full_name}.gemspec.rz"), data)
end
"""


def build_gem(
    workdir: Path,
    name: str,
    version: str,
    *,
    dependencies: Mapping[str, str] | None = None,
    executable: str | None = None,
) -> Path:
    """``gem build`` a gem ``name`` whose module (``name`` in CamelCase) has ``VERSION`` and
    ``greet(who)``; with ``executable``, it also ships that command. Returns the ``.gem``."""
    src = workdir / f"{name}-{version}"
    (src / "lib").mkdir(parents=True)
    module = "".join(part.capitalize() for part in name.split("_"))
    (src / "lib" / f"{name}.rb").write_text(
        f"module {module}\n"
        f"  VERSION = {json.dumps(version)}\n"
        f'  def self.greet(who)\n    "hello #{{who}} from {name} #{{VERSION}}"\n  end\n'
        "end\n",
        "utf-8",
    )
    files = [f"lib/{name}.rb"]
    extra_lines = []
    if executable:
        (src / "exe").mkdir()
        (src / "exe" / executable).write_text(
            f'#!/usr/bin/env ruby\nrequire "json"\nrequire {json.dumps(name)}\n'
            f"puts JSON.generate({{'success' => true, 'result' => {module}.greet(ARGV[0])}})\n",
            "utf-8",
        )
        files.append(f"exe/{executable}")
        extra_lines += ['  s.bindir = "exe"', f"  s.executables = [{json.dumps(executable)}]"]
    lines = [
        "Gem::Specification.new do |s|",
        f"  s.name = {json.dumps(name)}",
        f"  s.version = {json.dumps(version)}",
        '  s.summary = "A gem built by the ally-runtime-ruby tests"',
        '  s.authors = ["ally"]',
        '  s.license = "MIT"',
        f"  s.files = {json.dumps(files)}",
        *extra_lines,
    ]
    for dep, requirement in (dependencies or {}).items():
        lines.append(f"  s.add_dependency {json.dumps(dep)}, {json.dumps(requirement)}")
    lines.append("end")
    (src / f"{name}.gemspec").write_text("\n".join(lines) + "\n", "utf-8")
    subprocess.run(
        ["gem", "build", f"{name}.gemspec"],
        cwd=src,
        check=True,
        capture_output=True,
        env=ruby_free_environ(),
    )
    return src / f"{name}-{version}.gem"


@pytest.fixture(scope="session")
def gem_repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A local gem source: ``allydemo_ruby`` 1.0.0 and 2.0.0 (with an ``allydemo-ruby``
    executable) and ``allydemo_shout`` 1.0.0 (depends on ``allydemo_ruby >= 1.0``)."""
    if ruby_missing():
        pytest.skip(f"Ruby runtime tests: {ruby_missing()}")
    work = tmp_path_factory.mktemp("gem-src")
    repo = tmp_path_factory.mktemp("gem-repo")
    (repo / "gems").mkdir()
    built = [
        build_gem(work, "allydemo_ruby", "1.0.0", executable="allydemo-ruby"),
        build_gem(work, "allydemo_ruby", "2.0.0", executable="allydemo-ruby"),
        build_gem(work, "allydemo_shout", "1.0.0", dependencies={"allydemo_ruby": ">= 1.0"}),
    ]
    for gem in built:
        shutil.copy(gem, repo / "gems" / gem.name)
    index_gems(repo)
    return repo


def index_gems(repo: Path) -> None:
    subprocess.run(
        ["ruby", "-e", INDEXER, str(repo)], check=True, capture_output=True, env=ruby_free_environ()
    )


@pytest.fixture(autouse=True)
def _hermetic_ruby(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Skip without Ruby; no Ruby activation of the machine, no ``~/.bundle/config``."""
    if ruby_missing():
        pytest.skip(f"Ruby runtime tests: {ruby_missing()}")
    for key in RUBY_VARS:
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("BUNDLE_USER_CONFIG", str(tmp_path / "no-user-bundle-config"))


class GemServer(http.server.ThreadingHTTPServer):
    """Serves a gem source directory; ``.gem`` downloads wait while ``hold`` is set."""

    daemon_threads = True

    def __init__(self, root: Path) -> None:
        self.root = root
        self.hold = threading.Event()
        self.released = threading.Event()
        self.gem_requested = threading.Event()
        super().__init__(("127.0.0.1", 0), functools.partial(_Handler, directory=str(root)))

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class _Handler(http.server.SimpleHTTPRequestHandler):
    server: GemServer

    def do_GET(self) -> None:
        if self.path.endswith(".gem"):
            self.server.gem_requested.set()
            if self.server.hold.is_set():
                self.server.released.wait(120)
        super().do_GET()

    def log_message(self, format: str, *args: Any) -> None:
        return None


@pytest.fixture
def gem_server(gem_repo: Path) -> Iterator[GemServer]:
    server = GemServer(gem_repo)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.released.set()
        server.shutdown()
        server.server_close()


TOOL_SCRIPT = """\
require "json"
args = JSON.parse($stdin.read)
result = {"ruby" => RbConfig.ruby, "loaded" => {}}
args.fetch("require", []).each do |lib|
  require lib
  mod = Object.const_get(lib.split("_").map(&:capitalize).join)
  result["loaded"][lib] = mod.respond_to?(:greet) ? mod.greet(args["who"]) : mod::VERSION
end
puts JSON.generate({"success" => true, "result" => result})
"""


@pytest.fixture
def ruby_plugin(make_plugin: Callable[..., Path], gem_repo: Path) -> Callable[..., Path]:
    """``ruby_plugin(name, gemfile_body, files=..., **manifest)``: a Ruby plugin whose
    ``Gemfile`` is ``source "file://<gem_repo>"`` followed by ``gemfile_body``, with a tool
    ``show`` (``ruby main.rb``) that requires the libraries named in its input."""

    def make(
        name: str,
        gemfile_body: str,
        *,
        files: Mapping[str, str] | None = None,
        source: str | None = None,
        **manifest: Any,
    ) -> Path:
        gemfile = f'source "{source or gem_repo.as_uri()}"\n{gemfile_body}'
        data: dict[str, Any] = {
            "runtime": "ruby",
            "dependencies": {"file": "Gemfile"},
            "tools": [{"name": "show", "command": "ruby", "args": ["main.rb"]}],
        }
        data.update(manifest)
        return make_plugin(
            name, data, files={"Gemfile": gemfile, "main.rb": TOOL_SCRIPT, **(files or {})}
        )

    return make
