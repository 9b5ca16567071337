"""From the traced union-find to channel groups: :func:`trace_channel_graph`."""
from __future__ import annotations

from contextlib import nullcontext
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn as nn

from .atoms import FIXED, ChannelGraph, ChannelGroup, UnionFind, is_under
from .opaque import opaque_without_cpu_kernels
from .ops import register_extension_ops
from .tracer import ChannelTracer, watch_autograd_functions


def trace_channel_graph(model: nn.Module, forward_fn: Callable[[nn.Module], object],
                        exclude: Sequence[str] = (),
                        passthrough_types: Optional[Tuple[type, ...]] = None,
                        opaque_without_kernel: bool = False) -> ChannelGraph:
    """Trace ``forward_fn(model)`` and return the groups of prunable coupled channels.

    ``exclude``: module name prefixes whose channels must never be pruned (their
    conv/linear inputs and outputs are fixed). Everything the traced function
    returns is fixed too. ``passthrough_types``: module classes whose (compiled)
    forward maps input channel ``c`` to output channel ``c`` alone; RoI pooling of
    mmcv and torchvision is known without it. ``opaque_without_kernel``: a module
    whose forward stops at an op without a CPU kernel is opaque where it declares
    its output shape, its input channels kept and the module named in
    ``unsupported`` (:mod:`.opaque`); otherwise the op's error is raised.
    """
    register_extension_ops()
    tracer = ChannelTracer(model, tuple(passthrough_types or ()))
    handles = [m.register_forward_hook(tracer.module_hook)
               for m in model.modules() if not list(m.children())]
    for m in model.modules():
        handles += [m.register_forward_pre_hook(tracer.push),
                    m.register_forward_hook(tracer.pop, always_call=True)]
    was_training = model.training
    model.eval()
    opaque = opaque_without_cpu_kernels(model, tracer) if opaque_without_kernel else nullcontext()
    try:
        with torch.no_grad(), watch_autograd_functions(tracer.function_forward), opaque, tracer:
            outputs = forward_fn(model)
        tracer.fix_all(outputs, 'model output')
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    for m, atoms in tracer.out_atoms.items():
        name = tracer.names[m]
        if is_under(name, exclude):
            tracer.fix(atoms, f'{name}: excluded by the user')
            tracer.fix(tracer.in_atoms.get(m, np.zeros(0, np.int64)), f'{name}: excluded')
    tracer.resolve_unsupported(exclude)
    return _build_groups(tracer, tracer.uf)


def _build_groups(tracer: ChannelTracer, uf: UnionFind) -> ChannelGraph:
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
