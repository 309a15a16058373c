"""Mutation testing of ally's safety-critical code with cosmic-ray (``tox -e mutation``).

Each *target* is a module, or some functions of one, mapped to the test files that guard it.
For every mutant (one small change: ``<`` to ``<=``, ``and`` to ``or``, a ``True`` to ``False``,
a statement removed...) cosmic-ray writes the mutated module **to the file on disk**, runs the
target's tests (``pytest -x``, so a killed mutant costs its first failing test only) and puts
the file back. Because the file itself changes, the ``ally`` CLI processes, tool processes and
real installers that the tests start run the mutant too: that is why cosmic-ray and not
mutmut 3, whose mutants live in trampolines that only code imported by the pytest process
reaches (a function called only in a subprocess is reported "no tests" and never run).

Usage (from the repository root; it edits files of the working tree while it runs, so run it
in a checkout nobody is editing, and ``git checkout ally_core`` if it is killed mid-mutant)::

    python tools/mutation.py --list                  # the targets and their tests
    python tools/mutation.py replies config.strip_credentials
    python tools/mutation.py store --since main      # only mutants on lines changed since main
    python tools/mutation.py store --fresh           # forget earlier results of the target
    python tools/mutation.py --hand                  # the hand-written mutants of issue 17

Sessions are kept in ``.mutation/<target>.sqlite`` and resumed (a run stopped half-way goes on
where it was); they start afresh when the module changed. The summary of each target (killed,
survived, and every survivor with its diff) is printed and written to ``.mutation/<target>.md``.
"""

from __future__ import annotations

import argparse
import ast
import hashlib
import json
import os
import re
import shlex
import subprocess
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
WORK = ROOT / ".mutation"


@dataclass(frozen=True)
class Target:
    module: str
    #: pytest arguments: test files (missing ones are left out: other branches add some),
    #: options such as ``-k``.
    tests: Sequence[str]
    #: Fast tests (no processes) run first on every mutant; only the mutants they leave alive
    #: are run against ``tests``.
    quick: Sequence[str] = ()
    #: Only mutants inside these functions (``name`` or ``Class.name``); empty: the whole module.
    functions: Sequence[str] = ()
    #: Seconds one test run may take before the mutant counts as killed (by a hang).
    timeout: float = 900.0
    note: str = ""
    extra: dict[str, str] = field(default_factory=dict)


TARGETS: dict[str, Target] = {
    "config.strip_credentials": Target(
        "ally_core/config.py",
        ["tests/test_index_config.py", "-k", "credentials or password"],
        functions=("strip_credentials", "IndexOptions.identity"),
        timeout=600,
    ),
    "replies": Target(
        "ally_core/replies.py",
        [
            "tests/test_tools.py",
            "tests/test_tool_safety.py",
            "tests/test_security_config.py",
        ],
        quick=["tests/test_replies.py"],
        timeout=600,
    ),
    "tools": Target(
        "ally_core/tools.py",
        [
            "tests/test_tools.py",
            "tests/test_tool_safety.py",
            "tests/test_containment.py",
            "tests/test_security_config.py",
        ],
    ),
    "store": Target(
        "ally_core/store.py",
        [
            "tests/test_store.py",
            "tests/test_publish_guarantees.py",
            "tests/test_concurrency.py",
            "tests/test_lifecycle.py",
            "tests/test_reliability.py",
        ],
        timeout=1800,
    ),
    "builder": Target(
        "ally_core/builder.py",
        [
            "tests/test_publish_guarantees.py",
            "tests/test_store.py",
            "tests/test_lifecycle.py",
            "tests/test_concurrency.py",
            "tests/test_reliability.py",
        ],
        timeout=1800,
    ),
    "maintenance": Target(
        "ally_core/maintenance.py",
        [
            "tests/test_publish_guarantees.py",
            "tests/test_store.py",
            "tests/test_lifecycle.py",
        ],
        functions=("Maintenance.remove", "Maintenance.gc"),
        timeout=1800,
    ),
    "bundle": Target(
        "ally_core/bundle.py",
        ["tests/test_bundle.py", "tests/test_security_bundles.py"],
    ),
    "plugin_config": Target(
        "ally_core/plugin_config.py",
        [
            "tests/test_plugin_config_guarantees.py",
            "tests/test_tool_safety.py",
            "tests/test_security_config.py",
        ],
    ),
    "config_home": Target(
        "ally_core/config_home.py",
        ["tests/test_plugin_config_guarantees.py", "tests/test_security_config.py"],
    ),
    "process": Target(
        "ally_core/process.py",
        [
            "tests/test_process.py",
            "tests/test_python_checks.py",
            "tests/test_reliability.py",
            "-k",
            "not interpreter and not disk and not read_only",
        ],
        timeout=1800,
    ),
    "python.health": Target(
        "ally_core/runtimes/python/checks.py",
        ["tests/test_store.py", "tests/test_python_checks.py", "tests/test_publish_guarantees.py"],
        functions=("check_env", "pyvenv_cfg_problem", "verify_records"),
    ),
}


