"""`trainkit compare RUN RUN...`: the settings that differ and the metrics, side by side."""

from __future__ import annotations

from pathlib import Path

from rich.markup import escape
from rich.table import Table

from trainkit.cli.one_line_parser import OneLineParser
from trainkit.console import console


def main(argv: list[str]) -> None:
    parser = OneLineParser(prog="trainkit compare", description="The config differences and the metrics of runs, side by side.")
    parser.add_argument("runs", nargs="+", type=Path, help="run folders (or a sweep's job folders), two or more")
    args = parser.parse_args(argv)
    from trainkit.run.index import comparison

    folders, differ, metrics = comparison([p.expanduser() for p in args.runs])
    names = [short(f) for f in folders]
    for title, rows in (("settings that differ", differ), ("metrics", metrics)):
        table = Table(title=title, header_style="bold")
        table.add_column("")
        for name in names:
            table.add_column(escape(name), justify="right", overflow="fold")
        for key, values in rows.items():
            table.add_row(escape(key), *(escape(cell(v)) for v in values))
        if title == "settings that differ" and not rows:
            table.add_row("(none: the same config)", *([""] * len(names)))
        console.print(table)
    for name, folder in zip(names, folders):
        if name != str(folder):
            console.print(f"{escape(name)}: {escape(str(folder))}")


def short(folder: Path) -> str:
    """A sweep job as sweep/job, a run by its folder name."""
    return f"{folder.parent.name}/{folder.name}" if (folder.parent / "multirun.yaml").is_file() else folder.name


def cell(v) -> str:
    if isinstance(v, float):
        return f"{v:.4f}"
    return "" if v is None else str(v)
