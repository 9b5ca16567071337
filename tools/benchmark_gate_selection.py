#!/usr/bin/env python
"""How well GDP's gates pick channels, on a toy loss whose answer is known.

    python tools/benchmark_gate_selection.py [--out benchmarks/RESULTS.md]
        [--seeds 16] [--noise 0.1 0.3 1.0] [--iters 120]

Every setting runs ``GDPHook`` (flops_target 0.5) on a small gated conv chain whose
channels each have a known need; the loss ``sum_c need_c (1 - g_c)^2 / 2`` gets fresh
Gaussian noise on ``dL/dg`` every iteration (one batch's estimate) and reaches the
gates through ``g = a^2 / (a^2 + eps)`` (gdp_det.testing.selection_quality). The
score is the need lost by the cut channels on a scale where 0 is the best possible
choice of as many channels and 1 is chance: mean ± std over seeds, per noise level.
No detector and no data: this isolates the gate dynamics (which channels the
schedule lets the loss protect), not what training around them recovers.
"""
import os.path as osp
import sys
import time

import numpy as np

sys.path.insert(0, osp.dirname(osp.dirname(osp.abspath(__file__))))
from gdp_det.cli import ArgumentParser, check_writable_dir, tool_main  # noqa: E402

REPO = osp.dirname(osp.dirname(osp.abspath(__file__)))
SECTION = '(n) Gate selection on a toy loss with known channel needs'
SOFT = dict(eps_start=1.0, eps_end=1e-4)
# the cut in the first half of the run at lambda's full rate (the default until RESULTS (x))
HALF = dict(lambda_span=0.5, cut_rate_factor=1.0)
QUARTER = dict(lambda_span=0.25, cut_rate_factor=1.0)  # the same in the first quarter
PLAIN = dict(grad_momentum=0.0)  # one batch's gradient: the defaults before issue 13
SETTINGS = [  # (label, GDPHook arguments)
    ('no gate momentum, cut in the first half (the defaults before issue 13)',
     dict(PLAIN, **HALF)),
    ('gate gradient momentum 0.9, cut in the first half (the default before RESULTS (x))',
     HALF),
    ('no momentum, cut in the first quarter (lambda_span 0.25)', dict(PLAIN, **QUARTER)),
    ('momentum, cut in the first quarter (lambda_span 0.25)', QUARTER),
    ('momentum, gentle cut (lambda_span 0.25, cut_rate_factor 1/3: default)', {}),
    ('no momentum, gate_lr 0.03', dict(PLAIN, gate_lr=0.03, **HALF)),
    ('no momentum, eps 1e-1 -> 1e-6', dict(PLAIN, eps_start=0.1, **HALF)),
    ('no momentum, eps 1 -> 1e-4', dict(PLAIN, **SOFT, **HALF)),
    ('momentum, eps 1 -> 1e-4', dict(SOFT, **HALF)),
    ('momentum, eps 10 -> 1e-4', dict(eps_start=10.0, eps_end=1e-4, **HALF)),
]


def run(settings, noises, seeds: int, iters: int):
    from gdp_det.hooks import GDPHook
    from gdp_det.testing import selection_quality, toy_gated_net
    rows = []
    for label, kwargs in settings:
        cells = []
        for noise in noises:
            q = [selection_quality(GDPHook(flops_target=0.5, export=False, **kwargs),
                                   toy_gated_net(), noise, seed, iters)['quality']
                 for seed in range(seeds)]
            cells.append((float(np.mean(q)), float(np.std(q, ddof=1))))
        rows.append((label, kwargs, cells))
    return rows


def markdown(rows, noises, seeds: int, iters: int, command: str):
    head = ' | '.join(f'noise {n:g}' for n in noises)
    lines = [f'Command: `{command}`', '',
             f'Toy conv chain 3-32-64-64-4 (gdp_det.testing.toy_gated_net), {iters} '
             f'iterations, flops_target 0.5, {seeds} seeds; score 0 = the best channels '
             'for the budget, 1 = chance (mean ± std over seeds; lower is better). The '
             'noise is the std of one iteration\'s dL/dg against needs of mean 1.', '',
             f'| setting | GDPHook arguments | {head} |',
             '|---|---|' + '---|' * len(noises)]
    for label, kwargs, cells in rows:
        args = ', '.join(f'{k}={v:g}' for k, v in kwargs.items()) or '—'
        lines.append(f'| {label} | {args} | '
                     + ' | '.join(f'{m:.2f} ± {s:.2f}' for m, s in cells) + ' |')
    return lines


@tool_main
def main(argv=None):
    p = ArgumentParser(description=__doc__)
    p.add_argument('--out', default=osp.join(REPO, 'benchmarks', 'RESULTS.md'))
    p.add_argument('--seeds', type=int, default=16)
    p.add_argument('--noise', type=float, nargs='+', default=[0.1, 0.3, 1.0])
    p.add_argument('--iters', type=int, default=120)
    args = p.parse_args(argv)
    if args.seeds < 2 or args.iters < 10 or any(n < 0 for n in args.noise):
        p.error('--seeds must be at least 2, --iters at least 10, --noise >= 0')
    check_writable_dir(osp.dirname(osp.abspath(args.out)), 'directory of --out')
    import torch
    saved = torch.get_num_threads()
    torch.set_num_threads(1)  # (restored: a caller in the same process keeps its own)
    t0 = time.time()
    try:
        rows = run(SETTINGS, args.noise, args.seeds, args.iters)
    finally:
        torch.set_num_threads(saved)
    from gdp_det.pipeline.report import update_sections
    command = 'python tools/benchmark_gate_selection.py ' + ' '.join(
        sys.argv[1:] if argv is None else argv)
    lines = markdown(rows, args.noise, args.seeds, args.iters, command.strip())
    update_sections(args.out, [(SECTION, lines)])
    print('\n'.join(lines))
    print(f'[gate-selection] wrote {args.out} ({SECTION[:3]}) in {time.time() - t0:.0f} s')
    return 0


if __name__ == '__main__':
    sys.exit(main())
