#!/usr/bin/env python
"""Training cost of the GDP phase before and after the in-place shrink, in one run.

    python tools/benchmark_shrink.py [--out benchmarks/shrink_speed.json] [--threads 1]
        [--flops-target 0.5] [--images 96] [--epochs 3] [--size 224] [--rounds 10]
        [--cut-at 0.3]

Trains the toy RetinaNet R18-FPN (``configs/gdp/toy/gdp_retinanet_r18_fpn_toyvoc.py``,
randomly initialised: the cost does not depend on the weights) on a generated toy VOC
set with ``GDPHook(shrink_after_cut=True)`` and a cut early in the run, timing every
training iteration from ``before_train_iter`` to the end of ``after_train_iter`` (the
forward, backward, optimizer step and the gates' step; data loading excluded). Those
times follow the machine's load (other processes on the cores), so the ratios come
from an interleaved measurement after the run, on one batch of the run's data: one
``train_step`` (forward, backward, AdamW step) in turn of the gated model at full
width (the state before the shrink: the run's model in the traced layout), of the
shrunk gated model and of the export (the plain pruned detector, what a fine-tune
trains), ``--rounds`` rounds after a warm-up round, medians. The run's own medians
before and after the shrink are reported beside them (the first two iterations after
a change of shapes, when oneDNN builds its kernels, and the shrink's own iteration
left out).
"""
import copy
import json
import os.path as osp
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, osp.dirname(osp.dirname(osp.abspath(__file__))))
from gdp_det.cli import ArgumentParser, tool_main  # noqa: E402

REPO = osp.dirname(osp.dirname(osp.abspath(__file__)))
GDP_CONFIG = osp.join(REPO, 'configs', 'gdp', 'toy', 'gdp_retinanet_r18_fpn_toyvoc.py')
SKIP = 2  # iterations after a change of shapes left out of the medians


def iteration_clock():
    """An mmengine hook recording ``[iteration, seconds, shrunk]`` per training
    iteration (``shrunk``: whether the GDP hook had shrunk the model by its end)."""
    from mmengine.hooks import Hook

    class IterationClock(Hook):
        priority = 'LOWEST'  # its after_train_iter runs after every other hook's

        def __init__(self):
            self.rows, self.t0 = [], None

        def before_train_iter(self, runner, batch_idx, data_batch=None):
            self.t0 = time.perf_counter()

        def after_train_iter(self, runner, batch_idx, data_batch=None, outputs=None):
            gdp = [h for h in runner.hooks if type(h).__name__ == 'GDPHook']
            shrunk = bool(gdp and gdp[0].shrink is not None)
            self.rows.append([runner.iter, time.perf_counter() - self.t0, shrunk])

    return IterationClock()


def toy_config(config: str, data_root: str, work_dir: str, size: int, epochs: int):
    from mmengine.config import Config
    cfg = Config.fromfile(config)
    for name in ('train_dataloader', 'val_dataloader', 'test_dataloader'):
        loader = cfg[name]
        loader.update(num_workers=0, persistent_workers=False, batch_size=8)
        loader.dataset.data_root = data_root
        for t in loader.dataset.pipeline:
            if t['type'] == 'Resize':
                t['scale'] = (size, size)
    cfg.train_cfg = dict(type='EpochBasedTrainLoop', max_epochs=epochs, val_interval=1000)
    cfg.default_hooks.checkpoint = dict(type='CheckpointHook', interval=1000, save_last=False)
    cfg.default_hooks.logger.interval = 5
    cfg.work_dir = work_dir
    cfg.randomness = dict(seed=0)
    return cfg


def phase_times(rows):
    """Seconds per iteration before and after the shrink: the first ``SKIP`` of each
    phase and the shrink's own iteration left out."""
    first = next(i for i, r in enumerate(rows) if r[2])
    return [r[1] for r in rows[SKIP:first]], [r[1] for r in rows[first + 1 + SKIP:]]


