"""`prune-run` end to end on digits, in this process: every stage, results.json, resume.
(tests/test_cli_contract.py runs the installed console script as a subprocess.)"""

from __future__ import annotations

import json

import pytest
from conftest import FAST, results_of, run_cli

# speed-up targets kept small so the tiny schedule recovers accuracy; chance is 10% on digits
# make test runs a regularized and a plain method end to end (the smoke matrix covers every method's
# parts in seconds); the other three, ~30-40 s each on 2 cores, run under make test-slow
SLOW = pytest.mark.slow
E2E_METHODS = ["group_norm", pytest.param("slim", marks=SLOW), pytest.param("growing_reg", marks=SLOW), "l1",
               pytest.param("obdc", marks=SLOW)]


@pytest.fixture(scope="module")
def shared_root(tmp_path_factory):
    """One out_root for every method: the first run pretrains, the others reuse it from the stage cache.
    Which run is first depends on the selection (`make test` or `make test-slow`): `ran` lists them."""
    return tmp_path_factory.mktemp("e2e"), []


@pytest.mark.parametrize("method", E2E_METHODS)
def test_pipeline_end_to_end(shared_root, method):
    shared_root, ran = shared_root
    run_dir = shared_root / method
    args = ["model=resnet20", f"method={method}", "prune.speed_up=1.5", f"run_dir={run_dir}",
            f"out_root={shared_root / 'outputs'}", *FAST]
    proc = run_cli(args, cwd=shared_root)
    assert proc.returncode == 0, proc.stderr[-3000:]
    r = results_of(run_dir)
    assert r["choices"] == {"dataset": "digits", "model": "resnet20", "method": method}
    assert r["speed_up"] >= 1.5 and r["target_speed_up"] == 1.5
    assert r["final"]["macs"] < r["base"]["macs"] and r["final"]["params"] < r["base"]["params"]
    assert r["final"]["acc"] > 0.6, r  # well above the 10% of chance
    assert abs(r["acc_delta"] - (r["final"]["acc"] - r["base"]["acc"])) < 1e-12
    assert set(r["latency"]["speed_up"]) == {"1", "8"}
    assert r["setup"]["stages_not_run"] == [] and r["setup"]["base_checkpoint"] is None
    for stage in ("pretrain", "sparse_train", "prune", "finetune", "eval"):
        assert (run_dir / stage / "done.json").exists()
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert "finetune" in {row["stage"] for row in rows}  # pretrain may come from the stage cache
    if method in ("group_norm", "slim", "growing_reg"):
        assert any(row["stage"] == "sparse_train" and row["reg_coef"] > 0 for row in rows)
        config = json.loads((run_dir / "config.json").read_text())
        assert config["method"]["reg"] is not None  # the regularizer's default, filled in and recorded
    assert (run_dir / "sparsity.png").read_bytes()[:4] == b"\x89PNG"
    assert "top-1 acc" in proc.stdout

    first = not ran
    ran.append(method)
    if not first:
        assert "pretrain: reused from" in proc.stdout
        return
    again = run_cli(args, cwd=shared_root)  # the same command again: everything is finished
    assert again.returncode == 0, again.stderr[-2000:]
    assert again.stdout.count("finished earlier, skipped") == 5
    assert results_of(run_dir) == r
