"""scripts/bench_latency_noise.py runs end to end (tiny settings, no load processes; no ratio is asserted)."""

from __future__ import annotations

from conftest import run_main, script_main


def test_bench_latency_noise_prints_both_methods():
    done = run_main(script_main("bench_latency_noise"),
                    ["--trials", "1", "--repeats", "3", "--workers", "0", "--period", "0.05", "--batch", "1"])
    assert done.returncode == 0, done.stderr[-3000:]
    assert "sequential (old):" in done.stdout and "interleaved (new):" in done.stdout, done.stdout
