"""Rich progress displays and the console every command prints through."""

from __future__ import annotations

import os

from rich.console import Console
from rich.progress import (BarColumn, MofNCompleteColumn, Progress, ProgressColumn, TextColumn,
                           TimeElapsedColumn, TimeRemainingColumn)
from rich.text import Text

PIPED_WIDTH = 200   # columns of text written where no terminal gives a width (pipes, files, CI logs)


def output_console(stderr: bool = False) -> Console:
    """A rich Console on stdout (or stderr). Piped into a file or a CI log, rich would
    assume 80 columns and cut table cells to ellipses; there it is PIPED_WIDTH wide
    unless $COLUMNS says otherwise."""
    console = Console(stderr=stderr)
    if not console.is_terminal and "COLUMNS" not in os.environ:
        console.width = PIPED_WIDTH
    return console


class RateColumn(ProgressColumn):
    """Steps per second (blank until rich has a speed estimate)."""

    def render(self, task) -> Text:
        return Text(f"{task.speed:.2f} it/s" if task.speed else "")


def task_progress(enabled: bool = True, *extra_columns) -> Progress:
    """Description, bar, done/total, rate, elapsed, ETA (+ extra columns); disabled = silent.
    On stderr, so that what a command prints (a JSON object, a CSV table) stays clean on stdout."""
    return Progress(
        TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), *extra_columns,
        RateColumn(), TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(),
        disable=not enabled, console=output_console(stderr=True),
    )


def training_progress(enabled: bool = True) -> Progress:
    """Progress for training steps with the current loss and learning rate."""
    return task_progress(enabled, TextColumn("loss {task.fields[loss]:.4f}"), TextColumn("lr {task.fields[lr]:.2e}"))
