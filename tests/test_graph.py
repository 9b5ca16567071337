"""Channel groups found by tracing real mmdet detectors (PEER_NOTES cases)."""
import numpy as np
import pytest
from mmdet.registry import MODELS
from mmdet.utils import register_all_modules

from gdp_det.cli import load_config
from gdp_det.detector import trace_detector

register_all_modules()


def build(name):
    cfg = load_config(f'mmdet::{name}')
    if 'init_cfg' in cfg.model.get('backbone', {}):
        cfg.model.backbone.init_cfg = None
    return MODELS.build(cfg.model)


def group_with(graph, producer):
    for g in graph.groups:
        if producer in g.producers:
            return g
    raise AssertionError(f'{producer} is in no group')


def all_members(graph):
    names = set()
    for g in graph.groups:
        names |= set(g.producers) | set(g.consumers)
    return names


@pytest.fixture(scope='module')
def retinanet_graph():
    return trace_detector(build('retinanet/retinanet_r50_fpn_1x_coco.py'), (256, 256))


@pytest.mark.slow
def test_residual_stream_and_fpn_lateral_share_a_group(retinanet_graph):
    g = group_with(retinanet_graph, 'backbone.layer2.0.conv3')
    # every block's last conv and the downsample conv write the same stream
    assert {'backbone.layer2.0.downsample.0', 'backbone.layer2.1.conv3',
            'backbone.layer2.3.conv3'} <= set(g.producers)
    assert g.size == 512
    # the FPN lateral conv reads the stage output (Torch-Pruning#180)
    assert 'neck.lateral_convs.0.conv' in g.consumers
    # and so does the next stage's first block
    assert {'backbone.layer3.0.conv1', 'backbone.layer3.0.downsample.0'} <= set(g.consumers)


@pytest.mark.slow
def test_fpn_levels_and_shared_head_are_one_group(retinanet_graph):
    # the lateral outputs are joined by the top-down adds: one group over all levels
    lat = group_with(retinanet_graph, 'neck.lateral_convs.0.conv')
    assert set(lat.producers) == {f'neck.lateral_convs.{i}.conv' for i in range(3)}
    assert set(lat.consumers) == {f'neck.fpn_convs.{i}.conv' for i in range(3)}
    # every output level (P3-P5 and the extra P6, P7) feeds the shared head
    out = group_with(retinanet_graph, 'neck.fpn_convs.0.conv')
    assert set(out.producers) == {f'neck.fpn_convs.{i}.conv' for i in range(5)}
    # the head's first convs are shared by all 5 levels (mmrazor#79): one consumer
    assert {'bbox_head.cls_convs.0.conv', 'bbox_head.reg_convs.0.conv'} <= set(out.consumers)
    # P7 reads relu(P6): a consumer of the output group
    assert 'neck.fpn_convs.4.conv' in out.consumers
    # P6 ('on_input') reads C5, so it is a consumer of the layer4 stream group
    c5 = group_with(retinanet_graph, 'backbone.layer4.0.conv3')
    assert 'neck.fpn_convs.3.conv' in c5.consumers


@pytest.mark.slow
def test_outputs_and_image_channels_are_fixed(retinanet_graph):
    producers = {n for g in retinanet_graph.groups for n in g.producers}
    assert 'bbox_head.retina_cls' not in producers
    assert 'bbox_head.retina_reg' not in producers
    stem = group_with(retinanet_graph, 'backbone.conv1')
    assert 'backbone.conv1' not in stem.consumers  # the image's 3 channels are fixed


@pytest.mark.slow
def test_faster_rcnn_roi_fcs_read_c_x_7_x_7():
    graph = trace_detector(build('faster_rcnn/faster-rcnn_r50_fpn_1x_coco.py'), (256, 256))
    g = group_with(graph, 'neck.fpn_convs.0.conv')
    pos = g.consumers['roi_head.bbox_head.shared_fcs.0']
    assert len(pos) == 256 * 49
    # channel c owns 49 consecutive inputs of the FC
    assert np.array_equal(pos, np.repeat(pos[::49], 49))
    assert sorted(pos[::49].tolist()) == sorted(
        g.producers['neck.fpn_convs.0.conv'].tolist())
    # the RPN and RoI head were traced (never dropped for lack of proposals)
    assert 'rpn_head.rpn_conv' in g.consumers
    fc2 = group_with(graph, 'roi_head.bbox_head.shared_fcs.0')
    assert 'roi_head.bbox_head.shared_fcs.1' in fc2.consumers
    assert 'roi_head.bbox_head.fc_cls' in group_with(
        graph, 'roi_head.bbox_head.shared_fcs.1').consumers


def test_yolox_concat_maps_each_branch():
    graph = trace_detector(build('yolox/yolox_s_8xb8-300e_coco.py'), (256, 256))
    # a CSP block's final conv reads cat([main, short]): two groups, disjoint halves
    name = 'backbone.stage1.1.final_conv.conv'
    touching = [g for g in graph.groups if name in g.consumers]
    assert len(touching) == 2
    maps = [g.consumers[name] for g in touching]
    halves = [np.flatnonzero(m >= 0) for m in maps]
    assert len(halves[0]) + len(halves[1]) == len(maps[0])
    assert set(halves[0]).isdisjoint(halves[1])


def test_depthwise_convs_carry_their_input_group():
    graph = trace_detector(build('ssd/ssdlite_mobilenetv2-scratch_8xb24-600e_coco.py'),
                           (320, 320))
    carriers = [g for g in graph.groups if g.carriers]
    assert carriers
    for g in carriers:
        for name in g.carriers:
            assert name not in g.consumers  # depthwise convs get no gate of their own


@pytest.mark.slow
def test_groupnorm_blocks_share_one_gate():
    """GroupNorm (FCOS head: 32 groups of 8 channels) is pruned by whole blocks: the
    8 channels of a block are one group channel, so the other blocks' statistics
    stay and num_groups follows."""
    graph = trace_detector(build('fcos/fcos_r50-caffe_fpn_gn-head_1x_coco.py'), (256, 256))
    grp = next(g for g in graph.groups if 'bbox_head.cls_convs.0.gn' in g.norms)
    pos = grp.norms['bbox_head.cls_convs.0.gn']
    assert len(pos) == 256 and len(set(pos.tolist())) == 32
    assert all(len(set(pos[b * 8:(b + 1) * 8].tolist())) == 1 for b in range(32))
    assert 'bbox_head.cls_convs.0.conv' in grp.producers
    assert not any('group_norm' in r for r in graph.fixed_reasons)


@pytest.mark.slow
def test_exclude_keeps_a_part_unpruned():
    model = build('retinanet/retinanet_r50_fpn_1x_coco.py')
    graph = trace_detector(model, (256, 256), exclude=['bbox_head'])
    assert not any(n.startswith('bbox_head') for n in all_members(graph))
    # the rest stays prunable (the FPN outputs do not: their only readers are excluded)
    producers = {p for g in graph.groups for p in g.producers}
    assert 'backbone.layer2.0.conv3' in producers
    assert 'neck.fpn_convs.0.conv' not in producers
