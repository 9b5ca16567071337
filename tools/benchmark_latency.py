#!/usr/bin/env python
"""Accuracy of the latency model (gdp_det.latency); results go to benchmarks/RESULTS.md.

    python tools/benchmark_latency.py [--out benchmarks/RESULTS.md] [--quick]
        [--models toy-retinanet toy-frcnn r50-retinanet] [--threads 1]
        [--backend torch|onnxruntime|openvino] [--channel-divisors 1 8]

For each detector: measure the latency table (uncached, timed) in the backend, then time
the unpruned network, two exports with random gates (each channel kept with
probability 0.5 / 0.3) and two whose groups keep random shares of their channels (as
GDP's exports do: some groups nearly whole, others cut deep), interleaved, medians,
and compare them with the model's predictions: absolute error and latency ratio, and
the ratio's error without the RoI pooling lines (RoI pooling's time spread over every
conv output element, as the model did before them).
"""
import os
import os.path as osp
import platform
import sys
import time

import numpy as np
import torch

sys.path.insert(0, osp.dirname(osp.dirname(osp.abspath(__file__))))
import gdp_det  # noqa: E402
gdp_det.compat.apply()  # torch.load of mmengine checkpoints, mmdet:: configs, VOCMetric
from gdp_det.cli import ArgumentParser, check_writable_dir, load_config, tool_main  # noqa: E402

REPO = osp.dirname(osp.dirname(osp.abspath(__file__)))
MODELS = {
    'toy-retinanet': (osp.join(REPO, 'configs/toy/retinanet_r18_fpn_toyvoc.py'), 224),
    'toy-frcnn': (osp.join(REPO, 'configs/toy/faster-rcnn_r18_fpn_toyvoc.py'), 224),
    'r50-retinanet': ('mmdet::retinanet/retinanet_r50_fpn_1x_coco.py', 512),
}
KEEP = (0.5, 0.3)  # probability of keeping each channel in the random exports
GROUP_SHARES = (0.1, 1.0)  # range of each group's keep probability in the per-group ones
PER_GROUP = 2  # exports with per-group shares


def gated_model(config: str, size: int):
    """``(gated detector, its config)``."""
    from mmdet.registry import MODELS as REGISTRY

    from gdp_det.detector import attach_gates
    cfg = load_config(config)
    if 'init_cfg' in cfg.model.get('backbone', {}):
        cfg.model.backbone.init_cfg = None
    return attach_gates(REGISTRY.build(cfg.model), (size, size)).eval(), cfg


def evaluate(model, cfg, repeats: int, backend: str = 'torch', divisors=(1,),
             seed: int = 0) -> dict:
    """Predicted vs measured latency of the unpruned network and random exports (each
    with every group's width rounded up to a multiple of each of ``divisors``), in
    ``backend`` (torch: tensor-mode forwards; a runtime: the deployed exports)."""
    from gdp_det.flops import FlopsModel
    from gdp_det.latency import LatencyModel, forward_latencies, measure_table, plain_copy
    from gdp_det.pruner import exported_channels
    graph = model.gdp_gates.graph
    t = time.perf_counter()
    table = measure_table(model, repeats=repeats, cache=False, backend=backend, cfg=cfg)
    latency = LatencyModel(graph, table)
    build_s = time.perf_counter() - t
    rng = np.random.default_rng(seed)
    labels, kept = ['unpruned'], [np.ones(graph.num_channels, bool)]
    sizes = [g.size for g in graph.groups]
    shares = [(f'keep {p:.1f}', np.full(graph.num_channels, p)) for p in KEEP]
    shares += [(f'groups keep {GROUP_SHARES[0]}-{GROUP_SHARES[1]:.0f} (draw {i + 1})',
                np.repeat(rng.uniform(*GROUP_SHARES, len(sizes)), sizes))
               for i in range(PER_GROUP)]
    for what, p in shares:
        a = (rng.random(graph.num_channels) < p).astype(np.float32)
        for d in divisors:
            labels.append(f'random, {what}' + (f', widths multiple of {d}' if d > 1 else ''))
            kept.append(exported_channels(graph, a, channel_divisor=d))
    predicted = [latency.count(k) for k in kept]
    spread = LatencyModel(graph, {k: v for k, v in table.items()
                                  if not k.endswith('_passthrough')})
    spread_ratios = [spread.count(k) / spread.full for k in kept]
    flops = FlopsModel(graph)
    trace = model.gdp_gates.trace
    gates = [k.astype(np.float32) for k in kept]  # the export of its own kept mask is itself
    if backend == 'torch':
        measured = forward_latencies([plain_copy(model, a) for a in gates], trace.input_size,
                                     trace.num_proposals, repeats=2 * repeats)
    else:
        from gdp_det.runtime_latency import RuntimeTimer
        measured = RuntimeTimer(backend, torch.get_num_threads(), cfg).network_times(
            model, gates, 2 * repeats)[0]
    return dict(build_s=build_s, labels=labels, predicted=predicted, measured=measured,
                flops=[flops.count(k) / flops.full for k in kept], spread=spread_ratios)


