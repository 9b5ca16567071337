"""Random gates -> prune -> export -> reload -> verify on mmdet's own configs."""
import json
import os.path as osp

import pytest
import torch

from mmdet.utils import register_all_modules

from tools.prune import main as prune_main

register_all_modules()

COVERAGE = [
    ('faster_rcnn/faster-rcnn_r50_fpn_1x_coco.py', (256, 256)),
    ('mask_rcnn/mask-rcnn_r50_fpn_1x_coco.py', (256, 256)),
    ('cascade_rcnn/cascade-rcnn_r50_fpn_1x_coco.py', (256, 256)),
    ('retinanet/retinanet_r50_fpn_1x_coco.py', (256, 256)),
    ('fcos/fcos_r50-caffe_fpn_gn-head_1x_coco.py', (256, 256)),
    ('atss/atss_r50_fpn_1x_coco.py', (256, 256)),
    ('gfl/gfl_r50_fpn_1x_coco.py', (256, 256)),
    ('yolox/yolox_s_8xb8-300e_coco.py', (256, 256)),
    ('rtmdet/rtmdet_tiny_8xb32-300e_coco.py', (256, 256)),
    ('ssd/ssd300_coco.py', (300, 300)),
    ('ssd/ssdlite_mobilenetv2-scratch_8xb24-600e_coco.py', (320, 320)),
    ('faster_rcnn/faster-rcnn_x101-32x4d_fpn_1x_coco.py', (256, 256)),
]


@pytest.mark.slow
@pytest.mark.parametrize('name,size', COVERAGE, ids=[c[0].split('/')[1][:-3] for c in COVERAGE])
def test_random_gates_export_is_lossless(name, size, tmp_path):
    out = tmp_path / 'export'
    rc = prune_main([f'mmdet::{name}', '--random-gates', '0.5', '--seed', '0', '--verify',
                     '--out-dir', str(out), '--input-size', str(size[0]), str(size[1])])
    assert rc == 0
    stem = osp.basename(name)[:-3]
    report = json.loads((out / 'prune_report.json').read_text())
    assert report['max_rel_output_diff'] <= 1e-4
    # predict mode too (mmdet 3.3's SSDHead cannot predict at all: mmdet#11780)
    check = report['predict_check']
    if name.startswith('ssd/'):
        assert 'loss_cls' in check['skipped']
    else:
        assert check['matched_share'] >= 0.9 and check['max_diff'] <= 1e-3
        # a random RTMDet head predicts negative distances: no valid box to compare
        assert check['num_dets'] > 0 or name.startswith('rtmdet/')
    assert report['flops_ratio'] < 0.9  # something was really removed
    assert report['params_after'] < report['params_before']
    state = torch.load(out / f'{stem}_pruned.pth', weights_only=True)  # plain tensors
    assert 'gdp_gates.a' not in state['state_dict']
    if 'x101' in name:  # grouped convs are pruned, balanced over their 32 groups
        w = state['state_dict']['backbone.layer1.0.conv2.weight']
        assert w.shape[0] < 128 and w.shape[0] % 32 == 0 and w.shape[1] < 4
    if 'gn-head' in name or name.startswith(('atss', 'gfl')):  # GN heads are pruned too
        gn = state['state_dict']['bbox_head.cls_convs.0.gn.weight']
        assert gn.numel() < 256 and gn.numel() % 8 == 0


RANDOMIZED = [(name, seed, share) for name, size in COVERAGE
              if name.split('/')[0] in ('faster_rcnn', 'yolox', 'ssd', 'rtmdet', 'gfl')
              and 'x101' not in name and 'ssd300' not in name
              for seed, share in ((1, 0.3), (2, 0.9))]


@pytest.mark.slow
@pytest.mark.parametrize('name,seed,share', RANDOMIZED,
                         ids=[f'{n.split("/")[1][:12]}-{s}-{p}' for n, s, p in RANDOMIZED])
def test_other_random_gate_patterns_are_lossless(name, seed, share, tmp_path):
    """More seeds and shares (0.9: nearly every gate of every group is zero)."""
    out = tmp_path / 'export'
    size = '320' if 'ssdlite' in name else '192'
    rc = prune_main([f'mmdet::{name}', '--random-gates', str(share), '--seed', str(seed),
                     '--verify', '--out-dir', str(out), '--input-size', size, size])
    assert rc == 0
    report = json.loads((out / 'prune_report.json').read_text())
    assert report['max_rel_output_diff'] <= 1e-4
    assert report['flops_ratio'] < (0.6 if share == 0.9 else 0.95)


