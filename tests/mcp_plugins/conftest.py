"""Fixtures of the MCP-server plugin tests: two tiny stdio MCP servers built in this session
(a wheel with a console script, an npm tarball with a bin), and a local wheelhouse and npm
registry to install them from. Helpers are in mcp_plugin_kit.py."""

from __future__ import annotations

import json
import os
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Callable

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from mcp_plugin_kit import (
    NODE,
    NODE_PACKAGE,
    NODE_VERSIONS,
    NPM,
    SOURCES,
    Registry,
    host_environ,
    mcp_session,
    py_server_wheel,
)

from ally_core.testing import DEFAULT_WHEELS, build_wheel, pack_npm


@pytest.fixture(scope="session")
def wheelhouse(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """ally's default test wheels plus the Python MCP server 1.0.0 (2.0.0 comes later)."""
    dest = tmp_path_factory.mktemp("wheelhouse")
    for name, version, requires, scripts in DEFAULT_WHEELS:
        build_wheel(dest, name, version, requires=requires, console_scripts=scripts)
    py_server_wheel(dest, "1.0.0")
    return dest


@pytest.fixture(scope="session")
def later_wheels(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Wheels a test publishes into its own index after the first install."""
    dest = tmp_path_factory.mktemp("later-wheels")
    py_server_wheel(dest, "2.0.0")
    return dest


@pytest.fixture
def index_dir(ally_home: Path, wheelhouse: Path, tmp_path: Path) -> Path:
    """This test's own copy of the wheelhouse, the only place its Python installs read."""
    dest = tmp_path / "index"
    shutil.copytree(wheelhouse, dest)
    (ally_home / "config.toml").write_text(
        f"[ally.index]\nno_index = true\nfind_links = [{json.dumps(str(dest))}]\n", "utf-8"
    )
    return dest


@pytest.fixture
def home(ally_home: Path, index_dir: Path) -> Path:
    """An isolated ally home installing from this test's wheelhouse (and npm registry, for
    the tests that ask for ``registry``)."""
    return ally_home


# ---------------------------------------------------------------------------------------------
# npm


@pytest.fixture(scope="session")
def mcp_tarballs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """``name@version`` -> tarball packed by ``npm pack``: the Node MCP server (two versions)
    and the library it requires."""
    if NODE is None or NPM is None:
        pytest.skip("node and npm are needed")
    root = tmp_path_factory.mktemp("npm-src")
    dest = tmp_path_factory.mktemp("npm-tarballs")
    packages = {
        ("ally-mcp-lib", "1.0.0"): {
            "package.json": json.dumps(
                {"name": "ally-mcp-lib", "version": "1.0.0", "main": "index.js"}
            ),
            "index.js": SOURCES.NODE_LIB.replace("@VERSION@", "1.0.0"),
        }
    }
    for version in NODE_VERSIONS:
        packages[(NODE_PACKAGE, version)] = {
            "package.json": json.dumps(
                {
                    "name": NODE_PACKAGE,
                    "version": version,
                    "bin": {NODE_PACKAGE: "cli.js"},
                    "dependencies": {"ally-mcp-lib": "^1.0.0"},
                }
            ),
            "cli.js": SOURCES.NODE_SERVER.replace("@VERSION@", version),
        }
    sources = {f"{name}-{version}": files for (name, version), files in packages.items()}
    packed = pack_npm(sources, root, dest)
    return {f"{i['name']}@{i['version']}": dest / i["filename"] for i in packed}


@pytest.fixture
def registry(
    mcp_tarballs: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, home: Path
) -> Iterator[Registry]:
    """npm sees only this test's registry: no user or global npmrc, no other npm_config_*."""
    for key in list(os.environ):
        if key.lower().startswith("npm_config_") or key in {"NODE_OPTIONS", "NODE_PATH"}:
            monkeypatch.delenv(key)
    reg = Registry(mcp_tarballs)
    monkeypatch.setenv("npm_config_registry", reg.url)
    for which in ("userconfig", "globalconfig"):
        blank = tmp_path / f"blank-{which}"
        blank.write_text("", "utf-8")
        monkeypatch.setenv(f"npm_config_{which}", str(blank))
    yield reg
    reg.server.release.set()
    reg.server.server.shutdown()


# ---------------------------------------------------------------------------------------------
# the MCP client


@pytest.fixture
def ally_launch(home: Path) -> Callable[..., dict[str, Any]]:
    """``ally_launch(plugin, server, calls=...)``: start it as a host would, through
    ``python -m ally_core.cli mcp launch``, and talk MCP to it."""

    def run(plugin: str, server: str, **kw: Any) -> dict[str, Any]:
        env = {**host_environ(home), **kw.pop("env", {})}
        return mcp_session(
            sys.executable, ["-m", "ally_core.cli", "mcp", "launch", plugin, server], env, **kw
        )

    return run
