"""`trainkit export <run_dir | checkpoint> --format torchscript|onnx [--out PATH]`."""

from __future__ import annotations

from pathlib import Path

from trainkit.errors import UserError

USAGE = """usage: trainkit export <run_dir | checkpoint.pt> [--format torchscript|onnx] [--out PATH]

Writes <run>/export/model.torchscript.pt (or model.onnx) and model.json: uint8 images N x C x H x W
in, logits out, the run's normalization inside. Loads with torch.jit.load (or onnxruntime) alone.
ONNX needs: pip install 'trainkit[onnx]'.
"""


def main(argv: list[str]) -> None:
    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE, end="")
        return
    positional, options = [], {"--format": "torchscript", "--out": None}
    args = iter(argv)
    for arg in args:
        flag, has_value, value = arg.partition("=")
        if flag in options:
            value = value if has_value else next(args, None)
            if value is None:
                raise UserError(f"{flag} needs a value")
            options[flag] = value
        elif arg.startswith("-"):
            raise UserError(f"{arg}: unknown option; trainkit export takes --format torchscript|onnx and --out PATH")
        else:
            positional.append(arg)
    if len(positional) != 1:
        raise UserError("trainkit export takes one run folder (or checkpoint)")
    from trainkit.run.export import FORMATS, export
    from trainkit.run.load import load_run

    if options["--format"] not in FORMATS:
        raise UserError(f"--format={options['--format']} is not allowed: {', '.join(FORMATS)}")
    run = load_run(positional[0])
    path, info = export(run, options["--format"], Path(options["--out"]).expanduser() if options["--out"] else None)
    print(f"wrote {path} and {info.name}")
