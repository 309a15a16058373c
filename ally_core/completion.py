"""Shell completion for ``ally``: commands, options, option values, plugin and tool names.

``ally completion bash|zsh|fish`` prints a script for that shell. On ``<TAB>`` the script
runs ``ally __complete SHELL CWORD WORD...`` (the words of the command line and the index of
the one being completed), which prints the candidates, one a line. The commands and options
come from the parser itself (:func:`ally_core.cli.build_parser`); plugin names, tool names and
config keys from the ``plugin.json`` files of the plugin directories, read as plain JSON:
nothing is validated, no runtime is loaded, no env is looked at, so a ``<TAB>`` costs an
interpreter start and a directory scan. When there is nothing to offer (a path, the command
after ``ally exec NAME --``), the script falls back to the shell's file completion.
"""

from __future__ import annotations

import argparse
import json
import os
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Callable, Optional

__all__ = ["SHELLS", "complete", "script"]

SHELLS = ("bash", "zsh", "fish")

#: Positional arguments whose value is a plugin name.
_PLUGIN_DESTS = frozenset({"names", "name", "plugin"})

_BASH = """\
# bash completion for ally (`ally completion bash`)
_ally() {
    COMPREPLY=()
    mapfile -t COMPREPLY < <(command ally __complete bash "$COMP_CWORD" "${COMP_WORDS[@]}" \\
        2>/dev/null)
    return 0
}
complete -o default -o bashdefault -F _ally ally
"""

_ZSH = """\
#compdef ally
# zsh completion for ally (`ally completion zsh`)
_ally() {
    local -a candidates
    candidates=("${(@f)$(command ally __complete zsh $((CURRENT - 1)) "${words[@]}" \\
        2>/dev/null)}")
    if (( ${#candidates} )) && [[ -n "${candidates[1]}" ]]; then
        compadd -Q -- "${candidates[@]}"
    else
        _files
    fi
}
if [[ "${funcstack[1]}" = "_ally" ]]; then
    _ally "$@"
else
    compdef _ally ally
fi
"""

_FISH = """\
# fish completion for ally (`ally completion fish`)
function __ally_complete
    set -l tokens (commandline -opc)
    set -l current (commandline -ct)
    set -l found (command ally __complete fish (count $tokens) $tokens $current 2>/dev/null)
    if test (count $found) -gt 0
        printf '%s\\n' $found
    else
        __fish_complete_path "$current"
    end
end
complete -c ally -f -a '(__ally_complete)'
"""

_SCRIPTS = {"bash": _BASH, "zsh": _ZSH, "fish": _FISH}


def script(shell: str) -> str:
    """The completion script for ``shell`` (one of :data:`SHELLS`)."""
    return _SCRIPTS[shell]


# ---------------------------------------------------------------------------------------------
# what to offer


def _subparsers(parser: argparse.ArgumentParser) -> Optional[argparse._SubParsersAction[Any]]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return action
    return None


def _options(parser: argparse.ArgumentParser) -> dict[str, argparse.Action]:
    return {o: a for a in parser._actions for o in a.option_strings}


def _positionals(parser: argparse.ArgumentParser) -> list[argparse.Action]:
    return [
        a
        for a in parser._actions
        if not a.option_strings and not isinstance(a, argparse._SubParsersAction)
    ]


def _merge_bash_equals(words: list[str], cword: int) -> tuple[list[str], int]:
    """bash splits ``--installer=uv`` into ``--installer``, ``=``, ``uv``: join them again
    (the word being completed stays the value alone, as bash replaces only that word)."""
    out: list[str] = []
    index = cword
    i = 0
    while i < len(words):
        if words[i] == "=" and out and out[-1].startswith("--") and i + 1 <= len(words):
            value = words[i + 1] if i + 1 < len(words) else ""
            if i + 1 >= cword:  # the value is being completed: keep it a word of its own
                out.append(value)
                index = len(out) - 1
                break
            out[-1] = f"{out[-1]}={value}"
            index -= 2
            i += 2
            continue
        out.append(words[i])
        i += 1
    return out, index


