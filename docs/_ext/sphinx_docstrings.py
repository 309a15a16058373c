"""Griffe extension: make ally's reST-flavoured docstrings render well in Markdown.

ally's docstrings follow pytest's hookspec style (``:param:``, ``:return:``, Sphinx roles such
as ``:func:`env_identity``` and ``.. versionadded::``) and document attributes with ``#:``
comments. mkdocstrings parses the ``:param:`` fields itself (``docstring_style: sphinx``); this
extension does the rest, so that the code stays the single source of the reference:

* ``#:`` comments above an attribute become its docstring;
* roles become cross-references (``[`EnvSpec`][ally_core.envs.EnvSpec]``) when the target is a
  known object, inline code otherwise (always for ``:mod:``);
* ``.. versionadded:: X`` becomes a line "*Added in version X.*" placed before the fields;
* a paragraph ending in ``::`` (a reST literal block) ends in ``:``; the indented block after
  it is a Markdown code block already.
"""

from __future__ import annotations

import ast
import re
from typing import Any

import griffe

_ROLE = re.compile(r":(?:py:)?(func|class|meth|attr|data|mod|exc|obj|const):`(~?)([^`<>]+?)`")
_VERSIONADDED = re.compile(r"^\.\. versionadded:: *(\S+)\s*$", re.MULTILINE)
_FIELD = re.compile(r"^:(?:param|return|returns|raises|raise|rtype|type)\b", re.MULTILINE)


class SphinxDocstrings(griffe.Extension):
    """Turn ``#:`` comments into docstrings; rewrite roles and ``versionadded`` after loading."""

    def on_attribute_instance(
        self,
        *,
        node: ast.AST | griffe.ObjectNode,
        attr: griffe.Attribute,
        agent: Any,
        **kwargs: Any,
    ) -> None:
        if attr.docstring is not None or not isinstance(node, ast.AST):
            return
        code = getattr(agent, "code", None)
        lineno = getattr(node, "lineno", None)
        if not code or not lineno:
            return
        lines = code.splitlines()
        comment: list[str] = []
        index = lineno - 2
        while index >= 0 and lines[index].strip().startswith("#:"):
            comment.insert(0, lines[index].strip()[2:].strip())
            index -= 1
        if comment:
            attr.docstring = griffe.Docstring(
                "\n".join(comment),
                lineno=index + 2,
                endlineno=lineno - 1,
                parent=attr,
                parser=getattr(agent, "docstring_parser", None),
                parser_options=getattr(agent, "docstring_options", None),
            )

    def on_package(self, *, pkg: griffe.Module, **kwargs: Any) -> None:
        for obj in _walk(pkg):
            if obj.docstring is not None:
                obj.docstring.value = _rewrite(obj.docstring.value, obj, pkg)


def _walk(obj: griffe.Object) -> list[griffe.Object]:
    out = [obj]
    for member in obj.members.values():
        if isinstance(member, griffe.Alias):
            continue
        out.extend(_walk(member))
    return out


def _rewrite(text: str, obj: griffe.Object, pkg: griffe.Module) -> str:
    # reST literal blocks: "Layout::" + an indented block. The indented block already is a
    # Markdown code block; the "::" becomes ":" (or goes, on a line of its own).
    text = re.sub(r"^[ \t]*::[ \t]*\n(?=\n)", "", text, flags=re.MULTILINE)
    text = re.sub(r"(?<=\S)::[ \t]*\n(?=\n)", ":\n", text)
    versions = _VERSIONADDED.findall(text)
    if versions:
        text = _VERSIONADDED.sub("", text).rstrip()
        line = f"*Added in version {versions[0]}.*"
        field = _FIELD.search(text)
        text = (
            f"{text[: field.start()]}{line}\n\n{text[field.start() :]}"
            if field
            else f"{text}\n\n{line}"
        )

    def role(match: re.Match[str]) -> str:
        kind, short, target = match.group(1), match.group(2) == "~", match.group(3).strip()
        label = target.rsplit(".", 1)[-1] if short else target
        # Modules are not pages of their own here: name them, do not link them.
        path = None if kind == "mod" else _resolve(target, obj, pkg)
        return f"[`{label}`][{path}]" if path else f"`{label}`"

    return _ROLE.sub(role, text)


def _resolve(target: str, obj: griffe.Object, pkg: griffe.Module) -> str | None:
    """The full path of ``target`` as seen from ``obj``, if it names a loaded object."""
    candidates = []
    scope: griffe.Object | None = obj
    while scope is not None:
        candidates.append(f"{scope.path}.{target}")
        scope = scope.parent
    candidates.append(target)
    for path in candidates:
        if not path.startswith(pkg.name + ".") and path != pkg.name:
            continue
        try:
            found = _lookup(pkg, path)
        except (KeyError, griffe.AliasResolutionError, griffe.CyclicAliasError):
            continue
        if found is not None:
            return path
    return None


def _lookup(pkg: griffe.Module, path: str) -> griffe.Object | griffe.Alias | None:
    parts = path.split(".")[1:]
    current: Any = pkg
    for part in parts:
        members = current.members
        if part not in members:
            return None
        current = members[part]
    return current  # type: ignore[no-any-return]
