"""What a plugin's ``pyproject.toml`` asks to install: ``[project].dependencies`` and the
PEP 735 ``[dependency-groups]`` that ``plugin.json`` names, refused one line where installing
would silently miss packages."""

from __future__ import annotations

import re
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Optional

from .requirements import Signature, stat_signature

__all__ = ["dependency_groups", "pyproject_requirements"]


def _group_name(name: str) -> str:
    """PEP 735 normalises group names as PEP 503 does project names."""
    return re.sub(r"[-_.]+", "-", name).lower()


def _toml(text: str) -> dict[str, Any]:
    if sys.version_info >= (3, 11):
        import tomllib
    else:  # pragma: no cover - exercised on 3.9/3.10 only
        import tomli as tomllib
    data: dict[str, Any] = tomllib.loads(text)
    return data


def _expand_groups(table: Any, wanted: Sequence[str]) -> list[str]:
    """The requirement strings of the ``wanted`` groups, ``{include-group = …}`` resolved."""
    if not isinstance(table, dict):
        raise ValueError("[dependency-groups] must be a table")
    groups: dict[str, tuple[str, Any]] = {}
    for name, entries in table.items():
        key = _group_name(str(name))
        if key in groups:
            raise ValueError(f"[dependency-groups]: {groups[key][0]!r} and {name!r} are one group")
        groups[key] = (str(name), entries)
    out: list[str] = []

    def expand(name: str, path: tuple[str, ...]) -> None:
        key = _group_name(name)
        if key not in groups:
            have = ", ".join(sorted(g for g, _ in groups.values())) or "none"
            where = f" (included by {path[-1]!r})" if path else ""
            raise ValueError(f"[dependency-groups] has no group {name!r}{where} (groups: {have})")
        if key in path:
            cycle = " -> ".join([*path[path.index(key) :], key])
            raise ValueError(f"[dependency-groups]: {name!r} includes itself ({cycle})")
        label, entries = groups[key]
        if not isinstance(entries, list):
            raise ValueError(f"[dependency-groups].{label} must be a list")
        for i, entry in enumerate(entries):
            if isinstance(entry, str):
                out.append(entry)
            elif (
                isinstance(entry, dict)
                and set(entry) == {"include-group"}
                and isinstance(entry["include-group"], str)
            ):
                expand(entry["include-group"], (*path, key))
            else:
                raise ValueError(
                    f"[dependency-groups].{label}[{i}]: expected a requirement string or "
                    '{include-group = "name"}'
                )

    for name in wanted:
        expand(name, ())
    return list(dict.fromkeys(out))


_PYPROJECT: dict[tuple[str, tuple[str, ...]], tuple[Optional[Signature], list[str]]] = {}


def pyproject_requirements(dep_file: Path, groups: Sequence[str] = ()) -> list[str]:
    """The requirement strings ``pyproject.toml`` asks for: ``[project].dependencies`` and the
    PEP 735 ``[dependency-groups]`` named in ``groups``.

    Raises :class:`ValueError` (one line) where installing would silently miss packages:
    dependencies only in Poetry's ``[tool.poetry.dependencies]``, dynamic dependencies,
    or only dependency groups and none asked for. Cached per file by ``stat``.
    """
    key = (str(dep_file), tuple(groups))
    signature = stat_signature(str(dep_file))
    cached = _PYPROJECT.get(key)
    if cached is not None and signature is not None and cached[0] == signature:
        return list(cached[1])
    try:
        data = _toml(dep_file.read_text("utf-8"))
    except UnicodeDecodeError as exc:
        raise ValueError(f"not UTF-8 text ({exc.reason})") from None
    except Exception as exc:  # tomllib.TOMLDecodeError (a ValueError), OSError
        raise ValueError(str(exc)) from None
    project = data.get("project", {})
    if not isinstance(project, dict):
        raise ValueError("[project] must be a table")
    declared = "dependencies" in project
    deps = project.get("dependencies", [])
    if not isinstance(deps, list) or not all(isinstance(d, str) for d in deps):
        raise ValueError("[project].dependencies must be a list of strings")
    dynamic = project.get("dynamic", [])
    if isinstance(dynamic, list) and "dependencies" in dynamic:
        raise ValueError(
            "[project].dependencies is dynamic (computed by the build backend, which ally "
            "does not run): list them in [project].dependencies or use a requirements.txt"
        )
    poetry = data.get("tool", {}).get("poetry", {}) if isinstance(data.get("tool"), dict) else {}
    poetry_deps = poetry.get("dependencies", {}) if isinstance(poetry, dict) else {}
    if not declared and isinstance(poetry_deps, dict) and set(poetry_deps) - {"python"}:
        raise ValueError(
            "its dependencies are only in [tool.poetry.dependencies], Poetry's own format, "
            "which ally does not read: list them in [project].dependencies (PEP 621) or a "
            "requirements.txt"
        )
    table = data.get("dependency-groups")
    if groups:
        if table is None:
            raise ValueError(
                f"dependencies.groups names {', '.join(map(repr, groups))} but the file has no "
                "[dependency-groups] table"
            )
        deps = list(dict.fromkeys([*deps, *_expand_groups(table, groups)]))
    elif not declared and isinstance(table, dict) and table:
        names = ", ".join(str(g) for g in table)
        raise ValueError(
            f"it has no [project].dependencies, only [dependency-groups] ({names}), which are "
            'installed when named in plugin.json: "dependencies": {"groups": [...]}'
        )
    if signature is not None:
        _PYPROJECT[key] = (signature, list(deps))
    return list(deps)


def dependency_groups(options: Any) -> tuple[str, ...]:
    """``dependencies.groups`` of a manifest (its runtime-specific keys), checked."""
    groups = options.get("groups", ()) if hasattr(options, "get") else ()
    if not isinstance(groups, (list, tuple)) or not all(
        isinstance(g, str) and g.strip() for g in groups
    ):
        raise ValueError("$.dependencies.groups: expected a list of group names")
    return tuple(groups)
