"""``GDPHook``: eps schedule, proximal step, FLOPs budget controller, logging, export.

Add to a config that builds a ``GDPDetector``::

    custom_hooks = [dict(type='GDPHook', flops_target=0.5)]
    optim_wrapper = dict(paramwise_cfg=dict(custom_keys={
        'gdp_gates': dict(lr_mult=1.0, decay_mult=0.0)}))
"""
from __future__ import annotations

import math
import os.path as osp
from typing import Optional

import torch
from mmengine.hooks import Hook

from .detector import find_gates, unwrap
from .flops import FlopsModel


class GDPHook(Hook):
    """Drives GDP training of the model's gates towards a FLOPs budget.

    Contract: before every train iteration sets ``eps`` on the geometric schedule
    ``eps_start -> eps_end`` over ``gdp_iters`` (default: the whole training);
    after every optimizer step applies the proximal soft-threshold
    ``a <- sign(a) max(|a| - lr_a * lambda * w_c, 0)`` with ``w_c`` each channel's
    FLOPs cost (relative to the full model) and adapts ``lambda``: multiplied by
    ``1 + lambda_rate`` while the exact FLOPs ratio is above ``flops_target``, by
    ``1 - lambda_rate`` below it, and no channel is removed once the ratio is at or
    below the target. ``min_channels`` channels per group always survive. Logs
    ``gdp/flops_ratio``, ``gdp/lambda``, ``gdp/eps``, ``gdp/zero_share`` and
    ``gdp/high_share`` (gates > 0.9). Its state is saved in checkpoints under
    ``'gdp_hook'`` and restored on resume. With ``export=True`` the pruned model is
    exported into ``<work_dir>/pruned`` after training.
    """

    priority = 'LOW'  # after the optimizer step of the train loop

    def __init__(self, flops_target: float = 0.5, eps_start: float = 1.0,
                 eps_end: float = 1e-4, gdp_iters: Optional[int] = None,
                 lambda_init: float = 1.0, lambda_rate: float = 0.02,
                 min_channels: int = 1, channel_divisor: int = 1,
                 warmup_iters: int = 0, log_interval: int = 50, export: bool = True,
                 interval: int = 1):
        if not 0 < flops_target <= 1:
            raise ValueError(f'GDPHook: flops_target must be in (0, 1], got {flops_target}')
        if eps_start <= 0 or eps_end <= 0:
            raise ValueError('GDPHook: eps_start and eps_end must be > 0')
        self.flops_target = flops_target
        self.eps_start, self.eps_end = eps_start, eps_end
        self.gdp_iters = gdp_iters
        self.lam = lambda_init
        self.lambda_rate = lambda_rate
        self.min_channels = min_channels
        self.channel_divisor = channel_divisor
        self.warmup_iters = warmup_iters
        self.log_interval = log_interval
        self.export = export
        self.interval = interval
        self.flops: Optional[FlopsModel] = None
        self.ratio = 1.0
        self.dead: Optional[torch.Tensor] = None  # gates zeroed by the proximal step
        self.history = []  # (iter, ratio, lambda, eps, zero_share, high_share)

    # -- helpers ---------------------------------------------------------------
    def _gates(self, runner):
        gates = find_gates(runner.model)
        if gates is None:
            raise RuntimeError('GDPHook needs a model built with type="GDPDetector" '
                               '(see configs/gdp/); this model has no GDP gates')
        return gates

    def eps_at(self, it: int, total: int) -> float:
        t = min(max(it - self.warmup_iters, 0) / max(total - self.warmup_iters, 1), 1.0)
        return self.eps_start * (self.eps_end / self.eps_start) ** t

    def _gate_lr(self, runner, gates) -> float:
        opt = runner.optim_wrapper.optimizer
        for group in opt.param_groups:
            if any(p is gates.a for p in group['params']):
                return group['lr']
        raise RuntimeError('GDPHook: the gate parameters are not in the optimizer')

    # -- hook points -------------------------------------------------------------
    def before_train(self, runner) -> None:
        model = unwrap(runner.model)
        self._gates(runner)
        self.flops = FlopsModel(model.gdp_graph)
        if self.gdp_iters is None:
            self.gdp_iters = runner.max_iters
        self._check_reachable(model)

    def _check_reachable(self, model) -> None:
        graph = model.gdp_graph
        alive = torch.zeros(graph.num_channels, dtype=torch.bool)
        for i, g in enumerate(graph.groups):
            alive[graph.offsets[i]:graph.offsets[i] + min(self.min_channels, g.size)] = True
        floor = self.flops.count(alive) / self.flops.full
        if floor > self.flops_target:
            raise ValueError(f'GDPHook: flops_target={self.flops_target} is unreachable with '
                             f'min_channels={self.min_channels}; the smallest reachable FLOPs '
                             f'ratio is {floor:.4f}')

    def before_train_iter(self, runner, batch_idx: int, data_batch=None) -> None:
        gates = self._gates(runner)
        gates.eps.fill_(self.eps_at(runner.iter, self.gdp_iters))
        if self.dead is None:  # first iteration, or just resumed: before the optimizer step
            self.dead = gates.a.detach() == 0

    @torch.no_grad()
    def after_train_iter(self, runner, batch_idx: int, data_batch=None, outputs=None) -> None:
        gates = self._gates(runner)
        a = gates.a
        # a gate at exactly 0 stays there (g'(0) = 0); optimizer momentum or weight
        # decay must not revive it
        a[self.dead] = 0
        if runner.iter < self.warmup_iters or runner.iter >= self.gdp_iters:
            self._log(runner, gates)
            return
        alive = a.detach() != 0
        self.ratio = self.flops.count(alive.cpu()) / self.flops.full
        if self.ratio > self.flops_target:
            w = self.flops.channel_weights(alive.cpu()) / self.flops.full
            # normalise so lambda means "threshold per unit of average channel cost"
            w = (w / w[alive.cpu()].mean().clamp_min(1e-12)).to(a)
            lr = self._gate_lr(runner, gates)
            new = torch.sign(a) * torch.clamp(a.abs() - lr * self.lam * w, min=0)
            new = self._keep_min_channels(gates, a, new)
            new = self._stop_at_target(a, new, lr * self.lam * w)
            a.copy_(new)
            self.ratio = self.flops.count((a != 0).cpu()) / self.flops.full
            self.dead = a.detach() == 0
            self.lam *= 1 + self.lambda_rate
        else:
            self.lam = max(self.lam * (1 - self.lambda_rate), 0.0)
        self._log(runner, gates)

    def _stop_at_target(self, old: torch.Tensor, new: torch.Tensor,
                        thresh: torch.Tensor) -> torch.Tensor:
        """Zero only as many newly-zeroed channels as the budget needs.

        Channels that reach 0 in the same step are taken in order of how far the
        threshold overshoots them; the rest keep their value, so one step never
        carries the FLOPs ratio far below the target.
        """
        dropped = ((old != 0) & (new == 0)).nonzero().flatten()
        if dropped.numel() == 0:
            return new
        if self.flops.count((new != 0).cpu()) / self.flops.full >= self.flops_target:
            return new
        order = dropped[torch.argsort(old.abs()[dropped] - thresh[dropped])]
        alive = (new != 0).cpu()
        lo, hi = 0, order.numel()  # find the fewest zeroed that reach the target
        while lo < hi:
            mid = (lo + hi) // 2
            trial = alive.clone()
            trial[order[mid + 1:].cpu()] = True
            if self.flops.count(trial) / self.flops.full <= self.flops_target:
                hi = mid
            else:
                lo = mid + 1
        restore = order[lo + 1:]
        new[restore] = old[restore]
        return new

    def _keep_min_channels(self, gates, old: torch.Tensor, new: torch.Tensor) -> torch.Tensor:
        if self.min_channels <= 0:
            return new
        for sl in gates.group_slices:
            seg = new[sl]
            n = min(self.min_channels, seg.numel())
            if int((seg != 0).sum()) < n:
                top = old[sl].abs().topk(n).indices
                seg[top] = torch.where(seg[top] != 0, seg[top], old[sl][top])
        return new

    def _log(self, runner, gates) -> None:
        g = gates.values().detach()
        zero = float((gates.a == 0).float().mean())
        high = float((g > 0.9).float().mean())
        eps = float(gates.eps)
        hub = runner.message_hub
        for k, v in (('flops_ratio', self.ratio), ('lambda', self.lam), ('eps', eps),
                     ('zero_share', zero), ('high_share', high)):
            hub.update_scalar(f'train/gdp_{k}', v)
        if runner.iter % self.log_interval == 0 or runner.iter + 1 == runner.max_iters:
            self.history.append([runner.iter, self.ratio, self.lam, eps, zero, high])

    def before_save_checkpoint(self, runner, checkpoint: dict) -> None:
        checkpoint['gdp_hook'] = dict(lam=float(self.lam), ratio=float(self.ratio),
                                      gdp_iters=int(self.gdp_iters or 0),
                                      history=[list(map(float, h)) for h in self.history])

    def after_load_checkpoint(self, runner, checkpoint: dict) -> None:
        state = checkpoint.get('gdp_hook')
        if state:
            self.lam = state['lam']
            self.ratio = state['ratio']
            self.gdp_iters = state['gdp_iters'] or self.gdp_iters
            self.history = [list(h) for h in state['history']]

    def after_train(self, runner) -> None:
        if not self.export or runner.rank != 0:
            return
        from .api import prune_and_export
        prune_and_export(runner.cfg, unwrap(runner.model), osp.join(runner.work_dir, 'pruned'),
                         min_channels=self.min_channels, channel_divisor=self.channel_divisor,
                         force=True, extra_report=dict(history=self.history))
