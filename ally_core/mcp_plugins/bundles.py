"""Offline bundles of Claude-style plugins: the plugin and each server's artifacts.

``ally bundle PLUGIN`` on a Claude-style plugin writes the same archive as for a ``plugin.json``
plugin (see :mod:`ally_core.bundle`), with one artifacts directory per managed server::

    plugin/.ally-bundle/mcp/<server>/    the runtime's artifacts and lock (wheels, tarballs)
                                         + the server's pinned requirements.txt or
                                         package.json and package-lock.json

``ally install ARCHIVE`` unpacks it like any bundle; each server's env is then built from its
directory alone (no index, no registry, no resolve), and so are later repairs.
"""

from __future__ import annotations

import platform
import shutil
import sys
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

import attrs

from ..bundle import (
    ARTIFACTS_DIR,
    BUNDLE_FORMAT,
    BundleError,
    _copy_plugin,
    _sha256,
    write_archive,
)
from ..errors import PluginNotFound
from ..store import now_iso
from .discovery import BUNDLE_SUBDIR, ServerRef, find_plugin
from .servers import ensure_servers
from .specs import server_spec

if TYPE_CHECKING:
    from ..host import Host, ProgressCallback

__all__ = ["make_server_bundle"]


def make_server_bundle(
    host: Host,
    name: str,
    output: Optional[Path] = None,
    progress: Optional[ProgressCallback] = None,
) -> Path:
    """Write the offline bundle of the Claude-style plugin ``name``; return its path."""
    plugin = find_plugin(host, name)
    refs = [ServerRef(plugin, server) for server in plugin.servers]
    outcomes = ensure_servers(host, refs, progress=progress)
    blocked = [o for o in outcomes if not o.ready]
    if blocked:
        raise PluginNotFound(
            f"{name}: cannot bundle: " + "; ".join(f"{o.label}: {o.reason}" for o in blocked)
        )
    output = output or Path.cwd() / f"{plugin.name}-{plugin.version or '0'}.ally.tar.gz"
    servers: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="ally-bundle-") as tmp:
        stage = Path(tmp)
        _copy_plugin(plugin.plugin_dir, stage / "plugin", plugin.name)
        for outcome in outcomes:
            launcher, marker, ref = outcome.launcher, outcome.marker, outcome.ref
            if launcher is None or marker is None or ref is None:
                continue  # started as declared: nothing to bundle
            dest = stage / "plugin" / ARTIFACTS_DIR / BUNDLE_SUBDIR / ref.server.slug
            dest.mkdir(parents=True)
            spec = server_spec(host, ref, launcher)
            assert spec is not None
            spec = attrs.evolve(spec, env_dir=marker.env.path)
            lock = host.hook.bundle_artifacts(spec=spec, env=marker.env, dest=dest)
            if lock is None:
                raise BundleError(f"{ref.label}: runtime {spec.runtime!r} cannot make bundles")
            if launcher.pinned and spec.dependency_file is not None:
                # What the env was built from: the bundled env's key and its spec.
                for source in spec.dependency_file.parent.iterdir():
                    if source.is_file() and not (dest / source.name).exists():
                        shutil.copyfile(source, dest / source.name)
            servers[ref.server.name] = {
                "launcher": launcher.kind,
                "runtime": spec.runtime,
                "interpreter": {
                    "kind": marker.env.interpreter.kind,
                    "version": marker.env.interpreter.version,
                },
                "lock": lock,
            }
        files = {
            str(p.relative_to(stage)): _sha256(p)
            for p in sorted(stage.rglob("*"))
            if p.is_file() and not p.is_symlink()
        }
        info = {
            "format": BUNDLE_FORMAT,
            "plugin": plugin.name,
            "version": plugin.version,
            "kind": "claude-plugin",
            "mcp_servers": servers,
            "platform": {"system": sys.platform, "machine": platform.machine()},
            "created_at": now_iso(),
            "files": files,
        }
        write_archive(stage, info, output)
    return output
