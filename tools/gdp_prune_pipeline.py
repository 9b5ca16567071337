#!/usr/bin/env python
"""The whole GDP job on one mmdet config, resumable stage by stage.

    python tools/gdp_prune_pipeline.py CONFIG --flops-target 0.5 --work-dir DIR \
        [--baseline-checkpoint CKPT] [--gdp-epochs 4] [--finetune-epochs 2]

Stages: baseline training (skipped with --baseline-checkpoint) -> GDP phase to the
FLOPs budget -> prune + export (lossless, verified) -> optional fine-tune ->
evaluation of baseline and pruned model -> DIR/report.md, report.json and plots.
Rerunning the same command after an interruption skips the finished stages.
Several GPUs: tools/dist_gdp_prune_pipeline.sh CONFIG GPUS [options] (--launcher pytorch).
"""
import argparse
import os
import os.path as osp
import sys

sys.path.insert(0, osp.dirname(osp.dirname(osp.abspath(__file__))))
import gdp_det  # noqa: E402
gdp_det.compat.apply()  # torch.load of mmengine checkpoints, mmdet:: configs, VOCMetric
from gdp_det.cli import (ArgumentParser, DictAction, UserError, check_writable_dir,  # noqa: E402
                         load_config, tool_main)


@tool_main
def main(argv=None) -> int:
    p = ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument('config', help='plain mmdet detector config')
    p.add_argument('--flops-target', type=float, default=0.5)
    p.add_argument('--work-dir', required=True)
    p.add_argument('--baseline-checkpoint')
    p.add_argument('--gdp-epochs', type=int, default=4)
    p.add_argument('--finetune-epochs', type=int, default=0)
    p.add_argument('--lambda-rate', type=float, help='default: grow 1e4-fold over half the GDP phase')
    p.add_argument('--gate-lr', type=float, help="the GDPHook's gate step (default 0.1)")
    p.add_argument('--min-channels', type=float, default=1,
                   help='channels each group keeps at least (a share of the group if < 1)')
    p.add_argument('--channel-divisor', type=int, default=1)
    p.add_argument('--lr-factor', type=float, default=0.1,
                   help="GDP and fine-tune phases train at the config's lr times this")
    p.add_argument('--gdp-options', nargs='+', action=DictAction, default={},
                   help='more GDPHook arguments, e.g. cost_power=1 eps_start=1.0')
    p.add_argument('--cfg-options', nargs='+', action=DictAction)
    p.add_argument('--launcher', choices=['none', 'pytorch'], default='none',
                   help='pytorch: every stage under torchrun (tools/dist_gdp_prune_pipeline.sh)')
    # torch.distributed.launch passes --local-rank; torchrun sets LOCAL_RANK
    p.add_argument('--local_rank', '--local-rank', type=int, default=0)
    args = p.parse_args(argv)
    if not 0 < args.flops_target <= 1:
        p.error(f'--flops-target must be in (0, 1], got {args.flops_target}')
    for name, low in (('gdp_epochs', 1), ('finetune_epochs', 0), ('channel_divisor', 1)):
        if getattr(args, name) < low:
            p.error(f'--{name.replace("_", "-")} must be at least {low}, '
                    f'got {getattr(args, name)}')
    if args.lr_factor <= 0:
        p.error(f'--lr-factor must be > 0, got {args.lr_factor}')
    if args.baseline_checkpoint and not osp.isfile(args.baseline_checkpoint):
        raise UserError(f'baseline checkpoint not found: {args.baseline_checkpoint} '
                        '(check the path, or leave the option out to train the baseline)')
    os.environ.setdefault('LOCAL_RANK', str(args.local_rank))
    cfg = load_config(args.config, args.cfg_options)
    check_writable_dir(args.work_dir, '--work-dir')
    from mmdet.utils import register_all_modules
    from gdp_det.pipeline import run_pipeline
    register_all_modules(init_default_scope=False)
    hook = dict(lambda_rate=args.lambda_rate, gate_lr=args.gate_lr,
                min_channels=args.min_channels, channel_divisor=args.channel_divisor)
    hook = {k: v for k, v in hook.items() if v is not None}
    run_pipeline(cfg, args.work_dir, args.flops_target, args.gdp_epochs, args.finetune_epochs,
                 args.baseline_checkpoint, hook={**hook, **args.gdp_options},
                 lr_factor=args.lr_factor, launcher=args.launcher)
    return 0


if __name__ == '__main__':
    sys.exit(main())
