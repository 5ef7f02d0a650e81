"""prune.round_to=auto: the channel multiple a device's kernels run fastest on.

A convolution kernel works on blocks of channels (SIMD lanes on a CPU, tensor-core tiles on a GPU) and pads a
width that is not a multiple of its block: 57 channels cost about as much as 64. Keeping pruned widths at
multiples of the block turns every removed channel into saved time. `ROUND_TO` is the one table of these
multiples, each with the measurement (or, where this project has not measured, the source) behind it.
`scripts/bench_round_to.py` reproduces the measurements on any machine.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Union

import torch

from ..errors import UserError


@dataclass(frozen=True)
class Multiple:
    value: int  # keep channel counts multiples of this
    evidence: str  # the measurement that justifies it


# (device type, latency dtype) -> the channel multiple prune.round_to=auto uses
ROUND_TO = {
    ("cpu", "fp32"): Multiple(8, "scripts/bench_round_to.py on an AMD EPYC (AVX2, 8 fp32 lanes), torch 2.14.1, "
                                 "1 thread, batch 8, 16x16 maps, widths 33-96: a 3x3 convolution's time steps up at "
                                 "every multiple of 8 plus one (width 57 runs at 0.83x the MACs/s of 56, 65 at 0.76x "
                                 "of 64); a padded-width model with block 8 leaves 0.066 log-spread against 0.100 "
                                 "for the smooth one (block 16: 0.112); 1x1 convolutions show no blocks. "
                                 "scripts/bench_latency_target.py --round-to auto: ResNet-56 at batch 64 pruned to "
                                 "2.2x MACs runs 2.2x faster, against 1.44x at 2.1x MACs without"),
    # a CPU with native 16-bit kernels (AVX-512 BF16, AMX) may block channels: rerun the script there
    ("cpu", "bf16"): Multiple(1, "scripts/bench_round_to.py --dtype bf16 on the same AMD EPYC (AVX2, no native "
                                 "bf16): 3x3 convolutions run 520-670 MACs/us at every width 33-96, about 1/45 of "
                                 "fp32, with no steps (block 1 fits best: 0.051 log-spread, block 8: 0.097)"),
    ("cpu", "fp16"): Multiple(1, "scripts/bench_round_to.py --dtype fp16 on the same AMD EPYC: 390-670 MACs/us, "
                                 "no steps at multiples (block 1: 0.144 log-spread, block 8: 0.164)"),
    # not measured by this project (its sessions had no GPU); run scripts/bench_round_to.py --device cuda
    ("cuda", "bf16"): Multiple(8, "NVIDIA Deep Learning Performance Guide (convolutional layers): tensor cores run "
                                  "16-bit convolutions fully when channel counts are multiples of 8"),
    ("cuda", "fp16"): Multiple(8, "NVIDIA Deep Learning Performance Guide: as bf16, multiples of 8 for 16-bit types"),
    ("cuda", "fp32"): Multiple(4, "NVIDIA Deep Learning Performance Guide: TF32 tensor cores (cuDNN's default for "
                                  "fp32 convolutions) want channel counts that are multiples of 4"),
}


def check_round_to(value) -> None:
    """prune.round_to: None, an integer >= 1, or auto."""
    ok = value is None or value == "auto" or (isinstance(value, int) and not isinstance(value, bool) and value >= 1)
    if not ok:
        raise UserError(f"prune.round_to={value} is invalid; it is an integer >= 1, auto (the device's channel "
                        "multiple, prune_runner/round_to.py) or null (off)")


def resolve_round_to(value: Union[None, int, str], device: torch.device, dtype: str) -> Optional[int]:
    """The channel multiple to prune to: `value` itself, or for auto the table's entry for the device and the
    precision latency is measured in (eval.latency_dtype)."""
    if value != "auto":
        return value
    return ROUND_TO[(torch.device(device).type, dtype)].value
