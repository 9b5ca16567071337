"""Latency model of a traced network as a function of which channels are alive.

Measured, not counted: each prunable conv/linear call of the graph is timed as a
standalone op (``F.conv2d`` / ``F.conv_transpose2d`` / ``F.linear`` on random tensors
of its traced shapes, with its stride, padding, dilation and groups) on a small grid
of its active input x output channel counts (depthwise convs: of their channels),
on the model's device with the torch threads at hand. A call's latency at other
counts is the bilinear interpolation of its grid (made monotone; channel counts
rounded up to the device's channel block). Calls of the same geometry share one
table. Two measured tensor-mode forwards, of the unpruned network and of one keeping
half of every group, calibrate what standalone ops miss (see :class:`LatencyModel`).
Tables are cached per model, input size, device, threads and torch version in
``~/.cache/gdp_det/latency/``.
"""
from __future__ import annotations

import copy
import hashlib
import itertools
import json
import math
import os
import os.path as osp
import platform
import statistics
import time
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from .files import atomic_write
from .flops import FlopsModel, alive_per_owner
from .graph import ChannelGraph

CACHE_DIR = osp.join(osp.expanduser('~'), '.cache', 'gdp_det', 'latency')
FORMAT = 6  # bump when the table's meaning changes: old cache files are then ignored
PROBE_SHARE = 0.5  # the uniformly pruned network timed to calibrate the non-layer cost


def device_name(device) -> str:
    """The device a table was measured on, as the cache key names it."""
    device = torch.device(device)
    if device.type == 'cuda':
        return torch.cuda.get_device_name(device)
    return f'{platform.processor() or platform.machine()} ({os.cpu_count()} cores)'


class Clock:
    """The clock latencies are read with on ``device``. CUDA: wall time, synchronised
    before each reading. CPU with one torch thread: the process's CPU time, which is
    the latency on an idle core and leaves out the time other processes hold it (on
    a shared machine a 100 ms forward gets preempted, a 1 ms op rarely does); with
    more threads: wall time."""

    def __init__(self, device):
        self.device = torch.device(device)
        self.cuda = self.device.type == 'cuda'
        self.read = (time.process_time if not self.cuda and torch.get_num_threads() == 1
                     else time.perf_counter)

    def __call__(self) -> float:
        if self.cuda:  # the model's card, not the current one
            torch.cuda.synchronize(self.device)
        return self.read()


def interleaved_medians(setups: Sequence[Callable[[], Callable[[], object]]], device,
                        repeats: int, clock: Optional[Callable[[], float]] = None
                        ) -> List[float]:
    """Median seconds of each timed function over ``repeats`` rounds, read with ``clock``
    (default: :class:`Clock` of ``device``; the deployment runtimes pass
    :func:`gdp_det.runtime_latency.runtime_clock`).

    ``setups[i]()`` prepares its inputs (not timed) and returns the function to time.
    Every round calls each function once in turn, after a warm-up round, so load
    from other processes spreads evenly over them.
    """
    clock = clock or Clock(device)
    times: List[List[float]] = [[] for _ in setups]
    with torch.no_grad():
        for r in range(repeats + 1):
            for setup, ts in zip(setups, times):
                fn = setup()
                t = clock()
                fn()
                if r:
                    ts.append(clock() - t)
    return [statistics.median(ts) for ts in times]


class _LayerTimer:
    """Times, per forward of ``model``, each call of the modules ``names`` (forward
    hooks); :meth:`wrap` turns a forward into a setup that starts a new record."""

    def __init__(self, model: nn.Module, names, device):
        self.clock = Clock(device)
        self.records: List[List[Tuple[str, float]]] = []
        self.handles = []
        for name, m in model.named_modules():
            if name in names:
                self.handles += [m.register_forward_pre_hook(self._pre),
                                 m.register_forward_hook(
                                     lambda mod, args, out, name=name: self._post(name))]

    def _pre(self, module, args):
        self.start = self.clock()

    def _post(self, name: str):
        self.records[-1].append((name, self.clock() - self.start))

    def wrap(self, fn):
        return lambda: (self.records.append([]), fn)[1]

    def medians(self, call_names: Sequence[str]) -> Tuple[float, List[Optional[float]]]:
        """Over the timed forwards (the first one warmed up): the median time inside
        the modules, and per call of ``call_names`` (the k-th call of a name is its k-th
        module call in a forward) its median time (None: no module call of it)."""
        for h in self.handles:
            h.remove()
        per_call: List[List[float]] = [[] for _ in call_names]
        for record in self.records[1:]:
            times: Dict[str, List[float]] = {}
            for name, t in record:
                times.setdefault(name, []).append(t)
            seen: Dict[str, int] = {}
            for i, name in enumerate(call_names):
                k = seen[name] = seen.get(name, -1) + 1
                if k < len(times.get(name, ())):
                    per_call[i].append(times[name][k])
        total = statistics.median(sum(t for _, t in r) for r in self.records[1:])
        return total, [statistics.median(ts) if ts else None for ts in per_call]


