"""Typed run configuration. Hydra validates the YAML against these dataclasses
(see cli.py); the core takes a `RunConfig` and never imports Hydra."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, List, Optional

STAGES = ("pretrain", "sparse_train", "prune", "finetune", "eval")


@dataclass
class ModelConfig:
    """The network, chosen by `model=`."""

    name: str = "resnet56"  # registry key: prune_runner.models.list_models() or any torchvision name
    pretrained: bool = False  # torchvision weights (downloads) instead of the pretrain stage's random init
    input_size: Optional[int] = None  # square input side in pixels; None = the model's default (32 / 224)


@dataclass
class DatasetConfig:
    """The data, chosen by `dataset=`."""

    name: str = "digits"  # registry key: digits, cifar10, cifar100, imagenet, imagefolder
    root: str = "data"  # download / folder location (relative paths are relative to the launch directory)
    download: bool = True  # cifar only
    in_memory: Optional[bool] = None  # None = auto (tensors on the device for digits/cifar)
    augment: bool = True  # random crop (+ flip where the dataset allows)
    workers: int = 4  # DataLoader workers, folder datasets only
    train_limit: Optional[int] = None  # keep only the first N training samples (smoke runs)
    # fraction of the TRAINING split withheld from every training stage (pretrain, sparse_train, prune, finetune),
    # whose top-1 the eval stage reports as results.json's holdout.acc; null: nothing withheld. The Optuna sweeper
    # sets it (0.1) for a trial whose objective reads accuracy, so that the search never selects on the test split
    holdout: Optional[float] = None


@dataclass
class MethodConfig:
    """How channels are scored and, for methods with a regularizer, how training makes them sparse; chosen by
    `method=`. A None below is the method's default (pruning/regularizers.py; stronger ones for the short
    schedules demo and tiny, pruning/method_defaults.py), filled in before a run starts."""

    name: str = "group_norm"  # registry key: prune_runner.pruning.list_methods()
    # regularization coefficient after warm-up (growing_reg: the initial per-channel one); unused without a
    # regularizer
    reg: Optional[float] = None
    reg_warmup: int = 0  # epochs over which the coefficient ramps linearly from 0 to `reg`
    alpha: Optional[float] = None  # group_norm: per-group scaling spans [2^0, 2^alpha]
    delta_reg: Optional[float] = None  # growing_reg: increment of the per-channel coefficient per update
    reg_update_every: Optional[int] = None  # growing_reg: optimizer steps between updates; 0 = once per epoch
    normalizer: Optional[str] = None  # per-group score normalization: mean | max | sum | ...; None = criterion's
    # taylor / obdc: batches of forward+backward whose gradients (taylor) or Fisher (obdc) score the channels
    # before every pruning step
    importance_batches: int = 4


@dataclass
class StageSchedule:
    """One training stage: SGD with momentum, its learning-rate schedule and length."""

    epochs: int = 1  # passes over the training set; 0 = no training in this stage
    lr: float = 0.1  # peak learning rate
    batch_size: int = 128  # training batch size
    momentum: float = 0.9  # SGD momentum
    weight_decay: float = 5e-4  # SGD weight decay (L2 penalty on every weight)
    lr_schedule: str = "cosine"  # cosine | step | constant
    milestones: List[float] = field(default_factory=lambda: [0.5, 0.75])  # step: fractions of the epochs
    lr_gamma: float = 0.1  # step: lr multiplier at each milestone
    warmup_epochs: int = 0  # linear lr warm-up


@dataclass
class DistillConfig:
    """Soft targets of a teacher added to the fine-tuning loss."""

    alpha: float = 0.0  # weight of the teacher's soft targets in [0, 1]; 0 = no distillation (no teacher loaded)
    temperature: float = 4.0  # softmax temperature of both teacher and student for the soft term


@dataclass
class FinetuneSchedule(StageSchedule):
    """The fine-tuning stage: a training stage, with optional distillation."""

    # knowledge distillation from the unpruned model (sparse_train's output, else pretrain's)
    distill: DistillConfig = field(default_factory=DistillConfig)


@dataclass
class ScheduleConfig:
    """The three training stages, chosen by `schedule=`; a key the schedule's YAML leaves out keeps its value
    here."""

    name: str = "default"  # set by `schedule=`
    pretrain: StageSchedule = field(default_factory=StageSchedule)  # training the unpruned model
    sparse_train: StageSchedule = field(default_factory=StageSchedule)  # training with the method's regularizer
    finetune: FinetuneSchedule = field(default_factory=FinetuneSchedule)  # training the pruned model


@dataclass
class PruneSearchConfig:
    """prune.allocation=search: per-layer widths chosen among candidates scored without training
    (pruning/width_search.py; docs/how-to/per-layer-widths.md)."""

    candidates: int = 32  # allocations scored, uniform and global included (each one pruning + a holdout pass)
    sampler: str = "random"  # how ratios are drawn: a name of prune_runner.pruning.list_samplers() (random | tpe)
    # training batches (of schedule.finetune.batch_size) that re-estimate each candidate's BatchNorm statistics
    recalibration_batches: int = 10
    # fraction of the TRAINING split (never the test split) whose top-1 scores the candidates. It stays in the
    # training data of every stage: the score ranks how much of what the model learned survives pruning, and
    # all allocations of a setup then share one base model (docs/how-to/per-layer-widths.md says more)
    holdout: float = 0.1


@dataclass
class PruneConfig:
    """The prune stage: how far to prune and how (pruning/)."""

    # how the removed channels are spread over the layers: uniform (each layer loses the same fraction),
    # global (one ranking across layers decides), search (candidates of per-layer ratios scored on a holdout;
    # prune.search)
    allocation: str = "uniform"
    search: PruneSearchConfig = field(default_factory=PruneSearchConfig)

    # macs: speed_up is base MACs / pruned MACs. latency: speed_up is the measured latency of the base model /
    # that of the pruned one, on the run's device, at batch latency_batch, in eval.latency_dtype (latency_target.py)
    target: str = "macs"
    speed_up: float = 2.0  # the target speed-up (see `target`)
    latency_batch: int = 1  # target=latency: the batch size timed (1: latency; 64 or more: throughput)
    iterative_steps: int = 100  # step budget: each step removes ~1/iterative_steps of every layer's channels
    max_pruning_ratio: float = 0.9  # never remove more than this fraction of a layer's channels
    # keep channel counts multiples of this: an integer, auto (the device's multiple, round_to.py) or null
    round_to: Any = None  # Any: an int or "auto" (OmegaConf has no Union of the two); validate.py checks it
    # training batches (of schedule.finetune.batch_size) that re-estimate the BatchNorm statistics after
    # the last pruning step, before the accuracy before fine-tuning is measured; 0 = off (train/batchnorm.py)
    bn_stats_batches: int = 50
    # before fine-tuning, filters that feed a BatchNorm: live ones to unit norm, dead ones exactly to zero
    # (output-preserving): sparse training shrinks the survivors, SGD's effective lr on such a filter is
    # lr / |w|^2, and dead channels would come back as noise (see pruning/weight_scale.py)
    restore_weight_scale: bool = True
    # seconds the pre-flight check may take before pretraining (run/preflight.py, pruning/preflight.py):
    # dependency graph, regularizer plan and two trial pruning steps on a copy, then a jump to the schedule's last step
    # (a speed-up it cannot reach is refused); past it the model is refused. Under 1 s for the CIFAR models; 60
    # leaves a wide margin for large ones on a slow CPU. 0 = no check
    preflight_s: float = 60.0


@dataclass
class FastConfig:
    """Training speed-ups; none changes what is computed beyond numerical precision."""

    amp: Optional[bool] = None  # bf16 autocast; None = on for CUDA
    channels_last: Optional[bool] = None  # None = on for CUDA
    compile: bool = False  # torch.compile the training model (recompiled after pruning)


@dataclass
class EvalConfig:
    """The eval stage's measurements of the base and the pruned model (latency/)."""

    latency: bool = True  # time base and pruned models
    latency_batch: int = 64  # the saturating batch size (batch 1 is always timed)
    latency_repeats: int = 20  # interleaved base/pruned timing pairs per batch size; their median ratio is reported
    latency_dtype: Optional[str] = None  # fp32 | bf16 | fp16, the deployed precision; None: bf16 on CUDA, else fp32


