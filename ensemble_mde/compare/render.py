"""Tables as text: table (rich), md, csv, latex, json; `print_tables` for a comparison."""

from __future__ import annotations

import csv
import io
import json

from ensemble_mde.compare.tables import (Table, accuracy_table, cell_text, compute_table, latex_escape, row_label,
                                         significance_table, weights_table)
from ensemble_mde.compare.uncertainty import uncertainty_table
from ensemble_mde.errors import ConfigError


def _markdown(table: Table) -> str:
    def esc(text: str) -> str:
        return text.replace("|", "\\|")

    def cell(row, col):
        text = esc(cell_text(row, col))
        place = row.get("rank", {}).get(col.key)
        return f"**{text}**" if place == 1 else f"<u>{text}</u>" if place == 2 else text

    lines = [f"**{esc(table.title)}**", "",
             "| Variant | " + " | ".join(esc(c.header + c.arrow) for c in table.columns) + " |",
             "|:--|" + "--:|" * len(table.columns)]
    for row in table.rows:
        name = f"*{esc(row_label(row))}*" if row.get("upper_bound") else esc(row_label(row))
        lines.append(f"| {name} | " + " | ".join(cell(row, c) for c in table.columns) + " |")
    if table.notes:
        lines.append("")
        lines += [f"{esc(note)}  " for note in table.notes]
    return "\n".join(lines) + "\n"


def _latex(table: Table) -> str:
    def cell(row, col):
        text = latex_escape(cell_text(row, col))
        place = row.get("rank", {}).get(col.key)
        return rf"\textbf{{{text}}}" if place == 1 else rf"\underline{{{text}}}" if place == 2 else text

    arrows = {"higher": r" $\uparrow$", "lower": r" $\downarrow$"}
    lines = [r"\begin{table}[t]", r"\centering", rf"\caption{{{latex_escape(table.title)}}}",
             r"\begin{tabular}{l" + "r" * len(table.columns) + "}", r"\toprule",
             "Variant & " + " & ".join(c.latex + arrows.get(c.better or "", "") for c in table.columns)
             + r" \\", r"\midrule"]
    previous = None
    for row in table.rows:
        if previous is not None and row["kind"] != previous:
            lines.append(r"\midrule")
        previous = row["kind"]
        lines.append(latex_escape(row_label(row)) + " & " + " & ".join(cell(row, c) for c in table.columns) + r" \\")
    lines += [r"\bottomrule", r"\end{tabular}"]
    if table.notes:
        lines.append(r"\par\footnotesize " + r" \\ ".join(latex_escape(n) for n in table.notes))
    lines.append(r"\end{table}")
    return "\n".join(lines) + "\n"


def _csv(table: Table) -> str:
    has_std = {c.key for c in table.columns if any(c.key in r.get("std", {}) for r in table.rows)}
    header = ["variant", "kind", "upper_bound", "n_seeds"]
    for c in table.columns:
        header.append(c.key)
        if c.key in has_std:
            header.append(f"{c.key}_std")
        if c.better:
            header.append(f"{c.key}_rank")
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(header)
    for r in table.rows:
        line = [r["name"], r["kind"], int(bool(r.get("upper_bound"))), r.get("n_seeds", 1)]
        for c in table.columns:
            value = r["values"].get(c.key)
            line.append("" if value is None else value if not isinstance(value, float) else repr(value))
            if c.key in has_std:
                std = r.get("std", {}).get(c.key)
                line.append("" if std is None else repr(std))
            if c.better:
                line.append(r.get("rank", {}).get(c.key, ""))
        writer.writerow(line)
    return buf.getvalue()


def _json(table: Table) -> str:
    return json.dumps(table_dict(table), indent=2) + "\n"


