"""`trainkit predict <run_dir | checkpoint> IMAGE...`: the top-k classes of image files.

Each image goes through the run's own preprocessing (trainkit.load_run): brought to its channels
and size as dataset=imagefolder reads files, its eval augmentation, its normalization.
"""

from __future__ import annotations

import json
from pathlib import Path

from trainkit.cli.one_line_parser import OneLineParser, whole_number_from_1
from trainkit.errors import UserError


def main(argv: list[str]) -> None:
    target, images, top_k, as_json = parse(argv)
    from trainkit.run.load import load_run

    for image in images:  # every path checked before the model is loaded: one line for the first bad one
        if not Path(image).is_file():
            raise UserError(f"{image}: no such image file" if not Path(image).exists() else f"{image}: not a file")
    run = load_run(target)
    pixels = run.preprocess.pixels([Path(i) for i in images])  # reads each, or names the one that is not an image
    results = run.predict(pixels, top_k)
    if as_json:
        for image, ranked in zip(images, results):
            print(json.dumps({"image": image, "top": [{"class": c, "probability": round(p, 6)} for c, p in ranked]}))
        return
    from rich.table import Table

    from trainkit.console import console

    table = Table(title=f"predictions of {run.run_dir or run.checkpoint} (epoch {run.epoch})", header_style="bold")
    table.add_column("image")
    for rank in range(len(results[0])):
        table.add_column(f"top {rank + 1}" if rank else "predicted")
    for image, ranked in zip(images, results):
        table.add_row(image, *(f"{c} ({p:.3f})" for c, p in ranked))
    console.print(table)


def parse(argv: list[str]) -> tuple[str, list[str], int, bool]:
    parser = OneLineParser(prog="trainkit predict", description=(
        "The most probable classes of image files, each read through the run's own preprocessing."))
    parser.add_argument("target", help="a run folder or a checkpoint .pt")
    parser.add_argument("images", nargs="+", metavar="IMAGE", help="image files")
    parser.add_argument("--top-k", "-k", type=whole_number_from_1, default=5, metavar="K",
                        help="classes shown per image, most probable first (default 5)")
    parser.add_argument("--json", action="store_true", help="one JSON object per image instead of the table")
    args = parser.parse_intermixed_args(argv)
    return args.target, args.images, args.top_k, args.json
