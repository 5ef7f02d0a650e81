"""Per-epoch metrics: JSONL in the run dir (always), TensorBoard when asked; rank 0 only."""

from __future__ import annotations

import json
import time
from pathlib import Path


class MetricsLog:
    def __init__(self, run_dir: Path, enabled: bool = True, logger: str = "jsonl"):
        self.enabled = enabled
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
        with open(self.path, "a") as f:  # one line per write; a torn last line is skipped by readers
            f.write(json.dumps(row, default=float) + "\n")
        if self._tb_dir is not None and self._tb is None:
            from torch.utils.tensorboard import SummaryWriter

            self._tb = SummaryWriter(log_dir=str(self._tb_dir))
        if self._tb is not None:
            step = self._global.get(stage, 0)
            for key, value in metrics.items():
                if isinstance(value, (int, float)):
                    self._tb.add_scalar(f"{stage}/{key}", value, step)
            self._global[stage] = step + 1
            self._tb.flush()

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()
