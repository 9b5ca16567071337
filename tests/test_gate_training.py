"""gdp_det.gate_training: the parts GDPHook delegates to, each on its own contract."""
import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from gdp_det.flops import Budget, FlopsModel
from gdp_det.gate_training import (BudgetController, EpsSchedule, ExportedChannels,
                                   GateGradientStep, OptimizerSteps)
from gdp_det.testing import toy_gated_net


def test_eps_schedule_is_geometric_after_the_warmup():
    s = EpsSchedule(1e-2, 1e-6, warmup_iters=10)
    assert s.at(0, 110) == s.at(10, 110) == pytest.approx(1e-2)
    assert s.at(60, 110) == pytest.approx(1e-4)  # half way: the geometric mean
    assert s.at(110, 110) == s.at(500, 110) == pytest.approx(1e-6)
    with pytest.raises(ValueError, match='eps_start and eps_end must be > 0'):
        EpsSchedule(0, 1e-6)


def test_gradient_step_normalises_averages_and_keeps_dead_gates():
    step = GateGradientStep(lr=0.1, normalise=True, momentum=0.9)
    a = torch.tensor([1.0, 1.0, 0.0])
    live = a != 0
    # AMP: a gradient carrying a loss scale of 4; the dead gate's gradient is ignored
    step.step(a, torch.tensor([8.0, -8.0, 20.0]), live, torch.tensor(4.0))
    assert float(step.grad_sq) == pytest.approx(4.0)  # mean square over the live gates
    assert step.grad_avg.tolist() == pytest.approx([1.0, -1.0, 0.0])
    assert a.tolist() == pytest.approx([0.9, 1.1, 0.0])
    step.step(a, torch.tensor([0.0, float('inf'), 3.0]), live)  # inf: no signal
    assert float(step.grad_sq) == pytest.approx(0.99 * 4.0)
    assert step.grad_avg.tolist() == pytest.approx([0.9, -0.9, 0.0])  # 0.9 of the mean
    assert a.tolist() == pytest.approx([0.81, 1.19, 0.0])
    restored = GateGradientStep(lr=0.1)
    restored.load_state_dict(step.state_dict())
    assert restored.grad_sq == pytest.approx(float(step.grad_sq))
    assert torch.equal(restored.grad_avg, step.grad_avg)


def test_gradient_step_per_group_puts_every_group_at_one_gradient_scale():
    step = GateGradientStep(lr=0.1, normalise='group', momentum=0.0)
    a = torch.tensor([1.0, 1.0, 1.0, 1.0, 0.0])
    groups = torch.tensor([0, 0, 1, 1, 1])
    # group 0's gradient is 100x group 1's; the dead gate's (20) counts in no mean
    step.step(a, torch.tensor([300.0, -400.0, 3.0, -4.0, 20.0]), a != 0, groups=groups,
              num_groups=2)
    assert step.grad_sq.tolist() == pytest.approx([12.5e4, 12.5])  # per group, live only
    rms = math.sqrt(12.5)
    assert a.tolist() == pytest.approx([1 - 0.3 / rms, 1 + 0.4 / rms] * 2 + [0.0])
    one_scalar = GateGradientStep(lr=0.1, normalise=True, momentum=0.0)
    b = torch.tensor([1.0, 1.0, 1.0, 1.0, 0.0])
    one_scalar.step(b, torch.tensor([300.0, -400.0, 3.0, -4.0, 20.0]), b != 0)
    assert float(1 - b[2]) == pytest.approx(0.01 * float(1 - b[0]), rel=1e-3)  # 1/100
    restored = GateGradientStep(lr=0.1, normalise='group')
    restored.load_state_dict(step.state_dict())
    step.step(a, torch.tensor([3.0, 4.0, 3.0, 4.0, 0.0]), a != 0, groups=groups,
              num_groups=2)
    restored_a = torch.tensor([1 - 0.3 / rms, 1 + 0.4 / rms] * 2 + [0.0])
    restored.step(restored_a, torch.tensor([3.0, 4.0, 3.0, 4.0, 0.0]), restored_a != 0,
                  groups=groups, num_groups=2)
    assert torch.equal(restored_a, a) and torch.equal(restored.grad_sq, step.grad_sq)
    with pytest.raises(ValueError, match="needs the gates' groups and their number"):
        GateGradientStep(lr=0.1, normalise='group').step(a, a.clone(), a != 0)
    with pytest.raises(ValueError, match="grad_norm must be True, False or 'group'"):
        GateGradientStep(lr=0.1, normalise='layer')


