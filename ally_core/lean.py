"""What the quick ``ally run`` path shares with the rest of ally, importing nothing.

:mod:`ally_core.quick_run` starts a tool without importing ally's core (whose imports alone
take longer than the goal for the whole command). What it does must be what the full path
does, so the pieces both need live here, written for both, with only built-in modules:

* :func:`printable`: text safe for a terminal (``str.translate``, no ``re``);
* :func:`loads` and :func:`dumps`: JSON through CPython's C scanner and encoder (no ``re``,
  which the :mod:`json` package imports at once), falling back to :mod:`json` itself;
* :func:`read_reply` and :func:`reply_json`: reading a tool's reply the way Code Ally's host
  read it (:mod:`ally_core.replies` wraps them in :class:`~ally_core.replies.ToolResult`).

Every function gives exactly what its :mod:`json`-based or ``re``-based twin gives (tests
compare them); where a value cannot be handled here, the module it stands for is imported.
"""

from __future__ import annotations

import os
import sys

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable, Mapping
    from typing import Any, Optional

__all__ = [
    "MAX_JSON_DEPTH",
    "QUOTE_LIMIT",
    "RUN_RECORD_HEADER",
    "TAIL_LIMIT",
    "deeper_than",
    "dumps",
    "environ_digest",
    "failure_line",
    "file_identity",
    "loads",
    "loads_bounded",
    "printable",
    "read_reply",
    "reply_json",
    "result_json",
    "run_record_path",
    "tail",
]

#: Characters of raw output or stderr quoted in a failure's text.
QUOTE_LIMIT = 2000
#: Characters of stderr kept in a result's ``stderr`` / ``logs``.
TAIL_LIMIT = 4000
#: Deepest nesting of arrays and objects in a tool's input given to ``ally run`` and in a
#: tool's reply that ally reads. Python's recursion limit would refuse some depths above it
#: anyway, but where depends on how deep in its own calls a program parses or prints the
#: value: a fixed limit gives every path of ally the same answer.
MAX_JSON_DEPTH = 500

# -- text for a terminal -----------------------------------------------------------------------


def _escapes() -> dict[int, str]:
    # C0 and C1 controls (ESC starts terminal escape sequences, CR and BS overwrite what was
    # printed), DEL, and the Unicode format characters that reorder or hide text on screen
    # (bidirectional overrides and isolates, zero-width characters).
    spans = [
        (0x00, 0x1F),
        (0x7F, 0x9F),
        (0x061C, 0x061C),
        (0x200B, 0x200F),
        (0x2028, 0x202E),
        (0x2060, 0x2069),
        (0xFEFF, 0xFEFF),
    ]
    named = {0x0A: "\\n", 0x0D: "\\r", 0x09: "\\t"}
    table = {}
    for low, high in spans:
        for code in range(low, high + 1):
            table[code] = named.get(code) or (
                f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"
            )
    return table


_ESCAPES = _escapes()


def printable(text: object) -> str:
    """``text`` safe to print to a terminal: every control or invisible format character is
    shown as its escape (``\\x1b``, ``\\n``, ``\\u202e``), so a name or message from a plugin
    can neither move the cursor, recolor, clear the screen nor hide or reorder text."""
    return str(text).translate(_ESCAPES)


# -- JSON --------------------------------------------------------------------------------------

_WHITESPACE = " \t\n\r"


class _ScanContext:
    """What CPython's C scanner reads from a ``json.JSONDecoder``: its default settings."""

    strict = True
    object_hook = None
    object_pairs_hook = None
    parse_float = float
    parse_int = int
    memo: dict[Any, Any] = {}

    @staticmethod
    def parse_constant(name: str) -> float:
        return {"-Infinity": float("-inf"), "Infinity": float("inf"), "NaN": float("nan")}[name]


try:  # CPython's accelerator, which json.loads and json.dumps use themselves
    from _json import encode_basestring_ascii as _c_ascii
    from _json import make_encoder as _c_encoder
    from _json import make_scanner as _c_scanner

    _scan: Optional[Callable[[str, int], tuple[Any, int]]] = _c_scanner(
        _ScanContext()  # type: ignore[arg-type]  # what it reads of a JSONDecoder
    )
except (ImportError, TypeError, AttributeError):  # another Python: the json package
    _scan = None


