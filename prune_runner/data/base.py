"""What every dataset offers the pipeline (`Data`), the options a builder gets, and shared helpers.

Two implementations: `TensorData` (whole split as uint8 on the device, batched augmentation) and
`LoaderData` (torch DataLoader with worker processes and per-sample transforms).
"""

from __future__ import annotations

import hashlib
import os
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch

from ..errors import UserError
from ..registry import Registry

Batch = tuple[torch.Tensor, torch.Tensor]  # (x float32 NCHW normalized, y int64), both on the device


@dataclass(frozen=True)
class DataOptions:
    """The arguments of `build_data`, handed unchanged to a dataset builder."""

    name: str
    root: str
    input_size: int  # square side in pixels of every batch image
    device: torch.device
    download: bool
    in_memory: bool | None  # None: the builder's default (tensors for small sets, DataLoader for folders)
    augment: bool
    workers: int  # DataLoader worker processes (DataLoader path only)
    rank: int
    world_size: int
    train_limit: int | None  # keep only the first N training samples
    holdout: float | None = None  # fraction of the training split withheld from training (Data.withhold)


# A builder turns options into a ready `Data`; registered by name in the dataset modules.
DATASETS: Registry[Callable[[DataOptions], Data]] = Registry("dataset")


class Data(ABC):
    """A train and a test split at one input size, yielding device batches.

    `batch_size` in `train_batches` is per rank: with world_size ranks one optimizer step sees
    world_size * batch_size samples.
    """

    # what the stage cache hashes for "the same data": content digests or a folder listing, never a path
    fingerprint: str = "unknown"

    def __init__(self, name: str, num_classes: int, opts: DataOptions, num_train: int, num_test: int):
        self.name = name
        self.num_classes = num_classes
        self.input_size = opts.input_size
        self.device = opts.device
        self.augment = opts.augment
        self.rank, self.world_size = opts.rank, opts.world_size
        self.num_train, self.num_test = num_train, num_test  # sizes of the whole splits (all ranks)
        self.num_withheld = 0  # training images withheld from training (withhold), scored by withheld_batches

    def steps_per_epoch(self, batch_size: int) -> int:
        """Full batches each rank gets per epoch (the last partial batch is dropped)."""
        per_rank = self.num_train // self.world_size
        steps = per_rank // batch_size
        if steps == 0:
            raise UserError(
                f"batch size {batch_size} is larger than the {per_rank} training samples per rank of "
                f"'{self.name}'; lower the batch size or raise the training-sample limit"
            )
        return steps

    @abstractmethod
    def train_batches(self, batch_size: int, epoch: int, seed: int) -> Iterator[Batch]:
        """One epoch of shuffled (and, if enabled, augmented) batches of this rank's shard."""

    @abstractmethod
    def eval_batches(self, batch_size: int) -> Iterator[Batch]:
        """The whole test split in order, no augmentation, last partial batch kept (on every rank)."""

    @abstractmethod
    def calib_batches(self, batch_size: int, n: int, seed: int) -> Iterator[Batch]:
        """`n` fixed training batches without augmentation, the same on every rank."""

    @abstractmethod
    def train_subset_batches(self, indices: torch.Tensor, batch_size: int) -> Iterator[Batch]:
        """The training images at positions `indices` (CPU int64), in that order, without augmentation."""

    def holdout_indices(self, fraction: float) -> torch.Tensor:
        """Positions in the TRAINING split of its holdout (prune.search.holdout): a fixed `fraction` of it, drawn
        with HOLDOUT_SEED, so the same images for every run seed, stage and rank. The test split is never drawn."""
        size = max(1, round(fraction * self.num_train))
        order = torch.randperm(self.num_train, generator=torch.Generator().manual_seed(HOLDOUT_SEED))
        return order[:size].sort().values

    def holdout_batches(self, batch_size: int, fraction: float) -> Iterator[Batch]:
        """The holdout in order, without augmentation: what ranks the candidates of prune.allocation=search."""
        return self.train_subset_batches(self.holdout_indices(fraction), batch_size)

    def withhold(self, fraction: float) -> None:
        """Take the holdout of `fraction` (holdout_indices: fixed images, whatever the seed) out of the training
        split (dataset.holdout). From then on the training split is the rest: every training, calibration and
        BatchNorm batch, and prune.search's own holdout, come from it, and `withheld_batches` yields the images
        no stage trained on, which score a search's trials without reading the test split."""
        held = self.holdout_indices(fraction)
        kept = torch.ones(self.num_train, dtype=torch.bool)
        kept[held] = False
        self._split_training(kept.nonzero().flatten(), held)
        self.num_train, self.num_withheld = int(kept.sum()), len(held)
        # other training data: every stage's hash changes, so a trial's stages and a plain run's are never swapped
        self.fingerprint = f"{self.fingerprint}+holdout={fraction:g}"

    @abstractmethod
    def _split_training(self, kept: torch.Tensor, held: torch.Tensor) -> None:
        """Keep the training images at positions `kept` (CPU int64) as the training split, and those at `held`
        apart for withheld_batches."""

    @abstractmethod
    def withheld_batches(self, batch_size: int) -> Iterator[Batch]:
        """The withheld images (withhold) in order, without augmentation; none when nothing is withheld."""

    def example_input(self, batch: int = 1) -> torch.Tensor:
        return torch.zeros(batch, 3, self.input_size, self.input_size, device=self.device)

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(name={self.name!r}, num_classes={self.num_classes}, "
            f"input_size={self.input_size}, train={self.num_train}, test={self.num_test})"
        )


