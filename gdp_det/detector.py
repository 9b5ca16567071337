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
import logging
from typing import Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn as nn
from mmengine.structures import InstanceData

from .gates import GDPGateSet, TraceSettings, add_gates
from .graph import ChannelGraph, trace_channel_graph


def _guaranteed_proposals(h: int, w: int, num: int, device) -> torch.Tensor:
    """Boxes of every scale (so RoI extractors read every FPN level), never empty."""
    sizes = torch.tensor([16., 32., 64., 128., 256., 512., 1024.], device=device)
    k = torch.arange(num, device=device)
    s = sizes[k % len(sizes)]
    cx = (k.float() * 37.0) % max(w, 1)
    cy = (k.float() * 53.0) % max(h, 1)
    return torch.stack([cx - s / 2, cy - s / 2, cx + s / 2, cy + s / 2], 1)


def detector_forward_fn(input_size: Tuple[int, int], num_proposals: int = 256):
    """Tensor-mode forward of backbone, neck and every head, for tracing.

    Two-stage detectors: the RoI head is run on guaranteed proposals rather than on
    the (possibly empty) output of a randomly initialised RPN.
    """
    from mmdet.models.detectors import TwoStageDetector
    from mmdet.structures import DetDataSample

    h, w = input_size

    def forward(model: nn.Module):
        device = next(model.parameters()).device
        img = torch.randn(1, 3, h, w, device=device)
        sample = DetDataSample(metainfo=dict(img_shape=(h, w), ori_shape=(h, w),
                                             pad_shape=(h, w), scale_factor=(1., 1.),
                                             batch_input_shape=(h, w)))
        if isinstance(model, TwoStageDetector):
            x = model.extract_feat(img)
            outs = [model.rpn_head(x)] if model.with_rpn else []
            props = InstanceData(bboxes=_guaranteed_proposals(h, w, num_proposals, device))
            outs.append(model.roi_head.forward(x, [props], [sample]))
            return outs
        return model._forward(img, [sample])

    return forward


def trace_detector(model: nn.Module, input_size: Tuple[int, int] = (512, 512),
                   exclude: Sequence[str] = (), num_proposals: int = 256) -> ChannelGraph:
    """Channel graph of an mmdet detector at ``input_size`` (H, W)."""
    return trace_channel_graph(model, detector_forward_fn(input_size, num_proposals), exclude)


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
    """RoIs per image at test time (``test_cfg.rpn.max_per_img``) of a two-stage
    detector: the count its RoI head's FLOPs are measured at."""
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
