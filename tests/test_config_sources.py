"""One value, one place: the YAML groups in conf/ name exactly the registered components, and each method's
regularizer defaults live in prune_runner/pruning/regularizers.py only, reaching a run unchanged from the YAML."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch
import yaml
from hydra import compose, initialize_config_module
from hydra.core.global_hydra import GlobalHydra
from omegaconf import OmegaConf

import prune_runner.cli  # noqa: F401  registers the RunConfig schema
from prune_runner.config import MethodConfig, RunConfig
from prune_runner.data import list_datasets
from prune_runner.models import list_models
from prune_runner.pruning import build_pruner
from prune_runner.pruning.methods import get_method, list_methods
from prune_runner.pruning.regularizers import CONFIG_OPTIONS, REGULARIZERS, method_defaults, regularizer_from_config
from prune_runner.validate import validate

CONF = Path(__file__).resolve().parents[1] / "conf"
def _shipped_models() -> list[str]:
    """Registered models that ship with the package (tests may register their own, e.g. a tiny ViT)."""
    from prune_runner.models import MODELS

    return [n for n in list_models() if MODELS.get(n).builder.__module__.startswith("prune_runner.")]


REGISTRIES = {"model": _shipped_models, "method": list_methods, "dataset": list_datasets}
REGULARIZED = [m for m in list_methods() if get_method(m).regularizer is not None]


def _yaml_names(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF / group).glob("*.yaml"))


@pytest.mark.parametrize("group", sorted(REGISTRIES))
def test_yaml_group_and_registry_list_the_same_names(group):
    assert _yaml_names(group) == sorted(REGISTRIES[group]())
    for name in _yaml_names(group):  # the option is the registry key is the name the config carries
        assert yaml.safe_load((CONF / group / f"{name}.yaml").read_text())["name"] == name


@pytest.mark.parametrize("name", _yaml_names("schedule"))
def test_schedule_yaml_name_matches_its_option(name):
    assert yaml.safe_load((CONF / "schedule" / f"{name}.yaml").read_text())["name"] == name


def test_the_schema_leaves_regularizer_defaults_to_the_regularizers():
    for key in CONFIG_OPTIONS:
        assert getattr(MethodConfig(), key) is None, f"config.py sets method.{key}: regularizers.py owns it"


@pytest.mark.parametrize("method", list_methods())
def test_method_yaml_repeats_no_regularizer_default(method):
    text = yaml.safe_load((CONF / "method" / f"{method}.yaml").read_text())
    assert not set(text) & set(CONFIG_OPTIONS), f"conf/method/{method}.yaml repeats a regularizer default"
    assert set(text) <= {f.name for f in dataclasses.fields(MethodConfig)}
    defaults = {f.name: f.default for f in dataclasses.fields(MethodConfig)}
    assert not [k for k, v in text.items() if k != "name" and v == defaults[k]], "repeats a config.py default"


@pytest.fixture(scope="module")
def composed() -> dict[str, RunConfig]:
    GlobalHydra.instance().clear()
    with initialize_config_module(config_module="prune_runner.conf", version_base="1.3"):
        out = {m: OmegaConf.to_object(compose(config_name="config", overrides=[f"method={m}"]))
               for m in list_methods()}
    GlobalHydra.instance().clear()
    return out


@pytest.mark.parametrize("method", REGULARIZED)
def test_each_regularizer_built_from_the_yaml_defaults_has_the_source_defaults(composed, method):
    """The path of a run: YAML -> RunConfig -> validate (fills the defaults) -> the sparse_train builder."""
    cfg = validate(composed[method])
    name = get_method(method).regularizer
    cls = REGULARIZERS.get(name)
    for key, value in method_defaults(name).items():
        assert getattr(cfg.method, key) == value, f"method.{key}"
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.BatchNorm2d(8), torch.nn.ReLU(),
                                torch.nn.Conv2d(8, 8, 3), torch.nn.BatchNorm2d(8), torch.nn.ReLU(),
                                torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(8, 10))
    pruner = build_pruner(model, torch.zeros(1, 3, 8, 8), get_method(method), 10, steps=4)
    regularizer, strength = regularizer_from_config(name, model, pruner, cfg.method)
    for option, default in cls.DEFAULTS.items():
        if option != "ignored_layers":
            assert regularizer.options[option] == default, option
    assert strength == (1.0 if "reg" in cls.DEFAULTS else cls.COEF)


def test_growing_reg_defaults_are_the_reference_scripts():
    """reproduce/main.py: --reg 5e-4, --delta_reg 1e-4, coefficients grown once per epoch."""
    assert method_defaults("growing_reg") == {"reg": 5e-4, "delta_reg": 1e-4, "reg_update_every": 0}
    assert method_defaults("group_norm") == {"reg": 5e-4, "alpha": 4.0}


def test_a_value_set_in_the_config_reaches_the_regularizer(composed):
    cfg = validate(dataclasses.replace(composed["growing_reg"], method=dataclasses.replace(
        composed["growing_reg"].method, reg=1e-3, delta_reg=2e-5, reg_update_every=7)))
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.BatchNorm2d(8), torch.nn.ReLU(),
                                torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(8, 10))
    pruner = build_pruner(model, torch.zeros(1, 3, 8, 8), get_method("growing_reg"), 10, steps=4)
    regularizer, strength = regularizer_from_config("growing_reg", model, pruner, cfg.method)
    assert regularizer.options["reg"] == 1e-3 and regularizer.options["delta_reg"] == 2e-5
    assert regularizer.options["update_every"] == 7 and strength == 1.0
