"""Distillation from the unpruned detector while a pruned (or gated) one trains.

``DistillHook(teacher_config, teacher_checkpoint, weight)`` builds the teacher (the
unpruned detector, frozen, eval mode) and adds ``loss_distill`` to the student's losses:
the dense head's class predictions (RetinaNet's / RTMDet's ``bbox_head``, a two-stage
detector's ``rpn_head``), per anchor and class, pulled towards the teacher's on the
same images. Those outputs have the same shape whatever the student's widths, so the
same hook serves a GDP phase (the gated model) and the fine-tune of any pruned export,
which lets a comparison apply it to every method alike.

The loss is the binary KL divergence of the sigmoid class probabilities,
``sum(BCE(s, sigmoid(t)) - H(sigmoid(t)))`` over levels, anchors and classes, divided
by the number of the teacher's confident predictions (probability above 0.5, at least
one), as focal loss divides by the positive anchors; 0 when the student predicts what
the teacher does. Heads with softmax classifiers are refused with the reason.

Add to a config::

    custom_hooks = [..., dict(type='DistillHook', teacher_config='base.py',
                              teacher_checkpoint='base.pth', weight=1.0)]
"""
from __future__ import annotations

from typing import List, Optional, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
from mmengine.hooks import Hook

DENSE_HEADS = ('bbox_head', 'rpn_head')


def dense_head(model: nn.Module) -> nn.Module:
    """The detector's dense head whose class predictions are distilled (see the module
    docstring); a clear error when it has none or it classifies with a softmax."""
    for name in DENSE_HEADS:
        head = getattr(model, name, None)
        if head is not None and hasattr(head, 'cls_out_channels'):
            if not getattr(head, 'use_sigmoid_cls', True):
                raise ValueError(f'DistillHook: {type(head).__name__} classifies with a '
                                 'softmax; only sigmoid class predictions are distilled')
            return head
    raise ValueError(f'DistillHook: {type(model).__name__} has no dense head '
                     f'({" or ".join(DENSE_HEADS)}) with class predictions to distill')


def distill_loss(student: Sequence[torch.Tensor], teacher: Sequence[torch.Tensor]
                 ) -> torch.Tensor:
    """Binary KL divergence of sigmoid class logits, level by level (see the module
    docstring)."""
    total, confident = 0.0, 0.0
    for s, t in zip(student, teacher):
        if s.shape != t.shape:
            raise ValueError(f'DistillHook: student and teacher class predictions differ in '
                             f'shape ({tuple(s.shape)} vs {tuple(t.shape)}); the student '
                             'must predict the same classes and anchors')
        p = torch.sigmoid(t)
        total = total + (F.binary_cross_entropy_with_logits(s, p, reduction='sum')
                         - F.binary_cross_entropy_with_logits(t, p, reduction='sum'))
        confident = confident + (p > 0.5).sum()
    return total / torch.clamp(torch.as_tensor(confident, dtype=torch.float32), min=1.0)


class DistillHook(Hook):
    """Adds ``weight`` x :func:`distill_loss` against the teacher (``teacher_config``'s
    model with ``teacher_checkpoint``) to the training losses of the runner's model.

    Contract: the teacher is built once, before training, on the student's device; it
    never trains (no gradient, eval mode, outside the optimizer) and is not saved in
    checkpoints. The student's loss is wrapped on the model itself (its ``loss``), so
    DDP and mmengine's train step run unchanged."""

    priority = 'NORMAL'

    def __init__(self, teacher_config: str, teacher_checkpoint: str, weight: float = 1.0):
        if weight <= 0:
            raise ValueError(f'DistillHook: weight must be > 0, got {weight}')
        self.teacher_config, self.teacher_checkpoint = teacher_config, teacher_checkpoint
        self.weight = float(weight)
        self.teacher: Optional[nn.Module] = None

    def build_teacher(self, device) -> nn.Module:
        from mmdet.registry import MODELS
        from mmengine.config import Config
        from mmengine.runner import load_checkpoint
        cfg = Config.fromfile(self.teacher_config)
        teacher = MODELS.build(cfg.model)
        load_checkpoint(teacher, self.teacher_checkpoint, map_location='cpu', strict=False)
        teacher.to(device).eval()
        for p in teacher.parameters():
            p.requires_grad_(False)
        dense_head(teacher)  # refuse a teacher without sigmoid class predictions early
        return teacher

    def before_train(self, runner) -> None:
        from .detector import unwrap
        student = unwrap(runner.model)
        dense_head(student)  # refuse a student without one before building anything
        self.teacher = self.build_teacher(next(student.parameters()).device)
        teacher, weight = self.teacher, self.weight
        plain_loss = student.loss

        def loss(inputs, data_samples):
            captured: List[tuple] = []
            # (looked up each time: a shrink after GDP's cut may rebuild the head's layers)
            handle = dense_head(student).register_forward_hook(
                lambda m, a, out: captured.append(out))
            try:
                losses = plain_loss(inputs, data_samples)
            finally:
                handle.remove()
            with torch.no_grad():
                target = dense_head(teacher)(teacher.extract_feat(inputs))
            losses['loss_distill'] = weight * distill_loss(captured[0][0], target[0])
            return losses

        student.loss = loss