@dataclass(frozen=True)
class Hand:
    """A mutant cosmic-ray's operators cannot make (a statement removed, moved or replaced),
    written by hand: ``(file, old text, new text)`` edits and the tests that must kill it."""

    what: str
    edits: Sequence[tuple[str, str, str]]
    tests: Sequence[str]


_BUILD = "        try:\n            env, marker, action = self.build(spec, key, inputs, force=force,"
_DEEP = "        health = self.dispatch.health_check(spec, env, deep=True)\n"
_PHASES = (
    "                env = self.create(built, interpreter)\n"
    "                env, packages = self.install(built, env)\n"
    "                self.check(built, env)\n"
    "                marker = self.mark(built, env, packages, key, inputs, fingerprint)\n"
    "                self.publish(built)\n"
)
_GUARD = "        if (\n            head != self.store_dir.name\n"
_CURRENT = (
    '        return self._marker_at(f"{self._store_dir_str}{os.sep}{tail}{os.sep}{MARKER}", tail)'
)

#: The mutants issue 17 found surviving, and the promises it found untested.
HAND: dict[str, Hand] = {
    "deep-check-ignored": Hand(
        "a build failing its deep health check is published anyway",
        [("ally_core/builder.py", _DEEP + "        if not health.ok:", _DEEP + "        if False:")],
        ["tests/test_publish_guarantees.py", "-k", "deep_check"],
    ),
    "swap-unlink-then-rename": Hand(
        "the pointer swap made non-atomic: unlink, then rename",
        [
            (
                "ally_core/store.py",
                "            try:\n                os.replace(link, pointer)",
                "            try:\n                if os.path.lexists(pointer):\n"
                "                    os.unlink(pointer)\n                os.replace(link, pointer)",
            )
        ],
        ["tests/test_publish_guarantees.py", "-k", "swapped"],
    ),
    "publish-before-marker": Hand(
        "the pointer swapped before the marker is written",
        [
            (
                "ally_core/builder.py",
                _PHASES,
                _PHASES.replace(
                    "                marker = self.mark(built, env, packages, key, inputs, "
                    "fingerprint)\n                self.publish(built)\n",
                    "                self.publish(built)\n"
                    "                marker = self.mark(built, env, packages, key, inputs, "
                    "fingerprint)\n",
                ),
            )
        ],
        ["tests/test_publish_guarantees.py", "-k", "kill_9"],
    ),
    "marker-before-install": Hand(
        "the marker written first, before the packages are installed",
        [
            (
                "ally_core/builder.py",
                _PHASES,
                "                env = self.create(built, interpreter)\n"
                "                marker = self.mark(built, env, {}, key, inputs, fingerprint)\n"
                "                env, packages = self.install(built, env)\n"
                "                self.check(built, env)\n"
                "                self.publish(built)\n",
            )
        ],
        ["tests/test_reliability.py", "-k", "kill_9_at_any"],
    ),
    "pointer-follows-anything": Hand(
        "the store follows any pointer, not only .store/<dir>",
        [
            ("ally_core/store.py", _GUARD, _GUARD.replace("if (", "if False and (")),
            (
                "ally_core/store.py",
                _CURRENT,
                "        return self._marker_at(os.path.join(self._root_str, target, MARKER), "
                "Path(os.path.normpath(os.path.join(self._root_str, target))))",
            ),
        ],
        ["tests/test_store.py", "-k", "pointer"],
    ),
    "pointer-guard-removed": Hand(
        "the .store/<dir> check of a pointer removed",
        [("ally_core/store.py", _GUARD, _GUARD.replace("if (", "if False and ("))],
        ["tests/test_store.py", "-k", "pointer"],
    ),
    "discard-anywhere": Hand(
        "discard() deletes outside .store",
        [
            (
                "ally_core/store.py",
                "        if env_dir.parent != self.store_dir or env_dir.is_symlink():",
                "        if False:",
            )
        ],
        ["tests/test_store.py", "-k", "discard"],
    ),
    "pyvenv-cheap-check-removed": Hand(
        "the pyvenv.cfg cheap check removed",
        [
            (
                "ally_core/runtimes/python/checks.py",
                '    if not os.path.isfile(f"{spec.env_dir}{os.sep}pyvenv.cfg"):',
                "    if False:",
            )
        ],
        ["tests/test_store.py", "-k", "pyvenv"],
    ),
    "pyvenv-content-unchecked": Hand(
        "the deep check no longer reads pyvenv.cfg",
        [("ally_core/runtimes/python/checks.py", "    if cfg is not None:", "    if False:")],
        ["tests/test_store.py", "-k", "pyvenv"],
    ),
    "config-dir-0755": Hand(
        "the plugin-config directory created 0755",
        [
            (
                "ally_core/plugin_config.py",
                "exist_ok=True, mode=0o700)\n        write_atomic(",
                "exist_ok=True, mode=0o755)\n        write_atomic(",
            ),
            (
                "ally_core/plugin_config.py",
                "exist_ok=True, mode=0o700)\n        lock = FileLock(",
                "exist_ok=True, mode=0o755)\n        lock = FileLock(",
            ),
        ],
        ["tests/test_plugin_config_guarantees.py"],
    ),
    "strip-credentials-disabled": Hand(
        "strip_credentials returns its input",
        [
            (
                "ally_core/config.py",
                'so they are never shown."""\n',
                'so they are never shown."""\n    return value\n',
            )
        ],
        ["tests/test_index_config.py", "-k", "credentials or password"],
    ),
    "reinstall-unpublishes-first": Hand(
        "a reinstall removes the pointer before it builds",
        [
            (
                "ally_core/readiness.py",
                _BUILD,
                "        if force and previous is not None:\n"
                "            self.store.unpublish(name)\n" + _BUILD,
            )
        ],
        ["tests/test_reliability.py", "-k", "interrupted_cli and reinstall"],
    ),
    "no-pythonioencoding": Hand(
        "tools no longer get PYTHONIOENCODING=utf-8",
        [("ally_core/tools.py", '    out.setdefault("PYTHONIOENCODING", "utf-8")\n', "")],
        ["tests/test_tools.py", "-k", "non_ascii"],
    ),
    "tool-args-through-a-shell": Hand(
        "a tool's argv run through /bin/sh -c",
        [
            (
                "ally_core/tools.py",
                "            proc = subprocess.Popen(\n                argv,\n",
                "            proc = subprocess.Popen(\n"
                "                ['/bin/sh', '-c', ' '.join(argv)],\n",
            )
        ],
        ["tests/test_tools.py", "-k", "metacharacters"],
    ),
    "installer-inherits-stdin": Hand(
        "installers inherit ally's stdin",
        [
            (
                "ally_core/process.py",
                "            env=dict(env),\n            stdin=subprocess.DEVNULL,\n",
                "            env=dict(env),\n",
            )
        ],
        ["tests/test_process.py", "-k", "stdin"],
    ),
    "group-kill-leader-only": Hand(
        "a timeout kills the process, not its group",
        [("ally_core/process.py", "os.killpg(proc.pid, sig)", "os.kill(proc.pid, sig)")],
        ["tests/test_process.py", "tests/test_tools.py", "-k", "timeout or children"],
    ),
    "locale-prefix": Hand(
        "any LC_* host variable reaches tools",
        [
            (
                "ally_core/tools.py",
                "k in wanted or k in LOCALE_VARS",
                "k in wanted or k[:3] == 'LC_'",
            )
        ],
        ["tests/test_tool_safety.py", "-k", "minimal_environment"],
    ),
}


