"""timm models, by name: `model=timm/<timm model name>` (e.g. timm/resnet18, timm/deit_tiny_patch16_224).

The `timm/` prefix keeps timm's names apart from the registry's own (resnet18 is also a torchvision model) and
reads like a timm Hugging Face Hub id (`timm/resnet18.a1_in1k`); a pretrained tag after the dot picks those
weights. Any name `timm.list_models()` knows resolves on first use (`MODELS.add_family`); timm itself is an
optional dependency (`pip install 'prune-runner[timm]'`), imported only when such a name is used.

Random init by default; `model.pretrained=true` loads timm's weights (a download through the Hugging Face Hub on
first use). The default input side is the one of timm's pretrained config (its `input_size`); the class count is
the dataset's, and with pretrained weights of another class count timm builds a fresh classifier.
A model with a fixed input size (ViT, DeiT: the position embedding fixes the patch grid) is built for
`model.input_size`; timm resamples a pretrained position embedding to it.

What torch-pruning must be told about timm's layers (attention heads, layer scale, tokens, the head) lives next
to the other pruning hints, in `pruning/timm_hints.py`.
"""

from __future__ import annotations

import difflib
import functools
import warnings
from typing import Tuple

import torch
import torch.nn as nn

from ..errors import UserError
from .registry import MODELS, ModelSpec

PREFIX = "timm/"
INSTALL = "pip install 'prune-runner[timm]'"
DEFAULT_INPUT_SIZE = 224  # for an architecture without a pretrained config


def import_timm():
    try:
        import timm
    except ImportError:
        raise UserError(f"timm models need the optional dependency: {INSTALL}") from None
    return timm


def _pretrained_cfg(timm, arch: str):
    try:
        return timm.get_pretrained_cfg(arch)  # None for an architecture without published weights
    except RuntimeError as err:  # a pretrained tag the architecture does not have
        raise UserError(f"model '{PREFIX}{arch}': {err}; see timm.list_pretrained('{arch.split('.')[0]}*')") from None


def _input_side(cfg) -> int:
    size = getattr(cfg, "input_size", None) if cfg is not None else None
    return int(size[-1]) if size else DEFAULT_INPUT_SIZE


def build_timm_model(arch: str, num_classes: int, pretrained: bool = False, input_size: int | None = None) -> nn.Module:
    timm = import_timm()
    cfg = _pretrained_cfg(timm, arch)
    options = {}
    native = _input_side(cfg)
    if input_size is not None and input_size != native and cfg is not None and cfg.fixed_input_size:
        options["img_size"] = input_size  # the patch grid (and the position embedding) for this side
    try:
        return timm.create_model(arch, pretrained=pretrained, num_classes=num_classes, **options)
    except TypeError as err:
        if "img_size" in options and "img_size" in str(err):
            raise UserError(f"model.input_size={input_size} does not fit timm model '{arch}', whose input size is "
                            f"fixed at {native} px; set model.input_size={native}") from None
        raise
    except Exception as err:
        if not pretrained:
            raise
        # network, cache or checksum failure: the user can avoid the download
        first = str(err).strip().splitlines()[0][:200] if str(err).strip() else ""
        raise UserError(f"could not load pretrained weights for timm model '{arch}' ({type(err).__name__}: {first}); "
                        "set model.pretrained=false or give a base_checkpoint") from None


def timm_model_spec(name: str) -> ModelSpec:
    """The ModelSpec of `timm/<arch>`; a name timm does not know is one line with the closest ones."""
    arch = name[len(PREFIX):]
    timm = import_timm()
    if not arch or not timm.is_model(arch):
        close = difflib.get_close_matches(arch, timm.list_models(), n=5, cutoff=0.6)
        hint = f"closest: {', '.join(PREFIX + c for c in close)}; " if close else ""
        raise UserError(f"unknown timm model '{arch}' (model={name}); {hint}timm.list_models() lists them all")

    def build(num_classes: int, pretrained: bool = False, input_size: int | None = None) -> nn.Module:
        return build_timm_model(arch, num_classes, pretrained, input_size)

    build.__name__ = arch
    return ModelSpec(name, build, _input_side(_pretrained_cfg(timm, arch)), "timm")


MODELS.add_family(PREFIX, timm_model_spec)


@functools.lru_cache(maxsize=None)
def layer_structure(name: str) -> Tuple[bool, bool]:
    """(has BatchNorm, applies a Linear to token / pixel tensors) of the timm model `timm/<arch>`, from a copy
    built on the meta device (no memory, no weights; a ViT-Huge takes about a second) and one forward pass there.
    support.py refuses model x method pairs with it."""
    timm = import_timm()
    arch = name[len(PREFIX):]
    with torch.device("meta"):
        model = timm.create_model(arch, num_classes=10).eval()
        has_bn = any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())
        dims = []
        hooks = [m.register_forward_pre_hook(lambda mod, args: dims.append(args[0].dim()))
                 for m in model.modules() if isinstance(m, nn.Linear)]
        side = _input_side(_pretrained_cfg(timm, arch))
        try:
            model(torch.zeros(1, 3, side, side))
        except (NotImplementedError, RuntimeError) as err:
            if not _meta_limit(err):
                raise  # a model that fails for another reason fails here, not quietly later
            dims = []  # unknown: not refused here; the pruning step fails with its own one line if it must
            first = str(err).strip().splitlines()[0][:MAX_REASON] if str(err).strip() else ""
            warnings.warn(f"timm model '{arch}' cannot run on the meta device ({type(err).__name__}: {first}), so "
                          "whether its Linear layers see token tensors is unknown: method obdc is not refused for "
                          "it before the run", stacklevel=2)
        finally:
            for hook in hooks:
                hook.remove()
    return has_bn, any(d > 2 for d in dims)


MAX_REASON = 200  # characters of an error's first line quoted in a warning


def _meta_limit(err: Exception) -> bool:
    """Whether `err` is the meta device's own limit: an op without a meta kernel (NotImplementedError), or a
    value read out of a tensor that has no data (`.item()`, `if tensor:`)."""
    return isinstance(err, NotImplementedError) or "meta tensor" in str(err)
