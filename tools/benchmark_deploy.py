#!/usr/bin/env python
"""End-to-end latency in the deployment runtimes (first version: the toy RetinaNet).

    python tools/benchmark_deploy.py [--work-dir work_dirs/benchmark_deploy]
        [--json benchmarks/deploy.json] [--out benchmarks/RESULTS.md]
        [--backends onnxruntime openvino] [--threads 1 0] [--keep 0.5 0.3] [--quick]

For each model: the baseline (random init) and exports of tools/prune.py --random-gates
(1 - KEEP of every group's channels cut) are deployed with tools/deploy.py's route
(mmdeploy, static shape, post-processing and NMS in the graph), then timed in ONNX Runtime
and OpenVINO on the CPU: the normalised image tensor in, detections out, batch 1, with 1
thread and with all cores (0), the variants interleaved round by round in one process;
medians. Writes the JSON and section (o) of RESULTS.md (speed-up, FLOPs ratio and their
quotient per runtime and thread count) and, per runtime, the share of the time of each
op type in the most pruned export (ONNX Runtime's profiler; OpenVINO's per-node
performance counters).
"""
import json
import os
import os.path as osp
import platform
import statistics
import sys
import time

import numpy as np

sys.path.insert(0, osp.dirname(osp.dirname(osp.abspath(__file__))))
import gdp_det  # noqa: E402
gdp_det.compat.apply()  # torch.load of mmengine checkpoints, mmdet:: configs
from gdp_det.cli import ArgumentParser, check_writable_dir, tool_main  # noqa: E402

REPO = osp.dirname(osp.dirname(osp.abspath(__file__)))
MODELS = {'toy-retinanet': (osp.join(REPO, 'configs/toy/retinanet_r18_fpn_toyvoc.py'), 224)}
SECTION = '(o) End to end in the deployment runtimes (mmdeploy, CPU)'


def parse_args(argv=None):
    p = ArgumentParser(description=__doc__)
    p.add_argument('--work-dir', default=osp.join(REPO, 'work_dirs', 'benchmark_deploy'))
    p.add_argument('--json', default=osp.join(REPO, 'benchmarks', 'deploy.json'))
    p.add_argument('--out', default=osp.join(REPO, 'benchmarks', 'RESULTS.md'))
    p.add_argument('--models', nargs='+', choices=list(MODELS), default=list(MODELS))
    p.add_argument('--backends', nargs='+', choices=('onnxruntime', 'openvino'),
                   default=['onnxruntime', 'openvino'])
    p.add_argument('--threads', type=int, nargs='+', default=[1, 0],
                   help='runtime threads; 0: the runtime\'s default (all cores)')
    p.add_argument('--keep', type=float, nargs='+', default=[0.5, 0.3],
                   help='random-gate exports keeping this share of each group\'s channels')
    p.add_argument('--rounds', type=int, default=7)
    p.add_argument('--repeats', type=int, default=10, help='timed runs per variant and round')
    p.add_argument('--quick', action='store_true', help='2 rounds of 3 (smoke run)')
    return p.parse_args(argv)


def variants(name: str, work_dir: str, keep) -> list:
    """``[(label, config, checkpoint, flops_ratio)]``: the baseline and the random-gate
    exports (made once, reused)."""
    from tools.prune import main as prune_main
    config, _ = MODELS[name]
    stem = osp.splitext(osp.basename(config))[0]
    out = [('baseline', config, None, 1.0)]
    for k in keep:
        d = osp.join(work_dir, name, f'random_keep{k}')
        if not osp.isfile(osp.join(d, 'prune_report.json')):
            rc = prune_main([config, '--random-gates', str(1 - k), '--seed', '0',
                             '--out-dir', d, '--force'])
            if rc:
                raise RuntimeError(f'tools/prune.py failed for {name} keep {k}')
        report = json.load(open(osp.join(d, 'prune_report.json')))
        out.append((f'random gates, keep {k}', osp.join(d, f'{stem}_pruned.py'),
                    osp.join(d, f'{stem}_pruned.pth'), report['flops_ratio']))
    return out


