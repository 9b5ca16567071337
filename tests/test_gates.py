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


@pytest.mark.slow
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


@pytest.mark.slow
def test_kernel_gating_equals_input_gating(monkeypatch):
    """Convs are gated through their kernel (cheaper); outputs and gate gradients
    must equal those of gating the input activation."""
    import copy
    from gdp_det import gates as gates_mod
    from gdp_det.detector import detector_forward_fn
    from gdp_det.graph import flat_tensors
    cfg = load_config('mmdet::faster_rcnn/faster-rcnn_r50_fpn_1x_coco.py')
    cfg.model.backbone.init_cfg = None
    kernel = attach_gates(MODELS.build(cfg.model), (128, 128))
    with torch.no_grad():
        kernel.gdp_gates.a.uniform_(0, 1.5)
        kernel.gdp_gates.a[::7] = 0
        kernel.gdp_gates.set_eps(0.1)
    assert any(isinstance(h, torch.nn.Module) for h in kernel.gdp_gates._handles)
    inputs = copy.deepcopy(kernel)
    inputs.gdp_gates.detach_hooks()
    monkeypatch.setattr(gates_mod, '_weight_gated', lambda m: False)
    inputs.gdp_gates.attach(inputs)
    fn = detector_forward_fn((128, 128))
    results = []
    for model in (kernel, inputs):
        model.eval()
        torch.manual_seed(0)
        outs = flat_tensors(fn(model))
        sum(o.float().sum() for o in outs if o.requires_grad).backward()
        results.append((outs, model.gdp_gates.a.grad))
    (out_k, grad_k), (out_i, grad_i) = results
    for x, y in zip(out_k, out_i):
        assert float((x - y).abs().max()) <= 1e-5 * max(float(y.abs().max()), 1.0)
    assert float((grad_k - grad_i).abs().max()) <= 1e-4 * float(grad_i.abs().max())
