"""The standard path: torch DataLoader with worker processes and per-sample transforms.

Used for image folders (too large for memory), and for tensor datasets when in_memory=false
(e.g. to compare against the in-memory path). `data_from_tensors` picks the path for tensor sets.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator

import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Subset
from torchvision.transforms import v2

from .base import Batch, Data, DataOptions, calibration_indices
from .tensor_data import ImageTensors, TensorData, crop_padding


class LoaderData(Data):
    """Three datasets of (float CHW tensor, int label): train (augmented if enabled), the same
    samples without augmentation for calibration, and the test split."""

    def __init__(
        self,
        name: str,
        num_classes: int,
        opts: DataOptions,
        train_set: Dataset,
        calib_set: Dataset,
        eval_set: Dataset,
    ):
        super().__init__(name, num_classes, opts, len(train_set), len(eval_set))
        self.train_set, self.calib_set, self.eval_set = train_set, calib_set, eval_set
        self.held_set: Dataset = Subset(calib_set, [])  # withheld images (withhold), without augmentation
        self.workers = opts.workers
        self.pin_memory = opts.device.type == "cuda"  # page-locked host buffers for async copies
        # Loaders are kept between epochs so persistent workers survive; rebuilt on a new key.
        self._train: tuple | None = None  # ((batch_size, seed), sampler, loader)
        self._eval: tuple | None = None  # (batch_size, loader)

    def _loader(self, dataset: Dataset, batch_size: int, persistent: bool, **kwargs) -> DataLoader:
        return DataLoader(
            dataset,
            batch_size=batch_size,
            num_workers=self.workers,
            pin_memory=self.pin_memory,
            persistent_workers=persistent and self.workers > 0,
            **kwargs,
        )

    def _to_device(self, batches: Iterable) -> Iterator[Batch]:
        for images, labels in batches:
            yield (
                images.to(self.device, non_blocking=True),
                labels.to(self.device, dtype=torch.int64, non_blocking=True),
            )

    def train_batches(self, batch_size: int, epoch: int, seed: int) -> Iterator[Batch]:
        self.steps_per_epoch(batch_size)  # fails early on a batch larger than the shard
        key = (batch_size, seed)
        if self._train is None or self._train[0] != key:
            # Given rank and replicas explicitly, the sampler needs no process group; with one rank
            # it is simply a seeded shuffle. It shuffles with seed + epoch (set_epoch below).
            sampler = DistributedSampler(
                self.train_set,
                num_replicas=self.world_size,
                rank=self.rank,
                shuffle=True,
                seed=seed,
                drop_last=True,
            )
            worker_seeds = torch.Generator().manual_seed(seed)  # base seed of the workers' augmentation
            loader = self._loader(
                self.train_set, batch_size, True, sampler=sampler, drop_last=True, generator=worker_seeds
            )
            self._train = (key, sampler, loader)
        _, sampler, loader = self._train
        sampler.set_epoch(epoch)
        return self._to_device(loader)

    def eval_batches(self, batch_size: int) -> Iterator[Batch]:
        if self._eval is None or self._eval[0] != batch_size:
            self._eval = (batch_size, self._loader(self.eval_set, batch_size, True, shuffle=False))
        return self._to_device(self._eval[1])

    def calib_batches(self, batch_size: int, n: int, seed: int) -> Iterator[Batch]:
        return self.train_subset_batches(calibration_indices(len(self.calib_set), batch_size, n, seed), batch_size)

    def _split_training(self, kept: torch.Tensor, held: torch.Tensor) -> None:
        self.held_set = Subset(self.calib_set, held.tolist())
        self.train_set = Subset(self.train_set, kept.tolist())
        self.calib_set = Subset(self.calib_set, kept.tolist())
        self._train = None  # a loader built before over the whole split

    def withheld_batches(self, batch_size: int) -> Iterator[Batch]:
        return self._to_device(self._loader(self.held_set, batch_size, False, shuffle=False))

    def train_subset_batches(self, indices: torch.Tensor, batch_size: int) -> Iterator[Batch]:
        loader = self._loader(Subset(self.calib_set, indices.tolist()), batch_size, False, shuffle=False)
        return self._to_device(loader)


class TensorImages(Dataset):
    """uint8 (N, 3, H, W) CPU images with a per-sample transform; labels as ints."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, transform: Callable):
        self.images, self.labels, self.transform = images, labels, transform

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int):
        return self.transform(self.images[index]), int(self.labels[index])


def tensor_transforms(tensors: ImageTensors, input_size: int, augment: bool) -> tuple[Callable, Callable]:
    """(train, eval) per-sample transforms equal in effect to TensorData's batched ones."""
    native = tensors.train_x.shape[-1]
    resize = [v2.Resize(input_size, antialias=True)] if native != input_size else []
    to_float = [v2.ToDtype(torch.float32, scale=True), v2.Normalize(tensors.mean, tensors.std)]
    eval_transform = v2.Compose(resize + to_float)
    if not augment:
        return eval_transform, eval_transform
    crop = [v2.RandomCrop(input_size, padding=crop_padding(input_size))]
    flip = [v2.RandomHorizontalFlip()] if tensors.flip else []
    return v2.Compose(resize + crop + flip + to_float), eval_transform


def data_from_tensors(
    name: str, tensors: ImageTensors, opts: DataOptions, default_in_memory: bool = True
) -> Data:
    """The data object of a tensor dataset: in-memory (default) or through a DataLoader."""
    tensors = tensors.limit_train(opts.train_limit)
    in_memory = default_in_memory if opts.in_memory is None else opts.in_memory
    if in_memory:
        return TensorData(name, tensors, opts)
    train_transform, eval_transform = tensor_transforms(tensors, opts.input_size, opts.augment)
    return LoaderData(
        name,
        tensors.num_classes,
        opts,
        TensorImages(tensors.train_x, tensors.train_y, train_transform),
        TensorImages(tensors.train_x, tensors.train_y, eval_transform),
        TensorImages(tensors.test_x, tensors.test_y, eval_transform),
    )
