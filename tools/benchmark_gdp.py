#!/usr/bin/env python
"""Benchmarks of gdp-det on this machine; results go to benchmarks/RESULTS.md.

    python tools/benchmark_gdp.py [--out benchmarks/RESULTS.md] [--quick]

(a) GDP training-step time vs. the same detector without gates (ratio, one run);
(b) prune + export time of Faster R-CNN R50-FPN;
(c) CPU latency and FLOPs of RetinaNet / Faster R-CNN R50-FPN pruned to FLOPs
    ratios 0.7 / 0.5 / 0.3 (uniform widths, with and without channel_divisor=8);
(d) ONNX export of a pruned model: onnxruntime vs PyTorch difference and latency.
"""
import copy
import os
import os.path as osp
import platform
import statistics
import sys
import tempfile
import time

import numpy as np
import torch

sys.path.insert(0, osp.dirname(osp.dirname(osp.abspath(__file__))))
import gdp_det  # noqa: E402
gdp_det.compat.apply()  # torch.load of mmengine checkpoints, mmdet:: configs, VOCMetric
from gdp_det.cli import (ArgumentParser, check_writable_dir, gdp_model_cfg,  # noqa: E402
                         load_config, tool_main)

REPO = osp.dirname(osp.dirname(osp.abspath(__file__)))


def build(name, input_size, gated=True):
    from mmdet.registry import MODELS
    cfg = load_config(name)
    if 'init_cfg' in cfg.model.get('backbone', {}):
        cfg.model.backbone.init_cfg = None
    if gated:
        cfg.model = gdp_model_cfg(cfg, input_size)
    return cfg, MODELS.build(cfg.model)


def median_time(fn, repeats):
    fn()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def uniform_gates(model, target, divisor=1):
    """Gates keeping the same share of every group, at the FLOPs target."""
    from gdp_det.flops import FlopsModel
    graph = model.gdp_gates.graph
    fm = FlopsModel(graph)

    def alive_for(share):
        alive = torch.zeros(graph.num_channels, dtype=torch.bool)
        for i, g in enumerate(graph.groups):
            k = max(1, int(round(share * g.size)))
            if divisor > 1:
                k = min(g.size, int(np.ceil(k / divisor) * divisor))
            alive[graph.offsets[i]:graph.offsets[i] + k] = True
        return alive
    lo, hi = 0.0, 1.0
    for _ in range(30):
        mid = (lo + hi) / 2
        if fm.count(alive_for(mid)) / fm.full > target:
            hi = mid
        else:
            lo = mid
    alive = alive_for(lo)
    with torch.no_grad():
        model.gdp_gates.a.copy_(alive.float())
    return fm.count(alive) / fm.full


def tensor_forward(model, size):
    from gdp_det.detector import detector_forward_fn
    fn = detector_forward_fn(size)
    return lambda: fn(model)


def bench_train_overhead(repeats):
    """(a) one training iteration of the toy RetinaNet (mmengine Runner: data
    preprocessing, forward, backward, optimizer step and every hook), plain vs gated
    with its GDPHook (eps schedule, gradient and proximal steps, budget), interleaved."""
    from tools.gpu_check import build_runner, synthetic_batch, timed_iter
    cfg = load_config(osp.join(REPO, 'configs/toy/retinanet_r18_fpn_toyvoc.py'))
    plain_cfg = cfg.model.to_dict()
    gdp_cfg = gdp_model_cfg(cfg, (224, 224))
    batch = synthetic_batch((224, 224), 8, plain_cfg['bbox_head']['num_classes'])
    with tempfile.TemporaryDirectory() as tmp:
        runners = [build_runner(c, f'bench_a_{k}', osp.join(tmp, k), batch, 'cpu',
                                repeats + 12, gdp=k == 'gdp', amp=False)
                   for k, c in (('plain', plain_cfg), ('gdp', gdp_cfg))]
        times = [[], []]
        for i in range(repeats + 1):  # interleaved so both see the same machine state
            for k, r in enumerate(runners):
                t = timed_iter(r, batch, 'cpu')
                if i:  # the first iteration warms up
                    times[k].append(t)
    p, g = (statistics.median(t) for t in times)
    return ['| model | plain iteration (s) | GDP iteration incl. GDPHook (s) | overhead |',
            '|---|---|---|---|',
            f'| toy RetinaNet R18-FPN, batch 8 @224 | {p:.3f} | {g:.3f} | {100 * (g / p - 1):+.1f} % |']


def bench_prune_time():
    """(b) prune + export of Faster R-CNN R50-FPN (trace at 800x1333)."""
    from gdp_det.api import prune_and_export
    from tools.prune import randomize_gates
    rows = ['| step | seconds |', '|---|---|']
    t = time.perf_counter()
    cfg, model = build('mmdet::faster_rcnn/faster-rcnn_r50_fpn_1x_coco.py', (800, 1333))
    rows.append(f'| build + trace graph (800x1333) | {time.perf_counter() - t:.2f} |')
    randomize_gates(model.gdp_gates, 0.5, 0)
    with tempfile.TemporaryDirectory() as d:
        t = time.perf_counter()
        prune_and_export(cfg, model, d, name='frcnn', verify=False)
        rows.append(f'| prune + export (no verify) | {time.perf_counter() - t:.2f} |')
        t = time.perf_counter()
        prune_and_export(cfg, model, d, name='frcnn', verify=True, force=True)
        rows.append(f'| prune + export + verify | {time.perf_counter() - t:.2f} |')
    return rows


