"""`trainkit runs [outputs_dir]`: past runs and sweeps, newest first."""

from __future__ import annotations

from pathlib import Path

from rich.markup import escape
from rich.table import Table

from trainkit.cli.one_line_parser import OneLineParser
from trainkit.console import console


def main(argv: list[str]) -> None:
    parser = OneLineParser(prog="trainkit runs", description="A table of the runs and sweeps under an output folder, newest first.")
    parser.add_argument("outputs_dir", nargs="?", type=Path, default=None,
                        help="the output root (paths.output_root; default: outputs)")
    parser.add_argument("-n", "--limit", type=int, default=None, help="show only the newest N")
    args = parser.parse_args(argv)
    from trainkit.run.index import index

    if args.outputs_dir is None:
        args.outputs_dir = Path("outputs")
        if not args.outputs_dir.is_dir():  # nothing run from here yet: not an error
            console.print("no runs yet: outputs/ is not here (trainkit runs <output root> to look elsewhere)")
            return
    entries = index(args.outputs_dir.expanduser())[: args.limit]
    table = Table(title=f"runs and sweeps in {args.outputs_dir} (newest first)", header_style="bold")
    for col in ("when", "kind", "task", "status", "monitored best", "test acc", "folder"):
        table.add_column(col, justify="right" if col in ("monitored best", "test acc") else "left",
                         overflow="fold" if col == "folder" else "ellipsis")
    for e in entries:
        best = "" if e.best is None else f"{e.monitor} {e.best:.4f}"
        test = "" if e.test_acc is None else f"{e.test_acc:.4f}"
        table.add_row(e.when.strftime("%Y-%m-%d %H:%M"), e.kind, escape(e.task), escape(e.status), best, test, escape(str(e.folder)))
    console.print(table)
    if not entries:
        console.print(f"no runs under {args.outputs_dir}")
