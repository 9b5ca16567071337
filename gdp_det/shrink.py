"""Shrinking a gated model in place once GDP's cut is final (``GDPHook(shrink_after_cut=True)``).

GDP trains the full-width gated model. Once the budget controller has made its cut, the
channels an export removes have gates at exactly 0, which never move again (``g'(0) = 0``
and the gates' step keeps them there): they contribute nothing to the output, and nothing
flows back into them but weight decay. Removing them from the live model, its optimizer
state and its EMA copy lets the rest of the phase train the pruned network at its cost,
with the same result. The kept gates keep training; the export at the end is the same
lossless one (it prunes :meth:`ChannelShrink.padded_copy`).

Checkpoints stay in the traced layout (:meth:`ChannelShrink.pad_state_dict`,
:meth:`ChannelShrink.pad_optimizer_state`: zeros in the removed channels, gates at 0), so
every tool that loads a GDP checkpoint (``tools/prune.py``, ``load_from``, the pipeline's
export) reads them unchanged, and a resumed run loads the full-width state and shrinks
again with the recorded channels.
"""
from __future__ import annotations

import copy
import logging
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn as nn

from .gates import GDPGateSet, add_gates
from .graph import ChannelGraph, ChannelGroup, LayerCall
from .pruner import (Cut, channel_masks, cut_tensor, fix_width_attributes, module_shape,
                     pad_tensor, slice_module, sliced_modules)

# (the parameter before the shrink, the one that replaced it, how it was cut)
Replaced = List[Tuple[torch.Tensor, torch.Tensor, Cut]]


def restrict_graph(graph: ChannelGraph, kept: Sequence[np.ndarray]) -> ChannelGraph:
    """The channel graph of the model that ``graph``'s model becomes when only ``kept``
    (per group, sorted channel indices) remain: the same groups, narrowed, every member's
    positions without the removed channels, and the calls with the global ids of the
    kept channels (so :class:`~gdp_det.flops.FlopsModel` of it counts the narrowed model).
    The calls keep no op geometry (a latency model needs the traced graph); a group
    keeps its name, so the narrowed graph's fingerprint differs only in the sizes."""
    out_mask, in_mask = channel_masks(graph, list(kept))
    new_id = np.full(graph.num_channels + 1, -1, np.int64)  # index -1: a fixed channel
    offsets = np.cumsum([0] + [len(k) for k in kept])
    for i, k in enumerate(kept):
        new_id[graph.offsets[i] + np.asarray(k, np.int64)] = offsets[i] + np.arange(len(k))

    def narrowed(pos: np.ndarray, mask: Optional[np.ndarray], local: np.ndarray) -> np.ndarray:
        pos = pos if mask is None else pos[mask]
        return np.where(pos >= 0, local[pos], -1)

    groups = []
    for i, (grp, k) in enumerate(zip(graph.groups, kept)):
        local = np.full(grp.size, -1, np.int64)
        local[np.asarray(k, np.int64)] = np.arange(len(k))
        new = ChannelGroup(grp.name, len(k))
        for kind, masks in (('producers', out_mask), ('norms', out_mask),
                            ('carriers', out_mask), ('consumers', in_mask)):
            for name, pos in getattr(grp, kind).items():
                getattr(new, kind)[name] = narrowed(pos, masks.get(name), local)
        groups.append(new)

    def ids(old: np.ndarray, mask: Optional[np.ndarray]) -> np.ndarray:
        return new_id[old if mask is None else old[mask]]

    calls = [LayerCall(c.name, ids(ci, in_mask.get(c.name)), ids(co, out_mask.get(c.name)),
                       c.coef, c.depthwise, c.param_coef)
             for c, ci, co in zip(graph.calls, graph.call_in, graph.call_out)]
    passthrough = {n: new_id[i[(i < 0) | (new_id[i] >= 0)]]
                   for n, i in graph.passthrough.items()}
    # the narrowed calls and pass-through ops already hold global channel ids
    return ChannelGraph(groups, calls, lambda a: a, dict(graph.fixed_reasons), passthrough,
                        graph.unsupported)


