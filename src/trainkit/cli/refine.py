"""`trainkit refine <sweep_dir> [--top K] [--shrink F]`: the fine stage's search space from a coarse search."""

from __future__ import annotations

from pathlib import Path

from trainkit.cli.one_line_parser import OneLineParser


def main(argv: list[str]) -> None:
    parser = OneLineParser(prog="trainkit refine", description=(
        "Narrow each searched range around the top K trials of a finished search (on the log scale for log "
        "parameters; choices that never reached the top K are dropped), write it as a new hparams_search "
        "option in <sweep_dir>/refine/, and print the command that runs the fine stage."))
    parser.add_argument("sweep_dir", type=Path, help="a folder written by trainkit train -m hparams_search=...")
    parser.add_argument("--top", type=int, default=5, help="how many of the best trials set the new ranges (5)")
    parser.add_argument("--shrink", type=float, default=0.5,
                        help="the new range is at least this fraction of the old width, in (0, 1] (0.5)")
    args = parser.parse_args(argv)
    from trainkit.sweep.refine import refine

    result = refine(args.sweep_dir.expanduser(), args.top, args.shrink)
    for key, old in result.before.items():
        print(f"  {key}: {old}  ->  {result.params[key]}")
    for warning in result.warnings:
        print(f"warning: {warning}")
    print(f"wrote {result.path}")
    print("run the fine stage with:")
    print(f"  {result.command}")
