"""GDP gates: one trainable gate vector per channel group, applied before consumers.

``g_eps(a) = a^2 / (a^2 + eps)`` (paper). With ``normalize=True`` (default, our
design) the gate is multiplied by ``(1 + eps)`` so that ``g(1) = 1`` for every eps:
inserting gates with ``a = 1`` into a trained model leaves its outputs unchanged,
and annealing eps never rescales surviving channels. ``g(0) = 0`` with zero slope
either way, so a gate pushed to exactly zero stays there.

Where the gates run (GPU training): ``eps`` is a Python float, ``a`` and the ``eps``
buffer stay float32 whatever the model's dtype (``model.half()``), gate values are
computed in float32 (no underflow of eps) and cast to the dtype of what they
multiply (no fp32 promotion under autocast) while their gradient is reduced in
float32 (no fp16 overflow the AMP scaler could not see), and every consumer's gate
vector is computed once per value of ``a`` and ``eps`` (not per layer call), by an
autograd function that needs no saved tensors, so it is reused by every forward
until the gates change (under ``torch.compile`` the compiled graph computes them
instead). Nothing in the gate path reads a tensor back to the host.
"""
from __future__ import annotations

import zlib
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Tuple

import numpy as np
import torch
import torch.nn as nn

from .graph import OPAQUE, ChannelGraph


def gate_value(a: torch.Tensor, eps: float, normalize: bool = True) -> torch.Tensor:
    """Smoothed L0 gate of architecture parameters ``a`` (see module docstring)."""
    sq = a * a
    g = sq / (sq + eps)
    return g * (1.0 + eps) if normalize else g


def gate_slope(a: torch.Tensor, eps: float, normalize: bool = True) -> torch.Tensor:
    """``d g / d a`` of :func:`gate_value`."""
    sq = a * a
    d = 2.0 * eps * a / (sq + eps) ** 2
    return d * (1.0 + eps) if normalize else d


def _consumer_gates(a: torch.Tensor, spec: '_ConsumerSpec', eps, normalize: bool):
    """Float32 gate values of ``a[lo:hi]``, gathered by ``spec.index`` (a fixed
    channel: gate 1); ``eps`` a float or a tensor."""
    g = gate_value(a[spec.lo:spec.hi].float(), eps, normalize)
    if spec.index is not None:
        g = torch.cat([g, g.new_ones(1)])[spec.index_on(g.device)]
    return g


class _GateVector(torch.autograd.Function):
    """:func:`_consumer_gates` with a backward that saves no tensors (``a`` is kept
    as a detached reference and the gate set re-computes when ``a`` changes), so one
    result can be back-propagated by any number of forward passes."""

    @staticmethod
    def forward(ctx, a, spec: '_ConsumerSpec', eps: float, normalize: bool):
        ctx.spec, ctx.eps, ctx.normalize, ctx.a = spec, eps, normalize, a.detach()
        return _consumer_gates(a, spec, eps, normalize)

    @staticmethod
    def backward(ctx, grad):
        spec = ctx.spec
        a = ctx.a[spec.lo:spec.hi].float()
        grad = grad.float()
        if spec.index is not None:  # sum the positions that read the same gate
            grad = grad.new_zeros(spec.hi - spec.lo + 1).index_add_(
                0, spec.index_on(grad.device), grad)[:-1]
        out = torch.zeros_like(ctx.a)
        out[spec.lo:spec.hi] = (grad * gate_slope(a, ctx.eps, ctx.normalize)).to(out.dtype)
        return out, None, None, None


def _along(g: torch.Tensor, t: torch.Tensor, dim: int) -> torch.Tensor:
    """``g`` as ``t``'s dtype, shaped to broadcast along dimension ``dim`` of ``t``."""
    shape = [1] * t.dim()
    shape[dim] = -1
    return g.to(t.dtype).view(shape)


class _ScaleChannels(torch.autograd.Function):
    """``t * g`` along dimension ``dim`` of ``t`` (``g``: float32 gates, cast to
    ``t``'s dtype for the product, so the result keeps ``t``'s dtype). The gates'
    gradient, a sum over every other position of ``t``, is reduced in float32: under
    fp16 AMP it sums a scaled gradient and would overflow to inf where the weights'
    gradients stay finite, unseen by the scaler (the gates are not in its optimizer).
    Costs float32 copies of ``t`` and its gradient in the backward when ``t`` is
    not float32."""

    @staticmethod
    def forward(ctx, t: torch.Tensor, g: torch.Tensor, dim: int):
        ctx.dim = dim
        ctx.save_for_backward(t, g)
        return t * _along(g, t, dim)

    @staticmethod
    def backward(ctx, grad):
        t, g = ctx.saved_tensors
        grad_t = grad_g = None
        if ctx.needs_input_grad[0]:
            grad_t = grad * _along(g, grad, ctx.dim)
        if ctx.needs_input_grad[1]:
            others = [d for d in range(t.dim()) if d != ctx.dim % t.dim()]
            grad_g = (grad.float() * t.float()).sum(others)
        return grad_t, grad_g, None


