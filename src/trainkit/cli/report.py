"""`trainkit report <sweep_dir>`: the sweep's report.html (also written at the end of every sweep)."""

from __future__ import annotations

from pathlib import Path

from trainkit.cli.one_line_parser import OneLineParser


def main(argv: list[str]) -> None:
    parser = OneLineParser(prog="trainkit report", description=(
        "Write <sweep_dir>/report.html: one self-contained page (inline images) with the ranked runs, the "
        "monitored metric against each swept hyperparameter, the top validation curves, the importance of "
        "each hyperparameter, the train/val gaps and the best run's override line."))
    parser.add_argument("sweep_dir", type=Path, help="a sweep folder (outputs/sweeps/...)")
    parser.add_argument("--top", type=int, default=5, help="validation curves of the best K runs (5)")
    args = parser.parse_args(argv)
    from trainkit.reports.sweep_report import write_report

    print(write_report(args.sweep_dir.expanduser(), args.top))
