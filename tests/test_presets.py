"""Paper presets (conf/experiment/*.yaml) and the SLURM launcher config.

Every preset must compose with Hydra, convert to a RunConfig, pass validation, and build its model and
pruner (no data, no training). The recipes' invariants that are easy to break by editing are checked too.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml
from conftest import run_cli
from hydra import compose, initialize_config_module
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import OmegaConf

import prune_runner.cli  # noqa: F401  registers the run-dir resolvers and the RunConfig schema
from prune_runner.config import RunConfig
from prune_runner.models import build_model, get_model_spec
from prune_runner.pruning import build_pruner
from prune_runner.pruning.methods import get_method
from prune_runner.validate import validate

REPO = Path(__file__).resolve().parents[1]
PRESET_DIR = REPO / "conf" / "experiment"
PRESETS = sorted(p.stem for p in PRESET_DIR.glob("*.yaml"))
SLURM_YAML = REPO / "conf" / "hydra" / "launcher" / "slurm.yaml"
NUM_CLASSES = {"cifar10": 10, "cifar100": 100, "imagenet": 1000}
# Building a pruner traces the model once: trace convolutional ImageNet nets at a smaller side (their
# layer graph does not depend on it). ViT's position embedding fixes its input at 224.
TRACE_SIDE = {"resnet50": 64, "mobilenet_v2": 64}


def _compose(overrides: list[str], hydra_config: bool = False):
    GlobalHydra.instance().clear()
    with initialize_config_module(config_module="prune_runner.conf", version_base="1.3"):
        return compose(config_name="config", overrides=overrides, return_hydra_config=hydra_config)


def _sweep_subdir(cfg) -> str:
    """The job's run directory below out_root (resolving `${hydra:...}` needs HydraConfig set)."""
    HydraConfig.instance().set_config(cfg)
    try:
        return str(cfg.hydra.sweep.subdir)
    finally:
        HydraConfig.instance().cfg = None  # leave no Hydra state behind for other tests


@pytest.fixture(scope="module")
def presets() -> dict[str, RunConfig]:
    GlobalHydra.instance().clear()
    out = {}
    with initialize_config_module(config_module="prune_runner.conf", version_base="1.3"):
        for name in PRESETS:
            out[name] = OmegaConf.to_object(compose(config_name="config", overrides=[f"experiment={name}"]))
    return out


def test_there_are_presets():
    assert len(PRESETS) >= 10, PRESETS
    assert "resnet56_cifar10_group_norm_2p11x" in PRESETS and "resnet56_cifar10_group_norm_2p55x" in PRESETS


@pytest.mark.parametrize("name", PRESETS)
def test_preset_header_names_its_target_and_source(name):
    text = (PRESET_DIR / f"{name}.yaml").read_text()
    assert text.splitlines()[0] == "# @package _global_"
    header = text.split("\ndefaults:")[0]
    assert "\n# Target" in header, "the top comment states the published result it targets (or where to see it)"
    assert "VainF/Torch-Pruning" in header, "the top comment names the source of its hyperparameters"
    assert "." not in name, "preset names have no dots (2p55x, not 2.55x): Hydra reads dots as nesting"


@pytest.mark.parametrize("name", PRESETS)
def test_preset_is_a_valid_run_config(presets, name):
    cfg = presets[name]
    assert isinstance(cfg, RunConfig)
    validate(cfg)
    assert cfg.dataset.name in NUM_CLASSES
    assert cfg.prune.allocation == "global", "every DepGraph benchmark recipe prunes globally"
    assert f"_{str(cfg.prune.speed_up).replace('.', 'p').removesuffix('p0')}x" in name, "name states the speed-up"
    assert name.startswith(cfg.model.name.removesuffix("_bn")), "name starts with the model"


