"""scikit-learn's bundled 8x8 handwritten digits: 1797 images, 10 classes, no download.

A quick real dataset for smoke runs and tests. The train/test split is fixed (stratified 80/20
with its own seed), independent of the run seed, so accuracies are comparable across runs.
"""

from __future__ import annotations

import functools

import numpy as np
import torch

from .base import DATASETS, Data, DataOptions, tensors_fingerprint
from .loader_data import data_from_tensors
from .tensor_data import ImageTensors, channel_stats

SPLIT_SEED = 0  # fixes the train/test split for every run
TEST_FRACTION = 0.2
MAX_PIXEL = 16.0  # load_digits pixel values are 0..16


@functools.lru_cache(maxsize=1)
def load_digits_tensors() -> ImageTensors:
    """The split as 3-channel uint8 8x8 images (gray replicated); stats from the train split.

    Cached: the result is never modified (builders copy or slice it), and smoke runs build often.
    """
    from sklearn.datasets import load_digits  # imported here: sklearn is slow to import
    from sklearn.model_selection import train_test_split

    bunch = load_digits()
    pixels = np.rint(bunch.images * (255.0 / MAX_PIXEL)).astype(np.uint8)  # (N, 8, 8)
    images = torch.from_numpy(pixels).unsqueeze(1).expand(-1, 3, -1, -1).contiguous()
    labels = torch.from_numpy(bunch.target.astype(np.int64))
    train_index, test_index = train_test_split(
        np.arange(len(labels)), test_size=TEST_FRACTION, stratify=bunch.target, random_state=SPLIT_SEED
    )
    train_index, test_index = torch.from_numpy(train_index), torch.from_numpy(test_index)
    mean, std = channel_stats(images[train_index])
    return ImageTensors(
        train_x=images[train_index],
        train_y=labels[train_index],
        test_x=images[test_index],
        test_y=labels[test_index],
        num_classes=10,
        mean=mean,
        std=std,
        flip=False,  # a mirrored 2 or 7 is not a digit
    )


@DATASETS.register("digits")
def build_digits(opts: DataOptions) -> Data:
    tensors = load_digits_tensors()
    data = data_from_tensors("digits", tensors, opts)
    data.fingerprint = tensors_fingerprint(tensors.train_x, tensors.train_y, tensors.test_x, tensors.test_y)
    return data
