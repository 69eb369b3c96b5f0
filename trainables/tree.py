"""Dotted paths in plain nested dicts (configs, reports): the one set of tree helpers."""

from __future__ import annotations

import copy
from typing import Any, Callable, Iterator, Mapping


def get_path(tree: Mapping, key: str, default: Any = None) -> Any:
    node: Any = tree
    for part in key.split("."):
        if not isinstance(node, Mapping) or part not in node:
            return default
        node = node[part]
    return node


def set_path(tree: dict, key: str, value: Any) -> None:
    """Set `a.b.c` in place, making the sections on the way (a non-dict in the way is replaced)."""
    parts = key.split(".")
    node = tree
    for part in parts[:-1]:
        child = node.get(part)
        if not isinstance(child, dict):
            child = {}
            node[part] = child
        node = child
    node[parts[-1]] = value


def deep_merge(base: Mapping, over: Mapping) -> dict:
    """A deep copy of `base` with `over` merged in, section by section."""
    out = copy.deepcopy(dict(base))
    for key, value in over.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def flatten(tree: Mapping[str, Any], prefix: str = "", sep: str = ".") -> dict[str, Any]:
    """{"a": {"b": 1}} -> {"a.b": 1}."""
    out: dict[str, Any] = {}
    for key, value in tree.items():
        name = f"{prefix}{sep}{key}" if prefix else str(key)
        if isinstance(value, Mapping):
            out.update(flatten(value, name, sep))
        else:
            out[name] = value
    return out


def numeric(tree: Mapping[str, Any]) -> dict[str, float]:
    """The numbers of a nested mapping (NaN kept), flattened with dots; bools excluded."""
    return {k: float(v) for k, v in flatten(tree).items()
            if isinstance(v, (int, float)) and not isinstance(v, bool)}


def leaves(tree: Any) -> Iterator[Any]:
    """Every non-container value of nested dicts and lists."""
    if isinstance(tree, Mapping):
        for v in tree.values():
            yield from leaves(v)
    elif isinstance(tree, (list, tuple)):
        for v in tree:
            yield from leaves(v)
    else:
        yield tree


def map_leaves(tree: Any, fn: Callable[[Any], Any]) -> Any:
    """A copy of nested dicts / lists with `fn` applied to every leaf."""
    if isinstance(tree, Mapping):
        return {k: map_leaves(v, fn) for k, v in tree.items()}
    if isinstance(tree, (list, tuple)):
        return [map_leaves(v, fn) for v in tree]
    return fn(tree)
