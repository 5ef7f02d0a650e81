"""One run: its stages, the run directory that holds them, and resuming.

pipeline.py     the stage loop: the run directory says what each stage needs, the stage functions compute it
rundir.py       the run directory's one owner: done, reused, skipped or run; adopt, publish, commit
stages.py       the stage functions (pretrain, sparse_train, prune, finetune, eval) over the run state
search_stage.py the prune stage's side of prune.allocation=search: the holdout proxy, the winner kept
preflight.py    before the first stage: the pre-flight check of the model and method (pruning/preflight.py)
state.py        the run state the stages share
records.py      a stage's folder, its completion record, and the stage cache across runs
checkpoint.py   the checkpoint format: pruning history + state dict, loaded with weights_only=True
files.py        atomic writes and JSON reads
locks.py        one writer per run directory
distributed.py  DDP set-up, broadcasts and barriers
"""
