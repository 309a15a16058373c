"""The :class:`~ally_core.EnvSpec` of a server's env, whichever way it is built.

A bundled plugin's server is built from its bundle (``.ally-bundle/mcp/<server>/``) alone; a
package runner's from its pins (see :mod:`.pins`); an interpreter's from the plugin's own
dependency file, as a ``plugin.json`` plugin's env is.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Optional

import attrs

from ..envs import EnvSpec, ProgressEvent
from .discovery import BUNDLE_SUBDIR, PINS, ServerRef, state_dir
from .launchers import Launcher

if TYPE_CHECKING:
    from ..host import Host

__all__ = ["labelled", "read_pins", "server_spec"]

ProgressCallback = Callable[[ProgressEvent], None]
PINS_FORMAT = 1


def no_progress(event: ProgressEvent) -> None:
    return None


def bundle_dir(ref: ServerRef) -> Optional[Path]:
    from ..bundle import ARTIFACTS_DIR

    path = ref.plugin.plugin_dir / ARTIFACTS_DIR / BUNDLE_SUBDIR / ref.server.slug
    return path if path.is_dir() else None


def _dependency_name(launcher: Launcher) -> str:
    return "requirements.txt" if launcher.runtime == "python" else "package.json"


def read_pins(host: Host, ref: ServerRef) -> Optional[dict[str, Any]]:
    try:
        data = json.loads((state_dir(host, ref) / PINS).read_bytes())
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict) or data.get("format") != PINS_FORMAT:
        return None
    return data


def labelled(ref: ServerRef, progress: ProgressCallback) -> ProgressCallback:
    """Progress of a server's env, shown as ``plugin/server`` (not its store name)."""
    quoted = f"'{ref.pointer}'"

    def report(event: ProgressEvent) -> None:
        progress(
            attrs.evolve(
                event, plugin=ref.label, message=event.message.replace(quoted, f"'{ref.label}'")
            )
        )

    return report


def make_spec(
    host: Host,
    ref: ServerRef,
    launcher: Launcher,
    *,
    plugin_dir: Path,
    dependency_file: Optional[Path],
    progress: ProgressCallback,
    upgrade: bool = False,
    artifacts_dir: Optional[Path] = None,
) -> EnvSpec:
    assert launcher.runtime is not None
    return EnvSpec(
        runtime=launcher.runtime,
        plugin_name=ref.pointer,
        plugin_dir=plugin_dir,
        env_dir=host.store.pointer(ref.pointer),
        dependency_file=dependency_file,
        runtime_version=launcher.python,
        options=host.env_options(upgrade=upgrade, artifacts_dir=artifacts_dir),
        reporter=progress,
    )


def server_spec(
    host: Host,
    ref: ServerRef,
    launcher: Launcher,
    *,
    progress: ProgressCallback = no_progress,
    upgrade: bool = False,
    pins: Optional[Mapping[str, Any]] = None,
) -> Optional[EnvSpec]:
    """The spec of a managed server's env; ``None`` for a package runner not pinned yet.

    A bundled plugin's server is built from its bundle (``.ally-bundle/mcp/<server>/``) alone;
    a package runner's from its pins (``pins`` if given, else the recorded ones); an
    interpreter's from the plugin's dependency file.
    """
    bundle = bundle_dir(ref)
    if launcher.pinned:
        if bundle is not None:
            return make_spec(
                host,
                ref,
                launcher,
                plugin_dir=bundle,
                dependency_file=bundle / _dependency_name(launcher),
                progress=progress,
                upgrade=upgrade,
                artifacts_dir=bundle,
            )
        pins = pins if pins is not None else read_pins(host, ref)
        if pins is None or pins.get("declared") != launcher.declared_digest():
            return None
        lock_dir = state_dir(host, ref) / str(pins["lock"])
        return make_spec(
            host,
            ref,
            launcher,
            plugin_dir=lock_dir,
            dependency_file=lock_dir / _dependency_name(launcher),
            progress=progress,
            upgrade=upgrade,
        )
    return make_spec(
        host,
        ref,
        launcher,
        plugin_dir=ref.plugin.plugin_dir,
        dependency_file=launcher.dependency_file,
        progress=progress,
        upgrade=upgrade,
        artifacts_dir=bundle,
    )
