"""``tools/mutation.py`` stays usable as the code moves: every target names a module and
functions that exist, and every hand-written mutant still applies (once) to today's code.

A refactor that moves a guarded function leaves the mutation run of its promise silently
empty (a target with no function) or the hand mutant unapplied; this catches both at once,
without running cosmic-ray.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def mutation() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "ally_mutation_tool", ROOT / "tools" / "mutation.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def _test_files(args: list[str]) -> list[str]:
    return [a for a in args if a.endswith(".py") or "::" in a]


def test_every_target_names_code_that_exists(mutation: ModuleType) -> None:
    assert mutation.TARGETS
    for name, target in mutation.TARGETS.items():
        module = ROOT / target.module
        assert module.is_file(), f"{name}: {target.module} is gone"
        if target.functions:
            lines = mutation._function_lines(module, target.functions)
            assert lines, f"{name}: none of {target.functions} in {target.module}"
        tests = _test_files(list(target.tests) + list(target.quick))
        assert tests and all((ROOT / t.split("::")[0]).is_file() for t in tests), name


def test_every_hand_mutant_applies_once_to_todays_code(mutation: ModuleType) -> None:
    assert mutation.HAND
    for name, mutant in mutation.HAND.items():
        texts: dict[str, str] = {}
        for file, old, new in mutant.edits:
            text = texts.get(file) or (ROOT / file).read_text("utf-8")
            assert text.count(old) == 1, f"{name}: no longer applies to {file}"
            assert old != new, name
            texts[file] = text.replace(old, new)
        tests = _test_files(list(mutant.tests))
        assert tests and all((ROOT / t).is_file() for t in tests), name
