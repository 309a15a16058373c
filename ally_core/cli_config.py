"""``ally config``: ally's settings and paths, and a plugin's stored config values."""

from __future__ import annotations

import argparse

from .cli_common import EXIT_OK, _emit, _hide, _host, _note, _say
from .errors import PluginNotFound

__all__ = ["cmd_config"]


def cmd_config(args: argparse.Namespace) -> int:
    from .config import SETTINGS

    host = _host(args)
    action = args.action
    if action is None:
        from .plugin_config import secret_store

        settings = host.settings
        store = secret_store(host)
        paths = {
            "home": host.paths.home,
            "plugin_dirs": list(host.paths.plugin_dirs),
            "envs_dir": host.paths.envs_dir,
            "cache_dir": host.paths.cache_dir,
            "config_file": host.paths.config_file,
        }
        if args.json:
            _emit(
                {
                    "settings": {
                        k: {"value": settings.values[k], "source": settings.sources[k]}
                        for k in SETTINGS
                    },
                    "paths": {
                        k: str(v) if not isinstance(v, list) else [str(x) for x in v]
                        for k, v in paths.items()
                    },
                    "secrets": {
                        "backend": store.backend,
                        "available": store.available,
                        "detail": store.detail,
                        "reason": store.reason,
                    },
                }
            )
            return EXIT_OK
        for key, (var, _p, _d, doc) in SETTINGS.items():
            value = settings.values[key]
            _say(f"{key} = {value!r}  ({settings.sources[key]}; {var}: {doc})")
        for key, value in paths.items():
            shown = ", ".join(map(str, value)) if isinstance(value, list) else value
            _say(f"{key}: {shown}")
        if store.backend == "file":
            where = f"0600 plain-text files in {store.detail}"
        else:
            where = f"the OS keyring ({store.detail})" if store.available else "none usable"
        _say(f"secrets: {where}  ({store.reason})")
        return EXIT_OK
    from . import plugin_config as pc

    source = host.source(args.plugin)
    if source.manifest is None:
        raise source.error or PluginNotFound(args.plugin)
    manifest = source.manifest
    where = source.plugin_dir
    if action == "set":
        key = pc.canonical_key(manifest, args.key)
        if pc.is_secret(manifest, key):
            _hide(args.value)
        pc.set_stored(host, manifest, key, args.value, plugin_dir=where)
        shown = pc.MASK if pc.is_secret(manifest, key) else args.value
        if args.json:
            stored = pc.stored_view(host, manifest, where).get(key, shown)
            _emit({"plugin": manifest.name, "key": key, "value": stored})
        else:
            _say(f"{manifest.name}: {key} = {shown}")
    elif action == "unset":
        found = pc.unset_stored(host, manifest, args.key, plugin_dir=where)
        if args.json:
            _emit({"plugin": manifest.name, "key": args.key, "removed": found})
        else:
            _say(f"{manifest.name}: {args.key} {'removed' if found else 'was not set'}")
    else:
        values = pc.stored_view(host, manifest, where)
        elsewhere = pc.stored_elsewhere(host, manifest.name, where)
        if args.json:
            _emit(
                {
                    "plugin": manifest.name,
                    "dir": str(where),
                    "config": values,
                    "not_used": elsewhere,
                }
            )
        else:
            for key, value in sorted(values.items()):
                _say(f"{key} = {value}")
            for other in elsewhere:
                _note(
                    args,
                    f"note: values stored for {other} are not used for {where} "
                    "(config belongs to the directory it was set for)",
                )
    return EXIT_OK