def loads(text: str) -> Any:
    """``json.loads(text)`` for a ``str``: the same value, and on bad input the same error
    (then raised by :mod:`json` itself, imported for it)."""
    if _scan is not None and not text.startswith("\ufeff"):
        start = len(text) - len(text.lstrip(_WHITESPACE))
        try:
            value, end = _scan(text, start)
        except (StopIteration, ValueError, SystemError):
            # json says why, below. (On Python 3.10 and 3.11 the scanner raises most of its
            # errors as json.decoder's only once something imported it; before that, such an
            # error is a SystemError, "returned NULL without setting an exception".)
            pass
        else:
            if not text[end:].strip(_WHITESPACE):
                return value
    import json

    return json.loads(text)


def deeper_than(value: Any, limit: int = MAX_JSON_DEPTH) -> bool:
    """Whether ``value`` nests arrays and objects (lists, tuples and dicts) more than ``limit``
    levels deep (``[]`` is one level; no recursion, whatever the depth)."""
    containers = (dict, list, tuple)
    stack = [(value, 1)] if isinstance(value, containers) else []
    while stack:
        item, depth = stack.pop()
        if depth > limit:
            return True
        children = item.values() if isinstance(item, dict) else item
        stack.extend((child, depth + 1) for child in children if isinstance(child, containers))
    return False


def loads_bounded(text: str, limit: int = MAX_JSON_DEPTH) -> Any:
    """:func:`loads`, refusing a value nested more than ``limit`` levels deep with the
    :class:`RecursionError` Python raises for some of them itself."""
    value = loads(text)
    # A text with fewer brackets cannot nest deeper: most need no walk.
    if text.count("[") + text.count("{") > limit and deeper_than(value, limit):
        raise RecursionError(f"nested more than {limit} levels deep")
    return value


def _not_serializable(value: Any) -> Any:
    raise TypeError(f"Object of type {value.__class__.__name__} is not JSON serializable")


def dumps(value: Any, *, default: Optional[Callable[[Any], Any]] = None) -> str:
    """``json.dumps(value, default=default)``: compact separators, ASCII, no indent."""
    if _scan is not None:
        try:
            encode = _c_encoder(
                {}, default or _not_serializable, _c_ascii, None, ": ", ", ", False, False, True
            )
        except TypeError:  # a C encoder of another signature
            pass
        else:
            if isinstance(value, str):
                return str(_c_ascii(value))
            return "".join(encode(value, 0))
    import json

    return json.dumps(value, default=default)


# -- a tool's reply ----------------------------------------------------------------------------


def tail(text: str, limit: int = QUOTE_LIMIT) -> str:
    """The end of ``text`` on one line (its lines joined by `` | ``), capped."""
    text = " | ".join(line.strip() for line in text.splitlines() if line.strip())
    return text if len(text) <= limit else "…" + text[-limit:]


def _text(value: Any) -> str:
    return value if isinstance(value, str) else dumps(value, default=str)


def parse_json_reply(stdout: str) -> tuple[bool, Any]:
    """``(True, value)`` for the JSON value in ``stdout`` (the whole of it, else its last
    non-empty line), ``(False, None)`` when there is none (a value nested more than
    :data:`MAX_JSON_DEPTH` levels deep is none)."""
    text = stdout.strip()
    if not text:
        return False, None
    try:
        return True, loads_bounded(text)
    except (ValueError, RecursionError):
        pass
    for line in reversed(text.splitlines()):
        if line.strip():
            try:
                return True, loads_bounded(line)
            except (ValueError, RecursionError):
                break
    return False, None


