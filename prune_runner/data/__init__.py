"""Dataset registry: `build_data(name, ...)` is the one way to get training and test batches.

Small sets (digits, cifar10, cifar100) live as uint8 tensors on the device and are augmented in
batches there (`TensorData`); image folders (imagenet, imagefolder) go through a DataLoader with
worker processes (`LoaderData`). `in_memory` overrides that choice.
"""

from __future__ import annotations

import torch

from . import cifar, digits, folder  # noqa: F401  (imported for their registrations)
from .base import DATASETS, Data, DataOptions, check_options

__all__ = ["DATASETS", "Data", "build_data", "list_datasets"]


def list_datasets() -> list[str]:
    return DATASETS.names()


def build_data(
    name: str,
    *,
    root: str,
    input_size: int,
    device: torch.device | str,
    download: bool = True,
    in_memory: bool | None = None,
    augment: bool = True,
    workers: int = 4,
    rank: int = 0,
    world_size: int = 1,
    train_limit: int | None = None,
    holdout: float | None = None,
) -> Data:
    """Build dataset `name` (see `list_datasets()`); raises UnknownChoiceError for an unknown name.

    in_memory: None picks per dataset (tensors on the device for digits/cifar, DataLoader for folders).
    train_limit: keep only the first N training samples (tests and smoke runs).
    holdout: withhold this fraction of the (limited) training split from training (`Data.withhold`).
    """
    builder = DATASETS.get(name)
    opts = DataOptions(
        name=name,
        root=str(root),
        input_size=int(input_size),
        device=torch.device(device),
        download=bool(download),
        in_memory=in_memory,
        augment=bool(augment),
        workers=int(workers),
        rank=int(rank),
        world_size=int(world_size),
        train_limit=None if train_limit is None else int(train_limit),
        holdout=None if holdout is None else float(holdout),
    )
    check_options(opts)
    data = builder(opts)
    if opts.holdout is not None:
        data.withhold(opts.holdout)
    return data
