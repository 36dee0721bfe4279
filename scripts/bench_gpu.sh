#!/usr/bin/env bash
# GPU benchmark in one command (under 8 minutes on one modern GPU):
#
#   bash scripts/bench_gpu.sh            # on a machine with a CUDA GPU
#   bash scripts/bench_gpu.sh --cpu      # dry run on the CPU with tiny sizes: checks the script, measures nothing
#
# It installs trainkit into .venv when `trainkit` is not importable (pip, from the wheels pip finds:
# PIP_FIND_LINKS, a local cache or the index), then runs scripts/bench_gpu.py, which prints:
#   * images/s and seconds per epoch of the cnn and resnet-20 (CIFAR-shaped input, batch 512) for
#     fp32/bf16 x NCHW/channels_last x eager/compiled, with the peak GPU memory of each;
#   * one epoch of resnet-20 through the on-device loader against the DataLoader-workers loader;
#   * experiment=cifar10_speedrun's seconds to finish on a synthetic 50,000-image CIFAR-shaped set.
# Extra arguments go to bench_gpu.py (python scripts/bench_gpu.py --help).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
if ! "$PYTHON" -c "import trainkit" 2>/dev/null; then
    if [ ! -x .venv/bin/python ]; then
        "$PYTHON" -m venv .venv
    fi
    PYTHON=.venv/bin/python
    "$PYTHON" -c "import trainkit" 2>/dev/null || "$PYTHON" -m pip install -q -e .
fi
exec "$PYTHON" scripts/bench_gpu.py "$@"
