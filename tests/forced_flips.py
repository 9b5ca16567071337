"""A selection flip at a near-tie, forced instead of hoped for.

Two models equal to float rounding select differently only where a score ties to
rounding, and whether rounding breaks a given tie one way or the other depends on the
processor (its vector width, oneDNN's kernels, the summation order): a test that waits
for such a flip passes on one machine and fails on another. :func:`forced_flip` makes
the flip happen on every machine: while it is open, each decision named ``op`` made in
one model's forward returns another selection than it computed, as a tie broken the
other way would, and nothing else changes. Index results (top-k, sort) have their
first two entries swapped; an NMS keeps the first box it suppressed in place of the
first one it kept; a mask has the element at its largest input negated.

It sits *below* the verification's :class:`gdp_det.decisions.DecisionLog` (enter it
first): the log sees the flipped result as the op's own, exactly as for a real flip.
"""
import sys
from contextlib import contextmanager
from typing import List

import torch
import torch.nn as nn
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_flatten, tree_unflatten

from gdp_det.decisions import _name
from gdp_det.graph import watch_autograd_functions
from gdp_det.graph.atoms import flat_tensors


def _another_selection(op: str, result: torch.Tensor, floats: List[torch.Tensor]):
    """``result`` of decision ``op`` with a tie broken the other way, or ``None``."""
    if result.dtype == torch.bool:
        flat = result.clone().reshape(-1)
        at = (int(floats[0].reshape(-1).argmax())
              if floats and floats[0].shape == result.shape else 0)
        flat[at] = ~flat[at]
        return flat.view_as(result)
    if result.dim() == 0 or result.shape[-1] < 2:
        return None
    flipped = result.clone()
    if 'nms' in op.lower() and result.dim() == 1 and floats:
        suppressed = sorted(set(range(floats[0].shape[0])) - set(result.tolist()))
        if suppressed:
            flipped[0] = suppressed[0]
            return flipped
    flipped[..., [0, 1]] = result[..., [1, 0]]
    return None if torch.equal(flipped, result) else flipped


class _Flipper(TorchFunctionMode):
    """Flips the results of the decisions named ``op`` while ``active()``."""

    def __init__(self, op: str, active, flips: List[str]):
        super().__init__()
        self.op, self.active, self.flips = op, active, flips

    def __torch_function__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if _name(func) != self.op:
            return out
        return self.flip(self.op, (args, kwargs), out)

    def function_forward(self, cls, args, kwargs, out):
        if cls.__name__ != self.op:
            return None
        return self.flip(cls.__name__, (args, kwargs), out)

    def flip(self, op, inputs, out):
        if not self.active():
            return out
        floats = [t for t in flat_tensors(inputs) if t.is_floating_point()]
        leaves, spec = ([out], None) if isinstance(out, torch.Tensor) else tree_flatten(out)
        for i, t in enumerate(leaves):
            if isinstance(t, torch.Tensor) and not t.is_floating_point():
                other = _another_selection(op, t, floats)
                if other is not None:
                    leaves[i] = other
                    self.flips.append(op)
                    break
        return leaves[0] if spec is None else tree_unflatten(leaves, spec)


def _called_by(own) -> bool:
    """Whether a method of one of the modules whose ids are ``own`` is on the stack."""
    frame = sys._getframe(1)
    while frame is not None:
        if id(frame.f_locals.get('self')) in own:
            return True
        frame = frame.f_back
    return False


@contextmanager
def forced_flip(model: nn.Module, op: str):
    """Inside, every decision named ``op`` (a torch function such as ``'topk'``,
    ``'sort'``, ``'__eq__'``, or an ``autograd.Function`` such as ``'NMSop'``) made
    by the code of ``model`` or one of its modules (a method of theirs is on the
    stack) returns another selection, as a near-tie broken the other way would; other
    models' decisions, and the comparisons a check makes of the outputs after the
    forward, are untouched. Yields the list of flipped ops, one entry per flip made."""
    own = {id(m) for m in model.modules()}
    flips: List[str] = []
    flipper = _Flipper(op, lambda: _called_by(own), flips)
    with flipper, watch_autograd_functions(flipper.function_forward):
        yield flips