@dataclass
class _ConsumerSpec:
    """Which gates one gated layer reads: the slice ``[lo, hi)`` of ``a`` and, unless
    the layer reads that slice in order, the position of each input channel in it
    (``hi - lo``: a fixed channel)."""
    lo: int
    hi: int
    index: Optional[torch.Tensor]
    _on_device: Dict[torch.device, torch.Tensor] = field(default_factory=dict)

    @classmethod
    def from_global_index(cls, index: np.ndarray) -> '_ConsumerSpec':
        valid = index[index >= 0]
        lo, hi = int(valid.min()), int(valid.max()) + 1
        local = np.where(index >= 0, index - lo, hi - lo)
        identity = len(local) == hi - lo and bool((local == np.arange(len(local))).all())
        return cls(lo, hi, None if identity else torch.as_tensor(local, dtype=torch.long))

    def index_on(self, device: torch.device) -> torch.Tensor:
        if device not in self._on_device:  # a host-to-device copy, once per device
            self._on_device[device] = self.index.to(device)
        return self._on_device[device]


class _GateInput:
    """Forward pre-hook multiplying a layer's input channels by their gates."""

    def __init__(self, gates: 'GDPGateSet', name: str):
        self.gates, self.name = gates, name

    def __call__(self, module: nn.Module, args):
        x = args[0]
        dim = -1 if isinstance(module, nn.Linear) else 1  # where the channels are
        g = self.gates.vector(self.name, x.device)
        return (_ScaleChannels.apply(x, g, dim), ) + tuple(args[1:])


class _GateConvWeight:
    """Gates a (non-grouped) conv through whichever of its kernel and its input is
    smaller: ``conv(x * g, W)`` equals ``conv(x, W * g)`` exactly (zero padding stays
    zero); at high resolution the kernel is far smaller than the activation (the
    forward and the backward then scale the kernel), at low resolution the reverse.

    Installed as the layer's own ``_conv_forward`` (what ``nn.ConvNd.forward``
    calls), so mmcv's conv wrappers and every caller are covered.
    """

    def __init__(self, gates: 'GDPGateSet', name: str, conv_forward):
        self.gates, self.name, self.conv_forward = gates, name, conv_forward

    def __call__(self, x, weight, bias):
        g = self.gates.vector(self.name, x.device)
        if weight.numel() <= x.numel():  # input channels: dim 1 of both
            return self.conv_forward(x, _ScaleChannels.apply(weight, g, 1), bias)
        return self.conv_forward(_ScaleChannels.apply(x, g, 1), weight, bias)


def _forwards_through_conv_forward() -> tuple:
    """``forward`` methods known to reach ``self._conv_forward``: torch's convs and
    mmcv's wrappers of them (which call ``super().forward``)."""
    known = [nn.Conv1d.forward, nn.Conv2d.forward, nn.Conv3d.forward]
    try:
        from mmcv.cnn.bricks import wrappers
        known += [wrappers.Conv2d.forward, wrappers.Conv3d.forward]
    except ImportError:
        pass
    return tuple(known)


_CONV_FORWARDS = _forwards_through_conv_forward()


def _weight_gated(module: nn.Module) -> bool:
    """Whether the gate can scale ``module``'s kernel: a non-grouped conv whose
    ``forward`` is known to call ``_conv_forward``. Any other conv (e.g. mmcv's
    ``Conv2dAdaptivePadding`` calls ``F.conv2d`` itself) is gated on its input by a
    forward pre-hook, which no ``forward`` can bypass."""
    return (isinstance(module, (nn.Conv1d, nn.Conv2d, nn.Conv3d)) and module.groups == 1
            and type(module).forward in _CONV_FORWARDS
            and '_conv_forward' not in module.__dict__)


