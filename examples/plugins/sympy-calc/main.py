"""sympy-calc: a plugin with a real PyPI dependency, installed by ally into its own env."""

import json
import sys

import sympy


def main() -> None:
    command = sys.argv[1]
    args = json.load(sys.stdin)
    try:
        expr = sympy.sympify(args["expression"])
        if command == "simplify":
            result = str(sympy.simplify(expr))
        elif command == "solve":
            symbol = sympy.Symbol(args.get("variable", "x"))
            result = [str(s) for s in sympy.solve(expr, symbol)]
        else:
            raise ValueError(f"unknown command {command}")
    except (sympy.SympifyError, ValueError, TypeError) as exc:
        print(json.dumps({"success": False, "error": str(exc), "error_type": "invalid_expression"}))
        return
    print(json.dumps({"success": True, "result": result, "sympy": sympy.__version__}))


if __name__ == "__main__":
    main()
