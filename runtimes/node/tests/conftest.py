"""Fixtures of the node runtime's tests: npm packages packed in this session, served by a
minimal npm registry on 127.0.0.1, and an npm configuration that reaches nothing else."""

from __future__ import annotations

import base64
import hashlib
import io
import json
import os
import shutil
import tarfile
import threading
import urllib.parse
from collections.abc import Iterator, Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from ally_core.testing import pack_npm

NODE = shutil.which("node")
NPM = shutil.which("npm")

#: name -> version -> files of the packages this session packs with ``npm pack``.
PACKAGES: Mapping[str, Mapping[str, Mapping[str, str]]] = {
    "ally-cjs-lib": {
        version: {
            "package.json": json.dumps(
                {"name": "ally-cjs-lib", "version": version, "main": "index.js"}
            ),
            "index.js": f"exports.version = {version!r};\nexports.add = (a, b) => a + b;\n",
        }
        for version in ("1.0.0", "1.1.0")
    },
    # ESM only: no "require" condition, so only `import` can load it.
    "@ally-test/esm-lib": {
        "2.0.0": {
            "package.json": json.dumps(
                {
                    "name": "@ally-test/esm-lib",
                    "version": "2.0.0",
                    "type": "module",
                    "exports": {".": {"import": "./index.js"}},
                    "dependencies": {"ally-cjs-lib": "^1.0.0"},
                }
            ),
            "index.js": 'import lib from "ally-cjs-lib";\n'
            "export const shout = (s) => s.toUpperCase() + '!';\n"
            "export const sum = (a, b) => lib.add(a, b);\n",
        }
    },
    "ally-hello-bin": {
        "1.0.0": {
            "package.json": json.dumps(
                {"name": "ally-hello-bin", "version": "1.0.0", "bin": {"ally-hello": "cli.js"}}
            ),
            "cli.js": "#!/usr/bin/env node\n"
            "let input = '';\n"
            "process.stdin.on('data', (c) => (input += c));\n"
            "process.stdin.on('end', () => {\n"
            "  const args = JSON.parse(input || '{}');\n"
            "  console.log(JSON.stringify({ success: true, result: {\n"
            "    hello: args.who || 'world', argv: process.argv.slice(2),\n"
            "    node: process.execPath, cwd: process.cwd() } }));\n"
            "});\n",
        }
    },
    # Stands in for tsx: a bin that runs a .ts file through an ESM load hook that strips the
    # type annotations this test suite's TypeScript uses (like tsx, in a child node process).
    "ally-fake-tsx": {
        "1.0.0": {
            "package.json": json.dumps(
                {"name": "ally-fake-tsx", "version": "1.0.0", "bin": {"tsx": "cli.mjs"}}
            ),
            "cli.mjs": "#!/usr/bin/env node\n"
            'import { spawnSync } from "node:child_process";\n'
            "const hooks = new URL('./register.mjs', import.meta.url).href;\n"
            "const r = spawnSync(process.execPath, ['--import', hooks, ...process.argv.slice(2)],"
            " { stdio: 'inherit' });\n"
            "process.exit(r.status ?? 1);\n",
            "register.mjs": 'import { register } from "node:module";\n'
            "register(new URL('./load-ts.mjs', import.meta.url));\n",
            "load-ts.mjs": 'import { readFile } from "node:fs/promises";\n'
            "export async function load(url, context, nextLoad) {\n"
            "  if (!url.endsWith('.ts')) return nextLoad(url, context);\n"
            "  const ts = await readFile(new URL(url), 'utf8');\n"
            "  const js = ts.replace(/^interface \\w+ \\{[^}]*\\}\\n/gm, '')\n"
            "    .replace(/:\\s*(string|number|Greeting)\\b/g, '');\n"
            "  return { format: 'module', source: js, shortCircuit: true };\n"
            "}\n",
        }
    },
    # Writes a file into its own directory when npm runs its install script.
    "ally-postinstall": {
        "1.0.0": {
            "package.json": json.dumps(
                {
                    "name": "ally-postinstall",
                    "version": "1.0.0",
                    "scripts": {"postinstall": "node -e \"require('fs').writeFileSync('ran','')\""},
                }
            ),
            "index.js": "module.exports = require('fs').existsSync(__dirname + '/ran');\n",
        }
    },
}


