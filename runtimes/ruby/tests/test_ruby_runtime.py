"""The Ruby runtime through ally's public API, with real Ruby, real bundler and local gems."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

from ally_core import Host

GREET_1 = "hello ally from allydemo_ruby 1.0.0"
GREET_2 = "hello ally from allydemo_ruby 2.0.0"


def tree(root: Path) -> dict[str, str]:
    """Every entry under ``root`` with its kind and content hash (and mtime for files)."""
    out = {}
    for path in sorted(root.rglob("*")):
        rel = str(path.relative_to(root))
        if path.is_symlink():
            out[rel] = "link:" + os.readlink(path)
        elif path.is_dir():
            out[rel] = "dir"
        else:
            st = path.stat()
            out[rel] = f"{hashlib.sha256(path.read_bytes()).hexdigest()}:{st.st_mtime_ns}"
    return out


def show(outcome, *libs: str) -> dict:
    result = outcome.tool("show").call({"require": list(libs), "who": "ally"})
    assert result.success, (result.error, result.stderr)
    return result.result


def test_first_load_builds_once_and_the_tool_requires_the_bundled_gem(host, ruby_plugin, no_spawn):
    ruby_plugin("greeter", 'gem "allydemo_ruby", "1.0.0"\n')
    (outcome,) = host.load()
    assert outcome.ready, outcome.reason
    assert outcome.action == "built"
    assert outcome.packages == {"allydemo_ruby": "1.0.0"}
    assert show(outcome, "allydemo_ruby")["loaded"] == {"allydemo_ruby": GREET_1}
    # The gem lives in the env only: the machine's Ruby cannot load it.
    system = subprocess.run(["ruby", "-e", 'require "allydemo_ruby"'], capture_output=True)
    assert system.returncode != 0

    with no_spawn():
        (again,) = Host(host.paths.home).load()
    assert again.ready and again.action == "none"
    assert again.env.path == outcome.env.path


def test_plugin_directory_is_left_untouched_by_build_and_tools(host, ruby_plugin):
    plugin = ruby_plugin("greeter", 'gem "allydemo_ruby", "1.0.0"\n')
    before = tree(plugin)
    (outcome,) = host.load()
    assert outcome.ready, outcome.reason
    show(outcome, "allydemo_ruby")
    assert tree(plugin) == before  # no Gemfile.lock, no .bundle, no vendor/ written there
    env = outcome.env.path
    assert (env / "Gemfile.lock").is_file()
    assert (env / "vendor" / "bundle").is_dir()


def test_identical_gemfiles_share_one_env(host, ruby_plugin):
    ruby_plugin("one", 'gem "allydemo_ruby", "1.0.0"\n')
    ruby_plugin("two", 'gem "allydemo_ruby", "1.0.0"\n')
    one, two = host.load(jobs=1)
    assert one.ready and two.ready, (one.reason, two.reason)
    assert {one.action, two.action} == {"built", "shared"}
    assert one.env.path == two.env.path
    assert show(two, "allydemo_ruby")["loaded"] == {"allydemo_ruby": GREET_1}


def test_changed_gemfile_rebuilds_with_transitive_dependencies(host, ruby_plugin):
    plugin = ruby_plugin("greeter", 'gem "allydemo_ruby", "1.0.0"\n')
    (first,) = host.load()
    assert first.ready, first.reason
    gemfile = plugin / "Gemfile"
    gemfile.write_text(gemfile.read_text().replace('"allydemo_ruby", "1.0.0"', '"allydemo_shout"'))

    (second,) = Host(host.paths.home).load()
    assert second.ready, second.reason
    assert second.action == "repaired" and second.repair_reason == "Gemfile changed"
    assert second.env.path != first.env.path
    # allydemo_shout needs allydemo_ruby >= 1.0: the newest one is resolved.
    assert second.packages == {"allydemo_ruby": "2.0.0", "allydemo_shout": "1.0.0"}
    assert show(second, "allydemo_ruby")["loaded"] == {"allydemo_ruby": GREET_2}


def lock_text(repo: Path, version: str, bundled_with: str = "2.3.15") -> str:
    return (
        f"GEM\n  remote: {repo.as_uri()}/\n  specs:\n    allydemo_ruby ({version})\n\n"
        "PLATFORMS\n  ruby\n\nDEPENDENCIES\n  allydemo_ruby\n\n"
        f"BUNDLED WITH\n   {bundled_with}\n"
    )


def test_gemfile_lock_pins_what_the_gemfile_leaves_open(host, ruby_plugin, gem_repo):
    # A lock written by a bundler this machine does not have must not make bundler go and
    # fetch that version.
    ruby_plugin(
        "locked",
        'gem "allydemo_ruby"\n',
        files={"Gemfile.lock": lock_text(gem_repo, "1.0.0", bundled_with="99.1.0")},
    )
    ruby_plugin("open", 'gem "allydemo_ruby"\n')
    events = []
    locked, unlocked = host.load(progress=events.append)
    assert locked.ready and unlocked.ready, (locked.reason, unlocked.reason)
    assert locked.packages == {"allydemo_ruby": "1.0.0"}
    assert unlocked.packages == {"allydemo_ruby": "2.0.0"}
    assert show(locked, "allydemo_ruby")["loaded"] == {"allydemo_ruby": GREET_1}
    assert not [e.message for e in events if "Installing Bundler" in e.message]
    assert locked.env.path != unlocked.env.path

    (locked.plugin_dir / "Gemfile.lock").write_text(lock_text(gem_repo, "2.0.0"))
    (relocked,) = Host(host.paths.home).load(["locked"])
    assert relocked.ready and relocked.action == "repaired", relocked.reason
    assert relocked.packages == {"allydemo_ruby": "2.0.0"}


def test_a_lock_symlinked_from_outside_the_plugin_is_not_read(
    host, ruby_plugin, gem_repo, tmp_path
):
    outside = tmp_path / "outside.lock"
    outside.write_text(lock_text(gem_repo, "1.0.0"))
    plugin = ruby_plugin("greeter", 'gem "allydemo_ruby"\n')
    (plugin / "Gemfile.lock").symlink_to(outside)
    (outcome,) = host.load()
    assert outcome.ready, outcome.reason
    assert outcome.packages == {"allydemo_ruby": "2.0.0"}


def test_update_goes_past_the_lock_and_the_updated_env_stays(host, ruby_plugin, gem_repo):
    ruby_plugin(
        "locked", 'gem "allydemo_ruby"\n', files={"Gemfile.lock": lock_text(gem_repo, "1.0.0")}
    )
    (first,) = host.load()
    assert first.packages == {"allydemo_ruby": "1.0.0"}, first.reason
    updated = host.ensure("locked", upgrade=True)
    assert updated.ready and updated.action == "updated", updated.reason
    assert updated.packages == {"allydemo_ruby": "2.0.0"}
    (again,) = Host(host.paths.home).load()
    assert again.action == "none" and again.env.path == updated.env.path


def test_failing_install_blocks_only_that_plugin_with_bundlers_error(host, ruby_plugin):
    ruby_plugin("broken", 'gem "allydemo_missing"\n')
    ruby_plugin("fine", 'gem "allydemo_ruby", "1.0.0"\n')
    broken, fine = host.load()
    assert broken.status == "blocked" and broken.action == "failed"
    assert "bundle install" in broken.reason
    assert "allydemo_missing" in broken.reason
    assert "Could not find gem 'allydemo_missing'" in broken.error.stderr_tail
    assert host.store.current("broken") is None
    assert fine.ready, fine.reason
    assert show(fine, "allydemo_ruby")["loaded"] == {"allydemo_ruby": GREET_1}


LOCAL_GEMSPEC = """\
Gem::Specification.new do |s|
  s.name = "allydemo_local"
  s.version = "0.1.0"
  s.summary = "A gem inside the plugin"
  s.authors = ["ally"]
  s.files = ["lib/allydemo_local.rb"]
