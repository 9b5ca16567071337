"""The parts of GDP training that :class:`~gdp_det.hooks.GDPHook` delegates to, one job
each: the eps schedule, the gates' gradient step, which channels an export keeps, and the
budget controller (lambda, the proximal cut). None of them knows mmengine: the hook maps
a Runner's events onto them.
"""
from __future__ import annotations

from typing import Callable, Optional, Sequence, Union

import numpy as np
import torch

from .flops import Budget, FlopsModel
from .graph import ChannelGraph
from .pruner import exported_channels, group_minimum


class EpsSchedule:
    """Contract: ``at(it, total)`` is ``eps_start`` up to ``warmup_iters``, then falls
    geometrically to ``eps_end`` at iteration ``total``, and stays there."""

    def __init__(self, eps_start: float, eps_end: float, warmup_iters: int = 0):
        if eps_start <= 0 or eps_end <= 0:
            raise ValueError('GDPHook: eps_start and eps_end must be > 0')
        self.eps_start, self.eps_end, self.warmup_iters = eps_start, eps_end, warmup_iters

    def at(self, it: int, total: int) -> float:
        t = min(max(it - self.warmup_iters, 0) / max(total - self.warmup_iters, 1), 1.0)
        return self.eps_start * (self.eps_end / self.eps_start) ** t


class GateGradientStep:
    """The gates' task-loss step ``a <- a - lr * m``, on the gates' device (no host sync).

    Contract: ``step(a, grad, live, loss_scale, groups, num_groups)`` unscales ``grad``
    by the AMP ``loss_scale`` it carries (if any), zeroes its non-finite entries, divides
    it by the running RMS of the live gates' gradient (``normalise=True``: one scalar for
    all gates, so the task loss still ranks them; ``normalise='group'``: each group's
    own, ``groups`` holding every gate's group index, of ``num_groups`` groups (given, so
    that no step reads the index back to the host), so the task loss ranks channels
    within a group only and every group meets the penalty at the same gradient scale), follows
    the running mean ``m`` of that normalised gradient (``momentum``; 0: one batch's
    gradient) and moves only the ``live`` gates; a gate at exactly 0 stays there.
    ``grad_sq`` (a scalar, or one per group) and ``grad_avg`` are its state, kept in
    checkpoints (a resumed mean comes back on the CPU and follows the gates' device).
    """

    def __init__(self, lr: float, normalise: Union[bool, str] = True, momentum: float = 0.9):
        if not 0 <= momentum < 1:
            raise ValueError(f'GDPHook: grad_momentum must be in [0, 1), got {momentum}')
        if normalise not in (True, False, 'group'):
            raise ValueError(f"GDPHook: grad_norm must be True, False or 'group', "
                             f'got {normalise!r}')
        self.lr, self.normalise, self.momentum = lr, normalise, momentum
        self.grad_sq = None  # running mean of the live gates' squared gradient (a tensor)
        self.grad_avg = None  # running mean of the gates' (normalised) gradient

    def _mean_square(self, grad: torch.Tensor, live: torch.Tensor,
                     groups: Optional[torch.Tensor], num_groups: Optional[int]) -> torch.Tensor:
        """The live gates' mean squared gradient: a scalar, or one per group."""
        if self.normalise != 'group':
            return (grad.square() * live).sum() / live.sum().clamp_min(1)
        if groups is None or num_groups is None:
            raise ValueError("GateGradientStep: grad_norm='group' needs the gates' groups "
                             'and their number')
        total = grad.new_zeros(num_groups).index_add_(0, groups, grad.square() * live)
        count = grad.new_zeros(num_groups).index_add_(0, groups, live.to(grad.dtype))
        return total / count.clamp_min(1)

    def step(self, a: torch.Tensor, grad: torch.Tensor, live: torch.Tensor,
             loss_scale: Optional[torch.Tensor] = None,
             groups: Optional[torch.Tensor] = None,
             num_groups: Optional[int] = None) -> None:
        grad = grad.to(a.dtype)
        if loss_scale is not None:  # AMP: the gates are not in the scaler's unscale_
            grad = grad / loss_scale.to(grad)
        grad = torch.nan_to_num(grad, nan=0.0, posinf=0.0, neginf=0.0)
        if self.normalise:
            sq = self._mean_square(grad, live, groups, num_groups)
            if self.grad_sq is None:
                self.grad_sq = sq
            else:
                self.grad_sq = 0.99 * torch.as_tensor(self.grad_sq).to(sq) + 0.01 * sq
            scale = self.grad_sq.sqrt().clamp_min(1e-12)
            grad = grad / (scale if self.normalise is True else scale[groups])
        if self.momentum:
            if self.grad_avg is not None:
                prev = torch.as_tensor(self.grad_avg).to(grad)
                grad = torch.lerp(grad, prev, self.momentum)  # m prev + (1 - m) grad
            self.grad_avg = grad = grad * live
        a.sub_(self.lr * grad)
        a.mul_(live)  # a gate at exactly 0 stays there (g'(0) = 0)

    def state_dict(self) -> dict:
        sq = self.grad_sq
        if sq is not None:
            sq = torch.as_tensor(sq).detach().cpu()
            sq = float(sq) if sq.dim() == 0 else sq
        return dict(grad_sq=sq,
                    grad_avg=None if self.grad_avg is None else self.grad_avg.detach().cpu())

    def load_state_dict(self, state: dict) -> None:
        self.grad_sq, self.grad_avg = state.get('grad_sq'), state.get('grad_avg')