def _hand(names: Sequence[str]) -> int:
    """Apply each hand-written mutant in turn, run its tests, put the files back."""
    unknown = [n for n in names if n not in HAND]
    if unknown:
        raise SystemExit(f"unknown hand mutant(s) {', '.join(unknown)}; --list shows them")
    survived = 0
    for name in names or list(HAND):
        mutant = HAND[name]
        originals: dict[Path, str] = {}
        try:
            for file, old, new in mutant.edits:
                path = ROOT / file
                text = path.read_text("utf-8")
                originals.setdefault(path, text)
                if text.count(old) != 1:
                    print(
                        f"{name}: does not apply any more ({file} changed): "
                        "update tools/mutation.py"
                    )
                    survived += 1
                    break
                path.write_text(text.replace(old, new), "utf-8")
            else:
                args = [sys.executable, "-m", "pytest", "-x", "-q", *mutant.tests]
                proc = subprocess.run(args, cwd=ROOT, capture_output=True, text=True)
                verdict = "killed" if proc.returncode not in (0, 5) else "SURVIVED"
                survived += verdict != "killed"
                print(f"{name}: {verdict} ({mutant.what}) by: pytest -x {' '.join(mutant.tests)}")
        finally:
            for path, text in originals.items():
                path.write_text(text, "utf-8")
    return 1 if survived else 0


