"""Latency tables measured in a deployment runtime (ONNX Runtime or OpenVINO) on the CPU.

:func:`gdp_det.latency.measure_table` with ``backend='onnxruntime'`` or ``'openvino'``
times through a :class:`RuntimeTimer` instead of torch: each conv/linear call's grid
cell is a one-node ONNX graph (the op with the call's traced geometry, its weight sliced
to the cell's channel counts) run in the runtime; the two calibration networks (the
unpruned one and the one keeping ``PROBE_SHARE`` of every group) are exported end to end
by the deploy route (:func:`gdp_det.deploy.export_model`: mmdeploy, static shape,
post-processing and NMS in the graph) and timed whole, the time inside their conv /
linear nodes read from the runtime's profiler. The runtime runs with torch's current
thread count, so a table measured for one thread predicts a one-thread deployment.
:class:`~gdp_det.latency.LatencyModel` reads such a table unchanged.
"""
from __future__ import annotations

import copy
import os.path as osp
import tempfile
import time
from typing import Callable, List, Optional, Sequence, Tuple

import numpy as np
import torch

BACKENDS = ('onnxruntime', 'openvino')
NETWORK_IMAGES = 8  # test-split images the whole deployed networks are timed on
# op types of the runtimes' profiles that hold the conv / linear layers (OpenVINO fuses
# the bias, activation and residual add into them, as its network does)
LAYER_OPS = {'onnxruntime': ('Conv', 'FusedConv', 'NchwcConv', 'ConvTranspose', 'Gemm',
                             'MatMul', 'FusedGemm', 'FusedMatMul'),
             'openvino': ('Convolution', 'GroupConvolution', 'ConvolutionBackpropData',
                          'FullyConnected', 'MatMul')}


def runtime_clock(threads: int):
    """The clock a runtime's latency is read with: with one thread, ONNX Runtime and
    OpenVINO run every op in the calling thread (a test checks it), so the process's CPU
    time is the latency on an idle core and leaves out the time other processes hold
    the core (as :class:`gdp_det.latency.Clock` does for torch); with more threads, the
    wall clock."""
    return time.process_time if threads == 1 else time.perf_counter


def runtime_medians(runs: Sequence[Callable[[], object]], threads: int,
                    repeats: int) -> List[float]:
    """Median seconds of each of ``runs`` (inferences in a runtime with ``threads``
    threads) over ``repeats`` rounds, interleaved after a warm-up round
    (:func:`gdp_det.latency.interleaved_medians`), on :func:`runtime_clock`."""
    from .latency import interleaved_medians
    return interleaved_medians([lambda r=r: r for r in runs], 'cpu', repeats,
                               clock=runtime_clock(threads))


def session_medians(sessions: Sequence, threads: int, repeats: int) -> List[float]:
    """Median seconds of one inference of each :class:`gdp_det.deploy.RuntimeSession`
    per input (its ``run()`` infers each of its inputs once), interleaved
    (:func:`runtime_medians`)."""
    return [t / len(s.inputs) for s, t in
            zip(sessions, runtime_medians([s.run for s in sessions], threads, repeats))]


def _pair(v, n: int = 2) -> List[int]:
    return list(v) if isinstance(v, (list, tuple)) else [int(v)] * n


