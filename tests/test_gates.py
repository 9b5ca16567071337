"""Gate function and insertion into a trained model."""
import pytest
import torch
from mmdet.registry import MODELS
from mmdet.utils import register_all_modules

from gdp_det.api import max_output_difference
from gdp_det.cli import load_config
from gdp_det.detector import attach_gates
from gdp_det.gates import gate_value

register_all_modules()


def test_gate_function_polarizes():
    a = torch.tensor([0.0, 1e-3, 0.1, 1.0, 3.0])
    for normalize in (False, True):
        g_hi = gate_value(a, 1.0, normalize)
        g_lo = gate_value(a, 1e-6, normalize)
        assert g_hi[0] == 0 and g_lo[0] == 0  # exact zero stays zero
        assert (g_lo[2:] > 0.99).all()  # away from 0: near 1 once eps is small
    assert float(gate_value(torch.tensor(1.0), 0.5, True)) == pytest.approx(1.0)
    assert float(gate_value(torch.tensor(1.0), 0.5, False)) == pytest.approx(1 / 1.5)
    # zero slope at 0: a gate at exactly 0 gets no gradient back
    x = torch.zeros(1, requires_grad=True)
    gate_value(x, 1e-2).sum().backward()
    assert float(x.grad) == 0


@pytest.mark.parametrize('eps', [1.0, 1e-2])
def test_inserting_gates_keeps_outputs(eps):
    cfg = load_config('mmdet::faster_rcnn/faster-rcnn_r50_fpn_1x_coco.py')
    cfg.model.backbone.init_cfg = None
    torch.manual_seed(0)
    plain = MODELS.build(cfg.model)
    import copy
    gated = attach_gates(copy.deepcopy(plain), (224, 224), eps=eps)
    assert max_output_difference(plain, gated, (224, 224)) < 1e-6
    # and the gates really act: zeroing one group changes the outputs
    with torch.no_grad():
        gated.gdp_gates.a[gated.gdp_gates.group_slices[-1]] = 0
    assert max_output_difference(plain, gated, (224, 224)) > 1e-3
