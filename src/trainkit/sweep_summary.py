"""SweepSummary: after a sweep, rank its runs by the monitored metric (summary.csv + a table)."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import yaml
from hydra.experimental.callback import Callback as HydraCallback
from omegaconf import DictConfig
from rich.table import Table

from trainkit.progress import console
from trainkit.run_record import RunRecord

FAILED_JOBS: list[str] = []  # read by the CLI to choose the exit code of a sweep


def collect_runs(sweep_dir: Path) -> list[dict]:
    runs = []
    for job_dir in sorted((p for p in sweep_dir.iterdir() if p.is_dir() and (p / ".hydra").is_dir()),
                          key=lambda p: int(p.name) if p.name.isdigit() else p.name):
        record = RunRecord.read(job_dir) or {"status": "failed", "message": "no metrics.json: the job never started"}
        overrides_file = job_dir / ".hydra" / "overrides.yaml"
        overrides = yaml.safe_load(overrides_file.read_text()) if overrides_file.is_file() else []
        runs.append({**record, "job": job_dir.name, "dir": str(job_dir), "override_list": list(overrides or []),
                     "overrides": " ".join(overrides or [])})
    return runs


def varying_overrides(runs: list[dict]) -> dict[str, str]:
    """Per job, only the overrides that differ between jobs: what the sweep actually compares."""
    common = set.intersection(*(set(r["override_list"]) for r in runs)) if runs else set()
    return {r["job"]: " ".join(o for o in r["override_list"] if o not in common) for r in runs}


def rank(runs: list[dict], mode: str) -> list[dict]:
    """Completed runs best first by the monitored metric; unfinished ones after them."""

    def key(run):
        best = run.get("best")
        ok = run.get("status") == "completed" and best is not None and not math.isnan(best)
        return (0 if ok else 1, -best if ok and mode == "max" else (best if ok else 0.0))

    return sorted(runs, key=key)


def write_summary(sweep_dir: Path) -> list[dict]:
    runs = collect_runs(sweep_dir)
    if not runs:
        return []
    monitor = next((r["monitor"] for r in runs if r.get("monitor")), "val/acc")
    mode = next((r["mode"] for r in runs if r.get("mode")), "max")
    ranked = rank(runs, mode)
    columns = ["rank", "job", "status", f"best {monitor}", "best_epoch", "test/acc", "test/loss", "epochs_run",
               "wall_time_s", "overrides", "dir", "message"]
    swept = varying_overrides(runs)
    rows = []
    for i, run in enumerate(ranked, 1):
        test = run.get("test") or {}
        rows.append({"rank": i, "job": run["job"], "status": run.get("status"), f"best {monitor}": run.get("best"),
                     "best_epoch": run.get("best_epoch"), "test/acc": test.get("test/acc"), "test/loss": test.get("test/loss"),
                     "epochs_run": run.get("epochs_run"), "wall_time_s": run.get("wall_time_s"),
                     "overrides": run["overrides"], "dir": run["dir"], "message": run.get("message") or ""})
    with open(sweep_dir / "summary.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)
    table = Table(title=f"sweep {sweep_dir} ranked by {monitor} ({mode})", header_style="bold")
    shown = ("rank", "job", "status", f"best {monitor}", "test/acc", "epochs_run")
    for col in shown:
        table.add_column(col, justify="left" if col == "status" else "right")
    table.add_column("overrides", overflow="fold")
    for row in rows:
        fmt = lambda v: f"{v:.4f}" if isinstance(v, float) else ("" if v is None else str(v))  # noqa: E731
        table.add_row(*(fmt(row[c]) for c in shown), swept[row["job"]],
                      style=None if row["status"] == "completed" else "red")
    console.print(table)
    console.print(f"summary: {sweep_dir / 'summary.csv'}")
    return rows


class SweepSummary(HydraCallback):
    def on_multirun_end(self, config: DictConfig, **kwargs) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        if not sweep_dir.is_dir():
            return
        rows = write_summary(sweep_dir)
        FAILED_JOBS.extend(r["job"] for r in rows if r["status"] != "completed")
