"""Channel dependency graph: which channels of which modules are coupled.

The graph is discovered from one traced forward pass, never hard-coded per
architecture. Every output channel of a conv/linear layer is an *atom*. The tracer
(a :class:`torch.overrides.TorchFunctionMode`) follows each tensor's channel
dimension through the forward and unions atoms that must be pruned together:
elementwise adds (residuals, FPN top-down), depthwise convs (carry their input
channels), modules called several times (heads shared across FPN levels: the same
weight reads channel ``j`` of every level), the channels of one GroupNorm group
(pruned whole), channel ``j`` of every group of a grouped conv (pruned balanced),
and so on. Concatenations and channel
slices keep per-position atom lists, so they need no special grouping.

Anything the tracer does not understand is treated conservatively: the channels
that flow into it are marked *fixed* (never pruned). So are the channels the traced
function returns (class logits, box deltas, ...) and the input image's channels.
This makes every pruning decision taken from the graph lossless by construction;
the exporter's ``--verify`` re-checks it numerically.

The graph only knows coupling. Gates (:mod:`gdp_det.gates`), the FLOPs model
(:mod:`gdp_det.flops`) and the pruner (:mod:`gdp_det.pruner`) consume it.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

FIXED = 0  # the atom every non-prunable channel is unioned with

_UNARY = {
    'relu', 'relu_', 'relu6', 'sigmoid', 'sigmoid_', 'tanh', 'tanh_', 'gelu', 'silu',
    'silu_', 'hardswish', 'hardsigmoid', 'leaky_relu', 'leaky_relu_', 'elu', 'elu_',
    'mish', 'softplus', 'hardtanh', 'hardtanh_', 'clamp', 'clamp_', 'clip', 'clip_',
    'dropout', 'dropout2d', 'dropout_', 'contiguous', 'clone', 'detach', 'float', 'half',
    'to', 'type_as', 'neg', '__neg__', 'exp', 'abs', 'sqrt', 'square', 'pow', '__pow__',
    'log', 'requires_grad_', 'cpu', 'cuda', 'double', 'type', 'identity',
}
_BINARY = {
    'add', 'add_', '__add__', '__radd__', '__iadd__', 'sub', 'sub_', '__sub__',
    '__rsub__', '__isub__', 'mul', 'mul_', '__mul__', '__rmul__', '__imul__', 'div',
    'div_', '__truediv__', '__rtruediv__', '__itruediv__', 'maximum', 'minimum',
}
# channel-preserving ops on NCHW maps (the channel dim must stay dim 1)
_SPATIAL = {
    'interpolate', 'max_pool2d', 'avg_pool2d', 'adaptive_avg_pool2d',
    'adaptive_max_pool2d', 'pad', 'upsample', 'upsample_nearest', 'upsample_bilinear',
    'max_pool2d_with_indices', '_max_pool2d', 'fn',
}
# ops that only read metadata or allocate: no data flows through them
_META = {
    'dim', 'size', '__get__', 'numel', 'new_zeros', 'new_ones', 'new_empty', 'new_full',
    'new_tensor', 'zeros_like', 'ones_like', 'empty_like', 'full_like', 'is_floating_point',
    'data_ptr', 'get_device', 'element_size', '__len__', 'stride', 'is_contiguous',
    'storage_offset', 'nelement', '__format__', '__repr__', '_set_grad_enabled',
    'device', 'dtype', 'ndimension', 'is_complex',
}
# ops that read only the dtype/shape of their second argument
_SHAPE_ONLY = {'type_as', 'to', 'expand_as', 'view_as', 'reshape_as'}
_REDUCE = {'sum', 'mean', 'amax', 'amin'}


class UnionFind:
    """Union-find over integer atoms (grows on demand)."""

    def __init__(self) -> None:
        self.parent: List[int] = [FIXED]

    def new(self, n: int) -> np.ndarray:
        start = len(self.parent)
        self.parent.extend(range(start, start + n))
        return np.arange(start, start + n, dtype=np.int64)

    def find(self, a: int) -> int:
        parent = self.parent
        root = a
        while parent[root] != root:
            root = parent[root]
        while parent[a] != root:
            parent[a], a = root, parent[a]
        return root

    def union(self, a: int, b: int) -> None:
        ra, rb = self.find(int(a)), self.find(int(b))
        if ra == rb:
            return
        # FIXED stays the root of its class so ``find(x) == FIXED`` tests fixedness
        if rb == FIXED or (ra != FIXED and rb < ra):
            ra, rb = rb, ra
        self.parent[rb] = ra

    def union_arrays(self, a: np.ndarray, b: np.ndarray) -> None:
        for x, y in zip(a.tolist(), b.tolist()):
            if x != y:
                self.union(x, y)

    def roots(self, atoms: np.ndarray) -> np.ndarray:
        return np.fromiter((self.find(a) for a in atoms.tolist()), np.int64, len(atoms))


@dataclass
class Layout:
    """Atom of every position along a tensor's channel dimension ``dim``."""
    atoms: np.ndarray
    dim: int


