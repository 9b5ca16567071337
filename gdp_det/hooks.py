"""``GDPHook``: eps schedule, proximal step, FLOPs budget controller, logging, export.

Add to a config that builds a ``GDPDetector``::

    custom_hooks = [dict(type='GDPHook', flops_target=0.5)]
"""
from __future__ import annotations

import math
import os.path as osp
from typing import Optional

import torch
from mmengine.hooks import Hook

from .detector import find_gates, unwrap
from .flops import Budget, FlopsModel
from .pruner import group_minimum

# gate-value histogram bins of the snapshots (non-zero gates; normalized gates reach 1+eps)
HIST_BINS = [i / 20 for i in range(23)]


class GDPHook(Hook):
    """Drives GDP training of the model's gates towards a FLOPs budget.

    Contract: the hook, not the model's optimizer, updates the gates: a proximal
    SGD step with its own ``gate_lr`` (the optimizer never sees their gradient, so
    no momentum or weight decay acts on them). Before every train iteration it sets
    ``eps`` on the geometric schedule ``eps_start -> eps_end`` over ``gdp_iters``
    (default: the whole training); after every optimizer step it applies
    ``a <- a - gate_lr * dL/da`` and the soft-threshold
    ``a <- sign(a) max(|a| - gate_lr * lambda * w_c, 0)``. With ``grad_norm`` (default)
    ``dL/da`` is divided by its running RMS over all live gates: one scalar, so the
    task loss still ranks the gates, but ``gate_lr`` means the same step size
    whatever the detector's loss scale. ``w_c`` is each channel's FLOPs cost
    (relative to the full model, normalised to mean 1) raised to ``cost_power``:
    1 is the paper's FLOPs-weighted penalty, the default 0 a plain L1 that lets the
    task loss alone rank the channels while the budget decides how many go (on the
    toy set the FLOPs-weighted form removes the costly high-resolution channels
    first and loses 0.2-0.3 mAP; see benchmarks/RESULTS.md). ``lambda`` starts at
    ``lambda_init`` and is multiplied by ``1 + lambda_rate`` while the exact FLOPs
    ratio is above ``flops_target`` (or the weight ratio above the optional
    ``params_target``), by ``1 - lambda_rate`` below it (default rate: lambda may
    grow 1e4-fold over the first half of the phase, so the gates first learn which
    channels matter and the cut comes around mid-phase), and no step removes more
    channels than the budget needs. ``min_channels`` channels per group always
    survive (a count, or a share of each group when in (0, 1), e.g. 0.25 against
    layer collapse). Logs ``gdp/flops_ratio``, ``gdp/lambda``, ``gdp/eps``,
    ``gdp/zero_share`` and ``gdp/high_share`` (gates > 0.9). Its state is saved in
    checkpoints under ``'gdp_hook'`` and restored on resume. With ``export=True``
    the pruned model is exported into ``<work_dir>/pruned`` after training.
    """

    priority = 'LOW'  # after the optimizer step of the train loop

    def __init__(self, flops_target: float = 0.5, eps_start: float = 1e-2,
                 eps_end: float = 1e-6, gdp_iters: Optional[int] = None,
                 gate_lr: float = 0.1, lambda_init: float = 1e-3,
                 lambda_rate: Optional[float] = None,
                 min_channels: float = 1, channel_divisor: int = 1,
                 warmup_iters: int = 0, log_interval: int = 50, export: bool = True,
                 num_snapshots: int = 6, params_target: Optional[float] = None,
                 cost_power: float = 0.0, grad_norm: bool = True):
        for name, t in (('flops_target', flops_target), ('params_target', params_target)):
            if t is not None and not 0 < t <= 1:
                raise ValueError(f'GDPHook: {name} must be in (0, 1], got {t}')
        if cost_power < 0:
            raise ValueError(f'GDPHook: cost_power must be >= 0, got {cost_power}')
        if eps_start <= 0 or eps_end <= 0:
            raise ValueError('GDPHook: eps_start and eps_end must be > 0')
        self.flops_target = flops_target
        self.cost_power = cost_power
        self.grad_norm = grad_norm
        self.grad_sq: Optional[float] = None  # running mean of the gates' squared gradient
        self.params_target = params_target
        self.eps_start, self.eps_end = eps_start, eps_end
        self.gdp_iters = gdp_iters
        self.gate_lr = gate_lr
        self.lam = lambda_init
        self.grad: Optional[torch.Tensor] = None  # the gates' last gradient
        self.gates = None
        self.lambda_rate = lambda_rate
        self.min_channels = min_channels
        self.channel_divisor = channel_divisor
        self.warmup_iters = warmup_iters
        self.log_interval = log_interval
        self.export = export
        self.num_snapshots = num_snapshots
        self.snapshots = []  # [iter, zero count, histogram of non-zero gates in HIST_BINS]
        self.flops: Optional[FlopsModel] = None
        self.budget: Optional[Budget] = None
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

    # -- hook points -------------------------------------------------------------
    def before_train(self, runner) -> None:
        model = unwrap(runner.model)
        self.gates = self._gates(runner)
        self.flops = FlopsModel(model.gdp_graph)
        self.budget = Budget([(self.flops, self.flops_target),
                              (FlopsModel(model.gdp_graph, params=True), self.params_target)])
        runner.optim_wrapper.optimizer.register_step_pre_hook(self._take_gate_grad)
        if self.gdp_iters is None:
            self.gdp_iters = runner.max_iters
        if self.lambda_rate is None:
            # lambda can grow 1e4-fold over the first half of the GDP phase
            span = max((self.gdp_iters - self.warmup_iters) / 2, 1)
            self.lambda_rate = min(max(1e4 ** (1 / span) - 1, 1e-3), 0.5)
        self._check_reachable(model)

    def _check_reachable(self, model) -> None:
        graph = model.gdp_graph
        alive = torch.zeros(graph.num_channels, dtype=torch.bool)
        for i, g in enumerate(graph.groups):
            alive[graph.offsets[i]:graph.offsets[i] + group_minimum(self.min_channels, g.size)] = True
        names = ('flops_target', 'params_target')
        for (_, target), floor, name in zip(self.budget.constraints,
                                            self.budget.ratios(alive), names):
            if floor > target:
                raise ValueError(f'GDPHook: {name}={target} is unreachable with '
                                 f'min_channels={self.min_channels}; the smallest reachable '
                                 f'ratio is {floor:.4f}')

    def before_train_iter(self, runner, batch_idx: int, data_batch=None) -> None:
        gates = self._gates(runner)
        gates.eps.fill_(self.eps_at(runner.iter, self.gdp_iters))
        if self.dead is None:  # first iteration, or just resumed: before the optimizer step
            self.dead = gates.a.detach() == 0

    def _take_gate_grad(self, optimizer, args, kwargs) -> None:
        """Optimizer step pre-hook: the gates' gradient is ours, not the optimizer's.

        Runs after DDP's all-reduce and AMP's unscaling; setting ``grad`` to None makes
        the optimizer skip the gates (no momentum, no weight decay on them).
        """
        a = self.gates.a
        if a.grad is not None:
            self.grad = a.grad.detach().clone()
            a.grad = None

    @torch.no_grad()
    def after_train_iter(self, runner, batch_idx: int, data_batch=None, outputs=None) -> None:
        gates = self._gates(runner)
        a = gates.a
        grad, self.grad = self.grad, None
        if runner.iter < self.warmup_iters or runner.iter >= self.gdp_iters:
            self._log(runner, gates)  # gates frozen outside the GDP phase
            return
        if grad is not None:  # gradient step of the task loss
            grad = grad.to(a)
            if self.grad_norm:
                grad = grad / self._grad_rms(grad[~self.dead])
            a.sub_(self.gate_lr * grad)
        a[self.dead] = 0  # a gate at exactly 0 stays there (g'(0) = 0)
        alive = (a != 0).cpu()
        self.ratio = self.flops.count(alive) / self.flops.full
        if not self.budget.met(alive):
            w = self.budget.weights(alive) ** self.cost_power
            # normalised so that lambda is a threshold per unit of average channel cost
            w = (w / w[alive].mean().clamp_min(1e-12)).to(a)
            thresh = self.gate_lr * self.lam * w
            new = torch.sign(a) * torch.clamp(a.abs() - thresh, min=0)
            new = self._keep_min_channels(gates, a, new)
            new = self._stop_at_target(a, new, thresh)
            a.copy_(new)
            self.ratio = self.flops.count((a != 0).cpu()) / self.flops.full
            self.dead = a.detach() == 0
            self.lam *= 1 + self.lambda_rate
        else:
            self.lam = max(self.lam * (1 - self.lambda_rate), 0.0)
        self._log(runner, gates)

    def _grad_rms(self, grad: torch.Tensor) -> float:
        """Running RMS of the live gates' gradient (one scalar for all gates, so the
        task loss still ranks them; only its overall scale is taken out)."""
        sq = float(grad.pow(2).mean()) if grad.numel() else 0.0
        self.grad_sq = sq if self.grad_sq is None else 0.99 * self.grad_sq + 0.01 * sq
        return max(math.sqrt(self.grad_sq), 1e-12)

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
        if not self.budget.met((new != 0).cpu()):
            return new
        order = dropped[torch.argsort(old.abs()[dropped] - thresh[dropped])]
        alive = (new != 0).cpu()
        lo, hi = 0, order.numel()  # find the fewest zeroed that reach the target
        while lo < hi:
            mid = (lo + hi) // 2
            trial = alive.clone()
            trial[order[mid + 1:].cpu()] = True
            if self.budget.met(trial):
                hi = mid
            else:
                lo = mid + 1
        restore = order[lo + 1:]
        new[restore] = old[restore]
        return new

    def _keep_min_channels(self, gates, old: torch.Tensor, new: torch.Tensor) -> torch.Tensor:
        for sl in gates.group_slices:
            seg = new[sl]
            n = group_minimum(self.min_channels, seg.numel())
            if n == 0:
                continue
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
        last = runner.iter + 1 == runner.max_iters
        if runner.iter % self.log_interval == 0 or last:
            self.history.append([runner.iter, self.ratio, self.lam, eps, zero, high])
        every = max(self.gdp_iters // max(self.num_snapshots - 1, 1), 1)
        if runner.iter % every == 0 or last:
            nonzero = g[gates.a != 0].float().cpu()
            hist = torch.histc(nonzero.clamp(max=HIST_BINS[-1]), len(HIST_BINS) - 1,
                               HIST_BINS[0], HIST_BINS[-1])
            self.snapshots.append([runner.iter, int((gates.a == 0).sum())] + hist.tolist())

    def before_save_checkpoint(self, runner, checkpoint: dict) -> None:
        checkpoint['gdp_hook'] = dict(lam=float(self.lam), ratio=float(self.ratio),
                                      grad_sq=self.grad_sq,
                                      gdp_iters=int(self.gdp_iters or 0),
                                      history=[list(map(float, h)) for h in self.history],
                                      snapshots=[list(map(float, h)) for h in self.snapshots])

    def after_load_checkpoint(self, runner, checkpoint: dict) -> None:
        state = checkpoint.get('gdp_hook')
        if state:
            self.lam = state['lam']
            self.ratio = state['ratio']
            self.grad_sq = state.get('grad_sq')
            self.gdp_iters = state['gdp_iters'] or self.gdp_iters
            self.history = [list(h) for h in state['history']]
            self.snapshots = [list(h) for h in state.get('snapshots', [])]

    def after_train(self, runner) -> None:
        if not self.export or runner.rank != 0:
            return
        from .api import prune_and_export
        prune_and_export(runner.cfg, unwrap(runner.model), osp.join(runner.work_dir, 'pruned'),
                         min_channels=self.min_channels, channel_divisor=self.channel_divisor,
                         force=True, extra_report=dict(
                             history=self.history, snapshots=self.snapshots,
                             hist_bins=HIST_BINS, flops_target=self.flops_target))
