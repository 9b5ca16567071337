"""The latency model (gdp_det.latency) and GDPHook's latency budget.

No assertion here depends on the machine's clock, whose readings depend on the
processor and its load: tables are synthetic, or measured on :class:`WorkClock`, whose
time is the conv and linear work done. The prediction's accuracy on real devices is a benchmark
(tools/benchmark_latency.py, benchmarks/RESULTS.md section (l)).
"""
import copy
import json

import numpy as np
import pytest
import torch
import torch.nn as nn

from fake_clocks import WorkClock
from gdp_det import latency as latency_mod
from gdp_det.flops import Budget
from gdp_det.graph import trace_channel_graph
from gdp_det.hooks import GDPHook
from gdp_det.latency import (LatencyModel, _call_spec, forward_latencies, plain_copy,
                             uniform_gates)
from gdp_det.pruner import exported_channels
from gdp_det.testing import drive_hook



@pytest.fixture
def one_thread():
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


@pytest.fixture
def smooth_ops(monkeypatch):
    """Op latencies without channel blocks (the synthetic tables are exactly bilinear)."""
    monkeypatch.setattr(latency_mod, 'channel_block', lambda device, geometry: 1)


def synthetic_table(graph, scale=2.0, act=1e-9, rest=1e-3, call_scales=None, pool=0.0):
    """A table whose op times are exactly bilinear (1 us per in x out channel pair),
    the network's layers ``scale`` x that (call i: ``call_scales[i]`` x, when given),
    ``act`` s per output element, ``pool`` s per input channel alive of each RoI
    pooling module, ``rest`` s."""
    specs = [_call_spec(c, int((i < 0).sum()), int((o < 0).sum()), 4, 'cpu')
             for c, i, o in zip(graph.calls, graph.call_in, graph.call_out)]
    keys = [json.dumps(s, sort_keys=True) for s in specs]
    entries = {k: dict(s, times=[1e-6 * (1 if s['depthwise'] else a) * b
                                 for a in s['grid_in'] for b in s['grid_out']])
               for k, s in zip(keys, specs)}
    table = dict(calls=keys, entries=entries, device='test', probe_share=0.5)
    scales = np.full(len(graph.calls), scale) if call_scales is None else call_scales
    for key, alive in (('whole', np.ones(graph.num_channels, bool)),
                       ('probe', exported_channels(graph, uniform_gates(graph, 0.5)))):
        calls, volume = exact_calls(graph, alive)
        table[f'{key}_calls'] = list(scales * calls)
        table[f'{key}_layers'] = float((scales * calls).sum())
        table[f'{key}_passthrough'] = pooled = pooling_times(graph, alive, pool)
        table[key] = table[f'{key}_layers'] + act * volume + sum(pooled.values()) + rest
    return table


def pooling_times(graph, alive, pool):
    """Per RoI pooling module: ``pool`` s per input channel alive."""
    ext = np.append(alive, True)
    return {n: pool * float(ext[i].sum()) for n, i in graph.passthrough.items()}


def exact_calls(graph, alive):
    """Per call, in x out channels (us); the sum of output elements."""
    ext = np.append(alive, True)
    calls, volume = [], 0.0
    for c, i, o in zip(graph.calls, graph.call_in, graph.call_out):
        n_in, n_out = ext[i].sum(), ext[o].sum()
        calls.append(1e-6 * (n_out if c.depthwise else n_in * n_out))
        volume += n_out * np.prod(c.geometry['output']) / len(o)
    return np.array(calls), volume


def exact(graph, alive):
    """Sum over calls of in x out channels (us) and of output elements."""
    calls, volume = exact_calls(graph, alive)
    return calls.sum(), volume


def test_interpolation_fit_and_marginal_costs(smooth_ops):
    """On exactly bilinear op times the model reproduces the network's latency at
    any widths, recovers the fitted constants, and each channel's weight is the
    latency its removal saves."""
    net = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
                        nn.Conv2d(16, 24, 3, stride=2), nn.ReLU(),
                        nn.Conv2d(24, 24, 3, groups=24), nn.Conv2d(24, 8, 1))
    graph = trace_channel_graph(net, lambda m: m(torch.randn(1, 3, 20, 20)))
    model = LatencyModel(graph, synthetic_table(graph))
    assert model.scale == pytest.approx(2.0)
    assert model.act_cost == pytest.approx(1e-9)
    assert model.rest == pytest.approx(1e-3)
    rng = np.random.default_rng(0)
    for _ in range(3):
        alive = rng.random(graph.num_channels) < 0.6
        layers, volume = exact(graph, alive)
        assert model.count(alive) == pytest.approx(2 * layers + 1e-9 * volume + 1e-3)
        w = model.channel_weights(alive)
        for c in np.flatnonzero(alive)[:10]:
            fewer = alive.copy()
            fewer[c] = False
            assert w[c] == pytest.approx(model.count(alive) - model.count(fewer))
    assert model.full == pytest.approx(synthetic_table(graph)['whole'])


