"""The warm index: a new process loads ready plugins from one file, and still sees every change.

``<envs dir>/.state/warm-index.<python tag>.bin`` keeps what a warm load derives from files
(manifests, request keys, markers). A fresh :class:`~ally_core.Host` must use it without parsing
``plugin.json`` files or calling ``env_identity``, must notice every edit it depends on (the
manifest, the dependency file, pip/ally index settings, the env itself, the base interpreter),
and must shrug off an index that is corrupt, foreign, unwritable or written by two processes.

Real venvs built by real uv from the session's local wheelhouse; no network.
"""

from __future__ import annotations

import binascii
import contextlib
import json
import marshal
import os
import shutil
import subprocess
import sys
import types
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Callable, Optional

import attrs
import pytest

import ally_core.discovery
import ally_core.store
from ally_core import EnvInfo, EnvSpec, Health, Host, InstallResult, Interpreter, hookimpl
from ally_core.__about__ import __version__
from ally_core.keys import KeyMaker
from ally_core.manifest import load_manifest
from ally_core.plugin_manager import make_plugin_manager
from ally_core.warm_index import INDEX_NAME, decode, encode, file_identity

MAIN = (
    "import json, sys, allydemo_greet\n"
    "args = json.load(sys.stdin)\n"
    "print(json.dumps({'success': True, 'result': allydemo_greet.greet(args.get('who', 'x'))}))\n"
)
HELLO = {"name": "hello", "command": "python3", "args": ["main.py"]}
#: name -> (runtime value, requirements): alpha and beta share one env, gamma has its own
#: and uses the other spelling of the python runtime.
WITH_DEPS = {
    "alpha": ("python3", "allydemo-greet==1.0.0\n"),
    "beta": ("python3", "allydemo-greet==1.0.0\n"),
    "gamma": ("python", "allydemo-shout==1.0.0\n"),
}


@pytest.fixture(autouse=True)
def files_settle_at_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tests write plugins and load them within milliseconds. ally keeps what it derives
    from files changed in the last seconds out of the index (their identity could repeat on
    filesystems with coarse timestamps); here files count as settled at once. The settle
    window itself is tested by ``test_fresh_files_are_indexed_only_once_they_settled``."""
    monkeypatch.setattr(ally_core.discovery, "SETTLE_NS", 0)


def index_path(home: Path) -> Path:
    return home / "plugin-envs" / ".state" / INDEX_NAME


def read_index(home: Path) -> dict[str, Any]:
    """The tables of the index on disk, which must be this format's, ally's and Python's."""
    data = decode(index_path(home).read_bytes())
    assert data is not None, "the index is damaged or of another version"
    return data


def write_index(home: Path, tables: dict[str, Any]) -> None:
    index_path(home).write_bytes(encode(tables))


def by_name(outcomes: list[Any]) -> dict[str, Any]:
    return {o.name: o for o in outcomes}


@contextlib.contextmanager
def hook_calls(host: Host) -> Iterator[list[tuple[str, dict[str, Any]]]]:
    """Every hook call the host makes inside the block, as ``(hook name, kwargs)``."""
    calls: list[tuple[str, dict[str, Any]]] = []

    def before(hook_name: str, hook_impls: Any, kwargs: dict[str, Any]) -> None:
        calls.append((hook_name, dict(kwargs)))

    def after(outcome: Any, hook_name: str, hook_impls: Any, kwargs: Any) -> None:
        return None

    undo = host.pm.add_hookcall_monitoring(before, after)
    try:
        yield calls
    finally:
        undo()


def identity_calls(calls: list[tuple[str, dict[str, Any]]]) -> list[str]:
    """The plugins whose request key was computed by asking the runtime."""
    return sorted(kw["spec"].plugin_name for name, kw in calls if name == "env_identity")


@pytest.fixture
def ready(ally_home: Path, make_plugin: Callable[..., Path]) -> dict[str, Path]:
    """Three python plugins with ready envs (two shared) and one without dependencies, loaded
    once by a first Host (which wrote the index)."""
    dirs = {}
    for name, (runtime, requirements) in WITH_DEPS.items():
        dirs[name] = make_plugin(
            name,
            {"runtime": runtime, "dependencies": {"file": "requirements.txt"}, "tools": [HELLO]},
            files={"requirements.txt": requirements, "main.py": MAIN},
        )
    dirs["plain"] = make_plugin("plain", {"tools": [{"name": "t", "command": "true"}]})
    outcomes = Host(ally_home).load()
    assert all(o.ready for o in outcomes), [(o.name, o.reason) for o in outcomes]
    assert sorted(o.name for o in outcomes) == sorted(dirs)
    return dirs


def assert_all_ready_and_warm(outcomes: list[Any], names: Optional[set[str]] = None) -> None:
    states = {o.name: (o.status, o.action, o.reason) for o in outcomes}
    assert states == {n: ("ready", "none", "") for n in (names or states)}, states


def assert_complete_index(home: Path, dirs: dict[str, Path]) -> None:
    """The index on disk is this version's and names every plugin with dependencies."""
    data = read_index(home)
    assert set(data["keys"]) == {str(dirs[n]) for n in WITH_DEPS}
    assert set(data["manifests"]) == {str(d / "plugin.json") for d in dirs.values()}
    for table in ("keys", "manifests", "markers"):
        for entry in data[table].values():
            assert isinstance(entry, list) and len(entry) == 2, entry


# -- a new process trusts the index ------------------------------------------------------------


