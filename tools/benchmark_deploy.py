#!/usr/bin/env python
"""End-to-end latency of pruned detectors in the deployment runtimes.

    python tools/benchmark_deploy.py [--models toy-retinanet retinanet-r50 faster-rcnn-r50]
        [--budgets 0.5 0.3] [--channel-divisors 1 8 16] [--gdp-export MODEL LABEL DIR ...]
        [--backends onnxruntime openvino] [--threads 1 0] [--rounds 30]
        [--work-dir work_dirs/benchmark_deploy] [--json benchmarks/deploy.json]
        [--out benchmarks/RESULTS.md] [--readme README.md] [--quick] [--collect-only]

For each model: the unpruned baseline; at each FLOPs budget, the same share of every
coupled channel group cut (random channels; with --channel-divisors, also with every
group's width rounded up to a multiple of each divisor) and Torch-Pruning's L1 uniform
pruning (where its DependencyGraph traces the detector), both on the seeded random init
(latency does not depend on the weights); and the GDP exports given with --gdp-export (the pruned/
directory of a training run, e.g. of `make demo`). Each is deployed with tools/deploy.py's
route (mmdeploy, static shape, post-processing and NMS in the graph; made once, reused)
and timed in ONNX Runtime and OpenVINO on the CPU: the image tensor in, detections out,
batch 1, with 1 thread and with all cores (0), the variants interleaved round by round in
one process; medians. The results of each model measured replace its earlier ones in the
JSON; section (o) of RESULTS.md and, with --readme, the README's block are generated
from the whole JSON.
"""
import json
import os
import os.path as osp
import platform
import sys
import time

sys.path.insert(0, osp.dirname(osp.dirname(osp.abspath(__file__))))
import gdp_det  # noqa: E402
gdp_det.compat.apply()  # torch.load of mmengine checkpoints, mmdet:: configs
from gdp_det.cli import ArgumentParser, check_writable_dir, tool_main  # noqa: E402
from gdp_det.pipeline.report import add_readme_argument, check_readme  # noqa: E402

REPO = osp.dirname(osp.dirname(osp.abspath(__file__)))
MODELS = {
    'toy-retinanet': (osp.join(REPO, 'configs/toy/retinanet_r18_fpn_toyvoc.py'), (224, 224)),
    'retinanet-r50': ('mmdet::retinanet/retinanet_r50_fpn_1x_coco.py', (800, 1333)),
    'faster-rcnn-r50': ('mmdet::faster_rcnn/faster-rcnn_r50_fpn_1x_coco.py', (800, 1333)),
}
SECTION = '(o) End to end in the deployment runtimes (mmdeploy, CPU)'
README_BLOCK = 'generated from benchmarks/deploy.json'
# the goal: MMRazor's GroupFisher reports 1.47x at 0.504 of the FLOPs through ONNX
GOALS = [('retinanet-r50', 'onnxruntime', 'same share of every group, FLOPs 0.5', 1.8),
         ('retinanet-r50', 'onnxruntime', 'Torch-Pruning L1 uniform, FLOPs 0.5', 1.8)]


def parse_args(argv=None):
    p = ArgumentParser(description=__doc__)
    p.add_argument('--models', nargs='+', choices=list(MODELS), default=['toy-retinanet'])
    p.add_argument('--budgets', type=float, nargs='*', default=[0.5, 0.3],
                   help='FLOPs budgets of the uniform and Torch-Pruning variants')
    p.add_argument('--channel-divisors', type=int, nargs='+', default=[1],
                   help='also the uniform variants with every group\'s width rounded up to '
                        'a multiple of these (what runtimes with blocked layouts may run '
                        'faster)')
    p.add_argument('--no-torch-pruning', action='store_true',
                   help='leave out the Torch-Pruning variants')
    p.add_argument('--gdp-export', nargs=3, action='append', default=[],
                   metavar=('MODEL', 'LABEL', 'DIR'),
                   help='a GDP export of MODEL (its pruned/ directory) timed as LABEL')
    p.add_argument('--backends', nargs='+', choices=('onnxruntime', 'openvino'),
                   default=['onnxruntime', 'openvino'])
    p.add_argument('--threads', type=int, nargs='+', default=[1, 0],
                   help="runtime threads; 0: the runtime's default (all cores)")
    p.add_argument('--rounds', type=int, default=30, help='interleaved timed rounds')
    p.add_argument('--profile-runs', type=int, default=10)
    p.add_argument('--work-dir', default=osp.join(REPO, 'work_dirs', 'benchmark_deploy'))
    p.add_argument('--json', default=osp.join(REPO, 'benchmarks', 'deploy.json'))
    p.add_argument('--out', default=osp.join(REPO, 'benchmarks', 'RESULTS.md'))
    add_readme_argument(p, README_BLOCK)
    p.add_argument('--quick', action='store_true', help='3 rounds, 2 profile runs (smoke run)')
    p.add_argument('--collect-only', action='store_true',
                   help='measure nothing: write RESULTS.md (and --readme) from the JSON')
    args = p.parse_args(argv)
    if args.quick:
        args.rounds, args.profile_runs = 3, 2
    for model, _, d in args.gdp_export:
        if model not in MODELS:
            p.error(f'--gdp-export: unknown model {model!r} (choose one of {", ".join(MODELS)})')
        if model not in args.models:
            p.error(f'--gdp-export {model}: add {model} to --models')
    if any(not 0 < b < 1 for b in args.budgets):
        p.error('--budgets must be in (0, 1)')
    return args


