"""Latency tables measured in a deployment runtime (gdp_det.runtime_latency).

What is asserted does not depend on the clock: the one-node graphs compute the traced
op (outputs equal torch's), a runtime table has the torch table's layout and feeds
:class:`LatencyModel`, is cached per runtime, and its calibration networks are the
deployed exports of the gates asked for. How well a runtime table predicts a runtime's
latency is a benchmark (tools/benchmark_latency.py --backend, RESULTS section (p)).
"""
import os.path as osp

import numpy as np
import pytest
import torch
import torch.nn.functional as F

pytest.importorskip('mmdeploy', reason="the deploy extra: pip install -e '.[deploy]'")

from gdp_det import latency as latency_mod  # noqa: E402
from gdp_det import runtime_latency as rt  # noqa: E402
from gdp_det.latency import LatencyModel, measure_table  # noqa: E402


# (geometry as the tracer records it, depthwise, n_in, n_out): fewer channels than the
# traced call has, as a table's grid cells ask for
GEOMETRIES = [
    (dict(op='conv2d', input=[1, 16, 20, 24], weight=[32, 16, 3, 3], bias=True,
          output=[1, 32, 10, 12], stride=[2, 2], padding=[1, 1], dilation=[1, 1], groups=1),
     False, 12, 24),
    (dict(op='conv2d', input=[1, 16, 20, 24], weight=[32, 4, 3, 3], bias=False,
          output=[1, 32, 20, 24], stride=1, padding=2, dilation=2, groups=4), False, 8, 16),
    (dict(op='conv2d', input=[1, 16, 20, 24], weight=[16, 1, 5, 5], bias=True,
          output=[1, 16, 20, 24], stride=1, padding='same', dilation=1, groups=16),
     True, 16, 10),
    (dict(op='conv2d', input=[1, 8, 9, 9], weight=[8, 8, 1, 1], bias=False,
          output=[1, 8, 9, 9], stride=1, padding='valid', dilation=1, groups=1), False, 5, 3),
    (dict(op='conv_transpose2d', input=[1, 16, 10, 12], weight=[16, 8, 3, 3], bias=True,
          output=[1, 8, 20, 24], stride=[2, 2], padding=[1, 1], output_padding=[1, 1],
          groups=1, dilation=[1, 1]), False, 12, 6),
    (dict(op='linear', input=[7, 64], weight=[32, 64], bias=True, output=[7, 32]),
     False, 40, 20),
    (dict(op='linear', input=[2, 5, 64], weight=[32, 64], bias=False, output=[2, 5, 32]),
     False, 40, 20),
]


def _torch_op(geo, depthwise, model, x):
    """The traced op in torch with the one-node model's weights."""
    from onnx import numpy_helper
    inits = {i.name: torch.from_numpy(numpy_helper.to_array(i).copy())
             for i in model.graph.initializer}
    w, b = inits['w'], inits.get('b')
    x = torch.from_numpy(x)
    if geo['op'] == 'linear':
        return F.linear(x, w.t(), b)
    kwargs = {k: geo[k] for k in ('stride', 'padding', 'dilation', 'groups') if k in geo}
    if depthwise:
        kwargs['groups'] = x.shape[1]
    if geo['op'] == 'conv_transpose2d':
        return F.conv_transpose2d(x, w, b, output_padding=geo['output_padding'], **kwargs)
    return F.conv2d(x, w, b, **kwargs)


@pytest.mark.parametrize('backend', rt.BACKENDS)
@pytest.mark.parametrize('case', range(len(GEOMETRIES)))
def test_one_node_graph_computes_the_traced_op(backend, case, tmp_path):
    """Each cell's graph is the traced op at the cell's channel counts: the runtime's
    output equals torch's op with the same weights (shape and values)."""
    geo, depthwise, n_in, n_out = GEOMETRIES[case]
    model, x = rt.op_model(geo, depthwise, n_in, n_out)
    assert x.shape[1 if geo['op'] != 'linear' else -1] == (n_out if depthwise else n_in)
    expected = _torch_op(geo, depthwise, model, x).numpy()
    assert expected.shape[1 if geo['op'] != 'linear' else -1] == n_out
    timer = rt.RuntimeTimer(backend, 1, cfg=None)
    if backend == 'onnxruntime':
        import onnxruntime as ort
        out = ort.InferenceSession(model.SerializeToString(),
                                   providers=['CPUExecutionProvider']).run(None, {'x': x})[0]
    else:
        import openvino as ov
        path = str(tmp_path / 'op.onnx')
        open(path, 'wb').write(model.SerializeToString())
        out = ov.Core().compile_model(path, 'CPU', {'INFERENCE_PRECISION_HINT': 'f32'})(
            {0: x})[0]
    assert out.shape == expected.shape
    np.testing.assert_allclose(out, expected, rtol=1e-4, atol=1e-4)
    run = timer._session(model, x, str(tmp_path))
    np.testing.assert_allclose(np.asarray(run()[0]), expected, rtol=1e-4, atol=1e-4)


def test_unknown_backend_is_named():
    from gdp_det.cli import UserError
    with pytest.raises(UserError, match="unknown latency backend 'tensorrt'"):
        rt.RuntimeTimer('tensorrt', 1, cfg=None)