def read_reply(
    stdout: str, stderr: str, exit_code: int, *, label: str, duration: float = 0.0
) -> dict[str, Any]:
    """What a finished tool process printed, read (see :mod:`ally_core.replies`): the fields
    of a :class:`~ally_core.replies.ToolResult`; ``label`` names the tool in failure texts."""
    stderr_tail = stderr[-TAIL_LIMIT:]
    out: dict[str, Any] = {
        "success": False,
        "result": None,
        "error": None,
        "error_type": None,
        "exit_code": exit_code,
        "stderr": stderr_tail,
        "duration": duration,
        "reply": None,
        "data": None,
        "message": None,
        "logs": "",
    }
    if not stdout.strip():
        why = f"{label} produced no output"
        if exit_code != 0:
            why = f"{label} exited with code {exit_code} and produced no output"
        quoted = tail(stderr)
        out["error"] = f"{why}; stderr: {quoted}" if quoted else why
        out["error_type"] = "exit_code" if exit_code != 0 else "invalid_output"
        return out
    parsed, reply = parse_json_reply(stdout)
    if not parsed:
        why = f"{label} printed output that is not JSON"
        if exit_code != 0:
            why = f"{label} exited with code {exit_code}"
        text = f"{why}: {tail(stdout)}"
        if stderr.strip():
            text += f"; stderr: {tail(stderr)}"
        out["error"] = text
        out["error_type"] = "exit_code" if exit_code != 0 else "invalid_output"
        return out
    obj = reply if isinstance(reply, dict) else None
    message = obj.get("message") if obj is not None else None
    message = message if isinstance(message, str) or message is None else _text(message)
    own_error: Optional[str] = None
    if obj is not None and "success" in obj and obj["success"] is False:
        own_error = _text(obj.get("error") or obj.get("message") or f"{label} failed")
    elif obj is not None and "success" not in obj and obj.get("error"):
        own_error = _text(obj["error"])
    if obj is not None and "data" in obj:
        data = obj["data"]
    else:
        data = None if own_error is not None else reply
    result = obj["result"] if obj is not None and "result" in obj else data
    out.update(result=result, reply=reply, data=data, message=message)
    if own_error is not None or exit_code != 0:
        if own_error is not None:
            text = own_error
            if exit_code != 0:
                text += f" (exit code {exit_code})"
            kind = obj.get("error_type") if obj is not None else None
            error_type = kind if isinstance(kind, str) and kind else "tool_error"
        else:
            text = f"{label} exited with code {exit_code} after a success reply: {tail(stdout)}"
            if stderr.strip():
                text += f"; stderr: {tail(stderr)}"
            error_type = "exit_code"
        out["error"], out["error_type"] = text, error_type
        return out
    out["success"] = True
    out["logs"] = stderr_tail if stderr.strip() else ""
    return out


def reply_json(
    success: bool, reply: Any, result: Any, error: Optional[str], error_type: Optional[str]
) -> dict[str, Any]:
    """A result for a host: the tool's reply plus ally's reading of it.

    ``success`` is ally's verdict (exit code included); the tool's own keys are kept unless
    ally's reading differs (a failure always carries ``error``).
    """
    out: dict[str, Any] = dict(reply) if isinstance(reply, dict) else {}
    if reply is not None and not isinstance(reply, dict):
        out["data"] = reply
    out["success"] = success
    if not success:
        out["error"] = error
        if error_type:
            out["error_type"] = error_type
    elif reply is None and result is not None:
        out["result"] = result
    return out


def failure_line(plugin: str, tool: str, error: Optional[str]) -> str:
    """What ``ally run`` says on stderr when a call failed: the plugin and tool, once."""
    label = f"{plugin}: tool {tool!r}"
    text = " ".join((error or "failed").split())
    return text if text.startswith(label) else f"{label} failed: {text}"


def result_json(fields: Mapping[str, Any]) -> dict[str, Any]:
    """A result's fields (:func:`read_reply`'s keys) as ``ally run --json`` prints them."""
    keys = ("success", "reply", "data", "message", "result", "error", "error_type")
    out = {key: fields[key] for key in keys}
    out.update(
        exit_code=fields["exit_code"],
        logs=fields["logs"],
        stderr=fields["stderr"],
        duration=round(fields["duration"], 6),
    )
    return out


# -- the quick path's records ------------------------------------------------------------------

#: Version of a run record's shape (:mod:`ally_core.run_records`); another one is ignored.
RUN_RECORD_FORMAT = 1
#: A run record file's first line: format and Python (marshal data is read by the Python
#: that wrote it).
RUN_RECORD_HEADER = (
    f"ally-run-record {RUN_RECORD_FORMAT} {sys.implementation.cache_tag}\n"
).encode()
#: Variables a shell changes between commands, which nothing in ally reads: left out of
#: :func:`environ_digest`.
SHELL_BOOKKEEPING = frozenset({"_", "PWD", "OLDPWD", "SHLVL"})