def deployed(work_dir: str, config: str, ckpt, backend: str) -> str:
    """The deployed model of ``config`` in ``work_dir`` (exported once, reused)."""
    from gdp_det import deploy
    if not osp.isfile(osp.join(work_dir, deploy.DEPLOY_INFO)):
        deploy.export_model(config, ckpt, backend, work_dir, force=True)
    return work_dir


class Runner:
    """One runtime session of a deployed model: ``run()`` is one inference of the fixed
    input tensor (outputs fetched); ``profile()`` the share of time per op type."""

    def __init__(self, work_dir: str, backend: str, threads: int, shape,
                 profile: bool = False):
        from gdp_det import deploy
        self.backend, self.work_dir, self.threads = backend, work_dir, threads
        self.x = np.random.RandomState(0).randn(1, 3, *shape).astype(np.float32)
        if backend == 'onnxruntime':
            import onnxruntime as ort
            self.sess = ort.InferenceSession(osp.join(work_dir, deploy.ONNX_FILE),
                                             self._ort_options(threads),
                                             providers=['CPUExecutionProvider'])
            self.run = lambda: self.sess.run(None, {'input': self.x})
        else:
            import openvino as ov
            core = ov.Core()
            config = dict(deploy.OPENVINO_CPU_CONFIG, PERFORMANCE_HINT='LATENCY',
                          PERF_COUNT=profile)
            if threads:
                config['INFERENCE_NUM_THREADS'] = threads
            self.compiled = core.compile_model(
                core.read_model(osp.join(work_dir, deploy.OPENVINO_FILE)), 'CPU', config)
            self.request = self.compiled.create_infer_request()
            self.run = lambda: self.request.infer({0: self.x})

    @staticmethod
    def _ort_options(threads: int, profile: bool = False):
        import onnxruntime as ort
        from mmdeploy.backend.onnxruntime.init_plugins import get_ops_path
        so = ort.SessionOptions()
        if osp.exists(get_ops_path()):  # mmdeploy's custom ops, as its ORTWrapper loads them
            so.register_custom_ops_library(get_ops_path())
        so.intra_op_num_threads = threads
        so.inter_op_num_threads = 1
        so.enable_profiling = profile
        if profile:
            so.profile_file_prefix = 'ort_profile'
        return so

    def profile(self, runs: int = 10) -> dict:
        """``{op type: share of the summed op time}`` over ``runs`` inferences."""
        totals = {}
        if self.backend == 'onnxruntime':
            import onnxruntime as ort
            from gdp_det import deploy
            cwd = os.getcwd()
            os.chdir(self.work_dir)
            try:
                sess = ort.InferenceSession(deploy.ONNX_FILE,
                                            self._ort_options(self.threads, True),
                                            providers=['CPUExecutionProvider'])
                for _ in range(runs):
                    sess.run(None, {'input': self.x})
                trace = json.load(open(sess.end_profiling()))
            finally:
                os.chdir(cwd)
            for ev in trace:
                if ev.get('cat') == 'Node' and ev['name'].endswith('_kernel_time'):
                    op = ev.get('args', {}).get('op_name', '?')
                    totals[op] = totals.get(op, 0) + ev['dur']
        else:
            for _ in range(runs):
                self.request.infer({0: self.x})
                for info in self.request.profiling_info:
                    totals[info.node_type] = (totals.get(info.node_type, 0)
                                              + info.real_time.total_seconds())
        total = sum(totals.values()) or 1
        return {k: v / total for k, v in sorted(totals.items(), key=lambda kv: -kv[1])}


def time_interleaved(runners: dict, rounds: int, repeats: int) -> dict:
    """Median latency (ms) of each runner, the runners interleaved round by round."""
    times = {k: [] for k in runners}
    for r in runners.values():
        for _ in range(3):  # warm-up
            r.run()
    for _ in range(rounds):
        for k, r in runners.items():
            for _ in range(repeats):
                t = time.perf_counter()
                r.run()
                times[k].append((time.perf_counter() - t) * 1e3)
    return {k: statistics.median(v) for k, v in times.items()}