def bench_latency(size, repeats, targets):
    """(c) latency of tensor-mode forward of pruned R50 detectors."""
    from gdp_det.api import count_params
    from gdp_det.pruner import extract_pruned
    rows = [f'| model | FLOPs ratio | divisor | GFLOPs @{size[0]}x{size[1]} | params (M) | '
            'latency (ms) | speed-up | FLOPs cut |', '|---|---|---|---|---|---|---|---|']
    for name in ('retinanet/retinanet_r50_fpn_1x_coco.py',
                 'faster_rcnn/faster-rcnn_r50_fpn_1x_coco.py'):
        cfg, gated = build(f'mmdet::{name}', size)
        from gdp_det.flops import FlopsModel
        full = FlopsModel(gated.gdp_gates.graph).full
        _, plain = build(f'mmdet::{name}', size, gated=False)
        base = median_time(tensor_forward(plain.eval(), size), repeats)
        short = name.split('/')[1].split('_1x')[0]
        rows.append(f'| {short} | 1.00 | - | {full / 1e9:.1f} | {count_params(plain) / 1e6:.1f} | '
                    f'{1000 * base:.0f} | 1.00x | 1.00x |')
        for target in targets:
            for divisor in (1, 8):
                model = copy.deepcopy(gated)
                ratio = uniform_gates(model, target, divisor)
                extract_pruned(model)
                t = median_time(tensor_forward(model.eval(), size), repeats)
                rows.append(f'| {short} | {ratio:.2f} | {divisor} | {ratio * full / 1e9:.1f} | '
                            f'{count_params(model) / 1e6:.1f} | {1000 * t:.0f} | '
                            f'{base / t:.2f}x | {1 / ratio:.2f}x |')
    return rows


def bench_onnx(size, repeats):
    """(d) ONNX export of a pruned RetinaNet (tensor mode) and onnxruntime check."""
    import onnxruntime as ort
    from gdp_det.pruner import extract_pruned
    cfg, model = build('mmdet::retinanet/retinanet_r50_fpn_1x_coco.py', size)
    uniform_gates(model, 0.5)
    extract_pruned(model)
    model.eval()

    class TensorMode(torch.nn.Module):
        def __init__(self, det):
            super().__init__()
            self.det = det

        def forward(self, x):
            cls, reg = self.det._forward(x)
            return tuple(cls) + tuple(reg)
    wrapper = TensorMode(model)
    x = torch.randn(1, 3, *size)
    with tempfile.TemporaryDirectory() as d:
        path = osp.join(d, 'pruned.onnx')
        torch.onnx.export(wrapper, (x, ), path, opset_version=17, dynamo=False)
        sess = ort.InferenceSession(path, providers=['CPUExecutionProvider'])
        with torch.no_grad():
            ref = wrapper(x)
        out = sess.run(None, {sess.get_inputs()[0].name: x.numpy()})
        diff = max(float(np.abs(o - r.numpy()).max() / max(np.abs(r.numpy()).max(), 1e-6))
                   for o, r in zip(out, ref))
        t_ort = median_time(lambda: sess.run(None, {sess.get_inputs()[0].name: x.numpy()}),
                            repeats)
        with torch.no_grad():
            t_pt = median_time(lambda: wrapper(x), repeats)
    return ['| model | max rel diff ORT vs PyTorch | ORT latency (ms) | PyTorch latency (ms) |',
            '|---|---|---|---|',
            f'| RetinaNet R50-FPN @ 0.5 FLOPs, {size[0]}x{size[1]} | {diff:.1e} | '
            f'{1000 * t_ort:.0f} | {1000 * t_pt:.0f} |']


@tool_main
def main(argv=None):
    p = ArgumentParser(description=__doc__)
    p.add_argument('--out', default=osp.join(REPO, 'benchmarks', 'RESULTS.md'))
    p.add_argument('--quick', action='store_true', help='fewer repeats (smoke run)')
    p.add_argument('--only', nargs='+', choices='abcd', default=list('abcd'),
                   help='run only these sections; the file keeps the others')
    args = p.parse_args(argv)
    check_writable_dir(osp.dirname(osp.abspath(args.out)), 'directory of --out')
    from mmdet.utils import register_all_modules
    register_all_modules()
    torch.manual_seed(0)
    reps = 3 if args.quick else 7
    size = (512, 512)
    benches = dict(
        a=('(a) GDP training overhead', lambda: bench_train_overhead(reps)),
        b=('(b) Prune + export time, Faster R-CNN R50-FPN', bench_prune_time),
        c=('(c) CPU latency vs FLOPs (tensor-mode forward, batch 1)',
           lambda: bench_latency(size, reps, (0.7, 0.5, 0.3))),
        d=('(d) ONNX export of a pruned model', lambda: bench_onnx(size, reps)))
    sections = [(benches[k][0], benches[k][1]() + [
        '', f'Command: `python tools/benchmark_gdp.py --only {k}` ({time.strftime("%Y-%m-%d")}), '
        f'{reps} repeats.']) for k in args.only]
    head = [
        '# gdp-det benchmarks', '',
        f'Machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, '
        f'torch {torch.__version__}, {torch.get_num_threads()} threads. Timings are medians '
        'of repeated runs in one process; each section names its command and date.']
    from gdp_det.pipeline.report import update_sections
    print(update_sections(args.out, sections, head))


if __name__ == '__main__':
    sys.exit(main())