@pytest.mark.parametrize("name", PRESETS)
def test_preset_keeps_the_reference_recipe_invariants(presets, name):
    cfg = presets[name]
    spec = get_method(cfg.method.name)
    if spec.regularizer is not None:
        # the reference optimizer drops weight decay while the sparsity regularizer trains
        assert cfg.schedule.sparse_train.weight_decay == 0.0
    if cfg.model.pretrained:
        assert cfg.schedule.pretrain.epochs == 0, "pretrained weights are the base model, not a starting point"
    else:
        assert cfg.schedule.pretrain.epochs > 0
    assert cfg.prune.target == "macs", "the published tables report MACs speed-ups"
    if cfg.dataset.name != "imagenet":  # the CIFAR recipe of reproduce/main.py
        assert cfg.prune.iterative_steps == 400
        assert cfg.schedule.finetune.epochs == 100 and cfg.schedule.finetune.milestones == [0.6, 0.8]


@pytest.mark.parametrize("name", PRESETS)
def test_preset_builds_its_model_and_pruner(presets, name):
    cfg = presets[name]
    num_classes = NUM_CLASSES[cfg.dataset.name]
    torch.manual_seed(0)
    model = build_model(cfg.model.name, num_classes)  # no pretrained weights: no download
    side = TRACE_SIDE.get(cfg.model.name, cfg.model.input_size or get_model_spec(cfg.model.name).input_size)
    pruner = build_pruner(model, torch.zeros(1, 3, side, side), get_method(cfg.method.name), num_classes,
                          steps=cfg.prune.iterative_steps, max_pruning_ratio=cfg.prune.max_pruning_ratio,
                          global_pruning=cfg.prune.allocation == "global", round_to=cfg.prune.round_to)
    assert pruner.iterative_steps == cfg.prune.iterative_steps
    assert pruner.global_pruning
    assert pruner.max_pruning_ratio == cfg.prune.max_pruning_ratio
    assert pruner.round_to == cfg.prune.round_to
    classifier = [m for m in model.modules() if isinstance(m, torch.nn.Linear)][-1]
    assert classifier.out_features == num_classes and classifier in pruner.ignored_layers


def test_presets_get_distinct_run_dirs():
    """Two presets must never share a run directory (the second would refuse to resume the first)."""
    subdirs = {}
    for name in PRESETS:
        subdirs.setdefault(_sweep_subdir(_compose([f"experiment={name}"], hydra_config=True)), []).append(name)
    shared = {d: names for d, names in subdirs.items() if len(names) > 1}
    assert not shared, f"presets sharing a run directory: {shared}"


def test_each_preset_composes_through_the_cli(tmp_path):
    """`prune-run experiment=<name> --cfg job`: the preflight and Hydra's own command-line path accept every
    preset name (in this process; test_cli_contract runs the console script)."""
    for name in PRESETS:
        done = run_cli([f"experiment={name}", "--cfg", "job"], cwd=tmp_path)
        assert done.returncode == 0, f"{name}: {done.stderr[-2000:]}"
        shown = yaml.safe_load(done.stdout)
        assert shown["prune"]["speed_up"] == pytest.approx(float(name.rsplit("_", 1)[1][:-1].replace("p", ".")))


def test_unknown_preset_is_a_one_line_error(tmp_path):
    done = run_cli(["experiment=resnet56_cifar10_nope", "--cfg", "job"], cwd=tmp_path)
    assert done.returncode == 2
    assert "resnet56_cifar10_group_norm_2p11x" in done.stderr and "Traceback" not in done.stderr


@pytest.mark.parametrize("name", PRESETS)
def test_a_schedule_chosen_on_the_command_line_wins_over_the_preset(name):
    """`experiment=<preset> schedule=tiny` runs tiny's epochs, as its run dir (named schedule=tiny) says."""
    tiny = yaml.safe_load((REPO / "conf" / "schedule" / "tiny.yaml").read_text())
    cfg = _compose([f"experiment={name}", "schedule=tiny"], hydra_config=True)
    for stage in ("pretrain", "sparse_train", "finetune"):
        for key, value in tiny[stage].items():
            assert cfg.schedule[stage][key] == value, f"schedule.{stage}.{key}"
    assert "schedule=tiny" in _sweep_subdir(cfg)
    preset = _compose([f"experiment={name}"])
    assert cfg.prune == preset.prune and cfg.method == preset.method  # the rest of the preset still applies


