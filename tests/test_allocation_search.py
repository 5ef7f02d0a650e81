"""prune.allocation=search: the holdout (training split only), candidates at the MACs target, the default allocations
scored first, resume from candidates.jsonl, the refusal, the winner rebuilt from its history, bad values, hashes."""

from __future__ import annotations

import copy
import json
from dataclasses import replace
from types import SimpleNamespace

import pytest
import torch
import torch.nn as nn
from conftest import FAST, error_lines, results_of, run_cli

from prune_runner.config import PruneSearchConfig, RunConfig
from prune_runner.data import build_data
from prune_runner.data.digits import load_digits_tensors
from prune_runner.errors import UserError
from prune_runner.latency.meter import Reading
from prune_runner.models import build_model
from prune_runner.models.support import ModelNotSupportedError
from prune_runner.pruning import get_method, pruned_copy
from prune_runner.pruning.candidates import MACS_TOLERANCE, NoPerGroupRatiosError, OneShot, check_per_group_ratios
from prune_runner.pruning.latency_target import PASS_READINGS, RETRIES
from prune_runner.pruning.preflight import check_prunable
from prune_runner.pruning.samplers import LOWEST, build_sampler, list_samplers
from prune_runner.pruning.width_search import CANDIDATES_FILE, FINALISTS, read_finalists, read_rows, search_widths
from prune_runner.run.records import StageInputs, config_hash, own_config
from prune_runner.train.batchnorm import reestimate_batchnorms
from prune_runner.train.loop import Fast, evaluate
from prune_runner.validate import validate

SIDE = 8  # the digits' own pixels (tests/conftest.py FAST)
OPTIONS = dict(steps=1, max_pruning_ratio=0.9, global_pruning=False, round_to=None, normalizer=None)
FAST_CPU = Fast(amp=False, channels_last=False)


@pytest.fixture(scope="module")
def data():
    return build_data("digits", root="data", input_size=SIDE, device="cpu", augment=False)


@pytest.fixture(scope="module")
def model(data):
    """resnet20 after a few SGD steps on digits: its layers differ, so allocations score differently."""
    torch.manual_seed(0)
    net = build_model("resnet20", 10, False, input_size=SIDE)
    opt = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9)
    net.train()
    for x, y in data.train_batches(64, 0, 0):
        opt.zero_grad()
        nn.functional.cross_entropy(net(x), y).backward()
        opt.step()
    return net.eval()


def proxy(data, settings):
    """The stage's proxy (run/search_stage.py) without a run: BN re-estimated, then top-1 on the holdout; the
    test split's batches raise, so a search that read them fails."""
    def score(net):
        reestimate_batchnorms(net, data.calib_batches(64, settings.recalibration_batches, 0), "cpu", FAST_CPU)
        return evaluate(net, data.holdout_batches(256, settings.holdout), "cpu", FAST_CPU)["acc"]
    return score


def no_test_split(*args, **kwargs):
    raise AssertionError("the search read the test split")


def search(model, data, path, settings, score=None, target=3.0):
    one_shot = OneShot(model, data.example_input(1), get_method("l1"), 10, OPTIONS, seed=0)
    return search_widths(one_shot, target, 0.9, settings, 0, score or proxy(data, settings), path, "h",
                         say=lambda text: None), one_shot


@pytest.mark.parametrize("in_memory", [True, False])
def test_the_holdout_is_a_fixed_part_of_the_training_split(in_memory):
    data = build_data("digits", root="data", input_size=SIDE, device="cpu", in_memory=in_memory, workers=0)
    index = data.holdout_indices(0.1)
    assert len(index) == round(0.1 * data.num_train) and index.unique().numel() == len(index)
    assert 0 <= index.min() and index.max() < data.num_train  # positions in the training split only
    assert torch.equal(index, data.holdout_indices(0.1))  # the same images for every run and rank
    tensors = load_digits_tensors()
    labels = torch.cat([y for _, y in data.holdout_batches(32, 0.1)])
    assert torch.equal(labels, tensors.train_y[index])
    plain = build_data("digits", root="data", input_size=SIDE, device="cpu", augment=False)
    train_x = torch.cat([x for x, _ in plain.train_subset_batches(torch.arange(plain.num_train), 512)])
    holdout_x = torch.cat([x for x, _ in data.holdout_batches(32, 0.1)])
    assert torch.allclose(holdout_x, train_x[index], atol=1e-6)  # the training images, not augmented
    test_x = torch.cat([x for x, _ in plain.eval_batches(512)])
    # no holdout image is a test image (compared as pixels: the split holds no duplicate across train and test)
    assert not (holdout_x.flatten(1)[:, None] == test_x.flatten(1)[None]).all(-1).any()


