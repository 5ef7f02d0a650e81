"""CIFAR-10 and CIFAR-100 from the official python-pickle archives.

The archive is fetched with torchvision's downloader (official URL and md5) when the extracted
folder is missing. A batch file is a pickle, and unpickling a planted file can run code, so
each file must first match its published MD5 (torchvision's table), and is then read by an
unpickler that builds only the types the format holds (dicts, lists, bytes, str, ints and numpy
uint8 arrays); anything else is refused with one line.
"""

from __future__ import annotations

import functools
import hashlib
import io
import os
import pickle
from dataclasses import dataclass

import numpy as np
import torch
import torchvision.datasets
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


def published_md5s() -> dict[str, str]:
    """file name -> MD5 of the official CIFAR-10/100 batch files, from torchvision's dataset classes."""
    table = {}
    for cls in (torchvision.datasets.CIFAR10, torchvision.datasets.CIFAR100):
        for file, md5 in cls.train_list + cls.test_list:
            table[f"{cls.base_folder}/{file}"] = md5
    return table


# the only globals a CIFAR batch pickle needs: numpy's array reconstruction (numpy 1.x and 2.x names)
_ALLOWED_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
    ("numpy", "ndarray"), ("numpy", "dtype"),
    ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
}


class BatchUnpickler(pickle.Unpickler):
    """Builds plain containers and numpy arrays; any other global (os.system, eval, ...) is refused."""

    def find_class(self, module: str, name: str):
        if (module, name) in _ALLOWED_GLOBALS:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refused to load global '{module}.{name}' (not part of the CIFAR format)")


def read_batch_file(path: str, folder_name: str) -> dict:
    """One batch, checked against its published MD5, then restricted-unpickled."""
    with open(path, "rb") as handle:
        raw = handle.read()
    expected = published_md5s().get(f"{folder_name}/{os.path.basename(path)}")
    actual = hashlib.md5(raw).hexdigest()
    if expected is not None and actual != expected:
        raise UserError(f"CIFAR batch {path} has MD5 {actual}, not the published {expected}; it was changed or "
                        "is incomplete: delete the folder and download again")
    return BatchUnpickler(io.BytesIO(raw), encoding="bytes").load()


def read_batches(folder: str, files: tuple[str, ...], label_key: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Concatenate pickled batches ({b'data': uint8 (N, 3072), label_key: list}) into tensors."""
    images, labels = [], []
    for file in files:
        path = os.path.join(folder, file)
        try:
            batch = read_batch_file(path, os.path.basename(folder))
            data = batch[b"data"] if b"data" in batch else batch["data"]
            key = label_key.encode()
            batch_labels = batch[key] if key in batch else batch[label_key]
        except (OSError, pickle.UnpicklingError, KeyError, EOFError, ValueError, TypeError, AttributeError) as err:
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
    data = data_from_tensors(name, load_cifar_tensors(name, opts.root, opts.download), opts)
    data.fingerprint = cifar_fingerprint(name, opts.root)
    return data


def cifar_fingerprint(name: str, root: str) -> str:
    """SHA-256 over the MD5s of the batch files (already checked, or our own test files)."""
    source = CIFAR_SOURCES[name]
    folder = os.path.join(os.path.expanduser(root), source.folder)
    digest = hashlib.sha256()
    for file in source.train_files + source.test_files:
        with open(os.path.join(folder, file), "rb") as handle:
            digest.update(f"{file}:{hashlib.md5(handle.read()).hexdigest()}\n".encode())
    return digest.hexdigest()[:16]


for _name in CIFAR_SOURCES:
    DATASETS.add(_name, functools.partial(build_cifar, _name))
