"""Models and model x method pairs this project cannot run are refused with one line, before training."""

from __future__ import annotations

import pytest
from inprocess import tiny_config

from prune_runner.cli import preflight
from prune_runner.errors import UserError
from prune_runner.models import get_model_spec
from prune_runner.models.support import NOT_SUPPORTED, ModelNotSupportedError
from prune_runner.models.torchvision_models import torchvision_model_names
from prune_runner.run.pipeline import run_pipeline


def test_every_refused_family_exists_in_torchvision():
    names = torchvision_model_names()
    for prefix in NOT_SUPPORTED:
        assert any(n.startswith(prefix) for n in names), prefix


def test_an_unsupported_model_is_one_line_at_the_command_line():
    with pytest.raises(UserError, match=r"^model 'shufflenet_v2_x0_5' is not supported: .*ZeroDivisionError") as err:
        preflight(["model=shufflenet_v2_x0_5"])
    assert "\n" not in str(err.value)
    with pytest.raises(ModelNotSupportedError):
        get_model_spec("swin_t")


@pytest.mark.parametrize("model,method,reason", [
    ("convnext_tiny", "slim", "no BatchNorm layers"),
    ("vgg16", "group_slim", "no BatchNorm layers"),
    ("vit_b_16", "obdc", "2-D Linear inputs only"),
])
def test_an_unsupported_pair_is_refused_before_anything_runs(tmp_path, model, method, reason):
    cfg = tiny_config(tmp_path, model, method)
    expected = f"model {model} with method {method} is not supported: .*{reason}"
    with pytest.raises(ModelNotSupportedError, match=expected):
        run_pipeline(cfg, tmp_path / "run")
    assert not (tmp_path / "run").exists()


def test_a_vit_input_size_must_fit_its_patches():
    from prune_runner.models import build_model

    with pytest.raises(UserError, match=r"input_size=64 is not a multiple of vit_h_14's 14-pixel patches; use e.g. 70"):
        build_model("vit_h_14", 10, input_size=64)
    with pytest.raises(UserError, match=r"does not fit the pretrained weights of 'vit_b_16' \(224 px\)"):
        build_model("vit_b_16", 10, pretrained=True, input_size=32)
