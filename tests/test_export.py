"""Export: TorchScript and ONNX round trips, atomic writes, errors for unknown formats / missing deps."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from prune_runner.errors import UnknownChoiceError, UserError
from prune_runner.export import ONNX_HINT, ExportMismatchError, check_export, export_model, validate_formats
from prune_runner.models import build_model


def tiny_cifar_net(num_classes: int = 10) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1, bias=False),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.Conv2d(8, 16, 3, stride=2, padding=1, bias=False),
        nn.BatchNorm2d(16),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(16, num_classes),
    )


@pytest.fixture
def model() -> nn.Module:
    net = tiny_cifar_net()
    with torch.no_grad():  # non-trivial BatchNorm statistics, so eval vs train mode would differ
        for module in net.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.running_mean.uniform_(-0.5, 0.5)
                module.running_var.uniform_(0.5, 2.0)
    return net.train()


def test_torchscript_round_trip(model: nn.Module, tmp_path: Path):
    x = torch.randn(2, 3, 32, 32)
    paths = export_model(model, x, ["torchscript"], tmp_path / "export")
    assert paths == {"torchscript": tmp_path / "export" / "model.pt"}
    assert model.training  # the caller's mode is restored
    assert check_export(paths["torchscript"], model, x, atol=1e-5) <= 1e-5
    assert sorted(p.name for p in (tmp_path / "export").iterdir()) == ["model.pt"]  # no temp files left


def test_check_export_detects_a_changed_model(model: nn.Module, tmp_path: Path):
    x = torch.randn(2, 3, 32, 32)
    path = export_model(model, x, ["torchscript"], tmp_path)["torchscript"]
    with torch.no_grad():
        model[-1].bias.add_(1.0)
    with pytest.raises(ExportMismatchError, match="exceeds atol"):
        check_export(path, model, x)


def test_unknown_format_is_rejected_before_writing(model: nn.Module, tmp_path: Path):
    with pytest.raises(UnknownChoiceError, match="tflite.*onnx, torchscript"):
        export_model(model, torch.randn(1, 3, 32, 32), ["torchscript", "tflite"], tmp_path / "out")
    assert not (tmp_path / "out").exists()
    with pytest.raises(UnknownChoiceError):
        validate_formats(["tflite"])


@pytest.mark.parametrize("missing", ["onnx", "onnxscript"])
def test_onnx_without_a_package_names_it_and_the_extra(model: nn.Module, tmp_path: Path, monkeypatch, missing):
    monkeypatch.setitem(sys.modules, missing, None)  # makes `import <missing>` raise ImportError
    message = (rf"^export=onnx needs the optional dependency {missing}, which is not installed: "
               r"pip install 'prune-runner\[export\]'$")
    with pytest.raises(UserError, match=message):
        export_model(model, torch.randn(1, 3, 32, 32), ["onnx"], tmp_path)
    with pytest.raises(UserError, match=message):
        validate_formats(["onnx"])
    assert not list(tmp_path.iterdir())


def test_checking_onnx_without_onnxruntime_names_it(tmp_path: Path, monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    with pytest.raises(UserError, match=r"^checking an onnx export needs the optional dependency onnxruntime, "
                                        r"which is not installed: pip install 'prune-runner\[export\]'$"):
        check_export(tmp_path / "model.onnx", tiny_cifar_net(), torch.randn(1, 3, 32, 32))


def test_the_extra_the_message_names_brings_every_package_onnx_needs():
    """The hint must be true: the `export` extra installs what writing (onnx, onnxscript) and checking
    (onnxruntime) an .onnx file import."""
    pyproject = (Path(__file__).resolve().parents[1] / "pyproject.toml").read_text()
    extra = re.search(r"^export = \[(.*?)\]", pyproject, re.MULTILINE)  # tomllib: Python 3.11+ only
    assert extra is not None, "pyproject.toml has no export extra"
    names = set(re.findall(r'"([A-Za-z0-9_.-]+)', extra.group(1)))  # each requirement's name
    assert names >= {"onnx", "onnxscript", "onnxruntime"}, extra.group(0)
    assert "prune-runner[export]" in ONNX_HINT


# The export extra is installed by `make install` (and so in CI): the round trip always runs.
def test_onnx_round_trip_with_dynamic_batch(model: nn.Module, tmp_path: Path):
    # batch 1 as the pipeline exports it; the batch axis must stay dynamic anyway
    path = export_model(model, torch.randn(1, 3, 32, 32), ["onnx"], tmp_path)["onnx"]
    assert path == tmp_path / "model.onnx" and sorted(p.name for p in tmp_path.iterdir()) == ["model.onnx"]
    assert check_export(path, model, torch.randn(5, 3, 32, 32), atol=1e-4) <= 1e-4  # another batch size


def test_resnet20_torchscript_round_trip(tmp_path: Path):
    net = build_model("resnet20", 10)  # an error building it is a failure of the code under test
    x = torch.randn(2, 3, 32, 32)
    path = export_model(net, x, ["torchscript"], tmp_path)["torchscript"]
    assert check_export(path, net, x, atol=1e-5) <= 1e-5
