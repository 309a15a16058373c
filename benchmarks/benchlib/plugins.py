"""The benchmark's two plugins (sources, tool input, expected result) and the result check."""

from __future__ import annotations

from typing import Any

SYMPY_MAIN = '''\
"""sympy-calc: Code Ally's kind of plugin, with a real dependency."""
import json
import sys

import sympy


def main():
    command = sys.argv[1]
    args = json.load(sys.stdin)
    expr = sympy.sympify(args["expression"])
    if command == "simplify":
        result = str(sympy.simplify(expr))
    else:
        result = [str(s) for s in sympy.solve(expr, sympy.Symbol(args.get("variable", "x")))]
    print(json.dumps({"success": True, "result": result}))


if __name__ == "__main__":
    main()
'''

SMALL_MAIN = '''\
"""wordcount: a small plugin with a small dependency."""
import json
import sys

import six


def main():
    args = json.load(sys.stdin)
    text = six.ensure_str(args.get("text", ""))
    print(json.dumps({"success": True, "result": {"words": len(text.split()), "chars": len(text)}}))


if __name__ == "__main__":
    main()
'''

PLUGINS: dict[str, dict[str, Any]] = {
    "sympy-calc": {
        "requirements": "sympy\n",
        "main": SYMPY_MAIN,
        "tool": "simplify",
        "args": ["simplify"],
        "input": {"expression": "sin(x)**2 + cos(x)**2"},
        "expect": "1",
        "schema": {
            "type": "object",
            "properties": {"expression": {"type": "string"}},
            "required": ["expression"],
        },
    },
    "wordcount": {
        "requirements": "six\n",
        "main": SMALL_MAIN,
        "tool": "count",
        "args": ["count"],
        "input": {"text": "the quick brown fox"},
        "expect": {"words": 4, "chars": 19},
        "schema": {"type": "object", "properties": {"text": {"type": "string"}}},
    },
}


def check_result(who: str, kind: str, result: Any) -> None:
    want = PLUGINS[kind]["expect"]
    got = result.get("result") if isinstance(result, dict) else None
    if got != want:
        raise RuntimeError(f"{who}: {kind} returned {result!r}, expected result {want!r}")
