"""`trainkit ensemble`: the softmax of several trained models averaged, then argmax.

    trainkit ensemble outputs/runs/<a> outputs/runs/<b> outputs/runs/<c>
    trainkit ensemble outputs/sweeps/<sweep> --top 3      # the 3 best runs by their validation metric
    trainkit ensemble outputs/runs/<run> --snapshots      # a snapshot ensemble (callbacks=[snapshots])

Members must predict the same classes from images of the same size, and be tested on the same
images; their architectures, preprocessing and training may differ (each gets its own inputs).
Takes the eval overrides too (split=val, tta=flip, top_k=3, name=..., out=...).
"""

from __future__ import annotations

import sys
from pathlib import Path

from trainkit.cli.one_line_parser import OneLineParser, whole_number_from_1
from trainkit.errors import UserError


def main(argv: list[str]) -> None:
    targets, top, snapshots, overrides = parse(argv)
    from trainkit.cli.eval import compose_eval, show, write_outputs
    from trainkit.run.ensemble import evaluate_ensemble, members_of

    cfg = compose_eval(overrides)
    members, home = members_of(targets, top, snapshots)
    result, loaded_first = evaluate_ensemble(members, cfg)
    out_dir = Path(cfg.out).expanduser() if cfg.get("out") else home / "eval"
    write_outputs(out_dir, result, loaded_first, tensorboard=snapshots)
    show_members(result)
    show(result, out_dir)


def parse(argv: list[str]) -> tuple[list[str], int | None, bool, list[str]]:
    parser = OneLineParser(prog="trainkit ensemble", description=(
        "Average the softmax outputs of several trained models, then argmax: run folders, a sweep folder "
        "(--top K), or one run's snapshots (--snapshots)."))
    parser.add_argument("members", nargs="+", metavar="TARGET", help=(
        "run folders, or a sweep folder; key=value as for trainkit eval: split=test|val|train, tta=..., "
        "top_k=5, name=..., out=..."))
    parser.add_argument("--top", type=whole_number_from_1, metavar="K", help=(
        "the K best runs of a sweep by their monitored validation metric (with --snapshots: the last K snapshots)"))
    parser.add_argument("--snapshots", action="store_true", help="ensemble the run's snapshots (callbacks=[snapshots])")
    args = parser.parse_intermixed_args(argv)
    overrides = [a for a in args.members if "=" in a and not Path(a).exists()]
    targets = [a for a in args.members if a not in overrides]
    if not targets:
        raise UserError("trainkit ensemble needs run folders, a sweep folder, or one run folder with --snapshots")
    return targets, args.top, args.snapshots, overrides


def show_members(result: dict) -> None:
    from rich.table import Table

    from trainkit.console import console

    table = Table(title="ensemble members", header_style="bold")
    table.add_column("member")
    table.add_column(f"{result['split']}/acc", justify="right")
    for member in result["members"]:
        table.add_row(member["name"], f"{member['acc']:.4f}")
    table.add_row("[bold]ensemble (mean softmax)[/]", f"[bold]{result['plain']['acc']:.4f}[/]")
    console.print(table)
    console.print(f"ensemble gain over the best member: {result['gain_over_best_member']:+.4f}")


if __name__ == "__main__":
    main(sys.argv[1:])