def section_rows(results: dict, args) -> list:
    rows = ['| model | runtime | threads | variant | FLOPs ratio | latency (ms) | speed-up | '
            'speed-up x FLOPs ratio |', '|---|---|---|---|---|---|---|---|']
    for row in results['rows']:
        rows.append(f"| {row['model']} @{row['size']} | {row['backend']} | "
                    f"{row['threads'] or 'all'} | {row['variant']} | {row['flops_ratio']:.3f} | "
                    f"{row['ms']:.2f} | {row['speedup']:.2f}x | {row['quotient']:.2f} |")
    rows += ['', 'Where the time goes in the most pruned export (share of the summed op time, '
             'top 6 op types):', '']
    for key, shares in results['profiles'].items():
        top = ', '.join(f'{op} {s:.0%}' for op, s in list(shares.items())[:6])
        rows.append(f'- {key}: {top}')
    rows += ['', 'Normalised image tensor in, detections out (post-processing and NMS in the '
             'graph), batch 1, static shape; random weights (latency does not depend on them). '
             '"random gates, keep k": tools/prune.py --random-gates 1-k exports (every group '
             'keeps a random share k of its channels), stand-ins for GDP exports at those '
             'widths; GDP at a FLOPs / latency budget and Torch-Pruning L1 are not measured '
             'yet. Speed-up x FLOPs ratio is 1 when the runtime turns the FLOPs cut fully into '
             'speed. Wall-clock medians of '
             f"{args.rounds} interleaved rounds of {args.repeats} runs. Machine: "
             f"{results['machine']}, load average {results['load_average']} at the start "
             '(other jobs share the cores: \'all\' threads then wait for busy cores and is '
             'slower than 1 thread). Command: `python tools/benchmark_deploy.py` '
             f"({results['date']}); numbers in `benchmarks/deploy.json`."]
    return rows


@tool_main
def main(argv=None) -> int:
    args = parse_args(argv)
    if args.quick:
        args.rounds, args.repeats = 2, 3
    from gdp_det import deploy
    for backend in args.backends:
        deploy.require(backend)
    check_writable_dir(args.work_dir, 'work directory')
    check_writable_dir(osp.dirname(osp.abspath(args.json)), 'directory of --json')
    from mmdet.utils import register_all_modules
    register_all_modules()
    import importlib.metadata as md
    results = dict(rows=[], profiles={}, date=time.strftime('%Y-%m-%d'),
                   load_average=round(os.getloadavg()[0], 1),
                   machine=f'{platform.processor() or platform.machine()}, {os.cpu_count()} '
                   f'cores, ' + ', '.join(f'{p} {md.version(p)}' for p in args.backends))
    for name in args.models:
        size = MODELS[name][1]
        models = variants(name, args.work_dir, args.keep)
        for backend in args.backends:
            dirs = {label: deployed(osp.join(args.work_dir, name, label.replace(' ', '_')
                                             .replace(',', ''), backend), cfg, ckpt, backend)
                    for label, cfg, ckpt, _ in models}
            for threads in args.threads:
                shape = deploy.load_deployed(dirs['baseline'])[2]['input_dims'][2:]
                runners = {label: Runner(d, backend, threads, shape) for label, d in dirs.items()}
                ms = time_interleaved(runners, args.rounds, args.repeats)
                for label, _, _, flops in models:
                    speedup = ms['baseline'] / ms[label]
                    results['rows'].append(dict(
                        model=name, size=size, backend=backend, threads=threads,
                        variant=label, flops_ratio=flops, ms=ms[label], speedup=speedup,
                        quotient=speedup * flops))
                    print(results['rows'][-1], flush=True)
            last = models[-1][0]
            key = f'{name} {last}, {backend}, 1 thread'
            results['profiles'][key] = Runner(dirs[last], backend, 1, shape,
                                                      profile=True).profile()
    from gdp_det.files import atomic_write
    atomic_write(args.json, json.dumps(results, indent=2) + '\n')
    from gdp_det.pipeline.report import update_sections
    rows = section_rows(results, args)
    update_sections(args.out, [(SECTION, rows)])
    print('\n'.join(rows))
    return 0


if __name__ == '__main__':
    sys.exit(main())
