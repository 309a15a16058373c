"""``watch_paths`` of the ruby runtime: every change that makes a warm load answer differently
must change the identity of a path the hook names, or the quick ``ally run`` path would trust
a record that no longer holds. :class:`ally_core.testing.WatchedEnv` checks both halves of
each change.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ally_core import Host
from ally_core.testing import WatchedEnv


def own_ruby(ready: WatchedEnv, tmp_path: Path) -> None:
    """The env's Ruby and bundler script at places this test owns (a Ruby install that can be
    taken away)."""
    install = tmp_path / "ruby-install" / "bin"
    ready.own_interpreter(install / "ruby", {"bundle_exe": install / "bundle"})


def test_hook_watch_paths_answers_for_ruby_only_and_spawns_nothing(
    host: Host, ruby_plugin: Callable[..., Path], no_spawn: Any
) -> None:
    ruby_plugin("watched", 'gem "allydemo_ruby", "1.0.0"\n')
    WatchedEnv(host, "watched").check_hook_contract(no_spawn)


def test_every_change_a_quick_health_check_sees_changes_a_watched_path(
    host: Host, ruby_plugin: Callable[..., Path], tmp_path: Path
) -> None:
    ruby_plugin("watched", 'gem "allydemo_ruby", "1.0.0"\n')
    ready = WatchedEnv(host, "watched")
    assert ready.healthy()
    env_dir = ready.env.path
    (gem_dir,) = (env_dir / "vendor" / "bundle" / "ruby").iterdir()
    for path in (
        env_dir / "bin" / "bundle",
        gem_dir,
        env_dir / "Gemfile",
        env_dir / "Gemfile.lock",
    ):
        ready.check_removal(path)
    own_ruby(ready, tmp_path)
    ready.check_removal(Path(ready.env.data["bundle_exe"]))
    ready.check_removal(Path(ready.env.interpreter.path))


def test_an_install_command_envs_gem_home_is_watched(
    host: Host, make_plugin: Callable[..., Path], gem_repo: Path, tmp_path: Path
) -> None:
    plugin = make_plugin(
        "plain",
        {
            "runtime": "ruby",
            "dependencies": {
                "install_command": "gem install --local --no-document allydemo_ruby-1.0.0.gem"
            },
        },
    )
    shutil.copyfile(
        gem_repo / "gems" / "allydemo_ruby-1.0.0.gem", plugin / "allydemo_ruby-1.0.0.gem"
    )
    ready = WatchedEnv(host, "plain")
    assert ready.healthy()
    ready.check_removal(ready.env.path / "gems")
    ready.check_removal(ready.env.path / "bin" / "bundle")
    own_ruby(ready, tmp_path)
    ready.check_removal(Path(ready.env.interpreter.path))
