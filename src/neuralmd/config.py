"""Run configurations as dataclasses, stored as TOML in each run directory."""

from __future__ import annotations

import dataclasses
import json
import os
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

from .errors import InputError
from .io_utils import atomic_write_text
from .rundir import read_toml

T = TypeVar("T")


def to_toml(values: dict[str, Any]) -> str:
    """Serialise a dict of str/int/float/bool/list values and flat dicts of them (inline tables;
    None values are skipped)."""
    lines = []
    for key, value in values.items():
        if value is None:
            continue
        if isinstance(value, Path):
            value = str(value)
        if isinstance(value, dict):
            lines.append(f"{key} = {{{', '.join(f'{k} = {json.dumps(v)}' for k, v in value.items())}}}")
        else:
            lines.append(f"{key} = {json.dumps(value)}")  # JSON scalars and arrays are valid TOML
    return "\n".join(lines) + "\n"


def save_config(config: Any, path: str | os.PathLike) -> None:
    """Write a dataclass config to TOML atomically."""
    atomic_write_text(to_toml(dataclasses.asdict(config)), path)


def load_config(cls: type[T], path: str | os.PathLike, renamed: dict[str, str] | None = None) -> T:
    """Read a dataclass config from TOML: InputError naming the file and key for an unknown key,
    a value of the wrong type or a missing required one. ``renamed`` maps keys of older files to
    today's field names."""
    path = Path(path)
    values = {(renamed or {}).get(key, key): value for key, value in read_toml(path).items()}
    hints = typing.get_type_hints(cls)
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise InputError(f"{path}: key {unknown[0]!r} is not a setting of {cls.__name__} (a file of another "
                         f"command?); expected keys: {', '.join(sorted(known))}")
    for key, value in values.items():
        if not _fits(value, hints[key]):
            raise InputError(f"{path}: key {key!r}: {value!r} is not of type {_name(hints[key])}")
    try:
        return cls(**values)
    except TypeError as exc:  # a required field missing
        raise InputError(f"{path}: {exc}") from None


def _fits(value: Any, hint: Any) -> bool:
    """Whether a TOML value fits a type hint (int for float is fine; bool is not an int)."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint in (str, bool):
        return isinstance(value, hint)
    if origin is list:
        return isinstance(value, list) and all(_fits(v, args[0]) for v in value)
    if origin is dict:
        return isinstance(value, dict) and all(_fits(v, args[1]) for v in value.values())
    if origin in (typing.Union, types.UnionType):
        return any(_fits(value, a) for a in args if a is not type(None))
    return True


def _name(hint: Any) -> str:
    return getattr(hint, "__name__", None) if typing.get_origin(hint) is None else str(hint)
