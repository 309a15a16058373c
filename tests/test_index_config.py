"""Where Python packages come from: pip's config file, PIP_* variables, ally's ``[ally.index]``.

Each test serves a PEP 503 "simple" index on 127.0.0.1 from a thread of this process (wheels
built by :func:`ally_core.testing.build_wheel`) and counts what installers ask it for. Both
backends are run: ``pip`` reads pip's configuration itself, ``uv`` gets it through ally's
translation (``read_pip_config``/``effective_index``), since uv runs with ``--no-config``.
"""

from __future__ import annotations

import base64
import hashlib
import html
import json
import os
import re
import secrets
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Callable, Optional

import pytest

from ally_core import Host
from ally_core.testing import build_wheel

BACKENDS = ["uv", "pip"]
MAIN = (
    "import json, sys, idxdemo_alpha\n"
    "json.load(sys.stdin)\n"
    "print(json.dumps({'success': True, 'result': idxdemo_alpha.__version__}))\n"
)
PLUGIN = {
    "runtime": "python3",
    "dependencies": {"file": "requirements.txt"},
    "tools": [{"name": "version", "command": "python3", "args": ["main.py"]}],
}
SECRET = "s3cr3t-pa55word"


def _normalize(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


class SimpleIndex:
    """A PEP 503 index: ``/simple/`` (projects), ``/simple/<project>/`` (links), ``/files/…``.

    ``auth`` = (user, password) makes every request without that Basic authorization a 401.
    Every request is recorded as (path, Authorization header).
    """

    def __init__(
        self,
        wheels: list[Path],
        *,
        auth: Optional[tuple[str, str]] = None,
        hashes: bool = True,
        on_request: Optional[Callable[[str], None]] = None,
    ) -> None:
        self.on_request = on_request
        self.wheels = {w.name: w for w in wheels}
        self.projects: dict[str, list[Path]] = {}
        for wheel in wheels:
            self.projects.setdefault(_normalize(wheel.name.split("-")[0]), []).append(wheel)
        self.expected_auth = (
            "Basic " + base64.b64encode(f"{auth[0]}:{auth[1]}".encode()).decode() if auth else None
        )
        self.hashes = hashes
        self.requests: list[tuple[str, Optional[str]]] = []
        self.heads = 0
        self._lock = threading.Lock()
        index = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                index._handle(self)

            def do_HEAD(self) -> None:
                index._handle(self, head=True)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def url(self, userinfo: str = "") -> str:
        return f"http://{userinfo + '@' if userinfo else ''}127.0.0.1:{self.port}/simple"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    @property
    def downloads(self) -> list[str]:
        """Names of the wheels fetched (uv may GET one twice: metadata stream, then install)."""
        return sorted({p.rsplit("/", 1)[-1] for p, _ in self.requests if p.startswith("/files/")})

    def _handle(self, req: BaseHTTPRequestHandler, head: bool = False) -> None:
        path = req.path.split("?", 1)[0]
        if self.on_request is not None:
            self.on_request(path)  # while the client waits for the answer
        with self._lock:
            if not head:
                self.requests.append((path, req.headers.get("Authorization")))
            self.heads += head
        req.head_only = head  # type: ignore[attr-defined]
        if self.expected_auth and req.headers.get("Authorization") != self.expected_auth:
            self._send(req, 401, b"unauthorized", extra={"WWW-Authenticate": 'Basic realm="x"'})
            return
        parts = [p for p in path.split("/") if p]
        if parts == ["simple"]:
            links = "".join(f'<a href="/simple/{p}/">{p}</a>\n' for p in sorted(self.projects))
            self._page(req, links)
        elif len(parts) == 2 and parts[0] == "simple":
            if not path.endswith("/"):
                self._send(req, 301, b"", extra={"Location": path + "/"})
                return
            wheels = self.projects.get(_normalize(parts[1]))
            if wheels is None:
                self._send(req, 404, b"not found")
                return
            links = ""
            for wheel in wheels:
                fragment = (
                    "#sha256=" + hashlib.sha256(wheel.read_bytes()).hexdigest()
                    if self.hashes
                    else ""
                )
                links += f'<a href="/files/{html.escape(wheel.name)}{fragment}">{wheel.name}</a>\n'
            self._page(req, links)
        elif len(parts) == 2 and parts[0] == "files" and parts[1] in self.wheels:
            self._send(
                req, 200, self.wheels[parts[1]].read_bytes(), ctype="application/octet-stream"
            )
        else:
            self._send(req, 404, b"not found")

    def _page(self, req: BaseHTTPRequestHandler, body: str) -> None:
        text = f"<!DOCTYPE html>\n<html><body>\n{body}</body></html>\n"
        self._send(req, 200, text.encode(), ctype="text/html")

    @staticmethod
    def _send(
        req: BaseHTTPRequestHandler,
        code: int,
        body: bytes,
        *,
        ctype: str = "text/plain",
        extra: Optional[dict[str, str]] = None,
    ) -> None:
        req.send_response(code)
        req.send_header("Content-Type", ctype)
        req.send_header("Content-Length", str(len(body)))
        for key, value in (extra or {}).items():
            req.send_header(key, value)
        req.end_headers()
        if not getattr(req, "head_only", False):
            req.wfile.write(body)


@pytest.fixture(scope="module")
def wheels(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """idxdemo-alpha 1.0/2.0, idxdemo-beta 1.0, idxdemo-gamma 1.0 (not on any index)."""
    dest = tmp_path_factory.mktemp("index-wheels")
    made = {
        "alpha1": build_wheel(dest / "a1", "idxdemo-alpha", "1.0.0"),
        "alpha2": build_wheel(dest / "a2", "idxdemo-alpha", "2.0.0"),
        "beta": build_wheel(dest / "b", "idxdemo-beta", "1.0.0"),
        "gamma": build_wheel(dest / "links", "idxdemo-gamma", "1.0.0"),
    }
    return made


@pytest.fixture
def serve() -> Iterator[Callable[..., SimpleIndex]]:
    started: list[SimpleIndex] = []

    def start(wheels: list[Path], **kw: Any) -> SimpleIndex:
        index = SimpleIndex(wheels, **kw)
        started.append(index)
        return index

    yield start
    for index in started:
        index.close()


def _ally_index(home: Path, **index: Any) -> None:
    """Replace the fixture's config.toml (no_index + wheelhouse) with exactly ``index``."""
    lines = ["[ally.index]"] + [f"{k} = {json.dumps(v)}" for k, v in index.items()]
    (home / "config.toml").write_text("\n".join(lines) + "\n", "utf-8")


def _pip_conf(path: Path, **options: str) -> Path:
    body = "".join(f"{k} = {v}\n" for k, v in options.items())
    path.write_text("[global]\n" + body, "utf-8")
    return path


def _plugin(make_plugin, requirements: str = "idxdemo-alpha\n", name: str = "idx") -> Path:
    return make_plugin(name, PLUGIN, {"requirements.txt": requirements, "main.py": MAIN})


def _load(ally_home: Path, backend: str, name: str = "idx") -> Any:
    host = Host(ally_home, settings={"installer": backend})
    return host.ensure(name)


def _published(home: Path) -> list[Path]:
    store = home / "plugin-envs" / ".store"
    if not store.is_dir():
        return []
    return sorted(p for p in store.iterdir() if (p / ".installed").is_file())


# ---------------------------------------------------------------------------------------------
# each way of configuring the index, on both backends


@pytest.mark.parametrize("backend", BACKENDS)
def test_index_url_from_pip_config_file_is_used(
    backend, ally_home, make_plugin, serve, wheels, tmp_path, monkeypatch
):
    index = serve([wheels["alpha1"], wheels["alpha2"]])
    _ally_index(ally_home)
    monkeypatch.setenv(
        "PIP_CONFIG_FILE", str(_pip_conf(tmp_path / "pip.conf", **{"index-url": index.url()}))
    )
    _plugin(make_plugin)
    outcome = _load(ally_home, backend)
    assert outcome.ready, outcome.reason
    assert outcome.env.data["backend"] == backend
    assert outcome.packages["idxdemo-alpha"] == "2.0.0"
    assert index.downloads == ["idxdemo_alpha-2.0.0-py3-none-any.whl"]
    assert outcome.tool("version").call({}).result == "2.0.0"


@pytest.mark.parametrize("backend", BACKENDS)
def test_index_url_from_pip_index_url_variable_is_used(
    backend, ally_home, make_plugin, serve, wheels, monkeypatch
):
    index = serve([wheels["alpha1"]])
    _ally_index(ally_home)
    monkeypatch.setenv("PIP_INDEX_URL", index.url())
    _plugin(make_plugin)
    outcome = _load(ally_home, backend)
    assert outcome.ready, outcome.reason
    assert outcome.packages["idxdemo-alpha"] == "1.0.0"
    assert index.downloads == ["idxdemo_alpha-1.0.0-py3-none-any.whl"]


@pytest.mark.parametrize("backend", BACKENDS)
def test_index_url_from_ally_config_toml_is_used(backend, ally_home, make_plugin, serve, wheels):
    index = serve([wheels["alpha1"]], hashes=False)
    _ally_index(ally_home, index_url=index.url())
    _plugin(make_plugin)
    outcome = _load(ally_home, backend)
    assert outcome.ready, outcome.reason
    assert outcome.packages["idxdemo-alpha"] == "1.0.0"
    assert index.downloads == ["idxdemo_alpha-1.0.0-py3-none-any.whl"]


@pytest.mark.parametrize("backend", BACKENDS)
def test_ally_config_index_url_wins_over_pip_config(
    backend, ally_home, make_plugin, serve, wheels, tmp_path, monkeypatch
):
    pip_index = serve([wheels["alpha2"]])
    ally_index = serve([wheels["alpha1"]])
    monkeypatch.setenv(
        "PIP_CONFIG_FILE",
        str(_pip_conf(tmp_path / "pip.conf", **{"index-url": pip_index.url()})),
    )
    _ally_index(ally_home, index_url=ally_index.url())
    _plugin(make_plugin)
    outcome = _load(ally_home, backend)
    assert outcome.ready, outcome.reason
    assert outcome.packages["idxdemo-alpha"] == "1.0.0"
    assert ally_index.downloads and not pip_index.downloads


@pytest.mark.parametrize("source", ["pip.conf", "config.toml"])
@pytest.mark.parametrize("backend", BACKENDS)
def test_index_extra_index_and_find_links_are_combined(
    backend, source, ally_home, make_plugin, serve, wheels, tmp_path, monkeypatch
):
    main = serve([wheels["alpha1"]])
    extra = serve([wheels["beta"]], hashes=False)
    links = str(wheels["gamma"].parent)
    if source == "pip.conf":
        _ally_index(ally_home)
        conf = _pip_conf(
            tmp_path / "pip.conf",
            **{"index-url": main.url(), "extra-index-url": extra.url(), "find-links": links},
        )
        monkeypatch.setenv("PIP_CONFIG_FILE", str(conf))
    else:
        _ally_index(
            ally_home, index_url=main.url(), extra_index_urls=[extra.url()], find_links=[links]
        )
    _plugin(make_plugin, "idxdemo-alpha\nidxdemo-beta\nidxdemo-gamma\n")
    outcome = _load(ally_home, backend)
    assert outcome.ready, outcome.reason
    for name in ("idxdemo-alpha", "idxdemo-beta", "idxdemo-gamma"):
        assert outcome.packages.get(name) == "1.0.0", (name, outcome.packages)
    assert main.downloads == ["idxdemo_alpha-1.0.0-py3-none-any.whl"]
    assert extra.downloads == ["idxdemo_beta-1.0.0-py3-none-any.whl"]


# ---------------------------------------------------------------------------------------------
# credentials


def _all_text(root: Path) -> str:
    """Every file under ``root`` that is small text (markers, failure records, pointers)."""
    out = []
    for path in root.rglob("*"):
        if path.is_file() and not path.is_symlink() and path.stat().st_size < 1_000_000:
            out.append(path.read_bytes().decode("utf-8", "replace"))
    return "\n".join(out)


# pip reading PIP_INDEX_URL itself is left out: there the URL is never in ally's hands.
@pytest.mark.parametrize(
    ("backend", "how"), [("uv", "config.toml"), ("uv", "PIP_INDEX_URL"), ("pip", "config.toml")]
)
def test_index_credentials_are_used_but_never_shown(
    backend, how, ally_home, make_plugin, serve, wheels, ally_cli
):
    index = serve([wheels["alpha1"]], auth=("ally-user", SECRET))
    url = index.url(f"ally-user:{SECRET}")
    env = {"ALLY_INSTALLER": backend}
    if how == "config.toml":
        _ally_index(ally_home, index_url=url)
    else:
        _ally_index(ally_home)
        env["PIP_INDEX_URL"] = url
    _plugin(make_plugin)
    outputs = []
    for args in (
        ("install", "-v"),
        ("list", "--json"),
        ("config", "--json"),
        ("config",),
        ("doctor", "--json"),
        ("run", "idx", "version", "--input", "{}"),
    ):
        proc = ally_cli(*args, env=env)
        assert proc.returncode == 0, (args, proc.stderr)
        outputs.append(proc.stdout + proc.stderr)
    assert json.loads(outputs[-1].strip())["result"] == "1.0.0"
    # The server saw the credentials: the install really went through the authenticated index.
    downloads = [auth for path, auth in index.requests if path.startswith("/files/")]
    assert downloads and all(auth == index.expected_auth for auth in downloads)
    text = "\n".join(outputs)
    assert SECRET not in text
    (env_dir,) = _published(ally_home)
    assert SECRET not in (env_dir / ".installed").read_text()
    # Nothing ally keeps about envs (markers, failure records, state) holds the password.
    assert SECRET not in _all_text(ally_home / "plugin-envs")


@pytest.mark.parametrize("backend", BACKENDS)
def test_index_credentials_are_not_shown_when_the_install_fails(
    backend, ally_home, make_plugin, serve, wheels, ally_cli
):
    index = serve([wheels["alpha1"]], auth=("ally-user", SECRET))
    _ally_index(ally_home, index_url=index.url(f"ally-user:{SECRET}"))
    _plugin(make_plugin, "idxdemo-missing\n")
    proc = ally_cli("install", "-v", env={"ALLY_INSTALLER": backend})
    assert proc.returncode == 4, proc.stdout + proc.stderr
    assert "idxdemo-missing" in proc.stdout + proc.stderr
    assert index.requests, "the installer never asked the index"
    assert SECRET not in proc.stdout + proc.stderr
    # (A failure is reported for the inputs it happened with: the same installer.)
    listed = ally_cli("list", "--json", env={"ALLY_INSTALLER": backend})
    assert "idxdemo-missing" in listed.stdout or "install failed" in listed.stdout
    assert SECRET not in listed.stdout + listed.stderr
    assert SECRET not in _all_text(ally_home / "plugin-envs")


@pytest.fixture
def short_home(ally_home: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """The fixture's home copied to a short path (``/tmp/a…``), ``ALLY_HOME`` pointing at it."""
    import shutil
    import tempfile

    home = Path(tempfile.mkdtemp(prefix="a", dir="/tmp"))
    shutil.copytree(ally_home, home, dirs_exist_ok=True)
    monkeypatch.setenv("ALLY_HOME", str(home))
    yield home
    shutil.rmtree(home, ignore_errors=True)


@pytest.mark.parametrize("requirement", ["idxdemo-alpha", "idxdemo-missing"])
def test_index_credentials_are_stripped_where_ally_shows_the_url(
    requirement, short_home, serve, wheels, ally_cli
):
    """The tests above would pass even if ally stripped nothing: their messages never quote an
    index URL (a failed installer's command line is cut at 200 characters, before its
    ``--index-url``). Here the URL is near the start of an ``install_command`` in a short
    home, and the test first checks that the URL *is* shown, without ``user:password@``."""
    index = serve([wheels["alpha1"]], auth=("ally-user", SECRET))
    command = (
        f"python -m pip install -q --index-url {index.url(f'ally-user:{SECRET}')} {requirement}"
    )
    plugin = short_home / "plugins" / "cred"
    plugin.mkdir()
    manifest = {"name": "cred", "runtime": "python3", "dependencies": {"install_command": command}}
    (plugin / "plugin.json").write_text(json.dumps(manifest))
    proc = ally_cli("install", "-v", "cred")
    text = proc.stdout + proc.stderr
    # The installer used the credentials...
    assert any(auth == index.expected_auth for _, auth in index.requests), index.requests
    if requirement == "idxdemo-alpha":
        assert proc.returncode == 0, text
    else:
        assert proc.returncode == 4 and "install_command failed" in text, text
    # ...ally showed the URL (progress line, failure message) without them.
    assert SECRET not in text
    assert index.url() in text, text
    for args in (("list", "--json"), ("doctor", "--json")):
        shown = ally_cli(*args)
        assert SECRET not in shown.stdout + shown.stderr, args
    # Markers, failure records: nothing ally keeps about envs holds the password (the warm
    # index is left out: it caches plugin.json as the plugin's author wrote it).
    for path in (short_home / "plugin-envs").rglob("*"):
        if path.is_file() and not path.name.startswith("warm-index."):
            assert SECRET not in path.read_bytes().decode("utf-8", "replace"), path


# ---------------------------------------------------------------------------------------------
# offline


@pytest.mark.parametrize(
    ("backend", "how"), [("uv", "--offline"), ("uv", "ALLY_OFFLINE=1"), ("pip", "ALLY_OFFLINE=1")]
)
def test_offline_with_empty_cache_fails_clearly_without_contacting_the_index(
    backend, how, ally_home, make_plugin, serve, wheels, ally_cli
):
    index = serve([wheels["alpha1"]])
    _ally_index(ally_home, index_url=index.url())
    _plugin(make_plugin)
    env = {"ALLY_INSTALLER": backend}
    args = ["install", "idx"]
    if how == "--offline":
        args.append("--offline")
    else:
        env["ALLY_OFFLINE"] = "1"
    proc = ally_cli(*args, env=env)
    assert proc.returncode == 4, proc.stdout + proc.stderr
    lines = [line for line in proc.stdout.splitlines() if line.startswith("\u2717 idx:")]
    assert len(lines) == 1, proc.stdout
    assert "idxdemo-alpha" in lines[0]
    # The reason says why nothing was found: no network was allowed (paths left out: the
    # test's tmp dir has "offline" in its name).
    words = re.sub(r"/\S+", "", lines[0]).lower()
    assert "offline" in words or "network" in words, lines[0]
    assert "Traceback" not in proc.stderr
    assert index.requests == []
    assert _published(ally_home) == []


@pytest.mark.parametrize("backend", BACKENDS)
def test_offline_installs_from_find_links_without_contacting_the_index(
    backend, ally_home, make_plugin, serve, wheels
):
    index = serve([wheels["alpha1"], wheels["gamma"]])
    _ally_index(ally_home, index_url=index.url(), find_links=[str(wheels["gamma"].parent)])
    _plugin(make_plugin, "idxdemo-gamma\n")
    outcome = Host(ally_home, settings={"installer": backend, "offline": True}).ensure("idx")
    assert outcome.ready, outcome.reason
    assert outcome.packages["idxdemo-gamma"] == "1.0.0"
    assert index.requests == []


@pytest.mark.parametrize("backend", BACKENDS)
def test_going_offline_keeps_using_the_env_built_online(
    backend, ally_home, make_plugin, serve, wheels, ally_cli
):
    """An env built online is complete: running it offline must not rebuild (or break) it."""
    index = serve([wheels["alpha1"]])
    _ally_index(ally_home, index_url=index.url())
    _plugin(make_plugin)
    first = _load(ally_home, backend)
    assert first.ready, first.reason
    before = len(index.requests)
    proc = ally_cli(
        "run", "idx", "version", "--offline", "--input", "{}", env={"ALLY_INSTALLER": backend}
    )
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["result"] == "1.0.0"
    assert len(index.requests) == before
    assert _published(ally_home) == [first.env.path], "the env was rebuilt for --offline"


# ---------------------------------------------------------------------------------------------
# index settings and the env's identity


@pytest.mark.parametrize("backend", BACKENDS)
def test_unchanged_index_settings_reuse_the_env_without_spawning(
    backend, ally_home, make_plugin, serve, wheels, monkeypatch, no_spawn
):
    index = serve([wheels["alpha1"]])
    monkeypatch.setenv("PIP_INDEX_URL", index.url())
    _ally_index(ally_home, extra_index_urls=[index.url()])
    _plugin(make_plugin)
    first = _load(ally_home, backend)
    assert first.ready and first.action == "built", first.reason
    requests = len(index.requests)
    with no_spawn():
        again = _load(ally_home, backend)
    assert again.ready and again.action == "none"
    assert again.env.path == first.env.path
    assert len(index.requests) == requests


@pytest.mark.parametrize(
    "change",
    ["config.toml index_url", "config.toml extra/find_links", "PIP_INDEX_URL", "pip.conf"],
)
def test_changed_index_settings_rebuild_the_env(
    change, ally_home, make_plugin, serve, wheels, tmp_path, monkeypatch
):
    old, new = serve([wheels["alpha1"]]), serve([wheels["alpha2"]])
    links = str(wheels["gamma"].parent)
    conf = tmp_path / "pip.conf"

    def configure(url: str, second: bool) -> None:
        if change == "config.toml index_url":
            _ally_index(ally_home, index_url=url)
        elif change == "config.toml extra/find_links":
            _ally_index(ally_home, index_url=old.url(), find_links=[links] if second else [])
        elif change == "PIP_INDEX_URL":
            _ally_index(ally_home)
            monkeypatch.setenv("PIP_INDEX_URL", url)
        else:
            _ally_index(ally_home)
            _pip_conf(conf, **{"index-url": url})
            monkeypatch.setenv("PIP_CONFIG_FILE", str(conf))

    configure(old.url(), False)
    _plugin(make_plugin)
    first = _load(ally_home, "uv")
    assert first.ready and first.action == "built", first.reason
    assert first.packages["idxdemo-alpha"] == "1.0.0"
    configure(new.url(), True)
    second = _load(ally_home, "uv")
    assert second.ready, second.reason
    assert second.action == "repaired"
    assert second.repair_reason == "package index settings changed"
    assert second.env.path != first.env.path
    assert len(_published(ally_home)) == 2
    if change != "config.toml extra/find_links":
        assert second.packages["idxdemo-alpha"] == "2.0.0"
        assert new.downloads


def test_editing_pip_conf_between_cli_runs_rebuilds_the_env(
    ally_home, make_plugin, serve, wheels, tmp_path, ally_cli
):
    old, new = serve([wheels["alpha1"]]), serve([wheels["alpha2"]])
    _ally_index(ally_home)
    conf = _pip_conf(tmp_path / "pip.conf", **{"index-url": old.url()})
    env = {"PIP_CONFIG_FILE": str(conf), "ALLY_INSTALLER": "uv"}
    _plugin(make_plugin)
    first = ally_cli("run", "idx", "version", "-q", "--input", "{}", env=env)
    assert first.returncode == 0, first.stderr
    assert json.loads(first.stdout)["result"] == "1.0.0"
    _pip_conf(conf, **{"index-url": new.url()})
    second = ally_cli("run", "idx", "version", "-q", "--input", "{}", env=env)
    assert second.returncode == 0, second.stderr
    assert json.loads(second.stdout)["result"] == "2.0.0"
    assert new.downloads == ["idxdemo_alpha-2.0.0-py3-none-any.whl"]
    assert len(_published(ally_home)) == 2


def test_changing_only_the_index_password_does_not_rebuild(
    ally_home, make_plugin, serve, wheels, no_spawn
):
    index = serve([wheels["alpha1"]])
    _ally_index(ally_home, index_url=index.url(f"ally-user:{SECRET}"))
    _plugin(make_plugin)
    first = _load(ally_home, "uv")
    assert first.ready and first.action == "built", first.reason
    _ally_index(ally_home, index_url=index.url("ally-user:rotated-password"))
    with no_spawn():
        again = _load(ally_home, "uv")
    assert again.ready and again.action == "none"
    assert again.env.path == first.env.path


# ---------------------------------------------------------------------------------------------
# several indexes: weighed together, as pip does


def _file_index(root: Path, wheels: list[Path]) -> str:
    """A PEP 503 index as plain files under ``root`` (``simple/<project>/index.html``)."""
    files = root / "files"
    files.mkdir(parents=True)
    (root / "simple").mkdir()
    projects: dict[str, list[Path]] = {}
    for wheel in wheels:
        copy = files / wheel.name
        copy.write_bytes(wheel.read_bytes())
        projects.setdefault(_normalize(wheel.name.split("-")[0]), []).append(copy)
    for project, found in projects.items():
        page = root / "simple" / project
        page.mkdir(parents=True)
        links = "".join(
            f'<a href="../../files/{w.name}#sha256={hashlib.sha256(w.read_bytes()).hexdigest()}">'
            f"{w.name}</a>\n"
            for w in found
        )
        (page / "index.html").write_text(f"<html><body>\n{links}</body></html>\n", "utf-8")
    listing = "".join(f'<a href="{p}/">{p}</a>\n' for p in sorted(projects))
    (root / "simple" / "index.html").write_text(f"<html><body>\n{listing}</body></html>\n")
    return (root / "simple").as_uri()


@pytest.mark.parametrize("source", ["pip.conf", "config.toml", "pip.conf + config.toml"])
@pytest.mark.parametrize("backend", BACKENDS)
def test_a_pin_only_the_main_index_has_resolves_although_an_extra_index_has_the_package(
    backend, source, ally_home, make_plugin, wheels, tmp_path, monkeypatch
):
    """pip looks at every index for a package; uv's default stops at the first that has it."""
    main = _file_index(tmp_path / "main", [wheels["alpha1"]])
    extra = _file_index(tmp_path / "extra", [wheels["alpha2"]])
    if source == "pip.conf":
        _ally_index(ally_home)
        conf = _pip_conf(tmp_path / "pip.conf", **{"index-url": main, "extra-index-url": extra})
        monkeypatch.setenv("PIP_CONFIG_FILE", str(conf))
    elif source == "config.toml":
        _ally_index(ally_home, index_url=main, extra_index_urls=[extra])
    else:  # the main index from pip's configuration, the extra one from ally's settings
        conf = _pip_conf(tmp_path / "pip.conf", **{"index-url": main})
        monkeypatch.setenv("PIP_CONFIG_FILE", str(conf))
        _ally_index(ally_home, extra_index_urls=[extra])
    _plugin(make_plugin, "idxdemo-alpha==1.0.0\n")
    outcome = _load(ally_home, backend)
    assert outcome.ready, outcome.reason
    assert outcome.packages["idxdemo-alpha"] == "1.0.0"
    assert outcome.tool("version").call({}).result == "1.0.0"


@pytest.mark.parametrize("backend", BACKENDS)
def test_with_several_indexes_the_newest_version_of_all_of_them_wins(
    backend, ally_home, make_plugin, wheels, tmp_path
):
    main = _file_index(tmp_path / "main", [wheels["alpha2"]])
    extra = _file_index(tmp_path / "extra", [wheels["alpha1"]])
    _ally_index(ally_home, index_url=main, extra_index_urls=[extra])
    _plugin(make_plugin, "idxdemo-alpha\n")
    outcome = _load(ally_home, backend)
    assert outcome.ready, outcome.reason
    assert outcome.packages["idxdemo-alpha"] == "2.0.0"


# ---------------------------------------------------------------------------------------------
# credentials never on an installer's command line


def _command_lines() -> list[str]:
    """Every process's command line, as any user on the machine can read it."""
    lines = []
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                data = Path(entry.path, "cmdline").read_bytes()
            except OSError:
                continue
            lines.append(data.replace(b"\0", b" ").decode("utf-8", "replace"))
    return lines


@pytest.mark.skipif(not os.path.isdir("/proc/self"), reason="needs /proc")
@pytest.mark.parametrize(
    "source",
    [
        "config.toml index_url",
        "config.toml extra",
        "config.toml find_links",
        "PIP_INDEX_URL",
        "pip.conf",
    ],
)
@pytest.mark.parametrize("backend", BACKENDS)
def test_index_credentials_never_reach_an_installers_command_line(
    backend, source, ally_home, make_plugin, serve, wheels, tmp_path, monkeypatch
):
    # Unique per run: other test sessions on this machine may use the module's SECRET.
    secret = f"{SECRET}-{secrets.token_hex(8)}"
    seen: list[list[str]] = []

    def look(path: str) -> None:
        seen.append(_command_lines())

    index = serve([wheels["alpha1"]], auth=("ally-user", secret), on_request=look)
    url = index.url(f"ally-user:{secret}")
    if source == "config.toml index_url":
        _ally_index(ally_home, index_url=url)
    elif source == "config.toml extra":
        _ally_index(
            ally_home, index_url=_file_index(tmp_path / "empty", []), extra_index_urls=[url]
        )
    elif source == "config.toml find_links":
        _ally_index(ally_home, no_index=True, find_links=[f"{url}/idxdemo-alpha/"])
    elif source == "PIP_INDEX_URL":
        _ally_index(ally_home)
        monkeypatch.setenv("PIP_INDEX_URL", url)
    else:
        _ally_index(ally_home)
        conf = _pip_conf(tmp_path / "pip.conf", **{"index-url": url})
        monkeypatch.setenv("PIP_CONFIG_FILE", str(conf))
    _plugin(make_plugin)
    outcome = _load(ally_home, backend)
    assert outcome.ready, outcome.reason
    assert outcome.packages["idxdemo-alpha"] == "1.0.0"
    # The wheel came through the authenticated index (it refuses anything else).
    assert index.expected_auth in [auth for p, auth in index.requests if p.startswith("/files/")]
    # The installer was running (and visible) while the index was asked.
    requirements = str(ally_home / "plugins" / "idx" / "requirements.txt")
    assert seen and all(any(requirements in line for line in lines) for lines in seen)
    leaked = {line for lines in seen for line in lines if secret in line}
    assert not leaked, leaked
