"""Where ally keeps things (ALLY_HOME, platformdirs, --plugins-dir) and how settings combine."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from ally_core import ConfigError, Host, command_lookup_paths
from ally_core.paths import AllyPaths
from ally_core.testing import write_plugin


def test_ally_home_layout_keeps_the_original_design_paths(
    ally_home: Path, make_plugin: Any
) -> None:
    make_plugin(
        "greeter",
        {"runtime": "python3", "dependencies": {"file": "requirements.txt"}},
        files={"requirements.txt": "allydemo-greet==1.0.0\n"},
    )
    host = Host()  # from $ALLY_HOME
    assert host.paths.home == ally_home
    assert host.paths.plugin_dirs == (ally_home / "plugins",)
    assert host.paths.envs_dir == ally_home / "plugin-envs"
    assert host.paths.config_file == ally_home / "config.toml"
    (outcome,) = host.load()
    assert outcome.ready, outcome.reason
    assert outcome.plugin_dir == ally_home / "plugins" / "greeter"
    assert outcome.env is not None

    python3 = ally_home / "plugin-envs" / "greeter" / "bin" / "python3"
    proc = subprocess.run(
        [str(python3), "-c", "import sys, allydemo_greet; print(sys.prefix)"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert os.path.realpath(proc.stdout.strip()) == os.path.realpath(outcome.env.path)
    # plugin-envs/<name> points into the content-addressed store.
    assert os.path.realpath(python3.parent).startswith(os.path.realpath(host.paths.store_dir))


def test_plugins_dir_adds_directories_to_discover(
    ally_cli: Any, make_plugin: Any, tmp_path: Path
) -> None:
    make_plugin("in-home")
    extra_a, extra_b = tmp_path / "extra-a", tmp_path / "extra-b"
    write_plugin(extra_a, "from-a")
    write_plugin(extra_b, "from-b")

    proc = ally_cli("--plugins-dir", str(extra_a), "--plugins-dir", str(extra_b), "list", "--json")
    assert proc.returncode == 0, proc.stderr
    dirs = {p["name"]: p["dir"] for p in json.loads(proc.stdout)["plugins"]}
    assert dirs == {
        "in-home": str(Path(os.environ["ALLY_HOME"]) / "plugins" / "in-home"),
        "from-a": str(extra_a / "from-a"),
        "from-b": str(extra_b / "from-b"),
    }
    without = json.loads(ally_cli("list", "--json").stdout)["plugins"]
    assert [p["name"] for p in without] == ["in-home"]

    host = Host(plugin_dirs=[extra_a])
    assert [s.name for s in host.discover()] == ["in-home", "from-a"]


def test_home_option_overrides_ally_home(ally_cli: Any, make_plugin: Any, tmp_path: Path) -> None:
    make_plugin("in-env-home")
    other = tmp_path / "other-home"
    write_plugin(other / "plugins", "in-other-home")
    proc = ally_cli("--home", str(other), "list", "--json")
    assert [p["name"] for p in json.loads(proc.stdout)["plugins"]] == ["in-other-home"]


@pytest.fixture
def no_ally_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """No ALLY_HOME; HOME and the XDG base dirs point into tmp_path."""
    fake_home = tmp_path / "user"
    fake_home.mkdir()
    monkeypatch.delenv("ALLY_HOME", raising=False)
    monkeypatch.setenv("HOME", str(fake_home))
    for var in ("XDG_DATA_HOME", "XDG_CACHE_HOME", "XDG_CONFIG_HOME", "XDG_STATE_HOME"):
        monkeypatch.delenv(var, raising=False)
    return fake_home


@pytest.mark.skipif(sys.platform != "linux", reason="XDG layout")
def test_platformdirs_defaults_follow_home_without_ally_home(no_ally_home: Path) -> None:
    paths = AllyPaths.from_env()
    data = no_ally_home / ".local" / "share" / "ally"
    assert paths.home == data
    assert paths.plugin_dirs == (data / "plugins",)
    assert paths.envs_dir == data / "plugin-envs"
    assert paths.cache_dir == no_ally_home / ".cache" / "ally"
    assert paths.config_file == no_ally_home / ".config" / "ally" / "config.toml"


@pytest.mark.skipif(sys.platform != "linux", reason="XDG layout")
def test_platformdirs_defaults_follow_xdg_variables_in_the_cli(
    no_ally_home: Path, tmp_path: Path
) -> None:
    xdg = {
        "XDG_DATA_HOME": str(tmp_path / "xdg-data"),
        "XDG_CACHE_HOME": str(tmp_path / "xdg-cache"),
        "XDG_CONFIG_HOME": str(tmp_path / "xdg-config"),
    }
    write_plugin(tmp_path / "xdg-data" / "ally" / "plugins", "xdg-plugin")
    (tmp_path / "xdg-config" / "ally").mkdir(parents=True)
    (tmp_path / "xdg-config" / "ally" / "config.toml").write_text("jobs = 3\n")
    env = {**os.environ, **xdg}
    proc = subprocess.run(
        [sys.executable, "-m", "ally_core.cli", "config", "--json"],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout)
    assert data["paths"] == {
        "home": xdg["XDG_DATA_HOME"] + "/ally",
        "plugin_dirs": [xdg["XDG_DATA_HOME"] + "/ally/plugins"],
        "envs_dir": xdg["XDG_DATA_HOME"] + "/ally/plugin-envs",
        "cache_dir": xdg["XDG_CACHE_HOME"] + "/ally",
        "config_file": xdg["XDG_CONFIG_HOME"] + "/ally/config.toml",
    }
    assert data["settings"]["jobs"] == {
        "value": 3,
        "source": xdg["XDG_CONFIG_HOME"] + "/ally/config.toml",
    }
    listed = subprocess.run(
        [sys.executable, "-m", "ally_core.cli", "list", "--json"],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert [p["name"] for p in json.loads(listed.stdout)["plugins"]] == ["xdg-plugin"]


def write_config(home: Path, text: str) -> Path:
    path = home / "config.toml"
    path.write_text(text, "utf-8")
    return path


def test_settings_precedence_default_file_env_argument(
    ally_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = write_config(
        ally_home,
        "[ally]\njobs = 3\ntool_timeout = 30\noffline = true\npass_env = ['A', 'B']\n"
        "[ally.index]\nno_index = true\n",
    )
    monkeypatch.setenv("ALLY_TOOL_TIMEOUT", "45")
    monkeypatch.setenv("ALLY_INSTALLER", "pip")
    host = Host(ally_home, settings={"offline": False})
    s = host.settings
    assert (s.jobs, s.sources["jobs"]) == (3, str(config))
    assert (s.tool_timeout, s.sources["tool_timeout"]) == (45.0, "$ALLY_TOOL_TIMEOUT")
    assert (s.installer, s.sources["installer"]) == ("pip", "$ALLY_INSTALLER")
    assert (s.offline, s.sources["offline"]) == (False, "argument")
    assert (s.pass_env, s.sources["pass_env"]) == (("A", "B"), str(config))
    assert (s.output_limit, s.sources["output_limit"]) == (10 * 1024 * 1024, "default")
    assert s.index.no_index is True


def test_config_file_may_use_top_level_keys(ally_home: Path) -> None:
    write_config(ally_home, "jobs = 2\n")
    assert Host(ally_home).settings.jobs == 2


@pytest.mark.parametrize(
    ("text", "env", "expected"),
    [
        ("jobs = 0\n", {}, "jobs: expected a positive integer"),
        ("jobs = 'x'\n", {}, "jobs: expected a positive integer, got 'x'"),
        ("offline = 'yes please'\n", {}, "offline: expected a boolean"),
        ("installer = 'conda'\n", {}, "installer: expected one of auto, uv, pip"),
        ("colour = 'red'\n", {}, "unknown setting(s): colour"),
        ("jobs = [\n", {}, "config.toml: "),
        ("", {"ALLY_OFFLINE": "maybe"}, "$ALLY_OFFLINE: expected a boolean"),
        ("", {"ALLY_TOOL_TIMEOUT": "-1"}, "$ALLY_TOOL_TIMEOUT: expected a positive number"),
    ],
)
def test_invalid_settings_are_one_clear_config_error(
    ally_home: Path,
    monkeypatch: pytest.MonkeyPatch,
    text: str,
    env: dict[str, str],
    expected: str,
) -> None:
    write_config(ally_home, text)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    with pytest.raises(ConfigError) as info:
        Host(ally_home)
    assert expected in str(info.value)
    assert "\n" not in str(info.value)


def test_ally_config_shows_each_value_and_its_source(ally_cli: Any, ally_home: Path) -> None:
    config = write_config(ally_home, "[ally]\njobs = 3\n")
    proc = ally_cli("config", "--json", env={"ALLY_RETRY_AFTER": "5"})
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout)
    assert data["ally"] == 1
    settings = data["settings"]
    assert settings["jobs"] == {"value": 3, "source": str(config)}
    assert settings["retry_after"] == {"value": 5.0, "source": "$ALLY_RETRY_AFTER"}
    assert settings["installer"] == {"value": "auto", "source": "default"}
    assert data["paths"]["home"] == str(ally_home)
    assert data["paths"]["plugin_dirs"] == [str(ally_home / "plugins")]

    text = ally_cli("config", env={"ALLY_RETRY_AFTER": "5"}).stdout.splitlines()
    assert f"jobs = 3  ({config}; ALLY_JOBS: parallel env builds)" in text
    assert any(line.startswith("retry_after = 5.0  ($ALLY_RETRY_AFTER; ") for line in text)
    assert any(line.startswith("installer = 'auto'  (default; ") for line in text)
    assert f"home: {ally_home}" in text


def test_ally_config_prints_paths_not_python_reprs(
    ally_cli: Any, ally_home: Path, tmp_path: Path
) -> None:
    proc = ally_cli("--plugins-dir", str(tmp_path), "config")
    assert proc.returncode == 0, proc.stderr
    assert "PosixPath(" not in proc.stdout
    assert "plugin_dirs: " in proc.stdout


def test_contained_path_refuses_a_drive_relative_name(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # On Windows "C:req.txt" is relative to drive C's current directory, not to the plugin
    # dir: it is not a name inside it. (ntpath's splitdrive stands in for Windows here.)
    import ntpath

    from ally_core import paths

    assert paths.contained_path(tmp_path, "C:req.txt") == tmp_path / "C:req.txt"  # POSIX name
    monkeypatch.setattr(paths.os.path, "splitdrive", ntpath.splitdrive)
    assert paths.contained_path(tmp_path, "C:req.txt") is None
    assert paths.contained_path(tmp_path, "req.txt") == tmp_path / "req.txt"


def test_command_lookup_paths_are_the_files_which_looks_at_up_to_the_one_it_finds(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    dirs = {name: tmp_path / name for name in ("plain", "not-exec", "a-dir", "exec", "after")}
    for directory in dirs.values():
        directory.mkdir()
    (dirs["not-exec"] / "tool").write_text("#!/bin/sh\n")
    (dirs["a-dir"] / "tool").mkdir()
    (dirs["exec"] / "tool").write_text("#!/bin/sh\n")
    (dirs["exec"] / "tool").chmod(0o755)
    (dirs["after"] / "tool").symlink_to(dirs["exec"] / "tool")
    order = ["plain", "not-exec", "plain", "a-dir", "exec", "after"]
    path = os.pathsep.join(str(dirs[name]) for name in order)
    expected = [str(dirs[name] / "tool") for name in ("plain", "not-exec", "a-dir", "exec")]
    assert command_lookup_paths("tool", path) == expected
    assert shutil.which("tool", path=path) == expected[-1]

    # Found nowhere: every entry, each once.
    without = os.pathsep.join(str(dirs[name]) for name in ("plain", "a-dir", "plain"))
    assert shutil.which("tool", path=without) is None
    assert command_lookup_paths("tool", without) == [
        str(dirs["plain"] / "tool"),
        str(dirs["a-dir"] / "tool"),
    ]
    assert command_lookup_paths("tool", "") == []
    # A relative entry stays relative; a command with a directory part is not looked up.
    assert command_lookup_paths("tool", "bin") == [os.path.join("bin", "tool")]
    assert command_lookup_paths("./tool", path) == ["./tool"]

    # Without ``path``: $PATH, else the system's default search path, as which reads them.
    monkeypatch.setenv("PATH", path)
    assert command_lookup_paths("tool") == expected
    monkeypatch.delenv("PATH")
    found = shutil.which("sh")
    assert found is not None
    assert command_lookup_paths("sh")[-1] == found