HOLDOUT_SEED = 1  # fixes which training images form the holdout, independent of the run seed
STREAMS_PER_SEED = 7919  # a prime above the number of data streams one run draws (one per stage, and one more)
EPOCH_STRIDE = 1_000_003  # a prime above any epoch count


def stream_seed(seed: int, stream: int) -> int:
    """The data seed of stream `stream` (< STREAMS_PER_SEED) of a run of seed `seed`: each stage trains on
    its own stream, so no two stages of a run see the same shuffles, and each seed has its own streams."""
    return seed * STREAMS_PER_SEED + stream


def epoch_generator(seed: int, epoch: int) -> torch.Generator:
    """CPU generator for one (data seed, epoch): the same pair always gives the same stream.

    The CPU generator (mt19937) keeps only the low 32 bits of its seed, and gets
    (seed * EPOCH_STRIDE + epoch) mod 2^32. For a data seed from `stream_seed`, that is
    run seed * (STREAMS_PER_SEED * EPOCH_STRIDE) + stream * EPOCH_STRIDE + epoch, and the product of the two
    primes is odd, so multiplying by it permutes the 32-bit numbers: at a given stream and epoch, every run
    seed in [0, 2^32) (all that validate allows) draws its own stream. Within one run, the streams and epochs
    give distinct values (stream * EPOCH_STRIDE + epoch < 2^32). CPU so that the stream is identical
    whichever device the batches go to.
    """
    generator = torch.Generator(device="cpu")
    generator.manual_seed((seed * EPOCH_STRIDE + epoch) % 2**32)
    return generator


def rank_shard(order: torch.Tensor, rank: int, world_size: int) -> torch.Tensor:
    """This rank's positions of a global order: strided (like DistributedSampler), equal lengths."""
    per_rank = order.numel() // world_size
    return order[rank : per_rank * world_size : world_size]


def calibration_indices(num_train: int, batch_size: int, n: int, seed: int) -> torch.Tensor:
    """n * batch_size training indices from a seeded shuffle (repeated shuffles if the set is smaller)."""
    generator = torch.Generator(device="cpu")
    generator.manual_seed(seed)
    wanted = n * batch_size
    chunks, have = [], 0
    while have < wanted:
        chunks.append(torch.randperm(num_train, generator=generator))
        have += num_train
    return torch.cat(chunks)[:wanted]


def check_options(opts: DataOptions) -> None:
    """Bad values from the config, reported as one-line UserErrors."""
    if opts.input_size < 1:
        raise UserError(f"input size {opts.input_size} must be a positive number of pixels")
    if opts.world_size < 1 or not 0 <= opts.rank < opts.world_size:
        raise UserError(f"rank {opts.rank} is outside world size {opts.world_size}")
    if opts.train_limit is not None and opts.train_limit < 1:
        raise UserError(f"train_limit {opts.train_limit} must be a positive sample count or null")
    if opts.workers < 0:
        raise UserError(f"workers {opts.workers} must be 0 or more")
    if opts.holdout is not None and not 0 < opts.holdout < 1:
        raise UserError(f"dataset.holdout={opts.holdout} is invalid; it is a fraction of the training split, in "
                        "(0, 1), or null (nothing withheld)")


def tensors_fingerprint(*tensors: torch.Tensor) -> str:
    """SHA-256 of the tensors' bytes (small in-memory sets)."""
    digest = hashlib.sha256()
    for t in tensors:
        digest.update(t.contiguous().cpu().numpy().tobytes())
    return digest.hexdigest()[:16]


def folder_fingerprint(*folders: str) -> str:
    """SHA-256 over every file's relative path, size and modification time (no file is read):
    another folder, a file moved to another class, or a replaced image changes it."""
    digest = hashlib.sha256()
    for folder in folders:
        for parent, dirs, files in os.walk(folder):
            dirs.sort()
            for name in sorted(files):
                st = os.stat(os.path.join(parent, name))
                rel = os.path.relpath(os.path.join(parent, name), folder)
                digest.update(f"{os.path.basename(folder)}/{rel}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return digest.hexdigest()[:16]
