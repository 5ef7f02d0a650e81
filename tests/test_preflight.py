"""The pre-flight check (pruning/preflight.py): before pretraining, a copy of the model goes through the pruning
stages' torch-pruning work under prune.preflight_s; a model that does not get through is refused with one line,
before any training epoch. The watchdog is tested with fake clocks and memory; two tests use timm's
efficientvit_m0, whose dependency search never ends, under a limit of a few seconds."""

from __future__ import annotations

import random
import signal
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import torch.nn as nn
from conftest import error_lines, run_subprocess
from inprocess import tiny_config

from prune_runner.config import MethodConfig
from prune_runner.errors import UserError
from prune_runner.models import build_model
from prune_runner.models.support import TIMM_NOT_SUPPORTED, ModelNotSupportedError
from prune_runner.pruning import get_method
from prune_runner.pruning.preflight import (
    PHASE_GRAPH,
    PHASE_STEP,
    TRIAL_STEPS,
    UnreachableTargetError,
    Watchdog,
    _Stopped,
    check_prunable,
)
from prune_runner.run.distributed import DistInfo
from prune_runner.run.pipeline import run_pipeline
from prune_runner.run.preflight import preflight_run, stages_to_check
from prune_runner.validate import validate

EFFICIENTVIT = "timm/efficientvit_m0"  # torch-pruning 1.6.1's get_all_groups loops on it without end


class FixedOffset(nn.Module):
    """Adds a buffer of fixed width after a conv: torch-pruning narrows the conv, not the buffer, so the pruned
    model cannot run."""

    def __init__(self):
        super().__init__()
        self.conv, self.bn, self.head = nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.Linear(8, 10)
        self.register_buffer("offset", torch.zeros(1, 8, 1, 1))

    def forward(self, x):
        return self.head((self.bn(self.conv(x)) + self.offset).mean((2, 3)))