end
"""


def test_path_gems_resolve_against_their_own_plugin_and_are_never_shared(host, ruby_plugin):
    gemfile = 'gem "allydemo_ruby", "1.0.0"\ngem "allydemo_local", path: "vendor/local"\n'
    plugins = {}
    for name in ("left", "right"):
        plugins[name] = ruby_plugin(
            name,
            gemfile,
            files={
                "vendor/local/allydemo_local.gemspec": LOCAL_GEMSPEC,
                "vendor/local/lib/allydemo_local.rb": "module AllydemoLocal\n"
                f'  def self.greet(who)\n    "{name} greets #{{who}}"\n  end\nend\n',
            },
        )
    before = {name: tree(path) for name, path in plugins.items()}
    left, right = host.load()
    assert left.ready and right.ready, (left.reason, right.reason)
    assert left.env.path != right.env.path
    assert left.packages == {"allydemo_local": "0.1.0", "allydemo_ruby": "1.0.0"}
    assert show(left, "allydemo_local", "allydemo_ruby")["loaded"] == {
        "allydemo_local": "left greets ally",
        "allydemo_ruby": GREET_1,
    }
    assert show(right, "allydemo_local")["loaded"] == {"allydemo_local": "right greets ally"}
    assert {name: tree(path) for name, path in plugins.items()} == before


def test_gem_executables_bundle_and_gem_run_inside_the_env(host, ruby_plugin, ally_cli):
    ruby_plugin(
        "greeter",
        'gem "allydemo_ruby", "1.0.0"\n',
        tools=[
            {"name": "cli", "command": "allydemo-ruby", "args": ["ally"]},
            {"name": "exec", "command": "bundle", "args": ["exec", "allydemo-ruby", "exec"]},
        ],
    )
    (outcome,) = host.load()
    assert outcome.ready, outcome.reason
    assert set(outcome.env.commands) == {"ruby", "bundle", "gem"}
    assert os.path.isabs(outcome.env.commands["ruby"])
    assert outcome.tool("cli").call({}).result == GREET_1
    assert outcome.tool("exec").call({}).result == "hello exec from allydemo_ruby 1.0.0"
    listed = ally_cli("exec", "greeter", "--", "gem", "list", "allydemo")
    assert listed.returncode == 0, listed.stderr
    assert "allydemo_ruby (1.0.0)" in listed.stdout


def test_runtime_version_is_honoured_and_an_impossible_one_blocks_clearly(host, ruby_plugin):
    version = subprocess.run(
        ["ruby", "-e", "print RUBY_VERSION"], capture_output=True, text=True, check=True
    ).stdout
    major = version.split(".")[0]
    ruby_plugin("fits", 'gem "allydemo_ruby", "1.0.0"\n', runtime_version=f"~> {major}.0")
    ruby_plugin("too-new", 'gem "allydemo_ruby", "1.0.0"\n', runtime_version=">=99")
    fits, too_new = host.load()
    assert fits.ready, fits.reason
    assert fits.env.interpreter.version == version
    assert too_new.status == "blocked"
    assert "no Ruby satisfying runtime_version '>=99'" in too_new.reason
    assert f"found: {version}" in too_new.reason


def test_without_a_usable_ruby_the_plugin_is_blocked_with_what_to_do(
    ally_home, ruby_plugin, monkeypatch, tmp_path
):
    ruby_plugin("greeter", 'gem "allydemo_ruby", "1.0.0"\n')
    monkeypatch.setenv("ALLY_RUBY", str(tmp_path / "no" / "ruby"))
    (chosen,) = Host(ally_home).load()
    assert chosen.status == "blocked"
    assert f"Ruby '{tmp_path / 'no' / 'ruby'}' (ALLY_RUBY) not found" in chosen.reason

    monkeypatch.delenv("ALLY_RUBY")
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("PATH", str(tmp_path / "empty-bin"))
    (missing,) = Host(ally_home).load()
    assert missing.status == "blocked"
    assert "no Ruby found on PATH" in missing.reason and "ruby-bundler" in missing.reason


def test_warm_load_rebuilds_an_env_whose_bundle_was_deleted(host, ruby_plugin):
    ruby_plugin("greeter", 'gem "allydemo_ruby", "1.0.0"\n')
    (first,) = host.load()
    assert first.ready, first.reason
    import shutil

    shutil.rmtree(first.env.path / "vendor" / "bundle")
    (second,) = Host(host.paths.home).load()
    assert second.ready and second.action == "repaired", second.reason
    assert "vendor/bundle" in second.repair_reason
    assert show(second, "allydemo_ruby")["loaded"] == {"allydemo_ruby": GREET_1}


def test_doctor_finds_a_gem_removed_from_the_env_and_fix_repairs_it(host, ruby_plugin):
    ruby_plugin("greeter", 'gem "allydemo_ruby", "1.0.0"\n')
    (first,) = host.load()
    assert first.ready, first.reason
    import shutil

    abi = first.env.data["abi"]
    shutil.rmtree(first.env.path / "vendor/bundle/ruby" / abi / "gems/allydemo_ruby-1.0.0")
    ((_, health),) = host.doctor()
    assert not health.ok
    assert "gems missing from the env: allydemo_ruby-1.0.0" in health.describe()
    ((fixed, _),) = Host(host.paths.home).doctor(fix=True)
    assert fixed.ready and fixed.action == "repaired", fixed.reason
    assert show(fixed, "allydemo_ruby")["loaded"] == {"allydemo_ruby": GREET_1}


def test_host_ruby_activation_does_not_leak_into_builds_or_tools(
    host, ruby_plugin, monkeypatch, tmp_path
):
    monkeypatch.setenv("RUBYOPT", "-rallydemo_not_a_library")
    monkeypatch.setenv("GEM_HOME", str(tmp_path / "elsewhere"))
    monkeypatch.setenv("BUNDLE_GEMFILE", str(tmp_path / "nowhere" / "Gemfile"))
    monkeypatch.setenv("BUNDLE_FROZEN", "true")
    monkeypatch.setenv("BUNDLE_WITHOUT", "default")
    ruby_plugin("greeter", 'gem "allydemo_ruby", "1.0.0"\n')
    (outcome,) = host.load()
    assert outcome.ready, outcome.reason
    assert show(outcome, "allydemo_ruby")["loaded"] == {"allydemo_ruby": GREET_1}
    assert not (tmp_path / "elsewhere").exists()


def test_without_groups_are_not_installed_and_must_be_a_list(host, ruby_plugin):
    body = 'gem "allydemo_ruby", "1.0.0"\ngroup :test do\n  gem "allydemo_shout"\nend\n'
    ruby_plugin("lean", body, dependencies={"file": "Gemfile", "without": ["test"]})
    ruby_plugin("typo", body, dependencies={"file": "Gemfile", "without": "test"})
    lean, typo = host.load()
    assert lean.ready, lean.reason
    assert lean.packages == {"allydemo_ruby": "1.0.0"}
    assert show(lean, "allydemo_ruby")["loaded"] == {"allydemo_ruby": GREET_1}
    skipped = lean.tool("show").call({"require": ["allydemo_shout"]})
    assert not skipped.success and skipped.error_type == "exit_code"
    assert "cannot load such file -- allydemo_shout" in skipped.stderr
    assert typo.status == "blocked"
    assert "$.dependencies.without: expected a list of Gemfile group names" in typo.reason


def test_install_command_without_gemfile_installs_into_a_gem_home(host, make_plugin, gem_repo):
    gem = (gem_repo / "gems" / "allydemo_ruby-1.0.0.gem").read_bytes()
    plugin = make_plugin(
        "plain",
        {
            "runtime": "ruby",
            "dependencies": {
                "install_command": "gem install --local --no-document allydemo_ruby-1.0.0.gem"
            },
            "tools": [{"name": "cli", "command": "allydemo-ruby", "args": ["gem"]}],
        },
    )
    (plugin / "allydemo_ruby-1.0.0.gem").write_bytes(gem)
    (outcome,) = host.load()
    assert outcome.ready, outcome.reason
    assert outcome.packages == {"allydemo_ruby": "1.0.0"}
    assert outcome.tool("cli").call({}).result == "hello gem from allydemo_ruby 1.0.0"


def private_repo(gem_repo: Path, tmp_path: Path) -> Path:
    """A copy of the gem source that a test may delete."""
    import shutil

    return Path(shutil.copytree(gem_repo, tmp_path / "private-repo"))


def test_offline_builds_use_gems_ally_downloaded_before(
    ally_home, ruby_plugin, gem_repo, tmp_path, monkeypatch
):
    import shutil

    repo = private_repo(gem_repo, tmp_path)
    ruby_plugin("online", 'gem "allydemo_ruby", "1.0.0"\n', source=repo.as_uri())
    (online,) = Host(ally_home).load()
    assert online.ready, online.reason
    shutil.rmtree(repo)

    monkeypatch.setenv("ALLY_OFFLINE", "1")
    ruby_plugin("offline", '# another plugin\ngem "allydemo_ruby", "1.0.0"\n', source=repo.as_uri())
    ruby_plugin("never-seen", 'gem "allydemo_shout"\n', source=repo.as_uri())
    outcomes = {o.name: o for o in Host(ally_home).load()}
    offline, never = outcomes["offline"], outcomes["never-seen"]
    assert offline.ready and offline.action == "built", offline.reason
    assert offline.env.path != online.env.path
    assert show(offline, "allydemo_ruby")["loaded"] == {"allydemo_ruby": GREET_1}
    assert never.status == "blocked"
    assert "--local" in never.reason and "allydemo_shout" in never.reason


def test_offline_build_installs_from_the_plugins_vendor_cache_without_writing_to_it(
    ally_home, ruby_plugin, gem_repo, tmp_path, monkeypatch
):
    monkeypatch.setenv("ALLY_OFFLINE", "1")
    plugin = ruby_plugin(
        "vendored", 'gem "allydemo_ruby", "1.0.0"\n', source=(tmp_path / "no-such-source").as_uri()
    )
    (plugin / "vendor" / "cache").mkdir(parents=True)
    gem = gem_repo / "gems" / "allydemo_ruby-1.0.0.gem"
    (plugin / "vendor" / "cache" / gem.name).write_bytes(gem.read_bytes())
    before = tree(plugin)
    (outcome,) = Host(ally_home).load()
    assert outcome.ready, outcome.reason
    assert show(outcome, "allydemo_ruby")["loaded"] == {"allydemo_ruby": GREET_1}
    assert tree(plugin) == before


def test_offline_bundle_installs_in_a_fresh_home_without_the_gem_source(
    ally_home, ruby_plugin, gem_repo, tmp_path, ally_cli
):
    import shutil

    repo = private_repo(gem_repo, tmp_path)
    ruby_plugin(
        "greeter",
        'gem "allydemo_shout"\ngem "allydemo_local", path: "vendor/local"\n',
        source=repo.as_uri(),
        version="1.2.0",
        files={
            "vendor/local/allydemo_local.gemspec": LOCAL_GEMSPEC,
            "vendor/local/lib/allydemo_local.rb": "module AllydemoLocal; VERSION = '0.1.0'; end\n",
        },
    )
    archive = tmp_path / "greeter.ally.tar.gz"
    made = ally_cli("bundle", "greeter", "-o", str(archive))
    assert made.returncode == 0, made.stderr
    shutil.rmtree(repo)

    home = tmp_path / "fresh-home"
    (home / "plugins").mkdir(parents=True)
    fresh = {"ALLY_HOME": str(home)}
    installed = ally_cli("install", str(archive), "--json", "-q", env=fresh)
    assert installed.returncode == 0, installed.stderr + installed.stdout
    (plugin,) = json.loads(installed.stdout)["plugins"]
    assert plugin["status"] == "ready"
    assert plugin["packages"] == {
        "allydemo_local": "0.1.0",
        "allydemo_ruby": "2.0.0",
        "allydemo_shout": "1.0.0",
    }
    ran = ally_cli(
        "run",
        "greeter",
        "show",
        "--input",
        '{"require": ["allydemo_shout", "allydemo_local"], "who": "x"}',
        env=fresh,
    )
    assert ran.returncode == 0, ran.stderr
    assert json.loads(ran.stdout)["result"]["loaded"] == {
        "allydemo_shout": "hello x from allydemo_shout 1.0.0",
        "allydemo_local": "0.1.0",
    }
    artifacts = home / "plugins" / "greeter" / ".ally-bundle"
    lock = json.loads((artifacts / "gems.lock.json").read_text())
    files = {p["file"]: p["sha256"] for p in lock["packages"]}
    assert set(files) == {"allydemo_ruby-2.0.0.gem", "allydemo_shout-1.0.0.gem"}
    for name, digest in files.items():
        assert hashlib.sha256((artifacts / name).read_bytes()).hexdigest() == digest
    assert sorted(p.name for p in artifacts.iterdir()) == sorted(
        [*files, "Gemfile.lock", "gems.lock.json"]
    )


def test_bundle_with_a_tampered_gem_is_refused(ally_home, ruby_plugin, tmp_path, ally_cli):
    ruby_plugin("greeter", 'gem "allydemo_ruby", "1.0.0"\n')
    archive = tmp_path / "greeter.ally.tar.gz"
    assert ally_cli("bundle", "greeter", "-o", str(archive)).returncode == 0
    home = tmp_path / "fresh-home"
    (home / "plugins").mkdir(parents=True)
    fresh = {"ALLY_HOME": str(home)}
    # Unpack, then change the gem after ally checked the archive: the runtime checks again.
    assert ally_cli("install", str(archive), "-q", env=fresh).returncode == 0
    gem = home / "plugins" / "greeter" / ".ally-bundle" / "allydemo_ruby-1.0.0.gem"
    gem.write_bytes(gem.read_bytes() + b"tampered")
    outcome = Host(home).ensure("greeter", force=True)
    # The rebuild is refused; the env built before the tampering keeps serving the plugin.
    assert (outcome.status, outcome.action) == ("ready", "failed")
    assert "allydemo_ruby-1.0.0.gem in the bundle does not match its hash" in outcome.reason


def test_runtime_is_registered_through_its_entry_point(ally_cli):
    listed = ally_cli("runtimes", "--json")
    assert listed.returncode == 0, listed.stderr
    rows = {r["name"]: r for r in json.loads(listed.stdout)["runtimes"]}
    assert rows["ruby"]["serves"] == ["ruby"]
    assert rows["ruby"]["distribution"].startswith("ally-runtime-ruby ")


def processes_building_in(store_dir: Path) -> list[int]:
    """Processes whose environment points bundler into ``store_dir`` (installers ally started)."""
    needle = f"BUNDLE_GEMFILE={store_dir}{os.sep}".encode()
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/environ", "rb") as fh:
                environ = fh.read().split(b"\0")
        except OSError:
            continue
        if any(item.startswith(needle) for item in environ):
            found.append(int(entry))
    return found


def test_install_killed_mid_build_leaves_no_half_env_and_the_next_load_builds_it(
    host, ruby_plugin, gem_server
):
    ruby_plugin("greeter", 'gem "allydemo_ruby", "1.0.0"\n', source=gem_server.url)
    gem_server.hold.set()
    cli = subprocess.Popen(
        [sys.executable, "-m", "ally_core.cli", "install", "greeter", "-q"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        # bundler has resolved and is downloading the gem: the env is half built.
        assert gem_server.gem_requested.wait(120), "bundler never asked for the gem"
        os.kill(cli.pid, signal.SIGKILL)
        assert cli.wait(30) == -signal.SIGKILL
    finally:
        if cli.poll() is None:
            cli.kill()
            cli.wait()
    # bundler runs in its own session and outlives ally's SIGKILL; end the ones this test
    # started before the gem source lets them go on.
    store_dir = host.paths.store_dir
    for pid in processes_building_in(store_dir):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    gem_server.released.set()
    gem_server.hold.clear()

    unfinished = {d for d in store_dir.iterdir() if not (d / ".installed").exists()}
    assert unfinished, "the kill came after the build finished"
    assert host.store.current("greeter") is None  # nothing half-built was published

    (outcome,) = Host(host.paths.home).load()
    assert outcome.ready and outcome.action == "built", outcome.reason
    assert outcome.env.path not in unfinished
    assert show(outcome, "allydemo_ruby")["loaded"] == {"allydemo_ruby": GREET_1}
    # The next build of the same fingerprint (or, failing that, gc) removes the leftovers.
    removed = {path for path, _, why in host.gc() if why == "unfinished build"}
    assert removed <= unfinished
    assert not any(path.exists() for path in unfinished)
