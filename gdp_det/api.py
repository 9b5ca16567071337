"""High-level entry points: prune a gated detector, verify it, export it."""
from __future__ import annotations

import contextlib
import copy
import logging
import os.path as osp
from typing import Optional, Tuple

import torch
import torch.nn as nn
from mmengine.config import Config, ConfigDict

from .decisions import DecisionLog, relative_difference
from .detector import detector_forward_fn, failing_module, on_device_with_kernels
from .distributed import cpu_threads
from .export import export_config, pruned_model_cfg, write_export
from .flops import FlopsModel
from .graph import flat_tensors, lacks_cpu_kernel
from .pruner import extract_pruned, kept_mask


def model_device(model: nn.Module) -> torch.device:
    """The device of ``model``'s parameters (where the export is checked)."""
    return next(model.parameters()).device


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for n, p in model.named_parameters() if not n.startswith('gdp_gates'))


def _replayed(run, model_a: nn.Module, model_b: nn.Module):
    """``run(model_a)``, then ``run(model_b)`` with ``model_a``'s decisions replayed
    (:mod:`gdp_det.decisions`; ``run(model_a)`` once more where some differed, to
    compare their inputs); returns both results and the log. A model whose forward
    takes another path raises ``RuntimeError``."""
    log = DecisionLog()
    with log.record():
        a = run(model_a)
    with log.replay():
        b = run(model_b)
    if log.flipped and not log.diverged:
        with log.compare():
            run(model_a)
    if log.diverged:
        raise RuntimeError(f'GDP export verification failed: the models\' forwards took '
                           f'different paths ({log.diverged})')
    return a, b, log


@torch.no_grad()
def output_difference(model_a: nn.Module, model_b: nn.Module,
                      input_size: Tuple[int, int], seeds=(0, 1)) -> dict:
    """Tensor-mode head outputs of two detectors on random images.

    ``model_a``'s data-dependent decisions (top-k, NMS, comparisons) are replayed
    on ``model_b`` (:mod:`gdp_det.decisions`): ``max_diff`` is the max relative
    difference of the outputs and of the inputs of every decision whose result
    differed; ``replayed`` counts those decisions.
    """
    worst, replayed = 0.0, 0
    for seed in seeds:
        fn = detector_forward_fn(input_size)

        def run(m):
            m.eval()
            torch.manual_seed(seed)
            return flat_tensors(fn(m))
        outs_a, outs_b, log = _replayed(run, model_a, model_b)
        replayed += log.replayed
        worst = max([worst, log.input_diff] + [relative_difference(x, y)
                                               for x, y in zip(outs_a, outs_b)])
        if len(outs_a) != len(outs_b):
            worst = float('inf')
    return dict(max_diff=worst, replayed=replayed)


def max_output_difference(model_a: nn.Module, model_b: nn.Module,
                          input_size: Tuple[int, int], seeds=(0, 1)) -> float:
    """``max_diff`` of :func:`output_difference`."""
    return output_difference(model_a, model_b, input_size, seeds)['max_diff']


SCORE_THRESHOLDS = ('score_thr', 'filter_thr', 'mask_thr')


@contextlib.contextmanager
def _all_detections(model: nn.Module):
    """Every head's test config with its thresholds 0 (``score_thr``; SOLO's
    ``filter_thr`` and ``mask_thr``: randomly initialised heads score below mmdet's
    thresholds, and SOLO drops the instances whose binarised mask is empty), as a
    ``ConfigDict`` (mmdet's post-processing reads
    attributes; a model built from plain dicts has plain ones); restored afterwards."""
    saved = []
    for m in model.modules():
        cfg = getattr(m, 'test_cfg', None)
        if isinstance(cfg, dict):
            new = ConfigDict(copy.deepcopy(cfg))
            for c in (new, new.get('rcnn')):
                for key in SCORE_THRESHOLDS:
                    if isinstance(c, dict) and c.get(key) is not None:
                        c[key] = 0.0
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
    param = next(model.parameters())
    with _all_detections(model):
        out = model.predict(img.to(param.device, param.dtype),
                            [DetDataSample(metainfo=meta)])[0].pred_instances
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

    Score thresholds are set to 0 for the comparison, and ``model_a``'s decisions
    (top-k, NMS, thresholds) are replayed on ``model_b`` (:mod:`gdp_det.decisions`):
    scores tied to float rounding (a barely trained head) select the same boxes in
    both. A detection is matched when the other model has one with the same label, a
    score within ``score_tol`` and box corners (relative to the image size) within
    ``box_tol``. Returns ``num_dets`` (of ``model_a``), ``count_diff``,
    ``matched_share`` (the smaller of the two directions), ``max_diff`` (the largest
    box distance among matched detections), ``replayed`` (decisions whose result
    differed) and ``decision_diff`` (the largest relative difference of their
    inputs). When ``model_a`` itself cannot predict (an mmdet bug, e.g. SSDHead in
    mmdet 3.3 has no ``loss_cls``), returns ``skipped`` with the reason.
    """
    h, w = input_size
    gen = torch.Generator().manual_seed(seed)
    img = torch.rand(1, 3, h, w, generator=gen) * 255
    meta = dict(img_shape=(h, w), ori_shape=(h, w), pad_shape=(h, w), scale_factor=(1., 1.),
                batch_input_shape=(h, w))

    def run(m):
        try:
            return _predict(m, img, meta)
        except Exception as e:  # noqa: BLE001 - the unpruned model's own predict is broken
            if m is model_a:
                raise _CannotPredict(f'{type(e).__name__}: {e}') from e
            raise
    try:
        a, b, log = _replayed(run, model_a, model_b)
    except _CannotPredict as e:
        return dict(skipped=str(e))
    result = dict(num_dets=len(a), count_diff=abs(len(a) - len(b)), replayed=log.replayed,
                  decision_diff=log.input_diff)
    if len(a) == 0 or len(b) == 0:
        result.update(matched_share=float(len(a) == len(b)), max_diff=0.0)
        return result
    (ma, da), (mb, _) = _matched(a, b, score_tol, box_tol), _matched(b, a, score_tol, box_tol)
    result['matched_share'] = min(float(ma.float().mean()), float(mb.float().mean()))
    result['max_diff'] = float(da[ma].max()) if ma.any() else float('inf')
    return result


class _CannotPredict(Exception):
    """The reference model's own predict failed."""