@dataclass
class LayerCall:
    """One call of a conv/linear layer seen in the trace (for the FLOPs model)."""
    name: str
    in_atoms: np.ndarray
    out_atoms: np.ndarray
    coef: float  # FLOPs = coef * active_in * active_out  (depthwise: coef * active)
    depthwise: bool
    param_coef: float  # weights = param_coef * active_in * active_out (depthwise: * active)


@dataclass
class ChannelGroup:
    """A set of coupled channels that share one gate vector.

    ``size`` channels; each member maps its own channel positions to group
    channels: ``producers[name]`` (output channels of conv/linear layers, int array:
    position -> group channel), ``consumers[name]`` (input positions of the layers
    whose input the gate multiplies; -1 where a position belongs to another group
    or is fixed), ``norms[name]`` (BatchNorm channels) and ``carriers[name]``
    (depthwise convs, in = out). A group channel whose gate is 0 can be removed
    from every member at once without changing the network's output.
    """
    name: str
    size: int
    producers: Dict[str, np.ndarray] = field(default_factory=dict)
    consumers: Dict[str, np.ndarray] = field(default_factory=dict)
    norms: Dict[str, np.ndarray] = field(default_factory=dict)
    carriers: Dict[str, np.ndarray] = field(default_factory=dict)


class ChannelGraph:
    """Result of tracing: groups of coupled channels plus per-call layer records.

    Contract: ``groups`` lists every prunable group; ``consumer_index[name]`` maps
    each input position of a gated layer to ``(group index, group channel)`` or
    ``(-1, -1)`` for fixed positions; ``calls`` hold every conv/linear call with its
    atoms mapped to global channel ids (see :mod:`gdp_det.flops`). ``unsupported``
    maps each module in which the tracer met an op it does not understand to that
    op; the channels that op touched are fixed (kept unpruned).
    """

    def __init__(self, groups: List[ChannelGroup], calls: List[LayerCall],
                 class_of_atom: Callable[[np.ndarray], np.ndarray],
                 fixed_reasons: Dict[str, str],
                 passthrough_in: Optional[Dict[str, np.ndarray]] = None,
                 unsupported: Optional[Dict[str, str]] = None):
        self.groups = groups
        self.fixed_reasons = fixed_reasons
        self.unsupported = dict(unsupported or {})
        offsets = np.cumsum([0] + [g.size for g in groups])
        self.offsets = offsets
        self.num_channels = int(offsets[-1])
        # global channel id of each call position (-1 = fixed)
        self.calls = calls
        self.call_in = [class_of_atom(c.in_atoms) for c in calls]
        self.call_out = [class_of_atom(c.out_atoms) for c in calls]
        # global channel id of the input positions of pass-through modules (RoIAlign)
        self.passthrough = {n: class_of_atom(a) for n, a in (passthrough_in or {}).items()}

    def group_by_name(self, name: str) -> ChannelGroup:
        for g in self.groups:
            if g.name == name:
                return g
        raise KeyError(name)

    def consumer_global_index(self) -> Dict[str, np.ndarray]:
        """Per gated layer: global channel id of each input position (-1 fixed)."""
        out: Dict[str, np.ndarray] = {}
        for gi, g in enumerate(self.groups):
            for name, pos in g.consumers.items():
                idx = out.setdefault(name, np.full(len(pos), -1, np.int64))
                sel = pos >= 0
                idx[sel] = pos[sel] + self.offsets[gi]
        return out

    def summary(self) -> str:
        lines = [f'{len(self.groups)} prunable channel groups, '
                 f'{self.num_channels} gated channels']
        for g in self.groups:
            lines.append(f'  {g.name}: {g.size} ch, {len(g.producers)} producers, '
                         f'{len(g.consumers)} gated consumers, {len(g.norms)} BN, '
                         f'{len(g.carriers)} depthwise')
        return '\n'.join(lines)