SETTINGS = PruneSearchConfig(candidates=4, recalibration_batches=1)


@pytest.fixture(scope="module")
def searched(model, data, tmp_path_factory):
    """One search of 4 candidates at 3x, with the test split's batches made to raise."""
    path = tmp_path_factory.mktemp("search") / CANDIDATES_FILE
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(data, "eval_batches", no_test_split)
        outcome, _ = search(model, data, path, SETTINGS)
    return outcome, path


def test_every_candidate_meets_the_target_and_the_defaults_come_first(model, data, searched):
    outcome, path = searched
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    assert rows == outcome.rows and len(rows) == SETTINGS.candidates
    assert [r["kind"] for r in rows[:2]] == ["uniform", "global"]
    for row in rows:
        assert abs(row["speed_up"] / 3.0 - 1) <= MACS_TOLERANCE, row["kind"]
        assert set(row["ratios"]) == set(rows[0]["ratios"]) and row["seconds"] >= 0
    assert len(set(rows[0]["asked"].values())) <= 2  # uniform: one ratio, a few groups one rounding step further
    best = max(r["proxy"] for r in rows)
    s = outcome.summary
    assert s["winner_proxy"] == best >= max(s["uniform_proxy"], s["global_proxy"])
    assert abs(outcome.winner.speed_up / 3.0 - 1) <= MACS_TOLERANCE
    # the checkpoint's format (pruning history + state dict) rebuilds the winner with its outputs
    rebuilt = pruned_copy(model, outcome.winner.history, 10, SIDE)
    rebuilt.load_state_dict(outcome.winner.model.state_dict())
    x, _ = next(data.train_batches(16, 0, 1))
    torch.testing.assert_close(rebuilt.eval()(x), outcome.winner.model.eval()(x))


def test_a_killed_search_resumes_from_candidates_jsonl(model, data, searched, tmp_path):
    whole, whole_path = searched
    path = tmp_path / CANDIDATES_FILE
    lines = whole_path.read_text().splitlines(keepends=True)
    path.write_text("".join(lines[:2]) + lines[2][:40])  # killed while the 3rd line was written
    scored = []
    score = proxy(data, SETTINGS)
    resumed, _ = search(model, data, path, SETTINGS, score=lambda net: scored.append(1) or score(net))
    assert len(scored) == 2  # only the rest
    assert [(r["kind"], r["ratios"]) for r in resumed.rows] == [(r["kind"], r["ratios"]) for r in whole.rows]
    assert [r["proxy"] for r in resumed.rows] == pytest.approx([r["proxy"] for r in whole.rows])
    assert read_rows(path, "another config's hash") == []  # lines of another config are not resumed


@pytest.mark.parametrize("name", list_samplers())
def test_every_sampler_draws_directions_it_can_be_told_about(name):
    groups = ["a", "b", "c"]
    sampler = build_sampler(name, groups, seed=3)
    for index in range(3):
        raw = sampler.ask(index)
        assert set(raw) == set(groups) and all(LOWEST <= v <= 1 for v in raw.values())
        sampler.tell(raw, 0.5)
    sampler.tell({g: 1.0 for g in groups}, 0.7)  # a default allocation read back, never asked
    sampler.ask(3)
    sampler.fail()
    if name == "random":  # draw `index` has its own generator: a resumed search draws the same
        assert build_sampler(name, groups, seed=3).ask(1) == build_sampler(name, groups, seed=3).ask(1)


