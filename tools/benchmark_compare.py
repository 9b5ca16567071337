#!/usr/bin/env python
"""Compare pruning methods at equal FLOPs and at equal measured latency, over seeds.

    python tools/benchmark_compare.py [CONFIG] --work-dir work_dirs/compare \
        [--data data/toyvoc] [--val-data data/toyvoc_val1000] [--baseline-checkpoint CKPT] \
        [--methods ...] [--budgets 0.5 0.3] [--seeds 0 1 2] [--epochs 3] [--dry-run]

Trains on --data's trainval split, stops the baseline on --data's test split (the
tuning split: the defaults were tuned on it) and reports on --val-data's test split
(generated with --num-val images and --val-seed when missing); with --config-data on the
config's own train / val / test dataloaders. Every method starts from
the same converged baseline and trains --epochs epochs after it on the same schedule
(gdp_det.benchmark.compare). Rerunning the command skips the finished runs. Writes
--out (compare.json, every run), section (e) of --results, the Pareto plot --plot and,
with --readme, the README's summary and verdicts generated from the same data.

With --part a run writes only --out: one part of a comparison collected over several
sessions (a seed or two, from a baseline of its own, --baseline-seed); --merge PART...
combines the parts into one comparison (gdp_det.benchmark.compare_merge) and writes
everything above, training nothing.
"""
import argparse
import os
import os.path as osp
import sys

sys.path.insert(0, osp.dirname(osp.dirname(osp.abspath(__file__))))
import gdp_det  # noqa: E402
gdp_det.compat.apply()  # torch.load of mmengine checkpoints, mmdet:: configs, VOCMetric
from gdp_det.cli import (ArgumentParser, DictAction, UserError,  # noqa: E402
                         check_writable_dir, load_config, tool_main)
from gdp_det.pipeline.report import add_readme_argument, check_readme  # noqa: E402

REPO = osp.dirname(osp.dirname(osp.abspath(__file__)))
DEFAULT_CONFIG = osp.join(REPO, 'configs', 'toy', 'retinanet_r18_fpn_toyvoc.py')
SECTION = '(e) Accuracy at equal FLOPs and equal latency: GDP vs other pruners'
# the sections this one replaces (the one-run comparison before issue 13)
OLD_SECTIONS = ('(e) Accuracy at equal FLOPs: GDP vs magnitude and BN-scale pruning',)
README_BLOCK = 'generated from benchmarks/compare.json'
# the comparison on each detector (issue 22), summed up in one README table (its block)
DETECTOR_COMPARISONS = ('benchmarks/compare.json', 'benchmarks/compare_frcnn.json',
                        'benchmarks/compare_rtmdet.json')
OVERVIEW_BLOCK = 'generated from the comparison on each detector'
TEST_LIST = osp.join('VOC2007', 'ImageSets', 'Main', '{}.txt')


def _datasets(ds):
    """A dataset config and, through wrappers, the ones it wraps."""
    yield ds
    for inner in ([ds['dataset']] if 'dataset' in ds else []) + list(ds.get('datasets', [])):
        yield from _datasets(inner)


def point_data(cfg, data: str, val_data: str):
    """``cfg`` training on ``data``, validating (tuning) on its test split and testing on
    ``val_data``'s test split."""
    import copy
    cfg.test_dataloader = copy.deepcopy(cfg.val_dataloader)
    cfg.test_evaluator = copy.deepcopy(cfg.val_evaluator)
    for loader, root, ev in (('train_dataloader', data, None),
                             ('val_dataloader', data, 'val_evaluator'),
                             ('test_dataloader', val_data, 'test_evaluator')):
        root = osp.abspath(root).rstrip('/') + '/'
        for ds in _datasets(cfg[loader].dataset):
            if 'data_root' in ds:
                ds.data_root = root
        if ev and cfg[ev].get('type') == 'CocoMetric':
            cfg[ev].ann_file = osp.join(root, 'annotations', 'instances_test.json')
    return cfg


