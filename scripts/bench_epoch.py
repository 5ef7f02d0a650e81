"""Seconds per ResNet-56 CIFAR-shaped training epoch: a torchvision-references-style loop vs our fast path.

Both paths train the same model (same init) on the same 50k synthetic 32x32 uint8 RGB images with
seeded random labels, batch 128, SGD momentum, cross-entropy:
  reference: Dataset over uint8 HWC numpy images -> PIL -> RandomCrop(32, padding=4),
             RandomHorizontalFlip, ToTensor, Normalize; DataLoader(workers, shuffle, drop_last,
             pin_memory on cuda); fp32 NCHW; loss.item() every step (as the reference scripts log).
  fast:      the images as uint8 tensors on the device (prune_runner.data TensorData), batched
             on-device crop/flip, prune_runner.train.loop.train_epoch with bf16 autocast and
             channels_last on cuda (fp32 NCHW on cpu), optionally torch.compile.
Each path gets one untimed warm-up epoch over a slice, then the timed epochs alternate the order.
With --limit-steps only the first N steps are timed and the epoch is extrapolated (printed as such).

    .venv/bin/python scripts/bench_epoch.py                  # cuda if available, else cpu (20 steps)
    .venv/bin/python scripts/bench_epoch.py --compile --epochs 3
"""

from __future__ import annotations

import argparse
import copy
import itertools
import os
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torchvision
from PIL import Image
from torch.utils.data import DataLoader, Dataset, Subset
from torchvision import transforms

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from prune_runner.config import StageSchedule  # noqa: E402
from prune_runner.data.base import DataOptions  # noqa: E402
from prune_runner.data.loader_data import data_from_tensors  # noqa: E402
from prune_runner.data.tensor_data import ImageTensors  # noqa: E402
from prune_runner.latency.device import cpu_name  # noqa: E402
from prune_runner.models import build_model  # noqa: E402
from prune_runner.train.loop import Fast, make_optimizer, make_scheduler, train_epoch  # noqa: E402

NUM_CLASSES = 10
SIDE = 32  # CIFAR image side, pixels
MEAN = (0.4914, 0.4822, 0.4465)  # CIFAR-10 per-channel stats of pixel/255, used by both paths
STD = (0.2470, 0.2435, 0.2616)
# The lr does not change the time per step; a small one keeps random-label training finite.
SCHEDULE = StageSchedule(lr=0.01, momentum=0.9, weight_decay=5e-4, lr_schedule="constant")
CPU_LIMIT_STEPS = 20  # default timed steps per epoch on cpu, so a run takes a couple of minutes


def _after_first_step(batches, mark_first):
    """Yield the batches; call `mark_first` once the first step is done (when the second batch is asked for)."""
    for index, batch in enumerate(batches):
        if index == 1 and mark_first is not None:
            mark_first()
        yield batch
    if mark_first is not None:
        mark_first()  # a single-step run (mark_first only records its first call)


def machine(device: torch.device) -> str:
    cpu = cpu_name()
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    gpu = torch.cuda.get_device_name(device) if device.type == "cuda" else "none used"
    return (f"machine: CPU {cpu}, {os.cpu_count()} cores ({usable} usable), torch {torch.__version__}, "
            f"torchvision {torchvision.__version__}, torch threads {torch.get_num_threads()}, GPU {gpu}")


def load_average() -> str:
    """The 1-minute load average: above the core count, other processes took part of the timed run."""
    try:
        return f" (load avg {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores)"
    except OSError:
        return ""


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def synthetic_images(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """uint8 (n, 32, 32, 3) HWC images (the layout torchvision's CIFAR10 keeps) and int64 labels."""
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, size=(n, SIDE, SIDE, 3), dtype=np.uint8)
    labels = rng.integers(0, NUM_CLASSES, size=n, dtype=np.int64)
    return images, labels


