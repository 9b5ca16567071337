"""The whole job: baseline -> GDP phase -> prune/export -> fine-tune -> evaluate -> report.

Each stage writes ``<work_dir>/<stage>/stage_done.json`` when it finishes; a rerun
skips finished stages and resumes an interrupted training stage from its last
checkpoint (mmengine's ``resume``).

With ``launcher='pytorch'`` (one process per GPU under torchrun) every stage runs
on every rank: training and evaluation in DDP, while rank 0 alone writes the
checkpoints, the export (``GDPHook``), the stage markers and the report; the other
ranks wait at a barrier after each stage and take rank 0's result.
"""
from __future__ import annotations

import copy
import glob
import json
import os
import os.path as osp
import statistics
import time
from typing import Callable, Dict, Optional

import torch
from mmengine.config import Config
from mmengine.dist import (barrier, broadcast_object_list, init_dist, is_distributed,
                           is_main_process)
from mmengine.model import is_model_wrapper
from mmengine.runner import Runner

from ..export import EXPORT_FILES
from .report import atomic_write, write_report


def phase_schedule(out: Config, cfg: Config, epochs: int, lr_factor: float = 0.1,
                   warmup_iters: int = 50) -> Config:
    """Give ``out`` the schedule of a phase that starts from a trained model.

    ``cfg``'s optimizer with its learning rate times ``lr_factor`` (a trained model
    is at the end of its own schedule: restarting at the full rate, with a fresh
    optimizer state, undoes much of its training), a linear warm-up over
    ``warmup_iters`` iterations, then a constant rate for ``epochs`` epochs.
    """
    out.optim_wrapper = copy.deepcopy(cfg.optim_wrapper)
    optimizer = out.optim_wrapper.get('optimizer')
    if optimizer is not None and 'lr' in optimizer:
        optimizer['lr'] = optimizer['lr'] * lr_factor
    out.param_scheduler = [dict(type='LinearLR', start_factor=0.1, by_epoch=False, begin=0,
                                end=max(warmup_iters, 1))]
    out.train_cfg.max_epochs = epochs
    out.train_cfg.val_interval = epochs
    return out


def gdp_config(cfg: Config, flops_target: float, load_from: Optional[str], epochs: int,
               input_size=None, lr_factor: float = 0.1, **hook) -> Config:
    """The GDP-phase config of a plain detector config (what configs/gdp/ spell out)."""
    out = copy.deepcopy(cfg)
    if input_size is None:
        input_size = _train_scale(cfg)
    out.model = dict(type='GDPDetector', detector=cfg.model.to_dict(), input_size=input_size)
    hooks = [h for h in out.get('custom_hooks', []) if h.get('type') != 'GDPHook']
    hooks.append(dict(type='GDPHook', flops_target=flops_target, export=True, **hook))
    out.custom_hooks = hooks
    phase_schedule(out, cfg, epochs, lr_factor)
    out.load_from = load_from
    return out


def _train_scale(cfg: Config):
    """(H, W) of the training pipeline's ``Resize``, through dataset wrappers
    (``RepeatDataset``, ``ConcatDataset``: the VOC07+12 configs)."""
    datasets = [cfg.train_dataloader.dataset]
    while datasets:
        ds = datasets.pop(0)
        for t in ds.get('pipeline', None) or []:
            if t.get('type') == 'Resize':
                w, h = t['scale']
                return (h, w)
        datasets += ([ds['dataset']] if 'dataset' in ds else []) + list(ds.get('datasets', []))
    return (512, 512)


def init_distributed(launcher: str, cfg: Config) -> None:
    """Start the process group that every stage's ``Runner`` then joins.

    mmengine's ``init_dist`` also selects the rank's CUDA device; without CUDA
    (CPU runs, the tests) the group is started on gloo from torchrun's environment.
    """
    if launcher == 'none' or is_distributed():
        return
    if torch.cuda.is_available():
        init_dist(launcher, **cfg.get('env_cfg', {}).get('dist_cfg', {}))
    else:
        torch.distributed.init_process_group('gloo')


