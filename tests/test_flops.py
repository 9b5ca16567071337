"""The FLOPs model agrees with mmengine's independent FlopAnalyzer."""
import copy

import pytest
import torch
from mmengine.analysis import FlopAnalyzer
from mmdet.registry import MODELS
from mmdet.utils import register_all_modules

from gdp_det.cli import load_config
from gdp_det.detector import attach_gates
from gdp_det.flops import FlopsModel
from gdp_det.pruner import extract_pruned, kept_mask

register_all_modules()
SIZE = (192, 256)


class _TensorMode(torch.nn.Module):
    def __init__(self, det):
        super().__init__()
        self.det = det

    def forward(self, x):
        return self.det._forward(x)


def reference_flops(model):
    ops = FlopAnalyzer(_TensorMode(model).eval(), (torch.randn(1, 3, *SIZE), )).by_operator()
    return sum(v for k, v in ops.items() if k in ('conv', 'linear', 'addmm'))


@pytest.mark.parametrize('name', ['retinanet/retinanet_r50_fpn_1x_coco.py',
                                  'yolox/yolox_s_8xb8-300e_coco.py',
                                  'ssd/ssdlite_mobilenetv2-scratch_8xb24-600e_coco.py'])
@pytest.mark.slow
def test_full_and_pruned_flops_match_flop_analyzer(name):
    cfg = load_config(f'mmdet::{name}')
    cfg.model.backbone.init_cfg = None
    model = attach_gates(MODELS.build(cfg.model), SIZE)
    fm = FlopsModel(model.gdp_gates.graph)
    ref = reference_flops(model)
    assert abs(fm.full - ref) / ref < 0.01
    # prune a random 40 % of every group and count again on the real pruned model
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        model.gdp_gates.a.mul_((torch.rand(model.gdp_gates.a.shape, generator=g) > 0.4).float())
    pruned = copy.deepcopy(model)
    kept = extract_pruned(pruned).kept
    predicted = fm.count(torch.as_tensor(kept_mask(model.gdp_gates.graph, kept)))
    actual = reference_flops(pruned)
    assert predicted < 0.8 * fm.full
    assert abs(predicted - actual) / actual < 0.01


@pytest.mark.slow
def test_channel_weights_are_the_linearised_cost():
    cfg = load_config('mmdet::retinanet/retinanet_r50_fpn_1x_coco.py')
    cfg.model.backbone.init_cfg = None
    model = attach_gates(MODELS.build(cfg.model), SIZE)
    fm = FlopsModel(model.gdp_gates.graph)
    alive = torch.ones(fm.num_channels, dtype=torch.bool)
    w = fm.channel_weights(alive)
    for c in (0, 100, fm.num_channels - 1):
        off = alive.clone()
        off[c] = False
        # removing one channel saves exactly its weight (bilinear, no self-product)
        assert fm.full - fm.count(off) == pytest.approx(float(w[c]), rel=1e-9)



def test_coupled_groups_cost_most_per_channel(capsys):
    """Why the FLOPs-weighted penalty (cost_power=1) cut the stem, residual stream and FPN
    outputs first: a channel of a coupled group is an input and output channel of every
    member layer (and of the head at every level), so its exact marginal cost is several
    times the mean; analyze_groups prints it."""
    from tools.analyze_groups import main as analyze_main
    from conftest import RETINANET_CFG
    assert analyze_main([RETINANET_CFG, '--input-size', '128', '128']) == 0
    line = [x for x in capsys.readouterr().out.splitlines() if x.startswith('FLOPs one')][0]
    cost = {n: float(c) for n, c in (p.rsplit(' ', 1) for p in line.split(': ', 1)[1].split(', '))}
    ranked = sorted(cost, key=cost.get, reverse=True)
    assert ranked[0] == 'backbone.conv1' and cost['backbone.conv1'] > 4
    assert cost['neck.fpn_convs.0.conv'] > 2 > cost['backbone.layer4.1.conv1'] * 4
