"""The precision latency is measured in (eval.latency_dtype), and what a latency figure was measured on.

A model is deployed in one precision and timed in it: bf16 on CUDA (tensor cores), fp32 on a CPU by default.
The figures this project prints carry the device and the dtype, and a prune stage that measures latency
(prune.target=latency) hashes them, so a cached result from another device is never reused.
"""

from __future__ import annotations

import copy
from typing import Optional

import torch
import torch.nn as nn

from ..errors import UnknownChoiceError
from .device import cpu_name

LATENCY_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def check_latency_dtype(name: Optional[str]) -> None:
    if name is not None and name not in LATENCY_DTYPES:
        raise UnknownChoiceError("eval.latency_dtype", name, LATENCY_DTYPES)


def resolve_latency_dtype(name: Optional[str], device: torch.device) -> str:
    """eval.latency_dtype, or the default for the device: bf16 on CUDA, fp32 elsewhere."""
    if name is not None:
        return name
    return "bf16" if torch.device(device).type == "cuda" else "fp32"


def as_deployed(model: nn.Module, dtype: str) -> nn.Module:
    """`model` in the deployed precision: itself when it already is, else a converted copy (the model
    being trained or pruned is never changed)."""
    target = LATENCY_DTYPES[dtype]
    current = next((p.dtype for p in model.parameters() if p.is_floating_point()), torch.float32)
    return model if current == target else copy.deepcopy(model).to(target)


def device_name(device: torch.device) -> str:
    """The processor a latency was measured on: the GPU's name, or the CPU model and torch's thread count."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{cpu_name()}, {torch.get_num_threads()} thread(s)"


def latency_env(device: torch.device, latency_dtype: Optional[str]) -> dict:
    """The StageInputs fields a latency depends on: the device's name and eval.latency_dtype resolved for it."""
    return {"device": device_name(device), "latency_dtype": resolve_latency_dtype(latency_dtype, device)}
