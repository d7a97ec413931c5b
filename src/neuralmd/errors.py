"""User-facing failures.

Every error a user can cause by what they pass in is an :class:`InputError` (or a subclass).
Its message names the file, frame and field, what was found and what was expected; the CLI
prints it on one line and exits with status 2.
"""

from __future__ import annotations


class NeuralMDError(Exception):
    """Base class of all neuralmd errors."""


class InputError(NeuralMDError, ValueError):
    """Bad input: a file, frame, field or option that is not what was expected.

    Build messages with :func:`where` so that they always say where the problem is.
    """


class ModelFormatError(InputError):
    """A model file that is not a neuralmd model, or of another format version."""


class TrainingError(NeuralMDError):
    """Training that cannot go on (diverged to NaN)."""


class LabelingError(NeuralMDError):
    """A reference calculation that failed on one frame (SCF not converged, crash)."""


def where(path: object = None, frame: int | None = None, field: str | None = None) -> str:
    """Return a location prefix like ``"data.xyz: frame 3: field 'forces'"`` for messages."""
    parts = []
    if path is not None:
        parts.append(str(path))
    if frame is not None:
        parts.append(f"frame {frame}")
    if field is not None:
        parts.append(f"field '{field}'")
    return ": ".join(parts)
