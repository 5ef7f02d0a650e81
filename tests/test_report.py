"""Report: scanning run folders, combining seeds, report.md / tradeoff.png, the prune-report CLI, plots."""

from __future__ import annotations

import json
import statistics
from pathlib import Path

import numpy as np
import pytest
from conftest import run_main

from prune_runner import report_cli
from prune_runner.errors import UserError
from prune_runner.report import aggregate, load_reference, scan_runs, write_report
from prune_runner.report.plots import plot_importance, plot_tradeoff

REPO = Path(__file__).resolve().parents[1]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def write_run(
    root: Path, rel: str, method: str, speed_up: float, seed: int, final_acc: float, latency: bool = False,
    setup: dict | None = None,
) -> Path:
    run_dir = root / rel
    (run_dir / ".hydra").mkdir(parents=True)
    (run_dir / "pretrain").mkdir()
    base_macs, base_params = 41_000_000, 272_474
    results = {
        "run_dir": f"/elsewhere/{rel}",
        "choices": {"dataset": "digits", "model": "resnet20", "method": method},
        "overrides": f"prune.speed_up={speed_up:g},schedule=tiny",
        "seed": seed,
        "base": {"acc": 0.95, "macs": base_macs, "params": base_params},
        "pruned": {"acc": 0.80, "macs": base_macs / speed_up, "params": base_params // 2},
        "final": {"acc": final_acc, "macs": base_macs / speed_up, "params": base_params // 2},
        "acc_delta": final_acc - 0.95,
        "target_speed_up": speed_up,
        "speed_up": speed_up + 0.03,
        "params_ratio": 0.5,
        "latency": None,
    }
    if setup is not None:
        results["setup"] = setup
    if latency:
        ms = {"1": {"ms": 1.2, "ms_per_image": 1.2}, "64": {"ms": 64.0, "ms_per_image": 1.0}}
        results["latency"] = {
            "device": "cpu",
            "batch_sizes": [1, 64],
            "base": ms,
            "final": ms,
            "speed_up": {"1": 1.5, "64": 1.9},
        }
    (run_dir / "results.json").write_text(json.dumps(results))
    return run_dir


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    root = tmp_path / "outputs"
    write_run(root, "digits/group_norm/su2/seed0", "group_norm", 2.0, 0, 0.90, latency=True)
    write_run(root, "digits/group_norm/su2/seed1", "group_norm", 2.0, 1, 0.92)
    write_run(root, "digits/group_norm/su3/seed0", "group_norm", 3.0, 0, 0.88)
    write_run(root, "digits/l1/su2/seed0", "l1", 2.0, 0, 0.89)
    write_run(root, "digits/l1/su3/seed0", "l1", 3.0, 0, 0.85)
    crashed = root / "digits/l1/su4/seed0"  # started, never finished: Hydra folder and a stage, no results
    (crashed / ".hydra").mkdir(parents=True)
    (crashed / "pretrain").mkdir()
    return root


def table_rows(markdown: str) -> list[list[str]]:
    return [
        [c.strip() for c in line.strip("|").split(" | ")]
        for line in markdown.splitlines()
        if line.startswith("| digits")
    ]


def test_scan_finds_finished_and_incomplete_runs(tree: Path):
    runs, incomplete = scan_runs(tree)
    assert len(runs) == 5
    assert incomplete == [tree / "digits/l1/su4/seed0"]
    # run_dir is where the run is now, not where it was written
    assert all(Path(r["run_dir"]).is_relative_to(tree) for r in runs)


def test_aggregate_combines_seeds_as_mean_and_sample_std(tree: Path):
    rows = aggregate(scan_runs(tree)[0])
    expected = [("group_norm", 2), ("group_norm", 1), ("l1", 1), ("l1", 1)]
    assert [(r["method"], r["n"]) for r in rows] == expected
    two_seeds = rows[0]
    assert two_seeds["seeds"] == [0, 1]
    assert two_seeds["final_acc"].mean == pytest.approx(91.0)
    assert two_seeds["final_acc"].std == pytest.approx(statistics.stdev([90.0, 92.0]))
    assert two_seeds["acc_delta"].mean == pytest.approx(-4.0)  # percentage points
    assert two_seeds["speed_up"].mean == pytest.approx(2.03)
    # latency of the one seed that measured it, at each batch it measured
    assert two_seeds["latency"][64].mean == pytest.approx(1.9) and two_seeds["latency"][1].mean == pytest.approx(1.5)
    assert two_seeds["latency"][64].n == 1
    single = rows[1]
    assert single["final_acc"].std is None and single["latency"] == {}


def test_runs_of_different_setups_are_not_combined_and_a_rerun_is_not_a_seed(tmp_path: Path):
    root = tmp_path / "outputs"
    fresh = {"key": "aaa", "stages_not_run": [], "base_checkpoint": None, "resume_from": None}
    write_run(root, "a/seed0", "group_norm", 2.0, 0, 0.90, setup=fresh)
    write_run(root, "a/seed1", "group_norm", 2.0, 1, 0.92, setup=fresh)
    write_run(root, "copy/seed0", "group_norm", 2.0, 0, 0.90, setup=fresh)  # the same seed rerun elsewhere
    write_run(root, "ckpt/seed0", "group_norm", 2.0, 0, 0.70,
              setup={**fresh, "key": "bbb", "base_checkpoint": "my_resnet20.pt"})
    write_run(root, "nosparse/seed0", "group_norm", 2.0, 0, 0.60,
              setup={**fresh, "key": "ccc", "stages_not_run": ["sparse_train"]})
    write_run(root, "other/seed0", "group_norm", 2.0, 0, 0.50, setup={**fresh, "key": "ddd"})  # e.g. dataset.root
    rows = aggregate(scan_runs(root)[0])
    by_label = {r["overrides"]: r for r in rows}
    base = "prune.speed_up=2,schedule=tiny"
    assert set(by_label) == {base + "; setup aaa", base + "; setup ddd", base + "; base_checkpoint=my_resnet20.pt",
                             base + "; without sparse_train"}
    fresh_row = by_label[base + "; setup aaa"]
    assert fresh_row["n"] == 2 and fresh_row["seeds"] == [0, 1]  # the rerun of seed 0 is not a third seed
    assert fresh_row["reruns"] == [str(root / "copy/seed0")]
    assert by_label[base + "; base_checkpoint=my_resnet20.pt"]["final_acc"].mean == pytest.approx(70.0)
    assert by_label[base + "; without sparse_train"]["final_acc"].mean == pytest.approx(60.0)
    text = write_report(root)["report"].read_text()
    assert "1 rerun(s) of a seed already counted" in text and "`copy/seed0`" in text


def test_write_report_table_note_and_plot(tree: Path, tmp_path: Path):
    out = tmp_path / "report_out"
    paths = write_report(tree, out)
    assert paths == {"report": out / "report.md", "plot": out / "tradeoff.png"}
    text = paths["report"].read_text()
    rows = table_rows(text)
    assert len(rows) == 4
    assert ("| dataset | model | method | allocation | overrides | seeds (n) | base acc % | pruned acc % | final acc % "
            "| Δ acc (pp) | target speed-up | MACs speed-up | latency speed-up, bs 1 (cpu) | latency speed-up, bs 64 "
            "(cpu) | params ratio |") in text  # a column per latency batch, the batch in its header
    by_key = {(r[2], r[4]): r for r in rows}
    two_seeds = by_key[("group_norm", "prune.speed_up=2,schedule=tiny")]
    assert two_seeds[3] == "uniform"  # no config.json: the default allocation
    assert two_seeds[5] == "2 (0, 1)"
    assert two_seeds[6] == "95.00 ± 0.00"  # std shown for every 2-seed column, even when 0
    assert two_seeds[7] == "80.00 ± 0.00"  # right after pruning
    assert two_seeds[8] == f"91.00 ± {statistics.stdev([90.0, 92.0]):.2f}"
    assert two_seeds[9] == "-4.00 ± 1.41"
    assert two_seeds[10] == "2x"  # the target
    assert two_seeds[11] == "2.03x ± 0.00"
    assert two_seeds[12:14] == ["1.50x", "1.90x"]
    assert two_seeds[14] == "0.500 ± 0.000"
    assert by_key[("l1", "prune.speed_up=3,schedule=tiny")][12:14] == ["-", "-"]
    assert "5 finished run(s) in 4 row(s); 1 incomplete run(s) skipped (no results.json)." in text
    assert "Skipped 1 incomplete run(s)" in text and "digits/l1/su4/seed0" in text
    assert "Published reference" not in text  # no reference rows for digits/resnet20

    png = paths["plot"].read_bytes()
    assert png[:8] == PNG_MAGIC
    import matplotlib.image

    image = matplotlib.image.imread(paths["plot"])
    assert image.shape[0] > 0 and image.shape[1] > 0
    assert not [p for p in out.iterdir() if p.name.endswith(".tmp")]


def test_unreadable_results_and_container_folders(tmp_path: Path):
    root = tmp_path / "runs"
    write_run(root, "a", "group_norm", 2.0, 0, 0.9)
    broken = write_run(root, "b", "group_norm", 2.0, 1, 0.9)
    (broken / "results.json").write_text('{"choices": {"dataset": "dig')  # truncated write
    (root / "pretrain").mkdir()  # e.g. a shared cache: root holds finished runs, so it is not a run itself
    runs, incomplete = scan_runs(root)
    assert len(runs) == 1 and incomplete == [broken]


def test_missing_or_empty_root(tmp_path: Path):
    with pytest.raises(UserError, match="not found"):
        scan_runs(tmp_path / "nope")
    with pytest.raises(UserError, match="no finished runs"):
        write_report(tmp_path)


def test_reference_points_are_sourced_and_plotted(tmp_path: Path):
    reference = load_reference()
    assert {(r["dataset"], r["model"]) for r in reference} >= {("cifar10", "resnet56"), ("cifar100", "vgg19_bn")}
    for ref in reference:
        assert 0 < ref["pruned_acc"] <= 100 and 0 < ref["base_acc"] <= 100 and ref["speed_up"] > 1
    runs = [
        json.loads((write_run(tmp_path, f"r{i}", "group_norm", su, 0, 0.93) / "results.json").read_text())
        for i, su in enumerate((2.0, 2.5))
    ]
    for run in runs:
        run["choices"].update(dataset="cifar10", model="resnet56")
        run["run_dir"] = "x"
    path = plot_tradeoff(aggregate(runs), tmp_path / "ref.png", reference=reference)
    assert path.read_bytes()[:8] == PNG_MAGIC


def test_plot_importance_histograms(tmp_path: Path):
    torch = pytest.importorskip("torch")
    sparse = torch.cat([torch.full((90,), 1e-6), torch.rand(10) + 0.5, torch.zeros(3)])  # mass near zero
    path = plot_importance({"layer1": sparse, "layer2": np.linspace(0.1, 1.0, 16)}, tmp_path / "imp.png", "t")
    assert path.read_bytes()[:8] == PNG_MAGIC
    assert plot_importance(np.ones(5), tmp_path / "flat.png", "flat").read_bytes()[:8] == PNG_MAGIC
    assert plot_importance({}, tmp_path / "empty.png", "empty").exists()


def run_cli(*args: str):
    """prune-report ARGS in this process (its main returns the exit code), 200 columns wide."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("COLUMNS", "200")  # long paths stay on one line
        return run_main(report_cli.main, args)


def test_cli_writes_report(tree: Path, tmp_path: Path):
    out = tmp_path / "cli_out"
    proc = run_cli(str(tree), "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    assert (out / "report.md").exists() and (out / "tradeoff.png").exists()
    assert f"report: {out / 'report.md'}" in proc.stdout
    assert "group_norm" in proc.stdout and "1 incomplete run(s) skipped" in proc.stdout


def test_cli_missing_and_empty_dir(tmp_path: Path):
    missing = tmp_path / "does_not_exist"
    proc = run_cli(str(missing))
    assert proc.returncode == 2
    assert len(proc.stderr.strip().splitlines()) == 1 and str(missing) in proc.stderr
    empty = tmp_path / "empty"
    empty.mkdir()
    proc = run_cli(str(empty))
    assert proc.returncode == 1
    assert "no finished runs" in proc.stderr


def test_tradeoff_with_26_series_stays_within_the_figure(tmp_path: Path):
    """8 models with 3 or 4 methods each: every panel, label and the legend lie inside the figure, and
    each method has its own colour and marker, the same in every panel."""
    from prune_runner.pruning.methods import list_methods
    from prune_runner.report import Stat
    from prune_runner.report.plots import method_styles, tradeoff_figure

    methods = list_methods()
    pairs = [("cifar10", "resnet56"), ("cifar100", "vgg19_bn")] + [("digits", f"model_{i}") for i in range(6)]
    rows, k = [], 0
    for i, (dataset, model) in enumerate(pairs):
        for _ in range(4 if i < 2 else 3):  # 2 x 4 + 6 x 3 = 26 series
            for speed_up in (1.5, 2.0):
                rows.append({"dataset": dataset, "model": model, "method": methods[k % len(methods)],
                             "speed_up": Stat(speed_up, None, 1), "final_acc": Stat(90 - 5 * speed_up, 0.5, 2),
                             "base_acc": Stat(93.0, None, 1)})
            k += 1
    fig = tradeoff_figure(rows, load_reference())
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    assert sum(len(ax.containers) for ax in fig.axes) == 26

    inside = fig.bbox.padded(1)  # 1 px of rounding
    boxes = [fig._supxlabel.get_window_extent(renderer), fig._supylabel.get_window_extent(renderer),
             fig._suptitle.get_window_extent(renderer)]
    boxes += [ax.get_tightbbox(renderer) for ax in fig.axes if ax.get_visible()]  # title, ticks, annotations
    assert len(boxes) == 3 + len(pairs)
    for box in boxes:
        assert inside.contains(box.x0, box.y0) and inside.contains(box.x1, box.y1), box
    (legend,) = fig.legends
    legend_box = legend.get_window_extent(renderer)
    assert inside.contains(legend_box.x0, legend_box.y0) and inside.contains(legend_box.x1, legend_box.y1)
    assert not any(legend_box.overlaps(box) for box in boxes)  # it covers no panel and no axis label
    labels = [t.get_text() for t in legend.get_texts()]
    assert sorted(labels) == sorted([*methods, "base (unpruned)", "published reference"])
    styles = method_styles(methods)
    assert len({(s["color"], s["marker"]) for s in styles.values()}) == len(methods)
    for ax in fig.axes:  # a method looks the same in every panel
        for container in ax.containers:
            line = container.lines[0]
            method = next(m for m, s in styles.items() if s["marker"] == line.get_marker())
            assert line.get_color() == styles[method]["color"]
    path = plot_tradeoff(rows, tmp_path / "many.png", reference=[])
    assert path.read_bytes()[:8] == PNG_MAGIC
