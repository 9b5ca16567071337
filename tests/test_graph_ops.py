"""The tracer's op table: dispatch by identity, attribute reads, compiled ops."""
import copy

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.overrides import handle_torch_function, has_torch_function_unary

from gdp_det.gates import add_gates
from gdp_det.graph import OPS, handler_of, trace_channel_graph
from gdp_det.graph.ops import unsupported
from gdp_det.pruner import extract_pruned


def fn(x):
    """A torch-function-aware op the table does not know, named like the wrapper
    that ``F.max_pool2d`` is (``boolean_dispatch.<locals>.fn``)."""
    if has_torch_function_unary(x):
        return handle_torch_function(fn, (x, ), x)
    return F.max_pool2d(x, 2)


class HiddenFunction(torch.autograd.Function):
    """Stands for a compiled op: its forward computes where no mode can see it."""

    @staticmethod
    def forward(ctx, x, offset):
        with torch._C.DisableTorchFunction():
            return x * offset.mean()

    @staticmethod
    def backward(ctx, grad):  # pragma: no cover - tracing runs no backward
        return grad, None


class VisibleFunction(torch.autograd.Function):
    """A custom Function written in torch ops: the mode follows it."""

    @staticmethod
    def forward(ctx, x):
        return x * 2

    @staticmethod
    def backward(ctx, grad):  # pragma: no cover
        return grad * 2


hidden = HiddenFunction.apply  # bound at import, as mmcv binds deform_conv2d


class Mix(nn.Module):
    """Non-leaf module (like mmcv's DeformConv2dPack): an offset conv child, then a
    custom Function on its input."""

    def __init__(self, c):
        super().__init__()
        self.conv_offset = nn.Conv2d(c, 2, 3, padding=1)

    def forward(self, x):
        return hidden(x, self.conv_offset(x))


class Op(nn.Module):
    """The op under test, in a module of its own (errors name ``op``)."""

    def __init__(self, kind):
        super().__init__()
        self.kind = kind
        self.mix = Mix(8) if kind == 'hidden' else None

    def forward(self, x):
        if self.kind == 'fn':
            return fn(x)
        if self.kind == 'pool':
            return F.max_pool2d(x, 2)
        if self.kind == 'data':
            return x.data
        if self.kind == 'visible':
            return VisibleFunction.apply(x)
        if self.kind == 'hidden':
            return self.mix(x)
        if self.kind == 'expand':  # (N, C, 1, 1) -> (N, C, H, W), as mmdet's ASPP
            return x.mean((2, 3), keepdim=True).expand_as(x)
        if self.kind == 'T':  # (N, C) -> (C, N) -> (N, C)
            return x.mean((2, 3)).T.T
        return x.flatten(2).mT  # (N, C, H*W) -> (N, H*W, C)


class Net(nn.Module):
    """``c1 -> op -> c2 -> head``, or ``c1 -> c2 -> op -> head`` for the ops that
    move the channel dim (``.T``, ``.mT``: the head is then a Linear)."""

    def __init__(self, kind):
        super().__init__()
        self.late = kind in ('T', 'mT')
        self.c1 = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU())
        self.op = Op(kind)
        self.c2 = nn.Conv2d(8, 8, 3, padding=1)
        self.head = nn.Linear(8, 3) if self.late else nn.Conv2d(8, 3, 1)

    def forward(self, x):
        x = self.c1(x)
        if self.late:
            return self.head(self.op(F.relu(self.c2(x))))
        return self.head(F.relu(self.c2(self.op(x))))


def pruned_twin(model, x, share=0.5, seed=0):
    """Trace, gate, zero a random ``share`` of the gates and prune a copy.
    Returns the graph and both models' outputs on ``x``."""
    graph = trace_channel_graph(model, lambda m: m(x))
    add_gates(model, graph, eps=0.1)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        a = torch.rand(model.gdp_gates.a.shape, generator=gen) + 0.1
        a[torch.rand(a.shape, generator=gen) < share] = 0
        model.gdp_gates.a.copy_(a)
        pruned = copy.deepcopy(model)
        extract_pruned(pruned)
        return graph, model(x), pruned(x), pruned


def producers(graph):
    return {n for g in graph.groups for n in g.producers}


def consumers(graph):
    return {n for g in graph.groups for n in g.consumers}


def test_table_holds_torch_objects_and_their_inplace_forms():
    for obj in (torch.Tensor.add_, torch.Tensor.__iadd__, torch.Tensor.add, torch.add,
                F.relu, torch.relu, torch.Tensor.relu, torch.Tensor.relu_, F.max_pool2d,
                F.conv2d, F.batch_norm, torch.cat, torch.Tensor.T, torch.Tensor.data):
        assert obj in OPS, obj
    assert handler_of(torch.Tensor.add_) is handler_of(torch.Tensor.__iadd__)
    # attribute reads arrive as a new __get__ wrapper each time: keyed by descriptor
    assert handler_of(torch.Tensor.T.__get__) is OPS[torch.Tensor.T]
    assert handler_of(fn) is unsupported and fn not in OPS