def ensure_data(root: str, num_train: int, num_val: int, seed: int, log=print) -> None:
    if osp.isfile(osp.join(root, TEST_LIST.format('test'))):
        return
    from gdp_det.datasets.toy_voc import make_toy_voc
    check_writable_dir(root, 'data directory')
    log(f'[compare] generating {root}: {num_train} train / {num_val} test images, seed {seed}')
    make_toy_voc(root, num_train=num_train, num_val=num_val, seed=seed, coco=True)


def readme_block(out: str) -> str:
    """The README block of the comparison written to ``out`` (each JSON has its own:
    ``README_BLOCK`` for the default ``benchmarks/compare.json``)."""
    path = osp.abspath(out)
    inside = path.startswith(osp.join(REPO, ''))
    return f'generated from {osp.relpath(path, REPO) if inside else osp.basename(path)}'


def in_overview(out: str) -> bool:
    """Whether the comparison written to ``out`` is one of README's overview table."""
    return osp.abspath(out) in {osp.join(REPO, p) for p in DETECTOR_COMPARISONS}


def overview_data(repo: str = REPO) -> list:
    """The content of each of ``DETECTOR_COMPARISONS`` that exists, in that order."""
    import json
    paths = [osp.join(repo, p) for p in DETECTOR_COMPARISONS]
    return [json.load(open(p)) for p in paths if osp.isfile(p)]


def _count(root: str, split: str, default: int) -> int:
    path = osp.join(root, TEST_LIST.format(split))
    return sum(1 for line in open(path) if line.strip()) if osp.isfile(path) else default


