"""SweepSummary: after a sweep, rank its runs by the monitored metric (summary.csv + a table)."""

from __future__ import annotations

import csv
import math
import statistics
from pathlib import Path

import yaml
from hydra.experimental.callback import Callback as HydraCallback
from omegaconf import DictConfig
from rich.markup import escape
from rich.table import Table

from trainkit import metrics as M
from trainkit.console import console
from trainkit.run.record import RunRecord
from trainkit.status import Status

FAILED_JOBS: list[str] = []  # read by the CLI to choose the exit code of a sweep


def collect_runs(sweep_dir: Path) -> list[dict]:
    runs = []
    for job_dir in sorted((p for p in sweep_dir.iterdir() if p.is_dir() and (p / ".hydra").is_dir()),
                          key=job_order):
        record = RunRecord.read(job_dir) or {"status": Status.FAILED, "message": "no metrics.json: the job never started"}
        overrides_file = job_dir / ".hydra" / "overrides.yaml"
        overrides = yaml.safe_load(overrides_file.read_text()) if overrides_file.is_file() else []
        runs.append({**record, "job": job_dir.name, "dir": str(job_dir), "override_list": list(overrides or []),
                     "overrides": " ".join(overrides or [])})
    return runs


def job_order(folder: Path) -> tuple:
    """Job folders by their number: `10_optimizer=adam` after `9_optimizer=sgd` (hydra.sweep.subdir)."""
    number = folder.name.split("_", 1)[0]
    return (0, int(number), folder.name) if number.isdigit() else (1, 0, folder.name)


def counts_as_failed(run: dict) -> bool:
    """A job the sweep's exit code reports: not completed, not pruned (a search's verdict, not a
    failure), and not an interrupted trial whose point the search ran again."""
    return run.get("status") not in (Status.COMPLETED, Status.PRUNED) and not run.get("retried")


def varying_overrides(runs: list[dict]) -> dict[str, str]:
    """Per job, only the overrides that differ between jobs: what the sweep actually compares."""
    common = set.intersection(*(set(r["override_list"]) for r in runs)) if runs else set()
    return {r["job"]: " ".join(o for o in r["override_list"] if o not in common) for r in runs}


def rank(runs: list[dict], mode: str) -> list[dict]:
    """Completed runs best first by the monitored metric; pruned ones next (by their best before
    they stopped); unfinished ones after them."""

    def key(run):
        best = run.get("best")
        status = run.get("status")
        ok = status in (Status.COMPLETED, Status.PRUNED) and best is not None and not math.isnan(best)
        group = 0 if ok and status == Status.COMPLETED else (1 if ok else 2)
        return (group, -best if ok and mode == "max" else (best if ok else 0.0))

    return sorted(runs, key=key)