def test_unknown_function_named_fn_is_not_channel_preserving():
    x = torch.randn(2, 3, 16, 16)
    graph = trace_channel_graph(Net('fn'), lambda m: m(x))
    assert graph.unsupported == {'op': 'fn'}
    assert 'c1.0' not in producers(graph)  # its channels flow into fn: kept
    assert 'c2' not in consumers(graph)
    # the real F.max_pool2d wrapper keeps the channels
    graph = trace_channel_graph(Net('pool'), lambda m: m(x))
    assert not graph.unsupported
    assert 'c1.0' in producers(graph) and 'c2' in consumers(graph)


@pytest.mark.parametrize('kind', ['data', 'T', 'mT', 'visible', 'expand'])
def test_attributes_expand_and_visible_functions_keep_tracking(kind):
    x = torch.randn(2, 3, 16, 16)
    model = Net(kind)
    graph, ref, out, pruned = pruned_twin(model, x)
    assert not graph.unsupported
    # the op's input channels are still one group with the layer that reads its output
    writer, reader = ('c2', 'head') if model.late else ('c1.0', 'c2')
    group = next(g for g in graph.groups if writer in g.producers)
    assert len(group.consumers[reader]) == 8
    assert dict(pruned.named_modules())[writer].out_channels < 8  # pruned through the op
    assert torch.allclose(ref, out, rtol=1e-5, atol=1e-5 * float(ref.abs().max()))


def test_attribute_outside_the_table_fixes_its_channels(monkeypatch):
    monkeypatch.delitem(OPS, torch.Tensor.mT)
    graph = trace_channel_graph(Net('mT'), lambda m: m(torch.randn(2, 3, 8, 8)))
    assert graph.unsupported == {'op': '.mT'}
    assert 'c2' not in producers(graph) and 'head' not in consumers(graph)


def test_compiled_function_in_a_non_leaf_module_is_named_and_kept():
    forward = HiddenFunction.__dict__['forward']
    x = torch.randn(2, 3, 16, 16)
    graph, ref, out, _ = pruned_twin(Net('hidden'), x)
    assert graph.unsupported == {'op.mix': 'HiddenFunction (compiled op)'}
    # what it reads stays: c1's outputs and the offset conv; after it, c2 is prunable
    assert 'c1.0' not in producers(graph) and 'op.mix.conv_offset' not in producers(graph)
    assert 'c2' in producers(graph) and 'c2' not in consumers(graph)
    assert torch.allclose(ref, out, rtol=1e-5, atol=1e-5 * float(ref.abs().max()))
    assert HiddenFunction.__dict__['forward'] is forward  # the watch is undone


def test_conv_that_calls_f_conv2d_itself_is_recorded_as_that_module():
    """mmcv's Conv2dAdaptivePadding pads, then calls F.conv2d from its own forward."""
    from mmcv.cnn.bricks import Conv2dAdaptivePadding
    net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(),
                        Conv2dAdaptivePadding(8, 8, 3, stride=2), nn.ReLU(), nn.Conv2d(8, 3, 1))
    graph = trace_channel_graph(net, lambda m: m(torch.randn(1, 3, 15, 15)))
    assert [c.name for c in graph.calls] == ['0', '2', '4']
    assert set(graph.group_by_name('0').consumers) == {'2'}
    assert set(graph.group_by_name('2').consumers) == {'4'}


class Halves(nn.Module):
    """conv -> two halves (``chunk(2)`` or Res2Net's ``split(self.width)``) -> a conv
    on each -> cat -> conv."""

    def __init__(self, how):
        super().__init__()
        self.how, self.width = how, 8
        self.c1 = nn.Conv2d(3, 16, 3, padding=1)
        self.a, self.b = nn.Conv2d(8, 4, 1), nn.Conv2d(8, 4, 1)
        self.head = nn.Conv2d(8, 3, 1)

    def forward(self, x):
        x = F.relu(self.c1(x))
        p, q = x.chunk(2, 1) if self.how == 'chunk' else torch.split(x, self.width, 1)
        return self.head(F.relu(torch.cat([self.a(p), self.b(q)], 1)))


@pytest.mark.parametrize('how', ['chunk', 'split'])
def test_channel_chunks_are_pruned_alike_and_stated_splits_kept(how):
    x = torch.randn(2, 3, 8, 8)
    graph, ref, out, pruned = pruned_twin(Halves(how), x, share=0.6)
    assert torch.allclose(ref, out, rtol=1e-5, atol=1e-5 * float(ref.abs().max()))
    if how == 'chunk':  # channel j of both halves is one gate: the halves stay equal
        assert graph.group_by_name('c1').size == 8
        assert pruned.c1.out_channels == 2 * pruned.a.in_channels < 16
    else:  # the pruned net would still split at 8
        assert 'c1' not in producers(graph) and pruned.c1.out_channels == 16