def _integrity(data: bytes) -> str:
    return "sha512-" + base64.b64encode(hashlib.sha512(data).digest()).decode()


class NpmRegistry:
    """Packuments and tarballs over HTTP, enough for ``npm install``, ``ci`` and ``pack``."""

    def __init__(self, tarballs: list[Path]) -> None:
        self.versions: dict[str, dict[str, tuple[dict[str, Any], bytes]]] = {}
        self.requests: list[str] = []
        #: While ``hold`` is set, tarball downloads wait for ``release``: an install in flight.
        self.hold = threading.Event()
        self.release = threading.Event()
        self.tarball_requested = threading.Event()
        for path in tarballs:
            data = path.read_bytes()
            with tarfile.open(fileobj=io.BytesIO(data)) as tar:
                member = tar.extractfile("package/package.json")
                assert member is not None
                manifest = json.loads(member.read())
            self.versions.setdefault(manifest["name"], {})[manifest["version"]] = (manifest, data)
        registry = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                registry.requests.append(self.path)
                path = urllib.parse.unquote(self.path.split("?", 1)[0]).lstrip("/")
                name, _, file = path.partition("/-/")
                if file:
                    registry.tarball_requested.set()
                    if registry.hold.is_set():
                        registry.release.wait(120)
                    for _manifest, data in registry.versions.get(name, {}).values():
                        if file == _tarball_name(name, _manifest["version"]):
                            return self._send(200, data, "application/octet-stream")
                elif name in registry.versions:
                    return self._send(200, json.dumps(registry.packument(name)).encode())
                self._send(404, b'{"error":"Not found"}')

            def _send(self, code: int, body: bytes, kind: str = "application/json") -> None:
                self.send_response(code)
                self.send_header("Content-Type", kind)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def packument(self, name: str) -> dict[str, Any]:
        versions = {}
        for version, (manifest, data) in self.versions[name].items():
            versions[version] = {
                **manifest,
                "dist": {
                    "tarball": f"{self.url}{name}/-/{_tarball_name(name, version)}",
                    "integrity": _integrity(data),
                    "shasum": hashlib.sha1(data).hexdigest(),
                },
            }
        latest = max(versions, key=lambda v: tuple(int(p) for p in v.split(".")))
        return {"name": name, "dist-tags": {"latest": latest}, "versions": versions}

    def tarball_requests(self) -> list[str]:
        return [r for r in self.requests if "/-/" in r]


def _tarball_name(name: str, version: str) -> str:
    return f"{name.rpartition('/')[2]}-{version}.tgz"


@pytest.fixture(scope="session")
def npm_tarballs(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """Every package of :data:`PACKAGES`, packed by ``npm pack`` in one call."""
    if NODE is None or NPM is None:
        pytest.skip("node and npm are needed")
    root = tmp_path_factory.mktemp("npm-src")
    dest = tmp_path_factory.mktemp("npm-tarballs")
    sources = {
        f"{name.replace('/', '+')}-{version}": files
        for name, versions in PACKAGES.items()
        for version, files in versions.items()
    }
    packed = pack_npm(sources, root, dest)
    return [dest / item["filename"] for item in packed]


@pytest.fixture(scope="session")
def npm_registry(npm_tarballs: list[Path]) -> Iterator[NpmRegistry]:
    registry = NpmRegistry(npm_tarballs)
    yield registry
    registry.server.shutdown()


@pytest.fixture
def npm_env(
    npm_registry: NpmRegistry, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[NpmRegistry]:
    """npm sees only the local registry: no user or global npmrc, no other npm_config_*."""
    for key in list(os.environ):
        if key.lower().startswith("npm_config_") or key in {"NODE_OPTIONS", "NODE_PATH"}:
            monkeypatch.delenv(key)
    monkeypatch.setenv("npm_config_registry", npm_registry.url)
    for which in ("userconfig", "globalconfig"):
        blank = tmp_path / f"blank-{which}"
        blank.write_text("", "utf-8")  # npm refuses one file as both
        monkeypatch.setenv(f"npm_config_{which}", str(blank))
    npm_registry.requests.clear()
    npm_registry.hold.clear()
    npm_registry.release.clear()
    npm_registry.tarball_requested.clear()
    yield npm_registry
    npm_registry.release.set()  # never leave a download of a failed test hanging
