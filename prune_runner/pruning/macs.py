"""MAC and parameter counting that is cheap enough to call after every small pruning step.

MACs here are the multiply-accumulates of convolutions, Linear layers and multi-head attention
(its q/k/v and output projections plus the two attention matmuls QK^T and AV), for ONE sample
(the batch dimension of the example inputs is divided out). Bias additions, BatchNorm,
activations and pooling are not counted. One MAC = 2 FLOPs in `torch.utils.flop_counter`.

`MacCounter` runs one forward pass with temporary hooks to record, per module, how many output
positions it computes (pixels for a conv, tokens for a Linear, query/key lengths for attention).
Channel pruning never changes those, so `count(model)` afterwards only multiplies them by the
CURRENT weight shapes: no forward pass, no deep copy.
"""

from __future__ import annotations

from typing import Any, Callable, Dict, List, Tuple

import torch
import torch.nn as nn

CONV_TYPES = (nn.Conv1d, nn.Conv2d, nn.Conv3d)


def _run_forward(model: nn.Module, example_inputs: Any) -> None:
    if isinstance(example_inputs, dict):
        model(**example_inputs)
    elif isinstance(example_inputs, (list, tuple)):
        model(*example_inputs)
    else:
        model(example_inputs)


def _batch_size(example_inputs: Any) -> int:
    """Size of dim 0 of the first tensor found in the example inputs."""
    items = example_inputs.values() if isinstance(example_inputs, dict) else example_inputs
    if isinstance(items, torch.Tensor):
        return int(items.shape[0])
    for item in items:
        if isinstance(item, torch.Tensor):
            return int(item.shape[0])
    raise ValueError("example_inputs hold no tensor")


def _attention_lengths(mha: nn.MultiheadAttention, args: tuple, kwargs: dict) -> Tuple[int, int]:
    """(query length L, key length S) of one attention call."""
    query = args[0] if len(args) > 0 else kwargs["query"]
    key = args[1] if len(args) > 1 else kwargs["key"]
    seq_dim = 1 if (mha.batch_first and query.dim() == 3) else 0
    return int(query.shape[seq_dim]), int(key.shape[seq_dim])


def _attention_batch(mha: nn.MultiheadAttention, query: torch.Tensor) -> int:
    if query.dim() == 2:  # unbatched (L, E)
        return 1
    return int(query.shape[0] if mha.batch_first else query.shape[1])


def _mha_macs(mha: nn.MultiheadAttention, query_len: int, key_len: int) -> int:
    """MACs of one sequence through `mha`, from its current weights."""
    if mha.in_proj_weight is not None:  # packed q/k/v, each (E, E)
        q_numel = k_numel = v_numel = mha.in_proj_weight.numel() // 3
        embed = mha.in_proj_weight.shape[0] // 3
    else:
        weights = (mha.q_proj_weight, mha.k_proj_weight, mha.v_proj_weight)
        q_numel, k_numel, v_numel = (w.numel() for w in weights)
        embed = mha.q_proj_weight.shape[0]
    projections = query_len * q_numel + key_len * (k_numel + v_numel)
    attention = 2 * query_len * key_len * embed  # QK^T and AV, summed over heads
    return projections + attention + query_len * mha.out_proj.weight.numel()


def _with_hooks(model: nn.Module, example_inputs: Any, hook_for: Callable[[str, nn.Module], Any]) -> None:
    """One eval-mode, no-grad forward with `hook_for(name, module)` forward hooks (kwargs-style)
    on every conv/Linear/MHA; the modules' training flags are restored afterwards."""
    training = {m: m.training for m in model.modules()}
    handles = []
    for name, module in model.named_modules():
        if isinstance(module, CONV_TYPES + (nn.Linear, nn.MultiheadAttention)):
            handles.append(module.register_forward_hook(hook_for(name, module), with_kwargs=True))
    try:
        model.eval()  # no BatchNorm running-stat updates on the live model
        with torch.no_grad():
            _run_forward(model, example_inputs)
    finally:
        for handle in handles:
            handle.remove()
        for module, flag in training.items():
            module.training = flag


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


class MacCounter:
    """Record output positions once; then `count(model) -> (macs, params)` from weight shapes.

    Positions are keyed by module name, so `count` works on the pruned model or on any model
    of the same module tree. Pruning must keep spatial/sequence sizes (channel pruning does).
    """

    def __init__(self, model: nn.Module, example_inputs: Any):
        self.batch = _batch_size(example_inputs)
        # name -> output positions over the whole example batch, summed over calls
        # (conv: output pixels; Linear: tokens, i.e. output elements / out_features)
        self.positions: Dict[str, int] = {}
        # name -> [(query length L, key length S, number of sequences)] per attention call
        self.attention_calls: Dict[str, List[Tuple[int, int, int]]] = {}

        def hook_for(name: str, module: nn.Module):
            def record(mod, args, kwargs, output):
                if isinstance(mod, nn.MultiheadAttention):
                    query = args[0] if args else kwargs["query"]
                    calls = self.attention_calls.setdefault(name, [])
                    calls.append((*_attention_lengths(mod, args, kwargs), _attention_batch(mod, query)))
                else:
                    per_position = mod.weight.shape[0]  # out channels / out features
                    self.positions[name] = self.positions.get(name, 0) + output.numel() // per_position
            return record

        _with_hooks(model, example_inputs, hook_for)

    def count(self, model: nn.Module) -> Tuple[int, int]:
        modules = dict(model.named_modules())
        missing = (set(self.positions) | set(self.attention_calls)) - set(modules)
        if missing:
            raise ValueError(f"model lacks modules seen when the counter was built: {sorted(missing)[:5]}")
        macs = 0
        for name, positions in self.positions.items():
            macs += positions * modules[name].weight.numel()  # weight.numel() already / groups
        for name, calls in self.attention_calls.items():
            macs += sum(n * _mha_macs(modules[name], q_len, k_len) for q_len, k_len, n in calls)
        return int(macs // self.batch), count_params(model)

