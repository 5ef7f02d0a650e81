"""Export a (pruned) model to deployable formats and check the files load back to the same outputs.

Each format is an `Exporter` in the `EXPORTERS` registry: how to write the file and how to run it again.
Files are written under a temporary name in the target folder, then renamed (files.atomic_path), so an
interrupted export never leaves a half-written file under the final name.
"""

from __future__ import annotations

import contextlib
import os
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from .errors import UserError
from .registry import Registry
from .run.files import atomic_path

ONNX_HINT = "pip install 'prune-runner[export]'"


class ExportMismatchError(RuntimeError):
    """The exported file gives outputs that differ from the model's by more than the tolerance."""


@dataclass(frozen=True)
class Exporter:
    name: str
    suffix: str  # file name ending, with the dot
    write: Callable[[nn.Module, torch.Tensor, Path], None]  # write(model, example_input, path)
    run: Callable[[Path, torch.Tensor], torch.Tensor]  # run(path, input) -> output, on input's device


EXPORTERS: Registry[Exporter] = Registry("export format")


@contextlib.contextmanager
def _eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Eval mode (BatchNorm running stats, no dropout) for the export, restored afterwards."""
    was_training = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was_training)


# --- TorchScript -------------------------------------------------------------------------------------


@contextlib.contextmanager
def _quiet_jit_deprecation() -> Iterator[None]:
    """torch.jit is deprecated upstream but TorchScript is what the user asked for: skip the warnings."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"`torch\.jit\.\w+` is deprecated", category=FutureWarning)
        yield


def _write_torchscript(model: nn.Module, example_input: torch.Tensor, path: Path) -> None:
    with _quiet_jit_deprecation(), torch.no_grad():
        traced = torch.jit.trace(model, example_input)
        torch.jit.save(traced, str(path))


def _run_torchscript(path: Path, inputs: torch.Tensor) -> torch.Tensor:
    with _quiet_jit_deprecation():
        loaded = torch.jit.load(str(path), map_location=inputs.device)
    loaded.eval()
    with torch.no_grad():
        return loaded(inputs)


EXPORTERS.add("torchscript", Exporter("torchscript", ".pt", _write_torchscript, _run_torchscript))


# --- ONNX --------------------------------------------------------------------------------------------


def _require(module: str, purpose: str) -> None:
    """One line naming the missing package and the extra that brings it (and the others the format needs)."""
    try:
        __import__(module)
    except ImportError:
        missing = f"{purpose} needs the optional dependency {module}, which is not installed"
        raise UserError(f"{missing}: {ONNX_HINT}") from None


# Packages a format needs beyond torch to be written; the torch.export-based ONNX exporter (the default
# since torch 2.9) needs onnx and onnxscript. Checking an .onnx file also needs onnxruntime. The `export`
# extra (ONNX_HINT, pyproject.toml) brings all three; tests/test_export.py checks that it does.
_WRITE_NEEDS = {"onnx": ("onnx", "onnxscript")}


def _write_onnx(model: nn.Module, example_input: torch.Tensor, path: Path) -> None:
    for module in _WRITE_NEEDS["onnx"]:
        _require(module, "export=onnx")
    # Dim.DYNAMIC: the batch axis stays symbolic even when the example batch is 1.
    batch_axis = {0: torch.export.Dim.DYNAMIC}
    torch.onnx.export(
        model,
        (example_input,),
        str(path),
        input_names=["input"],
        output_names=["logits"],
        dynamo=True,
        dynamic_shapes=(batch_axis,),
        # One self-contained file: external weight files would be named after the temporary path.
        external_data=False,
        verbose=False,
    )


def _run_onnx(path: Path, inputs: torch.Tensor) -> torch.Tensor:
    _require("onnxruntime", "checking an onnx export")
    import onnxruntime  # an optional dependency: only for checking .onnx files

    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    feed = {session.get_inputs()[0].name: inputs.detach().cpu().numpy()}
    output = session.run(None, feed)[0]
    return torch.from_numpy(output).to(inputs.device)


EXPORTERS.add("onnx", Exporter("onnx", ".onnx", _write_onnx, _run_onnx))


# --- public API --------------------------------------------------------------------------------------


def export_model(
    model: nn.Module,
    example_input: torch.Tensor,
    formats: list[str],
    out_dir: str | os.PathLike,
    stem: str = "model",
) -> dict[str, Path]:
    """Write `model` in each format to `out_dir/<stem><suffix>`; returns {format: path}.

    `example_input` is one batch on the model's device (any batch size; ONNX keeps the batch axis
    dynamic, TorchScript traces are shape-generic for plain CNNs). Unknown format names raise
    UnknownChoiceError before anything is written.
    """
    exporters = [EXPORTERS.get(name) for name in dict.fromkeys(formats)]  # validate all first
    out = Path(out_dir)
    paths: dict[str, Path] = {}
    with _eval_mode(model):
        for exporter in exporters:
            final = out / f"{stem}{exporter.suffix}"
            with atomic_path(final) as tmp:
                exporter.write(model, example_input, tmp)
            paths[exporter.name] = final
    return paths


def _format_of(path: Path) -> Exporter:
    for name in EXPORTERS.names():
        exporter = EXPORTERS.get(name)
        if path.name.endswith(exporter.suffix):
            return exporter
    suffixes = ", ".join(EXPORTERS.get(n).suffix for n in EXPORTERS.names())
    raise UserError(f"cannot tell the export format of '{path}'; expected a file ending in: {suffixes}")


def check_export(
    path: str | os.PathLike,
    model: nn.Module,
    example_input: torch.Tensor,
    atol: float = 1e-4,
) -> float:
    """Load the exported file, run it on `example_input` and return max |exported - model| (logit units).

    Raises ExportMismatchError when the difference exceeds `atol`, and UserError when the runtime
    for the format (onnxruntime for .onnx) is not installed.
    """
    path = Path(path)
    exporter = _format_of(path)
    with _eval_mode(model), torch.no_grad():
        expected = model(example_input)
    got = exporter.run(path, example_input)
    if got.shape != expected.shape:
        shapes = f"{tuple(got.shape)} != model's {tuple(expected.shape)}"
        raise ExportMismatchError(f"{path}: output shape {shapes}")
    diff = (got.float() - expected.float()).abs().max().item()
    if not diff <= atol:  # also catches NaN
        raise ExportMismatchError(f"{path}: max abs output difference {diff:.3g} exceeds atol={atol:g}")
    return diff


def validate_formats(formats: list[str]) -> list[str]:
    """Check format names and the packages needed to write them, before a long run; returns them.

    Raises UnknownChoiceError for an unknown name and UserError when a needed package is missing.
    """
    for name in formats:
        EXPORTERS.get(name)
        for module in _WRITE_NEEDS.get(name, ()):
            _require(module, f"export={name}")
    return list(formats)