def write_summary(sweep_dir: Path) -> list[dict]:
    runs = collect_runs(sweep_dir)
    if not runs:
        return []
    monitor = next((r["monitor"] for r in runs if r.get("monitor")), "val/acc")
    mode = next((r["mode"] for r in runs if r.get("mode")), "max")
    ranked = rank(runs, mode)
    columns = ["rank", "job", "status", f"best {monitor}", "best_epoch", M.TEST_ACC, M.TEST_LOSS, "epochs_run",
               "wall_time_s", "overrides", "dir", "message"]
    swept = varying_overrides(runs)
    rows = []
    for i, run in enumerate(ranked, 1):
        test = run.get("test") or {}
        rows.append({"rank": i, "job": run["job"], "status": run.get("status"), f"best {monitor}": run.get("best"),
                     "best_epoch": run.get("best_epoch"), M.TEST_ACC: test.get(M.TEST_ACC), M.TEST_LOSS: test.get(M.TEST_LOSS),
                     "epochs_run": run.get("epochs_run"), "wall_time_s": run.get("wall_time_s"),
                     "overrides": run["overrides"], "dir": run["dir"], "message": run.get("message") or ""})
    with open(sweep_dir / "summary.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)
    table = Table(title=f"sweep {sweep_dir} ranked by {monitor} ({mode})", header_style="bold")
    shown = ("rank", "job", "status", f"best {monitor}", M.TEST_ACC, "epochs_run")
    for col in shown:
        table.add_column(col, justify="left" if col == "status" else "right")
    table.add_column("overrides", overflow="fold")
    for row in rows:
        fmt = lambda v: f"{v:.4f}" if isinstance(v, float) else ("" if v is None else str(v))  # noqa: E731
        # escape: an override like regularization=[l2,dropout] is not rich markup
        table.add_row(*(fmt(row[c]) for c in shown), escape(swept[row["job"]]),
                      style=None if row["status"] == Status.COMPLETED else ("dim" if row["status"] == Status.PRUNED else "red"))
    console.print(table)
    console.print(f"summary: {sweep_dir / 'summary.csv'}")
    if seeds_vary(runs):
        write_seed_summary(sweep_dir, runs, monitor, mode)
    return rows


SEED = "trainer.seed"


def is_seed(override: str) -> bool:
    return override.startswith(SEED + "=")


def seeds_vary(runs: list[dict]) -> bool:
    return len({o for r in runs for o in r["override_list"] if is_seed(o)}) > 1


def write_seed_summary(sweep_dir: Path, runs: list[dict], monitor: str, mode: str) -> list[dict]:
    """One row per configuration, its runs over the swept seeds pooled: mean and spread, so a
    comparison says whether a gap is larger than the seed-to-seed noise. Completed runs only."""
    runs = [{**r, "override_list": [o for o in r["override_list"] if not is_seed(o)]} for r in runs]
    groups: dict[str, list[dict]] = {}
    for run in runs:
        groups.setdefault(" ".join(run["override_list"]), []).append(run)
    swept = varying_overrides(runs)
    rows = []
    for config, members in groups.items():
        done = [r for r in members if r.get("status") == Status.COMPLETED and r.get("best") is not None]
        best = [float(r["best"]) for r in done]
        test = [float(r["test"][M.TEST_ACC]) for r in done if (r.get("test") or {}).get(M.TEST_ACC) is not None]
        rows.append({"config": swept[members[0]["job"]] or config, "runs": len(members), "completed": len(done),
                     f"mean best {monitor}": mean(best), f"std best {monitor}": std(best),
                     f"mean {M.TEST_ACC}": mean(test), f"std {M.TEST_ACC}": std(test)})
    key = f"mean best {monitor}"
    rows.sort(key=lambda r: (r[key] is None, -(r[key] or 0) if mode == "max" else (r[key] or 0)))
    with open(sweep_dir / "summary_over_seeds.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    table = Table(title=f"over seeds: mean ± std of each configuration, ranked by {monitor} ({mode})", header_style="bold")
    for col in ("config", "runs", f"best {monitor}", M.TEST_ACC):
        table.add_column(col, justify="left" if col == "config" else "right")
    for row in rows:
        table.add_row(escape(row["config"]), f"{row['completed']}/{row['runs']}",
                      pm(row[f"mean best {monitor}"], row[f"std best {monitor}"]), pm(row[f"mean {M.TEST_ACC}"], row[f"std {M.TEST_ACC}"]))
    console.print(table)
    console.print(f"summary over seeds: {sweep_dir / 'summary_over_seeds.csv'}")
    return rows


def mean(values: list[float]) -> float | None:
    return statistics.fmean(values) if values else None


def std(values: list[float]) -> float | None:
    """The sample standard deviation (n - 1); 0 for a single run."""
    return statistics.stdev(values) if len(values) > 1 else (0.0 if values else None)


def pm(m: float | None, s: float | None) -> str:
    return "" if m is None else f"{m:.4f} ± {s:.4f}"


class SweepSummary(HydraCallback):
    def on_multirun_end(self, config: DictConfig, **kwargs) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        if not sweep_dir.is_dir():
            return
        write_summary(sweep_dir)
        FAILED_JOBS.extend(r["job"] for r in collect_runs(sweep_dir) if counts_as_failed(r))