def test_each_call_keeps_its_own_line_to_the_network(smooth_ops):
    """Layers that run slower in the network than their standalone op by different
    factors (their overheads): the model follows each call's own factor, where one
    common scale mispredicts widths other than the two measured ones."""
    net = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(),
                        nn.Conv2d(16, 24, 3, stride=2), nn.ReLU(), nn.Conv2d(24, 8, 1))
    graph = trace_channel_graph(net, lambda m: m(torch.randn(1, 3, 20, 20)))
    call_scales = np.array([1.0, 3.0, 1.5])
    table = synthetic_table(graph, call_scales=call_scales)
    model = LatencyModel(graph, table)
    assert model.slope == pytest.approx(call_scales)
    alive = np.ones(graph.num_channels, bool)
    alive[:12] = False  # most of the first group: the 3x call loses inputs, not the 1x
    calls, volume = exact_calls(graph, alive)
    truth = (call_scales * calls).sum() + 1e-9 * volume + 1e-3
    assert model.count(alive) == pytest.approx(truth)
    untimed = [None] * len(graph.calls)  # no call timed in the network: one scale
    common = LatencyModel(graph, dict(table, whole_calls=untimed, probe_calls=untimed))
    assert abs(common.count(alive) - truth) > 0.02 * truth  # one scale is off here
    assert model.full == pytest.approx(table['whole'])


class _RoINet(nn.Module):
    """A wide high-resolution conv, a narrow strided one whose output an RoIAlign
    pools (the RoI extractor of a two-stage detector) and a linear head."""

    def __init__(self):
        super().__init__()
        from mmcv.ops import RoIAlign
        self.wide = nn.Conv2d(3, 16, 3, padding=1)
        self.narrow = nn.Conv2d(16, 12, 3, stride=4, padding=1)
        self.roi = RoIAlign((2, 2), spatial_scale=0.25, sampling_ratio=2)
        self.fc = nn.Linear(12 * 4, 5)
        self.register_buffer('rois', torch.tensor([[0., 0, 0, 16, 16], [0, 8, 8, 30, 30]]))

    def forward(self, x):
        pooled = self.roi(self.narrow(self.wide(x).relu()).relu(), self.rois)
        return self.fc(pooled.flatten(1))


def test_roi_pooling_takes_its_own_line_in_its_channels(smooth_ops):
    """An RoI pooling module (on a CPU half the toy Faster R-CNN's forward) costs in
    proportion to the channels it pools, however few output elements their conv has:
    the model predicts it at any widths and weighs those channels by it, where
    spreading its time over every output element (no pooling times in the table)
    mispredicts once the two groups are cut differently."""
    graph = trace_channel_graph(_RoINet(), lambda m: m(torch.randn(1, 3, 32, 32)))
    assert list(graph.passthrough) == ['roi']
    table = synthetic_table(graph, pool=1e-3)
    model = LatencyModel(graph, table)
    wide, narrow = (np.arange(graph.offsets[i], graph.offsets[i + 1]) for i in range(2))
    assert [graph.groups[i].size for i in range(2)] == [16, 12]
    alive = np.ones(graph.num_channels, bool)
    alive[wide[:2]] = False  # the wide conv nearly whole, the pooled one a third
    alive[narrow[:8]] = False
    layers, volume = exact(graph, alive)
    truth = 2 * layers + 1e-9 * volume + 1e-3 * 4 + 1e-3
    assert model.count(alive) == pytest.approx(truth)
    w = model.channel_weights(alive)
    for c in (wide[5], narrow[10]):
        fewer = alive.copy()
        fewer[c] = False
        assert w[c] == pytest.approx(model.count(alive) - model.count(fewer))
    assert w[narrow[10]] > 1e-3  # its pooling is in its weight
    spread = LatencyModel(graph, {k: v for k, v in table.items() if 'passthrough' not in k})
    assert spread.full == pytest.approx(model.full)
    assert abs(spread.count(alive) - truth) > 0.1 * truth