@tool_main
def main(argv=None):
    p = ArgumentParser(description=__doc__)
    p.add_argument('config', nargs='?', help=f'default: {osp.relpath(DEFAULT_CONFIG, REPO)}')
    p.add_argument('--work-dir', default=osp.join(REPO, 'work_dirs', 'compare'))
    p.add_argument('--data', default=osp.join(REPO, 'data', 'toyvoc'),
                   help='training set (trainval) and tuning split (test); made as `make demo` '
                   'does when missing')
    p.add_argument('--val-data', default=osp.join(REPO, 'data', 'toyvoc_val1000'),
                   help='its test split is the report split; generated when missing')
    p.add_argument('--config-data', action='store_true',
                   help="the config's own data instead: train, val (tuning) and test (report) "
                   'dataloaders as it defines them (e.g. VOC07+12 / VOC07 test)')
    p.add_argument('--num-val', type=int, default=1000)
    p.add_argument('--val-seed', type=int, default=1, help="not the demo data's seed 0")
    p.add_argument('--baseline-checkpoint', help='start of the convergence stage instead of '
                   "training the config's schedule")
    p.add_argument('--patience', type=int, default=3, help='epochs without a better tuning '
                   'mAP that end the baseline (0: use the start as it is)')
    p.add_argument('--converge-max-epochs', type=int, default=30)
    p.add_argument('--methods', nargs='+', help='default: all')
    p.add_argument('--budgets', nargs='+', type=float, default=[0.5, 0.3])
    p.add_argument('--seeds', nargs='+', type=int, default=[0, 1, 2])
    p.add_argument('--epochs', type=int, default=3, help='training epochs after the baseline')
    p.add_argument('--gdp-epochs', type=int, default=3,
                   help='of them in the GDP phase (the rest: fine-tune after its export)')
    p.add_argument('--lr-factor', type=float, default=0.1)
    p.add_argument('--latency-repeats', type=int, default=20)
    p.add_argument('--threads', type=int, default=1, help='threads of the latency runs')
    p.add_argument('--latency-backend', default='torch',
                   choices=('torch', 'onnxruntime', 'openvino'),
                   help="where latency is measured: torch's forward, or every model deployed "
                   "end to end to that runtime (GDP's latency budgets then measured there)")
    p.add_argument('--latency-images', type=int, default=8, metavar='N',
                   help='deployed models are timed on the first N images of the test split '
                   '(per image), so that the work that depends on the image (proposals, NMS) '
                   "is a real image's")
    p.add_argument('--distill', type=float, default=0.0, metavar='WEIGHT',
                   help='every training after the baseline (every method) distils from the '
                   'baseline with this weight (gdp_det.distill.DistillHook; 0: none)')
    p.add_argument('--out', default=osp.join(REPO, 'benchmarks', 'compare.json'))
    p.add_argument('--results', default=osp.join(REPO, 'benchmarks', 'RESULTS.md'))
    p.add_argument('--plot', default=osp.join(REPO, 'benchmarks', 'compare_pareto.png'))
    add_readme_argument(p, README_BLOCK)  # (the block named after --out)
    p.add_argument('--section', default=SECTION, help='the section of --results it writes '
                   '(e.g. a tuning run of GDP variants beside the comparison)')
    p.add_argument('--tuning', action='store_true',
                   help='the report split is one the GDP defaults are chosen on (a run of GDP '
                   'variants): the section says so')
    p.add_argument('--note', help='a paragraph added under the table')
    p.add_argument('--jobs', type=int, default=1,
                   help='runs at a time, each stream of runs in a process of its own with one '
                   'thread (a 2-core machine: 2); the baseline and the collection run here')
    p.add_argument('--only', nargs='+', metavar='RUN', help=argparse.SUPPRESS)  # one stream
    p.add_argument('--dry-run', action='store_true', help='print the plan and the time left: '
                   "finished runs' mean times, else rough per-image costs scaled by this "
                   "detector's measured baseline")
    p.add_argument('--collect-only', action='store_true',
                   help='run nothing: write the outputs from the runs finished so far')
    p.add_argument('--cfg-options', nargs='+', action=DictAction)
    p.add_argument('--baseline-seed', type=int, help="seed of the baseline's training "
                   "(default: the config's); a part's own seed makes parts independent")
    p.add_argument('--part', action='store_true', help='one part of a comparison trained '
                   'in several sessions (its seeds, its own baseline): write only --out, '
                   'for --merge')
    p.add_argument('--merge', nargs='+', metavar='PART', help='no training: one comparison '
                   'of these --part JSONs (each seed from one part; settings checked equal)'
                   ' written to --out, --results, --plot and --readme')
    args = p.parse_args(argv)
    if args.merge:
        return merge_parts(args, argv)
    args.config = args.config or DEFAULT_CONFIG
    if any(not 0 < b < 1 for b in args.budgets):
        p.error(f'--budgets must be in (0, 1), got {args.budgets}')
    for name in ('epochs', 'num_val', 'latency_repeats', 'threads', 'converge_max_epochs',
                 'jobs', 'latency_images'):
        if getattr(args, name) < 1:
            p.error(f'--{name.replace("_", "-")} must be at least 1, got {getattr(args, name)}')
    if not 1 <= args.gdp_epochs <= args.epochs:
        p.error(f'--gdp-epochs must be in [1, --epochs], got {args.gdp_epochs}')
    if args.baseline_checkpoint and not osp.isfile(args.baseline_checkpoint):
        raise UserError(f'baseline checkpoint not found: {args.baseline_checkpoint}')
    if args.latency_backend != 'torch' and not args.dry_run:
        from gdp_det.deploy import require
        require(args.latency_backend)
    from mmdet.utils import register_all_modules
    from gdp_det.benchmark import compare as C
    register_all_modules(init_default_scope=False)
    fields = ('budgets', 'seeds', 'epochs', 'gdp_epochs', 'lr_factor', 'baseline_checkpoint',
              'patience', 'converge_max_epochs', 'latency_repeats', 'threads',
              'latency_backend', 'latency_images')
    if args.distill < 0:
        p.error(f'--distill must be >= 0, got {args.distill}')
    settings = C.Settings(**{k: getattr(args, k) for k in fields}, distill_weight=args.distill,
                          baseline_seed=args.baseline_seed,
                          extra=dict(config=args.config, val_seed=args.val_seed))
    if args.methods:
        settings.methods = args.methods
    try:
        runs, skipped = C.make_plan(settings)
    except ValueError as e:
        raise UserError(str(e))
    for s in skipped:  # said before hours of runs, not only in the collected results
        print(f'[compare] skipped {s["method"]}: {s["reason"]}')
    if args.dry_run:
        return dry_run(args, settings, runs)
    cfg = load_config(args.config, args.cfg_options)
    for path in (args.out, args.results, args.plot):
        check_writable_dir(osp.dirname(osp.abspath(path)), f'directory of {path}')
    check_outputs(args)
    if not args.config_data:
        if osp.abspath(args.data) == osp.abspath(args.val_data):
            print('[compare] warning: --val-data is --data: the report split is the tuning split')
        ensure_data(args.data, 480, 120, 0)
        ensure_data(args.val_data, 0, args.num_val, args.val_seed)
        cfg = point_data(cfg, args.data, args.val_data)
    comparison = C.Comparison(cfg, args.work_dir, settings)
    n_train, n_test = _count(args.data, 'trainval', 480), _count(args.val_data, 'test', 1000)

    def estimate(run, done):
        return C.estimate_seconds(run, settings, n_train, n_test, done,
                                  C.cost_scale(comparison.work_dir, n_test))
    if args.only:  # one stream of --jobs: its runs, no collection
        runs = [r for r in runs if r.name in args.only]
        return 1 if C.execute(runs, comparison.work_dir, comparison.run, estimate) else 0
    if args.collect_only:
        failed = []
    elif args.jobs > 1:
        comparison.baseline()  # once, before the streams share it
        failed = run_streams(comparison, runs, args.jobs, argv)
    else:
        failed = C.execute(runs, comparison.work_dir, comparison.run, estimate)
    write_outputs(C.collect(comparison, runs, skipped, failed), args, argv)
    return 1 if failed else 0


