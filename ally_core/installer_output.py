"""Picking the cause of a failure out of an installer's output (npm, pip, uv, bundler).

Imported when an installer fails or its output is shown, not when ally starts: its patterns
take a few milliseconds to compile.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

__all__ = ["error_lines", "failure_tail"]

#: Lines that say what went wrong, in the words of npm, pip, uv, bundler (and the exception
#: names of Python, Ruby and JavaScript tracebacks).
_MARKERS = re.compile(
    r"^\s*(?:npm (?:error|ERR!)|(?:ERROR|error|Error|FATAL|fatal)\s*[:!]|\[!\]|hint:"
    # uv's failure tree (its cross and arrow) and its plain-text form
    r"|\u00d7|\u2570\u2500\u25b6|(?:cause|Caused by):|(?:And )?[Bb]ecause )"
    r"|\b(?:Missing|Invalid): |\bCould not (?:find|resolve|install|build|fetch|open|parse)\b"
    r"|\bNo (?:solution found|matching (?:distribution|version))"
    r"|\bconflicting\b|\b[Tt]he conflict is\b|\b[Cc]onflicts? with\b|\bversion conflict\b"
    r"|\bBundler could not find\b|\bAn error occurred while\b|\b[A-Z]\w*(?:Error|Exception)\b"
)
#: Lines that never explain a failure: progress, pointers to logs, generic advice. The
#: indented lines that follow one are dropped with it.
_NOISE = re.compile(
    # npm
    r"A complete log of this run can be found in|Log files were not written"
    r"|Note that you can also install from a|tarball, folder, http url, or git url"
    r"|In most cases you or one of your dependencies are requesting"
    r"|a package version that doesn't exist|Run \"npm help \S+\" for more info"
    # uv
    r"|^Using (?:C?Python|PyPy) \S+ (?:environment|interpreter) at"
    r"|^(?:Resolved|Prepared|Installed|Uninstalled|Audited|Built|Downloaded) \d+ packages? "
    # pip
    r"|^(?:Looking in (?:indexes|links)|Collecting|Processing|Downloading|Obtaining|Using cached"
    r"|Requirement already satisfied|Installing collected packages|Successfully installed"
    r"|Building wheels? for|Preparing metadata|INFO: pip is looking at|\[notice\])"
    r"|^To fix this you could try to|^\d+\. (?:loosen|remove) "
    r"|^Additionally, some packages in these conflicts have no matching distributions"
    r"|^ERROR: ResolutionImpossible: for help visit"
    # bundler
    r"|^(?:Fetching |Resolving dependencies|Bundle complete|Using \S+ \S+$|Installing \S+ \S+$)"
)
#: What npm puts before each line of a message (a bare ``npm error 404`` is a blank line).
_NPM_PREFIX = re.compile(r"^npm (?:error|ERR!|warn|WARN|notice)(?: \d{3}\b)?(?: |$)")
#: A line longer than this is cut (uv's derivations can run to hundreds of characters).
_MAX_LINE = 500


def _without_npm_usage(lines: list[str]) -> list[str]:
    """``lines`` without the usage help npm prints after some errors (``npm ci`` with an
    out-of-sync lock prints its whole ``--help``): from the command's one-line description
    before ``Usage:`` to ``Run "npm help …" for more info``."""
    bodies = [_NPM_PREFIX.sub("", line, count=1).strip() for line in lines]
    try:
        usage = next(
            i for i, line in enumerate(lines) if _NPM_PREFIX.match(line) and bodies[i] == "Usage:"
        )
    except StopIteration:
        return lines
    start = usage
    while start > 0 and not bodies[start - 1]:
        start -= 1  # the blank lines before Usage:
    while start > 0 and bodies[start - 1] and _NPM_PREFIX.match(lines[start - 1]):
        start -= 1  # the description paragraph
    end = usage
    while end < len(lines) and _NPM_PREFIX.match(lines[end]):
        end += 1
        if bodies[end - 1].startswith('Run "npm help'):
            break
    return lines[:start] + lines[end:]


def error_lines(output: Sequence[str], limit: int = 5) -> list[str]:
    """The lines of an installer's ``output`` that tell why it failed, at most ``limit``.

    A line with an error marker (npm's ``npm error``, pip's ``ERROR:``, uv's ``error:``,
    ``cause:``, ``Because …`` and failure tree, ``Missing: … from lock file``, ``Could not
    find gem``, ``conflict``, an exception name, …) is kept together with the lines that
    continue it (up to the next blank line). Noise is dropped first: progress lines, pointers
    to log files, npm's usage help, pip's generic advice. With more than ``limit`` lines, the
    first two (the headline, the first cause) and the last ones are kept. ``[]`` when no line has a
    marker.
    """
    selected: list[str] = []
    state = ""  # "keep": continuing a marked line; "drop": continuing a noise line
    for raw in _without_npm_usage([line.rstrip() for line in output]):
        body = _NPM_PREFIX.sub("", raw, count=1).strip()
        if not body:
            state = ""
        elif _NOISE.search(body):
            state = "drop"
        elif _MARKERS.search(raw):
            state = "keep"
            selected.append(raw)
        elif state == "keep":
            selected.append(raw)
        elif not (state == "drop" and raw[:1].isspace()):
            state = ""
    lines = [
        line if len(line) <= _MAX_LINE else line[: _MAX_LINE - 1] + "…"
        for line in dict.fromkeys(line.strip() for line in selected)
    ]
    if len(lines) <= limit:
        return lines
    # The headline and the first cause, then how it ends (uv's conclusion, a hint).
    head = min(2, limit)
    return lines[:head] + lines[len(lines) - (limit - head) :]


def failure_tail(both: Sequence[str], err: Sequence[str], out: Sequence[str]) -> str:
    """What an :class:`InstallFailed` shows of the output: the cause, else its last lines."""
    picked = error_lines(both)
    if not picked:
        for stream in (err, out):
            bodies = (_NPM_PREFIX.sub("", line, count=1).strip() for line in stream)
            kept = [body for body in bodies if body and not _NOISE.search(body)]
            if kept:
                picked = kept[-5:]
                break
    return "\n".join(picked)
