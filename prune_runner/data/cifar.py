"""CIFAR-10 and CIFAR-100 from the official python-pickle archives.

The archive is fetched with torchvision's downloader (official URL and md5) when the extracted
folder is missing; the batches are read here into uint8 tensors (no torchvision dataset class).
"""

from __future__ import annotations

import functools
import os
import pickle
from dataclasses import dataclass

import numpy as np
import torch
from torchvision.datasets.utils import download_and_extract_archive

from ..errors import UserError
from .base import DATASETS, Data, DataOptions
from .loader_data import data_from_tensors
from .tensor_data import ImageTensors

SIDE = 32  # CIFAR images are 32x32 RGB, stored as 3072 bytes: 1024 red, 1024 green, 1024 blue


@dataclass(frozen=True)
class CifarSource:
    folder: str  # the folder the archive extracts to
    url: str
    md5: str
    train_files: tuple[str, ...]
    test_files: tuple[str, ...]
    label_key: str  # key of the labels in each pickled dict
    num_classes: int
    mean: tuple[float, float, float]  # per-channel stats of pixel/255 over the train split
    std: tuple[float, float, float]


CIFAR_SOURCES = {
    "cifar10": CifarSource(
        folder="cifar-10-batches-py",
        url="https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
        md5="c58f30108f718f92721af3b95e74349a",
        train_files=tuple(f"data_batch_{i}" for i in range(1, 6)),
        test_files=("test_batch",),
        label_key="labels",
        num_classes=10,
        mean=(0.4914, 0.4822, 0.4465),
        std=(0.2470, 0.2435, 0.2616),
    ),
    "cifar100": CifarSource(
        folder="cifar-100-python",
        url="https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz",
        md5="eb9058c3a382ffc7106e4002c42a8d85",
        train_files=("train",),
        test_files=("test",),
        label_key="fine_labels",
        num_classes=100,
        mean=(0.5071, 0.4865, 0.4409),
        std=(0.2673, 0.2564, 0.2762),
    ),
}


def one_line(err: BaseException) -> str:
    return " ".join(str(err).split()) or type(err).__name__


def ensure_extracted(name: str, source: CifarSource, root: str, download: bool) -> str:
    """Path of the extracted folder, downloading the archive into `root` first if allowed."""
    folder = os.path.join(root, source.folder)
    if os.path.isdir(folder):
        return folder
    if not download:
        raise UserError(
            f"{name} not found: {folder} does not exist and download is off; put the extracted "
            f"'{source.folder}' folder there, set dataset.root=..., or set dataset.download=true"
        )
    try:
        download_and_extract_archive(source.url, download_root=root, md5=source.md5)
    except (OSError, RuntimeError, ValueError) as err:  # URLError is an OSError; bad md5 a RuntimeError
        raise UserError(
            f"could not download {name} to {root} ({one_line(err)}); put the extracted "
            f"'{source.folder}' folder there, set dataset.root=..., or use dataset=digits"
        ) from None
    if not os.path.isdir(folder):
        raise UserError(f"the {name} archive extracted into {root} holds no '{source.folder}' folder")
    return folder


def read_batches(folder: str, files: tuple[str, ...], label_key: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Concatenate pickled batches ({b'data': uint8 (N, 3072), label_key: list}) into tensors."""
    images, labels = [], []
    for file in files:
        path = os.path.join(folder, file)
        try:
            with open(path, "rb") as handle:
                batch = pickle.load(handle, encoding="bytes")
            data = batch[b"data"] if b"data" in batch else batch["data"]
            key = label_key.encode()
            batch_labels = batch[key] if key in batch else batch[label_key]
        except (OSError, pickle.UnpicklingError, KeyError, EOFError) as err:
            reason = one_line(err)
            raise UserError(f"cannot read CIFAR batch {path} ({reason}); re-extract the archive") from None
        images.append(np.asarray(data, dtype=np.uint8).reshape(-1, 3, SIDE, SIDE))
        labels.append(np.asarray(batch_labels, dtype=np.int64))
    return torch.from_numpy(np.concatenate(images)), torch.from_numpy(np.concatenate(labels))


def load_cifar_tensors(name: str, root: str, download: bool) -> ImageTensors:
    source = CIFAR_SOURCES[name]
    folder = ensure_extracted(name, source, os.path.expanduser(root), download)
    train_x, train_y = read_batches(folder, source.train_files, source.label_key)
    test_x, test_y = read_batches(folder, source.test_files, source.label_key)
    return ImageTensors(
        train_x, train_y, test_x, test_y, source.num_classes, source.mean, source.std, flip=True
    )


def build_cifar(name: str, opts: DataOptions) -> Data:
    return data_from_tensors(name, load_cifar_tensors(name, opts.root, opts.download), opts)


for _name in CIFAR_SOURCES:
    DATASETS.add(_name, functools.partial(build_cifar, _name))