def check_outputs(args) -> None:
    """Before hours of runs: the README blocks that --out's results go to exist."""
    if args.part:
        return
    check_readme(args.readme, readme_block(args.out))
    if in_overview(args.out):
        check_readme(args.readme, OVERVIEW_BLOCK)


def merge_parts(args, argv) -> int:
    from gdp_det.benchmark.compare_merge import merge
    from gdp_det.cli import load_json
    if args.part or args.config:
        raise UserError('--merge takes no CONFIG and no --part: it only combines the JSONs '
                        'that runs with --part wrote')
    parts = [(repo_relative(osp.abspath(p)), load_json(p, '--merge part')) for p in args.merge]
    check_outputs(args)
    try:
        data = merge(parts)
    except ValueError as e:
        raise UserError(str(e))
    write_outputs(data, args, argv)
    return 0


def run_streams(comparison, runs, jobs: int, argv) -> list:
    """The unfinished ``runs`` in ``jobs`` streams (:func:`gdp_det.benchmark.compare.streams`),
    each this command again with ``--only`` its runs, one thread, its log in
    ``<work_dir>/streams/``; returns the runs that did not finish."""
    import subprocess
    from gdp_det.benchmark import compare as C
    todo = [r for r in runs if not osp.isfile(C.result_path(comparison.work_dir, r))]
    env = dict(os.environ, OMP_NUM_THREADS='1', MKL_NUM_THREADS='1')
    log_dir = osp.join(comparison.work_dir, 'streams')
    os.makedirs(log_dir, exist_ok=True)
    base_argv = list(sys.argv[1:] if argv is None else argv) + ['--jobs', '1']
    procs = []
    for i, stream in enumerate(C.streams(todo, jobs)):
        log = osp.join(log_dir, f'stream{i}.log')
        print(f'[compare] stream {i}: {len(stream)} runs, log {log}', flush=True)
        with open(log, 'a') as f:
            procs.append(subprocess.Popen(
                [sys.executable, osp.abspath(__file__)] + base_argv
                + ['--only'] + [r.name for r in stream], env=env, stdout=f,
                stderr=subprocess.STDOUT))
    for proc in procs:
        proc.wait()
    return [r.name for r in todo if not osp.isfile(C.result_path(comparison.work_dir, r))]


