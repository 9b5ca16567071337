"""GDP gates: one trainable gate vector per channel group, applied before consumers.

``g_eps(a) = a^2 / (a^2 + eps)`` (paper). With ``normalize=True`` (default, our
design) the gate is multiplied by ``(1 + eps)`` so that ``g(1) = 1`` for every eps:
inserting gates with ``a = 1`` into a trained model leaves its outputs unchanged,
and annealing eps never rescales surviving channels. ``g(0) = 0`` with zero slope
either way, so a gate pushed to exactly zero stays there.
"""
from __future__ import annotations

from typing import Dict, List

import numpy as np
import torch
import torch.nn as nn

from .graph import ChannelGraph


def gate_value(a: torch.Tensor, eps: float, normalize: bool = True) -> torch.Tensor:
    """Smoothed L0 gate of architecture parameters ``a`` (see module docstring)."""
    sq = a * a
    g = sq / (sq + eps)
    return g * (1.0 + eps) if normalize else g


class _GateInput:
    """Forward pre-hook multiplying a layer's input channels by their gates.

    Only the slice ``[lo, hi)`` of the gate vector that this layer reads is
    evaluated; ``index`` maps each input position into that slice (-1: fixed).
    """

    def __init__(self, gates: 'GDPGateSet', index: np.ndarray):
        valid = index[index >= 0]
        self.lo, self.hi = int(valid.min()), int(valid.max()) + 1
        local = np.where(index >= 0, index - self.lo, self.hi - self.lo)
        self.gates = gates
        # the common case, every position gated in order: a slice, no gather
        self.identity = bool((local == np.arange(len(local))).all()) and len(local) == self.hi - self.lo
        self.index = torch.as_tensor(local, dtype=torch.long)

    def vector(self) -> torch.Tensor:
        """The gate of every input position of the layer (1 where fixed)."""
        gates = self.gates
        g = gate_value(gates.a[self.lo:self.hi], float(gates.eps), gates.normalize)
        if self.identity:
            return g
        g = torch.cat([g, g.new_ones(1)])
        if self.index.device != g.device:
            self.index = self.index.to(g.device)
        return g[self.index]

    def __call__(self, module: nn.Module, args):
        x, g = args[0], self.vector()
        if not isinstance(module, nn.Linear):  # channels in dim 1, else in the last dim
            g = g.view(-1, *([1] * (x.dim() - 2)))
        return (x * g, ) + tuple(args[1:])


class _GateConvWeight(_GateInput):
    """Gates a (non-grouped) conv through whichever of its kernel and its input is
    smaller: ``conv(x * g, W)`` equals ``conv(x, W * g)`` exactly (zero padding stays
    zero); at high resolution the kernel is far smaller than the activation (the
    forward and the backward then scale the kernel), at low resolution the reverse.

    Installed as the layer's own ``_conv_forward`` (what ``nn.ConvNd.forward``
    calls), so mmcv's conv wrappers and every caller are covered.
    """

    def __init__(self, gates: 'GDPGateSet', index: np.ndarray, conv_forward):
        super().__init__(gates, index)
        self.conv_forward = conv_forward

    def __call__(self, x, weight, bias):
        g = self.vector().view(1, -1, *([1] * (weight.dim() - 2)))
        if weight.numel() <= x.numel():
            return self.conv_forward(x, weight * g, bias)
        return self.conv_forward(x * g, weight, bias)


def _weight_gated(module: nn.Module) -> bool:
    return (isinstance(module, (nn.Conv1d, nn.Conv2d, nn.Conv3d)) and module.groups == 1
            and '_conv_forward' not in module.__dict__)


class GDPGateSet(nn.Module):
    """All gates of a model: parameter ``a`` (one entry per gated channel) and ``eps``.

    Contract: ``group_slices[i]`` is the slice of ``a`` that holds group ``i`` of the
    graph it was made from; :meth:`attach` makes every gated layer of ``model`` see
    ``x * g`` on its input channels (fixed channels see 1). ``eps`` is a buffer, so it
    travels with checkpoints.
    """

    def __init__(self, graph: ChannelGraph, normalize: bool = True, eps: float = 1.0):
        super().__init__()
        self.a = nn.Parameter(torch.ones(graph.num_channels))
        self.register_buffer('eps', torch.tensor(float(eps), dtype=torch.float64))
        self.normalize = normalize
        self.group_names: List[str] = [g.name for g in graph.groups]
        self.group_slices = [slice(int(graph.offsets[i]), int(graph.offsets[i + 1]))
                             for i in range(len(graph.groups))]
        self._consumer_index: Dict[str, np.ndarray] = graph.consumer_global_index()
        self._handles: list = []

    def values(self) -> torch.Tensor:
        return gate_value(self.a, float(self.eps), self.normalize)

    def attach(self, model: nn.Module) -> None:
        modules = dict(model.named_modules())
        for name, idx in self._consumer_index.items():
            if (idx < 0).all():
                continue
            module = modules[name]
            if _weight_gated(module):
                module._conv_forward = _GateConvWeight(self, idx, module._conv_forward)
                self._handles.append(module)
            else:
                self._handles.append(module.register_forward_pre_hook(_GateInput(self, idx)))

    def detach_hooks(self) -> None:
        for h in self._handles:
            if isinstance(h, nn.Module):
                del h.__dict__['_conv_forward']
            else:
                h.remove()
        self._handles = []

    def consumer_index(self) -> Dict[str, np.ndarray]:
        return self._consumer_index

    def extra_repr(self) -> str:
        return f'groups={len(self.group_names)}, channels={self.a.numel()}'


def add_gates(model: nn.Module, graph: ChannelGraph, normalize: bool = True,
              eps: float = 1.0, trace_cfg: dict = None) -> nn.Module:
    """Give ``model`` a ``gdp_gates`` set for ``graph`` and gate its consumers."""
    gates = GDPGateSet(graph, normalize=normalize, eps=eps)
    gates.attach(model)
    model.gdp_gates = gates
    # plain attributes (not modules): the graph and how it was traced
    model.__dict__['gdp_graph'] = graph
    model.__dict__['gdp_trace_cfg'] = dict(trace_cfg or {}, normalize=normalize)
    return model
