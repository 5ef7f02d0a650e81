"""Dataset registry: digits, CIFAR from a fake extracted folder, image folders, sharding, errors."""

from __future__ import annotations

import hashlib
import pickle
import urllib.error

import numpy as np
import pytest
import torch
from PIL import Image

from prune_runner.data import DATASETS, Data, build_data, list_datasets
from prune_runner.data import cifar as cifar_module
from prune_runner.data.base import EPOCH_STRIDE, STREAMS_PER_SEED, DataOptions, epoch_generator, stream_seed
from prune_runner.data.digits import load_digits_tensors
from prune_runner.data.tensor_data import ImageTensors, TensorData, resize_images
from prune_runner.errors import UnknownChoiceError, UserError

CPU = torch.device("cpu")


def digits(**kwargs) -> Data:
    return build_data("digits", **{"root": "unused", "input_size": 16, "device": CPU, "workers": 0, **kwargs})


def epoch_of(data: Data, batch_size: int, epoch: int, seed: int):
    batches = list(data.train_batches(batch_size, epoch, seed))
    return torch.cat([x for x, _ in batches]), torch.cat([y for _, y in batches])


def numbered_tensors(n: int, flip: bool = True) -> ImageTensors:
    """Images whose label is their own index, so a batch's labels say which samples it holds."""
    images = torch.arange(n * 3 * 8 * 8).reshape(n, 3, 8, 8).remainder(251).to(torch.uint8)
    labels = torch.arange(n)
    return ImageTensors(images, labels, images[:4], labels[:4], n, (0.5,) * 3, (0.25,) * 3, flip)


def options(**kwargs) -> DataOptions:
    defaults = {"name": "numbered", "root": "", "input_size": 8, "device": CPU, "download": False}
    defaults.update(in_memory=True, augment=False, workers=0, rank=0, world_size=1, train_limit=None)
    return DataOptions(**{**defaults, **kwargs})


def test_registry_names_and_unknown_name():
    assert list_datasets() == ["cifar10", "cifar100", "digits", "imagefolder", "imagenet"]
    assert list(DATASETS) == list_datasets()
    with pytest.raises(UnknownChoiceError, match="unknown dataset 'mnist'.*cifar10, cifar100, digits"):
        build_data("mnist", root=".", input_size=32, device=CPU)


def test_bad_options_are_user_errors():
    with pytest.raises(UserError, match="rank 2 is outside world size 2"):
        digits(rank=2, world_size=2)
    with pytest.raises(UserError, match="train_limit 0"):
        digits(train_limit=0)


def test_digits_shapes_split_and_eval_order():
    data, again = digits(), digits()
    assert (data.num_classes, data.input_size, data.name) == (10, 16, "digits")
    assert (data.num_train, data.num_test) == (1437, 360)  # stratified 80/20 of 1797
    assert torch.equal(data.test_y, again.test_y) and torch.equal(data.train_y, again.train_y)
    fresh = load_digits_tensors.__wrapped__()  # the split itself, not the cached copy
    assert torch.equal(fresh.train_y, data.train_y) and torch.equal(fresh.test_y, data.test_y)
    assert torch.equal(resize_images(fresh.train_x, 16, CPU), again.train_x)
    assert torch.bincount(data.test_y).min() >= 35  # stratified: every digit ~36 times in the test split

    x, y = next(iter(data.train_batches(32, epoch=0, seed=0)))
    assert x.shape == (32, 3, 16, 16) and x.dtype == torch.float32 and x.device == CPU
    assert y.shape == (32,) and y.dtype == torch.int64
    assert torch.equal(x[:, 0], x[:, 1])  # gray replicated to 3 channels
    assert data.steps_per_epoch(100) == 14 == len(list(data.train_batches(100, 0, 0)))

    sizes = [len(y) for _, y in data.eval_batches(100)]
    assert sizes == [100, 100, 100, 60]  # last partial batch kept
    assert torch.equal(torch.cat([y for _, y in data.eval_batches(100)]), data.test_y)
    example = data.example_input(2)
    assert example.shape == (2, 3, 16, 16) and not example.any()


def test_digits_normalized_with_train_stats():
    data = digits(augment=False)
    x, _ = epoch_of(data, 100, 0, 0)
    # stats come from the 8x8 originals; bilinear upscaling smooths, so the std ends a bit below 1
    assert abs(x.mean().item()) < 0.1 and 0.7 < x.std().item() < 1.1


def test_train_batches_reproducible_per_seed_and_epoch():
    first, second = digits(train_limit=400), digits(train_limit=400)
    x0, y0 = epoch_of(first, 64, epoch=3, seed=7)
    x1, y1 = epoch_of(second, 64, epoch=3, seed=7)
    assert torch.equal(x0, x1) and torch.equal(y0, y1)  # bit-exact, including augmentation
    x2, y2 = epoch_of(first, 64, epoch=4, seed=7)
    assert not torch.equal(y0, y2) and not torch.equal(x0, x2)
    _, y3 = epoch_of(first, 64, epoch=3, seed=8)
    assert not torch.equal(y0, y3)