def dry_run(args, settings, runs) -> int:
    from gdp_det.benchmark import compare as C
    from gdp_det.pipeline import stage_result
    n_train, n_test = _count(args.data, 'trainval', 480), _count(args.val_data, 'test', 1000)
    work_dir = osp.abspath(args.work_dir)
    done = C.load_results(work_dir, runs)
    finished = {r['run'] for r in done}
    scale = C.cost_scale(work_dir, n_test, unmeasured=None)
    source = "measured on this comparison's baseline"
    if scale is None and osp.abspath(args.config) != DEFAULT_CONFIG:
        from gdp_det.benchmark.cost_probe import probe_cost_scale
        scale = probe_cost_scale(load_config(args.config, args.cfg_options),
                                 load_config(DEFAULT_CONFIG))
        source = 'probed now on demo batches (its baseline not trained yet)'
    if not done:
        print("[compare] per-image costs: the toy RetinaNet's" + (
            '' if scale is None else f' x {scale[0]:.2f} (training), x {scale[1]:.2f} '
            f'(evaluation), {source}') + '; seconds of the machine they were measured on '
              '(the finished runs of this comparison correct them)')
    scale = scale or (1.0, 1.0)
    per_image = C.BASELINE_TRAIN_S_PER_IMAGE * scale[0]
    base = 0 if args.baseline_checkpoint else 16 * n_train * per_image
    if settings.patience > 0:  # the convergence stage runs only with a patience
        base += settings.converge_max_epochs * n_train * per_image
    base = 0 if stage_result(work_dir, 'baseline_eval') else base
    print(f'[compare] baseline: {"done" if not base else f"up to {C.hms(base)}"}')
    seconds = {}
    for r in runs:
        t = 0 if r.name in finished else C.estimate_seconds(r, settings, n_train, n_test,
                                                             done, scale)
        seconds[r.name] = t
        print(f'[compare] {r.name:32s} {"done" if not t else "~" + C.hms(t)}')
    todo = [r for r in runs if r.name not in finished]
    # the streams run side by side (one thread each): the longest one sets the time
    total = base + max([sum(seconds[r.name] for r in st) for st in C.streams(todo, args.jobs)],
                       default=0)
    print(f'[compare] {len(runs)} runs, {len(finished)} finished; estimated time left '
          f'{C.hms(total)} with {args.jobs} stream(s) (the baseline at its longest)')
    return 0


def repo_relative(data, root: str = REPO):
    """``data`` with every absolute path under ``root`` made relative to it: the stored
    results do not name the machine they ran on."""
    if isinstance(data, dict):
        return {k: repo_relative(v, root) for k, v in data.items()}
    if isinstance(data, list):
        return [repo_relative(v, root) for v in data]
    if isinstance(data, str) and data.startswith(osp.join(root, '')):
        return osp.relpath(data, root)
    return data


def write_outputs(data: dict, args, argv) -> None:
    import json
    import re
    import shlex
    from gdp_det.benchmark.compare_summary import (markdown, overview_lines, plot_pareto,
                                                   readme_lines)
    from gdp_det.files import atomic_write
    from gdp_det.pipeline.report import replace_marked, update_sections
    data = repo_relative(data)
    atomic_write(args.out, json.dumps(data, indent=2))
    if args.part:
        print(f'[compare] wrote {args.out} (a part: merge it with --merge)')
        return
    if osp.isfile(args.results) and args.section == SECTION:
        text = open(args.results).read()
        for title in OLD_SECTIONS:
            text = re.sub(rf'^## {re.escape(title)}\n.*?(?=^## |\Z)', '', text, flags=re.M | re.S)
        atomic_write(args.results, text)
    command = 'python tools/benchmark_compare.py ' + shlex.join(
        sys.argv[1:] if argv is None else argv)
    lines = markdown(data, command.strip(), tuning=args.tuning)
    note = ['', args.note] if args.note else []
    update_sections(args.results, [(args.section, lines + note)])
    if data['runs']:
        plot_pareto(data, args.plot)
    if args.readme:
        replace_marked(args.readme, readme_block(args.out), readme_lines(data))
        if in_overview(args.out):
            replace_marked(args.readme, OVERVIEW_BLOCK, overview_lines(overview_data()))
    print(f'[compare] wrote {args.out}, {args.results} ({args.section[:3]}), {args.plot}')


if __name__ == '__main__':
    sys.exit(main())
