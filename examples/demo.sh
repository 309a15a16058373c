#!/usr/bin/env bash
# Set up ally in ./.venv and run its main job on the bundled example plugins:
# discover them, build their environments (first load), then run their tools (warm loads).
set -euo pipefail
cd "$(dirname "$0")/.."

python3 -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -e . -e runtimes/node -e runtimes/ruby

export ALLY_HOME="$PWD/.ally-demo"          # keep the demo out of your real ally home
ally=(.venv/bin/ally --plugins-dir examples/plugins)

echo "== ally runtimes";  "${ally[@]}" runtimes
echo "== ally install (first load builds each plugin's env)"
"${ally[@]}" install
echo "== ally list (warm: nothing is built again)"; "${ally[@]}" list
echo "== ally run"
"${ally[@]}" run wordcount count_words --input '{"text": "No wrapper scripts.\nJust declare and go."}'
"${ally[@]}" run sympy-calc solve --input '{"expression": "x**2 - 5*x + 6"}'
"${ally[@]}" run sympy-calc simplify --input '{"expression": "sin(x)**2 + cos(x)**2"}'
if "${ally[@]}" list --json | grep -q '"name": "slugify-node"'; then
    "${ally[@]}" run slugify-node slugify --input '{"text": "Hello, ally plugins!"}'
fi
echo "== environments live in $ALLY_HOME/plugin-envs"
ls -l "$ALLY_HOME/plugin-envs"