def complete(
    words: Sequence[str],
    cword: int,
    parser: argparse.ArgumentParser,
    *,
    shell: str = "bash",
    environ: Mapping[str, str] | None = None,
) -> list[str]:
    """The candidates for ``words[cword]`` (``words[0]`` is the program)."""
    words = list(words)
    if shell == "bash":
        words, cword = _merge_bash_equals(words, cword)
    current = words[cword] if 0 <= cword < len(words) else ""
    before = words[1:cword]
    command = parser
    chain: list[str] = []
    root_opts = _options(parser)
    globals_: dict[str, list[Optional[str]]] = {}
    positional = 0
    taken: list[str] = []
    expecting: Optional[argparse.Action] = None
    for word in before:
        if expecting is not None:
            if command is parser:
                globals_.setdefault(expecting.dest, []).append(word)
            expecting = None
            continue
        if word == "--":
            return []  # everything after it is another program's (ally exec NAME -- CMD)
        if word.startswith("-") and len(word) > 1:
            name, eq, value = word.partition("=")
            action = _options(command).get(name) or root_opts.get(name)
            if action is not None and action.nargs != 0 and not eq:
                expecting = action
            elif action is not None and eq and command is parser:
                globals_.setdefault(action.dest, []).append(value)
            continue
        sub = _subparsers(command)
        if sub is not None and not (positional < len(_positionals(command))):
            if word not in sub.choices:
                return []
            command = sub.choices[word]
            chain.append(word)
            positional, taken = 0, []
            continue
        taken.append(word)
        actions = _positionals(command)
        if positional < len(actions) and actions[positional].nargs not in ("*", "+", "..."):
            positional += 1
        elif positional < len(actions) and actions[positional].nargs == argparse.REMAINDER:
            return []
    if expecting is not None:
        return _prefixed(_values(expecting), current)
    if current.startswith("-"):
        name, eq, value = current.partition("=")
        if eq:
            action = _options(command).get(name) or root_opts.get(name)
            return [f"{name}={v}" for v in _prefixed(_values(action), value)] if action else []
        shown = [o for o in _options(command) if o not in {"-h"}]
        return _prefixed(shown, current)
    sub = _subparsers(command)
    actions = _positionals(command)
    if sub is not None and positional >= len(actions):
        return _prefixed([c for c in sub.choices if not c.startswith("_")], current)
    if positional >= len(actions):
        return []
    action = actions[positional]
    if action.choices:
        return _prefixed([str(c) for c in action.choices], current)
    found = _Plugins(globals_, environ)
    if action.dest in _PLUGIN_DESTS:
        return _prefixed(found.names(), current)
    if action.dest == "tool" and taken:
        return _prefixed(found.tools(taken[-1]), current)
    if action.dest == "key" and taken:
        return _prefixed(found.config_keys(taken[-1]), current)
    if action.dest == "topic":
        return _prefixed(_help_topics(parser, taken), current)
    return []


def _values(action: Optional[argparse.Action]) -> list[str]:
    """What an option's value may be: its choices; nothing (files) otherwise."""
    if action is None or not action.choices:
        return []
    return [str(c) for c in action.choices]


def _prefixed(candidates: Sequence[str], current: str) -> list[str]:
    return [c for c in candidates if c.startswith(current)]


def _help_topics(parser: argparse.ArgumentParser, taken: Sequence[str]) -> list[str]:
    """``ally help config <TAB>``: the sub-commands under the words given so far."""
    command = parser
    for word in taken:
        sub = _subparsers(command)
        if sub is None or word not in sub.choices:
            return []
        command = sub.choices[word]
    sub = _subparsers(command)
    return [c for c in sub.choices if not c.startswith("_")] if sub is not None else []


# ---------------------------------------------------------------------------------------------
# plugins, read cheaply


class _Plugins:
    """The manifests of the plugin directories, as plain JSON (nothing validated)."""

    def __init__(
        self, given: Mapping[str, list[Optional[str]]], environ: Mapping[str, str] | None
    ) -> None:
        self.given = given
        self.environ = os.environ if environ is None else environ
        self._manifests: Optional[dict[str, dict[str, Any]]] = None

    def _dirs(self) -> list[Path]:
        from .paths import AllyPaths

        home = (self.given.get("home") or [None])[-1]
        extra = [d for d in self.given.get("plugins_dir", []) if d is not None]
        paths = AllyPaths.from_env(home, extra, self.environ)
        return list(paths.plugin_dirs)

    def manifests(self) -> dict[str, dict[str, Any]]:
        if self._manifests is None:
            self._manifests = {}
            for name, data in self._read():
                self._manifests.setdefault(name, data)
        return self._manifests

    def _read(self) -> Iterator[tuple[str, dict[str, Any]]]:
        for root in self._dirs():
            try:
                entries = sorted(os.scandir(root), key=lambda e: e.name)
            except OSError:
                continue
            for entry in entries:
                if entry.name.startswith("."):
                    continue
                try:
                    with open(os.path.join(entry.path, "plugin.json"), "rb") as fh:
                        data = json.loads(fh.read())
                except (OSError, ValueError, RecursionError):
                    continue
                if not isinstance(data, dict):
                    continue
                name = data.get("name")
                yield (name if isinstance(name, str) and name else entry.name), data

    def names(self) -> list[str]:
        return sorted(self.manifests())

    def tools(self, plugin: str) -> list[str]:
        tools = self.manifests().get(plugin, {}).get("tools")
        if not isinstance(tools, list):
            return []
        return [t["name"] for t in tools if isinstance(t, dict) and isinstance(t.get("name"), str)]

    def config_keys(self, plugin: str) -> list[str]:
        schema = self.manifests().get(plugin, {}).get("config")
        props = schema.get("properties") if isinstance(schema, dict) else None
        return sorted(k for k in props if isinstance(k, str)) if isinstance(props, dict) else []


def main(argv: Sequence[str], build_parser: Callable[[], argparse.ArgumentParser]) -> int:
    """``ally __complete SHELL CWORD WORD...``: print the candidates, one a line (the CLI
    passes its ``build_parser``: this module does not import the CLI)."""
    import sys

    if len(argv) < 2 or argv[0] not in SHELLS or not argv[1].isdigit():
        return 2
    try:
        found = complete(list(argv[2:]), int(argv[1]), build_parser(), shell=argv[0])
    except Exception:  # a <TAB> never prints a traceback into the command line
        return 1
    printable = [c for c in found if "\n" not in c and "\r" not in c]
    sys.stdout.write("".join(f"{c}\n" for c in printable))
    return 0