class ExportedChannels:
    """Contract: ``self(a)`` is the mask of channels an export of gates ``a`` (a host
    copy) keeps, with ``min_channels`` and ``channel_divisor`` applied as the pruner
    applies them. It depends only on which gates are zero (top-ups take zero-gated
    channels in index order), so the last answer is reused while that is unchanged."""

    def __init__(self, graph: ChannelGraph, min_channels: float = 1, channel_divisor: int = 1):
        self.graph, self.min_channels, self.channel_divisor = graph, min_channels, channel_divisor
        self._last = None  # (zero mask, kept mask)

    def __call__(self, a: np.ndarray) -> np.ndarray:
        zero = a == 0
        if self._last is not None and np.array_equal(zero, self._last[0]):
            return self._last[1]
        kept = exported_channels(self.graph, np.abs(a), self.min_channels, self.channel_divisor)
        self._last = (zero, kept)
        return kept


class BudgetController:
    """Lambda and the proximal cut that takes the export to its budget.

    Contract: ``step(a)`` (gates on any device, read back once) applies the
    soft-threshold ``a <- sign(a) max(|a| - lr * lambda * w_c, 0)`` while the export
    of ``a`` is over its budget, with ``w_c`` the channels' budget cost raised to
    ``cost_power`` and normalised to mean 1 over the live channels; keeps
    ``min_channels`` per group (of ``group_slices``); zeroes no more of the channels
    this step would cut than the budget needs (taken in order of how far the
    threshold overshoots them); then multiplies lambda by ``1 + lambda_rate`` (by
    ``1 + lambda_rate * cut_rate_factor`` once a gate has reached 0: a gentler cut). When the
    export is within budget it leaves ``a`` alone and lambda shrinks by
    ``1 - lambda_rate``. ``ratio`` (and ``latency_ratio`` with a latency model) is the
    export's, after the step, and ``kept`` the mask of the channels that export keeps.
    ``step(a, index)``: ``a`` holds only the channels ``index`` of the graph (a shrunk
    model), the others are removed (gates at 0). Attach the budget with :meth:`attach`
    before stepping.
    """

    def __init__(self, lr: float, lam: float, lambda_rate: Optional[float] = None,
                 cost_power: float = 0.0, min_channels: float = 1,
                 cut_rate_factor: float = 1.0):
        if cost_power < 0:
            raise ValueError(f'GDPHook: cost_power must be >= 0, got {cost_power}')
        if not 0 < cut_rate_factor <= 1:
            raise ValueError(f'GDPHook: cut_rate_factor must be in (0, 1], got {cut_rate_factor}')
        self.lr, self.lam, self.lambda_rate = lr, lam, lambda_rate
        self.cut_rate_factor = cut_rate_factor
        self.cost_power, self.min_channels = cost_power, min_channels
        self.ratio, self.latency_ratio = 1.0, 1.0
        self.kept: Optional[np.ndarray] = None
        self.budget: Optional[Budget] = None

    def attach(self, budget: Budget, exported: Callable[[np.ndarray], np.ndarray],
               flops: FlopsModel, group_slices: Sequence[slice],
               latency: Optional[FlopsModel] = None) -> None:
        """``exported(a)``: the channels an export of gates ``a`` keeps (an
        :class:`ExportedChannels`); ``flops`` (and ``latency``) give the ratios."""
        self.budget, self.exported, self.flops = budget, exported, flops
        self.group_slices, self.latency = group_slices, latency

    def _traced(self, a: torch.Tensor, index: Optional[np.ndarray]) -> np.ndarray:
        """The gates ``a`` on the host, in the traced graph's layout."""
        values = a.detach().float().cpu().numpy()
        if index is None:
            return values
        old = np.zeros(self.flops.num_channels, values.dtype)
        old[index] = values
        return old

    def _costs(self, kept: np.ndarray, alive: np.ndarray) -> np.ndarray:
        """``w_c``: the channels' budget cost raised to ``cost_power``, normalised so
        that lambda is a threshold per unit of average live channel cost."""
        w = self.budget.weights(kept) ** self.cost_power
        return w / max(w[alive].mean(), 1e-12) if alive.any() else w

    def step(self, a: torch.Tensor, index: Optional[np.ndarray] = None) -> None:
        old = self._traced(a, index)
        kept = self.exported(old)
        if self.budget.met(kept):
            self._set_ratios(kept)
            self.lam = max(self.lam * (1 - self.lambda_rate), 0.0)
            return
        thresh = (self.lr * self.lam * self._costs(kept, old != 0)).astype(np.float32)
        new = np.sign(old) * np.maximum(np.abs(old) - thresh, 0)
        new = self._keep_min_channels(old, new)
        new = self._stop_at_target(old, new, thresh)
        a.copy_(torch.from_numpy(new if index is None else new[index]).to(a))
        self._set_ratios(self.exported(new))
        cutting = not (old != 0).all()  # some gate has reached 0: the cut has begun
        self.lam *= 1 + self.lambda_rate * (self.cut_rate_factor if cutting else 1.0)

    def cut_now(self, a: torch.Tensor, index: Optional[np.ndarray] = None) -> np.ndarray:
        """The mask of the channels an export would keep if the cut were made at once
        from the gates ``a`` (``index`` as in :meth:`step`), changing neither ``a`` nor
        lambda: the live channels go in the order a growing lambda reaches them
        (``|a_c| / w_c`` upwards), as many as the budget needs, ``min_channels`` per
        group kept."""
        old = self._traced(a, index)
        kept = self.exported(old)
        if self.budget.met(kept):
            return kept
        reach = np.abs(old) / np.maximum(self._costs(kept, old != 0), 1e-12)
        new = self._keep_min_channels(old, np.zeros_like(old))
        # _stop_at_target zeroes in the order of |old| - thresh: here, of reach
        return self.exported(self._stop_at_target(old, new, np.abs(old) - reach))

    def _set_ratios(self, kept: np.ndarray) -> None:
        self.kept = kept
        self.ratio = self.flops.count(kept) / self.flops.full
        if self.latency is not None:
            self.latency_ratio = self.latency.count(kept) / self.latency.full

    def _stop_at_target(self, old: np.ndarray, new: np.ndarray,
                        thresh: np.ndarray) -> np.ndarray:
        """Zero only as many newly-zeroed channels as the budget needs: the rest keep
        their value, so one step never carries the export far below the target."""
        dropped = np.flatnonzero((old != 0) & (new == 0))
        if len(dropped) == 0 or not self.budget.met(self.exported(new)):
            return new
        order = dropped[np.argsort(np.abs(old[dropped]) - thresh[dropped], kind='stable')]
        lo, hi = 0, len(order)  # find the fewest zeroed that reach the target
        while lo < hi:
            mid = (lo + hi) // 2
            trial = new.copy()
            trial[order[mid + 1:]] = old[order[mid + 1:]]
            if self.budget.met(self.exported(trial)):
                hi = mid
            else:
                lo = mid + 1
        restore = order[lo + 1:]
        new[restore] = old[restore]
        return new

    def _keep_min_channels(self, old: np.ndarray, new: np.ndarray) -> np.ndarray:
        for sl in self.group_slices:
            seg = new[sl]
            n = group_minimum(self.min_channels, len(seg))
            if n and np.count_nonzero(seg) < n:
                top = np.argsort(-np.abs(old[sl]), kind='stable')[:n]
                seg[top] = np.where(seg[top] != 0, seg[top], old[sl][top])
        return new


