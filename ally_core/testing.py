"""pytest plugin for plugin authors, runtime authors and ally itself (entry point ``pytest11``).

Fixtures:

* ``ally_home`` — an isolated ally home (``ALLY_HOME``) whose Python installs use only the
  session's local wheelhouse: no index, no pip/uv configuration of the machine.
* ``wheelhouse`` — a directory of small wheels built in the test session (see
  :func:`build_wheel`), session-scoped.
* ``make_plugin`` — ``make_plugin("name", manifest_dict, files={"main.py": "..."})`` writes a
  plugin into the home's plugins dir and returns its directory.
* ``host`` — a :class:`~ally_core.Host` on ``ally_home``.
* ``no_spawn`` — a context manager factory: inside it, starting any subprocess fails the test.
* ``ally_cli`` — runs ``python -m ally_core.cli ...`` as a real subprocess in the home.

Helpers: :func:`build_wheel` (a wheel from a few lines of code), :func:`pack_npm` (npm
tarballs from package sources, for a node plugin's tests), :func:`write_plugin`,
:func:`hermetic_environ`, and :class:`WatchedEnv` with :func:`watched_identities` (for a
runtime's ``watch_paths``).

Everything here is hermetic: nothing reaches the network.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import io
import json
import os
import subprocess
import sys
import zipfile
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, ContextManager, Optional

import pytest

if TYPE_CHECKING:
    from . import EnvInfo, EnvSpec, Host

__all__ = [
    "DEFAULT_WHEELS",
    "WatchedEnv",
    "build_wheel",
    "hermetic_environ",
    "pack_npm",
    "watched_identities",
    "write_plugin",
]

#: Wheels the ``wheelhouse`` fixture builds: (name, version, requires, console scripts).
DEFAULT_WHEELS: Sequence[tuple[str, str, Sequence[str], Mapping[str, str]]] = (
    ("allydemo-greet", "1.0.0", (), {"allydemo-greet": "allydemo_greet:cli"}),
    ("allydemo-greet", "2.0.0", (), {"allydemo-greet": "allydemo_greet:cli"}),
    ("allydemo-shout", "1.0.0", ("allydemo-greet>=1.0",), {}),
)


def _module_source(name: str, version: str) -> str:
    module = name.replace("-", "_")
    return (
        f'"""Test package {name} {version}, built by ally_core.testing."""\n'
        f"__version__ = {version!r}\n\n"
        "def greet(who='world'):\n"
        f"    return 'hello ' + who + ' from {module} ' + __version__\n\n"
        "def cli():\n"
        "    import sys\n"
        "    print(greet(*sys.argv[1:2]))\n"
    )


def build_wheel(
    dest: Path,
    name: str,
    version: str,
    *,
    requires: Sequence[str] = (),
    console_scripts: Mapping[str, str] | None = None,
    files: Mapping[str, str] | None = None,
) -> Path:
    """Write a pure-Python wheel ``name==version`` into ``dest`` and return its path.

    Without ``files`` the wheel holds one module (``name`` with ``-`` → ``_``) with
    ``__version__``, ``greet()`` and ``cli()``. No build backend or network is needed.
    """
    dist = name.replace("-", "_")
    files = dict(files) if files is not None else {f"{dist}.py": _module_source(name, version)}
    info = f"{dist}-{version}.dist-info"
    meta = ["Metadata-Version: 2.1", f"Name: {name}", f"Version: {version}"]
    meta += [f"Requires-Dist: {r}" for r in requires]
    contents = {path: text.encode() for path, text in files.items()}
    contents[f"{info}/METADATA"] = ("\n".join(meta) + "\n").encode()
    contents[f"{info}/WHEEL"] = (
        b"Wheel-Version: 1.0\nGenerator: ally_core.testing\nRoot-Is-Purelib: true\n"
        b"Tag: py3-none-any\n"
    )
    if console_scripts:
        lines = ["[console_scripts]", *(f"{k} = {v}" for k, v in console_scripts.items())]
        contents[f"{info}/entry_points.txt"] = ("\n".join(lines) + "\n").encode()
    record = []
    for path, data in contents.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
        record.append(f"{path},sha256={digest},{len(data)}")
    record.append(f"{info}/RECORD,,")
    contents[f"{info}/RECORD"] = ("\n".join(record) + "\n").encode()
    dest.mkdir(parents=True, exist_ok=True)
    wheel = dest / f"{dist}-{version}-py3-none-any.whl"
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for path, data in contents.items():
            zf.writestr(zipfile.ZipInfo(path, date_time=(2020, 1, 1, 0, 0, 0)), data)
    wheel.write_bytes(buf.getvalue())
    return wheel


def pack_npm(
    sources: Mapping[str, Mapping[str, str]], work: Path, dest: Path
) -> list[dict[str, Any]]:
    """``npm pack`` local package sources into tarballs in ``dest``, offline.

    ``sources`` maps a folder name to the package's files (relative path -> text, a
    ``package.json`` among them); they are written under ``work``. npm runs with an empty
    user config and its own cache there, and without lifecycle scripts, so no npm setting of
    the machine counts. Returns npm's report of each tarball (``name``, ``version``,
    ``filename``, ...), in the order of ``sources``.
    """
    import shutil

    npm = shutil.which("npm")
    if npm is None:
        raise RuntimeError("npm is not on PATH")
    folders = []
    for name, files in sources.items():
        folder = work / name
        for rel, text in files.items():
            (folder / rel).parent.mkdir(parents=True, exist_ok=True)
            (folder / rel).write_text(text, "utf-8")
        folders.append(str(folder))
    userconfig = work / "npmrc"
    userconfig.write_text("", "utf-8")
    env = {k: v for k, v in os.environ.items() if not k.lower().startswith("npm_config_")}
    env.update(npm_config_userconfig=str(userconfig), npm_config_cache=str(work / "cache"))
    out = subprocess.run(
        [npm, "pack", *folders, "--json", "--pack-destination", str(dest), "--ignore-scripts"],
        capture_output=True,
        text=True,
        check=True,
        env=env,
        cwd=work,
    ).stdout
    packed: list[dict[str, Any]] = json.loads(out)
    return packed


def hermetic_environ(base: Mapping[str, str] | None = None) -> dict[str, str]:
    """``base`` (default ``os.environ``) without the machine's pip/uv configuration and OS
    keyring."""
    env = {
        k: v
        for k, v in (os.environ if base is None else base).items()
        if not k.startswith(("PIP_", "UV_", "ALLY_", "PYTHONPATH", "VIRTUAL_ENV"))
    }
    env["PIP_CONFIG_FILE"] = os.devnull
    env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
    env["UV_NO_CONFIG"] = "1"
    # Tests never touch the developer's OS keyring: keyring's "no backend" makes ally keep
    # secrets in its 0600 file (a test that wants a keyring names its own backend).
    env["PYTHON_KEYRING_BACKEND"] = "keyring.backends.fail.Keyring"
    return env


def write_plugin(
    plugins_dir: Path,
    name: str,
    manifest: Mapping[str, Any] | None = None,
    files: Mapping[str, str] | None = None,
) -> Path:
    """Write ``plugins_dir/name/plugin.json`` (``manifest`` defaults to ``{"name": name}``)."""
    plugin_dir = plugins_dir / name
    plugin_dir.mkdir(parents=True, exist_ok=True)
    data = {"name": name, **(manifest or {})}
    (plugin_dir / "plugin.json").write_text(json.dumps(data, indent=2), "utf-8")
    for rel, text in (files or {}).items():
        path = plugin_dir / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, "utf-8")
    return plugin_dir


def watched_identities(
    paths: Iterable[str | os.PathLike[str]],
) -> dict[str, Optional[list[int]]]:
    """What the quick ``ally run`` path compares for each watched path: its identity
    ``[st_size, st_mtime_ns, st_ino, st_ctime_ns]`` (symlinks followed), ``None`` when absent.
    """
    from .lean import file_identity

    return {os.fspath(path): file_identity(os.fspath(path)) for path in paths}


class WatchedEnv:
    """A plugin's ready env, to test a runtime's ``watch_paths`` hook.

    The quick ``ally run`` path starts a tool without asking the runtime anything while every
    path ``watch_paths`` named keeps its identity (:func:`watched_identities`). So every change
    that makes a warm load answer differently must change one of them: :meth:`check` makes a
    change and asserts both halves. Building the env (``host.ensure(name)``) must succeed.

    ``forget`` is called before the warm hooks are asked (:meth:`answers`): each quick path is
    a new process, so clear there what your runtime caches for the life of a process (for
    example a ``functools.lru_cache``'s ``cache_clear``). ``host``, ``spec`` and ``env`` are
    plain attributes (:meth:`own_interpreter` replaces ``env``).
    """

    def __init__(
        self, host: Host, name: str, *, forget: Optional[Callable[[], object]] = None
    ) -> None:
        outcome = host.ensure(name)
        assert outcome.ready, outcome.reason
        assert outcome.manifest is not None
        self.host = host
        self.spec: EnvSpec = host.spec_for(outcome.manifest, outcome.plugin_dir)
        current = host.store.current(name)
        assert current is not None
        self.env: EnvInfo = current[1].env
        self._forget = forget

    def watched(self) -> list[Path]:
        """What the runtime's ``watch_paths`` names for the env (it must answer)."""
        paths = self.host.dispatch.watch_paths(self.spec, self.env)
        assert paths is not None, f"no runtime answers watch_paths for {self.spec.runtime!r}"
        return list(paths)

    def answers(self) -> list[Any]:
        """What the hooks the quick path stands in for answer: ``env_context``,
        ``env_identity``, ``identity_files`` and a quick ``health_check``."""
        if self._forget is not None:
            self._forget()
        dispatch, spec = self.host.dispatch, self.spec
        return [
            dispatch.env_context(spec.runtime, self.host.env_options()),
            dispatch.env_identity(spec),
            dispatch.identity_files(spec),
            dispatch.health_check(spec, self.env, deep=False),
        ]

    def healthy(self) -> bool:
        """Whether the quick ``health_check`` finds the env as it should be."""
        return bool(self.host.dispatch.health_check(self.spec, self.env, deep=False).ok)

    def check(self, what: str, change: Callable[[], object]) -> None:
        """Call ``change``, and assert that it makes the warm answers differ and changes the
        identity of a path named before it (``what`` describes it in the failure)."""
        watched = self.watched()
        before, answers = watched_identities(watched), self.answers()
        change()
        assert self.answers() != answers, f"{what}: the warm hooks answer the same"
        after = watched_identities(watched)
        assert after != before, f"{what}: no watched path changed ({sorted(before)})"

    def check_hook_contract(self, no_spawn: Callable[[], ContextManager[object]]) -> None:
        """The runtime's ``watch_paths`` answers for its own runtime only (``None`` for
        another), with paths, and starts no process (``no_spawn``: the fixture)."""
        import attrs

        foreign = attrs.evolve(self.spec, runtime="no-such-runtime")
        with no_spawn():
            assert self.host.hook.watch_paths(spec=foreign, env=self.env) is None
            paths = self.host.hook.watch_paths(spec=self.spec, env=self.env)
        assert paths, "watch_paths names no path"
        assert all(isinstance(p, Path) for p in paths), paths

    def own_interpreter(self, link: Path, files: Optional[Mapping[str, Path]] = None) -> None:
        """Point the env at an interpreter install the test owns, so that the test can take it
        away: ``link`` becomes a symlink to the env's interpreter, and for each ``env.data``
        key in ``files`` the file it names is copied to the path given. Only this object's
        ``env`` changes (nothing on disk is rewritten); it must still be healthy."""
        import shutil

        import attrs

        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(self.env.interpreter.path)
        data = dict(self.env.data)
        for key, copy in (files or {}).items():
            copy.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(str(data[key]), copy)
            data[key] = str(copy)
        self.env = attrs.evolve(
            self.env, interpreter=attrs.evolve(self.env.interpreter, path=str(link)), data=data
        )
        assert self.healthy(), f"the env's interpreter at {link}: the env is not healthy"

    def check_removal(self, path: Path, what: Optional[str] = None) -> None:
        """:meth:`check` moving ``path`` away; then put it back and assert that the env is
        healthy again."""
        away = path.with_name(path.name + ".away")
        self.check(what or f"{path} removed", lambda: path.rename(away))
        away.rename(path)
        assert self.healthy(), f"{path} put back: the env is not healthy"


@pytest.fixture(scope="session")
def wheelhouse(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A local directory of wheels (:data:`DEFAULT_WHEELS`) built in this test session."""
    dest = tmp_path_factory.mktemp("wheelhouse")
    for name, version, requires, scripts in DEFAULT_WHEELS:
        build_wheel(dest, name, version, requires=requires, console_scripts=scripts)
    return dest


@pytest.fixture
def ally_home(tmp_path: Path, wheelhouse: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An isolated ``ALLY_HOME`` installing only from ``wheelhouse``, never from the network.

    Its ``config.toml`` sets ``[ally.index] no_index = true`` and ``find_links`` to the
    wheelhouse; the machine's pip and uv configuration is switched off.
    """
    home = tmp_path / "ally-home"
    (home / "plugins").mkdir(parents=True)
    for key in list(os.environ):
        if key.startswith(("PIP_", "UV_", "ALLY_")) or key in {"PYTHONPATH", "VIRTUAL_ENV"}:
            monkeypatch.delenv(key, raising=False)
    for key, value in hermetic_environ({}).items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("ALLY_HOME", str(home))
    (home / "config.toml").write_text(
        f"[ally.index]\nno_index = true\nfind_links = [{json.dumps(str(wheelhouse))}]\n", "utf-8"
    )
    return home


@pytest.fixture
def make_plugin(ally_home: Path) -> Callable[..., Path]:
    """``make_plugin(name, manifest=None, files=None)`` → the new plugin's directory."""

    def make(
        name: str, manifest: Mapping[str, Any] | None = None, files: Mapping[str, str] | None = None
    ) -> Path:
        return write_plugin(ally_home / "plugins", name, manifest, files)

    return make


@pytest.fixture
def host(ally_home: Path) -> Any:
    """A :class:`~ally_core.Host` for ``ally_home``."""
    from ally_core import Host

    return Host(ally_home)


@pytest.fixture
def no_spawn(monkeypatch: pytest.MonkeyPatch) -> Callable[[], Any]:
    """``with no_spawn(): ...`` fails the test if anything inside starts a process."""

    @contextlib.contextmanager
    def guard() -> Iterator[list[Any]]:
        spawned: list[Any] = []

        def refuse(self: Any, args: Any, *a: Any, **kw: Any) -> None:
            spawned.append(args)
            raise AssertionError(f"a process was spawned: {args!r}")

        with monkeypatch.context() as m:
            m.setattr(subprocess.Popen, "_execute_child", refuse)
            if hasattr(os, "posix_spawn"):
                m.setattr(os, "posix_spawn", lambda *a, **k: refuse(None, a))
            m.setattr(os, "fork", lambda: refuse(None, "fork"))
            yield spawned
        assert not spawned, f"processes were spawned: {spawned}"

    return guard


@pytest.fixture
def ally_cli(ally_home: Path) -> Callable[..., subprocess.CompletedProcess[str]]:
    """Run the ally CLI in a real subprocess: ``ally_cli("install", "x", input=None)``.

    Through the ``ally`` command's own entry (``python -m ally_core``), so ``ally run``
    takes the quick path wherever the console script would."""

    def run(
        *args: str,
        input: Optional[str] = None,
        timeout: float = 300,
        env: Mapping[str, str] | None = None,
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "ally_core", *args],
            input=input,
            text=True,
            capture_output=True,
            timeout=timeout,
            env={**os.environ, **(env or {})},
        )

    return run
