"""The progress bar every long job shows (MD, training, CG training, screening): one rich
layout, a label, a bar, counts or elapsed time, time remaining and a status field."""

from __future__ import annotations

from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn,
                           TimeRemainingColumn)


def progress_bar(label: str, enabled: bool = True, counts: bool = True) -> Progress:
    """A rich ``Progress`` (use as a context manager; tasks take a ``status`` field): ``label``,
    the bar, done/total when ``counts`` (else the elapsed time, for time budgets), time
    remaining and the status text. Disabled (prints nothing) unless ``enabled``.

    ``label`` may use task fields, e.g. ``"training step {task.fields[step]}"``."""
    middle = MofNCompleteColumn() if counts else TimeElapsedColumn()
    return Progress(TextColumn(label), BarColumn(), middle, TimeRemainingColumn(),
                    TextColumn("{task.fields[status]}"), disable=not enabled)