def prune_and_export(cfg: Config, gated: nn.Module, out_dir: str, name: Optional[str] = None,
                     min_channels: int = 1, channel_divisor: int = 1, force: bool = False,
                     verify: bool = True, tolerance: float = 1e-4,
                     extra_report: Optional[dict] = None):
    """Extract the pruned network from ``gated`` (left untouched) and export it.

    Returns ``(pruned model, report dict, written paths)``. With ``verify``, the
    exported config and checkpoint are rebuilt from disk and compared with the gated
    model; a difference above ``tolerance`` raises ``RuntimeError`` (float32, else
    float64: :func:`_verified`). The report names the modules whose channels were
    kept because the tracer could not follow them (``unsupported``).
    """
    name = name or osp.splitext(osp.basename(cfg.filename or 'model'))[0]
    graph = gated.gdp_gates.graph
    trace = gated.gdp_gates.trace
    flops = FlopsModel(graph)
    params_model = FlopsModel(graph, params=True)
    pruned = copy.deepcopy(gated).cpu()  # (gated stays on its device)
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
        layer_widths=_layer_widths(graph, alive),
        unsupported=dict(graph.unsupported))
    report['params_ratio'] = report['params_after'] / report['params_before']
    if verify:
        report.update(_verified(model_cfg, gated, pruned, trace.input_size, tolerance,
                                (min_channels, channel_divisor)))
    report.update(extra_report or {})
    meta = dict(gdp=dict(flops_ratio=report['flops_ratio'], params_ratio=report['params_ratio']))
    dataset_meta = getattr(gated, 'dataset_meta', None) or _dataset_meta(cfg)
    if dataset_meta:
        meta['dataset_meta'] = dataset_meta
    paths = write_export(out_dir, name, out_cfg, pruned, report, meta, force)
    return pruned, report, paths


def _verified(model_cfg, gated: nn.Module, pruned: nn.Module, input_size,
              tolerance: float, prune_args: tuple) -> dict:
    """The verification's report entries; raises ``RuntimeError`` when it fails.

    The exported config, rebuilt and loaded with ``pruned``'s state dict, is compared
    with ``gated`` (:func:`output_difference`, :func:`max_prediction_difference`) on
    ``gated``'s device (``verified_on``): a model trained on a GPU is checked there,
    with TF32 off (:func:`_checks`); a model on the CPU whose forward calls an op
    without a CPU kernel is checked on CUDA when there is a device
    (:func:`~gdp_det.detector.on_device_with_kernels`), else the check is skipped
    and the report says why (``verification_skipped``), with a warning. Under
    torchrun, rank 0 checks alone while the other ranks wait, with every core
    (:func:`~gdp_det.distributed.cpu_threads`).

    Where the check fails in float32, it is repeated in float64 on the CPU (on CUDA
    where an op has no CPU kernel): some detectors amplify float32 rounding beyond any
    tolerance, so the gated model's own float32 outputs are that far from exact (a
    randomly initialised cascade RoI head regresses its boxes with deltas of hundreds
    through a clamped ``exp``: a 1e-7 difference in the first stage's boxes is 1e-2 in
    the last stage's outputs, DetectoRS). The pruned model is then extracted again
    from a float64 copy of ``gated`` and rebuilt in float64; when that passes,
    ``pruned`` takes its weights (rounded to float32), so the export is the float32
    copy of the verified model. A pruning error is not rounding: it fails in either
    precision.
    """
    with cpu_threads(alone=True):
        try:
            found = on_device_with_kernels(
                lambda: _checks(model_cfg, gated, pruned, input_size), gated)
        except RuntimeError as e:
            if not lacks_cpu_kernel(e):
                raise
            return _skipped(gated, e)
        failure = _failure(found, tolerance)
        if failure is None:
            return dict(found, verified_in='float32')
        return _verified_in_float64(model_cfg, gated, pruned, input_size, tolerance,
                                    prune_args, found, failure)