def test_what_a_preset_keeps_over_a_group_chosen_on_the_command_line_is_said(tmp_path):
    name = "resnet56_cifar10_growing_reg_2p11x"
    done = run_cli([f"experiment={name}", "method=group_norm", "schedule=tiny", "method.reg=0.001", "--cfg", "job"],
                   cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    (note,) = [line for line in done.stdout.splitlines() if line.startswith("prune-run: note:")]
    assert f"method=group_norm replaces the method of experiment={name}" in note
    assert "method.delta_reg=1e-05" in note and "method.reg_update_every=0" in note
    assert "method.reg=" not in note  # set on the command line: nothing kept
    shown = yaml.safe_load(done.stdout.split("\n", 1)[1])
    assert shown["method"]["name"] == "group_norm" and shown["method"]["reg"] == 0.001
    assert shown["schedule"]["name"] == "tiny"  # no note for the schedule: the preset sets none of its own


def test_slurm_launcher_yaml_has_the_requeue_settings():
    text = SLURM_YAML.read_text()
    assert text.splitlines()[0] == "# @package hydra.launcher"
    conf = yaml.safe_load(text)
    assert conf["defaults"] == ["submitit_slurm"]
    for key in ("timeout_min", "gpus_per_node", "tasks_per_node", "cpus_per_task", "mem_gb", "partition",
                "additional_parameters", "max_num_timeout", "signal_delay_s"):
        assert key in conf, key
    assert conf["partition"] is None
    assert conf["max_num_timeout"] > 0, "0 would end a job at its first time limit instead of requeueing it"
    assert conf["tasks_per_node"] == 1 and conf["gpus_per_node"] == 1  # one process per run (no DDP here)
    assert conf["additional_parameters"].get("requeue") is True


def test_slurm_launcher_composes_with_the_plugin():  # the slurm extra: installed by `make install`, so always run
    cfg = _compose(["hydra/launcher=slurm", f"experiment={PRESETS[0]}"], hydra_config=True)
    launcher = cfg.hydra.launcher
    assert launcher._target_.endswith("SlurmLauncher")
    assert launcher.max_num_timeout == yaml.safe_load(SLURM_YAML.read_text())["max_num_timeout"]
    assert launcher.additional_parameters.requeue is True
    # the run directory of a job comes from its choices only (no job id or number), so a requeued job
    # lands in the same place
    raw_subdir = OmegaConf.to_container(cfg.hydra.sweep, resolve=False)["subdir"]
    assert "job.id" not in raw_subdir and "job.num" not in raw_subdir
    assert _sweep_subdir(cfg).startswith(f"{cfg.dataset.name}/{cfg.model.name}/{cfg.method.name}/")


def test_path_options_are_taken_literally():
    from prune_runner.cli import quote_paths

    derived = "outputs/digits/resnet20/l1/prune.speed_up=3,schedule=demo/seed0/sparse_train"
    assert quote_paths([f"resume_from={derived}", "run_dir=null", "prune.speed_up=1,2", "out_root='x=y'",
                        "base_checkpoint=choice(a.pt,b.pt)", "dataset.root=it's"]) == [
        f"resume_from='{derived}'", "run_dir=null", "prune.speed_up=1,2", "out_root='x=y'",
        "base_checkpoint=choice(a.pt,b.pt)", "dataset.root='it\\'s'"]
    cfg = _compose(quote_paths([f"resume_from={derived}", "dataset.root=it's"]))
    assert cfg.resume_from == derived and cfg.dataset.root == "it's"