class PilImages(Dataset):
    """Like torchvision.datasets.CIFAR10: numpy HWC uint8 -> PIL image -> transform, int label."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, transform):
        self.images, self.labels, self.transform = images, labels, transform

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int):
        return self.transform(Image.fromarray(self.images[index])), int(self.labels[index])


@dataclass
class EpochTime:
    seconds: float  # one whole epoch, measured or extrapolated
    timed_steps: int
    extrapolated: bool


def time_epoch(run, device: torch.device, steps_per_epoch: int, limit: int | None) -> EpochTime:
    """Time `run(steps, mark_first)`; with a step limit, extrapolate to the whole epoch.

    Extrapolation: the first step (with the loader start-up) counts once, the later steps' mean
    time stands for every other step of the epoch. `run` returns what must outlive the clock
    (a DataLoader iterator, whose worker shutdown is not part of the timed steps).
    """
    steps = steps_per_epoch if limit is None else min(limit, steps_per_epoch)
    first: list[float] = []

    def mark_first() -> None:
        if not first:
            sync(device)
            first.append(time.perf_counter())

    sync(device)
    start = time.perf_counter()
    keep = run(steps, mark_first if steps < steps_per_epoch else None)  # no extra sync in a whole epoch
    sync(device)
    end = time.perf_counter()
    del keep
    if steps == steps_per_epoch:
        return EpochTime(end - start, steps, False)
    if steps == 1 or not first:
        return EpochTime((end - start) * steps_per_epoch / steps, steps, True)
    per_step = (end - first[0]) / (steps - 1)
    return EpochTime(first[0] - start + per_step * (steps_per_epoch - 1), steps, True)


class ReferencePath:
    name = "reference"

    def __init__(self, model, images, labels, args, device: torch.device):
        self.model, self.device, self.args = model, device, args
        train_transform = transforms.Compose([
            transforms.RandomCrop(SIDE, padding=4),
            transforms.RandomHorizontalFlip(),
            transforms.ToTensor(),
            transforms.Normalize(MEAN, STD),
        ])
        self.dataset = PilImages(images, labels, train_transform)
        self.loader = self.make_loader(self.dataset)
        self.opt = torch.optim.SGD(model.parameters(), lr=SCHEDULE.lr, momentum=SCHEDULE.momentum,
                                   weight_decay=SCHEDULE.weight_decay)
        self.criterion = torch.nn.CrossEntropyLoss()
        self.describe = (f"fp32 NCHW, PIL transforms, DataLoader workers={args.workers} "
                         f"pin_memory={device.type == 'cuda'}, loss.item() every step")

    def make_loader(self, dataset) -> DataLoader:
        return DataLoader(dataset, batch_size=self.args.batch, shuffle=True, num_workers=self.args.workers,
                          pin_memory=self.device.type == "cuda", drop_last=True,
                          generator=torch.Generator().manual_seed(self.args.seed))

    def run(self, steps: int, mark_first=None, loader: DataLoader | None = None):
        model, device = self.model, self.device
        model.train()
        batches = iter(loader or self.loader)
        for step in range(steps):
            x, y = next(batches)
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            loss = self.criterion(model(x), y)
            self.opt.zero_grad(set_to_none=True)
            loss.backward()
            self.opt.step()
            loss.item()  # the reference scripts' per-step metric logging: a host sync each step
            if step == 0 and mark_first is not None:
                mark_first()
        return batches

    def warm_up(self, images: int) -> None:
        loader = self.make_loader(Subset(self.dataset, range(images)))
        self.run(len(loader), loader=loader)


class FastPath:
    name = "fast"

    def __init__(self, model, images, labels, args, device: torch.device):
        self.device, self.args = device, args
        train_x = torch.from_numpy(images).permute(0, 3, 1, 2).contiguous()  # uint8 NCHW, like cifar.py
        train_y = torch.from_numpy(labels)
        tensors = ImageTensors(train_x, train_y, train_x[:args.batch], train_y[:args.batch], NUM_CLASSES,
                               MEAN, STD, flip=True)
        opts = DataOptions(name="synthetic", root="", input_size=SIDE, device=device, download=False,
                           in_memory=True, augment=True, workers=0, rank=0, world_size=1, train_limit=None)
        sync(device)
        start = time.perf_counter()
        self.data = data_from_tensors("synthetic", tensors, opts)
        sync(device)
        self.setup_seconds = time.perf_counter() - start  # one-time upload, not part of any epoch
        on_cuda = device.type == "cuda"
        self.fast = Fast(amp=on_cuda, channels_last=on_cuda)
        if self.fast.channels_last:
            model = model.to(memory_format=torch.channels_last)
        self.opt = make_optimizer(model, SCHEDULE)
        self.scheduler = make_scheduler(self.opt, SCHEDULE, self.data.steps_per_epoch(args.batch))
        self.model = torch.compile(model) if args.compile else model
        self.epoch = 0
        self.describe = (f"{type(self.data).__name__} uint8 on {device}, batched crop/flip, train_epoch, "
                         f"bf16 autocast={self.fast.amp}, channels_last={self.fast.channels_last}, "
                         f"compile={args.compile}")

    def run(self, steps: int, mark_first=None):
        self.epoch += 1
        batches = itertools.islice(self.data.train_batches(self.args.batch, self.epoch, self.args.seed), steps)
        train_epoch(self.model, _after_first_step(batches, mark_first), self.opt, self.scheduler, self.device,
                    self.fast)
        return None

    def warm_up(self, images: int) -> None:
        self.run(images // self.args.batch)


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="auto", help="auto (cuda if available), cpu, cuda, cuda:1 ...")
    parser.add_argument("--images", type=int, default=50_000, help="synthetic training images")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--epochs", type=int, default=1, help="timed epochs per path (after 1 warm-up)")
    parser.add_argument("--workers", type=int, default=4, help="reference DataLoader worker processes")
    parser.add_argument("--limit-steps", type=int, default=None,
                        help=f"time only the first N steps per epoch and extrapolate "
                             f"(default: whole epoch on cuda, {CPU_LIMIT_STEPS} on cpu; 0 = whole epoch)")
    parser.add_argument("--warmup-steps", type=int, default=None,
                        help="steps of the warm-up epoch slice (default 10 on cuda, 1 on cpu)")
    parser.add_argument("--compile", action="store_true", help="torch.compile the fast path's model")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.device == "auto":
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    on_cuda = torch.device(args.device).type == "cuda"
    if args.limit_steps is None:
        args.limit_steps = 0 if on_cuda else CPU_LIMIT_STEPS
    if args.warmup_steps is None:
        args.warmup_steps = 10 if on_cuda else 1  # cuda: cudnn autotune, allocator, compile
    if args.images < args.batch or args.batch < 1 or args.epochs < 1 or args.limit_steps < 0:
        parser.error("need --images >= --batch >= 1, --epochs >= 1 and --limit-steps >= 0")
    return args


def main(argv=None) -> None:
    args = parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # both paths: the references and our pipeline's default
    print(machine(device))
    images, labels = synthetic_images(args.images, args.seed)
    torch.manual_seed(args.seed)
    base = build_model("resnet56", NUM_CLASSES).to(device)
    paths = [ReferencePath(copy.deepcopy(base), images, labels, args, device),
             FastPath(copy.deepcopy(base), images, labels, args, device)]
    steps_per_epoch = args.images // args.batch
    limit = args.limit_steps or None
    timed = steps_per_epoch if limit is None else min(limit, steps_per_epoch)
    print(f"setup: resnet56, {args.images} synthetic {SIDE}x{SIDE} uint8 images, batch {args.batch}, "
          f"{steps_per_epoch} steps/epoch, device {device}; timing {timed} steps per epoch"
          + (" (EXTRAPOLATED to the whole epoch)" if timed < steps_per_epoch else " (whole epoch)"))
    for path in paths:
        print(f"  {path.name}: {path.describe}")
    print(f"  fast one-time upload of the images to {device}: {paths[1].setup_seconds:.2f} s (not timed)")

    warm_images = min(args.images, args.batch * max(1, args.warmup_steps))
    for path in paths:
        start = time.perf_counter()
        path.warm_up(warm_images)
        sync(device)
        print(f"  warm-up {path.name}: {warm_images // args.batch} steps, {time.perf_counter() - start:.1f} s",
              flush=True)

    results: dict[str, list[EpochTime]] = {path.name: [] for path in paths}
    for epoch in range(args.epochs):
        for path in paths if epoch % 2 == 0 else paths[::-1]:  # alternate who runs first
            result = time_epoch(path.run, device, steps_per_epoch, limit)
            results[path.name].append(result)
            note = f" [extrapolated from the first {result.timed_steps} steps]" if result.extrapolated else ""
            print(f"epoch {epoch + 1} {path.name:<9}: {result.seconds:8.2f} s/epoch, "
                  f"{steps_per_epoch * args.batch / result.seconds:9.1f} img/s{note}{load_average()}", flush=True)

    seconds = {name: statistics.median(r.seconds for r in rs) for name, rs in results.items()}
    for name, value in seconds.items():
        print(f"{name:<9}: {value:8.2f} s/epoch, {steps_per_epoch * args.batch / value:9.1f} img/s "
              f"(median of {args.epochs} epoch(s))")
    kind = "EXTRAPOLATED epochs" if timed < steps_per_epoch else "measured epochs"
    print(f"ratio reference/fast: {seconds['reference'] / seconds['fast']:.2f}x "
          f"(seconds per epoch, {kind}, device {device})")


if __name__ == "__main__":
    main()