class OptimizerSteps:
    """What the model's optimizer did, as the gates need to know it.

    Contract: :meth:`on_step` is the optimizer's step pre-hook; it records that the
    optimizer steps, and as they are at that step the AMP loss scale the gradients
    carry (``GradScaler.update()`` changes it right after the step) and a fused
    optimizer's overflow flag (``AdamW(fused=True)`` checks overflow in its own step, so
    ``GradScaler`` calls it anyway, with ``found_inf`` set on it). :meth:`take` returns
    whether a real step happened since the last call (False when the fused optimizer
    skipped it: a host read, fused optimizers only) and that loss scale, and resets.
    """

    def __init__(self, loss_scaler=None):
        self.loss_scaler = loss_scaler
        self.stepped = False
        self.scale = None  # a tensor on the scaler's device
        self.found_inf = None

    def on_step(self, optimizer, args, kwargs) -> None:
        self.stepped = True
        scale = getattr(self.loss_scaler, '_scale', None)
        self.scale = None if scale is None else scale.clone()
        self.found_inf = getattr(optimizer, 'found_inf', None)

    def take(self):
        stepped, self.stepped = self.stepped, False
        found_inf, self.found_inf = self.found_inf, None
        if found_inf is not None and bool(found_inf):
            stepped = False  # the fused optimizer skipped its step: so do the gates
        return stepped, self.scale
