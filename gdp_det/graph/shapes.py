"""Op handlers that move, cut, join or reshape the channel dimension.

Handlers taking ``lay`` are wrapped with :func:`.ops.traced_first` in the table:
they run only when their first argument is traced. A handler that cannot follow
the channels reports the op as unsupported, which keeps them unpruned.
"""
from __future__ import annotations

import numpy as np
import torch

from .atoms import Layout


def cat(tr, func, args, kwargs, out) -> None:
    """Concatenation: along the channel dim the atom lists are joined, along
    another dim the inputs' channels are unioned."""
    tensors = args[0]
    dim = kwargs.get('dim', args[1] if len(args) > 1 else 0)
    lays = [tr.layout(t) for t in tensors]
    if all(l is None for l in lays):
        return
    dim = dim % out.dim()
    ref = next(l for l in lays if l is not None)
    if dim == ref.dim:
        parts = []
        for t, l in zip(tensors, lays):
            if l is not None and l.dim == dim:
                parts.append(l.atoms)
            else:
                a = tr.uf.new(t.shape[dim])
                tr.fix(a, 'concatenated with an untraced tensor')
                parts.append(a)
        tr.set_layout(out, Layout(np.concatenate(parts), dim))
        return
    atoms = None
    for l in lays:
        if l is None or l.dim != ref.dim or len(l.atoms) != len(ref.atoms):
            tr.fix_all(tensors, 'cat of mismatching layouts')
            return
        if atoms is None:
            atoms = l.atoms
        else:
            tr.uf.union_arrays(atoms, l.atoms)
    tr.set_layout(out, Layout(atoms, ref.dim))


def setitem(tr, func, args, kwargs, out) -> None:
    """``target[index] = value``: the value's channels join the target's."""
    target, index = args[0], args[1]
    value = args[2] if len(args) > 2 else None
    vlay = tr.layout(value)
    if vlay is None or not isinstance(value, torch.Tensor):
        return
    tlay = tr.layout(target)
    if (tlay is None and target.dim() == value.dim()
            and target.shape[vlay.dim] == len(vlay.atoms) and not isinstance(index, tuple)):
        tr.set_layout(target, vlay)
    elif tlay is not None and tlay.dim == vlay.dim and len(tlay.atoms) == len(vlay.atoms):
        tr.uf.union_arrays(tlay.atoms, vlay.atoms)
    else:
        tr.fix(vlay.atoms, 'assigned into an untraced tensor')


def split(tr, func, args, kwargs, out, lay) -> None:
    """``split``/``chunk``: along the channel dim each part gets its slice.

    The pruned network cuts its narrower tensor the same way: ``chunk(n)`` into n
    equal parts, so channel ``j`` of every part shares one gate (the parts stay
    equal); ``split`` at the sizes its code states (Res2Net's ``self.width``), which
    would cut at the old boundaries, so its channels stay unpruned."""
    x = args[0]
    dim = kwargs.get('dim', args[2] if len(args) > 2 else 0) % x.dim()
    if dim != lay.dim:
        for o in out:
            tr.set_layout(o, lay)
        return
    sizes = {o.shape[dim] for o in out}
    if func.__name__ == 'chunk' and len(sizes) == 1:
        tr.tie_rows(lay.atoms.reshape(len(out), -1))
    else:
        tr.fix(lay.atoms, f'{func.__name__} of the channels at sizes stated in the code')
    start = 0
    for o in out:
        n = o.shape[dim]
        tr.set_layout(o, Layout(lay.atoms[start:start + n], dim))
        start += n


def fix_channels(tr, func, args, kwargs, out, lay) -> None:
    """Ops that scatter the channels into separate tensors (``unbind``)."""
    tr.fix(lay.atoms, func.__name__)


def narrow(tr, func, args, kwargs, out, lay) -> None:
    x, dim, start, length = args[0], args[1] % args[0].dim(), args[2], args[3]
    if dim != lay.dim:
        tr.set_layout(out, lay)
    else:
        tr.set_layout(out, Layout(lay.atoms[start:start + length], lay.dim))


def getitem(tr, func, args, kwargs, out, lay) -> None:
    """Basic and single advanced indexing that keeps or slices the channel dim."""
    new = _index_layout(lay, args[0], args[1])
    if new is None:
        tr.fix_unsupported(args[0], 'channel indexing')
    else:
        tr.set_layout(out, new)


