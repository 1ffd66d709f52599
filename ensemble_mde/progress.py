"""Rich progress displays shared by every long-running command."""

from __future__ import annotations

from rich.progress import (BarColumn, MofNCompleteColumn, Progress, ProgressColumn, TextColumn,
                           TimeElapsedColumn, TimeRemainingColumn)
from rich.text import Text


class RateColumn(ProgressColumn):
    """Steps per second (blank until rich has a speed estimate)."""

    def render(self, task) -> Text:
        return Text(f"{task.speed:.2f} it/s" if task.speed else "")


def task_progress(enabled: bool = True, *extra_columns) -> Progress:
    """Description, bar, done/total, rate, elapsed, ETA (+ extra columns); disabled = silent."""
    return Progress(
        TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), *extra_columns,
        RateColumn(), TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(),
        disable=not enabled,
    )


def training_progress(enabled: bool = True) -> Progress:
    """Progress for training steps with the current loss and learning rate."""
    return task_progress(enabled, TextColumn("loss {task.fields[loss]:.4f}"), TextColumn("lr {task.fields[lr]:.2e}"))