class KeptWidth(nn.Module):
    """Tokens of width 10, the class count: hints.py keeps every Linear of that width whole as a classifier, and with
    the residual stream the 8 mixing layers. Only the MLP's hidden width (20) can go. MACs per pixel: stem 30, mix
    800, MLP 400; as far as prune.max_pruning_ratio=0.9 allows, the MLP keeps int(20 * (1 - 0.9)) = 1 of its 20
    (1 - 0.9 is 0.0999... in floating point, as in torch-pruning): 20. The speed-up stops at (30 + 800 + 400) /
    (30 + 800 + 20) = 1.45x (the head's 100 MACs an image aside); the layers kept whole hold 830 / 850 = 98%."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 10, 1)
        self.mix = nn.Sequential(*[nn.Linear(10, 10) for _ in range(8)])
        self.fc1, self.fc2, self.head = nn.Linear(10, 20), nn.Linear(20, 10), nn.Linear(10, 10)

    def forward(self, x):
        t = self.stem(x).flatten(2).transpose(1, 2)  # (B, pixels, 10)
        t = t + self.mix(t)
        t = t + self.fc2(torch.relu(self.fc1(t)))
        return self.head(t.mean(1))


class FakeClock:
    """A clock that moves `step` seconds each time it is read."""

    def __init__(self, step: float):
        self.now, self.step = 0.0, step

    def __call__(self) -> float:
        self.now += self.step
        return self.now


def check(model, method="group_norm", side=32, **options):
    check_prunable(model, torch.zeros(1, 3, side, side), get_method(method), 10,
                   describe=f"model m with method {method}", limit_s=options.pop("limit_s", 60),
                   method_config=MethodConfig(name=method), pruner_options={"steps": 10}, **options)


# -- the check itself ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("method", ["group_norm", "taylor", "obdc", "slim"])
def test_resnet20_is_accepted_after_the_trial_steps(method):
    model = build_model("resnet20", 10)
    widths = [m.out_channels for m in model.modules() if isinstance(m, nn.Conv2d)]
    check(model, method)  # the model given is the trial copy: TRIAL_STEPS steps of 1/10 of the channels (steps=10)
    pruned = [m.out_channels for m in model.modules() if isinstance(m, nn.Conv2d)]
    # at most TRIAL_STEPS tenths of a layer's channels gone, give or take the library's rounding (one channel)
    assert sum(pruned) < sum(widths) and all(p >= (1 - TRIAL_STEPS / 10) * w - 1 for p, w in zip(pruned, widths))


def test_a_pruned_model_that_cannot_run_is_refused_at_the_trial_step():
    with pytest.raises(ModelNotSupportedError) as err:
        check(FixedOffset(), "l1", side=8)
    message = str(err.value)
    assert "\n" not in message
    assert message.startswith(f"model m with method l1 cannot be pruned: {PHASE_STEP} fails at layer FixedOffset "
                              "(RuntimeError: The size of tensor a (")


def test_a_speed_up_past_what_the_schedule_reaches_is_refused_naming_what_holds_it_down():
    with pytest.raises(UnreachableTargetError) as err:
        check(KeptWidth(), "l1", side=8, speed_up=1.5)
    assert str(err.value) == (
        "model m with method l1 cannot be pruned: its MACs speed-up stops at 1.45x, short of prune.speed_up=1.5x, "
        "with every layer pruned as far as prune.max_pruning_ratio=0.9 allows; layers kept at their full width hold "
        "98% of the MACs left, the most in mix.* (Linear, 94%); lower prune.speed_up, or try another method or model")
    check(KeptWidth(), "l1", side=8, speed_up=1.44)  # within reach: accepted
    check(KeptWidth(), "l1", side=8)  # no target given: not checked


def test_a_run_whose_target_is_out_of_reach_is_refused_before_pretraining(tmp_path):
    cfg = tiny_config(tmp_path, "resnet20", "l1", speed_up=500.0)  # resnet20 stops near 130x (0.9 of every layer)
    with pytest.raises(UnreachableTargetError, match=r"^model resnet20 with method l1 cannot be pruned: its MACs "
                                                     r"speed-up stops at \d+\.\d\dx, short of prune.speed_up=500x"):
        run_pipeline(cfg, tmp_path / "run")
    assert not (tmp_path / "run" / "pretrain").exists()  # no stage started


def test_a_search_past_the_limit_is_refused_naming_where_it_stopped():
    pytest.importorskip("timm")
    model = build_model(EFFICIENTVIT, 10, input_size=32)
    # the clock jumps 100 s a reading: the first poll of the timer (after POLL_S) is past the 60 s limit
    watchdog = Watchdog(60, memory_budget=2**40, clock=FakeClock(100), rss=lambda: 0)
    handler = signal.getsignal(signal.SIGALRM)
    with pytest.raises(ModelNotSupportedError) as err:
        check(model, watchdog=watchdog)
    assert str(err.value) == (f"model m with method group_norm cannot be pruned: {PHASE_GRAPH} did not finish within "
                              "60 s (prune.preflight_s); if it is only slow, raise prune.preflight_s; else try "
                              "another method or model")
    assert signal.getsignal(signal.SIGALRM) is handler and signal.getitimer(signal.ITIMER_REAL) == (0, 0)


# -- the watchdog ------------------------------------------------------------------------------------------

def test_the_watchdog_stops_past_the_limit_and_not_before():
    clock = FakeClock(1.0)
    dog = Watchdog(limit_s=3, memory_budget=100, clock=clock, rss=lambda: 0)
    dog.start()  # t = 1
    dog.poll()  # t = 2: 1 s in
    dog.poll()  # t = 3: 2 s in
    dog.poll()  # t = 4: 3 s in, not past
    with pytest.raises(_Stopped, match=r"^did not finish within 3 s \(prune.preflight_s\)$"):
        dog.poll()  # t = 5: 4 s in
    with pytest.raises(_Stopped):
        dog.poll()  # again while the work runs: a stop that a __del__ swallowed is not the last
    dog.armed = False  # the work has returned (Watchdog.run)
    dog.poll()


def test_the_watchdog_stops_memory_growth_past_its_budget():
    rss = iter([1000, 1000 + 2**30, 1000 + 2**30 + 1])
    dog = Watchdog(limit_s=60, memory_budget=2**30, clock=FakeClock(0.0), rss=lambda: next(rss))
    dog.start()
    dog.poll()  # grown by exactly the budget
    with pytest.raises(_Stopped, match=r"^used more than 1.0 GiB of memory$") as err:
        dog.poll()
    assert err.value.advice == "try another method or model"


def test_the_watchdog_interrupts_a_python_loop_and_restores_the_previous_handler():
    def previous(signum, frame):
        raise AssertionError("the previous handler must not run while the watchdog holds SIGALRM")

    old = signal.signal(signal.SIGALRM, previous)
    try:
        dog = Watchdog(limit_s=60, memory_budget=2**40, clock=FakeClock(100), rss=lambda: 0)
        with pytest.raises(_Stopped):
            dog.run(lambda: [None for _ in iter(int, 1)])  # never ends on its own
        assert signal.getsignal(signal.SIGALRM) is previous and signal.getitimer(signal.ITIMER_REAL) == (0, 0)
    finally:
        signal.signal(signal.SIGALRM, old)


# -- which runs check --------------------------------------------------------------------------------------

def _cfg(tmp_path, method="group_norm", **changes):
    cfg = validate(tiny_config(tmp_path, "resnet20", method))
    for key, value in changes.items():
        setattr(cfg, key, value)
    return cfg


def test_only_runs_with_a_stage_that_builds_a_pruner_are_checked(tmp_path):
    run_dir = tmp_path / "run"
    cfg = _cfg(tmp_path)
    assert stages_to_check(cfg, get_method("group_norm"), run_dir) == ["sparse_train", "prune"]
    assert stages_to_check(_cfg(tmp_path, "l1"), get_method("l1"), run_dir) == ["prune"]  # no regularizer
    assert stages_to_check(_cfg(tmp_path, stages=["pretrain", "eval"]), get_method("group_norm"), run_dir) == []
    taken = _cfg(tmp_path, resume_from=str(tmp_path / "other" / "sparse_train"))
    assert stages_to_check(taken, get_method("group_norm"), run_dir) == ["prune"]
    (run_dir / "sparse_train").mkdir(parents=True)
    (run_dir / "sparse_train" / "done.json").write_text("{}")  # finished here: the model was pruned before
    assert stages_to_check(cfg, get_method("group_norm"), run_dir) == ["prune"]
    assert stages_to_check(_cfg(tmp_path, resume="overwrite"), get_method("group_norm"), run_dir) == [
        "sparse_train", "prune"]


def test_the_check_leaves_the_random_generators_as_they_were(tmp_path):
    cfg = _cfg(tmp_path, method="random")  # random importance draws from Python's generator
    state = SimpleNamespace(cfg=cfg, spec=get_method("random"), run_dir=tmp_path / "run", dist=DistInfo(),
                            num_classes=10, input_size=32, device=torch.device("cpu"), base_sha=None,
                            data=SimpleNamespace(example_input=lambda batch: torch.zeros(batch, 3, 32, 32)))
    torch.manual_seed(1)
    random.seed(1)
    torch_before, python_before = torch.get_rng_state(), random.getstate()
    preflight_run(state)
    assert torch.equal(torch.get_rng_state(), torch_before) and random.getstate() == python_before


def test_a_negative_limit_is_one_line(tmp_path):
    cfg = tiny_config(tmp_path, "resnet20", "l1")
    cfg.prune.preflight_s = -1.0
    with pytest.raises(UserError, match=r"^prune.preflight_s=-1.0 is invalid; it must be >= 0$"):
        validate(cfg)


# -- in a run ----------------------------------------------------------------------------------------------

def test_a_model_that_cannot_be_taken_apart_is_refused_before_pretraining(tmp_path, monkeypatch):
    pytest.importorskip("timm")
    # support.py refuses it at once (found by the timm walk): without that entry, the pre-flight check must
    monkeypatch.delitem(TIMM_NOT_SUPPORTED, EFFICIENTVIT.removeprefix("timm/"))
    cfg = tiny_config(tmp_path, EFFICIENTVIT, "group_norm")
    cfg.model.input_size, cfg.prune.preflight_s = 32, 2.0
    with pytest.raises(ModelNotSupportedError) as err:
        run_pipeline(cfg, tmp_path / "run")
    assert str(err.value).startswith(f"model {EFFICIENTVIT} with method group_norm cannot be pruned: {PHASE_GRAPH} "
                                     "did not finish within 2 s (prune.preflight_s)")
    assert not (tmp_path / "run" / "pretrain").exists()  # no stage started


def test_the_command_ends_with_one_line_before_any_epoch(tmp_path):
    """The command of issue 22, as a user types it, with a short limit: exit 2, one line, no traceback."""
    pytest.importorskip("timm")
    proc = run_subprocess([f"model={EFFICIENTVIT}", "model.input_size=32", "method=group_norm", "dataset=digits",
                           "schedule=tiny", "device=cpu", "prune.preflight_s=3", "run_dir=run"], cwd=tmp_path,
                          timeout=120)
    assert proc.returncode == 2, proc.stderr[-3000:]
    # the timm walk put it in support.py's table: refused at once, with the reason the pre-flight check finds
    assert error_lines(proc.stderr) == [
        f"prune-run: error: model {EFFICIENTVIT} is not supported: {TIMM_NOT_SUPPORTED['efficientvit_m0']}"]
    assert "epoch" not in proc.stdout and not Path(tmp_path / "run" / "pretrain").exists()