def test_every_seed_draws_its_own_stream_and_every_stage_its_own():
    """Generator seeds: distinct across run seeds at one stream and epoch (all 2^32 seeds, not only small
    ones), and across the streams and epochs of one run."""
    def generator_seed(seed, stream, epoch):
        return epoch_generator(stream_seed(seed, stream), epoch).initial_seed()

    assert (STREAMS_PER_SEED * EPOCH_STRIDE) % 2 == 1  # odd: seed -> seed * it mod 2^32 is a permutation
    sampled = torch.randint(0, 2**32, (2000,), generator=torch.Generator().manual_seed(0)).tolist()
    seeds = [0, 1, 4293, 4294, 4295, 2**31, 2**32 - 1, *sampled]
    for stream, epoch in [(0, 0), (1, 7), (5, 999)]:
        drawn = {generator_seed(s, stream, epoch) for s in set(seeds)}
        assert len(drawn) == len(set(seeds))
    for seed in (0, 4294, 2**32 - 1):
        drawn = {generator_seed(seed, stream, epoch) for stream in range(6) for epoch in range(300)}
        assert len(drawn) == 6 * 300


def test_augmentation_changes_images_keeps_labels():
    plain_x, plain_y = epoch_of(digits(augment=False, train_limit=400), 64, epoch=1, seed=0)
    aug_x, aug_y = epoch_of(digits(augment=True, train_limit=400), 64, epoch=1, seed=0)
    assert torch.equal(plain_y, aug_y)  # same order: augmentation draws come after the permutation
    changed = (plain_x != aug_x).flatten(1).any(1).float().mean().item()
    assert changed > 0.5  # most samples shifted (one in 81 gets the zero offset pair at 16 px)
    assert not digits().flip  # mirrored digits are other symbols


def test_crop_and_flip_gather():
    data = TensorData("numbered", numbered_tensors(3), options())
    images = data.train_x[:3]
    pad = data.padding
    centered = torch.full((2, 3), pad)
    assert torch.equal(data.crop_and_flip(images, centered, None), images)
    flipped = data.crop_and_flip(images, centered, torch.tensor([True, False, True]))
    assert torch.equal(flipped[0], images[0].flip(-1)) and torch.equal(flipped[1], images[1])
    corner = data.crop_and_flip(images, torch.zeros(2, 3, dtype=torch.long), None)
    assert not corner[:, :, :pad].any() and not corner[:, :, :, :pad].any()  # zero padding on top and left
    assert torch.equal(corner[:, :, pad:, pad:], images[:, :, : 8 - pad, : 8 - pad])


@pytest.mark.parametrize("in_memory", [True, False])
def test_ddp_shards_disjoint_equal_length(in_memory):
    from prune_runner.data.loader_data import data_from_tensors

    def shard(rank):
        opts = options(rank=rank, world_size=2, in_memory=in_memory)
        data = data_from_tensors("numbered", numbered_tensors(50), opts)
        assert data.steps_per_epoch(4) == 6  # 25 per rank, full batches of 4
        return epoch_of(data, 4, epoch=2, seed=1)[1]  # labels are sample indices

    rank0, rank1 = shard(0), shard(1)
    assert len(rank0) == len(rank1) == 24
    assert not set(rank0.tolist()) & set(rank1.tolist())


def test_calib_batches_fixed_and_unaugmented():
    data = digits()
    first = list(data.calib_batches(16, n=3, seed=5))
    second = list(data.calib_batches(16, n=3, seed=5))
    assert len(first) == 3 and all(x.shape == (16, 3, 16, 16) for x, _ in first)
    assert all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(first, second))
    plain = digits(augment=False)
    x_plain = torch.cat([x for x, _ in plain.calib_batches(16, n=3, seed=5)])
    assert torch.equal(torch.cat([x for x, _ in first]), x_plain)  # augment flag does not touch calibration


def test_digits_through_dataloader_path():
    data = digits(in_memory=False, train_limit=100)
    x, y = next(iter(data.train_batches(20, 0, 0)))
    assert x.shape == (20, 3, 16, 16) and x.dtype == torch.float32 and y.dtype == torch.int64
    assert data.steps_per_epoch(20) == 5 == len(list(data.train_batches(20, 1, 0)))
    assert sum(len(y) for _, y in data.eval_batches(128)) == 360


def write_fake_cifar10(root, train_per_batch=4, test=6) -> tuple[np.ndarray, list[int]]:
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    first = None
    for name, count in [(f"data_batch_{i}", train_per_batch) for i in range(1, 6)] + [("test_batch", test)]:
        data = rng.integers(0, 256, size=(count, 3072), dtype=np.uint8)
        labels = rng.integers(0, 10, size=count).tolist()
        with open(folder / name, "wb") as handle:
            pickle.dump({b"batch_label": name.encode(), b"data": data, b"labels": labels}, handle)
        first = first or (data, labels)
    return first


