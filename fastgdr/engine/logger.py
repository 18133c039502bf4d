"""Training metrics to CSV (always) and TensorBoard (when the package is installed)."""

from __future__ import annotations

import csv
import importlib.util
from pathlib import Path


class MetricLogger:
    """Appends one row per logged iteration to ``metrics.csv`` and TensorBoard events.

    On resume, rows logged after the checkpoint's iteration (by the interrupted run) are
    dropped first, so the CSV never holds the same iteration twice.

    Args:
        out_dir: run folder.
        resume_iteration: iteration the run restarts from (0 for a new run).
    """

    def __init__(self, out_dir: str | Path, resume_iteration: int = 0) -> None:
        self.path = Path(out_dir) / "metrics.csv"
        self.fields: list[str] | None = None
        if self.path.exists():
            rows = list(csv.DictReader(self.path.open()))
            kept = [r for r in rows if int(r["iter"]) <= resume_iteration] if resume_iteration else []
            self.fields = list(rows[0].keys()) if rows and kept else None
            self._rewrite(kept)
        self._tb = None
        if importlib.util.find_spec("tensorboard") is not None:
            from torch.utils.tensorboard import SummaryWriter

            self._tb = SummaryWriter(str(Path(out_dir) / "tensorboard"), purge_step=resume_iteration or None)

    def _rewrite(self, rows: list[dict[str, str]]) -> None:
        with self.path.open("w", newline="") as f:
            if self.fields:
                writer = csv.DictWriter(f, fieldnames=self.fields)
                writer.writeheader()
                writer.writerows(rows)

    def log(self, iteration: int, values: dict[str, float]) -> None:
        row = {"iter": iteration, **{k: f"{v:.6g}" for k, v in values.items()}}
        if self.fields is None:
            self.fields = list(row)
            self._rewrite([])
        with self.path.open("a", newline="") as f:
            csv.DictWriter(f, fieldnames=self.fields, extrasaction="ignore").writerow(row)
        if self._tb is not None:
            for key, value in values.items():
                self._tb.add_scalar(key, value, iteration)

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()
