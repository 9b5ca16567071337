"""Bad gates and budgets fail early and clearly; degenerate groups stay exact."""
import copy
import warnings

import pytest
import torch
import torch.nn as nn

from gdp_det.flops import FlopsModel
from gdp_det.gates import add_gates
from gdp_det.graph import trace_channel_graph
from gdp_det.hooks import GDPHook
from gdp_det.pruner import extract_pruned


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.layers = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                                    nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(),
                                    nn.Conv2d(16, 4, 1))

    def forward(self, x):
        return self.layers(x)

    def __getitem__(self, i):
        return self.layers[i]


def small_net():
    torch.manual_seed(0)
    net = Net().eval()
    x = torch.randn(1, 3, 16, 16)
    return add_gates(net, trace_channel_graph(net, lambda m: m(x))), x


def test_nan_gates_are_refused():
    net, _ = small_net()
    with torch.no_grad():
        net.gdp_gates.a[3] = float('nan')
    with pytest.raises(ValueError, match='NaN/Inf'):
        extract_pruned(net)


def test_all_zero_group_keeps_min_channels_exactly():
    net, x = small_net()
    with torch.no_grad():
        net.gdp_gates.a[net.gdp_gates.group_slices[0]] = 0  # every gate of the first group
        ref = net(x)
    pruned = copy.deepcopy(net)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter('always')
        extract_pruned(pruned, min_channels=2)
    assert any('every gate of group' in str(w.message) for w in caught)
    assert pruned[0].out_channels == 2
    assert torch.allclose(pruned(x), ref, atol=1e-6)


def test_unreachable_budget_names_the_smallest_reachable_ratio():
    net, _ = small_net()
    from gdp_det.flops import Budget
    flops = FlopsModel(net.gdp_graph)
    hook = GDPHook(flops_target=0.01, min_channels=4)
    hook.budget = Budget([(flops, 0.01)])
    with pytest.raises(ValueError, match=r'flops_target=0.01 is unreachable with min_channels=4;'
                                         r' the smallest reachable ratio is 0\.\d+'):
        hook._check_reachable(net)
    ok = GDPHook(flops_target=0.5, min_channels=4)
    ok.budget = Budget([(flops, 0.5)])
    ok._check_reachable(net)  # reachable: no error


def test_channel_divisor_rounds_up_with_exact_zero_gates():
    net, x = small_net()
    with torch.no_grad():
        a = net.gdp_gates.a
        a.copy_(torch.rand(a.shape) + 0.1)
        a[net.gdp_gates.group_slices[1].start + torch.arange(11)] = 0  # 5 of 16 alive
        ref = net(x)
    pruned = copy.deepcopy(net)
    extract_pruned(pruned, channel_divisor=4)
    assert pruned[3].out_channels == 8
    assert torch.allclose(pruned(x), ref, rtol=1e-5, atol=1e-6)


def test_budget_with_params_target():
    from gdp_det.flops import Budget
    net, _ = small_net()
    flops = FlopsModel(net.gdp_graph)
    params = FlopsModel(net.gdp_graph, params=True)
    alive = torch.ones(flops.num_channels, dtype=torch.bool)
    alive[:4] = False  # half of the first conv's outputs
    budget = Budget([(flops, 0.9), (params, None)])
    assert len(budget.constraints) == 1
    both = Budget([(flops, 1.0), (params, 0.5)])
    r_flops, r_params = both.ratios(alive)
    assert r_params < 1 and r_flops < 1
    assert both.met(alive) == (r_params <= 0.5)
    # only the violated constraint contributes to the weights
    w = both.weights(torch.ones_like(alive))
    assert torch.allclose(w, params.channel_weights(torch.ones_like(alive)) / params.full)
    with pytest.raises(ValueError, match='params_target must be in'):
        GDPHook(params_target=2.0)


def test_min_channels_as_a_share_of_each_group():
    from gdp_det.pruner import group_minimum
    assert group_minimum(0.25, 64) == 16 and group_minimum(0.25, 3) == 1
    assert group_minimum(8, 4) == 4 and group_minimum(0, 10) == 0
    net, x = small_net()
    with torch.no_grad():
        net.gdp_gates.a.zero_()
        ref = net(x)
    pruned = copy.deepcopy(net)
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        extract_pruned(pruned, min_channels=0.5)
    assert (pruned[0].out_channels, pruned[3].out_channels) == (4, 8)
    assert torch.allclose(pruned(x), ref, atol=1e-6)