def _pytest_args(tests: Sequence[str]) -> list[str]:
    return [a for a in tests if not a.startswith("tests/") or (ROOT / a).exists()]


def _test_command(tests: Sequence[str]) -> str:
    args = ["-x", "-q", *_pytest_args(tests)]
    return shlex.join([sys.executable, "-m", "pytest", *args])


def _function_lines(module: Path, names: Iterable[str]) -> list[tuple[int, int]]:
    """(first, last) line of each function named ``name`` or ``Class.name`` in ``module``."""
    tree = ast.parse(module.read_text("utf-8"))
    spans: dict[str, tuple[int, int]] = {}

    def visit(node: ast.AST, prefix: str) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                name = prefix + child.name
                if not isinstance(child, ast.ClassDef):
                    first = min([child.lineno, *(d.lineno for d in child.decorator_list)])
                    spans[name] = (first, child.end_lineno or child.lineno)
                visit(child, name + ".")

    visit(tree, "")
    missing = [n for n in names if n not in spans]
    if missing:
        raise SystemExit(f"{module}: no function named {', '.join(missing)}")
    return [spans[n] for n in names]


def _changed_lines(module: str, since: str) -> set[int]:
    """Lines of ``module`` added or changed since the git revision ``since``."""
    diff = subprocess.run(
        ["git", "diff", "-U0", since, "--", module],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    lines: set[int] = set()
    for match in re.finditer(r"^@@ -\S+ \+(\d+)(?:,(\d+))? @@", diff, re.MULTILINE):
        start, count = int(match.group(1)), int(match.group(2) or 1)
        lines.update(range(start, start + count))
    return lines


def _cosmic_ray(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "cosmic_ray.cli", *args], cwd=ROOT, check=True)


def _key(item: object) -> str:
    (mutation,) = item.mutations  # type: ignore[attr-defined]
    return f"{mutation.operator_name}#{mutation.occurrence}"


def _session(
    name: str,
    target: Target,
    tests: Sequence[str],
    *,
    fresh: bool,
    since: str | None,
    only: Sequence[str] | None = None,
) -> Path:
    """A cosmic-ray session of ``target`` run with ``tests`` (only the mutants ``only`` names,
    if given), initialised (and filtered) unless it can be resumed."""
    from cosmic_ray.work_db import WorkDB, use_db
    from cosmic_ray.work_item import WorkerOutcome, WorkResult

    WORK.mkdir(exist_ok=True)
    config, db, stamp = (WORK / f"{name}{ext}" for ext in (".toml", ".sqlite", ".json"))
    source = (ROOT / target.module).read_bytes()
    identity = {
        "module": hashlib.sha256(source).hexdigest(),
        "command": _test_command(tests),
        "functions": list(target.functions),
        "since": since,
        "only": sorted(only) if only is not None else None,
    }
    if not fresh and db.exists() and stamp.exists() and json.loads(stamp.read_text()) == identity:
        return db  # resumed: cosmic-ray only runs what is still pending
    config.write_text(
        "[cosmic-ray]\n"
        f"module-path = {json.dumps(target.module)}\n"
        f"timeout = {target.timeout}\n"
        "excluded-modules = []\n"
        f"test-command = {json.dumps(_test_command(tests))}\n"
        "\n[cosmic-ray.distributor]\n"
        'name = "local"\n'
    )
    db.unlink(missing_ok=True)
    _cosmic_ray("init", str(config), str(db))
    spans = _function_lines(ROOT / target.module, target.functions) if target.functions else []
    changed = _changed_lines(target.module, since) if since else None
    lines = source.decode("utf-8").splitlines()
    skipped = WorkResult(worker_outcome=WorkerOutcome.SKIPPED)
    with use_db(str(db), WorkDB.Mode.open) as work_db:
        skip = []
        for item in work_db.pending_work_items:
            (mutation,) = item.mutations
            first, last = mutation.start_pos[0], mutation.end_pos[0]
            text = "\n".join(lines[first - 1 : last])
            if (
                (only is not None and _key(item) not in only)
                or (spans and not any(a <= first and last <= b for a, b in spans))
                or (changed is not None and not changed & set(range(first, last + 1)))
                or "pragma: no mutate" in text
            ):
                skip.append(item.job_id)
        work_db.set_multiple_results(skip, skipped)
    stamp.write_text(json.dumps(identity))
    return db


