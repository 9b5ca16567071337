"""High-level entry points: prune a gated detector, verify it, export it."""
from __future__ import annotations

import copy
import os.path as osp
from typing import Optional, Tuple

import torch
import torch.nn as nn
from mmengine.config import Config

from .detector import detector_forward_fn
from .export import export_config, pruned_model_cfg, write_export
from .flops import FlopsModel
from .graph import flat_tensors
from .pruner import extract_pruned, kept_mask


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for n, p in model.named_parameters() if not n.startswith('gdp_gates'))


@torch.no_grad()
def max_output_difference(model_a: nn.Module, model_b: nn.Module,
                          input_size: Tuple[int, int], seeds=(0, 1)) -> float:
    """Max relative difference of all tensor-mode head outputs on random images."""
    worst = 0.0
    for seed in seeds:
        fn = detector_forward_fn(input_size)
        outs = []
        for m in (model_a, model_b):
            m.eval()
            torch.manual_seed(seed)
            outs.append(flat_tensors(fn(m)))
        for x, y in zip(*outs):
            if x.shape != y.shape:
                return float('inf')
            scale = max(float(x.abs().max()), 1e-6)
            worst = max(worst, float((x - y).abs().max()) / scale)
    return worst


def prune_and_export(cfg: Config, gated: nn.Module, out_dir: str, name: Optional[str] = None,
                     min_channels: int = 1, channel_divisor: int = 1, force: bool = False,
                     verify: bool = True, tolerance: float = 1e-4,
                     extra_report: Optional[dict] = None):
    """Extract the pruned network from ``gated`` (left untouched) and export it.

    Returns ``(pruned model, report dict, written paths)``. With ``verify``, the
    exported config and checkpoint are rebuilt from disk and compared with the gated
    model; a difference above ``tolerance`` raises ``RuntimeError``.
    """
    from mmdet.registry import MODELS
    name = name or osp.splitext(osp.basename(cfg.filename or 'model'))[0]
    graph = gated.gdp_graph
    trace_cfg = gated.gdp_trace_cfg
    flops = FlopsModel(graph)
    params_model = FlopsModel(graph, params=True)
    device = next(gated.parameters()).device
    pruned = copy.deepcopy(gated.cpu())
    gated.to(device)
    params_before = count_params(pruned)
    shapes, attrs = extract_pruned(pruned, min_channels, channel_divisor)
    alive = torch.as_tensor(kept_mask(graph, pruned.gdp_kept))
    model_cfg = pruned_model_cfg(cfg.model, shapes, attrs)
    out_cfg = export_config(cfg, model_cfg)
    report = dict(
        flops_before=flops.full, flops_after=flops.count(alive),
        flops_ratio=flops.count(alive) / flops.full,
        params_before=params_before, params_after=count_params(pruned),
        gated_weight_ratio=params_model.count(alive) / params_model.full,
        input_size=list(trace_cfg['input_size']),
        groups=[dict(name=g.name, channels=g.size, kept=int(len(k)))
                for g, k in zip(graph.groups, pruned.gdp_kept)],
        widths={n: s for n, s in shapes.items()},
        per_layer_flops=_per_layer(flops, graph, alive),
        layer_widths=_layer_widths(graph, alive))
    report['params_ratio'] = report['params_after'] / report['params_before']
    if verify:
        rebuilt = MODELS.build(copy.deepcopy(model_cfg))
        rebuilt.load_state_dict(pruned.state_dict(), strict=True)
        diff = max_output_difference(gated.cpu(), rebuilt, trace_cfg['input_size'])
        gated.to(device)
        report['max_rel_output_diff'] = diff
        if not diff <= tolerance:
            raise RuntimeError(f'GDP export verification failed: max relative output '
                               f'difference {diff:.3g} > {tolerance:g}')
    report.update(extra_report or {})
    meta = dict(gdp=dict(flops_ratio=report['flops_ratio'], params_ratio=report['params_ratio']))
    dataset_meta = getattr(gated, 'dataset_meta', None) or _dataset_meta(cfg)
    if dataset_meta:
        meta['dataset_meta'] = dataset_meta
    paths = write_export(out_dir, name, out_cfg, pruned, report, meta, force)
    return pruned, report, paths


def _dataset_meta(cfg: Config):
    try:
        return dict(cfg.test_dataloader.dataset.metainfo)
    except (AttributeError, KeyError, TypeError):
        return None


def _per_layer(flops: FlopsModel, graph, alive) -> dict:
    before = flops.per_call()
    after = flops.per_call(alive)
    out: dict = {}
    for c, b, a in zip(graph.calls, before.tolist(), after.tolist()):
        e = out.setdefault(c.name, [0.0, 0.0])
        e[0] += b
        e[1] += a
    return {k: dict(before=v[0], after=v[1]) for k, v in out.items()}


def _layer_widths(graph, alive) -> dict:
    """Output channels of every conv/linear layer before and after pruning."""
    ext = torch.cat([alive.bool(), torch.ones(1, dtype=torch.bool)])
    widths = {}
    for c, out in zip(graph.calls, graph.call_out):
        if c.name not in widths:
            widths[c.name] = [len(out), int(ext[torch.as_tensor(out)].sum())]
    return widths
