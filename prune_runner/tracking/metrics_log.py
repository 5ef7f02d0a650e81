"""Per-epoch metrics: JSONL in the run dir (always), TensorBoard when asked, and to a `sink` (the MLflow tracker of
logger=mlflow) as they are logged; rank 0 only."""

from __future__ import annotations

import errno
import json
import time
from pathlib import Path

from ..config import STAGES
from ..errors import UserError
from ..run.files import atomic_write_bytes


class MetricsLog:
    def __init__(self, run_dir: Path, enabled: bool = True, logger: str = "jsonl", sink=None):
        self.enabled = enabled
        self.sink = sink  # has log_rows(rows): gets each row as it is logged (mlflow_run.MlflowTracker)
        self.path = Path(run_dir) / "metrics.jsonl"
        self._tb = None
        self._tb_dir = Path(run_dir) / "tensorboard" if enabled and logger == "tensorboard" else None
        # the logger name and the tensorboard package are checked with the config, before the first stage
        # (validate.py); a missing package here fails at the first log call
        self._global = {}

    def log(self, stage: str, epoch: int, **metrics) -> None:
        if not self.enabled:
            return
        row = {"time": round(time.time(), 3), "stage": stage, "epoch": epoch, **metrics}
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            with open(self.path, "a") as f:  # one line per write; a torn last line is skipped by readers
                f.write(json.dumps(row, default=float) + "\n")
        except OSError as err:
            if err.errno in (errno.ENOSPC, errno.EDQUOT):
                raise UserError(f"disk full while writing {self.path}; free some space and re-run the same "
                                "command to resume from the last epoch checkpoint") from None
            raise
        if self.sink is not None:
            self.sink.log_rows([row])
        if self._tb_dir is not None and self._tb is None:
            from torch.utils.tensorboard import SummaryWriter  # an optional dependency: only for logger=tensorboard

            self._tb = SummaryWriter(log_dir=str(self._tb_dir))
        if self._tb is not None:
            step = self._global.get(stage, 0)
            for key, value in metrics.items():
                if isinstance(value, (int, float)):
                    self._tb.add_scalar(f"{stage}/{key}", value, step)
            self._global[stage] = step + 1
            self._tb.flush()

    def rows(self, stage: str | None = None) -> list:
        """Logged rows (of one stage), in order; a torn line (killed mid-write) is skipped."""
        if not self.path.exists():
            return []
        out = []
        for line in self.path.read_text().splitlines():
            try:
                row = json.loads(line)
            except ValueError:
                continue
            if stage is None or row.get("stage") == stage:
                out.append(row)
        return out

    def _rewrite(self, rows: list) -> None:
        order = {stage: i for i, stage in enumerate(STAGES)}
        rows = sorted(rows, key=lambda r: order.get(r.get("stage"), len(order)))  # stable: epochs keep their order
        text = "".join(json.dumps(row, default=float) + "\n" for row in rows)
        atomic_write_bytes(self.path, text.encode())

    def drop_from(self, stage: str, epoch: int) -> None:
        """Forget `stage`'s rows from `epoch` on: they are about to be logged again (a resume or a redo)."""
        if not self.enabled:
            return
        rows = self.rows()
        kept = [r for r in rows if not (r.get("stage") == stage and r.get("epoch", 0) >= epoch)]
        if len(kept) != len(rows):
            self._rewrite(kept)

    def replace_stage(self, stage: str, stage_rows: list) -> None:
        """Make `stage`'s rows those of its record (a finished or reused stage), in pipeline order."""
        if not self.enabled:
            return
        rows = self.rows()
        if [r for r in rows if r.get("stage") == stage] == stage_rows:
            return
        self._rewrite([r for r in rows if r.get("stage") != stage] + list(stage_rows))

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()
