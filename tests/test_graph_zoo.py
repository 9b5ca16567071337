"""Zoo detectors the tracer once got wrong: random gates -> prune -> export -> verify.

YOLOv3's neck states one width per level (the export crashed on it). mmcv's
deformable convs run a compiled ``autograd.Function`` inside a module that is no
leaf (its offset conv is a child); the tracer missed it, so the pruned model broke
("invalid number of input planes"). Now the tracer names each DCN layer and keeps
the channels it reads and writes. Swin's window attention is kept (by default, with
a warning) while its FFNs, the FPN and the head are pruned.
"""
import json

import pytest
import torch
from mmdet.registry import MODELS
from mmdet.utils import register_all_modules

from gdp_det.cli import load_config
from gdp_det.detector import trace_detector, unprunable_share
from tools.prune import main as prune_main

register_all_modules()

DCN = 'dcn/faster-rcnn_r50-dconv-c3-c5_fpn_1x_coco.py'
SWIN = 'swin/retinanet_swin-t-p4-w7_fpn_1x_coco.py'
# ResNet-50 stages 2-4 (c3-c5): every bottleneck's 3x3 conv is a DeformConv2dPack
DCN_WIDTHS = {f'backbone.layer{s}.{b}.conv2': 64 << (s - 1)
              for s, blocks in ((2, 4), (3, 6), (4, 3)) for b in range(blocks)}


def prune(name, tmp_path, *options):
    """``tools/prune.py`` with random gates at 256x256; its report and state dict."""
    out = tmp_path / 'export'
    rc = prune_main([f'mmdet::{name}', '--random-gates', '0.5', '--seed', '0', '--verify',
                     '--out-dir', str(out), '--input-size', '256', '256', *options])
    assert rc == 0
    report = json.loads((out / 'prune_report.json').read_text())
    state = torch.load(next(out.glob('*_pruned.pth')), weights_only=True)['state_dict']
    return report, state


@pytest.mark.slow
def test_yolov3_prunes_losslessly(tmp_path):
    report, state = prune('yolo/yolov3_d53_8xb8-320-273e_coco.py', tmp_path)
    assert report['max_rel_output_diff'] <= 1e-4
    assert report['flops_ratio'] < 0.9
    assert state['neck.conv1.conv.weight'].shape[0] < 512  # the neck is pruned too


@pytest.mark.slow
def test_dcn_layers_are_named_and_kept(tmp_path):
    cfg = load_config(f'mmdet::{DCN}')
    cfg.model.backbone.init_cfg = None
    graph = trace_detector(MODELS.build(cfg.model), (256, 256))
    assert graph.unsupported == {n: 'DeformConv2dFunction (compiled op)' for n in DCN_WIDTHS}
    members = {n for g in graph.groups for d in (g.producers, g.consumers) for n in d}
    assert not any(n.startswith(tuple(DCN_WIDTHS)) for n in members)  # offset convs too
    assert 'backbone.layer2.0.conv3' in members  # the rest of the stage stays prunable

    report, state = prune(DCN, tmp_path)
    assert report['max_rel_output_diff'] <= 1e-4
    assert report['flops_ratio'] < 0.95
    for name, width in DCN_WIDTHS.items():
        assert tuple(state[f'{name}.weight'].shape) == (width, width, 3, 3)
        assert tuple(state[f'{name}.conv_offset.weight'].shape) == (18, width, 3, 3)
    assert state['backbone.layer1.0.conv1.weight'].shape[0] < 64  # c2 has no DCN


@pytest.mark.slow
def test_swin_attention_is_kept_and_its_ffn_fpn_and_head_are_pruned(tmp_path):
    cfg = load_config(f'mmdet::{SWIN}')
    cfg.model.backbone.init_cfg = None
    graph = trace_detector(MODELS.build(cfg.model), (256, 256))
    assert graph.unsupported and all(n.startswith('backbone.stages.') and '.attn' in n
                                     for n in graph.unsupported)
    assert 0.05 < unprunable_share(graph) < 0.5

    report, state = prune(SWIN, tmp_path)  # kept by default, with a warning
    assert report['max_rel_output_diff'] <= 1e-4
    assert report['predict_check']['max_diff'] <= 1e-3
    assert report['flops_ratio'] < 0.8
    assert state['neck.fpn_convs.0.conv.weight'].shape[0] < 256
    assert state['bbox_head.cls_convs.0.conv.weight'].shape[0] < 256
    assert state['backbone.stages.0.blocks.0.ffn.layers.0.0.weight'].shape[0] < 384
    assert tuple(state['backbone.stages.0.blocks.0.attn.w_msa.qkv.weight'].shape) == (288, 96)
