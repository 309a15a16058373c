"""``watch_paths`` of the ruby runtime: every change that makes a warm load answer differently
must change the identity of a path the hook names.

The quick ``ally run`` path trusts what the full path recorded while each watched path keeps
its ``stat`` identity (``[st_size, st_mtime_ns, st_ino, st_ctime_ns]`` following symlinks,
``None`` when absent) and the environment variables are the same. So for each change below the
test checks both halves: what the runtime's warm hooks answer (``env_context``,
``env_identity``, ``identity_files``, a quick ``health_check``) changes, and so does the
identity of at least one path ``watch_paths`` named before the change.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Optional

import attrs

from ally_core import EnvInfo, EnvSpec, Host

Identity = Optional[list[int]]


def identities(paths: Sequence[Path]) -> dict[str, Identity]:
    """What the quick path compares: each path's identity, following symlinks."""
    out: dict[str, Identity] = {}
    for path in paths:
        try:
            st = os.stat(path)
        except OSError:
            out[str(path)] = None
            continue
        out[str(path)] = [st.st_size, st.st_mtime_ns, st.st_ino, st.st_ctime_ns]
    return out


class Ready:
    """A plugin with a ready env, and the answers of the hooks the quick path stands in for."""

    def __init__(self, host: Host, name: str) -> None:
        outcome = host.ensure(name)
        assert outcome.ready, outcome.reason
        assert outcome.manifest is not None
        self.host = host
        self.spec: EnvSpec = host.spec_for(outcome.manifest, outcome.plugin_dir)
        current = host.store.current(name)
        assert current is not None
        self.env: EnvInfo = current[1].env

    def watched(self) -> list[Path]:
        paths = self.host.dispatch.watch_paths(self.spec, self.env)
        assert paths is not None
        return list(paths)

    def answers(self) -> list[Any]:
        dispatch, spec = self.host.dispatch, self.spec
        return [
            dispatch.env_context(spec.runtime, self.host.env_options()),
            dispatch.env_identity(spec),
            dispatch.identity_files(spec),
            dispatch.health_check(spec, self.env, deep=False),
        ]

    def healthy(self) -> bool:
        return self.host.dispatch.health_check(self.spec, self.env, deep=False).ok

    def check(self, what: str, change: Callable[[], object]) -> None:
        """``change`` makes the warm answers differ, and a watched identity with them."""
        watched = self.watched()
        before, answers = identities(watched), self.answers()
        change()
        assert self.answers() != answers, f"{what}: the warm hooks answer the same"
        after = identities(watched)
        assert after != before, f"{what}: no watched path changed ({sorted(before)})"

    def check_removal(self, path: Path) -> None:
        """Moving ``path`` away is seen; once it is back, the env is healthy again."""
        away = path.with_name(path.name + ".away")
        self.check(f"{path} removed", lambda: path.rename(away))
        away.rename(path)
        assert self.healthy()

    def own_ruby(self, tmp_path: Path) -> None:
        """The env's Ruby and bundler script at places this test owns (a Ruby install that
        can be taken away)."""
        ruby = tmp_path / "ruby-install" / "bin" / "ruby"
        ruby.parent.mkdir(parents=True)
        ruby.symlink_to(self.env.interpreter.path)
        bundle_exe = tmp_path / "ruby-install" / "bin" / "bundle"
        shutil.copyfile(str(self.env.data["bundle_exe"]), bundle_exe)
        self.env = attrs.evolve(
            self.env,
            interpreter=attrs.evolve(self.env.interpreter, path=str(ruby)),
            data={**self.env.data, "bundle_exe": str(bundle_exe)},
        )
        assert self.healthy()


def test_hook_watch_paths_answers_for_ruby_only_and_spawns_nothing(
    host: Host, ruby_plugin: Callable[..., Path], no_spawn: Any
) -> None:
    ruby_plugin("watched", 'gem "allydemo_ruby", "1.0.0"\n')
    ready = Ready(host, "watched")
    foreign = attrs.evolve(ready.spec, runtime="no-such-runtime")
    with no_spawn():
        assert ready.host.hook.watch_paths(spec=foreign, env=ready.env) is None
        paths = ready.host.hook.watch_paths(spec=ready.spec, env=ready.env)
    assert paths and all(isinstance(p, Path) for p in paths)


def test_every_change_a_quick_health_check_sees_changes_a_watched_path(
    host: Host, ruby_plugin: Callable[..., Path], tmp_path: Path
) -> None:
    ruby_plugin("watched", 'gem "allydemo_ruby", "1.0.0"\n')
    ready = Ready(host, "watched")
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
    ready.own_ruby(tmp_path)
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
    ready = Ready(host, "plain")
    assert ready.healthy()
    ready.check_removal(ready.env.path / "gems")
    ready.check_removal(ready.env.path / "bin" / "bundle")
    ready.own_ruby(tmp_path)
    ready.check_removal(Path(ready.env.interpreter.path))