def test_hook_normalises_per_group_on_the_gate_sets_groups_and_after_a_shrink():
    """GDPHook(grad_norm='group') gives the step every gate's group: toy_gated_net's 3
    groups (32, 64, 64 gates), with gradients 1000x apart, move the same way; a shrunk
    gate set (the same groups, narrowed) gets its own index."""
    from gdp_det.hooks import GDPHook
    from gdp_det.shrink import ChannelShrink
    from gdp_det.testing import drive_hook
    net = toy_gated_net()
    slices = net.gdp_gates.group_slices
    scale = torch.ones(net.gdp_gates.a.numel())
    scale[slices[0]], scale[slices[2]] = 1000.0, 1e-3
    sign = torch.tensor([1.0, -1.0]).repeat(80)
    hook = GDPHook(flops_target=0.9, export=False, gdp_iters=1, lambda_init=0.0,
                   grad_norm='group', grad_momentum=0.0, gate_lr=0.1)
    drive_hook(net, hook, 1, lambda it: scale * sign)
    assert net.gdp_gates.a.detach().tolist() == pytest.approx((1 - 0.1 * sign).tolist())
    assert hook.gate_step.grad_sq.tolist() == pytest.approx([1e6, 1.0, 1e-6])
    kept = np.ones(net.gdp_gates.a.numel(), bool)
    kept[1::2] = False  # half of each group
    ChannelShrink(net.gdp_gates.graph, kept).apply(net)
    index = hook._group_args(net.gdp_gates)
    assert index['groups'].tolist() == [0] * 16 + [1] * 32 + [2] * 32
    assert index['num_groups'] == 3


def test_gradient_step_without_normalising_or_momentum_is_plain_sgd():
    step = GateGradientStep(lr=0.5, normalise=False, momentum=0.0)
    a = torch.tensor([1.0, 2.0])
    step.step(a, torch.tensor([0.2, -0.4]), torch.tensor([True, True]))
    assert a.tolist() == pytest.approx([0.9, 2.2])
    assert step.grad_avg is None and step.grad_sq is None


def test_exported_channels_are_reused_while_the_zeros_stay():
    net = toy_gated_net()
    exported = ExportedChannels(net.gdp_gates.graph, min_channels=2)
    a = np.ones(net.gdp_gates.a.numel(), np.float32)
    a[:40] = 0
    first = exported(a)
    assert first.sum() == len(a) - 40 + 2 * (first[:32].sum() == 2)  # 2 kept of the first group
    b = a * 0.5  # other values, the same zeros
    assert exported(b) is first
    b[50] = 0
    assert exported(b) is not first and not exported(b)[50]


def controller_on_toy(target: float, min_channels: float = 1, **kw):
    net = toy_gated_net()
    graph = net.gdp_gates.graph
    flops = FlopsModel(graph)
    budget = Budget([(flops, target)])
    exported = ExportedChannels(graph, min_channels)
    ctl = BudgetController(lr=0.1, lam=1.0, lambda_rate=0.5, min_channels=min_channels, **kw)
    ctl.attach(budget, exported, flops, net.gdp_gates.group_slices)
    return net, ctl, exported


def test_controller_cuts_only_what_the_budget_needs_then_eases():
    net, ctl, exported = controller_on_toy(0.5, min_channels=0)  # the order alone decides
    a = torch.linspace(0.01, 1.0, net.gdp_gates.a.numel())  # small gates go first
    ctl.lam = 100.0  # a threshold past every gate: all would be cut in one step
    before = a.clone()
    ctl.step(a)
    kept = exported(a.numpy())
    assert ctl.ratio <= 0.5 and ctl.ratio == pytest.approx(0.5, abs=0.05)
    cut = (before != 0) & (a == 0)
    assert cut.any() and float(before[cut].max()) <= float(before[~cut].min())  # smallest first
    assert torch.equal(a[~cut], before[~cut])  # the rest keep their values
    assert ctl.lam == pytest.approx(150.0)
    after = a.clone()
    ctl.step(a)  # within budget: nothing moves, lambda shrinks
    assert torch.equal(a, after) and ctl.lam == pytest.approx(75.0)
    assert kept.sum() < len(kept)


