"""The op table: how each torch operation moves channel atoms.

:data:`OPS` maps the torch objects themselves -- functions of ``torch`` and
``torch.nn.functional``, ``torch.Tensor`` methods and their in-place forms,
attribute descriptors such as ``torch.Tensor.T`` and compiled ops (``torch.ops``
packets, custom ``torch.autograd.Function`` classes) -- to a handler
``handler(tracer, func, args, kwargs, out)``. The tracer finds a handler by
identity (:func:`handler_of`), never by name. An op that is not in the table is
unsupported: the channels that flow into it are kept unpruned and the op is named
in :attr:`ChannelGraph.unsupported`; an attribute read whose value is no tensor
(``.shape``, ``.device``) is metadata.

Handlers for layers (conv, linear, norms) live in :mod:`.layers`, handlers that
move or reshape the channel dimension in :mod:`.shapes`; this module holds the
table and the elementwise ops. Use :func:`register_op` to teach the tracer an op
of another library.
"""
from __future__ import annotations

import functools
import types
from typing import Callable, Dict, Iterable, Sequence

import torch
import torch.nn.functional as F

from . import layers, shapes
from .atoms import Layout, flat_tensors

Handler = Callable[..., None]
OPS: Dict[object, Handler] = {}


def op_key(func):
    """The table key of ``func`` as a ``TorchFunctionMode`` receives it.

    Attribute reads (``x.T``, ``x.data``) arrive as a fresh ``__get__`` method
    wrapper per read; they are keyed by the attribute's descriptor
    (``torch.Tensor.T``), which is stable.
    """
    if isinstance(func, types.MethodWrapperType) and func.__name__ == '__get__':
        return func.__self__
    return func


def op_name(func) -> str:
    """How error messages name ``func`` (``.T`` for attribute reads)."""
    key = op_key(func)
    if key is not func:
        return f'.{key.__name__}'
    return getattr(func, '__name__', str(func))


def register_op(handler: Handler, *objs) -> None:
    """Map each of ``objs`` (a torch function, Tensor method or descriptor, a
    ``torch.ops`` packet, an ``autograd.Function`` class) to ``handler``."""
    for obj in objs:
        OPS[obj] = handler


def handler_of(func) -> Handler:
    """The handler for ``func``; ops outside the table get :func:`unsupported`."""
    handler = OPS.get(op_key(func))
    if handler is not None:
        return handler
    if op_key(func) is not func:
        return _attribute
    if isinstance(func, type) and issubclass(func, torch.autograd.Function):
        return _compiled_function
    return unsupported


# -- generic handlers ---------------------------------------------------------------
def unsupported(tr, func, args, kwargs, out) -> None:
    """An op the tracer does not know: keep every traced channel it reads."""
    tr.fix_unsupported((args, kwargs), op_name(func))


def _attribute(tr, func, args, kwargs, out) -> None:
    if isinstance(out, torch.Tensor):
        unsupported(tr, func, args, kwargs, out)


def _compiled_function(tr, func, args, kwargs, out) -> None:
    """A custom ``autograd.Function`` outside the table. The mode follows the
    Python part of its forward; if an output comes back untraced, C++/CUDA code
    the mode cannot see computed it (mmcv's deform_conv2d): keep its inputs."""
    if any(tr.layout(o) is None for o in flat_tensors(out)):
        tr.fix_unsupported((args, kwargs), f'{func.__name__} (compiled op)')


def _meta(tr, func, args, kwargs, out) -> None:
    """Reads only shapes/dtypes or allocates: no channel data flows."""


def traced_first(fn=None, *, rest_shape_only: bool = False):
    """Decorate a handler of ops that transform their first argument.

    The handler gets that argument's layout as a sixth argument and is skipped
    when it is untraced; traced tensors among the other arguments are then kept
    unpruned unless they are read for their shape/dtype only."""
    if fn is None:
        return functools.partial(traced_first, rest_shape_only=rest_shape_only)

    @functools.wraps(fn)
    def handler(tr, func, args, kwargs, out):
        lay = tr.layout(args[0]) if args else None
        if lay is not None:
            fn(tr, func, args, kwargs, out, lay)
        elif not rest_shape_only:
            tr.fix_all((args[1:], kwargs), f'{op_name(func)} reads traced channels')
    return handler


def _same_shape(tr, func, args, kwargs, out, lay) -> None:
    if isinstance(out, torch.Tensor) and out.shape == args[0].shape:
        tr.set_layout(out, lay)
    else:
        tr.fix(lay.atoms, f'{op_name(func)} changes the shape')