def table_dict(table: Table) -> dict:
    """The table as plain data: title, columns (key, header, better), rows, notes."""
    return {"title": table.title,
            "columns": [{"key": c.key, "header": c.header, "better": c.better} for c in table.columns],
            "rows": [{"name": r["name"], "kind": r["kind"], "upper_bound": bool(r.get("upper_bound")),
                      "n_seeds": r.get("n_seeds", 1), "values": r["values"], "std": r.get("std", {}),
                      "rank": r.get("rank", {}), **({"extra": r["extra"]} if "extra" in r else {})}
                     for r in table.rows],
            "notes": table.notes}


def rich_table(table: Table):
    """A rich Table: first place bold, second underlined, upper bounds italic. No vertical
    rules, so 120 columns hold the accuracy table; narrower terminals wrap headers and ± values."""
    from rich import box
    from rich.table import Table as RichTable
    from rich.text import Text

    # Text, not markup: a set's name in brackets, e.g. "[bts_same]", is not a style tag
    out = RichTable(title=Text(table.title), caption=Text("\n".join(table.notes)) if table.notes else None,
                    caption_justify="left", box=box.SIMPLE_HEAD)
    out.add_column("Variant", no_wrap=True)
    for c in table.columns:
        out.add_column(Text(c.header + c.arrow), justify="right")
    previous = None
    for row in table.rows:
        if previous is not None and row["kind"] != previous:
            out.add_section()
        previous = row["kind"]
        cells = [Text(row_label(row), style="italic" if row.get("upper_bound") else "")]
        for c in table.columns:
            place = row.get("rank", {}).get(c.key)
            cells.append(Text(cell_text(row, c), style="bold" if place == 1 else "underline" if place == 2 else ""))
        out.add_row(*cells)
    return out


def render(table: Table, fmt: str) -> str:
    """The table as text in `fmt`: table (rich, plain text), md, csv, latex, json."""
    if fmt == "table":
        from rich.console import Console

        from ensemble_mde.progress import PIPED_WIDTH

        console = Console(file=io.StringIO(), width=PIPED_WIDTH, color_system=None)
        console.print(rich_table(table))
        return console.file.getvalue()
    writers = {"md": _markdown, "csv": _csv, "latex": _latex, "json": _json}
    if fmt not in writers:
        raise ConfigError(f"unknown format {fmt!r}; use table, md, csv, latex or json", "--format")
    return writers[fmt](table)


FORMAT_SUFFIX = {"table": "txt", "md": "md", "csv": "csv", "latex": "tex", "json": "json"}


def print_tables(comparison, fmt: str, *, silog: bool = False, console=None, only: str | None = None) -> None:
    """Accuracy and compute tables in `fmt` (json: one object with both and the bootstrap);
    `only`: "accuracy" or "compute" alone. CSV holds one table: accuracy unless `only` says."""
    from ensemble_mde.progress import output_console

    console = console or output_console()
    accuracy, compute = accuracy_table(comparison, silog=silog), compute_table(comparison)
    weights, spread = weights_table(comparison), uncertainty_table(comparison)
    extra = [("accuracy", table) for table in (weights, spread) if table is not None]
    if fmt == "csv":
        print(render(compute if only == "compute" else accuracy, fmt), end="")
        return
    if fmt == "json":
        print(json.dumps({"accuracy": table_dict(accuracy), "compute": table_dict(compute),
                          "weights": table_dict(weights) if weights else None,
                          "uncertainty": table_dict(spread) if spread else None,
                          "bootstrap": comparison.bootstrap, "info": comparison.info}))
    elif fmt == "table":  # the bootstrap as a table of its own: the terminal is narrower than a page
        width = None if console.is_terminal else 160
        tables = [("accuracy", accuracy_table(comparison, silog=silog, delta_metric=None))]
        if comparison.bootstrap:
            tables.append(("accuracy", significance_table(comparison)))
        for kind, table in tables + [("compute", compute)] + extra:
            if only in (None, kind):
                console.print(rich_table(table), width=width)
    else:
        for kind, table in [("accuracy", accuracy), ("compute", compute)] + extra:
            if only in (None, kind):
                print(render(table, fmt))
