"""`trainkit predict <run_dir | checkpoint> IMAGE...`: the top-k classes of image files.

Each image goes through the run's own preprocessing (trainkit.load_run): brought to its channels
and size as dataset=imagefolder reads files, its eval augmentation, its normalization.
"""

from __future__ import annotations

import json
from pathlib import Path

from trainkit.errors import UserError

USAGE = """usage: trainkit predict <run_dir | checkpoint.pt> IMAGE... [--top-k K] [--json]

  --top-k K   classes shown per image, most probable first (default 5)
  --json      one JSON object per image instead of the table
"""


def main(argv: list[str]) -> None:
    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE, end="")
        return
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
    positional, top_k, as_json = [], 5, False
    args = iter(argv)
    for arg in args:
        if arg in ("--top-k", "-k") or arg.startswith("--top-k="):
            value = arg.partition("=")[2] if "=" in arg else next(args, None)
            if value is None or not value.isdigit() or int(value) < 1:
                raise UserError(f"--top-k {value}: not allowed; give a whole number >= 1")
            top_k = int(value)
        elif arg == "--json":
            as_json = True
        elif arg.startswith("--"):
            raise UserError(f"{arg}: unknown option; trainkit predict takes --top-k K and --json")
        else:
            positional.append(arg)
    if len(positional) < 2:
        raise UserError("trainkit predict needs a run folder (or checkpoint) and at least one image file")
    return positional[0], positional[1:], top_k, as_json