def test_budget_takes_the_latency_model(smooth_ops):
    net = nn.Sequential(nn.Conv2d(3, 16, 3), nn.ReLU(), nn.Conv2d(16, 8, 3))
    graph = trace_channel_graph(net, lambda m: m(torch.randn(1, 3, 12, 12)))
    model = LatencyModel(graph, synthetic_table(graph, rest=0.0))
    budget = Budget([(model, 0.6)])
    alive = np.ones(graph.num_channels, bool)
    assert not budget.met(alive)
    assert budget.weights(alive) == pytest.approx(model.channel_weights(alive) / model.full)
    alive[:12] = False
    assert budget.met(alive) and budget.ratios(alive)[0] < 0.6


def test_table_is_cached_per_setting(gated_toy_retinanet, tmp_path, monkeypatch,
                                     one_thread):
    """The second measurement of the same model and setting reads the cache file; other
    torch threads are another setting."""
    model, _ = gated_toy_retinanet
    monkeypatch.setattr(latency_mod, 'CACHE_DIR', str(tmp_path))
    first = LatencyModel.measure(model, repeats=1, points=2)
    assert len(list(tmp_path.glob('*.json'))) == 1

    def no_timing(*args, **kwargs):
        raise AssertionError('measured again')
    monkeypatch.setattr(latency_mod, 'interleaved_medians', no_timing)
    again = LatencyModel.measure(model, repeats=1, points=2)
    assert again.full == first.full
    torch.set_num_threads(2)
    with pytest.raises(AssertionError, match='measured again'):
        LatencyModel.measure(model, repeats=1, points=2)


@pytest.fixture
def work_clock(monkeypatch, smooth_ops):
    """Latencies read on a :class:`WorkClock` (open it around what is timed), with no
    channel blocks."""
    clock = WorkClock(per_call=2e-5)
    monkeypatch.setattr(latency_mod.Clock, '__call__', lambda self: clock.now)
    return clock


def test_prediction_matches_measured_forward(gated_toy_retinanet, work_clock):
    """Toy RetinaNet at 224, measured on a clock of known cost (:class:`WorkClock`, with
    no channel blocks): the table, its calibration and the prediction for exports with
    random gates give their measured forward (to float rounding: on this clock each
    op's time is bilinear in its channels, as the table interpolates). How close the
    prediction comes on a real CPU depends on the machine and its load: that is a
    benchmark (tools/benchmark_latency.py, RESULTS section (l)), not a test."""
    model, _ = gated_toy_retinanet
    graph = model.gdp_gates.graph
    rng = np.random.default_rng(1)
    gates = [np.ones(graph.num_channels)] + [
        (rng.random(graph.num_channels) < p).astype(np.float32) for p in (0.5, 0.3)]
    with work_clock:
        latency = LatencyModel.measure(model, repeats=1, points=3, cache=False)
        measured = np.array(forward_latencies([plain_copy(model, a) for a in gates],
                                              (224, 224), repeats=1))
    predicted = np.array([latency.count(exported_channels(graph, a)) for a in gates])
    assert np.all(np.abs(predicted / measured - 1) <= 1e-6), (predicted, measured)
    assert measured[2] < 0.5 * measured[0]  # the exports are far apart


def test_hook_latency_budget_is_met_and_reported(gated_toy_retinanet, tmp_path, monkeypatch,
                                                 work_clock):
    """GDPHook(latency_target=0.5) alone, driven with random gate gradients: the
    predicted latency ratio of the export reaches the target, and the export's report
    gives the predicted and the measured latency ratio (equal on the work clock)."""
    model, cfg = gated_toy_retinanet
    model = copy.deepcopy(model)  # the hook changes its gates
    monkeypatch.setattr(latency_mod, 'CACHE_DIR', str(tmp_path / 'cache'))
    hook = GDPHook(latency_target=0.5, gdp_iters=60, lambda_init=1.0, log_interval=1000)
    assert hook.flops_target is None
    gen = torch.Generator().manual_seed(0)
    with work_clock:
        runner = drive_hook(model, hook, 60, lambda it: 1e-3 * torch.randn(
            model.gdp_gates.a.shape, generator=gen), cfg=cfg, work_dir=str(tmp_path))
    assert hook.targets == ['latency_target']
    kept = hook.exported(model.gdp_gates.a.detach().numpy())
    predicted = hook.latency.count(kept) / hook.latency.full
    assert predicted <= 0.5 + 0.01
    assert hook.latency_ratio == pytest.approx(predicted)
    with work_clock:
        hook.after_train(runner)
    report = json.loads((tmp_path / 'pruned' / 'prune_report.json').read_text())
    assert report['latency_target'] == 0.5
    assert report['latency_predicted_ratio'] == pytest.approx(predicted)
    assert report['latency_measured_ratio'] == pytest.approx(predicted, abs=1e-6)