@pytest.mark.slow
def test_export_loads_in_plain_mmdet_and_detects(tmp_path):
    """init_detector + inference_detector on the exported files match the gated model."""
    import numpy as np
    from mmdet.apis import inference_detector, init_detector
    from mmdet.registry import MODELS
    from gdp_det.cli import gdp_model_cfg, load_config
    from tools.prune import randomize_gates
    from gdp_det.api import prune_and_export

    cfg = load_config('mmdet::retinanet/retinanet_r50_fpn_1x_coco.py')
    cfg.model.backbone.init_cfg = None
    cfg.model = gdp_model_cfg(cfg, (320, 320))
    gated = MODELS.build(cfg.model)
    randomize_gates(gated.gdp_gates, 0.5, 1)
    # lower the score threshold so random weights still give detections to compare
    cfg.model['detector']['test_cfg']['score_thr'] = 0.0
    gated.bbox_head.test_cfg['score_thr'] = 0.0
    _, report, paths = prune_and_export(cfg, gated, str(tmp_path), name='r50')
    pruned = init_detector(paths[0], paths[1], device='cpu')
    gated.cfg = pruned.cfg
    img = (np.random.RandomState(0).rand(320, 320, 3) * 255).astype(np.uint8)
    a = inference_detector(gated, img).pred_instances
    b = inference_detector(pruned, img).pred_instances
    assert len(a) > 0 and len(a) == len(b)
    # the same detections; near-tied scores of a random model may come in another order
    ka = torch.cat([a.bboxes, 1e3 * a.scores[:, None], a.labels[:, None].float()], 1)
    kb = torch.cat([b.bboxes, 1e3 * b.scores[:, None], b.labels[:, None].float()], 1)
    dist = (ka[:, None] - kb[None]).abs().amax(-1)
    assert float(dist.amin(1).max()) < 1e-2 and float(dist.amin(0).max()) < 1e-2


@pytest.mark.slow
@pytest.mark.parametrize('group', ['neck.fpn_convs.0.conv', 'neck.lateral_convs.0.conv'])
def test_pruning_one_fpn_group_keeps_the_other(group, tmp_path):
    """FPN lateral and output convs share mmdet's ``out_channels`` but are different
    groups; pruning one alone must export and verify."""
    from mmdet.registry import MODELS
    from gdp_det.api import prune_and_export
    from gdp_det.cli import gdp_model_cfg, load_config

    cfg = load_config('mmdet::retinanet/retinanet_r50_fpn_1x_coco.py')
    cfg.model.backbone.init_cfg = None
    cfg.model = gdp_model_cfg(cfg, (128, 128))
    model = MODELS.build(cfg.model)
    gates = model.gdp_gates
    i = gates.group_names.index(group)
    with torch.no_grad():
        gates.a[gates.group_slices[i].start:gates.group_slices[i].start + 200] = 0
    _, report, _ = prune_and_export(cfg, model, str(tmp_path), name='r50')
    assert report['max_rel_output_diff'] <= 1e-4
    assert report['widths'][group]['out_channels'] == 56


def test_random_gates_build_uses_mmdets_init_seeded(tmp_path):
    """Without a checkpoint the model gets mmdet's own init (as the Runner gives it),
    seeded: RetinaNet's classifier bias is the prior-probability constant, and the same
    seed gives the same export."""
    states = []
    for run in ('a', 'b'):
        out = tmp_path / run
        assert prune_main(['configs/toy/retinanet_r18_fpn_toyvoc.py', '--random-gates', '0.5',
                           '--seed', '3', '--out-dir', str(out), '--input-size', '64',
                           '64']) == 0
        states.append(torch.load(next(out.glob('*_pruned.pth')), weights_only=False)
                      ['state_dict'])
    bias = states[0]['bbox_head.retina_cls.bias']
    assert torch.allclose(bias, torch.full_like(bias, -4.59512), atol=1e-4)  # bias_prob 0.01
    assert all(torch.equal(states[0][k], states[1][k]) for k in states[0])


def test_no_pretrained_drops_every_weight_loading_init_cfg():
    from gdp_det.cli import no_pretrained
    cfg = dict(backbone=dict(init_cfg=dict(checkpoint='https://x/pvt_tiny.pth')),  # PVT's
               neck=dict(init_cfg=[dict(type='Pretrained', checkpoint='y')]),
               head=dict(init_cfg=dict(type='Normal', std=0.01)))
    no_pretrained(cfg)
    assert cfg['backbone']['init_cfg'] is None and cfg['neck']['init_cfg'] is None
    assert cfg['head']['init_cfg'] == dict(type='Normal', std=0.01)
