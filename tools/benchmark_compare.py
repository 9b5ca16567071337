#!/usr/bin/env python
"""Accuracy at equal FLOPs: GDP vs magnitude (L1, L2) and BN-scale channel pruning.

    python tools/benchmark_compare.py --work-dir work_dirs/demo [--epochs N] [--torch-pruning]

Uses the finished pipeline run in ``--work-dir`` (its baseline checkpoint, its GDP
result and FLOPs ratio). The other criteria are the importance scores of
Torch-Pruning's MagnitudeImportance (p=1, p=2; group importance = mean over the
group's producers) and BNScaleImportance (|gamma|), each applied to the same
baseline on the same channel groups with the same per-group keep ratio search
(Torch-Pruning's default, non-global pruning) to the same FLOPs, then fine-tuned for
as many epochs as GDP trained (GDP phase + fine-tune), on the same schedule
(``gdp_det.pipeline.phase_schedule``). With ``--torch-pruning`` the Torch-Pruning
package itself (its DependencyGraph and MetaPruner with the same importances) prunes
the same baseline too. The results replace section (e) of benchmarks/RESULTS.md.
"""
import copy
import os.path as osp
import sys

import numpy as np
import torch

sys.path.insert(0, osp.dirname(osp.dirname(osp.abspath(__file__))))
import gdp_det  # noqa: E402
gdp_det.compat.apply()  # torch.load of mmengine checkpoints, mmdet:: configs, VOCMetric
from gdp_det.cli import (ArgumentParser, UserError, check_writable_dir,  # noqa: E402
                         load_config, load_json, tool_main)

REPO = osp.dirname(osp.dirname(osp.abspath(__file__)))
SECTION = '(e) Accuracy at equal FLOPs: GDP vs magnitude and BN-scale pruning'


def importance(model, group, kind):
    """Per-channel score of one group (higher = keep)."""
    modules = dict(model.named_modules())
    score = torch.zeros(group.size, dtype=torch.float64)
    count = torch.zeros(group.size, dtype=torch.float64)
    members = group.norms.items() if kind == 'bn' else group.producers.items()
    for name, pos in members:
        m = modules[name]
        w = m.weight.detach().double()
        if kind == 'bn':
            s = w.abs()
        else:
            s = w.flatten(1).abs().pow(2 if kind == 'l2' else 1).sum(1)
        sel = torch.as_tensor(pos >= 0)
        score.index_add_(0, torch.as_tensor(pos[pos >= 0]), s[sel])
        count.index_add_(0, torch.as_tensor(pos[pos >= 0]), torch.ones(int(sel.sum()),
                                                                        dtype=torch.float64))
    if kind == 'bn' and count.sum() == 0:  # no BN in this group: fall back to L1
        return importance(model, group, 'l1')
    return score / count.clamp_min(1)


def prune_by_importance(model, kind, target):
    """Gates 1/0 keeping the same share of each group, chosen by importance."""
    from gdp_det.flops import FlopsModel
    graph = model.gdp_gates.graph
    fm = FlopsModel(graph)
    orders = [torch.argsort(importance(model, g, kind), descending=True) for g in graph.groups]

    def alive_for(share):
        alive = torch.zeros(graph.num_channels, dtype=torch.bool)
        for i, g in enumerate(graph.groups):
            k = max(1, int(round(share * g.size)))
            alive[graph.offsets[i] + orders[i][:k]] = True
        return alive
    lo, hi = 0.0, 1.0
    for _ in range(30):
        mid = (lo + hi) / 2
        lo, hi = (lo, mid) if fm.count(alive_for(mid)) / fm.full > target else (mid, hi)
    alive = alive_for(lo)
    with torch.no_grad():
        model.gdp_gates.a.copy_(alive.float())
    return fm.count(alive) / fm.full


def torch_pruning_model(cfg, base: str, kind: str, target: float, input_size):
    """The baseline pruned by the Torch-Pruning package itself (MetaPruner, uniform
    ratio, its own DependencyGraph), the ratio bisected to ``target`` FLOPs as
    counted by tp.utils.count_ops_and_params. Returns (detector, FLOPs ratio)."""
    import torch.nn as nn
    import torch_pruning as tp
    from mmdet.registry import MODELS
    from gdp_det.cli import load_state_dict

    class TensorMode(nn.Module):  # what TP traces: image -> every head output
        def __init__(self, det):
            super().__init__()
            self.det = det

        def forward(self, x):
            return [t for level in self.det._forward(x) for t in level]

    state = load_state_dict(base)

    def pruned(ratio):
        det = MODELS.build(cfg.model)
        det.load_state_dict(state)
        det.eval()
        wrap, x = TensorMode(det), torch.randn(1, 3, *input_size)
        full = tp.utils.count_ops_and_params(wrap, x)[0]
        head = det.bbox_head
        outputs = [m for n, m in head.named_children() if n in ('retina_cls', 'retina_reg',
                                                                 'conv_cls', 'conv_reg')]
        imp = {'l1': tp.importance.GroupMagnitudeImportance(p=1),
               'l2': tp.importance.GroupMagnitudeImportance(p=2),
               'bn': tp.importance.BNScaleImportance()}[kind]
        tp.pruner.MetaPruner(wrap, x, importance=imp, pruning_ratio=ratio,
                             ignored_layers=outputs).step()
        return det, tp.utils.count_ops_and_params(wrap, x)[0] / full

    lo, hi = 0.0, 0.9
    for _ in range(8):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if pruned(mid)[1] > target else (lo, mid)
    return pruned(hi)