def _skipped(gated: nn.Module, e: RuntimeError) -> dict:
    """The report entry, and a warning, for a check that no device here can run."""
    from mmengine.logging import print_log
    reason = (f'not verified: the check runs the models\' forward, module '
              f'{failing_module(gated, e)!r} calls an op without a CPU kernel '
              f'({str(e).strip().splitlines()[0]}) and there is no CUDA device here; '
              'verify the export on a machine with CUDA')
    print_log(f'GDP export {reason}', logger='current', level=logging.WARNING)
    return dict(verification_skipped=reason)


def _verified_in_float64(model_cfg, gated: nn.Module, pruned: nn.Module, input_size,
                         tolerance: float, prune_args: tuple, found: dict,
                         failure: str) -> dict:
    """The float64 repetition of :func:`_verified`: on the CPU, or on CUDA where an op
    has no CPU kernel (:func:`~gdp_det.detector.on_device_with_kernels`)."""
    gated64 = copy.deepcopy(gated).cpu().double()
    pruned64 = copy.deepcopy(gated64)
    extract_pruned(pruned64, *prune_args)
    try:
        with _default_dtype(torch.float64):
            found64 = on_device_with_kernels(
                lambda: _checks(model_cfg, gated64, pruned64, input_size), gated64)
        failure64 = _failure(found64, tolerance)
    except (RuntimeError, NotImplementedError) as e:  # e.g. a compiled op without float64
        failure64 = f'not checkable ({type(e).__name__}: {e})'
    if failure64 is not None:
        raise RuntimeError(f'GDP export verification failed: {failure} (float32); '
                           f'in float64: {failure64}')
    pruned.load_state_dict(pruned64.state_dict(), strict=True)
    return dict(found64, verified_in='float64',
                float32_max_rel_output_diff=found['max_rel_output_diff'])


def _checks(model_cfg, gated: nn.Module, pruned: nn.Module, input_size) -> dict:
    """Both checks of :func:`_verified`, in the precision of ``pruned``, on the
    device of ``gated`` (``verified_on``), with CUDA's TF32 off."""
    from mmdet.registry import MODELS
    dtype = next(pruned.parameters()).dtype
    device = model_device(gated)
    rebuilt = MODELS.build(copy.deepcopy(model_cfg))
    if dtype == torch.float64:  # (not .to(dtype): mmdet's KD detectors override to(device))
        rebuilt = rebuilt.double()
    rebuilt.load_state_dict(pruned.state_dict(), strict=True)
    rebuilt.to(device)
    with _full_float32():
        tensor = output_difference(gated, rebuilt, input_size)
        predict = max_prediction_difference(gated, rebuilt, input_size)
    return dict(max_rel_output_diff=tensor['max_diff'], replayed_decisions=tensor['replayed'],
                predict_check=predict, verified_on=str(device))


@contextlib.contextmanager
def _full_float32():
    """TF32 off for CUDA's convolutions and matmuls inside (restored after): cuDNN
    runs float32 convolutions in TF32 by default on Ampere and later GPUs, whose
    10-bit mantissa makes the gated and the pruned model differ by ~1e-3, past the
    check's 1e-4."""
    flags = torch.backends.cudnn, torch.backends.cuda.matmul
    saved = [f.allow_tf32 for f in flags]
    for f in flags:
        f.allow_tf32 = False
    try:
        yield
    finally:
        for f, v in zip(flags, saved):
            f.allow_tf32 = v


def _failure(found: dict, tolerance: float) -> Optional[str]:
    """Why the checks of :func:`_checks` fail at ``tolerance``, or ``None``."""
    diff, predict = found['max_rel_output_diff'], found['predict_check']
    if not diff <= tolerance:
        return f'max relative output difference {diff:.3g} > {tolerance:g}'
    if not predict.get('decision_diff', 0.0) <= tolerance:
        return (f'in predict mode, the inputs of a selection (top-k, NMS, threshold) '
                f'differ by {predict["decision_diff"]:.3g} > {tolerance:g}')
    if not predict.get('matched_share', 1.0) >= 0.9:
        return (f'only {100 * predict["matched_share"]:.0f} % of the '
                f'{predict["num_dets"]} detections after NMS are the same')
    return None


@contextlib.contextmanager
def _default_dtype(dtype: torch.dtype):
    """``torch.set_default_dtype(dtype)`` inside (the checks' random inputs and
    synthetic samples are made in the default dtype)."""
    saved = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(saved)


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
