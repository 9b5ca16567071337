"""Detectors whose mmdet tensor-mode forward cannot run on an image alone are traced
and pruned: the traced image carries synthetic ground truth (CondInst and YOLACT take
their mask head's positive samples from ``bbox_head.loss``, run once, not twice; Sparse
R-CNN's RoI head assigns its learned proposals), and an RPN head without a ``forward``
(Cascade RPN, Sparse R-CNN's learned proposals) runs through its ``predict``. What the
tracer cannot follow there is kept, named in the warning and counted as unprunable.
"""
import json
import re

import pytest
import torch
from mmdet.registry import MODELS
from mmdet.utils import register_all_modules

from gdp_det.cli import load_config
from gdp_det.detector import trace_detector
from tools.prune import main as prune_main

register_all_modules()

SIZE = 128


def prune(name, tmp_path, monkeypatch):
    """``tools/prune.py`` with random gates; its report, state dict and warnings."""
    import mmengine.logging
    logged = []
    monkeypatch.setattr(mmengine.logging, 'print_log', lambda msg, **kw: logged.append(msg))
    out = tmp_path / 'export'
    rc = prune_main([f'mmdet::{name}', '--random-gates', '0.5', '--seed', '0', '--verify',
                     '--out-dir', str(out), '--input-size', str(SIZE), str(SIZE)])
    assert rc == 0
    report = json.loads((out / 'prune_report.json').read_text())
    state = torch.load(next(out.glob('*_pruned.pth')), weights_only=True)['state_dict']
    kept = [m for m in logged if 'cannot follow' in m]
    return report, state, kept


def build(name):
    cfg = load_config(f'mmdet::{name}')
    cfg.model.backbone.init_cfg = None
    return MODELS.build(cfg.model)


@pytest.mark.slow
def test_condinst_traces_its_box_head_once_and_prunes_losslessly(tmp_path, monkeypatch):
    name = 'condinst/condinst_r50_fpn_ms-poly-90k_coco_instance.py'
    graph = trace_detector(build(name), (SIZE, SIZE))
    calls = [c.name for c in graph.calls]
    assert calls.count('bbox_head.conv_cls') == 5  # once per FPN level, not again in loss
    assert calls.count('mask_head.mask_feature_head.convs_all_levels.0.conv0.conv') == 1
    assert graph.unsupported == {}

    report, state, kept = prune(name, tmp_path, monkeypatch)
    assert report['max_rel_output_diff'] <= 1e-4
    assert report['predict_check']['matched_share'] == 1.0
    assert report['flops_ratio'] < 0.5 and kept == []
    assert state['mask_head.mask_feature_head.convs_all_levels.0.conv0.conv.weight'].shape[0] \
        < 128  # the mask branch is pruned too


@pytest.mark.slow
def test_sparse_rcnn_keeps_its_dynamic_convs_and_prunes_the_rest(tmp_path, monkeypatch):
    report, state, kept = prune('sparse_rcnn/sparse-rcnn_r50_fpn_1x_coco.py', tmp_path,
                                monkeypatch)
    assert report['roi_proposals'] == 100  # its learned proposals, counted at their number
    assert report['max_rel_output_diff'] <= 1e-4
    assert len(kept) == 1
    assert 'roi_head.bbox_head.0.instance_interactive_conv: view that mixes the channel dim' \
        in kept[0] and 'cannot follow unpruned: ' in kept[0] and '(and 7 more)' in kept[0]
    share = float(re.search(r'([\d.]+)% of the FLOPs cannot be pruned', kept[0])[1]) / 100
    assert 0.3 < share < report['flops_ratio'] < 0.9  # the RoI head is most of it at 128 px
    assert state['backbone.layer1.0.conv1.weight'].shape[0] < 64


@pytest.mark.slow
def test_cascade_rpn_runs_its_stages_through_predict(tmp_path, monkeypatch):
    report, state, kept = prune('cascade_rpn/cascade-rpn_faster-rcnn_r50-caffe_fpn_1x_coco.py',
                                tmp_path, monkeypatch)
    assert report['max_rel_output_diff'] <= 1e-4
    assert report['predict_check']['matched_share'] >= 0.9
    assert len(kept) == 1
    assert 'rpn_head.stages.1.rpn_conv.conv: DeformConv2dFunction (compiled op)' in kept[0]
    assert report['flops_ratio'] < 0.5
    assert state['roi_head.bbox_head.shared_fcs.0.weight'].shape[1] < 256 * 7 * 7