def _index_layout(lay: Layout, x: torch.Tensor, index):
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
            if not isinstance(i, slice):
                return None
            atoms = atoms[i]
            new_dim = out_dim
        if isinstance(i, int):
            in_dim += 1
            continue
        if isinstance(i, (torch.Tensor, list)):
            advanced += 1
            if advanced > 1 or (isinstance(i, torch.Tensor) and i.dim() != 1):
                return None
        in_dim += 1
        out_dim += 1
    if new_dim is None:
        if lay.dim < in_dim:
            return None
        new_dim = out_dim + (lay.dim - in_dim)
    return Layout(atoms, new_dim)


def reshape(tr, func, args, kwargs, out, lay) -> None:
    """``view``/``reshape``/``flatten``: the dims up to the channel dim stay, or the
    channel dim is flattened with everything after it (``C x H x W``)."""
    x, d = args[0], lay.dim
    if isinstance(out, torch.Tensor):
        if tuple(out.shape[:d + 1]) == tuple(x.shape[:d + 1]):
            tr.set_layout(out, Layout(lay.atoms, d))
            return
        rest = int(np.prod(x.shape[d + 1:]))
        if (out.dim() == d + 1 and tuple(out.shape[:d]) == tuple(x.shape[:d])
                and out.shape[d] == x.shape[d] * rest):
            tr.set_layout(out, Layout(np.repeat(lay.atoms, rest), d))
            return
    tr.fix_unsupported(x, f'{func.__name__} that mixes the channel dim')


def squeeze(tr, func, args, kwargs, out, lay) -> None:
    x = args[0]
    if out.dim() == x.dim():
        tr.set_layout(out, lay)
    elif x.shape[lay.dim] == 1:
        tr.fix_unsupported(x, f'{func.__name__} that mixes the channel dim')
    else:
        dims = kwargs.get('dim', args[1] if len(args) > 1 else None)
        if dims is None:
            removed = [i for i in range(lay.dim) if x.shape[i] == 1]
        else:
            dims = dims if isinstance(dims, (tuple, list)) else [dims]
            removed = [d % x.dim() for d in dims if d % x.dim() < lay.dim
                       and x.shape[d] == 1]
        tr.set_layout(out, Layout(lay.atoms, lay.dim - len(removed)))


def unsqueeze(tr, func, args, kwargs, out, lay) -> None:
    d = kwargs.get('dim', args[1] if len(args) > 1 else None) % out.dim()
    tr.set_layout(out, Layout(lay.atoms, lay.dim + (1 if d <= lay.dim else 0)))


def expand(tr, func, args, kwargs, out, lay) -> None:
    """``expand``/``expand_as``: new leading dims and broadcast size-1 dims."""
    x = args[0]
    d = lay.dim + out.dim() - x.dim()
    if out.shape[d] == len(lay.atoms):
        tr.set_layout(out, Layout(lay.atoms, d))
    else:
        tr.fix_unsupported(x, f'{func.__name__} of the channel dim')


def _permuted(tr, out, lay, perm) -> None:
    tr.set_layout(out, Layout(lay.atoms, list(perm).index(lay.dim)))


def permute(tr, func, args, kwargs, out, lay) -> None:
    x = args[0]
    if 'dims' in kwargs:
        perm = kwargs['dims']
    elif isinstance(args[1], (tuple, list)):
        perm = args[1]
    else:
        perm = args[1:]
    _permuted(tr, out, lay, [p % x.dim() for p in perm])


def transpose(tr, func, args, kwargs, out, lay) -> None:
    """``transpose``/``swapaxes``/``swapdims`` of two dims."""
    x = args[0]
    d0 = kwargs.get('dim0', args[1] if len(args) > 1 else None) % x.dim()
    d1 = kwargs.get('dim1', args[2] if len(args) > 2 else None) % x.dim()
    perm = list(range(x.dim()))
    perm[d0], perm[d1] = perm[d1], perm[d0]
    _permuted(tr, out, lay, perm)


def attribute_transpose(tr, func, args, kwargs, out, lay) -> None:
    """``x.T``/``x.H`` reverse all dims, ``x.mT``/``x.mH`` swap the last two."""
    n = args[0].dim()
    perm = list(range(n))
    if func.__self__ in (torch.Tensor.T, torch.Tensor.H):
        perm.reverse()
    elif n >= 2:
        perm[-2], perm[-1] = perm[-1], perm[-2]
    _permuted(tr, out, lay, perm)
