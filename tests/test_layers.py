"""The layer order of ``ally_core``: a module imports only from its own layer or the ones below.

Every import counts: module-level, function-local and ``TYPE_CHECKING`` ones alike (a cycle
hidden in a function is still a cycle). Read from the source with :mod:`ast`, so nothing is
imported. Also: no import cycle at all, and no module or class grows past what a reader can
take in at once.
"""

from __future__ import annotations

import ast
import fnmatch
from collections.abc import Iterator
from pathlib import Path

import pytest

import ally_core

PACKAGE = Path(ally_core.__file__).parent

#: Bottom first. A module may import modules of its own layer and of the layers before it.
LAYERS: list[tuple[str, list[str]]] = [
    ("foundations", ["__about__", "lean", "errors", "text", "paths", "config", "schema"]),
    ("processes", ["process", "containment", "installer_output"]),
    ("values", ["envs", "checks", "manifest", "progress", "replies", "forms", "plugin_schema"]),
    (
        "runtime contract",
        ["hookspecs", "entry_points", "plugin_manager", "dispatch", "runtimes", "runtimes.*"],
    ),
    (
        "machinery",
        ["store", "warm_index", "discovery", "keys", "builder", "failures", "outcomes"],
    ),
    (
        "services",
        [
            "readiness",
            "maintenance",
            "tools",
            "plugin_config",
            "config_home",
            "workers",
            "workers.*",
            "mcp_plugins",
            "mcp_plugins.manifest",
            "mcp_plugins.discovery",
            "mcp_plugins.state",
            "mcp_plugins.warm_launch",
        ],
    ),
    ("host", ["host", "loader"]),
    (
        "on the host",
        [
            "bundle",
            "mcp",
            "mcp.*",
            "mcp_plugins.bundles",
            "mcp_plugins.config",
            "mcp_plugins.launch",
            "mcp_plugins.launchers",
            "mcp_plugins.pins",
            "mcp_plugins.records",
            "run_records",
            "mcp_plugins.servers",
            "mcp_plugins.specs",
        ],
    ),
    (
        "command line",
        [
            "cli",
            "cli_env",
            "cli_tools",
            "cli_config",
            "cli_common",
            "cli_options",
            "cli_exec",
            "quick_run",
            "completion",
            "seen_warnings",
            "mcp_plugins.commands",
        ],
    ),
    ("package", ["__init__", "__main__", "testing"]),
]

#: Lines a module may have, and lines a class may have.
MAX_MODULE_LINES = 700
MAX_CLASS_LINES = 400
#: Modules and classes still over the limit, each with the size it may not grow past: the
#: next ones to split. (The size of a file that lands over the limit is caught here too.)
OVERSIZED: dict[str, int] = {}
OVERSIZED_CLASSES: dict[str, int] = {}


def _modules() -> dict[str, Path]:
    """Dotted name (relative to ``ally_core``) -> file, for every module of the package."""
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = list(path.relative_to(PACKAGE).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1] or ["__init__"]
        found[".".join(parts)] = path
    return found


MODULES = _modules()


def layer_of(module: str) -> int:
    for index, (_name, patterns) in enumerate(LAYERS):
        if any(fnmatch.fnmatchcase(module, p) for p in patterns):
            return index
    raise AssertionError(f"ally_core.{module} is in no layer: add it to LAYERS in {__file__}")


def _package_of(module: str, path: Path) -> list[str]:
    """The package a module's relative imports start from, as parts."""
    parts = [] if module == "__init__" else module.split(".")
    return parts if path.name == "__init__.py" else parts[:-1]


def imports(module: str) -> Iterator[tuple[str, int]]:
    """``(imported ally_core module, line)`` for every import in ``module``, wherever it is."""
    path = MODULES[module]
    tree = ast.parse(path.read_text("utf-8"), str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == "ally_core":
                    yield _known(alias.name.split(".")[1:]), node.lineno
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = _package_of(module, path)
                base = base[: len(base) - (node.level - 1)] if node.level > 1 else base
                target = [*base, *(node.module.split(".") if node.module else [])]
            elif node.module and node.module.split(".")[0] == "ally_core":
                target = node.module.split(".")[1:]
            else:
                continue
            for alias in node.names:
                # ``from . import plugin_config``: the name is a module of its own.
                sub = ".".join([*target, alias.name])
                yield (sub if sub in MODULES else _known(target)), node.lineno


def _known(parts: list[str]) -> str:
    name = ".".join(parts) or "__init__"
    assert name in MODULES, f"import of unknown module ally_core.{name}"
    return name


def test_every_module_has_a_layer() -> None:
    for module in MODULES:
        layer_of(module)


@pytest.mark.parametrize("module", sorted(MODULES))
def test_module_imports_only_from_its_layer_or_below(module: str) -> None:
    own = layer_of(module)
    wrong = [
        f"line {line}: ally_core.{target} ({LAYERS[layer_of(target)][0]})"
        for target, line in imports(module)
        if layer_of(target) > own
    ]
    assert not wrong, f"ally_core.{module} ({LAYERS[own][0]}) imports from above: {wrong}"


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in graph.get(node, ()):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                top = stack.pop()
                on_stack.discard(top)
                component.append(top)
                if top == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_no_import_cycles() -> None:
    graph = {m: {t for t, _ in imports(m) if t != m} for m in MODULES}
    assert _cycles(graph) == []


def test_the_cycle_finder_finds_cycles() -> None:
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []


def test_the_import_walk_sees_function_local_and_type_checking_imports() -> None:
    # tools imports its PluginOutcome under TYPE_CHECKING and plugin_config in a function.
    seen = {target for target, _ in imports("tools")}
    assert {"outcomes", "plugin_config", "process"} <= seen


@pytest.mark.parametrize("module", sorted(MODULES))
def test_modules_and_classes_stay_readable(module: str) -> None:
    path = MODULES[module]
    text = path.read_text("utf-8")
    limit = OVERSIZED.get(module, MAX_MODULE_LINES)
    assert len(text.splitlines()) <= limit, f"{path} has more than {limit} lines: split it"
    for node in ast.walk(ast.parse(text)):
        if isinstance(node, ast.ClassDef):
            assert node.end_lineno is not None
            size = node.end_lineno - node.lineno + 1
            limit = OVERSIZED_CLASSES.get(f"{module}.{node.name}", MAX_CLASS_LINES)
            assert size <= limit, f"{path}: class {node.name} has {size} lines"


def test_host_is_a_facade() -> None:
    tree = ast.parse(MODULES["host"].read_text("utf-8"))
    (host,) = [n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "Host"]
    assert host.end_lineno is not None and host.end_lineno - host.lineno < 250


def test_docs_show_the_layers_of_this_table() -> None:
    text = (PACKAGE.parent / "docs" / "architecture.md").read_text("utf-8")
    table = text.split("<!-- layers (tests/test_layers.py reads this table) -->")[1]
    table = table.split("<!-- end of layers -->")[0]
    rows = [line.split("|")[1:3] for line in table.strip().splitlines()[2:]]
    documented = [
        (layer.strip(), sorted(m.strip(" `") for m in modules.split(",")))
        for layer, modules in rows
    ]
    expected = [
        (name, sorted(p for p in patterns if f"{p}.*" not in patterns)) for name, patterns in LAYERS
    ]
    assert documented == expected
