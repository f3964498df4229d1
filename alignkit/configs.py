"""Config plumbing shared by every command: strict pydantic models, YAML files and ``key=value`` overrides.

``train`` and ``eval`` each define their typed config on top of this; neither imports the other's.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError


class StrictModel(BaseModel):
    """A config section: unknown keys are errors (a typo never silently falls back to a default)."""

    model_config = ConfigDict(extra="forbid")


class ConfigError(ValueError):
    """A config file, override or value the user must fix; the message is one line."""


_BOUNDS = {"greater_than": "> {gt}", "greater_than_equal": ">= {ge}", "less_than": "< {lt}",
           "less_than_equal": "<= {le}"}


def one_line(error: ValidationError, prefix: str = "") -> str:
    """A pydantic validation error as one line: each bad field with what it must be and what it got."""
    parts = []
    for item in error.errors():
        loc = ".".join(str(p) for p in item["loc"]) or "config"
        kind, ctx = item["type"], item.get("ctx") or {}
        if kind == "extra_forbidden":
            parts.append(f"{prefix}{loc}: unknown key")
        elif kind in _BOUNDS:
            parts.append(f"{prefix}{loc} must be {_BOUNDS[kind].format(**ctx)} (got {item['input']!r})")
        else:
            message = item["msg"].removeprefix("Value error, ")
            got = f" (got {item['input']!r})" if not isinstance(item.get("input"), dict | list) else ""
            parts.append(f"{prefix}{loc}: {message}{got}")
    return "; ".join(parts)


def read_yaml_mapping(path: str | Path) -> dict[str, Any]:
    """A YAML file that must hold a mapping (an empty file is an empty mapping). Only plain YAML is read
    (``safe_load``: no Python tags); syntax errors and unsafe tags are one-line :class:`ConfigError`."""
    try:
        with open(path, encoding="utf-8") as handle:
            tree = yaml.safe_load(handle) or {}
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such config file") from None
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark is not None else str(path)
        problem = getattr(error, "problem", None) or str(error).splitlines()[0]
        raise ConfigError(f"{where}: invalid YAML ({problem})") from None
    if not isinstance(tree, dict):
        raise ConfigError(f"{path}: the config must be a YAML mapping")
    return tree


def _set_dotted(tree: dict[str, Any], key: str, value: Any) -> None:
    parts = key.split(".")
    node: Any = tree
    for i, part in enumerate(parts[:-1]):
        nxt = parts[i + 1]
        if isinstance(node, list):
            node = _list_item(node, part, key)
            continue
        if not isinstance(node, dict):
            raise ConfigError(f"override {key!r}: {'.'.join(parts[:i])!r} is a value, not a section")
        if part not in node or node[part] is None:
            node[part] = [] if nxt.isdigit() else {}
        node = node[part]
    last = parts[-1]
    if isinstance(node, list):
        index = _index(node, last, key, allow_append=True)
        if index == len(node):
            node.append(value)
        else:
            node[index] = value
    elif isinstance(node, dict):
        node[last] = value
    else:
        raise ConfigError(f"override {key!r}: {'.'.join(parts[:-1])!r} is a value, not a section")


def _index(node: list, part: str, key: str, allow_append: bool = False) -> int:
    if not part.isdigit():
        raise ConfigError(f"override {key!r}: {part!r} is not a list index")
    index, limit = int(part), len(node) + (1 if allow_append else 0)
    if index >= limit:
        raise ConfigError(f"override {key!r}: index {index} is past the end of a list of {len(node)} "
                          f"(use index {len(node)} to append)" if allow_append else
                          f"override {key!r}: index {index} is past the end of a list of {len(node)}")
    return index


def _list_item(node: list, part: str, key: str) -> Any:
    return node[_index(node, part, key)]


def apply_overrides(tree: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``a.b=1``-style overrides; values are parsed as YAML (``x=0.1``, ``x=[a,b]``, ``x=true``)."""
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} is not of the form key=value")
        key, raw = item.split("=", 1)
        try:
            value = yaml.safe_load(raw)
        except yaml.YAMLError:
            raise ConfigError(f"override {item!r}: the value is not valid YAML") from None
        _set_dotted(tree, key.strip(), value)
    return tree


def deep_merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            deep_merge(base[key], value)
        else:
            base[key] = value  # lists (e.g. objectives) are replaced whole
    return base