def environ_digest(environ: Mapping[str, str]) -> str:
    """A digest of the environment variables (all but :data:`SHELL_BOOKKEEPING`)."""
    try:
        from _blake2 import blake2b
    except ImportError:  # pragma: no cover - a Python built without it
        from hashlib import blake2b
    digest = blake2b(digest_size=16)
    for key in sorted(environ):
        if key not in SHELL_BOOKKEEPING:
            digest.update(f"{key}\0{environ[key]}\0".encode("utf-8", "surrogateescape"))
    return str(digest.hexdigest())


#: The run records' directory in the env store.
RUN_DIR = ".run"
#: The names ``ally list`` and ``ally list --json`` keep their records under (no plugin
#: name starts with a dot).
LIST, LIST_JSON = ".list", ".list-json"


def run_record_path(envs_dir: str, plugin: str, environ: str) -> str:
    """Where the run record of ``plugin`` for the environment digest ``environ`` lives."""
    return f"{envs_dir}/{RUN_DIR}/{plugin}.{environ}"


def file_identity(path: str) -> Optional[list[int]]:
    """``[size, mtime_ns, inode, ctime_ns]`` of ``path`` (symlinks followed), or ``None``."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return [st.st_size, st.st_mtime_ns, st.st_ino, st.st_ctime_ns]


def quick_run_enabled(environ: Mapping[str, str]) -> bool:
    """Whether ``ally run`` may take its quick path (``ALLY_QUICK_RUN=0`` turns it off)."""
    return environ.get("ALLY_QUICK_RUN", "1").strip().lower() not in {"0", "false", "no", "off"}


# -- a tool call's cgroup (see ally_core.containment) ------------------------------------------

#: Name prefix of a call's cgroup: ``ally-call-<ally pid>-<n>``.
CGROUP_PREFIX = "ally-call-"


def cgroup_wanted(environ: Mapping[str, str]) -> bool:
    """Whether tool calls get a cgroup where ally may make one (``ALLY_TOOL_CGROUP=0``: no)."""
    return environ.get("ALLY_TOOL_CGROUP", "1").strip().lower() not in {"0", "false", "no", "off"}


def own_cgroup2() -> Optional[str]:
    """This process's cgroup in the cgroup v2 hierarchy, as a directory, if mounted."""
    try:
        with open("/proc/self/cgroup", encoding="utf-8") as fh:
            lines = fh.read().splitlines()
        with open("/proc/self/mountinfo", encoding="utf-8") as fh:
            mounts = fh.read().splitlines()
    except OSError:
        return None
    own = next((line[3:] for line in lines if line.startswith("0::")), None)
    if own is None:
        return None
    for mount in mounts:
        left, _, right = mount.partition(" - ")
        if right.split(" ", 1)[0] != "cgroup2":
            continue
        fields = left.split()
        root, mount_point = fields[3], fields[4]
        # The mount shows the hierarchy from ``root``; our path is relative to that.
        rel = own[len(root) :] if own.startswith(root) else own
        return os.path.join(mount_point, rel.lstrip("/"))
    return None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def kill_cgroup(path: str) -> None:
    """Kill every process in the cgroup ``path`` and remove it (best effort, bounded)."""
    import time

    try:
        with open(f"{path}/cgroup.kill", "w") as fh:
            fh.write("1")
    except OSError:
        # Kernels before 5.14 have no cgroup.kill: signal each member instead.
        try:
            with open(f"{path}/cgroup.procs") as fh:
                pids = fh.read().split()
        except OSError:
            pids = []
        for pid in pids:
            try:
                os.kill(int(pid), 9)  # SIGKILL
            except (ProcessLookupError, PermissionError, ValueError):
                pass
    deadline = time.monotonic() + 2.0
    while True:
        try:
            os.rmdir(path)
            return
        except FileNotFoundError:
            return
        except OSError:
            if time.monotonic() > deadline:
                return  # not empty yet: left for the next call
            time.sleep(0.005)


def reap_stale(root: str) -> None:
    """Kill and remove the call cgroups of ally processes that are gone."""
    try:
        names = [
            e.name for e in os.scandir(root) if e.name.startswith(CGROUP_PREFIX) and e.is_dir()
        ]
    except OSError:
        return
    for name in names:
        owner = name[len(CGROUP_PREFIX) :].split("-", 1)[0]
        if owner.isdigit() and int(owner) != os.getpid() and not _alive(int(owner)):
            kill_cgroup(os.path.join(root, name))