def test_eased_budget_is_cut_to_first_then_the_final_one():
    """A gradual cut: the controller follows the eased target (1 - 0.5 x 0.4 = 0.8 at
    share 0.4), the final target stays what was given, and the next cut takes the
    export on down once the budget is eased to its end."""
    net, ctl, exported = controller_on_toy(0.5, min_channels=0)
    a = torch.linspace(0.01, 1.0, net.gdp_gates.a.numel())
    ctl.budget.ease(0.4)
    assert ctl.budget.constraints[0][1] == pytest.approx(0.8) and ctl.budget.final[0][1] == 0.5
    ctl.lam = 100.0  # a threshold past every gate
    ctl.step(a)
    first, zeroed = exported(a.numpy()), a == 0
    assert ctl.ratio <= 0.8 and ctl.ratio == pytest.approx(0.8, abs=0.05)
    assert ctl.budget.met(first) and not ctl.budget.met(first, final=True)
    ctl.budget.ease(1.5)  # past the ramp: the targets given
    assert ctl.budget.constraints == ctl.budget.final
    ctl.lam = 100.0
    ctl.step(a)
    assert ctl.ratio <= 0.5 and ctl.budget.met(exported(a.numpy()), final=True)
    assert not a[zeroed].any() and (a == 0).sum() > zeroed.sum()  # more cut, none back


def test_controller_grows_lambda_slower_once_the_cut_has_begun():
    net, ctl, _ = controller_on_toy(0.5, min_channels=0, cut_rate_factor=0.2)
    a = torch.ones(net.gdp_gates.a.numel())  # the threshold (0.1) below every gate
    ctl.step(a)
    assert ctl.lam == pytest.approx(1.5) and bool((a == 0.9).all())
    a[0] = 0  # a gate has reached 0: lambda grows at a fifth of its rate
    ctl.step(a)
    assert ctl.lam == pytest.approx(1.5 * 1.1)
    with pytest.raises(ValueError, match='cut_rate_factor must be in'):
        BudgetController(lr=0.1, lam=1.0, cut_rate_factor=0)


def test_controller_keeps_min_channels_per_group():
    net, ctl, _ = controller_on_toy(0.001, min_channels=3)  # below what 3 per group cost
    a = torch.ones(net.gdp_gates.a.numel())
    ctl.lam = 100.0
    ctl.step(a)
    for sl in net.gdp_gates.group_slices:
        assert int((a[sl] != 0).sum()) == 3


def test_optimizer_steps_record_the_scale_and_fused_overflow():
    scaler = SimpleNamespace(_scale=torch.tensor(1024.0))
    steps = OptimizerSteps(scaler)
    assert steps.take() == (False, None)  # no step yet
    optimizer = SimpleNamespace()
    steps.on_step(optimizer, (), {})
    scaler._scale.mul_(2)  # GradScaler.update() after the step: a growth step
    stepped, scale = steps.take()
    assert stepped and float(scale) == 1024.0
    steps.on_step(SimpleNamespace(found_inf=torch.tensor(1.0)), (), {})  # fused, overflow
    assert steps.take()[0] is False
    assert steps.take()[0] is False  # reset after take
    assert math.isclose(float(steps.scale), 2048.0)


def test_hook_warns_when_training_ends_before_the_cut_meets_the_budget(monkeypatch):
    """No lambda (no cut) in a 2-iteration phase: after_train warns with the missed ratio
    and the settings to change; gates that meet the budget give no warning."""
    import gdp_det.hooks as hooks
    from gdp_det.testing import drive_hook
    logged = []
    monkeypatch.setattr(hooks, 'print_log', lambda msg, **kw: logged.append((msg, kw)))
    net = toy_gated_net()
    hook = hooks.GDPHook(flops_target=0.9, export=False, gdp_iters=2, lambda_init=0.0)
    runner = drive_hook(net, hook, 2, lambda it: torch.zeros(net.gdp_gates.a.numel()))
    hook.after_train(runner)
    (msg, kw), = logged
    assert 'flops_target 1.0000 > 0.9' in msg
    assert 'gdp_iters=2' in msg and 'lambda_span=0.25' in msg
    assert kw['level'] == hooks.logging.WARNING
    logged.clear()
    with torch.no_grad():
        net.gdp_gates.a.zero_()  # the export keeps min_channels per group: within 0.9
    hook.after_train(runner)
    assert logged == []