class ChannelShrink:
    """Removes one set of channels from live gated models, and puts them back in their
    checkpoints.

    Contract: made from the traced ``graph`` and ``kept``, the boolean mask over its
    channels of those that stay (what an export of the gates at the cut keeps, so every
    removed channel's gate is 0). :meth:`apply` narrows a gated model with that graph in
    place: every member module is sliced as the pruner slices it (no gate absorbed), and
    the model gets a gate set for :attr:`graph` (the narrowed graph) with the kept
    gates' values; the removed gates go. The model then computes what it computed
    (float rounding aside). It returns the parameters it replaced, for
    :func:`shrink_optimizer`. :attr:`index` is the traced id of each kept gate.
    :meth:`pad_state_dict`, :meth:`pad_optimizer_state` and :meth:`pad_gates` turn
    a shrunk model's state back into the traced layout (zeros in the removed channels,
    the traced graph's fingerprint); :meth:`padded_copy` is a gated model in the traced
    layout that computes what the shrunk one computes.

    A model shrinks again with :meth:`then` (a gradual cut): the next shrink cuts the
    narrowed graph and pads back through this one, so :attr:`traced`, :attr:`index`,
    :attr:`removed` and the padding always refer to the traced graph, and the chain
    leaves the model as one shrink by the last ``kept`` would. :attr:`local_index` is
    the position of each kept gate among the gates the shrink was applied to.
    """

    def __init__(self, graph: ChannelGraph, kept: np.ndarray,
                 outer: Optional['ChannelShrink'] = None):
        kept = np.asarray(kept, bool)
        self.base, self.outer = graph, outer  # the graph it cuts; the shrink before it
        self.traced = graph if outer is None else outer.traced
        self.kept = [np.flatnonzero(kept[graph.offsets[i]:graph.offsets[i + 1]])
                     for i in range(len(graph.groups))]
        self.local_index = np.flatnonzero(kept)
        self.index = self.local_index if outer is None else outer.index[self.local_index]
        self.removed = int(self.traced.num_channels - len(self.index))
        self.graph = restrict_graph(graph, self.kept)
        self.cuts: Dict[str, Cut] = {}  # state-dict key -> cut (aliases of shared modules too)
        self.widths: Dict[str, dict] = {}  # module -> its widths before the shrink
        self.fingerprint: Optional[torch.Tensor] = None  # of the cut graph's gate set

    def then(self, kept: np.ndarray) -> 'ChannelShrink':
        """The shrink of the model this one narrowed to ``kept`` (a mask over the traced
        graph's channels), taken as :meth:`narrow` takes it."""
        return ChannelShrink(self.graph, self.narrow(kept)[self.index], outer=self)

    def narrow(self, kept: np.ndarray) -> np.ndarray:
        """The traced channels of ``kept`` that the narrowed model still has. An export
        keeps a removed channel only as a zero-gated top-up (``min_channels``, or
        rounding to ``channel_divisor``, taken in index order), which computes nothing;
        a group left with none keeps as many of its live channels, first first (their
        gates are 0 too: the group has no live gate left)."""
        out = np.zeros(self.traced.num_channels, bool)
        out[self.index] = np.asarray(kept, bool)[self.index]
        for i in range(len(self.traced.groups)):
            lo, hi = self.traced.offsets[i], self.traced.offsets[i + 1]
            if not out[lo:hi].any():
                live = self.index[(self.index >= lo) & (self.index < hi)]
                out[live[:max(min(int(kept[lo:hi].sum()), len(live)), 1)]] = True
        return out

    # -- the live model ------------------------------------------------------------
    @torch.no_grad()
    def apply(self, model: nn.Module) -> Replaced:
        gates: GDPGateSet = model.gdp_gates
        if gates.a.numel() != self.base.num_channels:
            raise ValueError('ChannelShrink: the model is not in the layout it cuts '
                             f'({gates.a.numel()} gates, the graph has '
                             f'{self.base.num_channels} channels)')
        replaced: Replaced = []
        for name, m, om, im in sliced_modules(model, self.base, self.kept):
            old = dict(m.named_parameters(recurse=False))
            old.update(m.named_buffers(recurse=False))
            self.widths.setdefault(name, module_shape(m))
            for attr, cut in slice_module(name, m, om, im).items():
                replaced.append((old[attr], getattr(m, attr), cut))
        fix_width_attributes(model, self.base, self.kept)
        a, eps = gates.a.detach(), gates.eps_value
        self.fingerprint = gates.fingerprint.detach().cpu().clone()
        gates.detach_hooks()
        del model.gdp_gates
        new = add_gates(model, self.graph, gates.normalize, eps, gates.trace).gdp_gates
        new.to(a.device)
        new.a.copy_(a[torch.as_tensor(self.local_index, device=a.device)])
        self._record_keys(model, replaced)
        return replaced

    def _record_keys(self, model: nn.Module, replaced: Replaced) -> None:
        """The cut of every state-dict key of ``model`` that holds a replaced tensor
        (a module shared under several names has a key under each)."""
        cut_of = {id(new): cut for _, new, cut in replaced}
        for key, t in model.state_dict(keep_vars=True).items():
            if id(t) in cut_of:
                self.cuts[key] = cut_of[id(t)]
        self.cuts['gdp_gates.a'] = [(0, self._kept_mask())]

    def _kept_mask(self) -> np.ndarray:
        mask = np.zeros(self.base.num_channels, bool)
        mask[self.local_index] = True
        return mask

    # -- back to the traced layout ------------------------------------------------------
    def pad(self, key: str, t: torch.Tensor) -> torch.Tensor:
        """The tensor ``t`` of the shrunk model's state-dict entry ``key`` (or one
        shaped like it) in the traced layout."""
        cut = self.cuts.get(key)
        t = t if cut is None else pad_tensor(t, cut)
        return t if self.outer is None else self.outer.pad(key, t)

    def pad_gates(self, values: torch.Tensor) -> torch.Tensor:
        """A vector over the kept gates as one over the traced gates (0 elsewhere)."""
        return self.pad('gdp_gates.a', values)

    def pad_state_dict(self, state: dict, prefix: str = '') -> None:
        """``state`` (a shrunk model's state dict, its keys under ``prefix``) in the
        traced layout, in place."""
        for key in list(state):
            if key.startswith(prefix):
                state[key] = self.pad(key[len(prefix):], state[key])
        if prefix + 'gdp_gates.fingerprint' in state:
            state[prefix + 'gdp_gates.fingerprint'] = self._first().fingerprint.to(
                state[prefix + 'gdp_gates.fingerprint'].device)

    def _first(self) -> 'ChannelShrink':
        return self if self.outer is None else self.outer._first()

    def pad_optimizer_state(self, state: dict, optimizer: torch.optim.Optimizer,
                            model: nn.Module) -> None:
        """``state`` (``optimizer.state_dict()`` of the shrunk ``model``'s optimizer) in
        the traced layout, in place: every state tensor shaped like its parameter."""
        names = {id(p): n for n, p in model.named_parameters()}
        params = [p for g in optimizer.param_groups for p in g['params']]
        for i, entry in state['state'].items():
            p = params[i]
            if id(p) not in names:
                continue
            for k, v in entry.items():
                if torch.is_tensor(v) and v.shape == p.shape:
                    entry[k] = self.pad(names[id(p)], v)

    @torch.no_grad()
    def padded_copy(self, model: nn.Module) -> nn.Module:
        """A copy of the shrunk ``model`` in the traced layout: the removed channels
        back, with zero weights and zero gates (so the copy computes what ``model``
        computes), and a gate set of the traced graph. What the export prunes."""
        full = self._padded_once(model)
        return full if self.outer is None else self.outer.padded_copy(full)

    def _padded_once(self, model: nn.Module) -> nn.Module:
        """A copy of ``model`` in the layout this shrink cut (:attr:`base`)."""
        full = copy.deepcopy(model)
        modules = dict(full.named_modules())
        for name, widths in self.widths.items():
            m = modules[name]
            for attr, t in list(m.named_parameters(recurse=False)) + list(
                    m.named_buffers(recurse=False)):
                cut = self.cuts.get(f'{name}.{attr}')
                if cut is not None:
                    new = pad_tensor(t.detach(), cut)
                    setattr(m, attr, nn.Parameter(new, t.requires_grad)
                            if isinstance(t, nn.Parameter) else new)
            for k, v in widths.items():
                setattr(m, k, v)
        fix_width_attributes(full, self.base, [np.arange(g.size) for g in self.base.groups])
        gates = full.gdp_gates
        gates.detach_hooks()
        del full.gdp_gates
        new = add_gates(full, self.base, gates.normalize, gates.eps_value,
                        gates.trace).gdp_gates
        new.to(gates.a.device)
        new.a.copy_(pad_tensor(gates.a.detach(), [(0, self._kept_mask())]))
        return full


