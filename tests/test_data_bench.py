"""scripts/bench_data.py runs end to end: figures for both paths, and n/a or a skip line, not a
traceback, for what cannot run."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "bench_data.py"


def test_bench_data_prints_both_paths_and_goes_on_past_what_cannot_run(tmp_path):
    result = subprocess.run(
        [sys.executable, str(SCRIPT), "--datasets", "digits,mnist", "--augmentations", "none,strong",
         "--data-dir", str(tmp_path / "empty"), "--cache-dir", str(tmp_path / "cache"), "--seconds", "0.05",
         "--workers", "1", "--batch-size", "256"],
        capture_output=True, text=True, timeout=180)
    out = result.stdout
    assert result.returncode == 0, out + result.stderr
    assert "Traceback" not in out + result.stderr
    figures = r"[\d,]+"
    assert re.search(rf"\| digits \| none \| cpu \| {figures} \| {figures} \| [\d.]+x \|", out), out  # both paths measured
    assert re.search(rf"\| digits \| strong \| cpu \| {figures} \| n/a \| - \|", out), out
    # strong has no batched equivalent: the device row says why instead of crashing
    assert re.search(r"digits +strong +cpu +device +n/a \(dataset.loader=device: augmentation.train\[0\] \(SomeOf\) "
                     r"has no batched equivalent", out), out
    assert f"skipping mnist: dataset=mnist: could not read the files in {tmp_path / 'empty'}/MNIST/raw" in out
