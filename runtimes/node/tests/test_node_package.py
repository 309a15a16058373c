"""The package's own shape: small modules, and only ally_core's public API."""

from __future__ import annotations

import ast
from pathlib import Path

import ally_runtime_node

import ally_core

PACKAGE = Path(ally_runtime_node.__file__).parent
MODULES = sorted(PACKAGE.glob("*.py"))


def test_modules_stay_small():
    sizes = {p.name: len(p.read_text("utf-8").splitlines()) for p in MODULES}
    assert {name: n for name, n in sizes.items() if n >= 400} == {}


def test_only_the_public_api_of_ally_core_is_imported():
    public = set(ally_core.__all__)
    found = []
    for path in MODULES:
        for node in ast.walk(ast.parse(path.read_text("utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                if node.module.startswith("ally_core."):
                    found.append(f"{path.name}: from {node.module} import ...")
                elif node.module == "ally_core":
                    found += [
                        f"{path.name}: {alias.name} is not in ally_core.__all__"
                        for alias in node.names
                        if alias.name not in public
                    ]
            elif isinstance(node, ast.Import):
                found += [
                    f"{path.name}: import {alias.name}"
                    for alias in node.names
                    if alias.name.startswith("ally_core.")
                ]
    assert found == []
    assert MODULES
