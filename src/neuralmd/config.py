"""Run configurations as dataclasses, stored as TOML in each run directory."""

from __future__ import annotations

import dataclasses
import json
import os
import tomllib
from pathlib import Path
from typing import Any, TypeVar

from .errors import InputError
from .io_utils import atomic_write_text

T = TypeVar("T")


def to_toml(values: dict[str, Any]) -> str:
    """Serialise a flat dict of str/int/float/bool/list values (None values are skipped)."""
    lines = []
    for key, value in values.items():
        if value is None:
            continue
        if isinstance(value, Path):
            value = str(value)
        lines.append(f"{key} = {json.dumps(value)}")  # JSON scalars and arrays are valid TOML
    return "\n".join(lines) + "\n"


def save_config(config: Any, path: str | os.PathLike) -> None:
    """Write a dataclass config to TOML atomically."""
    atomic_write_text(to_toml(dataclasses.asdict(config)), path)


def load_config(cls: type[T], path: str | os.PathLike) -> T:
    """Read a dataclass config from TOML; unknown keys are an InputError."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: config file not found")
    try:
        values = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as exc:
        raise InputError(f"{path}: not valid TOML ({exc})") from None
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise InputError(f"{path}: unknown option(s) {unknown}; known: {sorted(known)}")
    return cls(**values)
