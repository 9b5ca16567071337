"""Op handlers for layers with weights: conv, linear and the normalisations.

Each call is attributed to the module that owns the weight, so a layer called
several times (a head shared across FPN levels) reads the same channels every
time, and a layer whose forward calls ``F.conv2d`` itself (mmcv's
``Conv2dAdaptivePadding``) is recorded like any other conv.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from .atoms import LayerCall, Layout

_TRANSPOSED = (torch.conv_transpose2d, F.conv_transpose2d)
_PER_CHANNEL_NORMS = (torch.batch_norm, F.batch_norm, torch.group_norm, F.group_norm)
_GROUP_NORMS = (torch.group_norm, F.group_norm)
_CONV_ARGS = ('input', 'weight', 'bias', 'stride', 'padding', 'dilation', 'groups')
_TRANSPOSED_ARGS = ('input', 'weight', 'bias', 'stride', 'padding', 'output_padding',
                    'groups', 'dilation')


def _geometry(op: str, names, args, kwargs, out) -> dict:
    """What a standalone call of the op needs (for the latency model): input, weight
    and output shapes, bias, and the op's remaining arguments (JSON-friendly)."""
    params = dict(zip(names, args), **kwargs)
    geo = dict(op=op, input=list(params.pop('input').shape),
               weight=list(params.pop('weight').shape), bias=params.pop('bias') is not None,
               output=list(out.shape))
    geo.update({k: list(v) if isinstance(v, (tuple, list)) else v for k, v in params.items()})
    return geo


def _foreign_layer(tr, func, args, m) -> None:
    """A conv/linear call with the weight of a module that is no torch conv/linear
    (TridentNet's ``TridentConv`` runs one weight at three dilations): the pruner
    could not narrow it, so its channels are kept and it is named."""
    tr.fix_unsupported(args, f'{func.__name__} in {type(m).__name__} (not a torch layer)',
                       tr.names[m])


def conv(tr, func, args, kwargs, out) -> None:
    """2-D (transposed) convolution with the weight of a module."""
    x, weight = args[0], args[1]
    m = tr.param_owner.get(id(weight))
    if m is None or not isinstance(out, torch.Tensor):
        tr.fix_unsupported(args, f'{func.__name__} with a computed weight')
        return
    if not isinstance(m, nn.Conv2d if func not in _TRANSPOSED else nn.ConvTranspose2d):
        _foreign_layer(tr, func, args, m)
        return
    transposed = func in _TRANSPOSED
    geometry = _geometry('conv_transpose2d' if transposed else 'conv2d',
                         _TRANSPOSED_ARGS if transposed else _CONV_ARGS, args, kwargs, out)
    groups = geometry.get('groups', 1)
    if transposed:
        cin, cout = weight.shape[0], weight.shape[1] * groups
    else:
        cout, cin = weight.shape[0], weight.shape[1] * groups
    name = tr.names[m]
    in_atoms = tr.input_atoms(x, 1, cin, f'{name}: input layout unknown')
    out_atoms = tr.module_out(m, cout)
    depthwise = groups > 1 and groups == cin == cout and not transposed
    tr.depthwise[m] = depthwise
    if depthwise:
        tr.uf.union_arrays(in_atoms, out_atoms)
    elif groups > 1 and transposed:
        tr.fix(in_atoms, f'{name}: grouped transposed conv')
        tr.fix(out_atoms, f'{name}: grouped transposed conv')
    elif groups > 1:
        # grouped convs (ResNeXt) stay balanced: channel j of every conv group is
        # tied to one gate, so each group keeps the same channels
        tr.tie_rows(in_atoms.reshape(groups, -1))
        tr.tie_rows(out_atoms.reshape(groups, -1))
    tr.module_in(m, in_atoms)
    k = weight.shape[2] * weight.shape[3]
    spatial = x.shape[2] * x.shape[3] if transposed else out.shape[2] * out.shape[3]
    coef = float(k * spatial) / x.shape[0] / (1 if depthwise else groups)
    tr.calls.append(LayerCall(name, in_atoms, out_atoms, coef, depthwise,
                              float(k) / (1 if depthwise else groups), geometry))
    tr.set_layout(out, Layout(out_atoms, 1))


def linear(tr, func, args, kwargs, out) -> None:
    """Fully connected layer with the weight of a module (channels in the last dim)."""
    x, weight = args[0], args[1]
    m = tr.param_owner.get(id(weight))
    if m is None:
        tr.fix_unsupported(args, 'linear with a computed weight')
        return
    if not isinstance(m, nn.Linear):
        _foreign_layer(tr, func, args, m)
        return
    name = tr.names[m]
    in_atoms = tr.input_atoms(x, -1, weight.shape[1], f'{name}: input layout unknown')
    out_atoms = tr.module_out(m, weight.shape[0])
    tr.module_in(m, in_atoms)
    rows = x.numel() // x.shape[-1]
    tr.depthwise[m] = False
    geometry = _geometry('linear', ('input', 'weight', 'bias'), args, kwargs, out)
    tr.calls.append(LayerCall(name, in_atoms, out_atoms, float(rows), False, 1.0, geometry))
    tr.set_layout(out, Layout(out_atoms, out.dim() - 1))


def norm(tr, func, args, kwargs, out) -> None:
    """BatchNorm and GroupNorm with affine parameters keep (and prune) their
    channels; LayerNorm, InstanceNorm and norms without parameters fix them."""
    x = args[0]
    lay = tr.layout(x)
    if lay is None:
        return
    owner = None
    for p in list(args[1:5]) + list(kwargs.values()):
        if isinstance(p, torch.Tensor) and id(p) in tr.param_owner:
            owner = tr.param_owner[id(p)]
            break
    if lay.dim == 1 and owner is not None and func in _PER_CHANNEL_NORMS:
        if func in _GROUP_NORMS:
            # statistics are shared within each of the num_groups blocks: the
            # channels of a block are pruned together (one gate), so the other
            # blocks' statistics do not change and num_groups follows
            blocks = kwargs.get('num_groups', args[1] if len(args) > 1 else None)
            tr.tie_rows(lay.atoms.reshape(blocks, -1).T)
        prev = tr.norm_atoms.get(owner)
        if prev is None:
            tr.norm_atoms[owner] = lay.atoms
        else:
            tr.uf.union_arrays(prev, lay.atoms)
        tr.set_layout(out, lay)
        return
    # a channel's statistics mix with its neighbours': these channels stay
    tr.fix(lay.atoms, f'{func.__name__} normalises across channels')
