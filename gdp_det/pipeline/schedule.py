"""The configs of the job's phases, derived from the user's detector config.

``gdp_config`` turns a plain detector config into the GDP-phase config (what
``configs/gdp/`` spells out by hand); ``phase_schedule`` gives a phase that starts
from a trained model (the GDP phase, the fine-tune) its learning-rate schedule.
"""
from __future__ import annotations

import copy
from typing import Optional

from mmengine.config import Config


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
