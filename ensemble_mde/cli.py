"""The `ensemble` command: a thin argparse layer over the Python API.

Each command family lives in `ensemble_mde/commands/<name>.py`, named after it, which exposes
`register(subparsers)`; the parser it adds sets `func(args) -> int | None`. Shared flags are
declared once in commands/options.py.
Errors a user can cause (EnsembleError) print one line and exit with 2.
"""

from __future__ import annotations

import argparse
import os
import sys

from ensemble_mde import __version__
from ensemble_mde.errors import EnsembleError

# One module per command family, each exposing register(subparsers); imported by name so that
# a command loads only what it uses, and none of them imports this module.
COMMAND_MODULES = [f"ensemble_mde.commands.{name}" for name in (
    "data", "train_base", "lr_find", "train_meta", "evaluate", "predict", "profile", "import_weights",
    "selectivity", "compare", "experiment")]


def build_parser() -> argparse.ArgumentParser:
    import importlib

    parser = argparse.ArgumentParser(
        prog="ensemble",
        description="Stacked-generalization ensembles for monocular depth estimation.",
    )
    parser.add_argument("--version", action="version", version=f"ensemble-mde {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return parser


def one_line(error: EnsembleError) -> str:
    """The error's message; for one re-raised from a DataLoader worker (whose message is the
    worker's whole traceback), the original `Type: message` line without the type."""
    text = str(error).strip()
    if "\n" not in text:
        return text
    last = text.splitlines()[-1]
    return last.split(": ", 1)[1] if last.startswith(("ensemble_mde.", type(error).__name__)) else last


def main(argv: list[str] | None = None) -> None:
    """Run one command. Exit codes: 0 done; 2 bad input (one `error:` line on stderr);
    130/143 stopped by SIGINT/SIGTERM (training first writes last.pt and says how to
    resume). Under torchrun only rank 0 prints to stdout; errors from other ranks are
    marked with their rank."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except EnsembleError as e:  # a typed flag value refused (options.int_at_least, config.parse_size)
        parser.exit(2, f"error: {one_line(e)}\n")
    if not getattr(args, "func", None):
        parser.print_help()
        sys.exit(0 if args.command is None else 2)
    from ensemble_mde.speed import keep_freed_memory

    keep_freed_memory()  # CPU page faults dominated large-image passes (benchmarks/NOTES.md)
    rank = 0
    if "RANK" in os.environ:  # perhaps under torchrun; otherwise importing torch here is wasted time
        from ensemble_mde.distributed import env_rank

        rank = env_rank()
    prefix = f"[rank {rank}] " if rank else ""
    if rank:
        sys.stdout = open(os.devnull, "w", encoding="utf-8")
    try:
        code = args.func(args)
    except EnsembleError as e:
        print(f"{prefix}error: {one_line(e)}", file=sys.stderr)
        sys.exit(2)
    except OSError as e:  # disk full, permission denied ...: the file and the reason, no traceback
        where = f"{e.filename}: " if e.filename else ""
        print(f"{prefix}error: {where}{e.strerror or e}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt as e:  # Ctrl-C, or training stopped by a signal after saving last.pt
        if not rank:  # every rank stopped at the same step; rank 0 says so
            print(str(e) or "interrupted", file=sys.stderr)
        sys.exit(getattr(e, "exit_code", 130))
    sys.exit(code or 0)