def network_times(models: Sequence[nn.Module], forward: Callable[[nn.Module], object],
                  call_names: Sequence[str], device, repeats: int):
    """Median seconds of ``forward(model)`` for each of ``models`` (interleaved,
    hook-free rounds) and, from rounds of their own, each model's
    :meth:`_LayerTimer.medians` of the modules ``call_names``. The whole forwards are
    not the layer-timed ones: on CUDA every timed layer synchronises twice, which
    serialises the forward and adds a fixed cost per call that pruning never
    removes (the predicted latency ratios would drift towards 1)."""
    totals = interleaved_medians([lambda m=m: lambda: forward(m) for m in models], device,
                                 repeats)
    timers = [_LayerTimer(m, set(call_names), device) for m in models]
    interleaved_medians([t.wrap(lambda m=m: forward(m)) for t, m in zip(timers, models)],
                        device, repeats)
    return totals, [t.medians(call_names) for t in timers]


def timed_modules(graph: ChannelGraph) -> List[str]:
    """The modules whose times the calibration forwards record, per call: each conv /
    linear call of ``graph``, then each module that ran a per-channel op (RoI pooling:
    on a CPU the toy Faster R-CNN's RoIAlign takes half its forward, in proportion to
    its channels) and holds no call of its own (a deformable RoI pool's offset layers
    are timed as calls)."""
    calls = [c.name for c in graph.calls]
    return calls + [n for n in graph.passthrough
                    if not any(c.startswith(n + '.') for c in calls)]


def plain_copy(gated: nn.Module, gates: Optional[np.ndarray] = None, min_channels: float = 1,
               channel_divisor: int = 1) -> nn.Module:
    """The plain (gate-free) network that the export of GDP model ``gated`` would be, in
    eval mode on its device; with ``gates``, the export of those gate values instead
    of its own. ``gated`` is untouched."""
    from .pruner import extract_pruned
    device = next(gated.parameters()).device
    model = copy.deepcopy(gated).cpu()
    if gates is not None:
        with torch.no_grad():
            model.gdp_gates.a.copy_(torch.as_tensor(gates, dtype=torch.float32))
    extract_pruned(model, min_channels, channel_divisor)
    return model.to(device).eval()


def uniform_gates(graph: ChannelGraph, share: float) -> np.ndarray:
    """Gates (0/1) keeping the first ``share`` of every group's channels."""
    a = np.zeros(graph.num_channels, np.float32)
    for i, g in enumerate(graph.groups):
        a[graph.offsets[i]:graph.offsets[i] + max(1, int(round(share * g.size)))] = 1
    return a


def forward_latencies(models: Sequence[nn.Module], input_size: Tuple[int, int],
                      num_proposals: int = 256, repeats: int = 10) -> List[float]:
    """Median seconds of the tensor-mode forward (batch 1, ``input_size``) of each
    model, measured interleaved, each timed forward right after an untimed one of the
    same model (as a deployed process runs it); two-stage detectors run their RoI head
    on ``num_proposals`` boxes, as traced."""
    from .detector import detector_forward_fn
    forward = detector_forward_fn(tuple(input_size), num_proposals)
    device = next(models[0].parameters()).device

    def warmed(model):
        # the other models run in between evict this one's kernels from oneDNN's
        # primitive cache (1024 entries): 57 pruned toy RetinaNets of distinct widths
        # timed cold measured up to 1.4x their time alone
        forward(model)
        return lambda: forward(model)
    return interleaved_medians([lambda m=m: warmed(m) for m in models], device, repeats)


