"""One stage of the job: train or evaluate through mmengine's ``Runner``, once.

:func:`stage` stores a stage's result in ``<work_dir>/<stage>/stage_done.json``, so a
rerun skips finished stages, and :func:`train` resumes an interrupted training from
its work dir's last checkpoint (mmengine's ``resume``). Under several processes
(``launcher='pytorch'``) every rank runs every stage, rank 0 alone writes files, and
the others take rank 0's result.
"""
from __future__ import annotations

import copy
import glob
import json
import os
import os.path as osp
from contextlib import contextmanager
from typing import Callable, Dict, Iterator, Optional

import torch
from mmengine.config import Config
from mmengine.dist import (barrier, broadcast_object_list, init_dist, is_distributed,
                           is_main_process)
from mmengine.model import is_model_wrapper
from mmengine.runner import Runner

from ..distributed import patient_group
from ..files import atomic_write
from ..latency import device_name, interleaved_medians


_export_wait_group = None  # the group the ranks wait on for rank 0's export
_started_default = False  # whether init_distributed started the default group


def init_distributed(launcher: str, cfg: Config) -> None:
    """Start the process group that every stage's ``Runner`` then joins (unless one
    is running), and the :func:`~gdp_det.distributed.patient_group` of
    :func:`wait_for_rank0`.

    mmengine's ``init_dist`` also selects the rank's CUDA device; without CUDA
    (CPU runs, the tests) the group is started on gloo from torchrun's environment.
    """
    global _export_wait_group, _started_default
    if launcher == 'none':
        return
    if not is_distributed():
        if torch.cuda.is_available():
            init_dist(launcher, **cfg.get('env_cfg', {}).get('dist_cfg', {}))
        else:
            torch.distributed.init_process_group('gloo')
        _started_default = True
    _export_wait_group = patient_group()


@contextmanager
def distributed_job(launcher: str, cfg: Config) -> Iterator[None]:
    """:func:`init_distributed`, then :func:`close_distributed` however the job ends."""
    init_distributed(launcher, cfg)
    try:
        yield
    finally:
        close_distributed()


def close_distributed() -> None:
    """Destroy the groups :func:`init_distributed` started (the default group only where
    it started it): a gloo group left to the interpreter's exit can abort its rank there
    ("terminate called without an active exception", pytorch/pytorch#190489; a rerun of
    the two-process job whose stages were all done failed so on a loaded machine)."""
    global _export_wait_group, _started_default
    if _export_wait_group is not None:
        torch.distributed.destroy_process_group(_export_wait_group)
        _export_wait_group = None
    if _started_default and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()
    _started_default = False


def wait_for_rank0() -> None:
    """Barrier after training, where rank 0 alone exports (prune, verify on its
    device, write): on the gloo group of :func:`init_distributed`, not the default
    (NCCL) group, whose watchdog would end ranks that wait longer than its timeout."""
    barrier(_export_wait_group)


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
    wait_for_rank0()  # rank 0 may still be writing the last checkpoint or the export
    return _last_checkpoint(work_dir)


@torch.no_grad()
def evaluate(cfg: Config, checkpoint: str, work_dir: str, repeats: int = 10) -> Dict:
    """Test-set metrics (on every rank) and median latency of one image on the model's
    device, named in ``latency_device`` (same input, same process, after a warm-up;
    measured on rank 0 only, ``None`` on the others)."""
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
    device = next(model.parameters()).device
    # on the latency model's clock: a CUDA forward is timed to the end of its kernels
    seconds, = interleaved_medians([lambda: lambda: model(**data, mode='predict')], device,
                                   repeats)
    result.update(latency_ms=1000 * seconds, latency_device=device_name(device))
    return result


def _on_rank0(value):
    """Rank 0's ``value`` on every rank (itself without a process group)."""
    box = [value]
    broadcast_object_list(box)
    return box[0]


def _marker_path(work_dir: str, name: str) -> str:
    """Where stage ``name`` stores its result."""
    return osp.join(work_dir, name, 'stage_done.json')


def stage_result(work_dir: str, name: str) -> Optional[Dict]:
    """The result stage ``name`` stored, ``None`` while it has not finished."""
    marker = _marker_path(work_dir, name)
    if not osp.isfile(marker):
        return None
    with open(marker) as f:
        return json.load(f)


def stage(work_dir: str, name: str, fn: Callable[[], Dict], log=print) -> Dict:
    """Run ``fn`` once: its result is stored in ``<work_dir>/<name>/stage_done.json``.

    Under several processes ``fn`` runs on every rank (training and evaluation are
    collective); rank 0 reads and writes the marker, and every rank gets its result.
    """
    marker = _marker_path(work_dir, name)
    done = _on_rank0(stage_result(work_dir, name) if is_main_process() else None)
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