class Attention(nn.Module):
    def __init__(self):
        super().__init__()
        self.proj = nn.Conv2d(3, 8, 1)
        self.attn = nn.MultiheadAttention(8, 2, batch_first=True)
        self.head = nn.Linear(8, 10)

    def forward(self, x):
        tokens = self.proj(x).flatten(2).transpose(1, 2)
        return self.head(self.attn(tokens, tokens, tokens)[0].mean(1))


def test_a_model_whose_groups_cannot_carry_ratios_is_refused_in_one_line():
    with pytest.raises(NoPerGroupRatiosError) as err:
        check_per_group_ratios(Attention(), 10, "model tiny_attention")
    assert "\n" not in str(err.value) and "prune.allocation=uniform" in str(err.value)
    check_per_group_ratios(build_model("resnet20", 10, False, input_size=SIDE), 10, "resnet20")  # taken
    with pytest.raises(ModelNotSupportedError, match="prune.allocation=search"):  # the pre-flight tells first
        check_prunable(Attention(), torch.zeros(1, 3, SIDE, SIDE), get_method("l1"), 10, describe="tiny",
                       limit_s=30, method_config=RunConfig().method, pruner_options=OPTIONS, per_group_ratios=True)


@pytest.mark.parametrize("key, value, named", [
    ("allocation", "foo", "global, search, uniform"),
    ("sampler", "foo", "random, tpe"),
    ("candidates", 0, ">= 1"),
    ("holdout", 1.5, "(0, 1)"),
    ("recalibration_batches", 0, ">= 1"),
])
def test_bad_values_are_one_line_errors_naming_the_choices(key, value, named):
    cfg = RunConfig()
    if key == "allocation":
        cfg.prune.allocation = value
    else:
        setattr(cfg.prune.search, key, value)
    with pytest.raises(UserError) as err:
        validate(cfg)
    assert str(value) in str(err.value) and named in str(err.value) and "\n" not in str(err.value)


def test_tpe_without_optuna_and_a_bad_sampler_on_the_command_line_are_one_line(monkeypatch, tmp_path):
    import importlib.util

    done = run_cli(["prune.allocation=search", "prune.search.sampler=foo", *FAST], cwd=tmp_path)
    assert done.returncode != 0 and len(error_lines(done.stderr)) == 1, done.stderr
    assert "'foo'" in done.stderr and "random, tpe" in done.stderr
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "optuna" else real(name, *a))
    cfg = RunConfig()
    cfg.prune.allocation, cfg.prune.search.sampler = "search", "tpe"
    with pytest.raises(UserError, match=r"pip install 'prune-runner\[search\]'"):
        validate(cfg)


def _prune_hash(cfg: RunConfig) -> str:
    inputs = StageInputs(dataset="d", base_checkpoint=None, world_size=1, amp=False)
    return config_hash(own_config(cfg, "prune", False, inputs))


def test_the_prune_hash_holds_the_search_settings_only_for_a_search():
    plain = RunConfig()
    own = own_config(plain, "prune", False, StageInputs(dataset="d", base_checkpoint=None, world_size=1, amp=False))
    assert own["method.global_pruning"] is False and not any(k.startswith("prune.search") for k in own)
    assert "prune.allocation" not in own  # uniform is hashed as before prune.allocation existed
    other = copy.deepcopy(plain)
    other.prune.search = replace(plain.prune.search, candidates=8)
    assert _prune_hash(other) == _prune_hash(plain)
    searched = copy.deepcopy(plain)
    searched.prune.allocation = "search"
    more = copy.deepcopy(searched)
    more.prune.search = replace(searched.prune.search, candidates=8)
    assert len({_prune_hash(plain), _prune_hash(searched), _prune_hash(more)}) == 3
    glob = copy.deepcopy(plain)
    glob.prune.allocation = "global"
    assert own_config(glob, "prune", False, SimpleNamespace(dataset="d", amp=False))["method.global_pruning"] is True