def launch_cfg(cfg: Config, launcher: str) -> Config:
    """``cfg`` (in place) run with ``launcher``; on CPU, DDP without device ids."""
    cfg.launcher = launcher
    if launcher != 'none' and not torch.cuda.is_available():
        wrapper = dict(cfg.get('model_wrapper_cfg') or dict(type='MMDistributedDataParallel'))
        wrapper['device_ids'] = None
        cfg.model_wrapper_cfg = wrapper
    return cfg


def _last_checkpoint(work_dir: str) -> Optional[str]:
    marker = osp.join(work_dir, 'last_checkpoint')
    if osp.isfile(marker):
        with open(marker) as f:
            path = f.read().strip()
        if osp.isfile(path):
            return path
    ckpts = sorted(glob.glob(osp.join(work_dir, '*.pth')), key=osp.getmtime)
    return ckpts[-1] if ckpts else None


def train(cfg: Config, work_dir: str) -> str:
    """Train with ``cfg`` in ``work_dir`` (resuming if it holds checkpoints)."""
    cfg = copy.deepcopy(cfg)
    cfg.work_dir = work_dir
    if _last_checkpoint(work_dir):
        cfg.resume = True
        cfg.load_from = None  # resume from work_dir's last checkpoint
    runner = Runner.from_cfg(cfg)
    runner.train()
    barrier()  # rank 0 may still be writing the last checkpoint or the export
    return _last_checkpoint(work_dir)


@torch.no_grad()
def evaluate(cfg: Config, checkpoint: str, work_dir: str, repeats: int = 10) -> Dict:
    """Test-set metrics (on every rank) and median latency of one image (same input,
    same process; measured on rank 0 only, ``None`` on the others)."""
    cfg = copy.deepcopy(cfg)
    cfg.work_dir = work_dir
    cfg.load_from = checkpoint
    cfg.resume = False
    runner = Runner.from_cfg(cfg)
    metrics = runner.test()
    key = next((k for k in metrics if k.endswith('mAP')), next(iter(metrics)))
    result = dict(mAP=float(metrics[key]), metric=key, latency_ms=None,
                  metrics={k: float(v) for k, v in metrics.items()})
    if not is_main_process():
        return result
    model = runner.model.module if is_model_wrapper(runner.model) else runner.model
    model.eval()
    batch = next(iter(runner.test_dataloader))
    batch = {k: v[:1] for k, v in batch.items()}
    data = model.data_preprocessor(batch, False)
    model(**data, mode='predict')  # warm-up
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        model(**data, mode='predict')
        times.append(time.perf_counter() - t)
    result['latency_ms'] = 1000 * statistics.median(times)
    return result


def _on_rank0(value):
    """Rank 0's ``value`` on every rank (itself without a process group)."""
    box = [value]
    broadcast_object_list(box)
    return box[0]


def _silent(*args) -> None:
    """The log of ranks other than 0."""


def stage(work_dir: str, name: str, fn: Callable[[], Dict], log=print) -> Dict:
    """Run ``fn`` once: its result is stored in ``<work_dir>/<name>/stage_done.json``.

    Under several processes ``fn`` runs on every rank (training and evaluation are
    collective); rank 0 reads and writes the marker, and every rank gets its result.
    """
    marker = osp.join(work_dir, name, 'stage_done.json')
    done = None
    if is_main_process() and osp.isfile(marker):
        with open(marker) as f:
            done = json.load(f)
    done = _on_rank0(done)
    if done is not None:
        log(f'[gdp pipeline] {name}: done earlier, skipped ({marker})')
        return done
    log(f'[gdp pipeline] {name}: running')
    os.makedirs(osp.dirname(marker), exist_ok=True)
    result = _on_rank0(fn())
    if is_main_process():
        atomic_write(marker, json.dumps(result, indent=2))
    barrier()
    return result