def _results(db: Path) -> tuple[dict[str, int], list[tuple[int, str, str, str]]]:
    """Counts of a session, and its survivors as (line, operator, key, diff)."""
    from cosmic_ray.work_db import WorkDB, use_db
    from cosmic_ray.work_item import TestOutcome, WorkerOutcome

    counts = {"killed": 0, "survived": 0, "incompetent": 0, "skipped": 0, "pending": 0}
    survivors = []
    with use_db(str(db), WorkDB.Mode.open) as work_db:
        counts["pending"] = sum(1 for _ in work_db.pending_work_items)
        for item, result in work_db.completed_work_items:
            if result.worker_outcome == WorkerOutcome.SKIPPED:
                counts["skipped"] += 1
            elif result.test_outcome == TestOutcome.SURVIVED:
                counts["survived"] += 1
                (mutation,) = item.mutations
                line, op = mutation.start_pos[0], mutation.operator_name
                survivors.append((line, op, _key(item), result.diff or ""))
            elif result.test_outcome == TestOutcome.KILLED:
                counts["killed"] += 1
            else:
                counts["incompetent"] += 1
    return counts, survivors


def _run(name: str, target: Target, *, fresh: bool, since: str | None) -> str:
    """Run the target's mutants (quick tests first, if any); its summary in Markdown."""
    stages = [(name, target.quick or target.tests)]
    db = _session(name, target, stages[0][1], fresh=fresh, since=since)
    _cosmic_ray("exec", str(WORK / f"{name}.toml"), str(db))
    counts, survivors = _results(db)
    if target.quick and survivors and not counts["pending"]:
        only = [key for _, _, key, _ in survivors]
        full = f"{name}.full"
        db = _session(full, target, target.tests, fresh=fresh, since=since, only=only)
        _cosmic_ray("exec", str(WORK / f"{full}.toml"), str(db))
        counts2, survivors = _results(db)
        counts["killed"] += counts2["killed"]
        counts["incompetent"] += counts2["incompetent"]
        counts["survived"] = counts2["survived"]
        counts["pending"] = counts2["pending"]
    tested = counts["killed"] + counts["survived"]
    score = f"{100 * counts['killed'] / tested:.0f} %" if tested else "-"
    scope = f": {', '.join(target.functions)}" if target.functions else ""
    tests = " ".join(_pytest_args(target.tests))
    if target.quick:
        tests = f"{' '.join(_pytest_args(target.quick))}, then for survivors {tests}"
    out = [
        f"## {name} ({target.module}{scope})",
        "",
        f"tests: `pytest -x` {tests}",
        "",
        " | ".join(f"{k} {v}" for k, v in counts.items()) + f" | killed/tested {score}",
    ]
    for line, operator, _, diff in sorted(survivors):
        out += ["", f"- survived: line {line}, {operator}", "", "```diff", diff.strip(), "```"]
    return "\n".join(out) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("targets", nargs="*", metavar="TARGET", help="default: every target")
    parser.add_argument("--list", action="store_true", help="list the targets and their tests")
    parser.add_argument("--fresh", action="store_true", help="forget earlier results")
    parser.add_argument("--since", metavar="REV", help="only lines changed since git REV")
    parser.add_argument(
        "--hand",
        action="store_true",
        help="run the hand-written mutants (TARGETs are their names; default: all)",
    )
    args = parser.parse_args(argv)
    if args.list:
        for name, target in TARGETS.items():
            scope = f" ({', '.join(target.functions)})" if target.functions else ""
            quick = " ".join(_pytest_args(target.quick))
            tests = " ".join(_pytest_args(target.tests))
            first = f"{quick}, then " if quick else ""
            print(f"{name}: {target.module}{scope}\n    pytest -x {first}{tests}")
        print("\nhand-written mutants (--hand):")
        for name, mutant in HAND.items():
            print(f"{name}: {mutant.what}\n    pytest -x {' '.join(mutant.tests)}")
        return 0
    os.environ["PYTHONDONTWRITEBYTECODE"] = "1"
    if args.hand:
        return _hand(args.targets)
    unknown = [t for t in args.targets if t not in TARGETS]
    if unknown:
        parser.error(f"unknown target(s) {', '.join(unknown)}; --list shows them")
    survived = 0
    for name in args.targets or list(TARGETS):
        text = _run(name, TARGETS[name], fresh=args.fresh, since=args.since)
        (WORK / f"{name}.md").write_text(text)
        print(text)
        survived += text.count("- survived:")
    return 1 if survived else 0


if __name__ == "__main__":
    sys.exit(main())
