"""One line naming the layer where torch-pruning fails on a timm model, instead of its traceback.

timm's families are open-ended, so what torch-pruning cannot take apart is found when it tries: the pre-flight
check (preflight.py) tries on a copy before training, and `explain_failures` guards the prune stage's own calls.
The other families are checked before a run (models/support.py).
"""

from __future__ import annotations

import functools

import torch.nn as nn

from ..errors import UserError
from ..models.support import ModelNotSupportedError
from .timm_hints import is_timm_model


def model_name(model: nn.Module) -> str:
    cfg = getattr(model, "pretrained_cfg", None) or {}
    return f"timm/{cfg.get('architecture', type(model).__name__)}"


def failed_layer(model: nn.Module, err: BaseException) -> str:
    """`path (Type)` of the innermost layer of `model` in the traceback: the module whose forward raised, or the
    layer torch-pruning was handling (its `layer` / `module` variable)."""
    names = {id(m): name for name, m in model.named_modules()}
    found = None
    tb = err.__traceback__
    while tb is not None:
        local = tb.tb_frame.f_locals
        for key in ("layer", "module", "self"):
            m = local.get(key)
            if isinstance(m, nn.Module) and id(m) in names and m is not model:
                found = m
                break
        tb = tb.tb_next
    if found is None:
        return f"{type(model).__name__}"
    return f"{names[id(found)]} ({type(found).__name__})"


def explain_failures(fn):
    """Decorator for a function whose first argument is the model being pruned (building the pruner, pruning):
    on a timm model, an exception becomes one line naming the model and the layer type that failed."""
    @functools.wraps(fn)
    def wrapper(model, *args, **kwargs):
        if not is_timm_model(model):
            return fn(model, *args, **kwargs)
        try:
            return fn(model, *args, **kwargs)
        except UserError:
            raise
        except Exception as err:
            spec = next((a for a in (*args, *kwargs.values()) if hasattr(a, "importance") and hasattr(a, "name")),
                        None)
            what = kwargs.get("describe") or (f"model {model_name(model)}" +
                                              (f" with method {spec.name}" if spec is not None else ""))
            text = " ".join(str(err).split())[:200]
            raise ModelNotSupportedError(
                f"{what} cannot be pruned: torch-pruning 1.6.1 fails at layer {failed_layer(model, err)} "
                f"({type(err).__name__}: {text}); try another method, or another timm model") from err

    return wrapper
