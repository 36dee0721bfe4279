"""metrics.csv: one row per epoch with every metric the epoch logged and the learning rate.

The rows travel in the checkpoint, so a resumed run (or one branched into a new folder) writes
the same file as an uninterrupted one; the file is rewritten whole, atomically, each epoch.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path

from trainkit import metrics as M
from trainkit.atomic import atomic_write_text
from trainkit.engine.callbacks.base import Callback


class MetricsCsv(Callback):
    # After the callbacks that add metrics (EMA 5, SWA 15), before last.pt (31) saves its rows.
    order, state_key = 25, "metrics_csv"

    def __init__(self, path: Path):
        self.path = Path(path)
        self.rows: list[dict] = []

    def on_epoch_end(self, trainer, metrics: dict) -> None:
        self.rows = [r for r in self.rows if r[M.EPOCH] < trainer.epoch]  # a resume never repeats an epoch
        self.rows.append({M.EPOCH: trainer.epoch, "step": trainer.global_step, M.LR: trainer.step_lr,
                          **{k: float(v) for k, v in metrics.items()}})
        columns = list(dict.fromkeys(k for row in self.rows for k in row))
        text = io.StringIO()
        writer = csv.DictWriter(text, fieldnames=columns, restval="", lineterminator="\n")
        writer.writeheader()
        writer.writerows(self.rows)
        atomic_write_text(self.path, text.getvalue())

    def state_dict(self) -> dict:
        return {"rows": [dict(r) for r in self.rows]}

    def load_state_dict(self, state: dict) -> None:
        self.rows = [dict(r) for r in state.get("rows", [])]