@traced_first
def _elementwise(tr, func, args, kwargs, out, lay) -> None:
    """Activations and other per-element ops: every channel stays in place."""
    tr.fix_all((args[1:], kwargs), f'{op_name(func)} reads traced channels')
    _same_shape(tr, func, args, kwargs, out, lay)


# casts, copies and views of the same shape (``.to``, ``.detach()``, ``.data``)
_keep = traced_first(_same_shape, rest_shape_only=True)


@traced_first
def _spatial(tr, func, args, kwargs, out, lay) -> None:
    """Pooling, padding, resizing of NCHW maps: channel ``c`` stays channel ``c``."""
    x = args[0]
    res = out[0] if isinstance(out, tuple) else out  # pooling with indices
    if (lay.dim == 1 and isinstance(res, torch.Tensor) and res.dim() == x.dim()
            and res.shape[1] == x.shape[1]):
        tr.set_layout(res, lay)
    else:
        tr.fix(lay.atoms, op_name(func))


def binary(tr, func, args, kwargs, out) -> None:
    """Broadcasting elementwise ops of two tensors: aligned channels are unioned."""
    if not isinstance(out, torch.Tensor):
        return
    lays = [(a, tr.layout(a)) for a in args[:2]]
    known = [(a, l) for a, l in lays if l is not None]
    if not known:
        return
    dim = known[0][1].dim + (out.dim() - known[0][0].dim())
    size = out.shape[dim] if 0 <= dim < out.dim() else -1
    atoms = None
    for a, l in lays:
        if not isinstance(a, torch.Tensor):
            continue
        adim = dim - (out.dim() - a.dim())
        if l is not None and l.dim == adim and len(l.atoms) == size:
            if atoms is None:
                atoms = l.atoms
            else:
                tr.uf.union_arrays(atoms, l.atoms)
        elif l is not None:
            tr.fix(l.atoms, 'broadcast over channels')
        elif 0 <= adim < a.dim() and a.shape[adim] == size and size > 1:
            # an untraced tensor with per-channel values (e.g. a parameter)
            for _, kl in known:
                tr.fix(kl.atoms, 'combined with an untraced per-channel tensor')
    if atoms is not None:
        tr.set_layout(out, Layout(atoms, dim))


@traced_first
def _reduce(tr, func, args, kwargs, out, lay) -> None:
    """Reductions and softmax over some dims; over the channel dim they fix it."""
    x, name = args[0], op_name(func)
    dims = kwargs.get('dim', args[1] if len(args) > 1 else None)
    if isinstance(dims, torch.Tensor):  # torch.max(a, b): elementwise
        return binary(tr, func, args, kwargs, out)
    if dims is None:
        tr.fix(lay.atoms, f'{name} over all dims')
        return
    dims = [d % x.dim() for d in (dims if isinstance(dims, (tuple, list)) else [dims])]
    if lay.dim in dims:
        tr.fix(lay.atoms, f'{name} over channels')
        return
    res = out[0] if isinstance(out, tuple) else out
    if res.dim() == x.dim():
        tr.set_layout(res, lay)
    else:
        tr.set_layout(res, Layout(lay.atoms, lay.dim - sum(d < lay.dim for d in dims)))


# -- the table ---------------------------------------------------------------------
def _objects(names: Iterable[str], owners: Sequence[object] = (torch, F, torch.Tensor),
             inplace: bool = False) -> list:
    """The torch objects called ``names`` (and ``name_`` with ``inplace``) that exist
    on ``owners``; the table holds objects, names only find them here."""
    found = []
    for name in names:
        for n in (name, name + '_') if inplace else (name,):
            found += [getattr(o, n) for o in owners if hasattr(o, n)]
    return found


_T = (torch.Tensor,)
register_op(_elementwise, *_objects(
    ['relu', 'relu6', 'sigmoid', 'tanh', 'gelu', 'silu', 'hardswish', 'hardsigmoid',
     'leaky_relu', 'elu', 'mish', 'softplus', 'hardtanh', 'clamp', 'clip', 'dropout',
     'dropout2d', 'neg', 'exp', 'abs', 'sqrt', 'square', 'pow', 'log'], inplace=True),
    *_objects(['__neg__', '__pow__'], _T))
register_op(_keep, *_objects(
    ['contiguous', 'clone', 'detach', 'float', 'half', 'double', 'to', 'type', 'type_as',
     'cpu', 'cuda', 'requires_grad_', 'detach_'], _T), torch.clone, torch.detach,
    torch.Tensor.data, torch.Tensor.real)
