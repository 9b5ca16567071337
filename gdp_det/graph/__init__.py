"""Channel dependency graph: which channels of which modules are coupled.

The graph is discovered from one traced forward pass, never hard-coded per
architecture. Every output channel of a conv/linear layer is an *atom*
(:mod:`.atoms`). The tracer (:mod:`.tracer`, a
:class:`torch.overrides.TorchFunctionMode`) follows each tensor's channel
dimension through the forward, and the op table (:mod:`.ops`) says for each
torch op how: elementwise adds (residuals, FPN top-down) union the atoms of their
inputs, depthwise convs carry their input channels, a module called several
times (a head shared across FPN levels) reads channel ``j`` of every level, the
channels of one GroupNorm group are pruned whole, channel ``j`` of every group of a
grouped conv is pruned balanced, and so on. Concatenations and channel slices keep
per-position atom lists, so they need no special grouping. :mod:`.groups` turns
the unions into :class:`ChannelGroup` s (one gate vector each).

Anything the tracer does not understand is treated conservatively: the channels
that flow into it are marked *fixed* (never pruned) and the op is named in
:attr:`ChannelGraph.unsupported`. That holds for ops missing from the table and
for compiled code anywhere in the model (custom ``autograd.Function`` s such as
mmcv's deformable conv), and for a module whose forward calls an op without a CPU
kernel where the trace runs on the CPU (:mod:`.opaque`). So are the channels the
traced function returns (class logits, box deltas, ...) and the input image's
channels. This makes every pruning decision taken from the graph lossless by
construction; the exporter's ``--verify`` re-checks it numerically.

The graph only knows coupling. Gates (:mod:`gdp_det.gates`), the FLOPs model
(:mod:`gdp_det.flops`) and the pruner (:mod:`gdp_det.pruner`) consume it.
"""
from .atoms import (FIXED, ChannelGraph, ChannelGroup, LayerCall, Layout, UnionFind,
                    flat_tensors, is_under)
from .groups import trace_channel_graph
from .opaque import OPAQUE, lacks_cpu_kernel
from .ops import OPS, handler_of, register_op
from .tracer import ChannelTracer, watch_autograd_functions

__all__ = [
    'FIXED', 'OPAQUE', 'ChannelGraph', 'ChannelGroup', 'ChannelTracer', 'LayerCall', 'Layout',
    'OPS', 'UnionFind', 'flat_tensors', 'handler_of', 'is_under', 'lacks_cpu_kernel',
    'register_op', 'trace_channel_graph', 'watch_autograd_functions'
]
