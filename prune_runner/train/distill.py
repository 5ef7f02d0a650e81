"""Knowledge distillation for fine-tuning (Hinton et al. 2015): the pruned student also matches the
softened outputs of the unpruned teacher.

loss = (1 - alpha) * CE(student, y) + alpha * T^2 * KL(softmax(teacher / T) || softmax(student / T))

The T^2 factor keeps the soft term's gradient on the scale of the hard term's when T changes.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


def distill_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, y: torch.Tensor,
                 alpha: float, temperature: float) -> torch.Tensor:
    t = temperature
    hard = F.cross_entropy(student_logits, y)
    soft = F.kl_div(F.log_softmax(student_logits.float() / t, dim=1), F.log_softmax(teacher_logits.float() / t, dim=1),
                    reduction="batchmean", log_target=True)
    return (1.0 - alpha) * hard + alpha * (t * t) * soft


class Distiller:
    """A frozen teacher in eval mode and the loss above; called as criterion(x, logits, y).

    The teacher is never wrapped in DDP and never trained: each rank runs its own copy on its own shard,
    under the autocast the caller opened (train_epoch's).
    """

    def __init__(self, teacher: nn.Module, alpha: float, temperature: float):
        self.teacher = teacher.eval()
        for p in self.teacher.parameters():
            p.requires_grad_(False)
        self.alpha, self.temperature = alpha, temperature

    def __call__(self, x: torch.Tensor, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        self.teacher.eval()  # stays in eval mode even if someone calls .train() on a parent
        with torch.no_grad():
            teacher_logits = self.teacher(x)
        return distill_loss(logits, teacher_logits, y, self.alpha, self.temperature)
