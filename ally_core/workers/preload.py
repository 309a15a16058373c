"""What a warm worker imports before it serves, and the bytecode it compiles.

Loaded by ``server.py`` in the env's interpreter (standard library only, Python 3.9+, never
imported by ally): the imports of the tool scripts read with :mod:`ast`, the preload itself,
the checks that make a fork of the preloaded process equal to a spawn, and the compiles of
the env's packages (ahead of the preload right after a build, and of whole packages after it).
"""

from __future__ import annotations

import ast
import contextlib
import os
import re
import sys
import threading
from typing import Any, Dict, List, Optional, Tuple

#: Most files the compile ahead of a fresh env's first preload looks at.
AHEAD_LIMIT = 6000


def top_level_imports(tree: ast.Module) -> List[str]:
    """Absolute imports a module runs when it is executed (not those inside functions)."""
    names: List[str] = []
    todo: List[ast.AST] = list(tree.body)
    while todo:
        node = todo.pop(0)
        if isinstance(node, ast.Import):
            names.extend(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level == 0 and node.module:
                names.append(node.module)
        elif not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            # if/try/with/for blocks run at import; except handlers have a body too.
            for field in ("body", "orelse", "finalbody", "handlers"):
                children = getattr(node, field, None)
                if isinstance(children, list):
                    todo.extend(c for c in children if isinstance(c, ast.AST))
    seen: Dict[str, None] = {}
    for name in names:
        seen.setdefault(name, None)
    return list(seen)


def _inside(path: Optional[str], directory: str) -> bool:
    if not path:
        return False
    real = os.path.realpath(path)
    return real == directory or real.startswith(directory.rstrip(os.sep) + os.sep)


def _module_file(name: str) -> Optional[str]:
    module = sys.modules.get(name)
    path = getattr(module, "__file__", None)
    return path if isinstance(path, str) else None


def _module_origin(module: str, plugin_dir: str) -> Optional[str]:
    """The file of ``module`` (``-m``), without importing the plugin's own packages."""
    import importlib.util

    top, _, rest = module.partition(".")
    found = importlib.util.find_spec(top)  # a top-level name: nothing is imported
    if found is None or not rest:
        return found.origin if found is not None else None
    locations = list(found.submodule_search_locations or ())
    if locations and _inside(locations[0], plugin_dir):
        path = os.path.join(locations[0], *rest.split("."))
        for candidate in (path + ".py", os.path.join(path, "__init__.py")):
            if os.path.isfile(candidate):
                return candidate
        return None
    sub = importlib.util.find_spec(module)  # imports its (installed) parent packages
    return sub.origin if sub is not None else None


def preload(spec: Dict[str, Any]) -> Dict[str, Any]:
    """Import what the tools import; the answer for ally (``ok`` and why not)."""
    import importlib
    import importlib.util

    plugin_dir = os.path.realpath(spec["plugin_dir"])
    wanted: List[Tuple[str, str]] = []  # (module, the sys.path[0] its tool has)
    for script in spec.get("scripts", []):
        first = os.path.dirname(os.path.realpath(script))
        try:
            with open(script, "rb") as fh:
                tree = ast.parse(fh.read(), script)
        except (OSError, SyntaxError, ValueError) as exc:
            return {"ok": False, "reason": f"cannot read {script}: {exc}"}
        wanted.extend((name, first) for name in top_level_imports(tree))
    imported: List[str] = []
    skipped: List[str] = []
    for module in spec.get("modules", []):
        # ``-m pkg.tool``: its parent packages are imported, and what it imports at top
        # level; the module itself runs afresh in every call.
        sys.path.insert(0, os.getcwd())
        try:
            origin = _module_origin(module, plugin_dir)
        except Exception:  # its parent package raised or is missing
            origin = None
        finally:
            del sys.path[0]
        if origin and origin.endswith(".py") and os.path.isfile(origin):
            try:
                with open(origin, "rb") as fh:
                    tree = ast.parse(fh.read(), origin)
            except (OSError, SyntaxError, ValueError) as exc:
                return {"ok": False, "reason": f"cannot read {origin}: {exc}"}
            wanted.extend((name, os.getcwd()) for name in top_level_imports(tree))
            parent = module.rpartition(".")[0]
            if parent:
                wanted.append((parent, os.getcwd()))
    # Modules earlier calls imported on their own (lazily), and regular expressions they
    # compiled (``re:[pattern, flags]``): ally hands them back.
    first_dir = wanted[0][1] if wanted else os.getcwd()
    patterns: List[str] = []
    for name in spec.get("learned", []):
        if name.startswith("re:"):
            patterns.append(name)
        else:
            wanted.append((name, first_dir))
    for name, first in wanted:
        sys.path.insert(0, first)
        try:
            top = name.partition(".")[0]
            try:
                found = importlib.util.find_spec(top)
            except (ImportError, ValueError):
                found = None
            if (
                found is None
                or _inside(found.origin, plugin_dir)
                or any(_inside(p, plugin_dir) for p in (found.submodule_search_locations or ()))
            ):
                skipped.append(name)  # not importable here, or the plugin's own module
                continue
            try:
                importlib.import_module(name)
            except ImportError:
                skipped.append(name)
                continue
            imported.append(name)
        except Exception as exc:  # the module raised while imported: no warm worker
            kind = exc.__class__.__name__
            return {"ok": False, "reason": f"importing {name} raised {kind}: {exc}"}
        finally:
            del sys.path[0]
    compile_patterns(patterns)
    return {"ok": True, "imported": imported, "skipped": skipped}


def compile_patterns(entries: List[str]) -> None:
    """Compile the learned regular expressions into :mod:`re`'s cache (pure: nothing else
    changes), so that a call compiling the same one finds it there."""
    import json
    import re

    for entry in entries:
        try:
            pattern, flags = json.loads(entry[3:])
            if isinstance(pattern, str) and isinstance(flags, int) and not flags & re.DEBUG:
                re.compile(pattern, flags)
        except (ValueError, TypeError, re.error, RecursionError, OverflowError):
            continue


def fork_safety(spec: Dict[str, Any]) -> Optional[str]:
    """Why forking this process would not be a spawn, or ``None``."""
    sys.stdout.flush()
    sys.stderr.flush()
    for fd in (1, 2):
        try:
            size = os.fstat(fd).st_size
        except OSError:
            size = 0
        if size:
            return "the preloaded modules wrote output"
    if threading.active_count() > 1:
        me = threading.current_thread()
        names = ", ".join(t.name for t in threading.enumerate() if t is not me)
        return f"the preloaded modules started threads ({names})"
    try:
        tasks = len(os.listdir("/proc/self/task"))
    except OSError:
        tasks = 1
    if tasks > 1:
        return f"the preloaded modules started {tasks - 1} native thread(s)"
    plugin_dir = os.path.realpath(spec["plugin_dir"])
    for name in list(sys.modules):
        if _inside(_module_file(name), plugin_dir):
            return f"the preload imported the plugin's own module {name}"
    # A plugin file named like a module already loaded here would win in a spawn.
    loaded = {name.partition(".")[0] for name in sys.modules}
    dirs = {os.path.dirname(os.path.realpath(s)) for s in spec.get("scripts", [])}
    if spec.get("modules"):
        dirs.add(os.getcwd())
    for directory in dirs:
        try:
            entries = os.listdir(directory)
        except OSError:
            continue
        for entry in entries:
            stem = entry.partition(".")[0]
            if (
                stem in loaded
                and stem != "__pycache__"
                and (
                    entry.endswith((".py", ".pyc", ".so", ".pyd"))
                    or os.path.isdir(os.path.join(directory, entry))
                )
            ):
                return f"{os.path.join(directory, entry)} shadows the loaded module {stem}"
    return None


def site_dirs() -> List[str]:
    import site

    dirs = list(getattr(site, "getsitepackages", lambda: [])())
    return [d for d in dirs if os.path.isdir(d)]


def package_dirs() -> List[str]:
    """Directories (or files) of the env's packages loaded now: what to compile."""
    sites = [os.path.realpath(d) for d in site_dirs()]
    out: Dict[str, None] = {}
    for name in list(sys.modules):
        if "." in name:
            continue
        path = _module_file(name)
        if not path or not any(_inside(path, d) for d in sites):
            continue
        module = sys.modules[name]
        locations = list(getattr(module, "__path__", []) or [])
        if locations and os.path.isdir(locations[0]):
            out.setdefault(locations[0], None)
        elif path.endswith(".py") and os.path.isfile(path):
            out.setdefault(path, None)
    return list(out)


def rss_bytes() -> int:
    try:
        with open("/proc/self/statm") as fh:
            return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        import resource

        usage = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return usage if sys.platform == "darwin" else usage * 1024


def compile_packages(dirs: List[str]) -> None:
    """Write the bytecode of ``dirs`` (background, lowest priority)."""
    import compileall

    try:
        os.nice(19)
    except OSError:
        pass
    for target in dirs:
        # A package that does not compile is the tool's business, not the compile's.
        with contextlib.suppress(Exception):
            if os.path.isdir(target):
                compileall.compile_dir(target, quiet=2)
            else:
                compileall.compile_file(target, quiet=2)


def _source_of(name: str, roots: Dict[str, Optional[str]], sites: List[str]) -> Optional[str]:
    """The ``.py`` file of module ``name`` if its top-level package is in the env's
    site-packages (``roots`` caches where each top-level name is)."""
    import importlib.machinery

    top, _, rest = name.partition(".")
    if top not in roots:
        spec = importlib.machinery.PathFinder.find_spec(top, sites)
        origin = getattr(spec, "origin", None)
        roots[top] = origin if isinstance(origin, str) and origin.endswith(".py") else None
    base = roots[top]
    if base is None or not rest:
        return base
    if os.path.basename(base) != "__init__.py":
        return None
    path = os.path.join(os.path.dirname(base), *rest.split("."))
    for candidate in (path + ".py", os.path.join(path, "__init__.py")):
        if os.path.isfile(candidate):
            return candidate
    return None


_IMPORT = re.compile(r"(?:from\s+(\.*)([\w.]*)\s+import\s+(.*)|import\s+(.*))")
_BLOCK = re.compile(r"(?:async\s+def|def|class)\b")


def _imports_of(path: str, name: str) -> List[str]:
    """Modules that running ``path`` (module ``name``) imports at once, absolute names;
    ``from x import y`` also names ``x.y`` (a submodule, if it is one). Read line by line,
    not parsed (parsing costs as much as the compile it is to speed up): an import inside a
    ``def`` or ``class`` body is not run at import and is left out."""
    try:
        with open(path, encoding="utf-8", errors="replace") as fh:
            lines = fh.read().splitlines()
    except OSError:
        return []
    package = name if os.path.basename(path) == "__init__.py" else name.rpartition(".")[0]
    out: List[str] = []
    block: Optional[int] = None  # indentation of the def/class being skipped
    i = 0
    while i < len(lines):
        line = lines[i]
        i += 1
        text = line.lstrip()
        if not text or text.startswith("#"):
            continue
        indent = len(line) - len(text)
        if block is not None:
            if indent > block:
                continue
            block = None
        if _BLOCK.match(text):
            block = indent
            continue
        match = _IMPORT.match(text)
        if match is None:
            continue
        dots, module, names, plain = match.groups()
        if plain is not None:
            out.extend(n.split()[0] for n in plain.split("#")[0].split(",") if n.strip())
            continue
        names = names.split("#")[0]
        if "(" in names:
            while ")" not in names and i < len(lines):
                names += " " + lines[i].split("#")[0]
                i += 1
            names = names.replace("(", " ").replace(")", " ")
        if dots:
            parts = package.split(".") if package else []
            if len(dots) - 1 >= len(parts):
                continue
            base = ".".join(parts[: len(parts) - (len(dots) - 1)])
            module = f"{base}.{module}" if module else base
        if not module:
            continue
        out.append(module)
        for item in names.split(","):
            word = item.split()[0] if item.split() else ""
            if word.isidentifier():
                out.append(f"{module}.{word}")
    return out


def import_closure(names: List[str], sites: Optional[List[str]] = None) -> List[str]:
    """The source files in ``sites`` (default: the env's site-packages) that importing
    ``names`` runs, in about the order an import reaches them (depth first), found by
    reading them, without importing anything."""
    sites = [os.path.realpath(d) for d in (site_dirs() if sites is None else sites)]
    roots: Dict[str, Optional[str]] = {}
    order: List[str] = []
    seen: Dict[str, None] = {}

    def visit(name: str) -> None:
        parts = name.split(".")
        for i in range(1, len(parts) + 1):  # a submodule imports its parents first
            module = ".".join(parts[:i])
            if module in seen or len(order) >= AHEAD_LIMIT:
                continue
            seen[module] = None
            path = _source_of(module, roots, sites)
            if path is None:
                continue
            order.append(path)
            for child in _imports_of(path, module):
                visit(child)

    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(max(limit, 10000))
    try:
        for name in names:
            visit(name)
    finally:
        sys.setrecursionlimit(limit)
    return order


def compile_ahead(names: List[str], sites: Optional[List[str]] = None) -> None:
    """Compile what importing ``names`` will run, last first: the preload imports (and
    compiles) from the first, so the two meet halfway and neither compiles a file twice
    (a fresh ``.pyc`` is skipped; both write theirs atomically)."""
    import compileall

    for path in reversed(import_closure(names, sites)):
        with contextlib.suppress(Exception):
            compileall.compile_file(path, quiet=2)


def wanted_names(spec: Dict[str, Any]) -> List[str]:
    """The modules the tool scripts import at top level (absolute names)."""
    names: List[str] = []
    for script in spec.get("scripts", []):
        try:
            with open(script, "rb") as fh:
                names.extend(top_level_imports(ast.parse(fh.read(), script)))
        except (OSError, SyntaxError, ValueError):
            continue
    return names
