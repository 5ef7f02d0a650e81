"""Which torchvision classification models, timm models, and model x method pairs this project cannot run.

Each entry is refused with one line, "not supported: <reason>", before anything is trained.
Keys are name prefixes of `torchvision.models.list_models(module=torchvision.models)`.
`tests/test_torchvision_walk.py` (slow) builds every torchvision classification model, prunes it,
and checks these tables against the models themselves, so an entry cannot go stale silently.
"""

from __future__ import annotations

from typing import Optional

from ..errors import UserError
from .timm_models import layer_structure

# models torch-pruning 1.6.1 cannot take apart
NOT_SUPPORTED = {
    "shufflenet_v2_": "its channel shuffle (view, transpose, view) crashes torch-pruning 1.6.1's dependency graph "
                      "(ZeroDivisionError in its reshape index mapping)",
    "swin_": "torch-pruning 1.6.1's dependency search does not finish on its shifted-window attention "
             "(no result after 5 minutes for swin_t on a CPU)",
    "maxvit_": "torch-pruning 1.6.1's dependency search does not finish on its block and grid attention "
               "(no result after 10 minutes for maxvit_t on a busy 2-core CPU)",
}

# timm models (names after `timm/`) that the timm walk (scripts/timm_walk.py) found torch-pruning 1.6.1 cannot take
# apart, with any method: refused at once rather than after the pre-flight check's trial (up to prune.preflight_s).
# tests/test_timm_walk.py checks that the pre-flight check still refuses each one, so an entry cannot go stale.
TIMM_NOT_SUPPORTED = {
    "efficientvit_m0": "torch-pruning 1.6.1's dependency search does not end on its cascaded group attention (its "
                       "memory grows by 1 to 3 GB a minute)",
    # the pre-flight check stops these past its memory budget (2 GiB beyond 4 copies of the model), in the walk
    "efficientformerv2_s0": "torch-pruning 1.6.1's dependency search grows past 2 GiB of memory without finishing",
    "efficientvim_m1": "torch-pruning 1.6.1's dependency search grows past 2 GiB of memory without finishing",
    "iformer_t": "torch-pruning 1.6.1's dependency search grows past 2 GiB of memory without finishing",
}

# torchvision families without a single BatchNorm layer: BN-scale importance has nothing to score
NO_BATCHNORM = ("alexnet", "convnext_", "squeezenet", "vit_", "vgg11", "vgg13", "vgg16", "vgg19")
# torchvision families whose Linear layers see token or pixel tensors (more than 2-D): torch-pruning
# 1.6.1's OBDC Fisher handles 2-D Linear inputs only ("Tensors must have same number of dimensions")
LINEAR_ON_TOKENS = ("convnext_", "vit_")

METHODS_NEEDING_BATCHNORM = ("slim", "group_slim")
METHODS_NEEDING_2D_LINEAR = ("obdc",)


class ModelNotSupportedError(UserError):
    """A model, or a model x method pair, this project cannot prune."""


def name_matches(name: str, prefixes) -> bool:
    # the bare VGG names must not match their _bn variants (which have BatchNorm)
    return any(name == p or (p.endswith("_") or p in ("alexnet", "squeezenet")) and name.startswith(p)
               for p in prefixes)


def model_unsupported_reason(name: str) -> Optional[str]:
    return next((why for prefix, why in NOT_SUPPORTED.items() if name.startswith(prefix)), None)


def method_unsupported_reason(model: str, method: str) -> Optional[str]:
    if method in METHODS_NEEDING_BATCHNORM and name_matches(model, NO_BATCHNORM):
        return f"'{model}' has no BatchNorm layers, whose scales method {method} scores; use l1, l2 or group_norm"
    if method in METHODS_NEEDING_2D_LINEAR and name_matches(model, LINEAR_ON_TOKENS):
        return (f"'{model}' applies Linear layers to token tensors, and torch-pruning 1.6.1's {method} Fisher "
                "handles 2-D Linear inputs only; use taylor, l1, l2 or group_norm")
    return None


def timm_model_unsupported_reason(model: str) -> Optional[str]:
    """TIMM_NOT_SUPPORTED's reason for `timm/<name>` (a pretrained tag after the dot is the same architecture)."""
    return TIMM_NOT_SUPPORTED.get(model.removeprefix("timm/").split(".")[0])


def timm_method_unsupported_reason(model: str, method: str) -> Optional[str]:
    """The same reasons for a timm model (`timm/<name>`), found from its layers (timm_models.layer_structure)."""
    if method not in METHODS_NEEDING_BATCHNORM + METHODS_NEEDING_2D_LINEAR:
        return None
    has_bn, linear_on_tokens = layer_structure(model)
    if method in METHODS_NEEDING_BATCHNORM and not has_bn:
        return f"'{model}' has no BatchNorm layers, whose scales method {method} scores; use l1, l2 or group_norm"
    if method in METHODS_NEEDING_2D_LINEAR and linear_on_tokens:
        return (f"'{model}' applies Linear layers to token tensors, and torch-pruning 1.6.1's {method} Fisher "
                "handles 2-D Linear inputs only; use taylor, l1, l2 or group_norm")
    return None


def check_supported(model: str, method: str, family: str) -> None:
    """Raise the one-line "not supported" error for a torchvision or timm model x method this project cannot run."""
    if family == "timm":
        reason = timm_model_unsupported_reason(model)
        if reason is not None:
            raise ModelNotSupportedError(f"model {model} is not supported: {reason}")
        reason = timm_method_unsupported_reason(model, method)
    elif family != "torchvision":
        return  # the CIFAR models are smoke-tested with every method
    else:
        reason = method_unsupported_reason(model, method)
    if reason is not None:
        raise ModelNotSupportedError(f"model {model} with method {method} is not supported: {reason}")
