"""Lossless extraction: remove zero-gated channels, absorb the others' gates.

The pruner only edits modules. Given a :class:`ChannelGraph` and the gate values,
it (1) multiplies each gated layer's input-channel slices of the kernel by their
gates, (2) decides per group which channels to keep (non-zero gates, topped up to
``min_channels`` and a multiple of ``channel_divisor`` with zero-gated channels,
which stay exact because their absorbed gate is 0), and (3) slices every member
module: producers' outputs, consumers' inputs, BatchNorm channels, GroupNorm
blocks (``num_groups`` follows) and depthwise convs (in = out, ``groups`` follows). The result has no gates and plain
``nn.Conv2d`` / ``nn.BatchNorm2d`` / ``nn.Linear`` modules.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Dict, List, Tuple

import numpy as np
import torch
import torch.nn as nn

from .graph import ChannelGraph
from .pruned_module import ConstantConv, replace_module


def group_minimum(min_channels: float, size: int) -> int:
    """Channels a group of ``size`` keeps at least: ``min_channels`` as a count, or
    as a share of the group when it is a fraction in (0, 1)."""
    if 0 < min_channels < 1:
        return min(size, int(np.ceil(min_channels * size)))
    return min(size, max(int(min_channels), 0))


def choose_kept(graph: ChannelGraph, gates, min_channels: float = 1,
                channel_divisor: int = 1, warn: bool = True) -> List[np.ndarray]:
    """Sorted channel indices to keep, per group: the non-zero gates, topped up with
    zero-gated channels (exact: their absorbed gate is 0) to ``min_channels`` and to a
    multiple of ``channel_divisor``, and one channel for every producer of the group."""
    g = gates.detach().cpu().double().numpy() if torch.is_tensor(gates) else np.asarray(gates)
    kept = []
    for i, grp in enumerate(graph.groups):
        vals = g[graph.offsets[i]:graph.offsets[i + 1]]
        keep = np.flatnonzero(vals != 0)
        want = max(len(keep), group_minimum(min_channels, grp.size))
        if channel_divisor > 1:
            want = min(grp.size, int(np.ceil(want / channel_divisor) * channel_divisor))
        if len(keep) == 0 and want > 0 and warn:
            warnings.warn(f'GDP: every gate of group {grp.name} is zero; keeping {want} '
                          'channel(s) (their absorbed gate is 0, the output is unchanged)')
        if want > len(keep):
            order = np.argsort(-vals, kind='stable')
            extra = order[~np.isin(order, keep)][:want - len(keep)]
            keep = np.concatenate([keep, extra.astype(np.int64)])
        kept.append(_every_member_keeps_one(grp, np.sort(keep), vals))
    return kept


def exported_channels(graph: ChannelGraph, gates, min_channels: float = 1,
                      channel_divisor: int = 1) -> np.ndarray:
    """Boolean mask over the graph's channels: those the export of a model with these
    gate values (or ``|a|``: only zeros and the order matter) keeps. What a budget
    controller must count to land the export, not the gates, on its target."""
    kept = choose_kept(graph, gates, min_channels, channel_divisor, warn=False)
    return kept_mask(graph, kept)


def _every_member_keeps_one(grp, keep: np.ndarray, vals: np.ndarray) -> np.ndarray:
    """A group can span several producers (a concat feeding a depthwise conv); none
    may lose all its channels. Adds each such producer's highest-gate channel (exact:
    a zero gate is absorbed as 0)."""
    extra = []
    for pos in list(grp.producers.values()) + list(grp.carriers.values()):
        own = pos[pos >= 0]
        if len(own) and not np.isin(own, keep).any():
            extra.append(int(own[np.argmax(vals[own])]))
    return np.unique(np.concatenate([keep, np.array(extra, dtype=np.int64)])) if extra else keep


def channel_masks(graph: ChannelGraph, kept: List[np.ndarray]):
    """Per module: boolean keep-mask of output channels and of input channels."""
    out_mask: Dict[str, np.ndarray] = {}
    in_mask: Dict[str, np.ndarray] = {}

    def apply(store, name, pos, keep_set):
        m = store.setdefault(name, np.ones(len(pos), bool))
        sel = pos >= 0
        m[sel] &= np.isin(pos[sel], keep_set)

    for grp, keep in zip(graph.groups, kept):
        for name, pos in grp.producers.items():
            apply(out_mask, name, pos, keep)
        for name, pos in grp.norms.items():
            apply(out_mask, name, pos, keep)
        for name, pos in grp.carriers.items():
            apply(out_mask, name, pos, keep)
            apply(in_mask, name, pos, keep)
        for name, pos in grp.consumers.items():
            apply(in_mask, name, pos, keep)
    return out_mask, in_mask


@torch.no_grad()
def absorb_gates(model: nn.Module, consumer_index: Dict[str, np.ndarray],
                 gates: torch.Tensor) -> None:
    """Scale each gated layer's input-channel kernel slices by their gate values."""
    modules = dict(model.named_modules())
    ext = torch.cat([gates.detach().cpu(), torch.ones(1)])
    for name, idx in consumer_index.items():
        m = modules[name]
        scale = ext[torch.as_tensor(idx)].to(m.weight.device, m.weight.dtype)
        if isinstance(m, nn.ConvTranspose2d):
            m.weight.mul_(scale.view(-1, 1, 1, 1))
        elif isinstance(m, nn.Conv2d):
            # output o of conv group k reads inputs k * (C_in / groups) + j
            per_group = scale.view(m.groups, -1)
            m.weight.mul_(per_group.repeat_interleave(m.out_channels // m.groups, 0)
                          .view(m.out_channels, -1, 1, 1))
        elif isinstance(m, nn.Linear):
            m.weight.mul_(scale.view(1, -1))
        else:
            raise TypeError(f'GDP cannot absorb a gate into {name} ({type(m).__name__}); '
                            f'exclude it with exclude=["{name}"]')


# How one tensor of a module is sliced: ``(dim, boolean keep mask)`` steps, in order.
Cut = List[Tuple[int, np.ndarray]]


def cut_tensor(t: torch.Tensor, cut: Cut) -> torch.Tensor:
    """The entries of ``t`` that ``cut`` keeps (a new tensor)."""
    for dim, mask in cut:
        t = t.index_select(dim, torch.as_tensor(np.flatnonzero(mask), device=t.device))
    return t


def pad_tensor(t: torch.Tensor, cut: Cut) -> torch.Tensor:
    """The inverse of :func:`cut_tensor`: ``t`` back in the uncut shape, zeros where
    ``cut`` removed entries."""
    for dim, mask in reversed(cut):
        shape = list(t.shape)
        shape[dim] = len(mask)
        idx = torch.as_tensor(np.flatnonzero(mask), device=t.device)
        t = t.new_zeros(shape).index_copy_(dim, idx, t)
    return t


def module_cuts(name: str, m: nn.Module, out_mask, in_mask) -> Tuple[Dict[str, Cut], dict]:
    """How slicing one module to the masked output / input channels changes it: the
    :data:`Cut` of each of its tensors (parameters, BN running statistics) and its new
    width attributes (``in_channels``, ``num_features``, ...)."""
    cuts: Dict[str, Cut] = {}
    widths: dict = {}

    def add(attr, dim, mask):
        if getattr(m, attr, None) is not None:
            cuts.setdefault(attr, []).append((dim, mask))

    if isinstance(m, nn.ConvTranspose2d):
        if in_mask is not None:
            add('weight', 0, in_mask)
            widths['in_channels'] = int(in_mask.sum())
        if out_mask is not None:
            add('weight', 1, out_mask)
            add('bias', 0, out_mask)
            widths['out_channels'] = int(out_mask.sum())
    elif isinstance(m, nn.Conv2d):
        if m.groups > 1 and m.groups == m.in_channels == m.out_channels:  # depthwise
            mask = out_mask if out_mask is not None else in_mask
            add('weight', 0, mask)
            add('bias', 0, mask)
            n = int(mask.sum())
            widths.update(in_channels=n, out_channels=n, groups=n)
            return cuts, widths
        if out_mask is not None:
            add('weight', 0, out_mask)
            add('bias', 0, out_mask)
            widths['out_channels'] = int(out_mask.sum())
        if in_mask is not None:
            per_group = in_mask.reshape(m.groups, -1)
            if not (per_group == per_group[:1]).all():
                raise ValueError(f'{name}: the kept input channels differ between the conv '
                                 'groups (the tracer ties them; was the graph edited?)')
            add('weight', 1, per_group[0])
            widths['in_channels'] = int(in_mask.sum())
    elif isinstance(m, nn.Linear):
        if out_mask is not None:
            add('weight', 0, out_mask)
            add('bias', 0, out_mask)
            widths['out_features'] = int(out_mask.sum())
        if in_mask is not None:
            add('weight', 1, in_mask)
            widths['in_features'] = int(in_mask.sum())
    elif isinstance(m, (nn.modules.batchnorm._BatchNorm, nn.GroupNorm)):
        if out_mask is None:
            return cuts, widths
        n = int(out_mask.sum())
        if isinstance(m, nn.GroupNorm):  # whole blocks go (the tracer ties them)
            widths.update(num_groups=n // (m.num_channels // m.num_groups), num_channels=n)
        else:
            widths['num_features'] = n
        for attr in ('weight', 'bias', 'running_mean', 'running_var'):
            add(attr, 0, out_mask)
    else:
        raise TypeError(f'GDP cannot prune {name} ({type(m).__name__}); '
                        f'exclude it with exclude=["{name}"]')
    return cuts, widths


@torch.no_grad()
def slice_module(name: str, m: nn.Module, out_mask, in_mask) -> Dict[str, Cut]:
    """Keep only the masked output / input channels of one module (in place): every
    sliced tensor is a new one (a parameter stays a parameter, frozen or not). Returns
    the :data:`Cut` of each (see :func:`module_cuts`)."""
    cuts, widths = module_cuts(name, m, out_mask, in_mask)
    for attr, cut in cuts.items():
        t = getattr(m, attr)
        new = cut_tensor(t.detach(), cut)
        setattr(m, attr, nn.Parameter(new, t.requires_grad) if isinstance(t, nn.Parameter)
                else new)
    for k, v in widths.items():
        setattr(m, k, v)
    return cuts


def sliced_modules(model: nn.Module, graph: ChannelGraph, kept: List[np.ndarray]):
    """``(name, module, out_mask, in_mask)`` of every module that keeping ``kept`` (per
    group) changes: the members of the graph's groups that lose a channel."""
    out_mask, in_mask = channel_masks(graph, kept)
    modules = dict(model.named_modules())
    for name in sorted(set(out_mask) | set(in_mask)):
        om, im = out_mask.get(name), in_mask.get(name)
        if (om is None or om.all()) and (im is None or im.all()):
            continue
        yield name, modules[name], om, im


def prune_channels(model: nn.Module, graph: ChannelGraph,
                   kept: List[np.ndarray]) -> Dict[str, dict]:
    """Slice every member module of every group; returns the new shapes per module."""
    shapes: Dict[str, dict] = {}
    for name, m, om, im in sliced_modules(model, graph, kept):
        slice_module(name, m, om, im)
        shapes[name] = module_shape(m)
    return shapes


def module_shape(m: nn.Module) -> dict:
    """The constructor widths of a pruned module (what an exported config records)."""
    if isinstance(m, nn.Conv2d) or isinstance(m, nn.ConvTranspose2d):
        return dict(in_channels=m.in_channels, out_channels=m.out_channels, groups=m.groups)
    if isinstance(m, nn.Linear):
        return dict(in_features=m.in_features, out_features=m.out_features)
    if isinstance(m, nn.modules.batchnorm._BatchNorm):
        return dict(num_features=m.num_features)
    if isinstance(m, nn.GroupNorm):
        return dict(num_channels=m.num_channels, num_groups=m.num_groups)
    raise TypeError(type(m).__name__)


def replace_zero_kernels(model: nn.Module, consumers, shapes: Dict[str, dict]) -> None:
    """Gated convs whose kernel is all zero after absorption (all they read has a zero
    gate) become :class:`ConstantConv`: exact, and they compute nothing."""
    modules = dict(model.named_modules())
    for name in consumers:
        m = modules[name]
        if (isinstance(m, nn.Conv2d) and not isinstance(m, nn.ConvTranspose2d)
                and not m.weight.any()):
            shapes[name] = dict(shapes.get(name) or module_shape(m), constant=True)
            replace_module(model, name, ConstantConv(m))


def kept_mask(graph: ChannelGraph, kept: List[np.ndarray]) -> np.ndarray:
    """Boolean mask over the graph's global channel ids: True where kept."""
    alive = np.zeros(graph.num_channels, bool)
    for i, keep in enumerate(kept):
        alive[graph.offsets[i] + keep] = True
    return alive


def fix_width_attributes(model: nn.Module, graph: ChannelGraph,
                         kept: List[np.ndarray]) -> Dict[str, dict]:
    """Update ``out_channels`` of modules that own a pass-through op (RoI extractors).

    Such modules allocate their output from a stated width at run time; returns the
    new attribute values per module name. A GRoIE extractor with a pre-processing
    module (``with_pre``) allocates the width of that module's output, which the
    tracer keeps fixed (it is added into that allocation): left as it is.
    """
    alive = np.append(kept_mask(graph, kept), True)  # index -1 reads True (fixed)
    modules = dict(model.named_modules())
    attrs: Dict[str, dict] = {}
    for name, idx in graph.passthrough.items():
        width = int(alive[idx].sum())
        parts = name.split('.')
        for k in range(len(parts) - 1, 0, -1):
            owner = '.'.join(parts[:k])
            if isinstance(getattr(modules[owner], 'out_channels', None), int):
                if getattr(modules[owner], 'with_pre', False):
                    break
                if modules[owner].out_channels != width:
                    modules[owner].out_channels = width
                    attrs[owner] = dict(out_channels=width)
                break
    return attrs


@dataclass
class PruneResult:
    """What :func:`extract_pruned` did: ``shapes`` (new constructor widths per sliced
    module), ``attrs`` (updated width attributes of other modules, e.g. RoI
    extractors' ``out_channels``) and ``kept`` (per group of the graph, the sorted
    channel indices kept)."""
    shapes: Dict[str, dict]
    attrs: Dict[str, dict]
    kept: List[np.ndarray]


def extract_pruned(model: nn.Module, min_channels: float = 1,
                   channel_divisor: int = 1) -> PruneResult:
    """Turn a gated model (with ``gdp_gates``) into the plain pruned model, in place.

    The result computes what the gated model computed (up to float rounding). A conv
    that reads only zero-gated channels (a residual block's second conv when the
    block's inner group is all zero) becomes a :class:`ConstantConv`, leaving the
    block its shortcut and a constant.
    """
    gates = model.gdp_gates
    graph: ChannelGraph = gates.graph
    values = gates.values().detach()
    if not torch.isfinite(values).all():
        raise ValueError('GDP gates contain NaN/Inf: the checkpoint is corrupt or training '
                         'diverged; resume from an earlier checkpoint')
    absorb_gates(model, gates.consumer_index(), values)
    gates.detach_hooks()
    del model.gdp_gates
    kept = choose_kept(graph, values, min_channels, channel_divisor)
    shapes = prune_channels(model, graph, kept)
    replace_zero_kernels(model, gates.consumer_index(), shapes)
    attrs = fix_width_attributes(model, graph, kept)
    return PruneResult(shapes, attrs, kept)