def flat_tensors(obj) -> List[torch.Tensor]:
    """Every tensor inside nested lists, tuples, dicts and InstanceData-like objects."""
    if isinstance(obj, torch.Tensor):
        return [obj]
    if isinstance(obj, (list, tuple)):
        return [t for o in obj for t in flat_tensors(o)]
    if isinstance(obj, dict):
        return [t for o in obj.values() for t in flat_tensors(o)]
    if hasattr(obj, 'items') and callable(obj.items):  # InstanceData and the like
        try:
            return [t for _, o in obj.items() for t in flat_tensors(o)]
        except Exception:  # pragma: no cover - exotic containers
            return []
    return []


class _Tracer(TorchFunctionMode):
    """Follows channel atoms through every torch function call of a forward."""

    def __init__(self, model: nn.Module, passthrough_types: Tuple[type, ...]):
        super().__init__()
        self.uf = UnionFind()
        self.layouts: Dict[int, Layout] = {}
        self.alive: List[torch.Tensor] = []  # keep traced tensors alive: ids stay unique
        self.names = {m: n for n, m in model.named_modules()}
        self.param_owner: Dict[int, nn.Module] = {}
        for m in model.modules():
            for p in list(m.parameters(recurse=False)) + list(m.buffers(recurse=False)):
                self.param_owner.setdefault(id(p), m)
        self.out_atoms: Dict[nn.Module, np.ndarray] = {}
        self.in_atoms: Dict[nn.Module, np.ndarray] = {}
        self.norm_atoms: Dict[nn.Module, np.ndarray] = {}
        self.depthwise: Dict[nn.Module, bool] = {}
        self.calls: List[LayerCall] = []
        self.fixed_reasons: Dict[str, str] = {}
        self.passthrough_types = passthrough_types
        self.passthrough_in: Dict[str, np.ndarray] = {}
        self.stack: List[str] = []  # names of the modules whose forward is running
        self.unsupported: Dict[str, str] = {}  # module name -> what was not understood
        self.pending: List[Tuple[str, str, np.ndarray]] = []  # see fix_unsupported

    # -- layouts ---------------------------------------------------------------
    def layout(self, t) -> Optional[Layout]:
        if isinstance(t, torch.Tensor):
            return self.layouts.get(id(t))
        return None

    def set_layout(self, t: torch.Tensor, lay: Layout) -> None:
        self.layouts[id(t)] = lay
        self.alive.append(t)

    def fix(self, atoms: np.ndarray, reason: str) -> None:
        for a in atoms.tolist():
            if self.uf.find(a) != FIXED:
                self.uf.union(FIXED, a)
                self.fixed_reasons.setdefault(reason, reason)

    def fix_all(self, objs, reason: str) -> None:
        for t in flat_tensors(objs):
            lay = self.layout(t)
            if lay is not None:
                self.fix(lay.atoms, reason)

    def fix_unsupported(self, objs, what: str, module: Optional[str] = None) -> None:
        """Note an op the tracer does not understand; see :meth:`resolve_unsupported`."""
        atoms = [lay.atoms for lay in map(self.layout, flat_tensors(objs)) if lay is not None]
        if atoms:
            where = module or (self.stack[-1] if self.stack else '') or '(model)'
            self.pending.append((where, what, np.concatenate(atoms)))

    def resolve_unsupported(self, exclude: Sequence[str]) -> None:
        """Fix the channels of every op noted by :meth:`fix_unsupported`.

        Called once the rest is known: an op whose channels are fixed anyway (model
        outputs, GroupNorm, excluded modules) costs nothing; the others are listed
        in ``unsupported`` (module name -> op).
        """
        for where, what, atoms in self.pending:
            if not is_under(where, exclude) and any(self.uf.find(a) != FIXED
                                                    for a in atoms.tolist()):
                self.unsupported.setdefault(where, what)
        for where, what, atoms in self.pending:
            self.fix(atoms, f'{what} in {where} is not understood by the tracer')
        self.pending = []

    def tie_rows(self, table: np.ndarray) -> None:
        """Union every row of a 2-D atom table with its first row, elementwise: column
        ``j`` becomes one channel (one gate)."""
        self.uf.union_arrays(np.tile(table[0], len(table) - 1), table[1:].reshape(-1))

    def push(self, module, args) -> None:
        self.stack.append(self.names[module])

    def pop(self, module, args, output) -> None:
        if self.stack:
            self.stack.pop()

    def input_atoms(self, x: torch.Tensor, dim: int, size: int, reason: str) -> np.ndarray:
        lay = self.layout(x)
        if lay is not None and lay.dim == dim % x.dim() and len(lay.atoms) == size:
            return lay.atoms
        if lay is not None:
            self.fix(lay.atoms, reason)
        atoms = self.uf.new(size)
        self.fix(atoms, 'input not traced')
        return atoms

    # -- layers ----------------------------------------------------------------
    def module_out(self, m: nn.Module, n: int) -> np.ndarray:
        if m not in self.out_atoms:
            self.out_atoms[m] = self.uf.new(n)
        return self.out_atoms[m]

    def module_in(self, m: nn.Module, atoms: np.ndarray) -> None:
        prev = self.in_atoms.get(m)
        if prev is None:
            self.in_atoms[m] = atoms
        else:  # a layer called several times reads the same channels every time
            self.uf.union_arrays(prev, atoms)

    def conv(self, func, args, kwargs, out):
        x, weight = args[0], args[1]
        m = self.param_owner.get(id(weight))
        if m is None or not isinstance(out, torch.Tensor):
            self.fix_unsupported(args, f'{func.__name__} with a computed weight')
            return
        groups = kwargs.get('groups', args[6] if len(args) > 6 else 1)
        transposed = func.__name__ == 'conv_transpose2d'
        if transposed:
            cin, cout = weight.shape[0], weight.shape[1] * groups
        else:
            cout, cin = weight.shape[0], weight.shape[1] * groups
        name = self.names[m]
        in_atoms = self.input_atoms(x, 1, cin, f'{name}: input layout unknown')
        out_atoms = self.module_out(m, cout)
        depthwise = groups > 1 and groups == cin == cout and not transposed
        self.depthwise[m] = depthwise
        if depthwise:
            self.uf.union_arrays(in_atoms, out_atoms)
        elif groups > 1 and transposed:
            self.fix(in_atoms, f'{name}: grouped transposed conv')
            self.fix(out_atoms, f'{name}: grouped transposed conv')
        elif groups > 1:
            # grouped convs (ResNeXt) stay balanced: channel j of every conv group is
            # tied to one gate, so each group keeps the same channels
            self.tie_rows(in_atoms.reshape(groups, -1))
            self.tie_rows(out_atoms.reshape(groups, -1))
        self.module_in(m, in_atoms)
        k = weight.shape[2] * weight.shape[3]
        spatial = x.shape[2] * x.shape[3] if transposed else out.shape[2] * out.shape[3]
        coef = float(k * spatial) / x.shape[0] / (1 if depthwise else groups)
        self.calls.append(LayerCall(name, in_atoms, out_atoms, coef, depthwise,
                                    float(k) / (1 if depthwise else groups)))
        self.set_layout(out, Layout(out_atoms, 1))

    def linear(self, args, kwargs, out):
        x, weight = args[0], args[1]
        m = self.param_owner.get(id(weight))
        if m is None:
            self.fix_unsupported(args, 'linear with a computed weight')
            return
        name = self.names[m]
        in_atoms = self.input_atoms(x, -1, weight.shape[1], f'{name}: input layout unknown')
        out_atoms = self.module_out(m, weight.shape[0])
        self.module_in(m, in_atoms)
        rows = x.numel() // x.shape[-1]
        self.depthwise[m] = False
        self.calls.append(LayerCall(name, in_atoms, out_atoms, float(rows), False, 1.0))
        self.set_layout(out, Layout(out_atoms, out.dim() - 1))

    def norm(self, func, args, kwargs, out):
        x = args[0]
        lay = self.layout(x)
        if lay is None:
            return
        name = func.__name__
        owner = None
        for p in list(args[1:5]) + list(kwargs.values()):
            if isinstance(p, torch.Tensor) and id(p) in self.param_owner:
                owner = self.param_owner[id(p)]
                break
        if lay.dim == 1 and owner is not None and name in ('batch_norm', 'group_norm'):
            if name == 'group_norm':
                # statistics are shared within each of the num_groups blocks: the
                # channels of a block are pruned together (one gate), so the other
                # blocks' statistics do not change and num_groups follows
                blocks = kwargs.get('num_groups', args[1] if len(args) > 1 else None)
                self.tie_rows(lay.atoms.reshape(blocks, -1).T)
            prev = self.norm_atoms.get(owner)
            if prev is None:
                self.norm_atoms[owner] = lay.atoms
            else:
                self.uf.union_arrays(prev, lay.atoms)
            self.set_layout(out, lay)
            return
        # LayerNorm/InstanceNorm (and norms without affine parameters): a channel's
        # statistics mix with its neighbours', so these channels stay.
        self.fix(lay.atoms, f'{name} normalises across channels')

    # -- generic ops -------------------------------------------------------------
    def binary(self, args, out):
        if not isinstance(out, torch.Tensor):
            return
        lays = [(a, self.layout(a)) for a in args[:2]]
        known = [(a, l) for a, l in lays if l is not None]
        if not known:
            return
        dim = known[0][1].dim + (out.dim() - known[0][0].dim())
        size = out.shape[dim] if 0 <= dim < out.dim() else -1
        atoms = None
        for a, l in lays:
            if isinstance(a, torch.Tensor):
                adim = dim - (out.dim() - a.dim())
                if l is not None and l.dim == adim and len(l.atoms) == size:
                    if atoms is None:
                        atoms = l.atoms
                    else:
                        self.uf.union_arrays(atoms, l.atoms)
                elif l is not None:
                    self.fix(l.atoms, 'broadcast over channels')
                elif 0 <= adim < a.dim() and a.shape[adim] == size and size > 1:
                    # an untraced tensor with per-channel values (e.g. a parameter)
                    for _, kl in known:
                        self.fix(kl.atoms, 'combined with an untraced per-channel tensor')
        if atoms is not None:
            self.set_layout(out, Layout(atoms, dim))

    def cat(self, args, kwargs, out):
        tensors = args[0]
        dim = kwargs.get('dim', args[1] if len(args) > 1 else 0)
        lays = [self.layout(t) for t in tensors]
        if all(l is None for l in lays):
            return
        nd = out.dim()
        dim = dim % nd
        ref = next(l for l in lays if l is not None)
        if dim == ref.dim:
            parts = []
            for t, l in zip(tensors, lays):
                if l is not None and l.dim == dim:
                    parts.append(l.atoms)
                else:
                    a = self.uf.new(t.shape[dim])
                    self.fix(a, 'concatenated with an untraced tensor')
                    parts.append(a)
            self.set_layout(out, Layout(np.concatenate(parts), dim))
        else:
            atoms = None
            for l in lays:
                if l is None or l.dim != ref.dim or len(l.atoms) != len(ref.atoms):
                    self.fix_all(tensors, 'cat of mismatching layouts')
                    return
                if atoms is None:
                    atoms = l.atoms
                else:
                    self.uf.union_arrays(atoms, l.atoms)
            self.set_layout(out, Layout(atoms, ref.dim))

    def split(self, lay: Layout, x: torch.Tensor, outs, dim: int) -> None:
        dim %= x.dim()
        if dim != lay.dim:
            for o in outs:
                self.set_layout(o, lay)
            return
        start = 0
        for o in outs:
            n = o.shape[dim]
            self.set_layout(o, Layout(lay.atoms[start:start + n], dim))
            start += n

    def getitem(self, lay: Layout, x: torch.Tensor, index, out) -> bool:
        if not isinstance(index, tuple):
            index = (index,)
        if any(i is Ellipsis for i in index):
            e = index.index(Ellipsis)
            used = sum(1 for i in index if i is not None and i is not Ellipsis)
            index = index[:e] + (slice(None),) * (x.dim() - used) + index[e + 1:]
        in_dim, out_dim, advanced = 0, 0, 0
        new_dim, atoms = None, lay.atoms
        for i in index:
            if i is None:
                out_dim += 1
                continue
            if in_dim == lay.dim:
                if isinstance(i, slice):
                    atoms = atoms[i]
                    new_dim = out_dim
                elif isinstance(i, int):
                    return False
                else:
                    return False
            if isinstance(i, int):
                in_dim += 1
                continue
            if isinstance(i, torch.Tensor) or isinstance(i, list):
                advanced += 1
                if advanced > 1 or (isinstance(i, torch.Tensor) and i.dim() != 1):
                    return False
            in_dim += 1
            out_dim += 1
        if new_dim is None:
            if lay.dim < in_dim:
                return False
            new_dim = out_dim + (lay.dim - in_dim)
        self.set_layout(out, Layout(atoms, new_dim))
        return True

    def reshape(self, lay: Layout, x: torch.Tensor, out: torch.Tensor) -> bool:
        d = lay.dim
        if tuple(out.shape[:d + 1]) == tuple(x.shape[:d + 1]):
            self.set_layout(out, Layout(lay.atoms, d))
            return True
        rest = int(np.prod(x.shape[d + 1:]))
        if (out.dim() == d + 1 and tuple(out.shape[:d]) == tuple(x.shape[:d])
                and out.shape[d] == x.shape[d] * rest):  # flatten C x H x W
            self.set_layout(out, Layout(np.repeat(lay.atoms, rest), d))
            return True
        return False

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        try:
            self.handle(func, args, kwargs, out)
        except Exception as e:  # never let tracing hide the real forward's result
            self.fix_unsupported((args, kwargs),
                                 f'{getattr(func, "__name__", func)} (tracer error: {e})')
        return out

    def handle(self, func, args, kwargs, out) -> None:
        name = getattr(func, '__name__', str(func))
        if name in _META:
            return
        if name in ('conv2d', 'conv_transpose2d'):
            return self.conv(func, args, kwargs, out)
        if name == 'linear':
            return self.linear(args, kwargs, out)
        if name in ('batch_norm', 'group_norm', 'layer_norm', 'instance_norm'):
            return self.norm(func, args, kwargs, out)
        first = args[0] if args else None
        lay = self.layout(first)
        if name in ('cat', 'concat', 'concatenate'):
            return self.cat(args, kwargs, out)
        if name in _BINARY:
            return self.binary(args, out)
        if name == '__setitem__':
            value, target = args[2] if len(args) > 2 else None, first
            vlay = self.layout(value)
            if vlay is not None and isinstance(value, torch.Tensor):
                tlay = self.layout(target)
                if (tlay is None and target.dim() == value.dim()
                        and target.shape[vlay.dim] == len(vlay.atoms) and not isinstance(args[1], tuple)):
                    self.set_layout(target, vlay)
                elif tlay is not None and tlay.dim == vlay.dim and len(tlay.atoms) == len(vlay.atoms):
                    self.uf.union_arrays(tlay.atoms, vlay.atoms)
                else:
                    self.fix(vlay.atoms, 'assigned into an untraced tensor')
            return
        if lay is None:
            if name in _SHAPE_ONLY:
                return
            # data with a layout may still hide in other arguments
            self.fix_all((args[1:], kwargs), f'{name} reads traced channels')
            return
        x = first
        if name in _UNARY:
            if isinstance(out, torch.Tensor) and out.shape == x.shape:
                self.set_layout(out, lay)
            return
        if name in _SPATIAL:
            if (lay.dim == 1 and isinstance(out, torch.Tensor) and out.dim() == x.dim()
                    and out.shape[1] == x.shape[1]):
                self.set_layout(out, lay)
            elif isinstance(out, tuple) and lay.dim == 1:  # pool with indices
                self.set_layout(out[0], lay)
            else:
                self.fix(lay.atoms, name)
            return
        if name in ('split', 'chunk', 'split_with_sizes', 'unbind'):
            if name == 'unbind':
                self.fix(lay.atoms, name)
                return
            dim = kwargs.get('dim', args[2] if len(args) > 2 else 0)
            return self.split(lay, x, out, dim)
        if name == 'narrow':
            dim, start, length = args[1], args[2], args[3]
            return self.split(lay, x, [out], dim) if dim % x.dim() != lay.dim else \
                self.set_layout(out, Layout(lay.atoms[start:start + length], lay.dim))
        if name == '__getitem__':
            if not self.getitem(lay, x, args[1], out):
                self.fix_unsupported(x, 'channel indexing')
            return
        if name in ('view', 'reshape', 'flatten', 'view_as', 'reshape_as', 'squeeze',
                    'unsqueeze'):
            if not (isinstance(out, torch.Tensor) and self.reshape_any(name, lay, x, args, out)):
                self.fix_unsupported(x, f'{name} that mixes the channel dim')
            return
        if name in ('permute', 'transpose'):
            if name == 'permute':
                perm = args[1:] if not isinstance(args[1], (tuple, list)) else args[1]
                perm = [p % x.dim() for p in perm]
            else:
                d0, d1 = args[1] % x.dim(), args[2] % x.dim()
                perm = list(range(x.dim()))
                perm[d0], perm[d1] = perm[d1], perm[d0]
            self.set_layout(out, Layout(lay.atoms, perm.index(lay.dim)))
            return
        if name in _REDUCE or name in ('softmax', 'log_softmax', 'max', 'min'):
            dims = kwargs.get('dim', args[1] if len(args) > 1 else None)
            if dims is None:
                self.fix(lay.atoms, f'{name} over all dims')
                return
            dims = [d % x.dim() for d in (dims if isinstance(dims, (tuple, list)) else [dims])]
            if lay.dim in dims:
                self.fix(lay.atoms, f'{name} over channels')
                return
            res = out[0] if isinstance(out, tuple) else out
            if res.dim() == x.dim():
                self.set_layout(res, lay)
            else:
                self.set_layout(res, Layout(lay.atoms, lay.dim - sum(d < lay.dim for d in dims)))
            return
        self.fix_unsupported((args, kwargs), name)

    def reshape_any(self, name, lay, x, args, out) -> bool:
        if name == 'unsqueeze':
            d = args[1] % out.dim()
            self.set_layout(out, Layout(lay.atoms, lay.dim + (1 if d <= lay.dim else 0)))
            return True
        if name == 'squeeze':
            if out.dim() == x.dim():
                self.set_layout(out, lay)
                return True
            if x.shape[lay.dim] == 1:
                return False
            removed = [i for i in range(lay.dim) if x.shape[i] == 1]
            if len(args) > 1:
                removed = [d for d in [args[1] % x.dim()] if d < lay.dim]
            self.set_layout(out, Layout(lay.atoms, lay.dim - len(removed)))
            return True
        return self.reshape(lay, x, out)

    # -- module hooks --------------------------------------------------------------
    def module_hook(self, module, inputs, output):
        """Leaf modules whose data path the mode cannot see (compiled ops)."""
        ins = [t for t in flat_tensors(inputs) if self.layout(t) is not None]
        if not ins:
            return
        outs = flat_tensors(output)
        if isinstance(module, self.passthrough_types) and outs:
            lay = self.layout(ins[0])
            self.passthrough_in.setdefault(self.names[module], lay.atoms)
            for o in outs:
                if o.dim() == ins[0].dim() and o.shape[lay.dim] == len(lay.atoms):
                    self.set_layout(o, lay)
            return
        if outs and all(self.layout(o) is None for o in outs):
            self.fix_unsupported(ins, f'{type(module).__name__} (opaque)', self.names[module])


