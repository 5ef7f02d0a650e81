"""The benchmark scripts: their arithmetic on known inputs (a fake clock, made-up timings), and end-to-end runs in
this process (tiny settings) whose printed figures must agree with each other. No timing is asserted."""

from __future__ import annotations

import math
import re
import sys

import pytest
from conftest import run_main, script_main


def _script(name: str):
    script_main(name)
    return sys.modules[f"script_{name}"]


class FakeClock:
    """time.perf_counter for a script: `advance` moves it on."""

    def __init__(self):
        self.now = 100.0

    def perf_counter(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.mark.parametrize("limit, timed, seconds, extrapolated", [
    (None, 10, 5.0 + 9 * 1.0, False),  # the whole epoch, as measured
    (3, 3, 5.0 + 9 * 1.0, True),  # first step once, then the mean of steps 2-3 for each of the other nine
    (1, 1, 5.0 * 10, True),  # one step: it stands for all ten
])
def test_bench_epoch_extrapolates_from_the_first_steps(monkeypatch, limit, timed, seconds, extrapolated):
    bench = _script("bench_epoch")
    clock = FakeClock()
    monkeypatch.setattr(bench, "time", clock)

    def run(steps, mark_first):  # a first step of 5 s (the loader's start-up), then 1 s a step
        for step in range(steps):
            clock.advance(5.0 if step == 0 else 1.0)
            if step == 0 and mark_first is not None:
                mark_first()

    result = bench.time_epoch(run, bench.torch.device("cpu"), steps_per_epoch=10, limit=limit)
    assert (result.timed_steps, result.extrapolated) == (timed, extrapolated)
    assert result.seconds == pytest.approx(seconds)


def test_bench_epoch_runs_both_paths_and_its_figures_agree():
    images, batch = 128, 16
    done = run_main(script_main("bench_epoch"),
                    ["--images", images, "--batch", batch, "--limit-steps", "2", "--workers", "0"])
    assert done.returncode == 0, done.stderr[-3000:]
    out = done.stdout
    assert "8 steps/epoch" in out and "extrapolated from the first 2 steps" in out  # 128 / 16; only 2 timed
    seconds = {}
    for path in ("reference", "fast"):
        (epoch,) = re.findall(rf"^epoch 1 {path}\s*: +(\d+\.\d+) s/epoch, +(\d+\.\d+) img/s", out, re.MULTILINE)
        (median,) = re.findall(rf"^{path}\s*: +(\d+\.\d+) s/epoch, +(\d+\.\d+) img/s \(median of 1", out,
                               re.MULTILINE)
        assert median == epoch  # one epoch: the median is that epoch
        seconds[path], rate = float(median[0]), float(median[1])
        assert seconds[path] > 0
        assert rate == pytest.approx(images / seconds[path], rel=0.01)  # 8 steps x 16 images a second...
    (ratio,) = re.findall(r"^ratio reference/fast: (\d+\.\d+)x", out, re.MULTILINE)
    assert float(ratio) == pytest.approx(seconds["reference"] / seconds["fast"], abs=0.01 + 0.01 * float(ratio))


@pytest.mark.slow
def test_bench_latency_target_prints_both_targets_and_the_goals():
    done = run_main(script_main("bench_latency_target"), ["--models", "resnet20", "--batches", "1", "--targets", "1.2"])
    assert done.returncode == 0, done.stderr[-3000:]
    assert re.search(r"^resnet20\s+1\s+latency 1.2x\s+\d+\.\d+\s+\d+\.\d+ \[", done.stdout, re.MULTILINE), done.stdout
    assert re.search(r"^resnet20\s+1\s+macs 1.2x\s+1\.2\d", done.stdout, re.MULTILINE), done.stdout
    assert "goal, latency rows >= 0.95x target" in done.stdout
    assert re.search(r"^goal, reading time <= 1.0 fine-tuning epoch: [01]/1 met", done.stdout, re.MULTILINE)


def test_bench_latency_target_scales_a_few_training_steps_to_an_epoch(monkeypatch):
    """With a fake clock (each training step 0.5 s): EPOCH_BATCHES timed steps scaled to 50,000 images."""
    bench = _script("bench_latency_target")
    clock = FakeClock()
    monkeypatch.setattr(bench, "time", clock)
    model = bench.torch.nn.Sequential(bench.torch.nn.Flatten(), bench.torch.nn.Linear(3 * 4 * 4, 10))
    step = model.forward
    monkeypatch.setattr(model, "forward", lambda x: clock.advance(0.5) or step(x))
    assert bench.epoch_seconds(model, 4, 10) == pytest.approx(0.5 * math.ceil(50_000 / bench.FINETUNE_BATCH))


def test_bench_latency_target_load_goal_counts_rows_within_the_spread_or_too_busy(capsys):
    bench = _script("bench_latency_target")

    def row(macs, decided="confirmed clean", error=None):
        return {"model": "m", "kind": "latency", "target": 1.5, "macs_speed_up": macs, "decided": decided,
                "error": error}

    idle = [(row(3.0), 1), (row(3.0), 64), (row(3.0), 8), ({**row(3.0), "kind": "macs"}, 1)]
    loaded = [(row(4.4, "fallback to prediction"), 1), (row(4.6), 64),
              (row(None, bench.TOO_BUSY, "the machine ..."), 8), ({**row(9.0), "kind": "macs"}, 1)]
    bench.compare_load(idle, loaded)
    out = capsys.readouterr().out
    assert "within 1.5x of idle or too busy: 2/3 met" in out  # 4.4 / 3 and "too busy" count; 4.6 / 3 does not
    assert "m batch 64 1.5x: MACs x 3.00 idle, 4.60 loaded (1.53x apart" in out
    assert "m batch 8 1.5x: too busy (the machine ...)" in out


def _padded_timings(block: int, widths) -> dict:
    """{width: MACs per microsecond} of a device whose time is that of the width padded to `block`."""
    return {w: w * w / (-(-w // block) * block) ** 2 for w in widths}


@pytest.mark.parametrize("block", [1, 4, 8])
def test_bench_round_to_finds_the_block_the_timings_step_at(block):
    bench = _script("bench_round_to")
    chosen, fits = bench.choose(_padded_timings(block, range(40, 73)), gain=0.1)
    assert chosen == block
    assert fits[block] == pytest.approx(0.0, abs=1e-9)  # the padded model explains these timings exactly
    assert all(fits[m] > 0.01 for m in bench.MULTIPLES if m > block)  # coarser blocks do not


def test_bench_round_to_takes_a_coarser_block_only_for_its_gain():
    bench = _script("bench_round_to")
    timings = _padded_timings(8, range(40, 73))
    fits = {m: bench.padded_fit(timings, m) for m in bench.MULTIPLES}
    assert fits[8] < fits[4] < fits[1]
    # a gain so large that no coarser block wins keeps the smooth model
    assert bench.choose(timings, gain=1.0)[0] == 1


def test_bench_round_to_chooses_a_multiple():  # five widths, two samples each: a fraction of a second
    bench = _script("bench_round_to")
    done = run_main(bench.main, ["--widths", "14", "18", "--repeats", "2", "--batch", "1", "--size", "4"])
    assert done.returncode == 0, done.stderr[-3000:]
    chosen = []
    for kind in ("conv3x3", "conv1x1"):
        (line,) = re.findall(rf"^{kind}: spread .*$", done.stdout, re.MULTILINE)
        fits = {int(m): float(f) for m, f in re.findall(r"m=(\d+): (\d+\.\d+)", line)}
        assert sorted(fits) == list(bench.MULTIPLES) and all(math.isfinite(f) and f >= 0 for f in fits.values())
        chosen.append(int(line.rsplit("-> ", 1)[1]))
        rates = dict(re.findall(r"(\d+):(\d+)", done.stdout.split(line, 1)[1].splitlines()[1]))
        assert sorted(map(int, rates)) == [14, 15, 16, 17, 18] and all(float(r) > 0 for r in rates.values())
    (printed,) = re.findall(r"^round_to for \(cpu, fp32\): (\d+)", done.stdout, re.MULTILINE)
    assert int(printed) == max(chosen)  # the coarser of the two kinds


def test_latency_drift_reads_copies_on_their_own_and_with_the_meter(monkeypatch):
    from conftest import REPO

    monkeypatch.syspath_prepend(str(REPO / "scripts"))  # it imports bench_latency_target, as `python scripts/...` does
    from prune_runner.latency import meter

    drift = _script("latency_drift")
    found = drift.main(["--model", "resnet20", "--macs", "1.3", "--copies", "2", "--repeats", "4"])
    assert [len(r) for r in found["copies"]] == [3, 3] and len(found["meter"]) == 3
    assert all(r > 0 for rows in found["copies"] for r in rows) and all(r > 0 for r in found["meter"])
    assert meter.PLACEMENTS == 4  # restored after the one-copy readings


def test_latency_drift_reads_a_pair_fresh_and_after_a_training_step_and_puts_the_meters_allocator_back(monkeypatch):
    from conftest import REPO

    monkeypatch.syspath_prepend(str(REPO / "scripts"))
    from prune_runner.latency import meter

    drift = _script("latency_drift")
    keep = meter.keep_freed_memory
    found = drift.main(["--mode", "glibc default", "--model", "resnet20", "--macs", "2.5", "--batch", "8",
                        "--repeats", "6"])
    assert set(found) == {"fresh", "after training"}
    assert all(1.1 < ratio < 3.0 for ratio in found.values()), found  # 2.5x fewer MACs reads faster, not 2.5x
    assert meter.keep_freed_memory is keep  # the script's "glibc default" mode must not leak its stand-in
