"""Do torchvision ImageNet architectures learn the embedded digits dataset from scratch?

For each model: the pretrain stage only, schedule=demo's pretraining (6 epochs, lr 0.1, batch 64;
--epochs to shorten), digits at 32 px, on the CPU; prints the base top-1 accuracy (chance: 10%),
the last epoch's training accuracy, and the wall time.
Run: .venv/bin/python scripts/bench_digits_torchvision.py [--models a,b] [--epochs N] [--threads N]
"""

from __future__ import annotations

import argparse
import io
import json
import tempfile
import time
from pathlib import Path

import torch
from rich.console import Console

from prune_runner.config import RunConfig, ScheduleConfig, StageSchedule
from prune_runner.latency.device import cpu_name
from prune_runner.run.pipeline import run_pipeline

DEFAULT_MODELS = "mobilenet_v3_small,efficientnet_b0,squeezenet1_1,regnet_x_400mf"


def base_accuracy(model: str, out: Path, epochs: int) -> tuple[float, float]:
    """(test accuracy, training accuracy of the last epoch)."""
    cfg = RunConfig()
    cfg.model.name, cfg.method.name = model, "l1"
    cfg.device, cfg.progress, cfg.cache, cfg.stages = "cpu", False, False, ["pretrain"]
    demo = StageSchedule(epochs=epochs, lr=0.1, batch_size=64)  # conf/schedule/demo.yaml's pretrain
    cfg.schedule = ScheduleConfig(name="demo", pretrain=demo)
    cfg.out_root = str(out)
    records = run_pipeline(cfg, out / model, console=Console(file=io.StringIO()))
    rows = [json.loads(line) for line in (out / model / "metrics.jsonl").read_text().splitlines()]
    return records["pretrain"]["metrics"]["acc"], rows[-1]["train_acc"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default=DEFAULT_MODELS)
    ap.add_argument("--epochs", type=int, default=6)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    print(f"CPU {cpu_name()}; torch {torch.__version__}, threads {args.threads}")
    print(f"digits 32 px, pretrain {args.epochs} epochs at lr 0.1, batch 64; chance is 10%")
    with tempfile.TemporaryDirectory() as tmp:
        for model in args.models.split(","):
            started = time.perf_counter()
            acc, train_acc = base_accuracy(model, Path(tmp), args.epochs)
            print(f"{model:<22} test acc {100 * acc:5.1f}%  train acc {100 * train_acc:5.1f}%  "
                  f"({time.perf_counter() - started:.0f} s)", flush=True)


if __name__ == "__main__":
    main()