def default_passthrough_types() -> Tuple[type, ...]:
    """Modules that copy their input channels to their output (RoI feature pooling)."""
    types: List[type] = []
    try:
        from mmcv.ops import RoIAlign, RoIPool
        types += [RoIAlign, RoIPool]
    except ImportError:  # pragma: no cover - mmcv is a hard dependency
        pass
    from torchvision.ops import RoIAlign as TvRoIAlign, RoIPool as TvRoIPool
    types += [TvRoIAlign, TvRoIPool]
    return tuple(types)


def is_under(name: str, prefixes: Sequence[str]) -> bool:
    """Whether module ``name`` is one of ``prefixes`` or inside one of them."""
    return any(name == p or name.startswith(p + '.') for p in prefixes)


def trace_channel_graph(model: nn.Module, forward_fn: Callable[[nn.Module], object],
                        exclude: Sequence[str] = (),
                        passthrough_types: Optional[Tuple[type, ...]] = None) -> ChannelGraph:
    """Trace ``forward_fn(model)`` and return the groups of prunable coupled channels.

    ``exclude``: module name prefixes whose channels must never be pruned (their
    conv/linear inputs and outputs are fixed). Everything the traced function
    returns is fixed too.
    """
    tracer = _Tracer(model, passthrough_types or default_passthrough_types())
    handles = [m.register_forward_hook(tracer.module_hook)
               for m in model.modules() if not list(m.children())]
    for m in model.modules():
        handles += [m.register_forward_pre_hook(tracer.push),
                    m.register_forward_hook(tracer.pop, always_call=True)]
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), tracer:
            outputs = forward_fn(model)
        tracer.fix_all(outputs, 'model output')
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    uf = tracer.uf
    for m, atoms in tracer.out_atoms.items():
        name = tracer.names[m]
        if is_under(name, exclude):
            tracer.fix(atoms, f'{name}: excluded by the user')
            tracer.fix(tracer.in_atoms.get(m, np.zeros(0, np.int64)), f'{name}: excluded')
    tracer.resolve_unsupported(exclude)
    return _build_groups(tracer, uf)