@pytest.mark.slow  # a whole run, pretraining included: ~5 s on 2 idle cores
def test_a_run_with_allocation_search_keeps_the_winner_and_reports_the_search(tmp_path):
    run_dir = tmp_path / "run"
    done = run_cli(["model=resnet20", "method=l1", "prune.speed_up=2", "prune.allocation=search",
                    "prune.search.candidates=3", "prune.search.recalibration_batches=2", "eval.latency=false",
                    "schedule.finetune.epochs=0", f"run_dir={run_dir}", f"out_root={tmp_path / 'out'}", *FAST],
                   cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    results = results_of(run_dir)
    s = results["search"]
    assert s["candidates"] == 3 and s["winner_proxy"] >= max(s["uniform_proxy"], s["global_proxy"])
    assert abs(results["speed_up"] / 2 - 1) <= MACS_TOLERANCE
    assert len((run_dir / "prune" / CANDIDATES_FILE).read_text().splitlines()) == 3
    assert (run_dir / "prune" / "search.png").stat().st_size > 0 and (run_dir / "search.png").exists()


def test_the_study_ranks_and_writes_between_its_markers(tmp_path):
    from conftest import script_main

    script_main("study_search")
    import sys

    study = sys.modules["script_study_search"]
    assert study.spearman([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert study.spearman([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    from scipy.stats import spearmanr  # scikit-learn's dependency: the reference, ties at their mean rank

    xs, ys = [0.3, 0.5, 0.5, 0.9, 0.1, 0.7], [0.91, 0.93, 0.90, 0.97, 0.80, 0.93]
    assert study.spearman(xs, ys) == pytest.approx(spearmanr(xs, ys).statistic)
    report = tmp_path / "STUDY.md"
    report.write_text("# Study\n\nbefore\n")
    study.write_into(report, f"{study.BEGIN}\nfirst\n{study.END}")
    study.write_into(report, f"{study.BEGIN}\nsecond\n{study.END}")
    text = report.read_text()
    assert text.startswith("# Study\n\nbefore\n") and "second" in text and "first" not in text
    assert text.count(study.BEGIN) == 1


def test_the_study_runs_one_model_and_seed_per_worker_and_keeps_the_grid_order(monkeypatch, tmp_path):
    from concurrent.futures import ThreadPoolExecutor

    from conftest import script_main

    script_main("study_search")
    import sys

    study = sys.modules["script_study_search"]
    calls = []

    def fake_run(out, name, overrides):  # one pipeline run's records, its accuracy from its seed and allocation
        calls.append((overrides["model"], overrides["seed"]))
        acc = 0.5 + overrides["seed"] / 10 + ("prune.search.sampler" in overrides) / 100
        prune = {"speed_up": overrides["prune.speed_up"], "acc": acc}
        return {"prune": {"metrics": prune}, "finetune": {"metrics": {"acc": acc}},
                "sparse_train": {"checkpoint": f"{name}.pt"}}

    monkeypatch.setattr(study, "run", fake_run)
    args = SimpleNamespace(models=["resnet20", "resnet56"], methods=["l1"], speed_ups=[3.0, 5.0], seeds=[0, 1],
                           candidates=4)
    with ThreadPoolExecutor(max_workers=2) as workers:
        rows = study.run_cells(tmp_path, args, workers)
    assert len(rows) == 2 * 2 * 2 * len(study.ALLOCATIONS)
    grid = [(r["model"], r["target"], r["seed"], r["allocation"]) for r in rows]
    assert grid == [(m, x, s, a) for m in args.models for x in args.speed_ups for s in args.seeds
                    for a in study.ALLOCATIONS]
    assert {m for m, _ in calls[:8]} == {"resnet56"}  # the slowest model's groups are taken first (8 runs each)
    assert rows[0]["pruned"] == pytest.approx(0.5) and rows[-1]["pruned"] == pytest.approx(0.61)


@pytest.mark.slow  # two runs, pretraining once (the second takes it from the stage cache)
def test_a_run_killed_during_the_search_rerun_scores_only_the_rest(tmp_path, monkeypatch):
    from prune_runner.run import search_stage

    real = search_stage.proxy_score
    calls = []

    def dying(state):
        score = real(state)

        def counted(net):
            if len(calls) == 2:
                raise KeyboardInterrupt  # killed while the third candidate was scored
            calls.append(1)
            return score(net)
        return counted

    args = ["model=resnet20", "method=l1", "prune.speed_up=2", "prune.allocation=search", "prune.search.candidates=4",
            "prune.search.recalibration_batches=2", "eval.latency=false", "schedule.finetune.epochs=0",
            f"run_dir={tmp_path / 'run'}", f"out_root={tmp_path / 'out'}", *FAST]
    monkeypatch.setattr(search_stage, "proxy_score", dying)
    assert run_cli(args, cwd=tmp_path).returncode != 0
    path = tmp_path / "run" / "prune" / CANDIDATES_FILE
    first = path.read_text().splitlines()
    assert len(first) == 2
    monkeypatch.setattr(search_stage, "proxy_score", real)
    done = run_cli(args, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "resuming after 2 scored candidates" in done.stdout
    lines = path.read_text().splitlines()
    assert len(lines) == 4 and lines[:2] == first
    assert results_of(tmp_path / "run")["search"]["candidates"] == 4


# ---- prune.target=latency: the finalists read with the latency meter (a fake one here) ---------------------------


def fake_reading(ratio: float, noisy: bool = False) -> Reading:
    return Reading(ratio, ratio * 0.98, ratio * 1.02, noisy, 0.01, 1.0)


def test_the_best_finalist_by_the_proxy_that_reaches_the_latency_target_wins(model, data, tmp_path):
    """Six rows; the meter reads the proxy's best short (1.2x), the second NOISY, the third at 1.6x twice: the
    third wins, the fourth is read too (the record), the fifth and sixth are not finalists."""
    one_shot = OneShot(model, data.example_input(1), get_method("l1"), 10, OPTIONS, seed=0)
    rows = [{"index": i, "kind": "sampled", "proxy": p, "latency": None, "asked": r}
            for i, (p, r) in enumerate([(0.5, 0.1), (0.9, 0.2), (0.8, 0.3), (0.7, 0.4), (0.6, 0.5), (0.95, 0.6)])]
    by_ratio = {0.6: [fake_reading(1.2)], 0.2: [fake_reading(1.6, noisy=True)] * (RETRIES + 1),
                0.3: [fake_reading(1.6)] * 2, 0.4: [fake_reading(1.7)] * 2}
    read, pruned = [], {}

    def prune(row):
        got = one_shot.prune(global_ratio=row["asked"])
        pruned[id(got.model)] = row["asked"]
        return got

    def meter(net):
        asked = pruned[id(net)]
        read.append(asked)
        return by_ratio[asked][sum(a == asked for a in read) - 1]

    path = tmp_path / CANDIDATES_FILE
    waits = []
    winner = read_finalists(rows, prune, meter, 1.5, path, say=lambda text: None, wait=waits.append)
    # in proxy order; a short one read once, a NOISY one again after each of the rule's waits (2, 4, 8 s)
    assert FINALISTS == 4 and read == [0.6, *[0.2] * (RETRIES + 1), 0.3, 0.3, 0.4, 0.4] and waits == [2.0, 4.0, 8.0]
    assert winner is not None and winner.asked == 0.3
    assert [r["latency"] and r["latency"]["reached"] for r in rows] == [None, False, True, True, None, False]
    assert rows[2]["latency"]["speed_up"] == 1.6 and len(rows[2]["latency"]["readings"]) == PASS_READINGS
    assert [json.loads(line) for line in path.read_text().splitlines()] == rows  # the readings are recorded
    by_ratio.update({0.3: [fake_reading(1.4)], 0.4: [fake_reading(1.7), fake_reading(1.45)]})
    read.clear()
    none = read_finalists(rows, prune, meter, 1.5, path, say=lambda text: None, wait=waits.append)
    assert none is None  # none passed twice


class FakeMeter:
    """LatencyMeter's interface, reading no clock: a model's latency speed-up is (base params / its params)^0.75,
    or `FakeMeter.fixed` where set (the finalists' meter in the tests below)."""

    fixed = None

    def __init__(self, base, input_shape, device, dtype, batch, repeats=20):
        self.base, self.device, self.dtype, self.batch = base, torch.device(device), dtype, batch
        self.base_params = sum(p.numel() for p in base.parameters())

    def __call__(self, net) -> Reading:
        ratio = (self.base_params / sum(p.numel() for p in net.parameters())) ** 0.75
        return fake_reading(self.fixed if self.fixed is not None else ratio)


def _latency_search(tmp_path, monkeypatch, finalists_read: float):
    from prune_runner.pruning import latency_target
    from prune_runner.run import search_stage

    monkeypatch.setattr(latency_target, "LatencyMeter", FakeMeter)  # the latency rule's meter
    monkeypatch.setattr(search_stage, "LatencyMeter", type("Finalists", (FakeMeter,), {"fixed": finalists_read}))
    run_dir = tmp_path / "run"
    done = run_cli(["model=resnet20", "method=l1", "prune.target=latency", "prune.speed_up=1.5",
                    "prune.allocation=search", "prune.search.candidates=3", "prune.search.recalibration_batches=2",
                    "eval.latency=false", "schedule.finetune.epochs=0", "schedule.pretrain.epochs=1",
                    "dataset.train_limit=256", f"run_dir={run_dir}", f"out_root={tmp_path / 'out'}", *FAST],
                   cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    rows = [json.loads(line) for line in (run_dir / "prune" / CANDIDATES_FILE).read_text().splitlines()]
    return results_of(run_dir), rows, done


def test_a_latency_target_search_keeps_a_finalist_that_reaches_it(tmp_path, monkeypatch):
    results, rows, done = _latency_search(tmp_path, monkeypatch, finalists_read=1.6)
    s, lat = results["search"], results["search"]["latency"]
    macs_target = lat["uniform_stop"]["macs_speed_up"]
    assert lat["target"] == 1.5 and lat["macs_target"] == macs_target > 1.0
    assert all(abs(r["speed_up"] / macs_target - 1) <= MACS_TOLERANCE for r in rows)  # drawn at the uniform stop
    read = [r for r in rows if r["latency"] is not None]
    assert len(read) == min(FINALISTS, len(rows)) and all(r["latency"]["reached"] for r in read)
    best = max(rows, key=lambda r: (r["proxy"], -r["index"]))
    assert lat["won"] == "finalist" and s["winner"] == best["index"] and s["winner_proxy"] == best["proxy"]
    assert [f["index"] for f in lat["finalists"]] == [r["index"] for r in sorted(read, key=lambda r: -r["proxy"])]
    assert results["target"]["kind"] == "latency" and results["target"]["reached"] == 1.6
    assert results["target"]["decided"] == "confirmed clean"
    assert abs(results["speed_up"] / macs_target - 1) <= MACS_TOLERANCE
    assert "candidates are drawn there" in done.stdout


def test_a_latency_target_search_falls_back_to_the_uniform_stop_when_no_finalist_reaches_it(tmp_path, monkeypatch):
    results, rows, done = _latency_search(tmp_path, monkeypatch, finalists_read=1.2)
    s, lat = results["search"], results["search"]["latency"]
    assert lat["won"] == "uniform at the latency stop" and s["winner"] is None
    assert s["winner_kind"] == "uniform at the latency stop" and 0 <= s["winner_proxy"] <= 1
    assert not any(f["reached"] for f in lat["finalists"]) and len(lat["finalists"]) == min(FINALISTS, len(rows))
    assert results["speed_up"] == pytest.approx(lat["uniform_stop"]["macs_speed_up"])  # the rule's own model
    assert results["target"]["reached"] == lat["uniform_stop"]["speed_up"] >= 1.5
    assert "no finalist reached the 1.5x latency target" in done.stdout
