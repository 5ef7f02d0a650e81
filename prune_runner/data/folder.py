"""Image folders: `imagenet` (root/train, root/val) and `imagefolder` (root/train, root/val or root/test).

Each split holds one sub-folder per class. Default path: torchvision ImageFolder through a
DataLoader. With in_memory=true the images are decoded once (resized and center-cropped to the
input size) into uint8 tensors and served like CIFAR (random crop with padding + flip).
"""

from __future__ import annotations

import copy
import os

import torch
from torch.utils.data import DataLoader, Subset
from torchvision.datasets import ImageFolder
from torchvision.datasets.folder import find_classes
from torchvision.transforms import v2

from ..errors import UserError
from .base import DATASETS, Data, DataOptions, folder_fingerprint
from .loader_data import LoaderData, data_from_tensors
from .tensor_data import ImageTensors

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def eval_resize(input_size: int) -> int:
    """Short side before the center crop: the usual 256 px for a 224 px input, scaled."""
    return int(input_size * 256 / 224)


def split_folders(name: str, root: str, eval_names: tuple[str, ...]) -> tuple[str, str]:
    layout = f"expected {root}/train/<class>/<image> and {root}/{' or '.join(eval_names)}/<class>/<image>"
    train_dir = os.path.join(root, "train")
    if not os.path.isdir(train_dir):
        raise UserError(f"{name} folder {train_dir} not found; {layout}")
    for eval_name in eval_names:
        eval_dir = os.path.join(root, eval_name)
        if os.path.isdir(eval_dir):
            return train_dir, eval_dir
    raise UserError(f"{name} folder {os.path.join(root, eval_names[0])} not found; {layout}")


class LabelledLikeTrain(ImageFolder):
    """An eval folder labelled with the train folder's class indices (a class may have no images)."""

    def __init__(self, root: str, class_to_idx: dict[str, int], transform):
        self._train_classes = dict(class_to_idx)
        super().__init__(root, transform=transform, allow_empty=True)

    def find_classes(self, directory: str) -> tuple[list[str], dict[str, int]]:
        own, _ = find_classes(directory)
        unknown = sorted(set(own) - set(self._train_classes))
        if unknown:
            names = ", ".join(unknown[:5])
            raise UserError(f"{directory} has classes missing from the train folder: {names}")
        return sorted(self._train_classes, key=self._train_classes.get), self._train_classes


def open_folders(
    name: str, train_dir: str, eval_dir: str, train_tf, eval_tf
) -> tuple[ImageFolder, ImageFolder]:
    try:
        train_set = ImageFolder(train_dir, transform=train_tf)
        eval_set = LabelledLikeTrain(eval_dir, train_set.class_to_idx, eval_tf)
    except FileNotFoundError as err:  # no class folders, or a class folder without images
        raise UserError(f"{name}: {' '.join(str(err).split())}") from None
    if len(eval_set) == 0:
        raise UserError(f"{name}: no images in {eval_dir}")
    return train_set, eval_set


def limited(dataset, train_limit: int | None):
    """At most `train_limit` samples, evenly spaced: ImageFolder lists class by class, so the
    first N would all be of the first classes."""
    if train_limit is None or train_limit >= len(dataset):
        return dataset
    return Subset(dataset, torch.linspace(0, len(dataset) - 1, train_limit).long().tolist())


def decode_all(dataset, workers: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Every image of a dataset yielding uint8 tensors, stacked (decoded in `workers` processes)."""
    images, labels = [], []
    for x, y in DataLoader(dataset, batch_size=256, num_workers=workers, shuffle=False):
        images.append(x)
        labels.append(y)
    return torch.cat(images), torch.cat(labels).long()


def build_folder(name: str, opts: DataOptions, eval_names: tuple[str, ...]) -> Data:
    train_dir, eval_dir = split_folders(name, os.path.expanduser(opts.root), eval_names)
    data = _build_folder(name, opts, train_dir, eval_dir)
    data.fingerprint = folder_fingerprint(train_dir, eval_dir)
    return data


def _build_folder(name: str, opts: DataOptions, train_dir: str, eval_dir: str) -> Data:
    size = opts.input_size
    center = [v2.ToImage(), v2.Resize(eval_resize(size), antialias=True), v2.CenterCrop(size)]
    to_float = [v2.ToDtype(torch.float32, scale=True), v2.Normalize(IMAGENET_MEAN, IMAGENET_STD)]
    if opts.in_memory:
        train_set, eval_set = open_folders(name, train_dir, eval_dir, v2.Compose(center), v2.Compose(center))
        train_x, train_y = decode_all(limited(train_set, opts.train_limit), opts.workers)
        test_x, test_y = decode_all(eval_set, opts.workers)
        tensors = ImageTensors(
            train_x, train_y, test_x, test_y, len(train_set.classes), IMAGENET_MEAN, IMAGENET_STD, flip=True
        )
        return data_from_tensors(name, tensors, opts)
    eval_tf = v2.Compose(center + to_float)
    random_crop = [v2.ToImage(), v2.RandomResizedCrop(size, antialias=True), v2.RandomHorizontalFlip()]
    train_tf = v2.Compose(random_crop + to_float) if opts.augment else eval_tf
    train_set, eval_set = open_folders(name, train_dir, eval_dir, train_tf, eval_tf)
    calib_set = copy.copy(train_set)  # shares the sample list; only the transform differs
    calib_set.transform = eval_tf
    return LoaderData(
        name,
        len(train_set.classes),
        opts,
        limited(train_set, opts.train_limit),
        limited(calib_set, opts.train_limit),
        eval_set,
    )


@DATASETS.register("imagenet")
def build_imagenet(opts: DataOptions) -> Data:
    return build_folder("imagenet", opts, ("val",))


@DATASETS.register("imagefolder")
def build_imagefolder(opts: DataOptions) -> Data:
    return build_folder("imagefolder", opts, ("val", "test"))