def shrink_optimizer(optimizer: torch.optim.Optimizer, replaced: Replaced) -> None:
    """Point ``optimizer`` at the parameters that replaced the old ones, and cut its
    state of each (momentum, Adam's moments: every state tensor shaped like its
    parameter) as the parameter was cut; scalars (Adam's ``step``) stay."""
    new_of = {id(old): (new, cut) for old, new, cut in replaced}
    for group in optimizer.param_groups:
        group['params'] = [new_of[id(p)][0] if id(p) in new_of else p for p in group['params']]
    for old, new, cut in replaced:
        state = optimizer.state.pop(old, None)
        if state is not None:
            optimizer.state[new] = {
                k: cut_tensor(v, cut) if torch.is_tensor(v) and v.shape == old.shape else v
                for k, v in state.items()}


def shrink_averaged(averaged: nn.Module, shrink: ChannelShrink) -> None:
    """Shrink an mmengine ``BaseAveragedModel`` (an ``EMAHook``'s copy): its module, and
    the tensors it averages (it keeps its own references to them)."""
    shrink.apply(averaged.module)
    averaged.avg_parameters = (averaged.module.state_dict() if averaged.update_buffers
                               else dict(averaged.module.named_parameters()))


def _unsupported(runner) -> Optional[str]:
    """Why the runner's model cannot shrink in place (None: it can)."""
    from mmengine.model import is_model_wrapper
    from torch.nn.parallel import DistributedDataParallel
    if is_model_wrapper(runner.model) and not isinstance(runner.model, DistributedDataParallel):
        return f'the model is wrapped in {type(runner.model).__name__}'
    if not isinstance(getattr(runner.optim_wrapper, 'optimizer', None), torch.optim.Optimizer):
        return 'the optim_wrapper holds no single torch optimizer'
    return None