register_op(binary, *_objects(
    ['add', 'sub', 'subtract', 'mul', 'multiply', 'div', 'divide', 'true_divide'],
    (torch, torch.Tensor), inplace=True), torch.maximum, torch.minimum,
    torch.Tensor.maximum, torch.Tensor.minimum, *_objects(
    ['__add__', '__radd__', '__iadd__', '__sub__', '__rsub__', '__isub__', '__mul__',
     '__rmul__', '__imul__', '__truediv__', '__rtruediv__', '__itruediv__'], _T))
register_op(_spatial, F.interpolate, F.upsample, F.upsample_nearest, F.upsample_bilinear,
            F.max_pool2d,  # a boolean_dispatch wrapper (named fn in older torch)
            F.max_pool2d_with_indices, F.avg_pool2d, F.adaptive_avg_pool2d,
            F.adaptive_max_pool2d, F.adaptive_max_pool2d_with_indices, F.pad,
            *_objects(['max_pool2d', 'avg_pool2d'], (torch,)))
register_op(_reduce, *_objects(['sum', 'mean', 'amax', 'amin', 'softmax', 'log_softmax',
                                'max', 'min']))
register_op(_meta, *_objects(
    ['dim', 'size', 'numel', 'nelement', 'ndimension', 'new_zeros', 'new_ones', 'new_empty',
     'new_full', 'new_tensor', 'zeros_like', 'ones_like', 'empty_like', 'full_like',
     'rand_like', 'randn_like', 'is_floating_point', 'is_complex', 'is_contiguous',
     'data_ptr', 'get_device', 'element_size', 'stride', 'storage_offset'],
    (torch, torch.Tensor)), *_objects(['__len__', '__format__', '__repr__'], _T))
register_op(layers.conv, torch.conv2d, torch.conv_transpose2d)
register_op(layers.linear, F.linear)
register_op(layers.norm, *_objects(['batch_norm', 'group_norm', 'layer_norm',
                                    'instance_norm'], (torch, F)))
register_op(shapes.cat, torch.cat, torch.concat, torch.concatenate)
register_op(shapes.setitem, torch.Tensor.__setitem__)
register_op(traced_first(shapes.getitem), torch.Tensor.__getitem__)
register_op(traced_first(shapes.split), *_objects(['split', 'chunk', 'split_with_sizes'],
                                                  (torch, torch.Tensor)))
register_op(traced_first(shapes.fix_channels), torch.unbind, torch.Tensor.unbind)
register_op(traced_first(shapes.narrow), torch.narrow, torch.Tensor.narrow)
register_op(traced_first(shapes.reshape), *_objects(['view', 'reshape', 'flatten'],
                                                    (torch, torch.Tensor)))
register_op(traced_first(shapes.reshape, rest_shape_only=True),
            torch.Tensor.view_as, torch.Tensor.reshape_as)
register_op(traced_first(shapes.squeeze), torch.squeeze, torch.Tensor.squeeze)
register_op(traced_first(shapes.unsqueeze), torch.unsqueeze, torch.Tensor.unsqueeze)
register_op(traced_first(shapes.permute), torch.permute, torch.Tensor.permute)
register_op(traced_first(shapes.transpose), *_objects(['transpose', 'swapaxes', 'swapdims'],
                                                      (torch, torch.Tensor)))
register_op(traced_first(shapes.attribute_transpose), torch.Tensor.T, torch.Tensor.mT,
            torch.Tensor.H, torch.Tensor.mH)
register_op(traced_first(shapes.expand), torch.Tensor.expand)
register_op(traced_first(shapes.expand, rest_shape_only=True), torch.Tensor.expand_as)


@traced_first
def _per_channel_pooling(tr, func, args, kwargs, out, lay) -> None:
    """RoI pooling: output channel ``c`` of every RoI is pooled from input channel
    ``c`` alone; the module that ran it is recorded as a pass-through."""
    res = out[0] if isinstance(out, tuple) else out  # torchvision roi_pool: (out, argmax)
    if lay.dim == 1 and isinstance(res, torch.Tensor) and res.shape[1] == len(lay.atoms):
        tr.passthrough(lay, [res])
    else:
        unsupported(tr, func, args, kwargs, out)


@functools.lru_cache(None)
def register_extension_ops() -> None:
    """Compiled RoI pooling of mmcv and torchvision (imported on first trace)."""
    import torchvision  # noqa: F401  (registers torch.ops.torchvision)
    for packet in (torch.ops.torchvision.roi_align, torch.ops.torchvision.roi_pool):
        register_op(_per_channel_pooling, packet, packet.default)
    try:
        from mmcv.ops.roi_align import RoIAlignFunction
        from mmcv.ops.roi_pool import RoIPoolFunction
    except ImportError:  # pragma: no cover - mmcv is a dependency of mmdet
        return
    register_op(_per_channel_pooling, RoIAlignFunction, RoIPoolFunction)