def trust_fake_cifar(monkeypatch, folder) -> None:
    """Accept the test's own batch files as if their MD5s were the published ones."""
    md5s = {f"{folder.name}/{f.name}": hashlib.md5(f.read_bytes()).hexdigest() for f in folder.iterdir()}
    monkeypatch.setattr(cifar_module, "published_md5s", lambda: md5s)


def test_cifar10_from_extracted_folder(tmp_path, monkeypatch):
    data0, labels0 = write_fake_cifar10(tmp_path)
    trust_fake_cifar(monkeypatch, tmp_path / "cifar-10-batches-py")
    data = build_data("cifar10", root=str(tmp_path), input_size=32, device=CPU, download=False, augment=False)
    assert (data.num_classes, data.num_train, data.num_test) == (10, 20, 6)
    assert torch.equal(data.train_x[0], torch.from_numpy(data0[0].reshape(3, 32, 32)))  # R, G, B planes
    assert data.train_y[:4].tolist() == labels0
    x, _ = next(iter(data.eval_batches(4)))
    mean = torch.tensor((0.4914, 0.4822, 0.4465)).view(1, 3, 1, 1)
    std = torch.tensor((0.2470, 0.2435, 0.2616)).view(1, 3, 1, 1)
    restored = ((x * std + mean) * 255).round().to(torch.uint8)
    assert torch.equal(restored, data.test_x[:4])

    upscaled = build_data("cifar10", root=str(tmp_path), input_size=40, device=CPU, download=False)
    assert upscaled.flip and upscaled.padding == 5
    x, y = next(iter(upscaled.train_batches(8, 0, 0)))
    assert x.shape == (8, 3, 40, 40) and y.shape == (8,)


def test_cifar_missing_folder_without_download(tmp_path):
    with pytest.raises(UserError, match="cifar-100-python does not exist"):
        build_data("cifar100", root=str(tmp_path), input_size=32, device=CPU, download=False)


OFFLINE_ERRORS = [urllib.error.URLError("no route to host"), OSError("Network\nunreachable")]


@pytest.mark.parametrize("error", OFFLINE_ERRORS)
def test_cifar_offline_download_is_one_line_hint(tmp_path, monkeypatch, error):
    def offline(*args, **kwargs):
        raise error

    monkeypatch.setattr(cifar_module, "download_and_extract_archive", offline)
    with pytest.raises(UserError) as info:
        build_data("cifar10", root=str(tmp_path), input_size=32, device=CPU, download=True)
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith(f"could not download cifar10 to {tmp_path} (")
    assert "'cifar-10-batches-py'" in message and "dataset.root=" in message and "dataset=digits" in message


def write_image_folder(root, split_counts: dict[str, int]) -> None:
    rng = np.random.default_rng(0)
    for split, count in split_counts.items():
        for label in ("cat", "dog"):
            (root / split / label).mkdir(parents=True)
            for i in range(count):
                pixels = rng.integers(0, 256, size=(40, 40, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(root / split / label / f"{i}.png")


@pytest.mark.parametrize("in_memory", [False, True])
def test_imagefolder_batches(tmp_path, in_memory):
    write_image_folder(tmp_path, {"train": 4, "test": 2})
    data = build_data(
        "imagefolder", root=str(tmp_path), input_size=32, device=CPU, workers=0, in_memory=in_memory
    )
    assert (data.num_classes, data.num_train, data.num_test) == (2, 8, 4)
    batches = list(data.train_batches(4, epoch=0, seed=0))
    assert len(batches) == data.steps_per_epoch(4) == 2
    x, y = batches[0]
    assert x.shape == (4, 3, 32, 32) and x.dtype == torch.float32 and y.dtype == torch.int64
    labels = torch.cat([y for _, y in data.eval_batches(3)])
    assert labels.tolist() == [0, 0, 1, 1]
    calib = list(data.calib_batches(2, n=2, seed=0))
    assert len(calib) == 2 and calib[0][0].shape == (2, 3, 32, 32)


def test_imagefolder_train_limit_and_missing_layout(tmp_path):
    write_image_folder(tmp_path, {"train": 4, "val": 1})
    data = build_data("imagefolder", root=str(tmp_path), input_size=32, device=CPU, workers=0, train_limit=2)
    assert data.num_train == 2  # evenly spaced over the class-sorted samples: one of each class
    assert sorted(torch.cat([y for _, y in data.train_batches(2, 0, 0)]).tolist()) == [0, 1]
    write_image_folder(tmp_path / "no_val", {"train": 1, "test": 1})
    with pytest.raises(UserError, match=r"imagenet folder .*no_val/val not found; expected .*/train/<class>"):
        build_data("imagenet", root=str(tmp_path / "no_val"), input_size=32, device=CPU)
    with pytest.raises(UserError, match="nowhere/train not found"):
        build_data("imagefolder", root=str(tmp_path / "nowhere"), input_size=32, device=CPU)
