"""Torch-Pruning's importance criteria on gdp_det's channel groups.

Where Torch-Pruning's own DependencyGraph cannot trace a detector (a two-stage detector's
``_forward`` needs data samples), the comparison still measures its criteria: the
channels of each of our coupled groups (:class:`~gdp_det.graph.ChannelGroup`) are scored
as Torch-Pruning 1.6 scores the channels of one of its groups, and cut by the same rule.

Scores, per group channel, from every member that holds the channel:

- ``'l1'`` (``GroupMagnitudeImportance(p=1)``): the L1 norm of the channel's slice of each
  member's weight (producers: output slice; consumers: input slice; depthwise carriers
  and norm layers: their channel);
- ``'bn'`` (``BNScaleImportance``, L1 for groups without a norm layer, as the comparison
  runs it): the norm layers' ``|weight|``;
- ``'taylor'`` (``GroupTaylorImportance``): ``|weight * grad|`` summed over the same
  slices.

Members' scores are summed and divided by the number of members, and each group's
scores by their mean (Torch-Pruning's ``group_reduction='mean'`` and
``normalizer='mean'``). Uniform pruning
cuts the same share of every group, lowest scores first; global pruning cuts the lowest
normalized scores of all groups together; either keeps at least one channel and at most
cuts ``max_ratio`` of a group (Torch-Pruning's ``max_pruning_ratio``).
"""
from __future__ import annotations

from typing import Dict, List, Optional

import numpy as np
import torch
import torch.nn as nn

CRITERIA = ('l1', 'bn', 'taylor')


def _per_channel(t: torch.Tensor, dim: int) -> np.ndarray:
    """Sum of ``t`` over every dimension but ``dim``, as a float64 array."""
    return t.detach().double().abs().transpose(0, dim).reshape(t.shape[dim], -1) \
        .sum(1).cpu().numpy()


def _weight(m: nn.Module, criterion: str) -> Optional[torch.Tensor]:
    w = getattr(m, 'weight', None)
    if w is None:
        return None
    if criterion == 'taylor':
        return None if w.grad is None else w * w.grad
    return w


def _grouped(w: torch.Tensor, groups: int, dim: int) -> np.ndarray:
    """Per channel along ``dim`` of each of ``groups`` equal row blocks of ``w`` (a
    grouped conv's weight), concatenated: the channels of block g are the g-th
    ``1 / groups`` of the layer's channels on that side."""
    rows = w.shape[0] // groups
    return np.concatenate([_per_channel(w[g * rows:(g + 1) * rows], dim)
                           for g in range(groups)])


def _side_scores(m: nn.Module, w: torch.Tensor, side: str) -> np.ndarray:
    """Per input (``side='in'``) or output channel of layer ``m``, its slice of ``w``
    (the weight, or weight x grad) summed. A conv's weight is (C_out, C_in / groups,
    ...), a transposed conv's (C_in, C_out / groups, ...); norm layers and depthwise
    carriers hold one weight per channel."""
    if w.dim() == 1:
        return _per_channel(w, 0)
    groups = getattr(m, 'groups', 1)
    first = 'in' if isinstance(m, nn.ConvTranspose2d) else 'out'  # the side on dim 0
    if side == first or 1 < groups == m.weight.shape[0]:  # (depthwise: a channel a row)
        return _per_channel(w, 0)
    return _grouped(w, groups, 1)


def group_scores(gated: nn.Module, criterion: str) -> List[np.ndarray]:
    """Per group of GDP model ``gated``'s graph, each channel's normalized score under
    ``criterion`` (``'taylor'`` reads the weights' ``.grad``)."""
    if criterion not in CRITERIA:
        raise ValueError(f'unknown criterion {criterion!r}; known: {", ".join(CRITERIA)}')
    graph = gated.gdp_gates.graph
    modules = dict(gated.named_modules())
    out = []
    for grp in graph.groups:
        use_norms = criterion == 'bn' and bool(grp.norms)
        kind = 'l1' if criterion == 'bn' else criterion
        outs = (grp.norms if use_norms else
                {**grp.producers, **grp.norms, **grp.carriers})
        members = ([('out', n, p) for n, p in outs.items()]
                   + ([] if use_norms else [('in', n, p) for n, p in grp.consumers.items()]))
        total, count = np.zeros(grp.size), 0
        for side, name, pos in members:
            m = modules[name]
            w = _weight(m, kind)
            if w is None:
                continue
            scores = _side_scores(m, w, side)
            sel = pos >= 0
            np.add.at(total, pos[sel], scores[:len(pos)][sel])
            count += 1
        score = total / max(count, 1)
        out.append(score / score.mean() if score.mean() > 0 else score)
    return out


def alive_for(scores: List[np.ndarray], ratio: float, global_pruning: bool,
              max_ratio: float = 0.9) -> np.ndarray:
    """Which channels (all groups, concatenated as the graph's global ids) survive
    cutting ``ratio`` of the channels by lowest score: of every group (uniform), or of
    all groups ranked together (global); each group keeps at least one channel and
    loses at most ``max_ratio`` of them. Ties are cut in channel order."""
    keep: List[np.ndarray] = []
    if not global_pruning:
        for s in scores:
            n_cut = min(int(round(ratio * len(s))), int(max_ratio * len(s)), len(s) - 1)
            k = np.ones(len(s), bool)
            k[np.argsort(s, kind='stable')[:n_cut]] = False
            keep.append(k)
        return np.concatenate(keep)
    allscores = np.concatenate(scores)
    n_cut = int(round(ratio * len(allscores)))
    threshold = np.sort(allscores, kind='stable')[n_cut - 1] if n_cut > 0 else -np.inf
    for s in scores:
        cap = min(int(max_ratio * len(s)), len(s) - 1)
        below = np.flatnonzero(s <= threshold)
        order = below[np.argsort(s[below], kind='stable')][:cap]
        k = np.ones(len(s), bool)
        k[order] = False
        keep.append(k)
    return np.concatenate(keep)


def prune_groups(gated: nn.Module, budget: float, criterion: str, global_pruning: bool,
                 grads: Optional[Dict[str, torch.Tensor]] = None) -> float:
    """Zero the gates of GDP model ``gated`` that ``criterion`` cuts (:func:`alive_for`),
    the ratio searched so that its FLOPs (:class:`~gdp_det.flops.FlopsModel`) are at
    most ``budget``; ``grads`` (parameter name -> gradient) feed ``'taylor'``. Returns
    the FLOPs ratio."""
    from .compare_methods import gate_within_budget
    for n, p in gated.named_parameters():
        if grads and n in grads:
            p.grad = grads[n]
    scores = group_scores(gated, criterion)
    ratio = gate_within_budget(gated, lambda r: alive_for(scores, r, global_pruning), budget,
                               grid=10, steps=8)
    gated.zero_grad(set_to_none=True)
    return ratio
