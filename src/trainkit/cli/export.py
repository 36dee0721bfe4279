"""`trainkit export <run_dir | checkpoint> --format torchscript|onnx [--out PATH]`."""

from __future__ import annotations

from pathlib import Path

from trainkit.cli.one_line_parser import OneLineParser
from trainkit.errors import UserError


def main(argv: list[str]) -> None:
    parser = OneLineParser(prog="trainkit export", description=(
        "Write <run>/export/model.torchscript.pt (or model.onnx) and model.json: uint8 images N x C x H x W in, "
        "logits out, the run's normalization inside. Loads with torch.jit.load (or onnxruntime) alone. "
        "ONNX needs: pip install 'trainkit[onnx]'."))
    parser.add_argument("target", help="a run folder or a checkpoint .pt")
    parser.add_argument("--format", default="torchscript", help="torchscript (default) or onnx")
    parser.add_argument("--out", type=Path, help="where to write (default <run>/export/model.<format>)")
    args = parser.parse_args(argv)
    from trainkit.run.export import FORMATS, export
    from trainkit.run.load import load_run

    if args.format not in FORMATS:
        raise UserError(f"--format={args.format} is not allowed: {', '.join(FORMATS)}")
    run = load_run(args.target)
    path, info = export(run, args.format, args.out.expanduser() if args.out else None)
    print(f"wrote {path} and {info.name}")
