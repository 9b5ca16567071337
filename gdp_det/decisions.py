"""Data-dependent decisions of a forward: recorded on one model, replayed on another.

The verification compares a pruned model with the gated model it came from. The two
compute the same function up to float rounding (~1e-7), but a forward that *selects*
turns such a difference at a near-tie into another selection: DINO's top-k query
selection or DDQ's NMS over encoder proposals order tied queries differently, a
two-stage detector's RPN keeps other proposals, SOLO's point NMS
(``local_max == score``) keeps another one of two tied grid cells, the NMS of a head
whose scores all tie keeps other boxes. The outputs then differ by O(1) although
nothing was pruned wrongly; without replay, such checks pass or fail by chance of the
random init.

A *decision* is a torch call (or custom ``autograd.Function``, e.g. mmcv's NMS) that
reads a floating tensor and returns a non-floating one (indices, masks, counts), or a
rounding op (``floor``, ``ceil``, ``round``, ``trunc``, ``sign``). :class:`DecisionLog`
records every decision of a forward of the reference model; replaying it on the other
model, each decision is computed again and where the result differs, the reference's
result is used instead and the decision's floating inputs (what it was made on) are
compared. So the outputs are compared for the same selections, and what the
selections were made on is compared too: a real pruning error shows in one or the
other, a flip at a near-tie in neither. Continuous outputs of a decision (top-k's
values, max's values) are never replaced: they are continuous across a tie.
"""
from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Dict, List, Optional

import torch
from torch.autograd.function import FunctionCtx
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_flatten, tree_unflatten

from .graph import watch_autograd_functions
from .graph.atoms import flat_tensors

_ROUNDING = frozenset({'floor', 'ceil', 'round', 'trunc', 'sign', 'floor_divide',
                       '__floordiv__'})


def relative_difference(x: torch.Tensor, y: torch.Tensor) -> float:
    """``max |x - y| / max |x|`` over finite ``x`` (equal infinities count as equal;
    another shape, or a NaN on either side, is ``inf``: NaN outputs verify nothing)."""
    if x.shape != y.shape:
        return float('inf')
    if x.numel() == 0:
        return 0.0
    x, y = x.detach(), y.detach()
    diff = (x.float() - y.float()).abs_()
    diff[x == y] = 0
    scale = max(float(x.float().nan_to_num(0, 0, 0).abs_().max()), 1e-6)
    return float(diff.nan_to_num_(float('inf')).max()) / scale


def _name(func) -> str:
    """The op's name, in-place or not (``floor_`` -> ``floor``)."""
    name = getattr(func, '__name__', type(func).__name__)
    return name[:-1] if name.endswith('_') and not name.endswith('__') else name


@dataclass
class _Decision:
    op: str
    results: List[torch.Tensor]  # the replaceable outputs, in flattening order


@dataclass
class DecisionLog:
    """The decisions of a forward of the reference model (:meth:`record`) and what
    replaying them on another model found (:meth:`replay`, then :meth:`compare`):
    ``replayed`` (decisions whose result differed and was replaced), ``input_diff``
    (the largest relative difference between the two models' floating inputs of
    those decisions) and ``diverged`` (set when the other model made another
    sequence of decisions: its forward took another path)."""
    decisions: List[_Decision] = field(default_factory=list)
    flipped: Dict[int, List[torch.Tensor]] = field(default_factory=dict)
    input_diff: float = 0.0
    diverged: Optional[str] = None

    @property
    def replayed(self) -> int:
        return len(self.flipped)

    @contextmanager
    def record(self):
        """Record the decisions of the reference model's forward run inside."""
        self.decisions = []
        with self._mode('record'):
            yield self

    @contextmanager
    def replay(self):
        """Replay the recorded decisions on the other model's forward run inside;
        keeps the other model's inputs of the decisions that differed."""
        self.flipped, self.input_diff, self.diverged = {}, 0.0, None
        with self._mode('replay') as mode:
            yield self
        if self.diverged is None and mode.pos < len(self.decisions):
            self.diverged = (f'{len(self.decisions) - mode.pos} decision(s) fewer than the '
                             f'reference, the first missing one {self.decisions[mode.pos].op}')

    @contextmanager
    def compare(self):
        """Run the reference model's forward again inside: the inputs of the decisions
        that differed are compared with the other model's (``input_diff``). Inputs are
        kept only for those: a forward's decisions can read gigabytes (SOLO's masks)."""
        with self._mode('compare'):
            yield self

    @contextmanager
    def _mode(self, phase: str):
        mode = _DecisionMode(self, phase)
        with mode, watch_autograd_functions(mode.function_forward):
            yield mode


class _DecisionMode(TorchFunctionMode):
    """Sees every torch call of a forward and hands decisions to the log."""

    def __init__(self, log: DecisionLog, phase: str):
        super().__init__()
        self.log, self.phase, self.pos = log, phase, 0
        self.busy = False  # our own torch calls inside an autograd.Function forward

    def __torch_function__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if self.busy:
            return out
        return self.decide(_name(func), (args, kwargs), out)

    def function_forward(self, cls, args, kwargs, out):
        if self.busy:
            return None
        self.busy = True
        try:
            if args and isinstance(args[0], FunctionCtx):
                args = args[1:]
            return self.decide(cls.__name__, (args, kwargs), out)
        finally:
            self.busy = False

    def decide(self, op: str, inputs, out):
        leaves, spec = ([out], None) if isinstance(out, torch.Tensor) else tree_flatten(out)
        slots = [i for i, t in enumerate(leaves) if isinstance(t, torch.Tensor)
                 and (op in _ROUNDING or not t.is_floating_point())]
        log = self.log
        if not slots or log.diverged is not None:
            return out
        floats = [t for t in flat_tensors(inputs) if t.is_floating_point()]
        if not floats:
            return out
        if self.phase == 'record':
            log.decisions.append(_Decision(op, [leaves[i].clone() for i in slots]))
            return out
        ref = log.decisions[self.pos] if self.pos < len(log.decisions) else None
        if ref is None or ref.op != op:
            log.diverged = (f'decision {self.pos} is {op} where the reference made '
                            f'{ref.op if ref else "no more decisions"}')
            return out
        self.pos += 1
        if self.phase == 'compare':
            theirs = log.flipped.get(self.pos - 1)
            if theirs is not None:
                diffs = [relative_difference(x, y) for x, y in zip(floats, theirs)]
                same_count = len(theirs) == len(floats)
                log.input_diff = max([log.input_diff] + diffs + [0.0 if same_count else
                                                                 float('inf')])
            return out
        if all(_same(leaves[i], r) for i, r in zip(slots, ref.results)):
            return out
        log.flipped[self.pos - 1] = [t.detach().clone() for t in floats]
        for i, r in zip(slots, ref.results):
            leaves[i] = r.clone()
        return leaves[0] if spec is None else tree_unflatten(leaves, spec)


def _same(x: torch.Tensor, y: torch.Tensor) -> bool:
    return x.shape == y.shape and x.dtype == y.dtype and torch.equal(x, y)