@tool_main
def main(argv=None):
    p = ArgumentParser(description=__doc__)
    p.add_argument('--work-dir', required=True, help='a finished gdp_prune_pipeline run')
    p.add_argument('--epochs', type=int, help='fine-tune epochs (default: GDP + fine-tune)')
    p.add_argument('--out', default=osp.join(REPO, 'benchmarks', 'RESULTS.md'))
    p.add_argument('--torch-pruning', action='store_true',
                   help='also run the Torch-Pruning package itself (pip install torch-pruning)')
    args = p.parse_args(argv)
    if args.torch_pruning:
        try:
            import torch_pruning  # noqa: F401
        except ImportError:
            raise UserError('--torch-pruning needs the Torch-Pruning package '
                            '(.venv/bin/pip install torch-pruning==1.6.1)')
    check_writable_dir(osp.dirname(osp.abspath(args.out)), 'directory of --out')
    from mmdet.registry import MODELS
    from mmdet.utils import register_all_modules
    from mmengine.config import Config
    from gdp_det.api import prune_and_export
    from gdp_det.cli import gdp_model_cfg, load_state_dict
    from gdp_det.pipeline import evaluate, phase_schedule, stage, train
    from gdp_det.pipeline.report import update_sections
    register_all_modules()
    work = osp.abspath(args.work_dir)
    what = 'of a finished tools/gdp_prune_pipeline.py run (--work-dir)'
    run = load_json(osp.join(work, 'pipeline.json'), f'pipeline.json {what}')
    base = run.get('baseline_checkpoint') or load_json(
        osp.join(work, 'baseline', 'stage_done.json'), f'baseline stage {what}')['checkpoint']
    report = load_json(osp.join(work, 'report.json'), f'report.json {what}')
    rows = {r['model']: r for r in report['rows']}
    gdp_row = next((r for k, r in rows.items() if k.startswith('GDP pruned +')),
                   rows['GDP pruned (no fine-tune)'])
    target = gdp_row['FLOPs ratio']
    epochs = args.epochs or run['gdp_epochs'] + run['finetune_epochs']
    cfg = load_config(run['config'])
    results = [('baseline', rows['baseline']['mAP'], 1.0), (gdp_row['model'], gdp_row['mAP'],
                                                            target)]
    lr_factor = run.get('lr_factor', 0.1)

    def ours(kind):
        out = osp.join(work, f'compare_{kind}')
        mcfg = copy.deepcopy(cfg)
        mcfg.model = gdp_model_cfg(cfg)
        mcfg.model['input_size'] = tuple(run['input_size'])
        model = MODELS.build(mcfg.model)
        model.load_state_dict(load_state_dict(base), strict=False)
        prune_by_importance(model, kind, target)
        _, rep, paths = prune_and_export(mcfg, model, osp.join(out, 'export'), name=kind,
                                         force=True)
        # the same fine-tune schedule as the pipeline's GDP and fine-tune phases
        fcfg = phase_schedule(Config.fromfile(paths[0]), cfg, epochs, lr_factor)
        fcfg.load_from = paths[1]
        ckpt = train(fcfg, osp.join(out, 'finetune'))
        ev = evaluate(fcfg, ckpt, osp.join(out, 'eval'))
        return dict(mAP=ev['mAP'], ratio=rep['flops_ratio'])

    def theirs(kind):
        from mmengine.runner import Runner
        out = osp.join(work, f'compare_tp_{kind}')
        det, ratio = torch_pruning_model(cfg, base, kind, target, run['input_size'])
        weights = osp.join(out, 'tp_pruned.pth')  # loaded after the runner's init_weights
        torch.save(dict(state_dict=det.state_dict()), weights)
        fcfg = phase_schedule(copy.deepcopy(cfg), cfg, epochs, lr_factor)
        fcfg.work_dir, fcfg.load_from, fcfg.resume = out, weights, False
        runner = Runner.from_cfg(fcfg)
        runner.model = det  # the TP-pruned module (no config can rebuild it)
        runner.train()
        metrics = runner.test()
        key = next(k for k in metrics if k.endswith('mAP'))
        return dict(mAP=float(metrics[key]), ratio=ratio)

    for kind, label in (('l1', 'L1 magnitude'), ('l2', 'L2 magnitude'), ('bn', 'BN scale')):
        r = stage(work, f'compare_{kind}', lambda: ours(kind))
        results.append((f'{label} + {epochs} ep fine-tune', r['mAP'], r['ratio']))
    kinds = (('l1', 'GroupMagnitudeImportance(p=1)'), ('l2', 'GroupMagnitudeImportance(p=2)'),
             ('bn', 'BNScaleImportance'))
    for kind, label in kinds if args.torch_pruning else ():
        r = stage(work, f'compare_tp_{kind}', lambda: theirs(kind))
        results.append((f'Torch-Pruning 1.6 MetaPruner, {label} + {epochs} ep fine-tune',
                        r['mAP'], r['ratio']))
    rows = [f'Toy VOC val mAP@0.5, RetinaNet R18-FPN; command: `python tools/benchmark_compare.py '
            f'--work-dir {args.work_dir}` after the pipeline run there. Criteria as '
            "Torch-Pruning's MagnitudeImportance / BNScaleImportance on the same channel groups, "
            'uniform per-group ratio to the same FLOPs, fine-tuned on the same schedule.', '',
            '| method | FLOPs ratio | mAP |', '|---|---|---|']
    rows += [f'| {m} | {r:.3f} | {a:.4f} |' for m, a, r in results]
    print(update_sections(args.out, [(SECTION, rows)]))


if __name__ == '__main__':
    sys.exit(main())