def export_latencies(gated: nn.Module, min_channels: float = 1, channel_divisor: int = 1,
                     repeats: int = 10, backend: str = 'torch', cfg=None
                     ) -> Tuple[float, float]:
    """Measured seconds of the unpruned network of GDP model ``gated`` and of the export
    of its gates, interleaved medians: their tensor-mode forwards on ``gated``'s device
    (``backend='torch'``), or their end-to-end deployments in a runtime on the CPU
    (``'onnxruntime'`` / ``'openvino'``, exported from the detector's ``cfg``)."""
    ones = np.ones(gated.gdp_gates.graph.num_channels)
    unpruned, pruned = make_timer(backend, gated, cfg).network_times(
        gated, [ones, None], repeats, min_channels, channel_divisor)
    return unpruned, pruned


class TorchTimer:
    """Times latency-table cells and whole networks with torch's ops on ``device`` and
    the current torch threads, interleaved (:func:`interleaved_medians`); the interface
    of :class:`gdp_det.runtime_latency.RuntimeTimer`, which times them in a deployment
    runtime."""

    def __init__(self, device):
        self.device = torch.device(device)

    def ident(self) -> dict:
        """What the table's cache key adds for this timer (torch's version is always in
        it)."""
        return {}

    def op_times(self, cells: Sequence[Tuple[dict, int, int]], repeats: int) -> List[float]:
        """Median seconds of each cell ``(spec, n_in, n_out)`` (a spec of
        :func:`_call_spec`), all cells interleaved, sliced from one set of random
        tensors per spec."""
        setups, full = [], {}
        for spec, n_in, n_out in cells:
            geo = spec['geometry']
            if id(spec) not in full:
                full[id(spec)] = (torch.randn(geo['input'], device=self.device),
                                  torch.randn(geo['weight'], device=self.device),
                                  torch.randn(_out_channels(geo), device=self.device)
                                  if geo['bias'] else None)
            setups.append(_timed_op(spec, n_in, n_out, full[id(spec)]))
        return interleaved_medians(setups, self.device, repeats)

    def network_times(self, gated: nn.Module, gate_sets: Sequence[Optional[np.ndarray]],
                      repeats: int, min_channels: float = 1, channel_divisor: int = 1,
                      layers: bool = False):
        """Median seconds of the tensor-mode forwards of the exports of ``gated`` with
        each of ``gate_sets`` (None: its own gates), interleaved, each timed right after
        an untimed one (:func:`forward_latencies`). With ``layers``: ``(totals, layer
        seconds, per-call seconds)`` of each, the totals from hook-free rounds and the
        layer times from rounds of their own (:func:`network_times`); the calls are
        those of :func:`timed_modules`, and so are the layer seconds."""
        trace = gated.gdp_gates.trace
        models = [plain_copy(gated, g, min_channels, channel_divisor) for g in gate_sets]
        if not layers:
            return forward_latencies(models, trace.input_size, trace.num_proposals, repeats)
        from .detector import detector_forward_fn
        forward = detector_forward_fn(tuple(trace.input_size), trace.num_proposals)
        totals, timed = network_times(models, forward, timed_modules(gated.gdp_gates.graph),
                                      self.device, repeats)
        return totals, [t[0] for t in timed], [t[1] for t in timed]


def make_timer(backend: str, model: nn.Module, cfg=None):
    """The timer of ``backend``: a :class:`TorchTimer` on ``model``'s device, or a
    :class:`~gdp_det.runtime_latency.RuntimeTimer` of the deployment runtime on the CPU
    (the detector's ``cfg`` deploys its networks), with the current torch threads."""
    if backend == 'torch':
        return TorchTimer(next(model.parameters()).device)
    from .runtime_latency import RuntimeTimer
    return RuntimeTimer(backend, torch.get_num_threads(), cfg)


