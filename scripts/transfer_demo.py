"""The transfer-learning experiment of experiment=transfer_demo, run end to end; prints its table.

trainkit's cnn is pretrained on Fashion-MNIST, then trained on the same 1,000 MNIST images four
ways (linear probe, last 2 blocks, everything, from scratch), three seeds each, and the test
accuracy on MNIST's 10,000 test images is printed as mean +- std per way. Runs already done
(under --out) are reused, so a second call only prints. Needs the real data in ../shared/data
(or TRAINKIT_DATA_DIR). About an hour on 2 busy CPU cores (README has the measured times).

    python scripts/transfer_demo.py                 # everything, then the table
    python scripts/transfer_demo.py --seeds 0       # one seed per way
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
from pathlib import Path

WAYS = {  # name: the overrides on top of experiment=transfer_demo
    "linear probe": ["finetune=linear_probe"],
    "fine-tune last 2": ["finetune=last_n", "finetune.n=2"],
    "fine-tune all": ["finetune=full"],
    "from scratch": ["model.from_run=null"],
}


def trainkit(*args: str) -> None:
    command = [str(Path(sys.executable).parent / "trainkit"), *args]
    print("$", " ".join(command[1:]), flush=True)
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL)


def finished(folder: Path) -> bool:
    path = folder / "metrics.json"
    return path.is_file() and json.loads(path.read_text()).get("status") == "completed"


def test_accuracies(sweep: Path) -> list[float]:
    jobs = sorted((p for p in sweep.iterdir() if p.is_dir() and p.name.isdigit()), key=lambda p: int(p.name))
    return [json.loads((job / "metrics.json").read_text())["test"]["test/acc"] for job in jobs if finished(job)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("outputs"), help="paths.output_root of the runs (default: outputs)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--ways", nargs="+", choices=[w.replace(" ", "_") for w in WAYS], help="only these (default: all four)")
    args = parser.parse_args()
    os.environ.setdefault("TRAINKIT_DATA_DIR", str(Path(__file__).resolve().parents[1].parent / "shared" / "data"))
    root = args.out / "transfer_demo"
    common = [f"paths.output_root={args.out}", "trainer.progress=false"]

    pretrain = root / "pretrain"
    if not finished(pretrain):
        shutil.rmtree(pretrain, ignore_errors=True)
        trainkit("train", "experiment=fashion_mnist_cnn", f"hydra.run.dir={pretrain}", *common)
    rows = {}
    for name, overrides in WAYS.items():
        sweep = root / name.replace(" ", "_")
        if args.ways and sweep.name not in args.ways:
            continue
        if not sweep.is_dir() or len(test_accuracies(sweep)) < len(args.seeds):
            shutil.rmtree(sweep, ignore_errors=True)
            trainkit("train", "-m", "experiment=transfer_demo", *overrides, f"trainer.seed={','.join(map(str, args.seeds))}",
                     f"hydra.sweep.dir={sweep}", *common)
        rows[name] = test_accuracies(sweep)

    source = json.loads((pretrain / "metrics.json").read_text())["test"]["test/acc"]
    print(f"\npretrained: cnn on Fashion-MNIST, test accuracy {source:.4f}")
    print(f"target: MNIST, {1000} training images, test accuracy over {len(args.seeds)} seeds ({', '.join(map(str, args.seeds))})\n")
    print(f"{'way':<18} {'mean':>7} {'std':>7}   per seed")
    for name, accs in rows.items():
        spread = statistics.stdev(accs) if len(accs) > 1 else 0.0
        print(f"{name:<18} {statistics.mean(accs):>7.4f} {spread:>7.4f}   {'  '.join(f'{a:.4f}' for a in accs)}")


if __name__ == "__main__":
    main()