def op_model(geo: dict, depthwise: bool, n_in: int, n_out: int):
    """A one-node ONNX model (input ``x``) of the conv / linear op of ``geo`` (a traced
    call's geometry) with ``n_in`` input and ``n_out`` output channels; weights random."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper
    rng = np.random.RandomState(0)
    x_shape = list(geo['input'])
    groups = int(geo.get('groups', 1))
    kernel = list(geo['weight'][2:])
    if geo['op'] == 'linear':
        x_shape[-1] = n_in
        w = rng.randn(n_in, n_out).astype(np.float32)
        nodes = [helper.make_node('MatMul', ['x', 'w'], ['y' if not geo['bias'] else 'm'])]
    else:
        if depthwise:
            x_shape[1], groups = n_out, n_out
            w_shape = [n_out, 1] + kernel
        elif geo['op'] == 'conv2d':
            x_shape[1] = n_in
            w_shape = [n_out, n_in // groups] + kernel
        else:  # conv_transpose2d: weight (C_in, C_out / groups, kh, kw)
            x_shape[1] = n_in
            w_shape = [n_in, n_out // groups] + kernel
        w = rng.randn(*w_shape).astype(np.float32)
        dilation = _pair(geo.get('dilation', 1))
        padding = geo.get('padding', 0)
        if padding == 'same':
            padding = [d * (k - 1) // 2 for d, k in zip(dilation, kernel)]
        elif padding == 'valid':
            padding = [0, 0]
        padding = _pair(padding)
        attrs = dict(kernel_shape=kernel, strides=_pair(geo.get('stride', 1)),
                     dilations=dilation, pads=padding + padding, group=groups)
        op = 'Conv'
        if geo['op'] == 'conv_transpose2d':
            op, attrs['output_padding'] = 'ConvTranspose', _pair(geo.get('output_padding', 0))
        inputs = ['x', 'w'] + (['b'] if geo['bias'] else [])
        nodes = [helper.make_node(op, inputs, ['y'], **attrs)]
    inits = [numpy_helper.from_array(w, 'w')]
    if geo['bias']:
        inits.append(numpy_helper.from_array(rng.randn(n_out).astype(np.float32), 'b'))
        if geo['op'] == 'linear':
            nodes.append(helper.make_node('Add', ['m', 'b'], ['y']))
    y_shape = list(geo['output'])
    y_shape[-1 if geo['op'] == 'linear' else 1] = n_out
    graph = helper.make_graph(
        nodes, 'op', [helper.make_tensor_value_info('x', TensorProto.FLOAT, x_shape)],
        [helper.make_tensor_value_info('y', TensorProto.FLOAT, y_shape)], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid('', 13)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model, np.random.RandomState(1).randn(*x_shape).astype(np.float32)


class RuntimeTimer:
    """Times latency-table cells and whole networks in ``backend`` (ONNX Runtime or
    OpenVINO) on the CPU with ``threads`` threads, on :func:`runtime_clock`, interleaved
    (:func:`gdp_det.latency.interleaved_medians`). ``cfg`` is the detector's config (the
    deploy route exports the calibration networks from it; they are timed on the first
    ``NETWORK_IMAGES`` images of its test split, per image, so that the work that depends on
    the image, a two-stage detector's proposals and NMS, is a real image's; on one fixed
    random input where that split is not on this machine)."""

    def __init__(self, backend: str, threads: int, cfg):
        from .deploy import require, split_images
        if backend not in BACKENDS:
            from .cli import UserError
            raise UserError(f'unknown latency backend {backend!r} (choose torch, '
                            f'{", ".join(BACKENDS)})')
        require(backend)
        self.backend, self.threads, self.cfg = backend, int(threads), cfg
        self.images = split_images(cfg, NETWORK_IMAGES)

    @property
    def device(self) -> torch.device:
        return torch.device('cpu')

    def ident(self) -> dict:
        """What the table's cache key adds for this timer: the runtime and its version,
        the images the whole networks are timed on."""
        import importlib.metadata as md
        return dict(backend=f'{self.backend} {md.version(self.backend)}',
                    images=[osp.basename(p) for p in self.images])

    def _session(self, model, x: np.ndarray, work_dir: str):
        """A function running the ONNX ``model`` once on ``x`` in the runtime."""
        from .deploy import openvino_request, ort_session
        if self.backend == 'onnxruntime':
            sess = ort_session(model.SerializeToString(), self.threads)
            return lambda: sess.run(None, {'x': x})
        path = tempfile.mktemp(suffix='.onnx', dir=work_dir)
        with open(path, 'wb') as f:
            f.write(model.SerializeToString())
        request = openvino_request(path, self.threads)
        return lambda: request.infer({0: x})

    def op_times(self, cells: Sequence[Tuple[dict, int, int]], repeats: int) -> List[float]:
        """Median seconds of each cell ``(spec, n_in, n_out)`` (a spec of
        :func:`gdp_det.latency._call_spec`), the cells of one geometry interleaved."""
        times: List[Optional[float]] = [None] * len(cells)
        by_geometry = {}
        for i, (spec, _, _) in enumerate(cells):
            by_geometry.setdefault(id(spec), []).append(i)
        with tempfile.TemporaryDirectory() as work_dir:
            for idx in by_geometry.values():
                runs = []
                for i in idx:
                    spec, n_in, n_out = cells[i]
                    runs.append(self._session(*op_model(spec['geometry'], spec['depthwise'],
                                                        n_in, n_out), work_dir))
                for i, t in zip(idx, runtime_medians(runs, self.threads, repeats)):
                    times[i] = t
        return times

    def network_times(self, gated: torch.nn.Module, gate_sets: Sequence[Optional[np.ndarray]],
                      repeats: int, min_channels: float = 1, channel_divisor: int = 1,
                      layers: bool = False):
        """Median seconds of the deployed exports of ``gated`` with each of ``gate_sets``
        (None: its own gates), interleaved. With ``layers``: ``(totals, layer seconds,
        per-call seconds)``, the layer seconds the time inside each export's conv /
        linear nodes (its profile's share of them times its median); the profile names op
        types, not calls, so the per-call times (of ``timed_modules``) are None."""
        from .api import prune_and_export
        from .deploy import RuntimeSession, export_model
        from .latency import timed_modules
        sessions = []
        with tempfile.TemporaryDirectory() as work_dir:
            for k, gates in enumerate(gate_sets):
                model = copy.deepcopy(gated).cpu()
                if gates is not None:
                    with torch.no_grad():
                        model.gdp_gates.a.copy_(torch.as_tensor(gates, dtype=torch.float32))
                export_dir = osp.join(work_dir, f'export{k}')
                _, _, paths = prune_and_export(self.cfg, model, export_dir, name='model',
                                               min_channels=min_channels,
                                               channel_divisor=channel_divisor,
                                               verify=False, force=True)
                config = next(p for p in paths if p.endswith('.py'))
                deployed = osp.join(work_dir, f'deployed{k}')
                export_model(config, config[:-3] + '.pth', self.backend, deployed, force=True)
                sessions.append(RuntimeSession(deployed, self.threads, self.images))
            totals = session_medians(sessions, self.threads, repeats)
            if not layers:
                return totals
            inside = []
            for total, session in zip(totals, sessions):
                shares = session.profile(max(3, repeats // 2))
                inside.append(total * sum(s for op, s in shares.items()
                                          if op in LAYER_OPS[self.backend]))
        return totals, inside, [[None] * len(timed_modules(gated.gdp_gates.graph))] * len(totals)
