"""Channel atoms, their union-find, and the data classes the tracer produces."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Sequence

import numpy as np
import torch

FIXED = 0  # the atom every non-prunable channel is unioned with


class UnionFind:
    """Union-find over integer atoms (grows on demand).

    Atom :data:`FIXED` always stays the root of its class, so ``find(a) == FIXED``
    tells whether atom ``a`` may never be pruned.
    """

    def __init__(self) -> None:
        self.parent: List[int] = [FIXED]

    def new(self, n: int) -> np.ndarray:
        """``n`` fresh atoms, each in a class of its own."""
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
        if rb == FIXED or (ra != FIXED and rb < ra):
            ra, rb = rb, ra
        self.parent[rb] = ra

    def union_arrays(self, a: np.ndarray, b: np.ndarray) -> None:
        """Union ``a[i]`` with ``b[i]`` for every ``i``."""
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
    # the op's shapes and arguments at the traced size (``op``: conv2d, conv_transpose2d
    # or linear; ``input``/``weight`` shapes, ``bias``, stride, padding, ...)
    geometry: Optional[dict] = None


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
    op; the channels that op touched are fixed (kept unpruned). ``passthrough``
    maps each module that ran a per-channel compiled op (RoI pooling) to the global
    channel id of each of its input positions.
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


def is_under(name: str, prefixes: Sequence[str]) -> bool:
    """Whether module ``name`` is one of ``prefixes`` or inside one of them."""
    return any(name == p or name.startswith(p + '.') for p in prefixes)