def run_pipeline(cfg: Config, work_dir: str, flops_target: float, gdp_epochs: int,
                 finetune_epochs: int = 0, baseline_checkpoint: Optional[str] = None,
                 hook: Optional[dict] = None, lr_factor: float = 0.1, log=print,
                 launcher: str = 'none') -> Dict:
    """Run every stage; returns the report rows. See the module docstring."""
    init_distributed(launcher, cfg)
    if not is_main_process():
        log = _silent
    work_dir = osp.abspath(work_dir)
    name = osp.splitext(osp.basename(cfg.filename or 'model'))[0]
    os.makedirs(work_dir, exist_ok=True)
    cfg = launch_cfg(copy.deepcopy(cfg), launcher)
    gcfg = gdp_config(cfg, flops_target, None, gdp_epochs, lr_factor=lr_factor, **(hook or {}))
    if is_main_process():
        atomic_write(osp.join(work_dir, 'pipeline.json'), json.dumps(dict(
            config=cfg.filename, flops_target=flops_target, gdp_epochs=gdp_epochs,
            finetune_epochs=finetune_epochs, lr_factor=lr_factor, launcher=launcher,
            input_size=list(gcfg.model['input_size']),
            baseline_checkpoint=baseline_checkpoint and osp.abspath(baseline_checkpoint)),
            indent=2))
    if baseline_checkpoint:
        base = dict(checkpoint=osp.abspath(baseline_checkpoint))
    else:
        base = stage(work_dir, 'baseline',
                     lambda: dict(checkpoint=train(cfg, osp.join(work_dir, 'baseline'))), log)
    gdp_dir = osp.join(work_dir, 'gdp')
    gcfg.load_from = base['checkpoint']

    def gdp_stage():
        train(gcfg, gdp_dir)
        files = [osp.join(gdp_dir, 'pruned', f.format(name=name)) for f in EXPORT_FILES]
        return dict(config=files[0], checkpoint=files[1], report=files[2])

    gdp = stage(work_dir, 'gdp', gdp_stage, log)
    with open(gdp['report']) as f:
        prune_report = json.load(f)
    pruned_cfg = launch_cfg(Config.fromfile(gdp['config']), launcher)
    pruned = dict(config=gdp['config'], checkpoint=gdp['checkpoint'])
    if finetune_epochs > 0:
        def finetune():
            fcfg = phase_schedule(copy.deepcopy(pruned_cfg), cfg, finetune_epochs, lr_factor)
            fcfg.load_from = gdp['checkpoint']
            return dict(config=gdp['config'],
                        checkpoint=train(fcfg, osp.join(work_dir, 'finetune')))
        finetuned = stage(work_dir, 'finetune', finetune, log)
    ev = stage(work_dir, 'evaluate', lambda: dict(
        baseline=evaluate(cfg, base['checkpoint'], osp.join(work_dir, 'eval_baseline')),
        pruned=evaluate(pruned_cfg, pruned['checkpoint'], osp.join(work_dir, 'eval_pruned')),
        finetuned=(evaluate(pruned_cfg, finetuned['checkpoint'],
                            osp.join(work_dir, 'eval_finetuned'))
                   if finetune_epochs > 0 else None)), log)
    gflops = prune_report['flops_before'] / 1e9
    rows = [dict(model='baseline', mAP=ev['baseline']['mAP'], GFLOPs=gflops,
                 **{'FLOPs ratio': 1.0, 'params (M)': prune_report['params_before'] / 1e6,
                    'latency (ms)': ev['baseline']['latency_ms']})]
    pruned_row = {'GFLOPs': prune_report['flops_after'] / 1e9,
                  'FLOPs ratio': prune_report['flops_ratio'],
                  'params (M)': prune_report['params_after'] / 1e6}
    rows.append(dict(model='GDP pruned (no fine-tune)', mAP=ev['pruned']['mAP'],
                     **pruned_row, **{'latency (ms)': ev['pruned']['latency_ms'],
                                      'max output diff': prune_report.get('max_rel_output_diff')}))
    if ev.get('finetuned'):
        rows.append(dict(model=f'GDP pruned + {finetune_epochs} ep fine-tune',
                         mAP=ev['finetuned']['mAP'], **pruned_row,
                         **{'latency (ms)': ev['finetuned']['latency_ms']}))
    extra = (f'FLOPs target {flops_target}; FLOPs counted as multiply-accumulates of conv and '
             f'linear layers at input {prune_report["input_size"]}; latency: median of '
             f'repeated single-image CPU forwards (same process, same input); mAP metric '
             f'`{ev["baseline"]["metric"]}`.')
    if is_main_process():
        write_report(work_dir, rows, prune_report, extra)
    barrier()
    log(f'[gdp pipeline] report: {osp.join(work_dir, "report.md")}')
    return dict(rows=rows)