def _build_groups(tracer: _Tracer, uf: UnionFind) -> ChannelGraph:
    names = tracer.names
    # 1) channel classes; 2) classes joined into groups by shared producers
    module_roots = {m: uf.roots(a) for m, a in tracer.out_atoms.items()}
    group_of_root: Dict[int, int] = {}
    group_uf = UnionFind()
    order: List[int] = []
    for m, roots in module_roots.items():
        live = [r for r in roots.tolist() if r != FIXED]
        if not live:
            continue
        ids = []
        for r in live:
            if r not in group_of_root:
                group_of_root[r] = int(group_uf.new(1)[0])
            ids.append(group_of_root[r])
        for i in ids[1:]:
            group_uf.union(ids[0], i)
        order.append(group_uf.find(ids[0]))
    # channel index within the group: order of first appearance among producers
    members: Dict[int, Dict[int, int]] = {}
    first_producer: Dict[int, str] = {}
    for m, roots in module_roots.items():
        for r in roots.tolist():
            if r == FIXED:
                continue
            gid = group_uf.find(group_of_root[r])
            chans = members.setdefault(gid, {})
            if r not in chans:
                chans[r] = len(chans)
            first_producer.setdefault(gid, names[m])
    gids = sorted(members, key=lambda g: list(first_producer).index(g))
    groups: List[ChannelGroup] = []
    lookup: Dict[int, Tuple[int, int]] = {}
    for gi, gid in enumerate(gids):
        groups.append(ChannelGroup(first_producer[gid], len(members[gid])))
        for r, c in members[gid].items():
            lookup[r] = (gi, c)

    def to_group(roots: np.ndarray, gi: int) -> np.ndarray:
        return np.array([lookup[r][1] if r in lookup and lookup[r][0] == gi else -1
                         for r in roots.tolist()], np.int64)

    def touched(roots: np.ndarray) -> List[int]:
        return sorted({lookup[r][0] for r in roots.tolist() if r in lookup})

    for m, roots in module_roots.items():
        kind = 'carriers' if tracer.depthwise.get(m) else 'producers'
        for gi in touched(roots):
            getattr(groups[gi], kind)[names[m]] = to_group(roots, gi)
    for m, atoms in tracer.in_atoms.items():
        if tracer.depthwise.get(m):
            continue
        roots = uf.roots(atoms)
        for gi in touched(roots):
            groups[gi].consumers[names[m]] = to_group(roots, gi)
    for m, atoms in tracer.norm_atoms.items():
        roots = uf.roots(atoms)
        for gi in touched(roots):
            groups[gi].norms[names[m]] = to_group(roots, gi)
    offsets = np.cumsum([0] + [g.size for g in groups])

    def class_of_atom(atoms: np.ndarray) -> np.ndarray:
        out = np.full(len(atoms), -1, np.int64)
        for i, r in enumerate(uf.roots(atoms).tolist()):
            if r in lookup:
                gi, c = lookup[r]
                out[i] = offsets[gi] + c
        return out

    return ChannelGraph(groups, tracer.calls, class_of_atom, tracer.fixed_reasons,
                        tracer.passthrough_in, tracer.unsupported)