def channel_block(device, geometry: dict) -> int:
    """Channel count a conv's latency steps with on ``device``: oneDNN runs spatial
    convs in blocks of 16 channels on AVX-512 CPUs (8 on others), so 65 channels cost
    what 80 do; 1x1 convs (GEMM), linear layers and CUDA are taken as smooth."""
    if torch.device(device).type == 'cuda' or geometry['op'] == 'linear':
        return 1
    if int(np.prod(geometry['weight'][2:])) == 1:
        return 1
    return 16 if torch.backends.cpu.get_cpu_capability() == 'AVX512' else 8


def _grid(lo: int, hi: int, points: int, step: int) -> List[int]:
    """Up to ``points`` channel counts from ``lo`` to ``hi``, multiples of ``step``
    (and ``hi``)."""
    vals = np.round(np.linspace(max(lo, step), hi, points) / step) * step
    return sorted({int(v) for v in np.clip(vals, step, hi)} | {hi})


def _call_spec(call, fixed_in: int, fixed_out: int, points: int, device) -> dict:
    """What to time for one call: its geometry and the grid of its channel counts."""
    geo = call.geometry
    if geo is None:
        raise ValueError(f'{call.name}: the graph records no op geometry (traced by an '
                         'older gdp_det); trace the model again')
    cin, cout = len(call.in_atoms), len(call.out_atoms)
    block = channel_block(device, geo)
    step = block if call.depthwise else math.lcm(block, int(geo.get('groups', 1)))
    grid_out = _grid(fixed_out, cout, points, step)
    grid_in = [cin] if call.depthwise else _grid(fixed_in, cin, points, step)
    return dict(geometry=geo, depthwise=bool(call.depthwise), block=block,
                grid_in=grid_in, grid_out=grid_out)


def _out_channels(geo: dict) -> int:
    if geo['op'] == 'conv_transpose2d':  # weight (C_in, C_out / groups, kh, kw)
        return geo['weight'][1] * geo.get('groups', 1)
    return geo['weight'][0]