def test_forward_latencies_time_each_model_right_after_its_own_warm_forward(monkeypatch):
    """Interleaving many models evicts each one's oneDNN primitives between its rounds;
    every timed forward must follow an untimed forward of the same model."""
    import gdp_det.detector as detector_mod
    calls = []

    def fake_forward_fn(input_size, num_proposals):
        return lambda model: calls.append(model.tag)
    monkeypatch.setattr(detector_mod, 'detector_forward_fn', fake_forward_fn)
    models = [nn.Conv2d(1, 1, 1) for _ in range(3)]
    for i, m in enumerate(models):
        m.tag = i
    assert len(forward_latencies(models, (8, 8), repeats=2)) == 3
    assert calls == [0, 0, 1, 1, 2, 2] * 3  # a warm-up round, then 2 timed rounds


def test_hook_latency_backend_reaches_the_table_and_the_report(gated_toy_retinanet, tmp_path,
                                                                monkeypatch, smooth_ops):
    """GDPHook(latency_backend='onnxruntime') measures its table in that runtime (with
    the runner's config, which the runtime deploys from) and reports the measured ratio
    from the same runtime; an unknown backend is refused by name."""
    import gdp_det.hooks as hooks_mod
    model, cfg = gated_toy_retinanet
    model = copy.deepcopy(model)
    graph = model.gdp_gates.graph
    calls = []

    def fake_table(m, backend='torch', cfg=None):
        calls.append(('table', backend, cfg))
        return synthetic_table(graph)

    def fake_latencies(m, min_channels, channel_divisor, repeats, backend, cfg):
        calls.append(('measured', backend, cfg))
        return 0.1, 0.05
    monkeypatch.setattr(hooks_mod, 'measure_table', fake_table)
    monkeypatch.setattr(hooks_mod, 'export_latencies', fake_latencies)
    with pytest.raises(ValueError, match="latency_backend must be one of torch, onnxruntime, "
                                         "openvino, got 'tensorrt'"):
        GDPHook(latency_target=0.5, latency_backend='tensorrt')
    hook = GDPHook(latency_target=0.5, latency_backend='onnxruntime', gdp_iters=40,
                   lambda_init=1.0, log_interval=1000)
    gen = torch.Generator().manual_seed(0)
    runner = drive_hook(model, hook, 40, lambda it: 1e-3 * torch.randn(
        model.gdp_gates.a.shape, generator=gen), cfg=cfg, work_dir=str(tmp_path))
    hook.after_train(runner)
    assert calls == [('table', 'onnxruntime', cfg), ('measured', 'onnxruntime', cfg)]
    report = json.loads((tmp_path / 'pruned' / 'prune_report.json').read_text())
    assert report['latency_backend'] == 'onnxruntime'
    assert report['latency_measured_ratio'] == pytest.approx(0.5)
    assert report['latency_predicted_ratio'] <= 0.5 + 0.01


def test_auto_channel_divisor_follows_the_latency_backend():
    """channel_divisor='auto' is the divisor measured to pay in the runtime (8 for ONNX
    Runtime, 1 elsewhere); a divisor that is no positive integer is refused by name."""
    assert GDPHook(latency_target=0.5, latency_backend='onnxruntime',
                   channel_divisor='auto').channel_divisor == 8
    assert GDPHook(latency_target=0.5, latency_backend='openvino',
                   channel_divisor='auto').channel_divisor == 1
    assert GDPHook(channel_divisor='auto').channel_divisor == 1
    assert GDPHook(channel_divisor=16).channel_divisor == 16
    for bad in (0, 'eight', 8.0):
        with pytest.raises(ValueError, match="channel_divisor must be an integer >= 1 or 'auto'"):
            GDPHook(channel_divisor=bad)
