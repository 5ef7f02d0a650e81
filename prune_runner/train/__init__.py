"""Training: the epoch loop and evaluation, distillation, and BatchNorm re-estimation.

loop.py      train_epoch, evaluate, optimizer and schedule, the fast paths (channels_last, AMP, compile)
distill.py   knowledge distillation from the unpruned model (finetune.distill)
batchnorm.py BatchNorm statistics re-estimated from training batches: after an epoch (slow layers), after pruning
"""