def _timed_op(spec: dict, n_in: int, n_out: int, full: Tuple[torch.Tensor, ...]):
    """A setup (see :func:`interleaved_medians`) of the op at ``n_in`` x ``n_out``
    channels, sliced from the full-size random tensors ``full``."""
    geo = spec['geometry']
    x_full, w_full, b_full = full
    kwargs = {k: v for k, v in geo.items()
              if k not in ('op', 'input', 'weight', 'bias', 'output')}
    if geo['op'] == 'linear':
        sl = (slice(None), ) * (x_full.dim() - 1) + (slice(n_in), )
        x, w = x_full[sl], w_full[:n_out, :n_in]
        op = F.linear
    elif spec['depthwise']:
        x, w = x_full[:, :n_out], w_full[:n_out]
        kwargs['groups'] = n_out
        op = F.conv2d
    elif geo['op'] == 'conv2d':
        x, w = x_full[:, :n_in], w_full[:n_out, :n_in // kwargs.get('groups', 1)]
        op = F.conv2d
    else:  # conv_transpose2d: weight (C_in, C_out / groups, kh, kw)
        x, w = x_full[:, :n_in], w_full[:n_in, :n_out // kwargs.get('groups', 1)]
        op = F.conv_transpose2d
    b = None if b_full is None else b_full[:n_out]

    def setup():
        # fresh contiguous copies: hot in cache, as a layer's input is in the network
        xc, wc = x.clone(), w.clone()
        bc = None if b is None else b.clone()
        return lambda: op(xc, wc, bc, **kwargs)
    return setup


def measure_table(model: nn.Module, points: int = 5, repeats: int = 7,
                  cache: bool = True, backend: str = 'torch', cfg=None) -> dict:
    """Measure (or load from the cache) the latency table of GDP model ``model`` with
    the current torch threads. See :class:`LatencyModel`. ``backend``: ``'torch'``
    (torch's ops on the model's device) or a deployment runtime on the CPU,
    ``'onnxruntime'`` or ``'openvino'`` (:mod:`gdp_det.runtime_latency`; the detector's
    ``cfg`` exports the calibration networks end to end)."""
    gates = model.gdp_gates
    graph, trace = gates.graph, gates.trace
    timer = make_timer(backend, model, cfg)
    device = timer.device
    plain = plain_copy(model, np.ones(graph.num_channels))
    specs = [_call_spec(c, int((i < 0).sum()), int((o < 0).sum()), points, device)
             for c, i, o in zip(graph.calls, graph.call_in, graph.call_out)]
    keys = [json.dumps(s, sort_keys=True) for s in specs]
    ident = dict(format=FORMAT, model=hashlib.sha1(repr(plain).encode()).hexdigest(),
                 calls=keys, input_size=list(trace.input_size),
                 num_proposals=trace.num_proposals, device=device_name(device),
                 threads=torch.get_num_threads(), torch=torch.__version__, points=points,
                 **timer.ident())
    digest = hashlib.sha1(json.dumps(ident, sort_keys=True).encode()).hexdigest()
    path = osp.join(CACHE_DIR, f'{digest}.json')
    if cache and osp.isfile(path):
        with open(path) as f:
            return json.load(f)
    unique = dict(zip(keys, specs))
    cells = [(key, n_in, n_out) for key, spec in unique.items()
             for n_in, n_out in itertools.product(spec['grid_in'], spec['grid_out'])]
    times = timer.op_times([(unique[k], n_in, n_out) for k, n_in, n_out in cells], repeats)
    entries: Dict[str, dict] = {}
    for (key, _, _), t in zip(cells, times):
        entries.setdefault(key, dict(unique[key], times=[]))['times'].append(t)
    # the whole networks in rounds of their own (as they are timed when deployed), and
    # the time spent inside their layers (a runtime's profile times op types, not calls:
    # no per-call times there)
    totals, inside, timed = timer.network_times(
        model, [np.ones(graph.num_channels), uniform_gates(graph, PROBE_SHARE)], repeats,
        layers=True)
    table = dict(ident, entries={k: {f: e[f] for f in ('grid_in', 'grid_out', 'block', 'times')}
                                 for k, e in entries.items()}, probe_share=PROBE_SHARE)
    passthrough = timed_modules(graph)[len(graph.calls):]
    for key, total, layers, calls in zip(('whole', 'probe'), totals, inside, timed):
        # the RoI layers' times apart from the conv / linear layers' (a runtime, which
        # times op types, has neither: its layer seconds are the conv / linear ops')
        pooled = dict(zip(passthrough, calls[len(graph.calls):]))
        table.update({key: total, f'{key}_calls': calls[:len(graph.calls)],
                      f'{key}_passthrough': pooled,
                      f'{key}_layers': layers - sum(t for t in pooled.values() if t)})
    if cache:
        atomic_write(path, json.dumps(table))
    return table


class LatencyModel(FlopsModel):
    """Predicted latency (seconds, batch 1) of a traced network, from measurements.

    Same contract as :class:`FlopsModel`, so :class:`~gdp_det.flops.Budget` takes it
    unchanged: ``count(alive)`` is the predicted latency of the network in which the
    channels with ``alive[c] == False`` were removed, ``full`` that of the unpruned
    network (equal to its measured forward ``measured`` by construction), and
    ``channel_weights(alive)`` the marginal latency of each channel with the others
    held fixed (the slope of each call's latency, summed over the calls that read or
    write the channel). Build it with :meth:`measure`.

    A call's latency is its op's interpolated table mapped to the network by the
    call's own line (``offset + slope * t``, through its times measured inside the
    two forwards below; ``scale``, the common slope, for calls not timed there) plus
    ``act_cost`` per output element (the norm, activation, residual add or pooling
    that each conv output passes through in the network); each module that ran a
    per-channel op (RoI pooling), timed in both forwards, takes its own line in the
    number of its input channels alive; ``rest`` is the constant remainder (Python,
    the unpruned layers' glue, proposals and NMS). They are fitted so that the
    prediction equals the two measured forwards: the unpruned network and the one
    keeping ``probe_share`` of every group's channels.
    """

    def __init__(self, graph: ChannelGraph, table: dict):
        from .pruner import exported_channels
        entries = [table['entries'][k] for k in table['calls']]
        size = max([2] + [len(e[g]) for e in entries for g in ('grid_in', 'grid_out')])
        pad = lambda g: np.pad(np.asarray(g, np.float64), (0, size - len(g)), mode='edge')
        self.grid_in = np.stack([pad(e['grid_in']) for e in entries])
        self.grid_out = np.stack([pad(e['grid_out']) for e in entries])
        tables = []
        for e in entries:
            t = np.asarray(e['times'], np.float64).reshape(len(e['grid_in']), -1)
            t = np.pad(t, ((0, size - t.shape[0]), (0, size - t.shape[1])), mode='edge')
            # more channels never run faster: each entry is capped by every entry with
            # more channels (a slow outlier, e.g. a preempted run, cannot raise the rest)
            t = np.minimum.accumulate(np.minimum.accumulate(t[::-1, ::-1], 0), 1)[::-1, ::-1]
            tables.append(t)
        self.tables = np.stack(tables)
        self.block = np.array([e['block'] for e in entries], np.float64)
        # output elements per output channel of each call
        self.spatial = np.array([np.prod(c.geometry['output']) / _out_channels(c.geometry)
                                 for c in graph.calls], np.float64)
        self.measured = float(table['whole'])
        self.device = (table['device'] if 'backend' not in table
                       else f"{table['backend']} on {table['device']}")
        self.scale, self.act_cost, self.rest = 1.0, 0.0, 0.0
        self.slope, self.offset = np.ones(len(entries)), np.zeros(len(entries))
        self.pass_idx = self.pass_mod = np.zeros(0, np.int64)  # no RoI pooling line yet
        self.pass_slope = self.pass_offset = np.zeros(0)
        self.num_pass = 0
        super().__init__(graph)
        ones = np.ones(self.num_channels, bool)
        probe = exported_channels(graph, uniform_gates(graph, table['probe_share']))
        pooled = self._fit_passthrough(graph, table, probe)
        # in the network, the layers take scale x their standalone time plus a constant
        # (module call overhead); the rest takes act_cost per output element plus a constant
        standalone, other, volume = [], [], []  # per call at both widths; the rest
        for alive, key in ((ones, 'whole'), (probe, 'probe')):
            standalone.append(self._interpolate(alive)[0])
            other.append(table[key] - table[f'{key}_layers'] - pooled[key])
            volume.append(float((self._active(alive)[1] * self.spatial).sum()))
        layers = [float(t.sum()) for t in standalone]
        if layers[0] > layers[1]:
            self.scale = max((table['whole_layers'] - table['probe_layers'])
                             / (layers[0] - layers[1]), 0.0)
        if volume[0] > volume[1]:
            self.act_cost = max((other[0] - other[1]) / (volume[0] - volume[1]), 0.0)
        self._fit_calls(table, *standalone)
        self.rest = (table['whole'] - float(self._layer_times(ones).sum())
                     - self.act_cost * volume[0] - pooled['whole'])
        self.full = self.count(ones)

    def _fit_passthrough(self, graph: ChannelGraph, table: dict, probe: np.ndarray) -> dict:
        """The line of each RoI pooling module timed in both forwards (seconds per input
        channel alive, its offset); returns their summed time in each forward."""
        timed = {key: table.get(f'{key}_passthrough') or {} for key in ('whole', 'probe')}
        names = [n for n, t in timed['whole'].items()
                 if t is not None and timed['probe'].get(n) is not None]
        idx = [np.where(graph.passthrough[n] < 0, self.num_channels, graph.passthrough[n])
               for n in names]
        self.pass_idx = np.concatenate(idx).astype(np.int64) if idx else np.zeros(0, np.int64)
        self.pass_mod = np.repeat(np.arange(len(names)), [len(i) for i in idx])
        self.num_pass = len(names)
        n_full = self._pass_channels(np.ones(self.num_channels, bool))
        n_probe = self._pass_channels(probe)
        t_full, t_probe = (np.array([timed[k][n] for n in names], np.float64)
                           for k in ('whole', 'probe'))
        span = n_full - n_probe
        self.pass_slope = np.where(span > 0, np.maximum(t_full - t_probe, 0.0)
                                   / np.where(span > 0, span, 1.0), 0.0)
        self.pass_offset = t_full - self.pass_slope * n_full
        # what each channel adds through the modules that pool it (constant: the lines
        # are linear in their channels)
        self.pass_weights = np.bincount(self.pass_idx, self.pass_slope[self.pass_mod],
                                        minlength=self.num_channels + 1)[:-1]
        return dict(whole=float(t_full.sum()), probe=float(t_probe.sum()))

    def _pass_channels(self, alive) -> np.ndarray:
        return alive_per_owner(alive, self.pass_idx, self.pass_mod, self.num_pass)

    def _fit_calls(self, table: dict, full: np.ndarray, probe: np.ndarray):
        """Each call's own line from its standalone time to its time in the network,
        through its two measured points (the unpruned and the probe widths), with its
        slope within 0.25-4x the common ``scale``. One scale for all layers missed
        per-layer overheads: GDP's non-uniform exports of the toy RetinaNet measured
        0.55 of the latency where it predicted 0.50."""
        net_full, net_probe = (np.array([np.nan if t is None else t for t in table[k]])
                               for k in ('whole_calls', 'probe_calls'))
        span = full - probe
        ok = np.isfinite(net_full) & np.isfinite(net_probe) & (span > 0.05 * full)
        slope = (net_full - net_probe) / np.where(ok, span, 1.0)
        self.slope = np.where(ok, np.clip(slope, 0.25 * self.scale, 4 * self.scale),
                              self.scale)
        self.offset = np.where(ok, net_full - self.slope * full, 0.0)

    def _layer_times(self, alive) -> np.ndarray:
        return self.offset + self.slope * self._interpolate(alive)[0]

    @classmethod
    def measure(cls, model: nn.Module, points: int = 5, repeats: int = 7,
                cache: bool = True, backend: str = 'torch', cfg=None) -> 'LatencyModel':
        """Measure (or load) the table of GDP model ``model`` in ``backend`` (see
        :func:`measure_table`) with the current ``torch.get_num_threads()`` (set it to the
        deployment setting first): ``points`` channel counts per axis, medians of
        ``repeats`` interleaved rounds."""
        return cls(model.gdp_gates.graph,
                   measure_table(model, points, repeats, cache, backend, cfg))

    @staticmethod
    def _cells(grid: np.ndarray, x: np.ndarray):
        """Per call: the grid cell holding ``x`` (the one below it on a grid point),
        the position in it (0..1) and its width."""
        x = np.clip(x, grid[:, 0], grid[:, -1])
        i = (grid[:, 1:-1] < x[:, None]).sum(1)
        rows = np.arange(len(x))
        lo, width = grid[rows, i], grid[rows, i + 1] - grid[rows, i]
        u = np.where(width > 0, (x - lo) / np.where(width > 0, width, 1), 0.0)
        return i, u, np.where(width > 0, width, np.inf)

    def _interpolate(self, alive):
        n_in, n_out = (np.ceil(n / self.block) * self.block for n in self._active(alive))
        i, u, w_in = self._cells(self.grid_in, n_in)
        k, v, w_out = self._cells(self.grid_out, n_out)
        rows = np.arange(len(i))
        t00, t10 = self.tables[rows, i, k], self.tables[rows, i + 1, k]
        t01, t11 = self.tables[rows, i, k + 1], self.tables[rows, i + 1, k + 1]
        t = (1 - u) * (1 - v) * t00 + u * (1 - v) * t10 + (1 - u) * v * t01 + u * v * t11
        d_in = ((1 - v) * (t10 - t00) + v * (t11 - t01)) / w_in
        d_out = ((1 - u) * (t01 - t00) + u * (t11 - t10)) / w_out
        return t, d_in, d_out

    def count(self, alive) -> float:
        pooled = self.pass_offset + self.pass_slope * self._pass_channels(alive)
        return float(self.per_call(alive).sum() + pooled.sum()) + self.rest

    def channel_weights(self, alive) -> np.ndarray:
        return super().channel_weights(alive) + self.pass_weights

    def per_call(self, alive=None) -> np.ndarray:
        alive = np.ones(self.num_channels, dtype=bool) if alive is None else alive
        n_out = self._active(alive)[1]
        return self._layer_times(alive) + self.act_cost * self.spatial * n_out

    def call_slopes(self, alive) -> Tuple[np.ndarray, np.ndarray]:
        _, d_in, d_out = self._interpolate(alive)
        return self.slope * d_in, self.slope * d_out + self.act_cost * self.spatial