def test_whole_networks_are_timed_on_the_test_splits_images(make_toy_cfg):
    """The calibration networks run on the detector's test images (a two-stage detector's
    proposals, and so its RoI head's time, depend on the image), named in the table's
    cache key; where the split is not on this machine, on one random input."""
    cfg = make_toy_cfg()
    ds = cfg.test_dataloader.dataset
    ids = open(osp.join(ds.data_root, ds.ann_file)).read().split()
    timer = rt.RuntimeTimer('onnxruntime', 1, cfg)
    names = [f'{i}.jpg' for i in ids[:rt.NETWORK_IMAGES]]
    assert len(names) == min(8, len(ids)) >= 2
    assert [osp.basename(p) for p in timer.images] == timer.ident()['images'] == names
    cfg.test_dataloader.dataset.ann_file = 'VOC2007/ImageSets/Main/missing.txt'
    assert rt.RuntimeTimer('onnxruntime', 1, cfg).images == []


@pytest.mark.slow
def test_runtime_table_feeds_the_latency_model_and_is_cached(gated_toy_retinanet, tmp_path,
                                                              monkeypatch):
    """An ONNX Runtime table of the toy RetinaNet: every call's grid timed (positive
    times), the calibration networks timed whole with a share of their time in conv
    nodes, the LatencyModel built from it predicting the measured unpruned network;
    the second measurement reads the cache, a torch table of the same model is another
    file."""
    model, cfg = gated_toy_retinanet
    monkeypatch.setattr(latency_mod, 'CACHE_DIR', str(tmp_path))
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        table = measure_table(model, points=2, repeats=1, backend='onnxruntime', cfg=cfg)
        assert table['backend'].startswith('onnxruntime ') and table['threads'] == 1
        for entry in table['entries'].values():
            assert len(entry['times']) == len(entry['grid_in']) * len(entry['grid_out'])
            assert all(t > 0 for t in entry['times'])
        for key in ('whole', 'probe'):
            assert 0 < table[f'{key}_layers'] < table[key]
        assert table['whole_calls'] == [None] * len(model.gdp_gates.graph.calls)
        latency = LatencyModel(model.gdp_gates.graph, table)
        assert latency.full == pytest.approx(table['whole'], rel=1e-9)
        assert latency.device.startswith('onnxruntime ')

        def no_timing(*args, **kwargs):
            raise AssertionError('measured again')
        monkeypatch.setattr(rt.RuntimeTimer, 'op_times', no_timing)
        assert measure_table(model, points=2, repeats=1, backend='onnxruntime',
                             cfg=cfg) == table
        monkeypatch.setattr(latency_mod, 'interleaved_medians', no_timing)
        with pytest.raises(AssertionError, match='measured again'):
            measure_table(model, points=2, repeats=1)
    finally:
        torch.set_num_threads(old)
    assert len(list(tmp_path.glob('*.json'))) == 1


def _conv_widths(onnx_path: str) -> int:
    """The output channels of the Conv nodes' weights of an ONNX file, summed over the
    distinct weights (a shared head's convs run once per level on one weight)."""
    import onnx
    model = onnx.load(onnx_path)
    shapes = {i.name: list(i.dims) for i in model.graph.initializer}
    weights = {n.input[1] for n in model.graph.node if n.op_type == 'Conv'}
    return sum(shapes[w][0] for w in weights)


@pytest.mark.slow
def test_calibration_networks_are_the_deployed_exports(gated_toy_retinanet, monkeypatch):
    """network_times deploys the export of each gate set: the ONNX graphs it times hold
    the exports' conv widths (all channels; half of every group)."""
    from gdp_det import deploy
    from gdp_det.latency import plain_copy, uniform_gates
    model, cfg = gated_toy_retinanet
    graph = model.gdp_gates.graph
    gate_sets = [np.ones(graph.num_channels), uniform_gates(graph, 0.5)]
    widths = []
    real_export = deploy.export_model

    def recording_export(config, checkpoint, backend, work_dir, **kwargs):
        info = real_export(config, checkpoint, backend, work_dir, **kwargs)
        widths.append(_conv_widths(osp.join(work_dir, deploy.ONNX_FILE)))
        return info
    monkeypatch.setattr(deploy, 'export_model', recording_export)
    timer = rt.RuntimeTimer('onnxruntime', 1, cfg)
    totals, layers, calls = timer.network_times(model, gate_sets, repeats=1, layers=True)
    assert len(totals) == len(layers) == 2 and all(t > 0 for t in totals)
    assert all(0 < t < total for t, total in zip(layers, totals))
    assert calls == [[None] * len(graph.calls)] * 2  # a profile times op types, not calls
    expected = [sum(m.out_channels for m in plain_copy(model, g).modules()
                    if isinstance(m, torch.nn.Conv2d)) for g in gate_sets]
    assert widths == expected and expected[1] < 0.6 * expected[0]


@pytest.mark.parametrize('backend', rt.BACKENDS)
def test_one_thread_runtime_works_in_the_calling_thread(backend, tmp_path):
    """Why a one-thread runtime is timed on the process's CPU time
    (:func:`runtime_clock`): every op runs in the calling thread, so that thread's CPU
    time is all the process spends (no worker thread computes or spins)."""
    import time
    geo, depthwise, n_in, n_out = GEOMETRIES[0]
    geo = dict(geo, input=[1, 16, 160, 192], output=[1, 32, 80, 96])
    run = rt.RuntimeTimer(backend, 1, cfg=None)._session(
        *rt.op_model(geo, depthwise, n_in, n_out), str(tmp_path))
    run()
    process, thread = time.process_time(), time.thread_time()
    for _ in range(20):
        run()
    process, thread = time.process_time() - process, time.thread_time() - thread
    assert thread >= 0.9 * process > 0, (thread, process)
    assert rt.runtime_clock(1) is time.process_time
    assert rt.runtime_clock(0) is time.perf_counter and rt.runtime_clock(4) is time.perf_counter