@dataclass
class TraceSettings:
    """How the graph of a :class:`GDPGateSet` was traced (what a re-trace needs)."""
    input_size: Tuple[int, int]
    exclude: List[str] = field(default_factory=list)
    num_proposals: int = 256
    on_unsupported: str = 'error'


class GateMismatchError(ValueError):
    """A checkpoint's gates belong to other channel groups than the model's."""


def _fingerprint(names: List[str], sizes: List[int]) -> torch.Tensor:
    """``[crc32 of the group names, number of groups, size of each group...]``."""
    crc = zlib.crc32('\n'.join(names).encode())
    return torch.tensor([crc, len(sizes)] + list(sizes), dtype=torch.long)


class GDPGateSet(nn.Module):
    """All gates of a model: parameter ``a`` (one entry per gated channel) and ``eps``.

    Contract: ``group_slices[i]`` is the slice of ``a`` that holds group ``i`` of
    ``graph`` (the :class:`ChannelGraph` the set was made from); ``trace`` records how
    that graph was traced. :meth:`attach` makes every gated layer of a model see
    ``x * g`` on its input channels (fixed channels see 1). ``eps_value`` (a Python
    float, set with :meth:`set_eps`) is what the gates compute with; the buffers
    ``eps`` and ``fingerprint`` (the groups' names and sizes) carry it and the group
    layout in checkpoints: loading gates made for other groups raises
    :class:`GateMismatchError` instead of permuting them silently.
    """

    def __init__(self, graph: ChannelGraph, normalize: bool = True, eps: float = 1.0,
                 trace: Optional[TraceSettings] = None):
        super().__init__()
        self.a = nn.Parameter(torch.ones(graph.num_channels))
        self.register_buffer('eps', torch.tensor(float(eps)))
        self.eps_value = float(eps)
        self.normalize = normalize
        self.graph = graph
        self.trace = trace
        self.group_names: List[str] = [g.name for g in graph.groups]
        self.group_slices = [slice(int(graph.offsets[i]), int(graph.offsets[i + 1]))
                             for i in range(len(graph.groups))]
        self.register_buffer('fingerprint', _fingerprint(
            self.group_names, [s.stop - s.start for s in self.group_slices]))
        self._consumer_index: Dict[str, np.ndarray] = graph.consumer_global_index()
        self._specs = {n: _ConsumerSpec.from_global_index(i)
                       for n, i in self._consumer_index.items() if (i >= 0).any()}
        self._handles: list = []
        self._cache_key = None
        self._cache: Dict[tuple, torch.Tensor] = {}

    # -- values ------------------------------------------------------------------
    def set_eps(self, eps: float) -> None:
        """Set eps (no host sync: the buffer is filled on its device)."""
        if not eps > 0:
            raise ValueError(f'GDP gates: eps must be > 0, got {eps}')
        self.eps_value = float(eps)
        self.eps.fill_(self.eps_value)

    def values(self) -> torch.Tensor:
        """Gate value of every channel (float32)."""
        return gate_value(self.a.float(), self.eps_value, self.normalize)

    def vector(self, consumer: str, device: torch.device) -> torch.Tensor:
        """The gate of every input channel of ``consumer`` (1 where fixed), float32.

        Computed once per state of ``a`` / ``eps`` / grad mode and reused by every
        later call (shared heads, repeated forwards) until the gates change. Under
        ``torch.compile`` it is part of the compiled graph instead (no cache, whose
        keys Dynamo cannot trace, and ``eps`` read from its buffer: no recompilation
        when it changes).
        """
        a = self.a
        if torch.compiler.is_compiling():
            g = _consumer_gates(a, self._specs[consumer], self.eps, self.normalize)
            return g.to(device)
        key = (a._version, a.data_ptr(), self.eps_value, torch.is_grad_enabled(),
               torch.is_inference_mode_enabled())
        if key != self._cache_key:
            self._cache_key, self._cache = key, {}
        g = self._cache.get(consumer)
        if g is None:
            g = _GateVector.apply(a, self._specs[consumer], self.eps_value, self.normalize)
            self._cache[consumer] = g
        return g if g.device == device else g.to(device)

    def _apply(self, fn, recurse=True):
        """Moves follow the model; casts below float32 (``model.half()``, bfloat16)
        leave ``a`` and the ``eps`` buffer float32, unrounded: eps <= ~3e-8 is 0 in
        fp16 (a reloaded gate at 0 would be 0/0), and fp16 rounds away gate steps
        below ~5e-4 at ``a = 1``."""
        a, eps = self.a.data, self.eps
        super()._apply(fn, recurse)
        if torch.finfo(self.a.dtype).bits < 32:
            self.a.data = a.to(self.a.device)
            self.eps = eps.to(self.eps.device)
            if self.a.grad is not None:
                self.a.grad = self.a.grad.float()
        return self

    # -- attaching to a model --------------------------------------------------------
    def attach(self, model: nn.Module) -> None:
        # a forward of the whole model recomputes the gates once (writes through
        # ``.data``, e.g. EMA swaps, do not bump the version the cache keys on)
        self._handles.append(model.register_forward_pre_hook(self._new_forward))
        modules = dict(model.named_modules())
        for name in self._specs:
            module = modules[name]
            if _weight_gated(module):
                module._conv_forward = _GateConvWeight(self, name, module._conv_forward)
                self._handles.append(module)
            else:
                self._handles.append(module.register_forward_pre_hook(_GateInput(self, name)))

    def _new_forward(self, module, args) -> None:
        self._cache_key = None

    def detach_hooks(self) -> None:
        for h in self._handles:
            if isinstance(h, nn.Module):
                del h.__dict__['_conv_forward']
            else:
                h.remove()
        self._handles = []

    def consumer_index(self) -> Dict[str, np.ndarray]:
        return self._consumer_index

    # -- checkpoints ---------------------------------------------------------------
    def _check_fingerprint(self, theirs: torch.Tensor) -> None:
        mine = self.fingerprint.cpu()
        theirs = theirs.detach().cpu().long()
        if theirs.shape == mine.shape and torch.equal(theirs, mine):
            return
        sizes_t, sizes_m = theirs[2:].tolist(), mine[2:].tolist()
        i = next((k for k, (x, y) in enumerate(zip(sizes_t, sizes_m)) if x != y), None)
        if i is not None:
            what = (f'group {i} ({self.group_names[i]} here) has {sizes_t[i]} channels in '
                    f'the checkpoint and {sizes_m[i]} here')
        elif len(sizes_t) != len(sizes_m):
            what = f'it has {len(sizes_t)} channel groups, this model {len(sizes_m)}'
        else:
            what = 'the groups have the same sizes but other names or order'
        opaque = [n for n, w in self.graph.unsupported.items() if OPAQUE in w]
        cause = 'The checkpoint'
        if opaque:  # (see gdp_det.graph.opaque)
            cause = (f'Here {opaque[0]} calls an op without a CPU kernel and was traced as '
                     'opaque (no CUDA device), while a checkpoint trained on a GPU was traced '
                     'through it: prune it on a machine with CUDA. Otherwise the checkpoint')
        raise GateMismatchError(
            f'GDP gates in the checkpoint do not match this model: {what}. {cause} '
            'was trained with another detector config, input_size, exclude list or '
            'gdp_det version; use the config it was trained with')

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict,
                              missing_keys, unexpected_keys, error_msgs):
        theirs = state_dict.get(prefix + 'fingerprint')
        if theirs is not None:
            self._check_fingerprint(theirs)  # before ``a`` is copied
        elif prefix + 'a' in state_dict:  # gdp_det <= 0.1 saved no fingerprint
            state_dict = dict(state_dict)
            state_dict[prefix + 'fingerprint'] = self.fingerprint
            if state_dict[prefix + 'a'].shape != self.a.shape:
                raise GateMismatchError(
                    f'GDP gates in the checkpoint do not match this model: '
                    f'{state_dict[prefix + "a"].numel()} gated channels there, '
                    f'{self.a.numel()} here; use the config the checkpoint was trained with')
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict,
                                      missing_keys, unexpected_keys, error_msgs)
        if prefix + 'eps' in state_dict:
            self.eps_value = float(self.eps)  # one host read, at load time

    def __getstate__(self):
        state = self.__dict__.copy()  # the cache holds autograd results: never copied
        state.update(_cache_key=None, _cache={})
        return state

    def extra_repr(self) -> str:
        return (f'groups={len(self.group_names)}, channels={self.a.numel()}, '
                f'eps={self.eps_value:g}')


def add_gates(model: nn.Module, graph: ChannelGraph, normalize: bool = True,
              eps: float = 1.0, trace: Optional[TraceSettings] = None) -> nn.Module:
    """Give ``model`` a ``gdp_gates`` set for ``graph`` and gate its consumers."""
    gates = GDPGateSet(graph, normalize=normalize, eps=eps, trace=trace)
    gates.attach(model)
    model.gdp_gates = gates
    return model
