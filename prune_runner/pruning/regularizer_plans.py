"""Index plans behind the regularizers (regularizers.py): dependency groups -> flat index tensors.

Built once per refresh() with Python loops over the groups; used every training step with a fixed
handful of batched tensor ops (plus a few ops per parameter) and no host<->device sync.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import NamedTuple

import torch
from torch import nn
from torch_pruning.pruner import function

OUT_FNS = (function.prune_conv_out_channels, function.prune_linear_out_channels)
IN_FNS = (function.prune_conv_in_channels, function.prune_linear_in_channels)
CONV_OR_LINEAR = (nn.modules.conv._ConvNd, nn.Linear)


class Member(NamedTuple):
    """One (dep, idxs) item of a dependency group, flattened at refresh time."""

    group: int
    module: nn.Module
    handler: Callable
    idxs: list[int]
    roots: list[int]  # root-layer channel of each entry of idxs


def walk_groups(groups: Sequence) -> tuple:
    """-> (members, channels per group). Items with unknown root indices are skipped, as the library's
    importance does (its regularize() would crash on them)."""
    members, sizes = [], []
    for g, group in enumerate(groups):
        sizes.append(len(group[0].idxs))
        for item in group:
            roots = item.root_idxs
            if any(r is None for r in roots):
                continue
            members.append(Member(g, item.dep.target.module, item.dep.handler, list(item.idxs), list(roots)))
    return members, sizes


def _offsets(sizes: Sequence[int]) -> list[int]:
    out, total = [], 0
    for n in sizes:
        out.append(total)
        total += n
    return out


def weight_dims(layer: nn.Module):
    """(out dim, in dim) of a conv/linear weight; transposed convs store (in, out, ...)."""
    return (1, 0) if getattr(layer, "transposed", False) else (0, 1)


class ChannelNormPlan:
    """Per-channel squared L2 norm averaged over the group's members, for all groups at once: what
    GroupMagnitudeImportance(p=2, group_reduction='mean', normalizer=None) computes group by group."""

    def __init__(self, members, group_sizes, device, is_member: Callable[[Member], bool]):
        self.n_channels = sum(group_sizes)
        group_offset = _offsets(group_sizes)
        by_param: dict[int, tuple] = {}  # id(param) -> (param, {kept dim: [member positions]})
        count = [0] * len(group_sizes)
        picks = []  # (param id, kept dim, positions into the per-channel norm vector, dst channels)
        for m in members:
            if not is_member(m):
                continue
            w, (out_dim, in_dim) = m.module.weight, weight_dims(m.module)
            if m.handler in OUT_FNS:
                keep, pos = out_dim, m.idxs
            elif m.handler in IN_FNS:
                keep, pos = in_dim, m.idxs
                groups = getattr(m.module, "groups", 1)
                if groups != 1 and groups != getattr(m.module, "in_channels", 0):  # grouped conv: tiled norms
                    pos = [i % w.shape[keep] for i in m.idxs]
            else:  # BatchNorm / LayerNorm weight vectors
                keep, pos = 0, m.idxs
            by_param.setdefault(id(w), (w, {}))[1].setdefault(keep, None)
            picks.append((id(w), keep, pos, [group_offset[m.group] + r for r in m.roots]))
            count[m.group] += 1
        # Fixed order of the per-step reductions: param by param, kept dim by kept dim (0 or 1).
        self.reductions, source_offset, total = [], {}, 0
        for pid, (w, keeps) in by_param.items():
            for keep in keeps:
                source_offset[(pid, keep)] = total
                total += w.shape[keep]
            self.reductions.append((w, tuple(range(2, w.dim())), list(keeps)))
        # One reused buffer for the squares: a fresh weight-sized temp per step costs page faults on CPU.
        self.scratch_numel = max((w.numel() for w, _, _ in self.reductions if w.dim() > 1), default=0)
        self._scratch: dict[torch.dtype, torch.Tensor] = {}
        src, dst = [], []
        for pid, keep, pos, chans in picks:
            src.extend(source_offset[(pid, keep)] + i for i in pos)
            dst.extend(chans)
        self.src = torch.tensor(src, dtype=torch.long, device=device)
        self.dst = torch.tensor(dst, dtype=torch.long, device=device)
        # members per channel's group (a group without members gets 1: its sums are 0 anyway)
        self.count = torch.repeat_interleave(
            torch.tensor([float(max(c, 1)) for c in count]), torch.tensor(list(group_sizes), dtype=torch.long)
        ).to(device)

    def channel_sq_norms(self) -> torch.Tensor:
        out = torch.zeros(self.n_channels, device=self.count.device)
        if not self.reductions:
            return out
        parts = []
        for w, spatial, keeps in self.reductions:  # 2-4 ops per parameter, one pass over its weight
            w = w.detach()
            if w.dim() == 1:  # BatchNorm / LayerNorm: small, and its squares are the result
                parts.append(w.square())
                continue
            scratch = self._scratch.get(w.dtype)
            if scratch is None:
                scratch = self._scratch[w.dtype] = w.new_empty(self.scratch_numel)
            sq = torch.square(w, out=scratch[: w.numel()].view(w.shape))
            if spatial:  # conv kernels: sum the kernel window first, then rows/columns of (out, in)
                sq = sq.sum(spatial)
            parts.extend(sq.sum(1 - keep) for keep in keeps)
        flat = torch.cat(parts).float()  # the library also sums in fp32 after per-layer reductions
        # sum over the group's members, then / their count, in the library's order
        return out.index_add_(0, self.dst, flat.index_select(0, self.src)).div_(self.count)


class ScalePlan:
    """grad += coef * per_channel[root] * w along one dim, for a list of (param, dim, member) slices.
    Slices of one (param, dim) from several members accumulate, like the library's repeated `+=`."""

    def __init__(self, entries, group_sizes, device):
        group_offset = _offsets(group_sizes)
        slot: dict[tuple, int] = {}  # (id(param), dim) -> slot of the flat scale vector
        by_param: dict[int, tuple] = {}  # id(param) -> (param, [(slot, broadcast shape)])
        self.sizes = []
        for w, dim, _ in entries:
            if (id(w), dim) not in slot:
                slot[(id(w), dim)] = len(self.sizes)
                self.sizes.append(w.shape[dim])
                shape = [-1 if k == dim else 1 for k in range(w.dim())]
                by_param.setdefault(id(w), (w, []))[1].append((slot[(id(w), dim)], shape))
        # (param, slots, combine): a conv's out and in scales (O,1,1,1) + (1,I,1,1) -> (O,I,1,1) are summed
        # first (small; one pass over w). For linear / 1x1 conv that sum would be weight-sized: two passes.
        self.targets = [(w, slots, len(slots) == 2 and w[0, 0].numel() > 1) for w, slots in by_param.values()]
        start = _offsets(self.sizes)
        src, dst = [], []
        for w, dim, m in entries:
            base = start[slot[(id(w), dim)]]
            src.extend(group_offset[m.group] + r for r in m.roots)
            dst.extend(base + i for i in m.idxs)
        self.src = torch.tensor(src, dtype=torch.long, device=device)
        self.dst = torch.tensor(dst, dtype=torch.long, device=device)
        self.total = sum(self.sizes)

    def add_scaled(self, per_channel: torch.Tensor, coef: float) -> None:
        if not self.targets:
            return
        flat = per_channel.new_zeros(self.total).index_add_(0, self.dst, per_channel.index_select(0, self.src))
        views = flat.split(self.sizes)
        rounds = ([], [], []), ([], [], [])  # (grads, weights, scales): no grad twice in one _foreach call
        for w, slots, combine in self.targets:
            if w.grad is None:  # the library skips such layers too
                continue
            parts = [views[t].view(shape) for t, shape in slots]
            if combine:
                parts = [parts[0] + parts[1]]
            for (grads, weights, scales), part in zip(rounds, parts):
                grads.append(w.grad)
                weights.append(w)
                scales.append(part.to(w.dtype))
        for grads, weights, scales in rounds:
            if grads:
                torch._foreach_addcmul_(grads, weights, scales, value=coef)
