"""Property test: random CNNs with every coupling pattern prune losslessly.

Networks are drawn from residual blocks (identity and projection shortcuts),
concatenations, depthwise separable and grouped convs (pruned balanced), GroupNorm (2 blocks), an
FPN-style top-down add
over two levels and a head shared across the levels. Random gates are zeroed,
the network is pruned, and its outputs must not change.
"""
import copy

import torch
import torch.nn as nn
import torch.nn.functional as F
from hypothesis import example, given, settings, strategies as st

from gdp_det.gates import add_gates
from gdp_det.graph import trace_channel_graph
from gdp_det.pruner import extract_pruned


def cbr(cin, cout, k=3, groups=1, stride=1):
    return nn.Sequential(nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=False),
                         nn.BatchNorm2d(cout), nn.ReLU())


class Block(nn.Module):
    def __init__(self, kind, cin, cout):
        super().__init__()
        self.kind = kind
        if kind == 'res':
            self.body = nn.Sequential(cbr(cin, cout), nn.Conv2d(cout, cout, 3, 1, 1),
                                      nn.BatchNorm2d(cout))
            self.short = nn.Identity() if cin == cout else nn.Conv2d(cin, cout, 1)
        elif kind == 'cat':
            self.a, self.b = cbr(cin, cout // 2, 1), cbr(cin, cout - cout // 2, 3)
        elif kind == 'dw':
            self.body = nn.Sequential(cbr(cin, cin, 3, groups=cin), cbr(cin, cout, 1))
        elif kind == 'gn':
            self.body = nn.Sequential(nn.Conv2d(cin, cout, 3, 1, 1), nn.GroupNorm(2, cout),
                                      nn.ReLU())
        elif kind == 'group':
            self.body = nn.Sequential(cbr(cin, 2 * cout), cbr(2 * cout, 2 * cout, groups=2),
                                      cbr(2 * cout, cout, 1))

    def forward(self, x):
        if self.kind == 'res':
            return F.relu(self.body(x) + self.short(x))
        if self.kind == 'cat':
            return torch.cat([self.a(x), self.b(x)], 1)
        return self.body(x)


class RandNet(nn.Module):
    def __init__(self, kinds, widths, fpn):
        super().__init__()
        self.stem = cbr(3, widths[0], stride=2)
        blocks, cin = [], widths[0]
        for kind, w in zip(kinds, widths[1:]):
            blocks.append(Block(kind, cin, w))
            cin = w
        self.blocks = nn.ModuleList(blocks)
        self.down = cbr(cin, cin, stride=2)
        self.lat = nn.ModuleList([nn.Conv2d(cin, fpn, 1), nn.Conv2d(cin, fpn, 1)])
        self.out = nn.ModuleList([nn.Conv2d(fpn, fpn, 3, padding=1) for _ in range(2)])
        self.head = cbr(fpn, fpn)  # shared across levels
        self.cls = nn.Conv2d(fpn, 3, 1)

    def forward(self, x):
        x = self.stem(x)
        for b in self.blocks:
            x = b(x)
        c1, c2 = x, self.down(x)
        p2 = self.lat[1](c2)
        p1 = self.lat[0](c1) + F.interpolate(p2, size=c1.shape[2:], mode='nearest')
        feats = [self.out[0](p1), self.out[1](p2)]
        return [self.cls(self.head(f)) for f in feats]


def randomize_bn(model, gen):
    for m in model.modules():
        if isinstance(m, (nn.BatchNorm2d, nn.GroupNorm)):
            n = m.weight.numel()
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.copy_(torch.rand(n, generator=gen) - 0.5)
                m.running_var.copy_(torch.rand(n, generator=gen) + 0.5)
            m.weight.data.copy_(torch.rand(n, generator=gen) + 0.5)
            m.bias.data.copy_(torch.rand(n, generator=gen) - 0.5)


@settings(max_examples=25, deadline=None, derandomize=True)
@example(kinds=['cat', 'dw'], widths=[4, 6, 4, 4, 4], fpn=4, share=0.5, seed=1)  # found in CI
@example(kinds=['gn', 'res'], widths=[4, 8, 8, 4, 4], fpn=4, share=0.5, seed=2)
@given(kinds=st.lists(st.sampled_from(['res', 'cat', 'dw', 'group', 'gn']), min_size=1,
                      max_size=4),
       widths=st.lists(st.sampled_from([4, 6, 8, 12]), min_size=5, max_size=5),
       fpn=st.sampled_from([4, 8]), share=st.floats(0.0, 0.9), seed=st.integers(0, 2 ** 16))
def test_random_network_prunes_losslessly(kinds, widths, fpn, share, seed):
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    model = RandNet(kinds, widths[:len(kinds) + 1], fpn).eval()
    with torch.no_grad():
        randomize_bn(model, gen)
    x = torch.randn(2, 3, 32, 32, generator=gen)
    graph = trace_channel_graph(model, lambda m: m(x))
    # every conv was put in a group (grouped convs too: balanced), except the output conv
    producers = {n for g in graph.groups for n in list(g.producers) + list(g.carriers)}
    for name, m in model.named_modules():
        if isinstance(m, nn.Conv2d) and name != 'cls':
            assert name in producers, name
    add_gates(model, graph, eps=0.1)
    with torch.no_grad():
        a = torch.rand(model.gdp_gates.a.shape, generator=gen) + 0.1
        a[torch.rand(a.shape, generator=gen) < share] = 0
        model.gdp_gates.a.copy_(a)
        ref = model(x)
        pruned = copy.deepcopy(model)
        extract_pruned(pruned)
        out = pruned(x)
    for r, o in zip(ref, out):
        assert torch.allclose(r, o, rtol=1e-5, atol=1e-5 * float(r.abs().max()))
    # a group with only zero gates: the convs that read only it become ConstantConv
    # (min_channels=0: nothing is kept beyond what the export needs) and the output
    # still does not change
    with torch.no_grad():
        sl = model.gdp_gates.group_slices[seed % len(model.gdp_gates.group_slices)]
        model.gdp_gates.a[sl] = 0
        ref = model(x)
        emptied = copy.deepcopy(model)
        extract_pruned(emptied, min_channels=0)
        out = emptied(x)
    for r, o in zip(ref, out):
        assert torch.allclose(r, o, rtol=1e-5, atol=1e-5 * float(r.abs().max()))
    n_params = sum(p.numel() for p in pruned.parameters())
    if share > 0.3:
        assert n_params < sum(p.numel() for n, p in model.named_parameters()
                              if not n.startswith('gdp_gates'))
