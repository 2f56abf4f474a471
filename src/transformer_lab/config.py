"""Typed configuration helpers shared by every config dataclass.

A config is read from JSON or a preset plus overrides; an unknown or misspelled key, or a value of
the wrong type, is an error naming the field before any work starts.
"""

from __future__ import annotations

import dataclasses
import json
import typing
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")


def _type_ok(value: Any, annotation: Any) -> bool:
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, getattr(__import__("types"), "UnionType", None)):
        return any(_type_ok(value, a) for a in typing.get_args(annotation))
    if annotation is type(None):
        return value is None
    if annotation is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if annotation is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if isinstance(annotation, type):
        return isinstance(value, annotation)
    return True


def from_dict(cls: type[T], data: dict[str, Any], where: str = "config") -> T:
    """Build dataclass ``cls`` from ``data``, rejecting unknown keys and wrong types."""
    fields = {f.name: f for f in dataclasses.fields(cls)}
    hints = typing.get_type_hints(cls)
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ValueError(f"{where}: unknown key(s) {unknown}; known keys: {sorted(fields)}")
    for key, value in data.items():
        if not _type_ok(value, hints[key]):
            raise ValueError(f"{where}.{key}: expected {hints[key]}, got {value!r} ({type(value).__name__})")
    values = {k: (float(v) if hints[k] is float else v) for k, v in data.items()}
    return cls(**values)


def to_dict(cfg: Any) -> dict[str, Any]:
    return dataclasses.asdict(cfg)


def save_json(cfg: Any, path: str | Path) -> None:
    Path(path).write_text(json.dumps(to_dict(cfg), indent=2, sort_keys=True) + "\n")


def read_json_object(path: str | Path, missing: str = "config file not found") -> dict[str, Any]:
    """A JSON object from ``path``; FileNotFoundError / ValueError naming the file otherwise."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: {missing}") from None
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a JSON object, got {type(data).__name__}")
    return data


def load_json(cls: type[T], path: str | Path) -> T:
    return from_dict(cls, read_json_object(path), where=str(path))


def check_positive(name: str, value: Any, allow_none: bool = False) -> None:
    """ValueError unless ``value`` is a finite number > 0 (None too, with ``allow_none``)."""
    if value is None and allow_none:
        return
    if value is None or isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < float("inf"):
        raise ValueError(f"{name}: expected a positive number, got {value}")
