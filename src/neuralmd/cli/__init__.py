"""The ``neuralmd`` command line: one module per command group (as MACE's ``mace/cli``), each a
thin layer over one library function. Bad input prints one line and exits with status 2."""

from __future__ import annotations

import sys

from ..errors import InputError, NeuralMDError
from . import active, analyze, bind, build, cg, cv, demo, label, md, refine, sample, tools, train  # noqa: F401  (they register the commands)
from .common import app, console

__all__ = ["app", "main"]


def main() -> None:
    """Entry point. Usage errors exit 2 (click's own handling); an InputError prints its one-line
    message without a traceback and exits 2."""
    try:
        app()
    except InputError as exc:
        console.print(f"error: {exc}", markup=False, highlight=False, soft_wrap=True)
        sys.exit(2)
    except NeuralMDError as exc:
        console.print(f"error: {exc}", markup=False, highlight=False, soft_wrap=True)
        sys.exit(1)