def rows_for(name: str, size: int, r: dict) -> list:
    pred, meas = r['predicted'], r['measured']
    out = []
    for i, (p, m, f, s) in enumerate(zip(pred, meas, r['flops'], r['spread'])):
        label = r['labels'][i]
        build = f'{r["build_s"]:.0f}' if i == 0 else ''
        out.append(f'| {name} @{size} | {label} | {f:.2f} | {1e3 * p:.1f} | {1e3 * m:.1f} | '
                   f'{100 * (p / m - 1):+.1f} % | {p / pred[0]:.3f} | {m / meas[0]:.3f} | '
                   f'{p / pred[0] - m / meas[0]:+.3f} | {s - m / meas[0]:+.3f} | {build} |')
    return out


@tool_main
def main(argv=None):
    p = ArgumentParser(description=__doc__)
    p.add_argument('--out', default=osp.join(REPO, 'benchmarks', 'RESULTS.md'))
    p.add_argument('--quick', action='store_true', help='fewer repeats (smoke run)')
    p.add_argument('--models', nargs='+', choices=list(MODELS), default=list(MODELS))
    p.add_argument('--backend', choices=('torch', 'onnxruntime', 'openvino'), default='torch',
                   help='where the table is measured and the networks timed: torch\'s '
                        'tensor-mode forward, or end-to-end deployments in a runtime')
    p.add_argument('--channel-divisors', type=int, nargs='+', default=[1],
                   help='also the random exports with every group\'s width rounded up to a '
                        'multiple of these')
    p.add_argument('--threads', type=int, default=1,
                   help='torch threads (the deployment setting; 1: CPU time is measured)')
    args = p.parse_args(argv)
    check_writable_dir(osp.dirname(osp.abspath(args.out)), 'directory of --out')
    from mmdet.utils import register_all_modules
    register_all_modules()
    torch.manual_seed(0)
    torch.set_num_threads(args.threads)
    repeats = 3 if args.quick else 7
    rows = ['| model | network | FLOPs ratio | predicted (ms) | measured (ms) | error | '
            'predicted ratio | measured ratio | ratio error | ratio error without RoI '
            'pooling lines | table built in (s) |',
            '|---|---|---|---|---|---|---|---|---|---|---|']
    for name in args.models:
        config, size = MODELS[name]
        rows += rows_for(name, size, evaluate(*gated_model(config, size), repeats,
                                              args.backend, args.channel_divisors))
        print('\n'.join(rows), flush=True)
    if args.backend == 'torch':
        clock = 'CPU time' if args.threads == 1 else 'wall time'
        what = (f'Tensor-mode forward, batch 1, {args.threads} torch thread(s), {clock} (with '
                'one thread the CPU time is the latency on an idle core; wall time on this '
                'shared machine is up to 3x that and noisy)')
        title = '(l) Latency model: predicted vs measured latency'
    else:
        import importlib.metadata as md
        what = (f'Table measured in {args.backend} {md.version(args.backend)} (one-node graphs '
                'per conv call, calibrated on the deployed unpruned and half-width networks); '
                'networks deployed end to end with mmdeploy (post-processing and NMS in the '
                f'graph), batch 1, {args.threads} runtime thread(s), wall time')
        title = f'(p) Latency model measured in {args.backend}: predicted vs measured latency'
    rows += ['', f'{what}; the measured column is timed after the table, in {2 * repeats} '
             'interleaved rounds. The prediction of the unpruned network equals the table\'s '
             'own measurement of it, so its error here is the run-to-run noise. '
             f'Machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores '
             f'(shared), torch {torch.__version__}.', '',
             f'Command: `python tools/benchmark_latency.py --models {" ".join(args.models)} '
             f'--backend {args.backend} --threads {args.threads} '
             f'--channel-divisors {" ".join(map(str, args.channel_divisors))}` '
             f'({time.strftime("%Y-%m-%d")}), {repeats} repeats per table entry.']
    from gdp_det.pipeline.report import update_sections
    update_sections(args.out, [(title, rows)])
    print('\n'.join(rows))


if __name__ == '__main__':
    sys.exit(main())