@dataclass
class SearchConfig:
    """What a run reports to a search sweeper (hydra/sweeper=optuna; search.py)."""

    # what a run returns to a sweeper (hydra/sweeper=optuna maximizes each): a name of
    # prune_runner.search.list_objectives(), or a list of them for a multi-objective search ([accuracy,speed_up]).
    # Any: OmegaConf has no str-or-list type; validate.py checks it
    objective: Any = "accuracy"
    min_speed_up: Optional[float] = None  # accuracy_at_speed_up: the MACs speed-up to reach; None = prune.speed_up


@dataclass
class MlflowConfig:
    """MLflow tracking (logger=mlflow)."""

    # logger=mlflow (tracking/mlflow_run.py): the experiment; None = $MLFLOW_EXPERIMENT_NAME, else prune-runner.
    # The store is $MLFLOW_TRACKING_URI, else sqlite:///<out_root>/mlflow.db
    experiment: Optional[str] = None


@dataclass
class RunConfig:
    """A run: its parts (the classes above), and where and how it runs."""

    model: ModelConfig = field(default_factory=ModelConfig)
    dataset: DatasetConfig = field(default_factory=DatasetConfig)
    method: MethodConfig = field(default_factory=MethodConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    prune: PruneConfig = field(default_factory=PruneConfig)
    fast: FastConfig = field(default_factory=FastConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    search: SearchConfig = field(default_factory=SearchConfig)
    seed: int = 0  # seeds the initial weights, the data order and the channel draws of method=random
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    # the stages to run: a subset of pretrain, sparse_train, prune, finetune, eval (e.g. [pretrain])
    stages: List[str] = field(default_factory=lambda: list(STAGES))
    out_root: str = "outputs"  # where derived run directories live
    run_dir: Optional[str] = None  # explicit run directory (else derived from the choices)
    # auto: skip finished stages, continue unfinished ones, refuse a finished stage whose config changed;
    # overwrite: redo such a stage instead
    resume: str = "auto"
    resume_from: Optional[str] = None  # <run_dir>/<stage> of another run to start from
    base_checkpoint: Optional[str] = None  # a checkpoint to use instead of pretraining
    deterministic: bool = False  # bit-identical CPU reruns for one seed
    cache: bool = True  # reuse finished stages of other runs with the same upstream config
    # jsonl | tensorboard (TensorBoard logs too; the tensorboard extra) | mlflow (tracking/mlflow_run.py; the mlflow
    # extra); all write metrics.jsonl
    logger: str = "jsonl"
    mlflow: MlflowConfig = field(default_factory=MlflowConfig)
    export: List[str] = field(default_factory=list)  # formats of the pruned model: onnx (the export extra), torchscript
    progress: bool = True  # rich progress bars; false turns off the bars only (the per-epoch lines always print)


def dotted(tree: dict, prefix: str = "") -> dict:
    """A nested config dict as {"group.key": value}, the spelling of command-line overrides."""
    out = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            out.update(dotted(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out
