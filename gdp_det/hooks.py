"""``GDPHook``: maps mmengine's training events onto GDP's parts
(:mod:`gdp_det.gate_training`: the eps schedule, the gates' gradient step, the budget
controller with its proximal cut), and adds EMA and DDP syncing, logging, checkpoint
state and the export at the end.

Add to a config that builds a ``GDPDetector``::

    custom_hooks = [dict(type='GDPHook', flops_target=0.5)]
    custom_hooks = [dict(type='GDPHook', latency_target=0.5)]  # measured on the device
    custom_hooks = [dict(type='GDPHook', latency_target=0.5,  # measured in ONNX Runtime
                         latency_backend='onnxruntime')]
"""
from __future__ import annotations

import logging
import os.path as osp
from typing import Optional, Union

import numpy as np
import torch
from mmengine.dist import broadcast, broadcast_object_list, get_world_size, is_main_process
from mmengine.hooks import Hook
from mmengine.logging import print_log

from .detector import find_gates, unwrap
from .distributed import patient_group
from .flops import Budget, FlopsModel
from .gate_training import (BudgetController, EpsSchedule, ExportedChannels, GateGradientStep,
                            OptimizerSteps)
from .latency import LatencyModel, export_latencies, measure_table
from .shrink import ChannelShrink, pad_checkpoint, shrink_runner

LATENCY_BACKENDS = ('torch', 'onnxruntime', 'openvino')
# channel_divisor='auto' per latency backend: on the toy RetinaNet ONNX Runtime ran widths
# rounded up to multiples of 8 faster than the exact widths though they keep more FLOPs
# (0.56 of them in 35 ms against 0.50 in 40 ms); OpenVINO and torch gained nothing
# (docs/deploy.md, benchmarks/RESULTS.md (o))
AUTO_CHANNEL_DIVISOR = dict(torch=1, onnxruntime=8, openvino=1)
# gate-value histogram bins of the snapshots (non-zero gates; normalized gates reach 1+eps)
HIST_BINS = [i / 20 for i in range(23)]


