"""Training logs: one CSV row per logged step, mirrored to TensorBoard.

``<out_dir>/metrics.csv`` has a ``step`` column and one column per metric name (loss terms as
``<phase>/<term>``, ``lr/<phase>``, ``steps_per_s``, evaluation metrics); a row leaves the
metrics it does not have empty. When a new name appears the file is rewritten with the wider
header. When a run resumes from step s, rows after s (written after the checkpoint by the
interrupted run) are dropped, so the file reads as one uninterrupted run.

TensorBoard events go to ``<out_dir>/tb``; if tensorboard cannot be imported the logger warns
once and writes the CSV only. Only rank 0 should log: build the logger with ``enabled=False``
elsewhere and every method is a no-op.
"""

from __future__ import annotations

import csv
import os
import warnings
from pathlib import Path
from typing import Mapping, Union

CSV_NAME = "metrics.csv"


class Logger:
    """CSV + TensorBoard scalar logger.

    Args:
        out_dir: the run folder.
        start_step: the step the run starts (or resumes) from; existing CSV rows with a larger
            step are dropped and TensorBoard events from later steps are purged.
        enabled: False on ranks other than 0 (everything becomes a no-op).
        tensorboard: also write TensorBoard events.
    """

    def __init__(
        self,
        out_dir: Union[str, os.PathLike],
        *,
        start_step: int = 0,
        enabled: bool = True,
        tensorboard: bool = True,
    ) -> None:
        self.enabled = enabled
        self.path = Path(out_dir) / CSV_NAME
        self.fields: list[str] = ["step"]
        self.rows: list[dict[str, str]] = []
        self._file = None
        self._writer = None
        if not enabled:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if self.path.exists():
            self.rows, self.fields = _read_rows(self.path, start_step)
        self._rewrite()
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError as e:  # optional: the CSV is enough
                warnings.warn(f"tensorboard is unavailable ({e}); logging to {self.path} only", stacklevel=2)
            else:
                purge = start_step + 1 if start_step > 0 else None
                self._writer = SummaryWriter(log_dir=str(Path(out_dir) / "tb"), purge_step=purge)

    def log(self, step: int, metrics: Mapping[str, float]) -> None:
        """Write one row: ``step`` and the given scalar metrics."""
        if not self.enabled:
            return
        row = {"step": str(int(step)), **{k: repr(float(v)) for k, v in metrics.items()}}
        self.rows.append(row)
        new = [k for k in row if k not in self.fields]
        if new:
            self.fields.extend(new)
            self._rewrite()
        else:
            csv.DictWriter(self._file, self.fields).writerow(row)
            self._file.flush()
        if self._writer is not None:
            for k, v in metrics.items():
                self._writer.add_scalar(k, float(v), int(step))

    def _rewrite(self) -> None:
        if self._file is not None:
            self._file.close()
        tmp = self.path.with_name(self.path.name + ".tmp")
        with open(tmp, "w", newline="") as f:
            w = csv.DictWriter(f, self.fields)
            w.writeheader()
            w.writerows(self.rows)
        os.replace(tmp, self.path)
        self._file = open(self.path, "a", newline="")

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
        if self._writer is not None:
            self._writer.close()
            self._writer = None


def _read_rows(path: Path, max_step: int) -> tuple[list[dict[str, str]], list[str]]:
    """Rows of an existing CSV with step <= max_step (a row cut off by a crash is dropped)."""
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        fields = list(reader.fieldnames or ["step"])
        rows = []
        for row in reader:
            if None in row or any(v is None for v in row.values()):  # wrong number of columns
                continue
            try:
                step = int(row["step"])
            except (KeyError, ValueError):
                continue
            if step <= max_step:
                rows.append(row)
    if "step" not in fields:
        fields = ["step"]
        rows = []
    return rows, fields


def read_csv(path: Union[str, os.PathLike]) -> list[dict[str, float]]:
    """The rows of a metrics.csv as dicts of floats (empty cells left out)."""
    with open(path, newline="") as f:
        return [{k: float(v) for k, v in row.items() if v not in ("", None)} for row in csv.DictReader(f)]