def model_variants(name: str, args, skipped: list) -> list:
    """The variants of one model (exports made once, reused); the ones that cannot be
    made are appended to ``skipped`` with the reason."""
    from gdp_det.benchmark import deploy_latency as dl
    config, size = MODELS[name]
    root = osp.join(args.work_dir, name)
    out = [dl.Variant('baseline', 'baseline', config)]
    for model, label, d in args.gdp_export:
        if model == name:
            out.append(dl.gdp_export(label, d))
    for b in args.budgets:
        for d in args.channel_divisors:
            out.append(dl.uniform_export(config, size, b, osp.join(
                root, f'uniform_{b:g}' + (f'_div{d}' if d > 1 else '')), channel_divisor=d))
        if args.no_torch_pruning:
            continue
        try:
            out.append(dl.torch_pruning_export(config, size, b, osp.join(root, f'tp_l1_{b:g}')))
        except Exception as e:  # not installed, or its tracer or pruner fails on this detector
            why = (f'torch_pruning does not import ({e})' if isinstance(e, ImportError)
                   else f'{type(e).__name__}: {str(e).splitlines()[0][:200]}')
            skipped.append(dict(variant=dl.torch_pruning_label(b), reason=why))
    return out


def measure_model(name: str, args) -> dict:
    import importlib.metadata as md

    from gdp_det import deploy
    from gdp_det.benchmark import deploy_latency as dl
    size = MODELS[name][1]
    result = dict(size=list(size), rows=[], profiles={}, skipped=[], rounds=args.rounds,
                  date=time.strftime('%Y-%m-%d'), load_average=round(os.getloadavg()[0], 1),
                  machine=f'{platform.processor() or platform.machine()}, {os.cpu_count()} '
                  'cores, ' + ', '.join(f'{p} {md.version(p)}' for p in args.backends))
    variants = model_variants(name, args, result['skipped'])
    ratios = dl.flops_ratios(variants, size)
    for backend in args.backends:
        dirs = [osp.join(args.work_dir, name, 'deployed', v.slug, backend) for v in variants]
        dl.deploy_all([(v.config, v.checkpoint) for v in variants], dirs, backend)
        for threads in args.threads:
            ms = dl.deployed_latencies(dirs, threads, args.rounds)
            for v, ratio, t in zip(variants, ratios, ms):
                result['rows'].append(dict(backend=backend, threads=threads, variant=v.label,
                                           method=v.method, budget=v.budget,
                                           flops_ratio=ratio, ms=t, speedup=ms[0] / t))
                print(name, result['rows'][-1], flush=True)
        for v, d in zip(variants, dirs):
            key = f'{v.label}, {dl.BACKEND_NAMES[backend]}'
            result['profiles'][key] = deploy.RuntimeSession(d, 1).profile(args.profile_runs)
    return result


@tool_main
def main(argv=None) -> int:
    args = parse_args(argv)
    from gdp_det import deploy
    for backend in [] if args.collect_only else args.backends:
        deploy.require(backend)
    check_readme(args.readme, README_BLOCK)
    check_writable_dir(args.work_dir, 'work directory')
    check_writable_dir(osp.dirname(osp.abspath(args.json)), 'directory of --json')
    from mmdet.utils import register_all_modules
    register_all_modules()
    from gdp_det.benchmark import deploy_latency as dl
    from gdp_det.files import atomic_write
    from gdp_det.pipeline.report import replace_marked, update_sections
    results = json.load(open(args.json)) if osp.isfile(args.json) else {}
    if 'models' not in results:  # none yet, or the first version's rows: measured anew
        results = dict(models={})
    for name in [] if args.collect_only else args.models:
        results['models'][name] = measure_model(name, args)
        # after each model: a later model's failure loses nothing measured
        atomic_write(args.json, json.dumps(results, indent=2) + '\n')
    rows = dl.section_rows(results)
    update_sections(args.out, [(SECTION, rows)])
    if args.readme:
        replace_marked(args.readme, README_BLOCK, dl.readme_lines(results, GOALS))
    print('\n'.join(rows))
    return 0


if __name__ == '__main__':
    sys.exit(main())