def test_new_host_loads_ready_plugins_from_the_index_without_parsing_or_env_identity(
    ally_home: Path, ready: dict[str, Path], no_spawn: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The index the building load wrote is already complete: the very next process uses it.
    assert_complete_index(ally_home, ready)
    written = file_identity(str(index_path(ally_home)))

    def refuse(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError(f"parsed a file the index holds: {args!r}")

    host = Host(ally_home)
    with monkeypatch.context() as m, hook_calls(host) as calls, no_spawn():
        # Neither a plugin.json nor an env marker is parsed: both come from the index.
        m.setattr(ally_core.discovery, "load_manifest", refuse)
        m.setattr(ally_core.store, "json", types.SimpleNamespace(loads=refuse, dumps=json.dumps))
        outcomes = host.load()
    assert_all_ready_and_warm(outcomes, set(ready))
    assert identity_calls(calls) == []
    # env_context once per runtime value in use, not once per plugin.
    contexts = sorted(kw["runtime"] for name, kw in calls if name == "env_context")
    assert contexts == ["python", "python3"]
    assert {name for name, _ in calls} <= {"env_context", "health_check"}

    loaded = by_name(outcomes)
    # Nothing new was learnt: the index is not rewritten by a warm load.
    assert file_identity(str(index_path(ally_home))) == written
    first = by_name(Host(ally_home).load())
    for name in WITH_DEPS:
        assert loaded[name].env.path == first[name].env.path
        assert loaded[name].packages == first[name].packages
        assert [t.name for t in loaded[name].tools] == ["hello"]
    assert loaded["alpha"].packages == {"allydemo-greet": "1.0.0"}
    assert [t.name for t in loaded["plain"].tools] == ["t"]

    result = loaded["gamma"].tool("hello").call({"who": "index"})
    assert result.success, result.error
    assert result.result == "hello index from allydemo_greet 2.0.0"


# -- changes are seen through the index --------------------------------------------------------


def test_edited_plugin_json_is_read_again_by_a_new_host(
    ally_home: Path, ready: dict[str, Path], no_spawn: Any
) -> None:
    path = ready["alpha"] / "plugin.json"
    manifest = json.loads(path.read_text("utf-8"))
    manifest["tools"].append({"name": "extra", "command": "python3", "args": ["main.py"]})
    path.write_text(json.dumps(manifest), "utf-8")
    host = Host(ally_home)
    with hook_calls(host) as calls, no_spawn():
        outcomes = host.load()
    assert_all_ready_and_warm(outcomes)
    assert [t.name for t in by_name(outcomes)["alpha"].tools] == ["hello", "extra"]
    # Only the edited plugin's key was computed again.
    assert identity_calls(calls) == ["alpha"]

    # Same size, same inode, rewritten in place: still seen.
    text = path.read_bytes()
    with open(path, "r+b") as fh:
        fh.write(text.replace(b'"extra"', b'"other"'))
    assert path.stat().st_size == len(text)
    with no_spawn():
        outcomes = Host(ally_home).load()
    assert [t.name for t in by_name(outcomes)["alpha"].tools] == ["hello", "other"]


def test_edited_requirements_are_seen_by_status_and_rebuilt_by_load(
    ally_home: Path, ready: dict[str, Path], no_spawn: Any
) -> None:
    requirements = ready["alpha"] / "requirements.txt"
    # The same number of bytes, rewritten in place.
    with open(requirements, "r+b") as fh:
        fh.write(b"allydemo-greet==2.0.0\n")
    with no_spawn():
        states = {o.name: (o.status, o.reason) for o in Host(ally_home).status()}
    assert states["alpha"] == ("pending", "needs rebuild: requirements.txt changed")
    assert states["beta"] == states["gamma"] == ("ready", "")

    rebuilt = by_name(Host(ally_home).load())
    assert rebuilt["alpha"].ready and rebuilt["alpha"].action == "repaired"
    assert rebuilt["alpha"].repair_reason == "requirements.txt changed"
    assert rebuilt["alpha"].packages == {"allydemo-greet": "2.0.0"}
    assert rebuilt["beta"].action == "none"
    with no_spawn():
        again = by_name(Host(ally_home).load())
    assert_all_ready_and_warm(list(again.values()))
    assert again["alpha"].env.path == rebuilt["alpha"].env.path


def _pip_index_url(home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PIP_INDEX_URL", "http://127.0.0.1:9/simple")


def _ally_config(home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = home / "config.toml"
    (tmp_path / "more-wheels").mkdir()
    extra = json.dumps(str(tmp_path / "more-wheels"))
    config.write_text(
        config.read_text("utf-8").replace("find_links = [", f"find_links = [{extra}, ")
    )


def _pip_config_file(home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    conf = tmp_path / "pip.conf"
    conf.write_text("[global]\n", "utf-8")
    monkeypatch.setenv("PIP_CONFIG_FILE", str(conf))
    # This Host indexes keys under the new file; editing the file must change them again.
    with hook_calls(host := Host(home)) as calls:
        host.status()
    assert identity_calls(calls) == sorted(WITH_DEPS)
    conf.write_text("[global]\nextra-index-url = http://127.0.0.1:9/simple\n", "utf-8")


@pytest.mark.parametrize(
    "change",
    [_pip_index_url, _ally_config, _pip_config_file],
    ids=["PIP_INDEX_URL", "ally-config-index", "pip-conf-edited"],
)
def test_changed_index_configuration_recomputes_every_key(
    ally_home: Path,
    ready: dict[str, Path],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    no_spawn: Any,
    change: Callable[..., None],
) -> None:
    old = Host(ally_home)
    before = {n: old.keys.spec_and_key(old.source(n))[1] for n in WITH_DEPS}
    change(ally_home, tmp_path, monkeypatch)
    host = Host(ally_home)
    with hook_calls(host) as calls, no_spawn():
        states = {o.name: (o.status, o.reason) for o in host.status()}
    assert identity_calls(calls) == sorted(WITH_DEPS)
    assert states == {
        "alpha": ("pending", "needs rebuild: package index settings changed"),
        "beta": ("pending", "needs rebuild: package index settings changed"),
        "gamma": ("pending", "needs rebuild: package index settings changed"),
        "plain": ("ready", ""),
    }
    after = {n: host.keys.spec_and_key(host.source(n))[1] for n in WITH_DEPS}
    assert all(after[n] != before[n] for n in WITH_DEPS)


def test_env_deleted_behind_allys_back_is_never_reported_ready(
    ally_home: Path, ready: dict[str, Path], no_spawn: Any
) -> None:
    shared = Path(os.path.realpath(ally_home / "plugin-envs" / "alpha"))
    assert shared == Path(os.path.realpath(ally_home / "plugin-envs" / "beta"))
    shutil.rmtree(shared)
    with no_spawn():
        states = {o.name: (o.status, o.reason) for o in Host(ally_home).status()}
        loaded = by_name(Host(ally_home).load(["gamma", "plain"]))
    gone = ("pending", "needs rebuild: its env is missing or incomplete")
    assert states["alpha"] == states["beta"] == gone
    assert states["gamma"] == ("ready", "")
    assert_all_ready_and_warm(list(loaded.values()))

    rebuilt = by_name(Host(ally_home).load())
    for name in ("alpha", "beta"):
        assert rebuilt[name].ready, rebuilt[name].reason
        assert rebuilt[name].action in {"built", "shared"}
        assert (rebuilt[name].env.path / ".installed").is_file()
    assert rebuilt["alpha"].tool("hello").call({"who": "b"}).success
    with no_spawn():
        assert_all_ready_and_warm(Host(ally_home).load())


def test_base_interpreter_replaced_in_place_is_seen_with_keys_from_the_index(
    ally_home: Path,
    make_plugin: Any,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    no_spawn: Any,
) -> None:
    source = Path.home() / ".pyenv" / "versions" / "3.12.1"
    if not source.is_dir():
        pytest.skip(f"{source} is not installed")
    copy = tmp_path / "py"
    try:
        subprocess.run(["cp", "-al", str(source), str(copy)], check=True, capture_output=True)
    except subprocess.CalledProcessError:
        shutil.copytree(source, copy, symlinks=True)
    binary = copy / "bin" / "python3.12"
    monkeypatch.setenv("ALLY_PYTHON", str(binary))
    make_plugin(
        "pinned",
        {"runtime": "python3", "dependencies": {"file": "requirements.txt"}, "tools": [HELLO]},
        files={"requirements.txt": "allydemo-greet==1.0.0\n", "main.py": MAIN},
    )
    (first,) = Host(ally_home).load()
    assert first.ready and first.env.interpreter.version == "3.12.1", first.reason

    # What a package manager does on upgrade: a new file renamed over the old one.
    fresh = binary.with_name(".python3.12.new")
    shutil.copy2(binary, fresh)
    os.replace(fresh, binary)
    host = Host(ally_home)
    with hook_calls(host) as calls, no_spawn():
        (status,) = host.status()
    assert identity_calls(calls) == []  # the key came from the index ...
    assert status.status == "pending"  # ... and still
    assert status.reason == f"needs rebuild: interpreter {binary} changed since the env was " + (
        "built (was python 3.12.1)"
    )

    (outcome,) = Host(ally_home).load()
    assert outcome.action == "repaired"
    assert "changed since the env was built" in outcome.repair_reason
    with no_spawn():
        assert_all_ready_and_warm(Host(ally_home).load())


@pytest.mark.parametrize("same_host", [False, True], ids=["new-host", "same-host"])
@pytest.mark.parametrize(
    ("dep_file", "real_file", "moved"),
    [
        ("deps/requirements.txt", "deps/requirements.txt", "deps"),
        ("requirements.txt", "requirements.txt", "requirements.txt"),
        # requirements.txt is a symlink to a file in a directory of the plugin: moving that
        # directory out changes neither the link nor the file it reaches.
        ("requirements.txt", "sub/req.txt", "sub"),
    ],
    ids=["its-directory", "the-file-itself", "the-directory-a-symlink-points-into"],
)
def test_dependency_file_moved_outside_behind_a_symlink_is_refused_with_an_index_too(
    ally_home: Path,
    make_plugin: Any,
    tmp_path: Path,
    dep_file: str,
    real_file: str,
    moved: str,
    same_host: bool,
) -> None:
    plugin = make_plugin(
        "linked",
        {"runtime": "python3", "dependencies": {"file": dep_file}},
        files={real_file: "allydemo-greet==1.0.0\n"},
    )
    if real_file != dep_file:
        os.symlink(real_file, plugin / dep_file)
    host = Host(ally_home)
    (first,) = host.load()
    assert first.ready, first.reason
    # The file's inode and content are unchanged (renaming a directory does not even touch
    # the identities of the files in it), but it now lies outside the plugin.
    os.rename(plugin / moved, tmp_path / "outside")
    os.symlink(tmp_path / "outside", plugin / moved)
    (outcome,) = (host if same_host else Host(ally_home)).load()
    assert outcome.status == "blocked"
    assert "outside the plugin directory" in outcome.reason


# -- a bad index is an empty index -------------------------------------------------------------


def _garbage(data: dict[str, Any], dirs: dict[str, Path]) -> bytes:
    return b"\x00\xff\xfenot an index at all\x89PNG"


def _truncated(data: dict[str, Any], dirs: dict[str, Path]) -> bytes:
    blob = encode(data)
    return blob[: len(blob) // 2]


def _flipped_bit(data: dict[str, Any], dirs: dict[str, Path]) -> bytes:
    # Damage the CRC does not let through: a valid header, one payload byte changed.
    blob = bytearray(encode(data))
    blob[-20] ^= 0x01
    return bytes(blob)


def _wrong_shape(data: dict[str, Any], dirs: dict[str, Path]) -> bytes:
    return encode(
        {
            "keys": {str(dirs["alpha"]): "nonsense", str(dirs["beta"]): [1, 2, 3]},
            "manifests": {"x": [1], str(dirs["alpha"] / "plugin.json"): None},
            "markers": ["not", "a", "table"],  # type: ignore[dict-item]
        }
    )


def _not_an_object(data: dict[str, Any], dirs: dict[str, Path]) -> bytes:
    blob = encode({})
    header = blob[: blob.index(b"\n") + 1]
    payload = marshal.dumps([1, 2, 3])
    return header + binascii.crc32(payload).to_bytes(4, "big") + payload


def _json_index(data: dict[str, Any], dirs: dict[str, Path]) -> bytes:
    # What an older ally wrote (a JSON document), at the path of this one.
    return json.dumps({"format": 1, "ally": __version__, **data}).encode()


def _other_version(data: dict[str, Any], dirs: dict[str, Path]) -> bytes:
    return encode(data, version="0.0.0+another-build")


def _other_format(data: dict[str, Any], dirs: dict[str, Path]) -> bytes:
    return encode(data, format=999)


@pytest.mark.parametrize(
    "spoil",
    [
        _garbage,
        _truncated,
        _flipped_bit,
        _wrong_shape,
        _not_an_object,
        _json_index,
        _other_version,
        _other_format,
        None,
    ],
    ids=[
        "garbage",
        "truncated",
        "flipped-bit",
        "wrong-shape",
        "not-an-object",
        "json-of-an-older-ally",
        "other-version",
        "other-format",
        "empty-file",
    ],
)
def test_unusable_index_is_ignored_and_rewritten(
    ally_home: Path, ready: dict[str, Path], no_spawn: Any, spoil: Any
) -> None:
    path = index_path(ally_home)
    path.write_bytes(spoil(read_index(ally_home), ready) if spoil else b"")
    host = Host(ally_home)
    with hook_calls(host) as calls, no_spawn():
        outcomes = host.load()
    assert_all_ready_and_warm(outcomes, set(ready))
    # Nothing of it was used (not even the tables of another version) ...
    assert identity_calls(calls) == sorted(WITH_DEPS)
    # ... and a valid one replaced it, which the next process uses.
    assert_complete_index(ally_home, ready)
    host = Host(ally_home)
    with hook_calls(host) as calls, no_spawn():
        assert_all_ready_and_warm(host.load(), set(ready))
    assert identity_calls(calls) == []


@pytest.mark.parametrize(
    "table",
    [
        "manifests",
        "keys",
        "markers",
    ],
)
def test_entries_with_current_identities_but_values_of_another_shape_are_ignored(
    ally_home: Path, ready: dict[str, Path], no_spawn: Any, table: str
) -> None:
    # What a build of ally with the same version but another value layout would leave.
    data = read_index(ally_home)
    for entry in data[table].values():
        entry[1] = {"format": 999}
    write_index(ally_home, data)
    with no_spawn():
        assert_all_ready_and_warm(Host(ally_home).load(), set(ready))


def _state_dir_read_only(state: Path) -> Callable[[], None]:
    os.chmod(state, 0o500)
    probe = state / "probe"
    try:
        probe.write_bytes(b"")
    except PermissionError:
        return lambda: os.chmod(state, 0o700)
    probe.unlink()
    os.chmod(state, 0o700)
    pytest.skip("chmod does not stop this user writing (root)")


def _directory_in_the_way(state: Path) -> Callable[[], None]:
    (state / INDEX_NAME).mkdir()
    return lambda: None


@pytest.mark.parametrize(
    "block", [_state_dir_read_only, _directory_in_the_way], ids=["chmod-0500", "dir-in-the-way"]
)
def test_index_that_cannot_be_written_still_loads(
    ally_home: Path, ready: dict[str, Path], no_spawn: Any, block: Callable[[Path], Any]
) -> None:
    state = index_path(ally_home).parent
    index_path(ally_home).unlink()
    before = sorted(os.listdir(state))
    restore = block(state)
    try:
        for _ in range(2):
            with no_spawn():
                assert_all_ready_and_warm(Host(ally_home).load(), set(ready))
                assert_all_ready_and_warm(Host(ally_home).status(), set(ready))
        assert not index_path(ally_home).is_file()
        # No half-written temporary file is left behind.
        assert not [n for n in os.listdir(state) if n.endswith(".tmp")]
        assert sorted(os.listdir(state)) in (before, sorted([*before, INDEX_NAME]))
    finally:
        restore()


CONCURRENT_LOADS = """\
import json, os, sys, time
import ally_core.discovery
from ally_core import Host
from ally_core.warm_index import decode
ally_core.discovery.SETTLE_NS = 0  # as in this module's tests: the plugins were just written
home, index, rounds, gate = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
# Start together: each says it is ready, then waits for the other.
open(os.path.join(gate, str(os.getpid())), "w").close()
deadline = time.monotonic() + 60
while len(os.listdir(gate)) < 2:
    if time.monotonic() > deadline:
        sys.exit("the other process never started")
    time.sleep(0.001)
for i in range(rounds):
    try:
        os.unlink(index)  # so that every round computes and writes the index again
    except FileNotFoundError:
        pass
    bad = [(o.name, o.status, o.action, o.reason) for o in Host(home).load()
           if not o.ready or o.action != "none"]
    if bad:
        sys.exit(f"round {i}: {bad}")
    # The other process may be writing it right now: still, only complete files are seen.
    try:
        with open(index, "rb") as fh:
            if decode(fh.read()) is None:
                sys.exit(f"round {i}: an incomplete or damaged index was seen")
    except FileNotFoundError:
        pass
"""


def test_two_processes_loading_at_once_both_succeed_and_leave_a_valid_index(
    ally_home: Path, ready: dict[str, Path], no_spawn: Any, tmp_path: Path
) -> None:
    gate = tmp_path / "gate"
    gate.mkdir()
    argv = [sys.executable, "-c", CONCURRENT_LOADS, str(ally_home), str(index_path(ally_home))]
    procs = [
        subprocess.Popen(
            [*argv, "30", str(gate)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            # The ally_core under test, also when it is not the installed one.
            env={**os.environ, "PYTHONPATH": str(Path(ally_core.__file__).parents[1])},
        )
        for _ in range(2)
    ]
    try:
        for proc in procs:
            _out, err = proc.communicate(timeout=120)
            assert proc.returncode == 0, err.decode()
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    assert_complete_index(ally_home, ready)
    state = index_path(ally_home).parent
    assert not [n for n in os.listdir(state) if n.endswith(".tmp")]
    host = Host(ally_home)
    with hook_calls(host) as calls, no_spawn():
        assert_all_ready_and_warm(host.load(), set(ready))
    assert identity_calls(calls) == []


UPGRADED_INSTALLERS_LOAD = """\
import json, sys
from ally_core import Host
print(json.dumps([[o.name, o.status, o.action, o.reason] for o in Host(sys.argv[1]).load()]))
"""


def test_newer_uv_and_virtualenv_do_not_rebuild_ready_envs(
    ally_home: Path, ready: dict[str, Path], tmp_path: Path
) -> None:
    # What ``pip install -U ally-core`` leaves behind: other versions of the installers. An
    # env one of them built is as good as one the next builds: upgrading must not rebuild.
    site = tmp_path / "upgraded-site"
    for dist in ("uv-99.0.0.dist-info", "virtualenv-99.0.0.dist-info"):
        (site / dist).mkdir(parents=True)
        (site / dist / "METADATA").write_text(f"Name: {dist.split('-')[0]}\nVersion: 99.0.0\n")
    index_path(ally_home).unlink()  # so that every key is computed by env_identity again
    pythonpath = os.pathsep.join([str(site), str(Path(ally_core.__file__).parents[1])])
    proc = subprocess.run(
        [sys.executable, "-c", UPGRADED_INSTALLERS_LOAD, str(ally_home)],
        env={**os.environ, "PYTHONPATH": pythonpath},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    states = {
        name: (status, action, reason) for name, status, action, reason in json.loads(proc.stdout)
    }
    assert states == {n: ("ready", "none", "") for n in ready}, states


def test_gc_removes_unfinished_index_writes_and_the_json_index_of_an_older_ally(
    ally_home: Path, ready: dict[str, Path], no_spawn: Any
) -> None:
    state = index_path(ally_home).parent
    junk = {
        state / f".{INDEX_NAME}.0badc0de.tmp": "unfinished warm-index write",
        state / ".warm-index.cpython-399.bin.12345678.tmp": "unfinished warm-index write",
        state / "warm-index.json": "warm index of an older ally",
    }
    for path in junk:
        path.write_bytes(b"{}")
    host = Host(ally_home)
    listed = {path: why for path, _size, why in host.gc(dry_run=True)}
    assert {p: listed.get(p) for p in junk} == junk
    assert all(p.exists() for p in junk)
    removed = {path: why for path, _size, why in host.gc()}
    assert {p: removed.get(p) for p in junk} == junk
    assert not [p for p in junk if p.exists()]
    # This Python's index is not junk: the next process still uses it.
    assert index_path(ally_home) not in removed
    host = Host(ally_home)
    with hook_calls(host) as calls, no_spawn():
        assert_all_ready_and_warm(host.load(), set(ready))
    assert identity_calls(calls) == []


# -- pruning -----------------------------------------------------------------------------------


def test_plugins_that_are_gone_leave_the_index(
    ally_home: Path, ready: dict[str, Path], no_spawn: Any
) -> None:
    def entries() -> tuple[set[str], set[str]]:
        data = read_index(ally_home)
        return set(data["keys"]), set(data["manifests"])

    keys, manifests = entries()
    # Each of load, status and a warm ensure writes the pruned index.
    for gone, step in [
        ("beta", lambda h: h.load()),
        ("gamma", lambda h: h.status()),
        ("plain", lambda h: h.ensure("alpha")),
    ]:
        shutil.rmtree(ready[gone])
        with no_spawn():
            step(Host(ally_home))
        keys.discard(str(ready[gone]))
        manifests.discard(str(ready[gone] / "plugin.json"))
        assert entries() == (keys, manifests), gone
    assert entries() == ({str(ready["alpha"])}, {str(ready["alpha"] / "plugin.json")})


# -- runtimes without env_context --------------------------------------------------------------


class ContextlessRuntime:
    """A runtime of its own (no process, an env is a directory) without ``env_context``."""

    def __init__(self) -> None:
        self.identities = 0

    @hookimpl
    def runtime_names(self) -> list[str]:
        return ["plain-rt"]

    @hookimpl
    def env_identity(self, spec: EnvSpec) -> Any:
        if spec.runtime != "plain-rt":
            return None
        self.identities += 1
        return {"flavour": os.environ.get("PLAIN_RT_FLAVOUR", "vanilla")}

    @hookimpl
    def resolve_interpreter(self, spec: EnvSpec) -> Any:
        return (
            Interpreter(sys.executable, "1.0.0", kind="plain-rt")
            if spec.runtime == "plain-rt"
            else None
        )

    @hookimpl
    def create_env(self, spec: EnvSpec, interpreter: Interpreter) -> Any:
        if spec.runtime != "plain-rt":
            return None
        spec.env_dir.mkdir(parents=True)
        return EnvInfo(spec.env_dir, interpreter)

    @hookimpl
    def install_deps(self, spec: EnvSpec, env: EnvInfo) -> Any:
        return InstallResult({"plain-dep": "1.0"}) if spec.runtime == "plain-rt" else None

    @hookimpl
    def health_check(self, spec: EnvSpec, env: EnvInfo, deep: bool) -> Any:
        return Health() if spec.runtime == "plain-rt" else None


class FailingContextRuntime(ContextlessRuntime):
    """Implements ``env_context``, but it has a bug."""

    @hookimpl
    def env_context(self, runtime: str, options: Any) -> Any:
        if runtime == "plain-rt":
            raise RuntimeError("env_context has a bug")
        return None


@pytest.mark.parametrize("runtime_class", [ContextlessRuntime, FailingContextRuntime])
def test_runtime_without_a_usable_env_context_persists_no_keys(
    ally_home: Path,
    make_plugin: Any,
    no_spawn: Any,
    monkeypatch: pytest.MonkeyPatch,
    runtime_class: type,
) -> None:
    for name in ("one", "two"):
        make_plugin(
            name,
            {"runtime": "plain-rt", "dependencies": {"file": "deps.txt"}},
            files={"deps.txt": "anything\n"},
        )

    def new_host() -> tuple[Host, Any]:
        runtime = runtime_class()
        pm = make_plugin_manager({}, load_entrypoints=False)
        pm.register(runtime, name="plain-rt")
        return Host(ally_home, plugin_manager=pm), runtime

    host, runtime = new_host()
    with no_spawn():
        outcomes = host.load()
    assert all(o.ready for o in outcomes), [o.reason for o in outcomes]
    assert sorted(o.action for o in outcomes) == ["built", "shared"]
    data = read_index(ally_home)
    assert data["keys"] == {}
    assert len(data["manifests"]) == 2
    assert host.keys.context("plain-rt") is None
    assert isinstance(host.keys.context("python3"), str)

    # Every new Host asks the runtime again, once per plugin: its key may have changed.
    for _ in range(2):
        host, runtime = new_host()
        with no_spawn():
            assert_all_ready_and_warm(host.load(), {"one", "two"})
        assert runtime.identities == 2
    assert read_index(ally_home)["keys"] == {}
    # ... and so sees what its env_identity reads from outside the plugin.
    monkeypatch.setenv("PLAIN_RT_FLAVOUR", "chocolate")
    host, runtime = new_host()
    with no_spawn():
        states = {o.name: (o.status, o.reason) for o in host.status()}
    changed = ("pending", "needs rebuild: plain-rt flavour changed (vanilla \u2192 chocolate)")
    assert states == {"one": changed, "two": changed}


class BuggyIdentityRuntime(ContextlessRuntime):
    """``env_identity`` raises: a bug in a runtime must block only that runtime's plugins."""

    @hookimpl
    def env_identity(self, spec: EnvSpec) -> Any:
        if spec.runtime == "plain-rt":
            raise RuntimeError("env_identity has a bug")
        return None


def test_runtime_whose_env_identity_raises_blocks_only_its_plugins(
    ally_home: Path, make_plugin: Any, ready: dict[str, Path]
) -> None:
    make_plugin(
        "buggy",
        {"runtime": "plain-rt", "dependencies": {"file": "deps.txt"}},
        files={"deps.txt": "anything\n"},
    )
    pm = make_plugin_manager({})
    pm.register(BuggyIdentityRuntime(), name="plain-rt")
    host = Host(ally_home, plugin_manager=pm)
    for outcomes in (host.status(), host.load()):
        by_name = {o.name: o for o in outcomes}
        buggy = by_name.pop("buggy")
        assert buggy.status == "blocked"
        assert "runtime error: RuntimeError: env_identity has a bug" in buggy.reason
        assert all(o.ready for o in by_name.values()), [o.reason for o in by_name.values()]


# -- the indexed spec is the validated one ---------------------------------------------------


def test_spec_and_key_from_the_index_equal_those_spec_for_and_request_key_give(
    ally_home: Path, make_plugin: Any, no_spawn: Any
) -> None:
    requirements = {"requirements.txt": "allydemo-greet==1.0.0\n"}
    make_plugin(
        "nested",
        {"runtime": "python3", "dependencies": {"file": "deps/requirements.txt"}},
        files={"deps/requirements.txt": "allydemo-greet==1.0.0\n"},
    )
    make_plugin(
        "commanded",
        {
            "runtime": "python",
            "runtime_version": ">=3.8",
            "dependencies": {"file": "requirements.txt", "install_command": "python -c 'pass'"},
        },
        files=requirements,
    )
    bundled = make_plugin(
        "bundled",
        {"runtime": "python3", "dependencies": {"file": "requirements.txt", "custom": [1, {}]}},
        files=requirements,
    )
    (bundled / ".ally-bundle").mkdir()
    make_plugin(
        "described",
        {
            "runtime": "python3",
            "version": "1.2.3",
            "description": "all fields",
            "author": {"name": "me"},
            "config": {"token": {"type": "string"}},
            "dependencies": {"file": "requirements.txt"},
            "tools": [HELLO, {"name": "x", "command": "python3", "timeout": 5, "schema": {}}],
        },
        files=requirements,
    )

    first = Host(ally_home)
    keys = {s.name: first.keys.spec_and_key(s)[1] for s in first.discover()}
    assert first.index.save()

    host = Host(ally_home)
    with hook_calls(host) as calls, no_spawn():
        sources = host.discover()
        indexed = {s.name: host.keys.spec_and_key(s) for s in sources}
    assert identity_calls(calls) == []
    assert sorted(indexed) == ["bundled", "commanded", "described", "nested"]
    for source in sources:
        spec, key = indexed[source.name]
        assert source.manifest == load_manifest(source.plugin_dir)
        validated = host.spec_for(source.manifest, source.plugin_dir)
        assert spec == validated, source.name
        assert key == keys[source.name] == host.request_key(validated)
    assert indexed["bundled"][0].options.artifacts_dir == bundled / ".ally-bundle"
    assert indexed["commanded"][0].install_command == ("python", "-c", "pass")


# -- the two hooks, called directly ------------------------------------------------------------


def test_hook_env_context_of_the_python_runtime_follows_its_configuration(
    ally_home: Path, monkeypatch: pytest.MonkeyPatch, no_spawn: Any
) -> None:
    host = Host(ally_home)
    options = host.env_options()
    with no_spawn():
        context = host.hook.env_context(runtime="python3", options=options)
        alias = host.hook.env_context(runtime="python", options=options)
        other = host.hook.env_context(runtime="no-such-runtime", options=options)
    assert other is None
    assert context is not None and context == alias
    json.dumps(context)  # it is digested as JSON

    monkeypatch.setenv("PIP_INDEX_URL", "http://127.0.0.1:9/simple")
    pip_changed = host.hook.env_context(runtime="python3", options=options)
    json.dumps(pip_changed)
    assert pip_changed != context
    monkeypatch.delenv("PIP_INDEX_URL")
    assert host.hook.env_context(runtime="python3", options=options) == context

    config = ally_home / "config.toml"
    config.write_text(config.read_text("utf-8") + "\n[ally]\ninstaller = 'pip'\n", "utf-8")
    reconfigured = Host(ally_home)
    installer = reconfigured.hook.env_context(runtime="python3", options=reconfigured.env_options())
    assert installer != context and installer["installer"] == "pip"


def test_the_python_context_follows_pip_config_files_without_parsing_them(
    ally_home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pip_conf = tmp_path / "pip.conf"
    pip_conf.write_text("[global]\nindex-url = https://one.example/simple\n", "utf-8")
    monkeypatch.setenv("PIP_CONFIG_FILE", str(pip_conf))
    host = Host(ally_home)
    options = host.env_options()
    before = host.hook.env_context(runtime="python3", options=options)
    assert host.hook.env_context(runtime="python3", options=options) == before
    pip_conf.write_text("[global]\nindex-url = https://two.example/simple\n", "utf-8")
    after = host.hook.env_context(runtime="python3", options=options)
    assert after != before
    # An index password is never part of it (the context is digested into the warm index).
    monkeypatch.setenv("PIP_EXTRA_INDEX_URL", "https://user:s3cret@three.example/simple")
    assert "s3cret" not in json.dumps(host.hook.env_context(runtime="python3", options=options))


def test_hook_identity_files_of_the_python_runtime(
    ally_home: Path, make_plugin: Any, no_spawn: Any
) -> None:
    plugin = make_plugin(
        "watched",
        {"runtime": "python3", "dependencies": {"file": "requirements.txt"}},
        files={"requirements.txt": "allydemo-greet\n"},
    )
    host = Host(ally_home)
    (source,) = host.discover()
    spec = host.spec_for(source.manifest, plugin)
    with no_spawn():
        files = host.hook.identity_files(spec=spec)
        other = host.hook.identity_files(spec=attrs.evolve(spec, runtime="no-such-runtime"))
    # The dependency file is watched by the core; python reads nothing else of the plugin.
    assert files is not None and list(files) == []
    assert other is None


@pytest.mark.parametrize(
    "runtime",
    ["node", "ruby"],
)
def test_runtime_packages_register_the_warm_index_hooks(runtime: str) -> None:
    # Without env_context a runtime works, but each new Host calls env_identity per plugin.
    pm = make_plugin_manager({})
    if pm.get_plugin(runtime) is None:
        pytest.skip(f"the {runtime} runtime is not installed")
    for hook in (pm.hook.env_context, pm.hook.identity_files):
        assert runtime in {impl.plugin_name for impl in hook.get_hookimpls()}, hook.name


# -- what the index must not learn ---------------------------------------------------------------


def test_fresh_files_are_indexed_only_once_they_settled(
    ally_home: Path, make_plugin: Callable[..., Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(ally_core.discovery, "SETTLE_NS", 5_000_000_000)
    plugin = make_plugin(
        "fresh",
        {"runtime": "python3", "dependencies": {"file": "requirements.txt"}, "tools": [HELLO]},
        files={"requirements.txt": "allydemo-greet==1.0.0\n", "main.py": MAIN},
    )
    host = Host(ally_home)
    (outcome,) = host.load()
    assert outcome.ready, outcome.reason
    # plugin.json and requirements.txt changed moments ago: an edit within one timestamp
    # tick could keep their identities, so nothing derived from them is persisted yet.
    data = read_index(ally_home)
    assert data["manifests"] == {} and data["keys"] == {}
    assert len(data["markers"]) == 1  # markers never change once written

    # Once the files are older than the window, the next load of the same Host saves what it
    # already knows (no parsing, no env_identity), and a new process uses it.
    monkeypatch.setattr(ally_core.discovery, "SETTLE_NS", 0)
    with hook_calls(host) as calls:
        host.load()
    assert identity_calls(calls) == []
    data = read_index(ally_home)
    assert set(data["keys"]) == {str(plugin)}
    assert set(data["manifests"]) == {str(plugin / "plugin.json")}


def test_a_key_computed_while_the_configuration_changed_is_not_remembered(
    ally_home: Path, ready: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    index_path(ally_home).unlink()
    original = KeyMaker.request_inputs

    def request_inputs_while_pip_conf_changes(self: KeyMaker, spec: EnvSpec) -> Any:
        # Another thread (or `pip config set`) changes the index configuration mid-load.
        inputs = original(self, spec)
        monkeypatch.setenv("PIP_INDEX_URL", f"http://127.0.0.1:9/{spec.plugin_name}/simple")
        return inputs

    monkeypatch.setattr(KeyMaker, "request_inputs", request_inputs_while_pip_conf_changes)
    Host(ally_home).load()
    assert read_index(ally_home)["keys"] == {}


class IdentityWithoutContext:
    """A plugin that refines the python runtime's env_identity but describes no context."""

    @hookimpl(tryfirst=True)
    def env_identity(self, spec: EnvSpec) -> Any:
        if spec.runtime not in ("python", "python3"):
            return None
        return {"flavour": os.environ.get("FLAVOUR", "plain")}


def test_an_env_identity_without_env_context_turns_the_index_off_for_keys(
    ally_home: Path, ready: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    pm = make_plugin_manager({})
    pm.register(IdentityWithoutContext(), name="flavour")
    index_path(ally_home).unlink()
    host = Host(ally_home, plugin_manager=pm)
    # The built-in python runtime still answers env_context, but another plugin's
    # env_identity may answer first with inputs no context describes.
    assert host.keys.context("python3") is None
    host.load()
    assert read_index(ally_home)["keys"] == {}
    monkeypatch.setenv("FLAVOUR", "chocolate")
    states = {o.name: o.reason for o in Host(ally_home, plugin_manager=pm).status()}
    assert states["alpha"] == "needs rebuild: python3 flavour changed (plain \u2192 chocolate)"


def test_registered_plugins_are_part_of_the_context(ally_home: Path) -> None:
    plain = Host(ally_home).keys.context("python3")
    pm = make_plugin_manager({})
    pm.register(types.SimpleNamespace(), name="an-observer")
    assert Host(ally_home, plugin_manager=pm).keys.context("python3") not in (None, plain)


# -- the file format, directly -----------------------------------------------------------------


def test_encode_decode_round_trip_shares_equal_strings_and_refuses_damage(tmp_path: Path) -> None:
    from ally_core.warm_index import WarmIndex

    path = "/plugins/p/requirements.txt"
    tables = {
        "manifests": {},
        "keys": {"/plugins/p": [[1, 2, 3, 4], {"dependency_file": path, "watch": []}]},
        "markers": {"/m": [[5, 6, 7], {"commands": {"a": path + "x", "b": path + "x"}}]},
        "entry_points": {"ally": [None, [[["/site"], [[1, 2, 3]], []], []]]},
        "config": {"/home/config.toml": ["jobs = 2\n", {"jobs": 2}]},
    }
    blob = encode(tables)
    assert decode(blob) == tables
    # The repeated string is stored once (a back-reference) and read back as one object.
    commands = decode(blob)["markers"]["/m"][1]["commands"]  # type: ignore[index]
    assert commands["a"] is commands["b"]
    header_end = blob.index(b"\n") + 1
    for damaged in (
        b"",
        blob[:header_end],  # header only
        blob[: header_end + 4],  # header and CRC, no payload
        blob[:-1],  # truncated payload
        blob.replace(b"ally-warm-index", b"ally-warm-indey", 1),  # another header
    ):
        assert decode(damaged) is None, damaged[:40]

    # A value marshal cannot hold is a bug, not a crash: nothing is written, loads go on.
    index = WarmIndex(tmp_path / INDEX_NAME)
    index.put("keys", "/plugins/q", [1], {"not plain data": object()})
    assert index.save() is False
    assert not (tmp_path / INDEX_NAME).exists()