@torch.no_grad()
def shrink_runner(runner, graph: ChannelGraph, kept: np.ndarray,
                  averaged: Optional[nn.Module] = None,
                  previous: Optional[ChannelShrink] = None) -> Optional[ChannelShrink]:
    """Remove the channels of the traced ``graph`` that ``kept`` leaves out from the
    runner's model (re-wrapped under DDP, which keeps the parameters it was made with),
    its optimizer's state and ``averaged`` (an ``EMAHook``'s copy, or None); returns the
    :class:`ChannelShrink` (``previous.then(kept)`` when the model was shrunk by
    ``previous`` before). Where it cannot (FSDP/DeepSpeed wrappers, several optimizers)
    it changes nothing, warns and returns None."""
    from mmengine.logging import print_log
    from mmengine.model import is_model_wrapper
    from .detector import unwrap
    why = _unsupported(runner)
    if why:
        print_log(f'GDPHook: shrink_after_cut is not supported when {why}; training on at '
                  'full width', logger='current', level=logging.WARNING)
        return None
    shrink = ChannelShrink(graph, kept) if previous is None else previous.then(kept)
    shrink_optimizer(runner.optim_wrapper.optimizer, shrink.apply(unwrap(runner.model)))
    if is_model_wrapper(runner.model):
        runner.model = runner.wrap_model(copy.deepcopy(runner.cfg.get('model_wrapper_cfg')),
                                         unwrap(runner.model))
    if averaged is not None:
        shrink_averaged(averaged, shrink)
    return shrink


def pad_checkpoint(shrink: ChannelShrink, runner, checkpoint: dict) -> None:
    """Put the runner's checkpoint (model, EMA copy, optimizer state) back in the traced
    layout of ``shrink``'s graph."""
    from .detector import unwrap
    shrink.pad_state_dict(checkpoint['state_dict'])
    if 'ema_state_dict' in checkpoint:  # (EMAHook, which runs first, swapped the two)
        shrink.pad_state_dict(checkpoint['ema_state_dict'], prefix='module.')
    if 'optimizer' in checkpoint:
        shrink.pad_optimizer_state(checkpoint['optimizer'], runner.optim_wrapper.optimizer,
                                   unwrap(runner.model))
