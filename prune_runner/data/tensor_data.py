"""The fast path: a whole dataset as uint8 tensors on the device, augmented in batches.

No worker processes and no per-sample Python: each epoch draws its order and its crop/flip
parameters on a CPU generator seeded by (seed, epoch) (so CPU and GPU runs see the same
stream), moves them to the device once, and each batch is one gather from the stored images.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F

from .base import Batch, Data, DataOptions, calibration_indices, epoch_generator, rank_shard

RGB = tuple[float, float, float]


@dataclass(frozen=True)
class ImageTensors:
    """A dataset held as tensors at its native size: uint8 (N, 3, H, W) images, int64 (N,) labels."""

    train_x: torch.Tensor
    train_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor
    num_classes: int
    mean: RGB  # per-channel mean of pixel/255
    std: RGB  # per-channel std of pixel/255
    flip: bool  # whether a horizontal flip keeps the label (False for digits)

    def limit_train(self, train_limit: int | None) -> ImageTensors:
        if train_limit is None:
            return self
        return replace(self, train_x=self.train_x[:train_limit], train_y=self.train_y[:train_limit])


def crop_padding(input_size: int) -> int:
    """Zero padding in pixels for the random crop: the CIFAR recipe's 4 px at 32 px, scaled."""
    return max(1, round(4 * input_size / 32))


def resize_images(images: torch.Tensor, size: int, device: torch.device, chunk: int = 1024) -> torch.Tensor:
    """uint8 (N, C, h, w) -> uint8 (N, C, size, size) on `device`, bilinear, resized once at build.

    Chunked so the float copy never holds more than `chunk` images (CIFAR at 224 px would be 30 GB).
    """
    n, c, h, w = images.shape
    if (h, w) == (size, size):
        return images.to(device).contiguous()
    out = torch.empty(n, c, size, size, dtype=torch.uint8, device=device)
    shrinking = size < min(h, w)  # antialias only matters (and only helps) when shrinking
    for start in range(0, n, chunk):
        part = images[start : start + chunk].to(device).float()
        part = F.interpolate(
            part, size=(size, size), mode="bilinear", align_corners=False, antialias=shrinking
        )
        out[start : start + chunk] = part.round_().clamp_(0, 255).to(torch.uint8)
    return out


def channel_stats(images: torch.Tensor) -> tuple[RGB, RGB]:
    """Per-channel mean and std of uint8 images in pixel/255 units."""
    values = images.transpose(0, 1).reshape(images.shape[1], -1).double() / 255.0
    return tuple(values.mean(1).tolist()), tuple(values.std(1).tolist())


class TensorData(Data):
    def __init__(self, name: str, tensors: ImageTensors, opts: DataOptions):
        super().__init__(name, tensors.num_classes, opts, len(tensors.train_y), len(tensors.test_y))
        device, size = opts.device, opts.input_size
        self.train_x = resize_images(tensors.train_x, size, device)
        self.test_x = resize_images(tensors.test_x, size, device)
        self.train_y = tensors.train_y.to(device=device, dtype=torch.int64)
        self.held_x, self.held_y = self.train_x[:0], self.train_y[:0]  # withheld images (withhold): none yet
        self.test_y = tensors.test_y.to(device=device, dtype=torch.int64)
        self.flip = tensors.flip
        self.padding = crop_padding(size)
        # normalize as x * scale - shift == (x / 255 - mean) / std, one fused pass per batch
        mean = torch.tensor(tensors.mean, dtype=torch.float32, device=device).view(1, 3, 1, 1)
        std = torch.tensor(tensors.std, dtype=torch.float32, device=device).view(1, 3, 1, 1)
        self._scale = 1.0 / (255.0 * std)
        self._shift = mean / std

    def normalize(self, images: torch.Tensor) -> torch.Tensor:
        return images.float().mul_(self._scale).sub_(self._shift)

    def train_batches(self, batch_size: int, epoch: int, seed: int) -> Iterator[Batch]:
        steps = self.steps_per_epoch(batch_size)
        n, device = self.num_train, self.device
        generator = epoch_generator(seed, epoch)
        # Every rank draws the whole epoch's stream, then keeps its strided shard of positions.
        order = torch.randperm(n, generator=generator)
        shifts = flips = None
        if self.augment:
            shifts = torch.randint(0, 2 * self.padding + 1, (2, n), generator=generator)  # (dy, dx) px
            flips = torch.rand(n, generator=generator) < 0.5
        mine = rank_shard(torch.arange(n), self.rank, self.world_size)
        order = order[mine].to(device)
        if shifts is not None:
            shifts = shifts[:, mine].to(device)
            flips = flips[mine].to(device) if self.flip else None
        for step in range(steps):
            part = slice(step * batch_size, (step + 1) * batch_size)
            index = order[part]
            images = self.train_x[index]
            if shifts is not None:
                images = self.crop_and_flip(images, shifts[:, part], None if flips is None else flips[part])
            yield self.normalize(images), self.train_y[index]

    def crop_and_flip(
        self, images: torch.Tensor, shifts: torch.Tensor, flips: torch.Tensor | None
    ) -> torch.Tensor:
        """Random crop of the zero-padded batch (offsets `shifts` (2, B) in px) and optional h-flip.

        One advanced-indexing gather: per sample, rows start at dy and columns at dx (reversed
        for the flipped samples) in the padded image.
        """
        pad = self.padding
        b, c, h, w = images.shape
        padded = F.pad(images, (pad, pad, pad, pad))  # zeros = black, like RandomCrop(padding=pad)
        rows = shifts[0, :, None] + torch.arange(h, device=images.device)  # (B, H)
        cols = shifts[1, :, None] + torch.arange(w, device=images.device)  # (B, W)
        if flips is not None:
            cols = torch.where(flips[:, None], cols.flip(1), cols)
        batch_index = torch.arange(b, device=images.device).view(b, 1, 1, 1)
        channel_index = torch.arange(c, device=images.device).view(1, c, 1, 1)
        return padded[batch_index, channel_index, rows[:, None, :, None], cols[:, None, None, :]]

    def eval_batches(self, batch_size: int) -> Iterator[Batch]:
        for start in range(0, self.num_test, batch_size):
            end = start + batch_size
            yield self.normalize(self.test_x[start:end]), self.test_y[start:end]

    def calib_batches(self, batch_size: int, n: int, seed: int) -> Iterator[Batch]:
        yield from self.train_subset_batches(calibration_indices(self.num_train, batch_size, n, seed), batch_size)

    def _split_training(self, kept: torch.Tensor, held: torch.Tensor) -> None:
        kept, held = kept.to(self.device), held.to(self.device)
        self.held_x, self.held_y = self.train_x[held], self.train_y[held]
        self.train_x, self.train_y = self.train_x[kept], self.train_y[kept]

    def withheld_batches(self, batch_size: int) -> Iterator[Batch]:
        for start in range(0, len(self.held_y), batch_size):
            end = start + batch_size
            yield self.normalize(self.held_x[start:end]), self.held_y[start:end]

    def train_subset_batches(self, indices: torch.Tensor, batch_size: int) -> Iterator[Batch]:
        indices = indices.to(self.device)
        for start in range(0, len(indices), batch_size):
            index = indices[start : start + batch_size]
            yield self.normalize(self.train_x[index]), self.train_y[index]
