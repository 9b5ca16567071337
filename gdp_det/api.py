"""High-level entry points: prune a gated detector, verify it, export it."""
from __future__ import annotations

import contextlib
import copy
import os.path as osp
from typing import Optional, Tuple

import torch
import torch.nn as nn
from mmengine.config import Config, ConfigDict

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


@contextlib.contextmanager
def _all_detections(model: nn.Module):
    """Every head's test config with ``score_thr`` 0 (randomly initialised heads score
    below mmdet's thresholds), as a ``ConfigDict`` (mmdet's post-processing reads
    attributes; a model built from plain dicts has plain ones); restored afterwards."""
    saved = []
    for m in model.modules():
        cfg = getattr(m, 'test_cfg', None)
        if isinstance(cfg, dict):
            new = ConfigDict(copy.deepcopy(cfg))
            for c in (new, new.get('rcnn')):
                if isinstance(c, dict) and c.get('score_thr') is not None:
                    c['score_thr'] = 0.0
            saved.append((m, cfg))
            m.test_cfg = new
    try:
        yield
    finally:
        for m, cfg in saved:
            m.test_cfg = cfg


def _predict(model: nn.Module, img: torch.Tensor, meta: dict) -> torch.Tensor:
    """``[x1, y1, x2, y2, score, label]`` rows of ``model``'s detections on ``img``."""
    from mmdet.structures import DetDataSample
    model.eval()
    device = next(model.parameters()).device
    with _all_detections(model):
        out = model.predict(img.to(device), [DetDataSample(metainfo=meta)])[0].pred_instances
    h, w = meta['img_shape']
    return torch.cat([out.bboxes.cpu() / max(h, w), out.scores.cpu()[:, None],
                      out.labels.cpu()[:, None].float()], 1)


def _matched(x: torch.Tensor, y: torch.Tensor, score_tol: float, box_tol: float):
    """For each detection of ``x``: whether ``y`` has one with the same label, a score
    within ``score_tol`` and box corners within ``box_tol``; and the distance (box
    corners) to the closest such detection of ``y`` with the same label and score."""
    same = ((x[:, None, 4] - y[None, :, 4]).abs() <= score_tol) & (x[:, None, 5] == y[None, :, 5])
    dist = (x[:, None, :4] - y[None, :, :4]).abs().amax(-1)
    dist = torch.where(same, dist, torch.full_like(dist, float('inf'))).amin(1)
    return dist <= box_tol, dist


@torch.no_grad()
def max_prediction_difference(model_a: nn.Module, model_b: nn.Module,
                              input_size: Tuple[int, int], seed: int = 0,
                              score_tol: float = 1e-4, box_tol: float = 1e-3) -> dict:
    """Predict-mode (after NMS) results of two detectors on one fixed input.

    Score thresholds are set to 0 for the comparison. A detection is matched when
    the other model has one with the same label, a score within ``score_tol`` and box
    corners (relative to the image size) within ``box_tol``. Returns ``num_dets`` (of
    ``model_a``), ``count_diff``, ``matched_share`` (the smaller of the two
    directions) and ``max_diff`` (the largest box distance among matched detections).
    Exactly tied scores of a barely trained detector can flip NMS decisions between
    two models equal to float rounding, so a share slightly below 1 is expected
    there; a wrongly pruned model matches few detections. When ``model_a`` itself
    cannot predict (an mmdet bug, e.g. SSDHead in mmdet 3.3 has no ``loss_cls``),
    returns ``skipped`` with the reason.
    """
    h, w = input_size
    gen = torch.Generator().manual_seed(seed)
    img = torch.rand(1, 3, h, w, generator=gen) * 255
    meta = dict(img_shape=(h, w), ori_shape=(h, w), pad_shape=(h, w), scale_factor=(1., 1.),
                batch_input_shape=(h, w))
    try:
        a = _predict(model_a, img, meta)
    except Exception as e:  # noqa: BLE001 - the unpruned model's own predict is broken
        return dict(skipped=f'{type(e).__name__}: {e}')
    b = _predict(model_b, img, meta)
    result = dict(num_dets=len(a), count_diff=abs(len(a) - len(b)))
    if len(a) == 0 or len(b) == 0:
        result.update(matched_share=float(len(a) == len(b)), max_diff=0.0)
        return result
    (ma, da), (mb, _) = _matched(a, b, score_tol, box_tol), _matched(b, a, score_tol, box_tol)
    result['matched_share'] = min(float(ma.float().mean()), float(mb.float().mean()))
    result['max_diff'] = float(da[ma].max()) if ma.any() else float('inf')
    return result


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
    graph = gated.gdp_gates.graph
    trace = gated.gdp_gates.trace
    flops = FlopsModel(graph)
    params_model = FlopsModel(graph, params=True)
    device = next(gated.parameters()).device
    pruned = copy.deepcopy(gated.cpu())
    gated.to(device)
    params_before = count_params(pruned)
    result = extract_pruned(pruned, min_channels, channel_divisor)
    alive = torch.as_tensor(kept_mask(graph, result.kept))
    model_cfg = pruned_model_cfg(cfg.model, result.shapes, result.attrs)
    out_cfg = export_config(cfg, model_cfg)
    report = dict(
        flops_before=flops.full, flops_after=flops.count(alive),
        flops_ratio=flops.count(alive) / flops.full,
        params_before=params_before, params_after=count_params(pruned),
        gated_weight_ratio=params_model.count(alive) / params_model.full,
        input_size=list(trace.input_size),
        # RoI layers are counted at the test config's proposal count per image
        roi_proposals=trace.num_proposals if _is_two_stage(gated) else None,
        groups=[dict(name=g.name, channels=g.size, kept=int(len(k)))
                for g, k in zip(graph.groups, result.kept)],
        widths=dict(result.shapes),
        per_layer_flops=_per_layer(flops, graph, alive),
        layer_widths=_layer_widths(graph, alive))
    report['params_ratio'] = report['params_after'] / report['params_before']
    if verify:
        rebuilt = MODELS.build(copy.deepcopy(model_cfg))
        rebuilt.load_state_dict(pruned.state_dict(), strict=True)
        diff = max_output_difference(gated.cpu(), rebuilt, trace.input_size)
        predict = max_prediction_difference(gated, rebuilt, trace.input_size)
        gated.to(device)
        report['max_rel_output_diff'] = diff
        report['predict_check'] = predict
        if not diff <= tolerance:
            raise RuntimeError(f'GDP export verification failed: max relative output '
                               f'difference {diff:.3g} > {tolerance:g}')
        if not predict.get('matched_share', 1.0) >= 0.9:
            raise RuntimeError(f'GDP export verification failed: only '
                               f'{100 * predict["matched_share"]:.0f} % of the '
                               f'{predict["num_dets"]} detections after NMS are the same')
    report.update(extra_report or {})
    meta = dict(gdp=dict(flops_ratio=report['flops_ratio'], params_ratio=report['params_ratio']))
    dataset_meta = getattr(gated, 'dataset_meta', None) or _dataset_meta(cfg)
    if dataset_meta:
        meta['dataset_meta'] = dataset_meta
    paths = write_export(out_dir, name, out_cfg, pruned, report, meta, force)
    return pruned, report, paths


def _is_two_stage(model: nn.Module) -> bool:
    from mmdet.models.detectors import TwoStageDetector
    return isinstance(model, TwoStageDetector)


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
