"""What every command module shares: the typer app, the console, option parsing helpers, and
settings built from a TOML file (``--config``) with the options given on the command line on top.

A command module is a thin layer: it parses options, builds a settings dataclass (whose field
defaults are the option defaults: one place), calls one library function and prints.
"""

from __future__ import annotations

import dataclasses
from enum import Enum
from pathlib import Path
from typing import Any, TypeVar

import typer
from rich.console import Console

from ..config import load_config
from ..errors import InputError

T = TypeVar("T")

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="neuralmd: neural potentials, fast MD and enhanced sampling.")
console = Console(stderr=True)

CONFIG_HELP = "settings TOML (e.g. a run's own md.toml/config.toml); options given on the command line override it"


class Method(str, Enum):
    xtb = "xtb"
    gfn1 = "gfn1"
    dft = "dft"
    hf = "hf"


def default(cls: type, name: str) -> Any:
    """The default of field ``name`` of the dataclass ``cls`` (the option's default)."""
    field = {f.name: f for f in dataclasses.fields(cls)}[name]
    if field.default_factory is not dataclasses.MISSING:
        return field.default_factory()
    return field.default


def given(ctx: typer.Context, name: str) -> bool:
    """Whether the option ``name`` (its Python parameter name) was given on the command line."""
    source = ctx.get_parameter_source(name)  # typer's click or the click package: compare by name
    return source is not None and source.name not in ("DEFAULT", "DEFAULT_MAP")


def settings_from(ctx: typer.Context, cls: type[T], config: Path | None, options: dict[str, tuple[str, Any]],
                  base: T | None = None) -> T:
    """Settings of ``cls``: read from ``config`` (or ``base``, or the defaults), then every field
    in ``options`` (field -> (option parameter, value)) that was given on the command line, or
    every one of them when there is neither a config file nor a base."""
    if config is not None:
        settings = load_config(cls, config)
    elif base is not None:
        settings = base
    else:
        return cls(**{name: value for name, (_, value) in options.items()})
    changes = {name: value for name, (param, value) in options.items() if given(ctx, param)}
    return dataclasses.replace(settings, **changes)


def refuse_given(ctx: typer.Context, names: list[str], why: str) -> None:
    """InputError if any option in ``names`` was given: an option is honoured or refused, never
    silently ignored. ``why`` says why it does not apply (``{option}`` is replaced by its name)."""
    for name in names:
        if given(ctx, name):
            option = "--" + name.replace("_", "-")
            raise InputError(f"{option}: {why.format(option=option)}")


def refuse_with_resume(ctx: typer.Context, names: list[str], run_dir: Path) -> None:
    """InputError if any option in ``names`` was given together with --resume: a resumed run
    keeps the settings it was started with (its checkpoint continues them bit for bit)."""
    refuse_given(ctx, names, f"not used with --resume (the run in {run_dir} keeps its stored settings); to change it, "
                             f"start a new run: --config {run_dir}/md.toml {{option}} ... -o NEW_DIR")


def comma_list(text: str, what: str, kind: type = str) -> list:
    """``"a,b,c"`` as a list of ``kind``; InputError naming ``what`` otherwise."""
    try:
        return [kind(t) for t in text.split(",") if t.strip()]
    except ValueError:
        raise InputError(f"{what}: cannot read {text!r} as a comma-separated list of {kind.__name__}") from None


def one_temperature(text: str) -> float:
    """A single temperature in K (the OpenMM engine takes one)."""
    try:
        return float(text)
    except ValueError:
        raise InputError(f"temperature: {text!r}; the OpenMM engine takes one value in K") from None


def load_npy(path: Path):
    """A NumPy array from a .npy file, or an InputError naming the file."""
    import numpy as np

    if not path.is_file():
        raise InputError(f"{path}: file not found")
    try:
        return np.load(path)
    except (ValueError, OSError) as exc:
        raise InputError(f"{path}: not a NumPy .npy array ({exc})") from None
