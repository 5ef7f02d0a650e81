#!/usr/bin/env bash
# A folder of cheap, mixed runs for prune-report (docs of issue 28: what a user reads): CIFAR-style and timm models,
# several methods and overrides, two seeds and a rerun of one, a latency target, an allocation, a 3-trial Optuna
# search and a run that fails. Digits at 8 or 16 px on the tiny schedule: about 10-15 minutes on 2 CPU cores.
#
#   scripts/report_demo.sh [OUT]          # default OUT: outputs/report_demo
#   COLUMNS=120 prune-report OUT          # then the report: report.md, tradeoff.png, the console table
#
# Every command is an ordinary prune-run; the failed one (a latency target resnet20 cannot reach at batch 1) is
# expected to fail, and the script goes on.
set -u
OUT=${1:-outputs/report_demo}
read -r -a PR <<< "${PRUNE_RUN:-prune-run}"  # a command, e.g. PRUNE_RUN="nice -n 19 .venv/bin/prune-run"
LOG="${OUT%/}.log"  # what the runs print, beside the folder (prune-report reads only the folder)
# preflight_s: the pre-flight's trial pruning step on a busy shared machine can take longer than its 60 s default
COMMON=(schedule=tiny device=cpu progress=false eval.latency_repeats=3 eval.latency_batch=8 prune.preflight_s=600
        "out_root=$OUT")

run() { echo "+ ${PR[*]} $*" | tee -a "$LOG" >&2; "${PR[@]}" "$@" "${COMMON[@]}" >> "$LOG" 2>&1 || echo "(exit $?: $*)" >&2; }

# a sweep: two methods x two speed-ups on resnet20 (the stage cache pretrains once)
run -m model=resnet20 method=l1,group_norm prune.speed_up=1.5,2 model.input_size=8
# a second seed of one of them, and another model and method
run model=resnet20 method=group_norm prune.speed_up=2 model.input_size=8 seed=1
run model=resnet32 method=taylor prune.speed_up=2 model.input_size=8 eval.latency=false
run model=mobilenetv2_cifar method=l1 prune.speed_up=1.5 model.input_size=16 eval.latency=false
# how the pruning is spread over the layers: global instead of the default uniform
run model=resnet20 method=l1 prune.speed_up=2 model.input_size=8 prune.allocation=global eval.latency=false
# a latency target at batch 8, and one that cannot be reached (the failed run: no results.json)
run model=resnet20 method=l1 prune.target=latency prune.latency_batch=8 prune.speed_up=1.2 model.input_size=8
run model=resnet20 method=l1 prune.target=latency prune.speed_up=6 prune.round_to=auto model.input_size=8 \
    prune.iterative_steps=10 eval.latency=false
# timm models
run model=timm/resnet10t method=l1 prune.speed_up=1.5 model.input_size=16 eval.latency=false
run model=timm/resnet10t method=group_norm prune.speed_up=1.5 model.input_size=16 eval.latency=false
# a 3-trial Optuna search over the regularization strength and a boolean
run -m hydra/sweeper=optuna hydra.sweeper.n_trials=3 model=resnet20 method=group_norm prune.speed_up=2 \
    model.input_size=8 'method.reg=tag(log, interval(1e-5, 1e-2))' 'prune.restore_weight_scale=choice(true, false)' \
    eval.latency=false
# a rerun of a seed: the same run copied elsewhere (prune-report counts it once)
first=$(find "$OUT/digits/resnet20/l1" -maxdepth 3 -name seed0 -path '*prune.speed_up=2*' | grep -v allocation \
        | grep -v target | head -1)
[ -n "$first" ] && mkdir -p "$OUT/copied" && cp -r "$first" "$OUT/copied/"
echo "runs under $OUT: $(find "$OUT" -name results.json | wc -l) finished" >&2