class GDPHook(Hook):
    """Drives GDP training of the model's gates towards a FLOPs and/or latency budget.

    Contract: the hook, not the model's optimizer, updates the gates: a proximal
    SGD step with its own ``gate_lr``. The gates are taken out of the optimizer
    (``before_run``), so no momentum, weight decay, ``clip_grad`` norm or AMP
    unscaling acts on them; with ``accumulative_counts=N`` they move once per
    optimizer step, with their gradient summed over the N iterations. Before every
    train iteration it sets ``eps`` on the geometric schedule ``eps_start -> eps_end``
    over ``gdp_iters`` (default: the whole training); after every optimizer step it
    applies
    ``a <- a - gate_lr * dL/da`` and the soft-threshold
    ``a <- sign(a) max(|a| - gate_lr * lambda * w_c, 0)``. With ``grad_norm`` (default)
    ``dL/da`` is divided by its running RMS over all live gates: one scalar, so the
    task loss still ranks the gates, but ``gate_lr`` means the same step size
    whatever the detector's loss scale (``grad_norm='group'``: each group's own RMS, so
    that every group meets the penalty at the same gradient scale); the step follows a
    running mean of that normalised gradient (``grad_momentum``, default 0.9; 0: one
    batch's gradient): a gate feels the loss only in the few steps while it drops towards
    0, and one batch's gradient there is mostly noise (benchmarks/RESULTS.md (m), (n)). ``w_c``
    is each channel's FLOPs cost (relative to the full model, normalised to mean 1)
    raised to ``cost_power``: 1 is the paper's FLOPs-weighted penalty, the default 0 a plain L1 that lets the
    task loss alone rank the channels while the budget decides how many go (on the
    toy set the FLOPs-weighted form removes the costly high-resolution channels
    first and loses 0.2-0.3 mAP; see benchmarks/RESULTS.md). With ``latency_target``
    the hook measures a :class:`~gdp_det.latency.LatencyModel` of the model in
    ``before_train`` (cached; under DDP rank 0 measures it for all): on its device with
    torch (``latency_backend='torch'``), or in the deployment runtime on the CPU
    (``'onnxruntime'`` / ``'openvino'``: one-node graphs per layer, calibrated on the
    end-to-end mmdeploy deployments; :mod:`gdp_det.runtime_latency`), with the current
    torch thread count; it adds
    the constraint "predicted latency ratio <= latency_target" to the budget, and
    the channels' cost while that constraint
    is violated is their marginal latency. ``flops_target`` defaults to 0.5 when no
    other target is given. ``lambda`` starts at
    ``lambda_init`` and is multiplied by ``1 + lambda_rate`` while the exact FLOPs
    ratio is above ``flops_target`` (or the weight ratio above the optional
    ``params_target``, or the predicted latency ratio above ``latency_target``), by
    ``1 - lambda_rate`` below it, once per optimizer step (default rate: lambda may
    grow 1e4-fold over the first ``lambda_span`` of the phase, whatever the
    ``accumulative_counts``, so the gates first learn which channels matter and the
    cut begins within it; ``cut_rate_factor`` < 1 slows lambda's growth by that factor once
    a gate has reached 0, so the cut, which comes as a burst, is spread over more
    iterations: benchmarks/RESULTS.md (v); the defaults, ``lambda_span`` 0.25 and
    ``cut_rate_factor`` 1/3, begin the cut in the first quarter of the phase and end it
    about where a cut at the full rate within its first half would: RESULTS (x)), and
    no step removes more
    channels than the budget needs. ``min_channels`` channels per group always
    survive (a count, or a share of each group when in (0, 1), e.g. 0.25 against
    layer collapse). Logs ``gdp/flops_ratio``, ``gdp/lambda``, ``gdp/eps``,
    ``gdp/zero_share`` and ``gdp/high_share`` (gates > 0.9). Its state is saved in
    checkpoints under ``'gdp_hook'`` and restored on resume. With ``export=True``
    the pruned model is exported into ``<work_dir>/pruned`` after training; with a
    latency budget its report adds the predicted latency ratio and the measured one
    (in the same backend: tensor-mode forwards, or the deployed export and unpruned
    network, interleaved medians).

    With ``shrink_after_cut`` (default), once the cut is made (the export of the gates
    is within budget; its zeroed gates never move again) the channels the export
    removes are removed from the live model, its optimizer state and the EMA copy
    (:mod:`gdp_det.shrink`): the rest of the phase trains the pruned network, with the
    same result, at its cost. The kept gates train on as before. Checkpoints stay in
    the traced (full-width) layout, removed channels zero, with the kept channels
    recorded; a resumed run loads them and shrinks again. Under DDP every rank shrinks
    alike (the gates are rank 0's) and the shrunk model is wrapped anew
    (``runner.wrap_model``); other wrappers (FSDP, DeepSpeed) and several optimizers are
    not supported (the hook warns and trains at full width).

    A gradual cut (``budget_ramp`` > 0): the targets fall linearly from 1 to their
    values over the first ``budget_ramp`` of the phase (:meth:`~gdp_det.flops.Budget.ease`),
    the controller following them, and with ``shrink_after_cut`` the live model shrinks
    each time its export has lost another ``shrink_step`` of the FLOPs (and when the cut
    is final), so the channels cut early stop costing early. Set ``lambda_span`` well
    below ``budget_ramp`` so that lambda reaches the gates while the targets fall.

    The budget is counted on what the export keeps (``min_channels`` and
    ``channel_divisor`` applied), so the exported FLOPs ratio lands at the target.
    ``channel_divisor='auto'`` takes the divisor measured to pay in the latency backend
    (:data:`AUTO_CHANNEL_DIVISOR`: 8 for ONNX Runtime, else 1).
    Under DDP every rank takes rank 0's gates after each update (a broadcast), so
    they are equal by construction. With mmengine's ``EMAHook`` the EMA copy's gates
    are the live gates (never averaged) and the export prunes the EMA weights, which
    are what its checkpoints hold. Per iteration the hook reads the gates back to
    the host once (the proximal decision), and a fused optimizer's AMP overflow flag
    (the gates skip the steps it skips); gate statistics are logged every
    ``log_interval`` iterations. Under AMP the gates' gradient is unscaled by the
    loss scale it was computed with.
    """

    priority = 'LOW'  # after the optimizer step of the train loop

    def __init__(self, flops_target: Optional[float] = None, eps_start: float = 1e-2,
                 eps_end: float = 1e-6, gdp_iters: Optional[int] = None,
                 gate_lr: float = 0.1, lambda_init: float = 1e-3,
                 lambda_rate: Optional[float] = None,
                 min_channels: float = 1, channel_divisor: Union[int, str] = 1,
                 warmup_iters: int = 0, log_interval: int = 50, export: bool = True,
                 num_snapshots: int = 6, params_target: Optional[float] = None,
                 cost_power: float = 0.0, grad_norm: Union[bool, str] = True,
                 latency_target: Optional[float] = None, grad_momentum: float = 0.9,
                 lambda_span: float = 0.25, shrink_after_cut: bool = True,
                 latency_backend: str = 'torch', cut_rate_factor: float = 1 / 3,
                 budget_ramp: float = 0.0, shrink_step: float = 0.1):
        if flops_target is None and params_target is None and latency_target is None:
            flops_target = 0.5
        given = dict(flops_target=flops_target, params_target=params_target,
                     latency_target=latency_target)
        for name, t in given.items():
            if t is not None and not 0 < t <= 1:
                raise ValueError(f'GDPHook: {name} must be in (0, 1], got {t}')
        if not 0 < lambda_span <= 1:
            raise ValueError(f'GDPHook: lambda_span must be in (0, 1], got {lambda_span}')
        if not 0 <= budget_ramp <= 1 or not 0 < shrink_step < 1:
            raise ValueError(f'GDPHook: budget_ramp must be in [0, 1] and shrink_step in '
                             f'(0, 1), got {budget_ramp} and {shrink_step}')
        if latency_backend not in LATENCY_BACKENDS:
            raise ValueError(f'GDPHook: latency_backend must be one of '
                             f'{", ".join(LATENCY_BACKENDS)}, got {latency_backend!r}')
        self.eps_schedule = EpsSchedule(eps_start, eps_end, warmup_iters)
        self.gate_step = GateGradientStep(gate_lr, grad_norm, grad_momentum)
        self.controller = BudgetController(gate_lr, lambda_init, lambda_rate, cost_power,
                                           min_channels, cut_rate_factor)
        self.steps = OptimizerSteps()
        self.flops_target = flops_target
        self.params_target = params_target
        self.latency_target = latency_target
        self.latency_backend = latency_backend
        self.lambda_span = lambda_span
        self.budget_ramp, self.shrink_step = budget_ramp, shrink_step
        self.gdp_iters = gdp_iters
        self.gates = None
        self.ema_gates = None
        self.min_channels = min_channels
        if channel_divisor == 'auto':
            channel_divisor = AUTO_CHANNEL_DIVISOR[latency_backend]
        if not isinstance(channel_divisor, int) or channel_divisor < 1:
            raise ValueError(f"GDPHook: channel_divisor must be an integer >= 1 or 'auto', "
                             f'got {channel_divisor!r}')
        self.channel_divisor = channel_divisor
        self.warmup_iters = warmup_iters
        self.log_interval = log_interval
        self.export = export
        self.num_snapshots = num_snapshots
        self.snapshots = []  # [iter, zero count, histogram of non-zero gates in HIST_BINS]
        self.flops: Optional[FlopsModel] = None
        self.latency: Optional[LatencyModel] = None
        self.budget: Optional[Budget] = None
        # names of the budget's constraints, in its order
        self.targets = [n for n, t in given.items() if t is not None]
        self._exported: Optional[ExportedChannels] = None
        self.dead: Optional[torch.Tensor] = None  # gates zeroed by the proximal step
        self.history = []  # (iter, ratio, lambda, eps, zero_share, high_share)
        self.shrink_after_cut = shrink_after_cut
        self.shrink: Optional[ChannelShrink] = None  # the model's shrink, once made
        self._resumed_kept = None  # traced ids of the kept gates, from a checkpoint
        self.shrunk_at: Optional[int] = None  # iterations trained at full width
        self.shrinks = []  # [iterations done, the live model's FLOPs ratio] per shrink
        self._live_ratio = 1.0  # the live model's FLOPs ratio (set at each shrink)
        self._cut_final = False  # the live model is within the final budget
        self._groups = None  # (gate set, its step's group arguments) for grad_norm='group'

    # -- the parts' state, as the hook exposes it ------------------------------------
    lam = property(lambda self: self.controller.lam,
                   lambda self, v: setattr(self.controller, 'lam', v))
    lambda_rate = property(lambda self: self.controller.lambda_rate)
    ratio = property(lambda self: self.controller.ratio)
    latency_ratio = property(lambda self: self.controller.latency_ratio)
    grad_avg = property(lambda self: self.gate_step.grad_avg)

    @property
    def graph(self):
        """The traced graph: what the budget, the export and checkpoints count on (a
        shrink gives the live gates a narrowed one)."""
        return self.gates.graph if self.shrink is None else self.shrink.traced

    # -- helpers ---------------------------------------------------------------
    def _gates(self, runner):
        gates = find_gates(runner.model)
        if gates is None:
            raise RuntimeError('GDPHook needs a model built with type="GDPDetector" '
                               '(see configs/gdp/); this model has no GDP gates')
        return gates

    def eps_at(self, it: int, total: int) -> float:
        return self.eps_schedule.at(it, total)

    def exported(self, a: np.ndarray) -> np.ndarray:
        """The channels an export of gates ``a`` (host copy) keeps: what the budget
        counts (:class:`~gdp_det.gate_training.ExportedChannels` of the gates' graph)."""
        if self._exported is None or self._exported.graph is not self.graph:
            self._exported = ExportedChannels(self.graph, self.min_channels,
                                              self.channel_divisor)
        return self._exported(a)

    def _group_args(self, gates) -> dict:
        """Every gate's group index and the number of groups (for ``grad_norm='group'``;
        else nothing), the index on the gates' device, made anew for a shrunk gate set
        (the same groups, narrowed): the keyword arguments of the gates' step."""
        if self.gate_step.normalise != 'group':
            return {}
        if self._groups is None or self._groups[0] is not gates:
            sizes = torch.tensor([s.stop - s.start for s in gates.group_slices])
            index = torch.repeat_interleave(torch.arange(len(sizes)), sizes)
            self._groups = (gates, dict(groups=index.to(gates.a.device),
                                        num_groups=len(sizes)))
        return self._groups[1]

    def traced_gates(self) -> torch.Tensor:
        """The gates in the traced layout (after a shrink, 0 for removed channels)."""
        a = self.gates.a.detach()
        return a if self.shrink is None else self.shrink.pad_gates(a)

    # -- hook points -------------------------------------------------------------
    def before_run(self, runner) -> None:
        """Take the gates out of the model's optimizer before anything is loaded or
        resumed: the hook owns their update, so no momentum, weight decay, gradient
        clipping (``clip_grad``) or AMP unscaling of the optimizer touches them."""
        gates = find_gates(runner.model)
        optimizer = getattr(getattr(runner, 'optim_wrapper', None), 'optimizer', None)
        if gates is None or not isinstance(optimizer, torch.optim.Optimizer):
            return  # not training (val/test runs call before_run too)
        for group in optimizer.param_groups:
            group['params'] = [p for p in group['params'] if p is not gates.a]
        self.steps.loss_scaler = getattr(runner.optim_wrapper, 'loss_scaler', None)
        optimizer.register_step_pre_hook(self._on_optimizer_step)

    def before_train(self, runner) -> None:
        self.gates = self._gates(runner)
        graph = self.gates.graph
        self.flops = FlopsModel(graph)
        if self.latency_target is not None:
            # rank 0 alone measures (and caches) the table: every rank holds the same
            # latency model, so the same budget and lambda; the others wait for it on a
            # group without the NCCL watchdog's timeout
            # (a runtime deploys the calibration networks from the runner's config)
            table = [measure_table(unwrap(runner.model), backend=self.latency_backend,
                                   cfg=getattr(runner, 'cfg', None))
                     if is_main_process() else None]
            broadcast_object_list(table, group=patient_group())
            self.latency = LatencyModel(graph, table[0])
        self.budget = Budget([(self.flops, self.flops_target),
                              (FlopsModel(graph, params=True), self.params_target),
                              (self.latency, self.latency_target)])
        if self.gdp_iters is None:
            self.gdp_iters = runner.max_iters
        if self.controller.lambda_rate is None:
            # lambda can grow 1e4-fold over the first lambda_span of the GDP phase; it
            # moves once per optimizer step, i.e. every accumulative_counts iterations
            steps = (self.gdp_iters - self.warmup_iters) * self.lambda_span
            span = max(steps / getattr(runner.optim_wrapper, '_accumulative_counts', 1), 1)
            self.controller.lambda_rate = min(max(1e4 ** (1 / span) - 1, 1e-3), 0.5)
        self.controller.attach(self.budget, self.exported, self.flops,
                               self.gates.group_slices, self.latency)
        self._check_reachable()
        ema = self._ema_model(runner)
        self.ema_gates = None if ema is None else find_gates(ema)
        if self._resumed_kept is not None and self.shrink_after_cut:
            kept = np.zeros(graph.num_channels, bool)
            kept[self._resumed_kept] = True
            self._shrink(runner, kept)
        self._sync_ema()

    def _over_budget(self, kept: np.ndarray) -> list:
        """``(target name, ratio, target)`` of each final target that ``kept`` exceeds."""
        return [(name, ratio, target) for (_, target), ratio, name
                in zip(self.budget.final, self.budget.ratios(kept), self.targets)
                if ratio > target]

    def _check_reachable(self) -> None:
        for name, floor, target in self._over_budget(
                self.exported(np.zeros(self.graph.num_channels))):
            raise ValueError(f'GDPHook: {name}={target} is unreachable with '
                             f'min_channels={self.min_channels} and channel_divisor='
                             f'{self.channel_divisor}; the smallest reachable ratio '
                             f'is {floor:.4f}')

    def _sync_ema(self) -> None:
        """The EMA copy averages every parameter; its gates must not be averaged
        (a gate GDP zeroed would come back): they are the live gates, every iteration."""
        if self.ema_gates is not None:
            with torch.no_grad():  # (not through .data: the gates' cache keys on versions)
                self.ema_gates.a.copy_(self.gates.a)
            self.ema_gates.set_eps(self.gates.eps_value)

    def before_train_iter(self, runner, batch_idx: int, data_batch=None) -> None:
        gates = self._gates(runner)
        gates.set_eps(self.eps_at(runner.iter, self.gdp_iters))
        if self.dead is None:  # first iteration, or just resumed
            self.dead = gates.a.detach() == 0

    def _on_optimizer_step(self, optimizer, args, kwargs) -> None:
        """The model optimizer's step pre-hook (see
        :class:`~gdp_det.gate_training.OptimizerSteps`)."""
        self.steps.on_step(optimizer, args, kwargs)

    @torch.no_grad()
    def after_train_iter(self, runner, batch_idx: int, data_batch=None, outputs=None) -> None:
        gates = self._gates(runner)
        a = gates.a
        should_update = getattr(runner.optim_wrapper, 'should_update', None)
        if should_update is not None and not should_update():
            return  # accumulating: the gradient is not complete yet
        grad, a.grad = a.grad, None
        stepped, loss_scale = self.steps.take()
        if self.warmup_iters <= runner.iter < self.gdp_iters:
            if grad is not None and stepped:
                self.gate_step.step(a, grad, ~self.dead, loss_scale, **self._group_args(gates))
            if self.budget_ramp:
                span = (self.gdp_iters - self.warmup_iters) * self.budget_ramp
                self.budget.ease((runner.iter + 1 - self.warmup_iters) / max(span, 1))
            self.controller.step(a, None if self.shrink is None else self.shrink.index)
            broadcast(a, src=0)  # every rank holds rank 0's gates, by construction
            self.dead = a == 0
            kept = self._shrink_due(a)
            if kept is not None:
                self._shrink(runner, kept)
                gates = self.gates
        self._sync_ema()
        self._log(runner, gates)

    def _shrink_due(self, a: torch.Tensor) -> Optional[np.ndarray]:
        """What the export of the gates ``a`` keeps when the model is to shrink now: it
        removes channels the live model still has, and it is within the final budget
        (the cut is final: its zeroed gates stay at 0, so what it keeps never grows
        back) or, in a gradual cut, its FLOPs ratio is ``shrink_step`` below the live
        model's; else None. Under DDP it is read from the broadcast gates (one more host
        read per iteration until the final shrink), so that every rank shrinks at the
        same iteration; alone, it is the controller's."""
        if not self.shrink_after_cut or self._cut_final:
            return None
        kept = (self.controller.kept if get_world_size() == 1
                else self.exported(a.detach().float().cpu().numpy()))
        if kept is None:
            return None
        live = self.graph.num_channels if self.shrink is None else len(self.shrink.index)
        if (kept if self.shrink is None else self.shrink.narrow(kept)).sum() == live:
            return None  # it removes nothing the live model has
        if self.budget.met(kept, final=True):
            return kept
        if not self.budget_ramp:
            return None
        ratio = self.flops.count(kept) / self.flops.full
        return kept if ratio <= self._live_ratio - self.shrink_step else None

    @torch.no_grad()
    def _shrink(self, runner, kept: np.ndarray) -> None:
        """Remove the channels ``kept`` leaves out from the model, its optimizer state
        and the EMA copy (:func:`~gdp_det.shrink.shrink_runner`), and from the hook's
        per-gate state."""
        ema = self._ema_hook(runner)
        shrink = shrink_runner(runner, self.graph, kept, None if ema is None else ema.ema_model,
                               self.shrink)
        if shrink is None:
            self.shrink_after_cut = False
            return
        index = torch.as_tensor(shrink.local_index, device=self.gates.a.device)
        if self.dead is not None:
            self.dead = self.dead[index]
        if self.gate_step.grad_avg is not None:
            avg = torch.as_tensor(self.gate_step.grad_avg)
            self.gate_step.grad_avg = avg[index.to(avg.device)]
        self.gates = self._gates(runner)
        self.ema_gates = None if ema is None else find_gates(ema.ema_model.module)
        self.shrink = shrink
        live = np.zeros(self.graph.num_channels, bool)
        live[shrink.index] = True
        self._live_ratio = self.flops.count(live) / self.flops.full
        self._cut_final = self.budget.met(live, final=True)
        if self._resumed_kept is not None:  # (a resumed run knows its shrinks)
            self._resumed_kept = None
            return
        if self.shrunk_at is None:
            self.shrunk_at = runner.iter + 1
        self.shrinks.append([runner.iter + 1, self._live_ratio])
        final = self._cut_final
        print_log(f'GDPHook: {"the cut is final" if final else "a gradual cut"} at iteration '
                  f'{runner.iter}: {shrink.removed} of {self.graph.num_channels} gated channels '
                  f'removed from the live model (FLOPs ratio {self._live_ratio:.4f}); '
                  f'training on the {"pruned" if final else "narrowed"} network',
                  logger='current')

    def _log(self, runner, gates) -> None:
        """Scalars known on the host every iteration; the gate statistics (device
        reductions, so host syncs) only every ``log_interval`` iterations."""
        hub = runner.message_hub
        for k, v in (('flops_ratio', self.ratio), ('lambda', self.lam),
                     ('eps', gates.eps_value)):
            hub.update_scalar(f'train/gdp_{k}', v)
        if self.latency is not None:
            hub.update_scalar('train/gdp_latency_ratio', self.latency_ratio)
        last = runner.iter + 1 == runner.max_iters
        every = max(self.gdp_iters // max(self.num_snapshots - 1, 1), 1)
        snapshot = runner.iter % every == 0 or last
        if not (runner.iter % self.log_interval == 0 or last or snapshot):
            return
        g = gates.values().detach()
        removed = 0 if self.shrink is None else self.shrink.removed  # gates at 0, gone
        zeros = int((gates.a == 0).sum()) + removed
        zero = zeros / self.graph.num_channels
        high = float((g > 0.9).float().sum()) / self.graph.num_channels
        hub.update_scalar('train/gdp_zero_share', zero)
        hub.update_scalar('train/gdp_high_share', high)
        if runner.iter % self.log_interval == 0 or last:
            self.history.append([runner.iter, self.ratio, self.lam, gates.eps_value, zero, high])
        if snapshot:
            nonzero = g[gates.a != 0].float().cpu()
            hist = torch.histc(nonzero.clamp(max=HIST_BINS[-1]), len(HIST_BINS) - 1,
                               HIST_BINS[0], HIST_BINS[-1])
            self.snapshots.append([runner.iter, zeros] + hist.tolist())

    def before_save_checkpoint(self, runner, checkpoint: dict) -> None:
        """The hook's state; after a shrink, the model's (and the EMA copy's and the
        optimizer's) state in the traced layout, with the kept channels recorded."""
        state = self.gate_step.state_dict()
        if self.shrink is not None:
            pad_checkpoint(self.shrink, runner, checkpoint)
            if state['grad_avg'] is not None:
                state['grad_avg'] = self.shrink.pad_gates(state['grad_avg'])
        checkpoint['gdp_hook'] = dict(lam=float(self.lam), ratio=float(self.ratio), **state,
                                      gdp_iters=int(self.gdp_iters or 0),
                                      history=[list(map(float, h)) for h in self.history],
                                      snapshots=[list(map(float, h)) for h in self.snapshots],
                                      shrunk=None if self.shrink is None
                                      else self.shrink.index.tolist(),
                                      shrunk_at=self.shrunk_at, shrinks=self.shrinks)

    def after_load_checkpoint(self, runner, checkpoint: dict) -> None:
        state = checkpoint.get('gdp_hook')
        if state:
            self.controller.lam = state['lam']
            self.controller.ratio = state['ratio']
            self.gate_step.load_state_dict(state)
            self.gdp_iters = state['gdp_iters'] or self.gdp_iters
            self.history = [list(h) for h in state['history']]
            self.snapshots = [list(h) for h in state.get('snapshots', [])]
            self._resumed_kept = state.get('shrunk')  # shrunk again in before_train
            self.shrunk_at = state.get('shrunk_at')
            self.shrinks = [list(s) for s in state.get('shrinks', [])]

    def after_train(self, runner) -> None:
        if runner.rank != 0:
            return
        self._warn_if_unmet()
        if not self.export:
            return
        from .api import prune_and_export

        # With an EMAHook the checkpoints hold the EMA weights (with the live gates):
        # the export prunes the same model that a checkpoint holds.
        model = self._ema_model(runner) or unwrap(runner.model)
        if self.shrink is not None:  # the traced layout, which the export prunes
            model = self.shrink.padded_copy(model)
        extra = dict(history=self.history, snapshots=self.snapshots, hist_bins=HIST_BINS,
                     flops_target=self.flops_target, train_iters=runner.max_iters,
                     shrunk_after_iters=self.shrunk_at, shrinks=self.shrinks)
        if self.latency is not None:
            extra.update(self.latency_report(model, runner.cfg))
        prune_and_export(runner.cfg, model, osp.join(runner.work_dir, 'pruned'),
                         min_channels=self.min_channels, channel_divisor=self.channel_divisor,
                         force=True, extra_report=extra)

    def _warn_if_unmet(self) -> None:
        """A warning, naming the fix, when training ended before the cut met the budget
        (the export then keeps more than the targets allow)."""
        over = self._over_budget(self.exported(self.traced_gates().float().cpu().numpy()))
        if not over:
            return
        missed = ', '.join(f'{name} {ratio:.4f} > {target:g}' for name, ratio, target in over)
        print_log(f'GDPHook: training ended before the cut met its budget ({missed}); the '
                  f'export keeps more than the targets allow. Give the GDP phase more '
                  f'iterations (gdp_iters={self.gdp_iters} of this run), or cut sooner and '
                  f'faster (lambda_span={self.lambda_span:g}, cut_rate_factor='
                  f'{self.controller.cut_rate_factor:g}: lower the first, raise the second '
                  f'towards 1)', logger='current', level=logging.WARNING)

    def latency_report(self, model, cfg=None, repeats: int = 10) -> dict:
        """Predicted latency ratio of the export of ``model``'s gates, and the measured
        one in the latency backend (:func:`gdp_det.latency.export_latencies`: that
        export vs the unpruned network, interleaved medians, seconds; a runtime deploys
        both from the detector's ``cfg``)."""
        kept = self.exported(model.gdp_gates.a.detach().float().cpu().numpy())
        unpruned, pruned = export_latencies(model, self.min_channels, self.channel_divisor,
                                            repeats, self.latency_backend, cfg)
        return dict(latency_target=self.latency_target, latency_device=self.latency.device,
                    latency_backend=self.latency_backend,
                    latency_predicted=self.latency.count(kept),
                    latency_predicted_ratio=self.latency.count(kept) / self.latency.full,
                    latency_unpruned_measured=unpruned, latency_measured=pruned,
                    latency_measured_ratio=pruned / unpruned)

    @staticmethod
    def _ema_hook(runner):
        """mmengine's ``EMAHook`` of the run, if it has made its EMA copy."""
        from mmengine.hooks import EMAHook
        for hook in getattr(runner, 'hooks', []):
            if isinstance(hook, EMAHook) and hasattr(hook, 'ema_model'):
                return hook
        return None

    def _ema_model(self, runner):
        """The EMA copy of the detector made by mmengine's ``EMAHook``, if any."""
        hook = self._ema_hook(runner)
        return None if hook is None else hook.ema_model.module