def measure(args) -> dict:
    import torch
    from mmdet.registry import MODELS
    from mmengine.config import Config
    from mmengine.runner import Runner

    from gdp_det.datasets.toy_voc import make_toy_voc
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        data = osp.join(tmp, 'toyvoc')
        make_toy_voc(data, num_train=args.images, num_val=8, seed=0, img_size=256)
        cfg = toy_config(GDP_CONFIG, data + '/', osp.join(tmp, 'gdp'), args.size, args.epochs)
        cfg.model.input_size = (args.size, args.size)
        cfg.custom_hooks = [dict(type='GDPHook', flops_target=args.flops_target,
                                 lambda_init=0.1, lambda_span=args.cut_at,
                                 cut_rate_factor=1.0,  # the cut within --cut-at
                                 shrink_after_cut=True, export=True)]
        runner = Runner.from_cfg(cfg)
        clock = iteration_clock()
        runner.register_hook(clock)
        runner.train()
        gdp = next(h for h in runner.hooks if type(h).__name__ == 'GDPHook')
        if gdp.shrink is None:
            raise RuntimeError('the cut was not made: raise --epochs or lower --cut-at')
        batch = next(iter(runner.train_dataloader))
        exported = osp.join(tmp, 'gdp', 'pruned', 'gdp_retinanet_r18_fpn_toyvoc_pruned')
        plain = MODELS.build(Config.fromfile(exported + '.py').model)
        plain.load_state_dict(torch.load(exported + '.pth', weights_only=True)['state_dict'])
    states = dict(gdp_full_width=gdp.shrink.padded_copy(runner.model),
                  gdp_shrunk=copy.deepcopy(runner.model), export=plain)
    seconds = interleaved([(m, adamw(m)) for m in states.values()], batch, args.rounds)
    med = dict(zip(states, seconds))
    before, after = phase_times(clock.rows)
    return dict(
        config=osp.relpath(GDP_CONFIG, REPO), threads=args.threads, size=args.size,
        images=args.images, batch_size=8, flops_target=args.flops_target,
        iterations=len(clock.rows), shrunk_after_iters=gdp.shrunk_at,
        flops_ratio_after_cut=gdp.ratio, gated_channels=gdp.graph.num_channels,
        removed_channels=gdp.shrink.removed, rounds=args.rounds,
        seconds_per_step=med,
        speedup_after_shrink=med['gdp_full_width'] / med['gdp_shrunk'],
        shrunk_vs_export=med['gdp_shrunk'] / med['export'],
        run_seconds_per_iter=dict(before_shrink=float(np.median(before)),
                                  after_shrink=float(np.median(after))),
        shrink_iteration_seconds=clock.rows[gdp.shrunk_at - 1][1],
        per_iteration=clock.rows)


def adamw(model):
    """The toy schedule's optimizer (AdamW; the gates are left out, as GDPHook does)."""
    import torch
    from mmengine.optim import OptimWrapper
    params = [p for n, p in model.named_parameters() if not n.startswith('gdp_gates')]
    return OptimWrapper(torch.optim.AdamW(params, lr=1e-4, weight_decay=0.05))


def interleaved(models, batch, rounds: int):
    """Median seconds of one ``train_step`` of each ``(model, optim_wrapper)``, taken in
    turn round by round (a load change hits every model alike); round 0 warms up."""
    times = [[] for _ in models]
    for r in range(rounds + 1):
        for (model, wrapper), t in zip(models, times):
            model.train()
            t0 = time.perf_counter()
            model.train_step(batch, wrapper)
            if r:
                t.append(time.perf_counter() - t0)
    return [float(np.median(t)) for t in times]


@tool_main
def main(argv=None) -> int:
    p = ArgumentParser(description=__doc__.split('\n\n')[0])
    p.add_argument('--out', default='benchmarks/shrink_speed.json')
    p.add_argument('--threads', type=int, default=1)
    p.add_argument('--flops-target', type=float, default=0.5)
    p.add_argument('--images', type=int, default=96)
    p.add_argument('--epochs', type=int, default=3)
    p.add_argument('--size', type=int, default=224)
    p.add_argument('--rounds', type=int, default=10)
    p.add_argument('--cut-at', type=float, default=0.3,
                   help="GDPHook's lambda_span: the cut comes within this share of the run")
    args = p.parse_args(argv)
    result = measure(args)
    out = osp.join(REPO, args.out) if not osp.isabs(args.out) else args.out
    with open(out, 'w') as f:
        json.dump(result, f, indent=1)
    s, r = result['seconds_per_step'], result['run_seconds_per_iter']
    print(f'one training step, interleaved: GDP at full width {s["gdp_full_width"]:.3f} s, '
          f'shrunk {s["gdp_shrunk"]:.3f} s ({result["speedup_after_shrink"]:.2f}x faster), '
          f'the export (a fine-tune) {s["export"]:.3f} s (shrunk GDP: '
          f'{result["shrunk_vs_export"]:.2f}x); in the run: {r["before_shrink"]:.3f} s/iter '
          f'before the shrink (after iteration {result["shrunk_after_iters"]} of '
          f'{result["iterations"]}), {r["after_shrink"]:.3f} after; FLOPs ratio '
          f'{result["flops_ratio_after_cut"]:.3f}; written to {out}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
