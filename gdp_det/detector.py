"""Tracing mmdet detectors and the ``GDPDetector`` model type for configs.

``GDPDetector`` builds any mmdet detector from its config, traces its channel
graph and attaches one gate vector per group. It returns the detector itself (the
same class, the same state-dict keys plus ``gdp_gates.*``), so every mmdet tool,
hook and ``load_from`` of a plain checkpoint keeps working::

    model = dict(_delete_=True, type='GDPDetector', detector={{_base_.model}},
                 input_size=(512, 512))
"""
from __future__ import annotations

import copy
import functools
import logging
from contextlib import contextmanager
from typing import Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn as nn
from mmengine.structures import InstanceData

from .distributed import cpu_threads
from .gates import GDPGateSet, TraceSettings, add_gates
from .graph import ChannelGraph, flat_tensors, lacks_cpu_kernel, trace_channel_graph


def _guaranteed_proposals(h: int, w: int, num: int, device) -> torch.Tensor:
    """Boxes of every scale (so RoI extractors read every FPN level), never empty."""
    sizes = torch.tensor([16., 32., 64., 128., 256., 512., 1024.], device=device)
    k = torch.arange(num, device=device)
    s = sizes[k % len(sizes)]
    cx = (k.float() * 37.0) % max(w, 1)
    cy = (k.float() * 53.0) % max(h, 1)
    return torch.stack([cx - s / 2, cy - s / 2, cx + s / 2, cy + s / 2], 1)


def _trace_sample(h: int, w: int, device):
    """The data sample of the traced image, with synthetic ground truth: boxes of
    every scale inside the image (label 0). mmdet's tensor-mode forward of some
    detectors reads ground truth even in eval mode (CondInst and YOLACT take their
    mask head's positive samples from ``bbox_head.loss``; Sparse R-CNN's and
    QueryInst's RoI head assigns its learned proposals); the others never read it."""
    from mmdet.structures import DetDataSample
    sample = DetDataSample(metainfo=dict(img_shape=(h, w), ori_shape=(h, w),
                                         pad_shape=(h, w), scale_factor=(1., 1.),
                                         batch_input_shape=(h, w)))
    boxes = _guaranteed_proposals(h, w, 7, device)
    boxes[:, 0::2] = boxes[:, 0::2].clamp(0, w - 1)
    boxes[:, 1::2] = boxes[:, 1::2].clamp(0, h - 1)
    boxes = boxes[(boxes[:, 2] > boxes[:, 0] + 1) & (boxes[:, 3] > boxes[:, 1] + 1)]
    sample.gt_instances = InstanceData(
        bboxes=boxes, labels=torch.zeros(len(boxes), dtype=torch.long, device=device))
    return sample


@contextmanager
def _heads_run_once(model: nn.Module):
    """While open, a direct child of ``model`` called again on the very same input
    tensors returns its first output instead of computing it again (mmdet's
    instance segmentors run ``bbox_head`` for their outputs, then again inside
    ``bbox_head.loss``; the model at inference runs it once, and so is it counted)."""
    def memoized(forward):
        seen: list = []

        @functools.wraps(forward)
        def run(*args, **kwargs):
            inputs = flat_tensors((args, kwargs))
            for before, out in seen:
                if len(before) == len(inputs) and all(a is b for a, b in zip(before, inputs)):
                    return out
            out = forward(*args, **kwargs)
            if inputs:
                seen.append((inputs, out))
            return out
        return run

    children = [m for m in model.children() if 'forward' not in m.__dict__]
    for m in children:
        m.forward = memoized(m.forward)
    try:
        yield
    finally:
        for m in children:
            del m.forward


def _has_forward(module: nn.Module) -> bool:
    return type(module).forward is not nn.Module.forward


def _rpn_outputs(model: nn.Module, x, sample, num_proposals: int):
    """The RPN's traced outputs and the proposals the RoI head is traced on.

    The RPN runs in tensor mode (``rpn_head(x)``) where it has a ``forward``, else
    through its ``predict`` (mmdet's own ``_forward`` does that: Cascade RPN's
    stages need the anchors refined by the stage before; Sparse R-CNN's proposals
    are learned). The RoI head always reads guaranteed proposals; per-proposal fields
    the RPN adds besides boxes and scores (learned proposal features) are kept, and
    then their count is the proposal count.
    """
    h, w = sample.metainfo['img_shape']
    device = x[0].device
    if not model.with_rpn:
        return [], InstanceData(bboxes=_guaranteed_proposals(h, w, num_proposals, device))
    head = model.rpn_head
    if _has_forward(head):
        return [head(x)], InstanceData(
            bboxes=_guaranteed_proposals(h, w, num_proposals, device))
    results = head.predict(x, [sample], rescale=False)[0]
    extra = {k: v for k, v in results.items() if k not in ('bboxes', 'scores', 'labels')}
    num = len(results) if extra else num_proposals
    props = InstanceData(bboxes=_guaranteed_proposals(h, w, num, device), **extra)
    return [results], props


