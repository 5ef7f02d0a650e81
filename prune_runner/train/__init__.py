"""Training: the epoch loop and evaluation, distillation, and BatchNorm re-estimation.

loop.py      train_epoch, evaluate, optimizer and schedule, the fast paths (channels_last, AMP, compile)
distill.py   knowledge distillation from the unpruned model (finetune.distill)
bn_stats.py  BatchNorm statistics re-estimated after an epoch (slow layers)
bn_recal.py  BatchNorm statistics re-estimated after pruning
"""
