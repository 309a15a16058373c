"""The JSON Schema of ``plugin.json`` (``ally schema`` prints it)."""

from __future__ import annotations

import json
from importlib.resources import files
from typing import Any

__all__ = ["plugin_schema", "schema_text"]


def schema_text() -> str:
    return files(__name__).joinpath("plugin.schema.json").read_text("utf-8")


def plugin_schema() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(schema_text())
    return data
