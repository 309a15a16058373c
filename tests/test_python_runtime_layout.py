"""The built-in Python runtime's package keeps the layout docs/architecture.md describes.

Each module imports only from modules listed before it (function-local and TYPE_CHECKING
imports included), stays under ~400 lines and its classes under 400, and the list in the
docs names every module of the package in that order.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "ally_core" / "runtimes" / "python"
MAX_MODULE_LINES = 420
MAX_CLASS_LINES = 400


def _documented_order() -> list[str]:
    """The modules in the order of docs/architecture.md's list (leaf first)."""
    text = (ROOT / "docs" / "architecture.md").read_text("utf-8")
    section = text.split("### The built-in Python runtime", 1)[1]
    block = section.split("```text", 1)[1].split("```", 1)[0]
    return [line.split()[0][: -len(".py")] for line in block.strip().splitlines()]


def _package_modules() -> list[str]:
    return sorted(p.stem for p in PACKAGE.glob("*.py") if p.name != "__init__.py")


def _sibling_imports(path: Path) -> set[str]:
    """The package's modules that ``path`` imports, anywhere in the file."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text("utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.level == 1:
            if node.module:
                found.add(node.module.split(".")[0])
            else:
                found.update(alias.name for alias in node.names)
    return found


def test_the_docs_list_every_module_of_the_package() -> None:
    assert sorted(_documented_order()) == _package_modules()


@pytest.mark.parametrize("module", _package_modules())
def test_a_module_imports_only_modules_listed_before_it(module: str) -> None:
    order = _documented_order()
    allowed = set(order[: order.index(module)])
    upward = _sibling_imports(PACKAGE / f"{module}.py") - allowed
    assert not upward, f"{module}.py imports {sorted(upward)}, listed after it in the docs"


@pytest.mark.parametrize("path", sorted(PACKAGE.glob("*.py")), ids=lambda p: p.name)
def test_modules_and_classes_stay_small(path: Path) -> None:
    text = path.read_text("utf-8")
    assert len(text.splitlines()) <= MAX_MODULE_LINES, f"{path.name} has grown past ~400 lines"
    for node in ast.walk(ast.parse(text)):
        if isinstance(node, ast.ClassDef):
            assert node.end_lineno is not None
            lines = node.end_lineno - node.lineno + 1
            assert lines <= MAX_CLASS_LINES, f"{path.name}: class {node.name} has {lines} lines"


def test_both_backends_implement_the_whole_interface() -> None:
    from ally_core.runtimes.python.backend import Backend
    from ally_core.runtimes.python.installers import BACKENDS

    abstract = set(Backend.__abstractmethods__)
    assert abstract, "Backend declares no abstract methods"
    assert sorted(BACKENDS) == ["pip", "uv"]
    for name, backend in BACKENDS.items():
        assert backend.name == name
        assert not set(getattr(type(backend), "__abstractmethods__", ())), name
        missing = [m for m in abstract if getattr(type(backend), m) is getattr(Backend, m)]
        assert not missing, f"{name} backend does not implement {missing}"


@pytest.mark.parametrize(
    "path",
    sorted(p for p in PACKAGE.glob("*.py") if p.name != "installers.py"),
    ids=lambda p: p.name,
)
def test_no_installer_branches_outside_the_choice_of_a_backend(path: Path) -> None:
    # Only installers.py maps ALLY_INSTALLER's value to a backend; everything else asks its
    # backend instead of comparing the installer's name.
    text = path.read_text("utf-8")
    assert not re.search(r"""[!=]=\s*["'](uv|pip)["']""", text), path.name
