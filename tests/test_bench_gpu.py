"""scripts/bench_gpu.sh: one command for a GPU machine; here (no GPU) it refuses in one line, and its
--cpu dry run goes through every part of the script with tiny sizes."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import REPO


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU: the script would run for minutes")
def test_without_cuda_it_says_so_in_one_line():
    env = {"PATH": f"{Path(sys.executable).parent}:/usr/bin:/bin"}
    result = subprocess.run(["bash", str(REPO / "scripts" / "bench_gpu.sh")], capture_output=True, text=True, timeout=300,
                            env=env)
    assert result.returncode == 2, result.stdout + result.stderr
    assert result.stderr.strip() == ("error: no CUDA device here (torch.cuda.is_available() is False): run this on a GPU "
                                     "machine, or pass --cpu for a dry run of the script")


@pytest.mark.slow
def test_cpu_dry_run_goes_through_every_part():
    result = subprocess.run([sys.executable, str(REPO / "scripts" / "bench_gpu.py"), "--cpu"], capture_output=True, text=True,
                            timeout=1800)
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    assert out.count(" eager") == 8  # cnn and resnet-20 x fp32/bf16 x NCHW/channels_last
    assert "device " in out and "workers " in out and "error" not in out
    assert "experiment=cifar10_speedrun on 200 synthetic images" in out