def detector_forward_fn(input_size: Tuple[int, int], num_proposals: int = 256):
    """Tensor-mode forward of backbone, neck and every head, for tracing.

    The image's data sample carries synthetic ground truth (:func:`_trace_sample`);
    a head run twice on the same features counts once (:func:`_heads_run_once`).
    Two-stage detectors: the RoI head is run on guaranteed proposals rather than on
    the (possibly empty) output of a randomly initialised RPN (:func:`_rpn_outputs`).
    """
    from mmdet.models.detectors import TwoStageDetector

    h, w = input_size

    def forward(model: nn.Module):
        device = next(model.parameters()).device
        img = torch.randn(1, 3, h, w, device=device)
        sample = _trace_sample(h, w, device)
        with _heads_run_once(model):
            if not isinstance(model, TwoStageDetector):
                return model._forward(img, [sample])
            x = model.extract_feat(img)
            outs, props = _rpn_outputs(model, x, sample, num_proposals)
            outs.append(model.roi_head.forward(x, [props], [sample]))
            return outs

    return forward


class NoCPUKernelError(ValueError):
    """The detector's traced forward calls an op without a CPU kernel, and no CUDA
    device is there to trace on; the message names the op and its module."""


def on_device_with_kernels(fn, model: nn.Module):
    """``fn()`` with ``model`` where it is; where that is the CPU and ``fn`` stops at
    an op without a CPU kernel, ``fn()`` again with ``model`` on CUDA (moved back
    after) when there is a device; else the error propagates."""
    try:
        return fn()
    except RuntimeError as e:
        on_cpu = next(model.parameters()).device.type == 'cpu'
        if not (on_cpu and lacks_cpu_kernel(e) and torch.cuda.is_available()):
            raise
    model.cuda()
    try:
        return fn()
    finally:
        model.cpu()


def trace_detector(model: nn.Module, input_size: Tuple[int, int] = (512, 512),
                   exclude: Sequence[str] = (), num_proposals: int = 256) -> ChannelGraph:
    """Channel graph of an mmdet detector at ``input_size`` (H, W), traced on the
    model's device. A model on the CPU that calls an op without a CPU kernel (e.g.
    mmcv's ``deform_roi_pool``) is traced on CUDA when there is a device, and moved
    back (:func:`on_device_with_kernels`). Without one, a module that declares its
    output shape (an RoI layer, an upsampler) is traced as opaque, its channels kept
    and named (:mod:`gdp_det.graph.opaque`); any other, :class:`NoCPUKernelError`.
    Under torchrun the trace (every rank at once) uses the rank's share of the
    cores (:func:`~gdp_det.distributed.cpu_threads`)."""
    forward = detector_forward_fn(input_size, num_proposals)
    on_cpu = next(model.parameters()).device.type == 'cpu'
    opaque = not torch.cuda.is_available()
    try:
        with cpu_threads(alone=False):
            return on_device_with_kernels(
                lambda: trace_channel_graph(model, forward, exclude,
                                            opaque_without_kernel=opaque), model)
    except RuntimeError as e:
        if not (on_cpu and lacks_cpu_kernel(e)):
            raise
        raise NoCPUKernelError(
            f'tracing runs one forward of the detector, on the CPU here, and module '
            f'{failing_module(model, e)!r} calls an op without a CPU kernel '
            f'({str(e).strip().splitlines()[0]}) (run on a machine with CUDA, where GDP '
            'traces on the GPU, or use an mmcv built with that op\'s CPU implementation, '
            'or a detector config without it)') from e


def failing_module(model: nn.Module, e: BaseException) -> str:
    """Name of the innermost module of ``model`` whose code raised ``e``."""
    names = {id(m): n for n, m in model.named_modules()}
    tb, name = e.__traceback__, '(unknown)'
    while tb is not None:
        owner = tb.tb_frame.f_locals.get('self')
        if id(owner) in names and names[id(owner)]:
            name = names[id(owner)]
        tb = tb.tb_next
    return name


class UnsupportedModuleError(ValueError):
    """The tracer met ops it cannot prune through; the message names the modules."""


def unprunable_share(graph: ChannelGraph) -> float:
    """Share of the FLOPs that stays with every prunable channel removed."""
    from .flops import FlopsModel
    flops = FlopsModel(graph)
    return flops.count(np.zeros(graph.num_channels, bool)) / max(flops.full, 1.0)


