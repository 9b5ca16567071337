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
import json
import os
import os.path as osp
from typing import Dict, Optional

from mmengine.config import Config
from mmengine.dist import barrier, is_main_process

from ..export import EXPORT_FILES
from ..files import atomic_write
from .report import report_rows, write_report
from .schedule import gdp_config, phase_schedule
from .stages import distributed_job, evaluate, launch_cfg, stage, train


def _silent(*args) -> None:
    """The log of ranks other than 0."""


def run_pipeline(cfg: Config, work_dir: str, flops_target: float, gdp_epochs: int,
                 finetune_epochs: int = 0, baseline_checkpoint: Optional[str] = None,
                 hook: Optional[dict] = None, lr_factor: float = 0.1, log=print,
                 launcher: str = 'none') -> Dict:
    """Run every stage; returns the report rows. See the module docstring."""
    with distributed_job(launcher, cfg):
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
        if finetune_epochs > 0:
            def finetune():
                fcfg = phase_schedule(copy.deepcopy(pruned_cfg), cfg, finetune_epochs, lr_factor)
                fcfg.load_from = gdp['checkpoint']
                return dict(config=gdp['config'],
                            checkpoint=train(fcfg, osp.join(work_dir, 'finetune')))
            finetuned = stage(work_dir, 'finetune', finetune, log)
        ev = stage(work_dir, 'evaluate', lambda: dict(
            baseline=evaluate(cfg, base['checkpoint'], osp.join(work_dir, 'eval_baseline')),
            pruned=evaluate(pruned_cfg, gdp['checkpoint'], osp.join(work_dir, 'eval_pruned')),
            finetuned=(evaluate(pruned_cfg, finetuned['checkpoint'],
                                osp.join(work_dir, 'eval_finetuned'))
                       if finetune_epochs > 0 else None)), log)
        rows = report_rows(prune_report, ev, finetune_epochs)
        # an evaluation finished before the device was recorded (a resumed job) ran on the CPU
        device = ev['baseline'].get('latency_device', 'the CPU')
        extra = (f'FLOPs target {flops_target}; FLOPs counted as multiply-accumulates of conv and '
                 f'linear layers at input {prune_report["input_size"]}; latency: median of '
                 f'repeated single-image forwards on {device} (same process, same input); mAP '
                 f'metric `{ev["baseline"]["metric"]}`.')
        if is_main_process():
            write_report(work_dir, rows, prune_report, extra)
        barrier()
        log(f'[gdp pipeline] report: {osp.join(work_dir, "report.md")}')
        return dict(rows=rows)
