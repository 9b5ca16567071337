#!/usr/bin/env python
"""Prune a GDP-trained detector and export a plain mmdet config + checkpoint.

    python tools/prune.py CONFIG CHECKPOINT --out-dir DIR [--verify]
    python tools/prune.py CONFIG --random-gates 0.5 --seed 0 --verify --out-dir DIR

The second form builds any mmdet config with random init, zeroes a random share
of every group's gates and runs the whole prune/export/reload/verify path.
"""
import argparse
import json
import os.path as osp
import sys

import torch

sys.path.insert(0, osp.dirname(osp.dirname(osp.abspath(__file__))))
import gdp_det  # noqa: E402
gdp_det.compat.apply()  # torch.load of mmengine checkpoints, mmdet:: configs, VOCMetric
from gdp_det.cli import (ArgumentParser, DictAction, UserError,  # noqa: E402
                         build_randomly_initialised, check_state_dict,
                         check_writable_dir, gdp_model_cfg, load_config, load_state_dict,
                         tool_main)


def parse_args(argv=None):
    p = ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument('config', help='GDP training config (or any mmdet config)')
    p.add_argument('checkpoint', nargs='?', help='checkpoint written by GDP training')
    p.add_argument('--out-dir', required=True, help='directory for the export')
    p.add_argument('--verify', action='store_true',
                   help='rebuild the export from disk and compare it with the gated model')
    p.add_argument('--tolerance', type=float, default=1e-4)
    p.add_argument('--random-gates', type=float, metavar='P',
                   help='no checkpoint: zero a random share P of every group\'s gates')
    p.add_argument('--seed', type=int, default=0)
    p.add_argument('--min-channels', type=float, default=1,
                   help='channels each group keeps at least (a share of the group if < 1)')
    p.add_argument('--channel-divisor', type=int, default=1)
    p.add_argument('--input-size', type=int, nargs=2, metavar=('H', 'W'),
                   help='input size for tracing and FLOPs (default: the config\'s)')
    p.add_argument('--exclude', nargs='*', default=[],
                   help='module name prefixes to leave unpruned')
    p.add_argument('--on-unsupported', choices=('keep', 'error'),
                   help='modules the tracer cannot follow: keep their channels unpruned '
                        'with a warning (default, unless the config says otherwise) or stop '
                        'with an error')
    p.add_argument('--force', action='store_true', help='replace an existing export')
    p.add_argument('--cfg-options', nargs='+', action=DictAction)
    return p.parse_args(argv)


def randomize_gates(gates, share: float, seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        a = torch.rand(gates.a.shape, generator=gen) + 0.2
        for sl in gates.group_slices:
            n = sl.stop - sl.start
            drop = torch.randperm(n, generator=gen)[:min(int(round(share * n)), n - 1)]
            a[sl.start + drop] = 0
        gates.a.copy_(a)


@tool_main
def main(argv=None) -> int:
    args = parse_args(argv)
    from mmdet.registry import MODELS
    from mmdet.utils import register_all_modules
    from gdp_det.api import prune_and_export
    from gdp_det.export import check_out_dir
    register_all_modules(init_default_scope=True)
    if args.checkpoint is None and args.random_gates is None:
        raise UserError('give a CHECKPOINT from GDP training, or --random-gates P')
    if args.random_gates is not None and not 0 <= args.random_gates < 1:
        raise UserError('--random-gates must be in [0, 1)')
    cfg = load_config(args.config, args.cfg_options)
    name = osp.splitext(osp.basename(args.config))[0]
    check_writable_dir(args.out_dir)
    check_out_dir(args.out_dir, name, args.force)
    if args.checkpoint:
        state = load_state_dict(args.checkpoint)
    cfg.model = gdp_model_cfg(cfg, args.input_size, args.exclude, args.on_unsupported)
    if args.checkpoint:
        model = MODELS.build(cfg.model)
        check_state_dict(model, state, args.checkpoint, need_gates=args.random_gates is None)
        model.load_state_dict(state, strict=False)
    else:  # mmdet's own random init, no download
        model = build_randomly_initialised(cfg.model, args.seed)
    if args.random_gates is not None:
        randomize_gates(model.gdp_gates, args.random_gates, args.seed)
    try:
        _, report, paths = prune_and_export(
            cfg, model, args.out_dir, name=name, min_channels=args.min_channels,
            channel_divisor=args.channel_divisor, force=args.force, verify=args.verify,
            tolerance=args.tolerance)
    except RuntimeError as e:
        if 'verification failed' in str(e):
            raise UserError(str(e), exit_code=3) from e
        raise
    summary = {k: report[k] for k in ('flops_ratio', 'params_ratio', 'flops_before',
                                      'flops_after', 'params_before', 'params_after')}
    for key in ('max_rel_output_diff', 'verification_skipped'):
        if key in report:
            summary[key] = report[key]
    print(json.dumps(summary, indent=2))
    for p in paths:
        print(f'wrote {p}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
