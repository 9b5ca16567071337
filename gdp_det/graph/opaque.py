"""Modules whose forward calls an op without a CPU kernel, traced on the CPU anyway.

Some compiled ops have CUDA kernels only (mmcv's ``deform_roi_pool`` in mmdet's
dcnv2 ``dpool``/``mdpool`` configs, ``carafe``, ``roi_pool``). Where no CUDA device
is there to trace on, :func:`opaque_without_cpu_kernels` lets the trace go on past
such a module: its output is a tensor of the shape the module declares
(:func:`declared_shape`), the channels that flow into it and those of the layers
that ran inside it before the op are kept unpruned, and the module is named, as for
any module the tracer cannot follow (:meth:`~.tracer.ChannelTracer.fix_opaque`). What
the module computes after the op (e.g. the offset layers of a deformable RoI pool) is
not traced: it is neither pruned nor counted in the FLOPs.
"""
from __future__ import annotations

import functools
from contextlib import contextmanager
from typing import Iterator, Optional, Tuple

import torch
import torch.nn as nn

# how torch and mmcv say that an op has no kernel for CPU tensors
NO_CPU_KERNEL = ('implementation for device cpu not found', "not implemented for 'CPU'",
                 "arguments from the 'CPU' backend")


# how ``ChannelGraph.unsupported`` names what an opaque module is
OPAQUE = 'opaque: no CPU kernel'


def lacks_cpu_kernel(e: BaseException) -> bool:
    """Whether ``e`` says that an op has no kernel for CPU tensors."""
    return isinstance(e, RuntimeError) and any(m in str(e) for m in NO_CPU_KERNEL)


def _pair(v) -> Tuple[int, int]:
    return tuple(v) if isinstance(v, (tuple, list)) else (v, v)


def declared_shape(module: nn.Module, args: tuple) -> Optional[Tuple[int, ...]]:
    """The output shape ``module`` declares for ``args``, or ``None``.

    - an RoI layer (an ``output_size``, called on features and RoIs): one map of
      the features' channels at ``output_size`` per RoI;
    - an upsampler (an integer ``scale_factor``, called on one feature map): the
      map's channels at ``scale_factor`` times its height and width.
    """
    tensors = [a for a in args if isinstance(a, torch.Tensor)]
    size = getattr(module, 'output_size', None)
    if size is not None and len(tensors) >= 2 and tensors[0].dim() == 4 \
            and tensors[1].dim() == 2:
        feats, rois = tensors[:2]
        return (rois.shape[0], feats.shape[1]) + _pair(size)
    scale = getattr(module, 'scale_factor', None)
    if isinstance(scale, int) and len(tensors) == 1 and tensors[0].dim() == 4:
        n, c, h, w = tensors[0].shape
        return n, c, h * scale, w * scale
    return None


@contextmanager
def opaque_without_cpu_kernels(model: nn.Module, tracer) -> Iterator[None]:
    """While open, a module of ``model`` that declares its output shape
    (:func:`declared_shape`) and whose forward stops at an op without a CPU kernel
    returns zeros of that shape, and ``tracer`` keeps the channels of its inputs and
    of the layers inside it, naming the module and the op. Other errors, and modules
    that declare no shape, raise as before. The forwards are restored on exit."""
    wrapped = []
    for m in model.modules():
        if hasattr(m, 'output_size') or hasattr(m, 'scale_factor'):
            wrapped.append((m, m.__dict__.get('forward')))
            m.forward = _opaque_forward(m, m.forward, tracer)
    try:
        yield
    finally:
        for m, own in wrapped:
            if own is None:
                del m.forward
            else:
                m.forward = own


def _opaque_forward(module: nn.Module, forward, tracer):
    @functools.wraps(forward)
    def wrapped(*args, **kwargs):
        try:
            return forward(*args, **kwargs)
        except RuntimeError as e:
            shape = declared_shape(module, args)
            if shape is None or not lacks_cpu_kernel(e):
                raise
            op = str(e).strip().splitlines()[0]
            tracer.fix_opaque(module, args, f'{type(module).__name__} ({OPAQUE}, {op}; '
                                            'output shape from the module)')
            return args[0].new_zeros(shape)
    return wrapped