def check_supported(graph: ChannelGraph, on_unsupported: str = 'keep') -> None:
    """Deal with the modules the tracer cannot follow channels through (named in
    ``graph.unsupported``). Their channels are kept unpruned, so the result is exact:
    ``'keep'`` (default) warns, naming them and the share of FLOPs that cannot be
    pruned; ``'error'`` raises :class:`UnsupportedModuleError` instead."""
    if on_unsupported not in ('error', 'keep'):
        raise ValueError(f"on_unsupported must be 'error' or 'keep', got {on_unsupported!r}")
    if not graph.unsupported:
        return
    names = list(graph.unsupported)
    shown = '; '.join(f'{n}: {graph.unsupported[n]}' for n in names[:5])
    more = f' (and {len(names) - 5} more)' if len(names) > 5 else ''
    tops = sorted({n.split('.')[0] for n in names})
    exclude = (f'exclude={tops} in the GDPDetector config (tools/prune.py: --exclude '
               f'{" ".join(tops)})')
    if on_unsupported == 'error':
        raise UnsupportedModuleError(
            f'GDP cannot follow channels through {len(names)} module(s): {shown}{more}. '
            f'Leave that part unpruned with {exclude}, or keep only the channels these '
            "modules touch unpruned with on_unsupported='keep' (tools/prune.py: "
            '--on-unsupported keep).')
    from mmengine.logging import print_log
    print_log(f'GDP keeps the channels of {len(names)} module(s) it cannot follow unpruned: '
              f'{shown}{more}; {unprunable_share(graph):.1%} of the FLOPs cannot be pruned. '
              f'The rest is pruned exactly. To leave whole components unpruned use {exclude}; '
              "to stop instead, on_unsupported='error'.", logger='current',
              level=logging.WARNING)


def proposal_count(model: nn.Module, default: int = 256) -> int:
    """RoIs per image at test time of a two-stage detector (the count of its learned
    proposals, else ``test_cfg.rpn.max_per_img``): the count its RoI head's FLOPs are
    measured at."""
    learned = getattr(getattr(model, 'rpn_head', None), 'num_proposals', None)
    if isinstance(learned, int):  # learned proposals (Sparse R-CNN's EmbeddingRPNHead)
        return learned
    rpn = (getattr(model, 'test_cfg', None) or {}).get('rpn') or {}
    return int(rpn.get('max_per_img', rpn.get('nms_post', default)))


def attach_gates(model: nn.Module, input_size: Tuple[int, int] = (512, 512),
                 exclude: Sequence[str] = (), num_proposals: Optional[int] = None,
                 normalize: bool = True, eps: float = 1.0,
                 on_unsupported: str = 'keep') -> nn.Module:
    """Trace ``model``, add ``model.gdp_gates`` and gate every group's consumers.

    Two-stage detectors are traced (and their RoI FLOPs counted) with
    ``num_proposals`` RoIs per image, by default the test config's proposal count.
    Modules the tracer cannot prune through keep their channels, with a warning
    (``on_unsupported='error'``: :class:`UnsupportedModuleError` instead).
    """
    if num_proposals is None:
        num_proposals = proposal_count(model)
    graph = trace_detector(model, tuple(input_size), exclude, num_proposals)
    check_supported(graph, on_unsupported)
    notable = sorted(r for r in set(graph.fixed_reasons) - {'model output', 'input not traced'}
                     if not r.endswith('not understood by the tracer'))  # warned above
    if notable:
        from mmengine.logging import print_log
        print_log('GDP: some channels stay unpruned (lossless, by design): '
                  + '; '.join(notable), logger='current', level=logging.WARNING)
    trace = TraceSettings(tuple(input_size), list(exclude), num_proposals, on_unsupported)
    return add_gates(model, graph, normalize, eps, trace)


def find_gates(model: nn.Module) -> Optional[GDPGateSet]:
    """The gate set of a (possibly DDP-wrapped) GDP model, or None."""
    return getattr(unwrap(model), 'gdp_gates', None)


def unwrap(model: nn.Module) -> nn.Module:
    from mmengine.model import is_model_wrapper
    return model.module if is_model_wrapper(model) else model


def build_gdp_detector(detector: dict, input_size: Sequence[int] = (512, 512),
                       exclude: Sequence[str] = (), num_proposals: Optional[int] = None,
                       normalize: bool = True, eps: float = 1.0,
                       on_unsupported: str = 'keep') -> nn.Module:
    """Registered as ``GDPDetector``: build ``detector`` and attach GDP gates."""
    from mmdet.registry import MODELS
    from .compat import apply as apply_compat
    apply_compat()  # torch.load of mmengine checkpoints, VOCMetric labels (see compat.py)
    model = MODELS.build(copy.deepcopy(detector))  # heads rewrite their config (DETRHead)
    return attach_gates(model, tuple(input_size), exclude, num_proposals, normalize, eps,
                        on_unsupported)
