"""One run: its stages, the run directory that holds them, and resuming.

pipeline.py     the stage loop: each configured stage is done, reused from the cache, or run
stages.py       the stage functions (pretrain, sparse_train, prune, finetune, eval) over the run state
state.py        the run state the stages share
records.py      a stage's folder, its completion record, and the stage cache across runs
checkpoint.py   the checkpoint format: pruning history + state dict, loaded with weights_only=True
files.py        atomic writes and JSON reads
locks.py        one writer per run directory
distributed.py  DDP set-up, broadcasts and barriers
"""
