"""GDP training on the toy data: budget, polarization, resume, export."""
import copy
import json
import os.path as osp

import pytest
import torch
from mmengine.hooks import Hook
from mmengine.runner import Runner

from conftest import REPO
from gdp_det.gates import gate_value

GDP_CFG = osp.join(REPO, 'configs', 'gdp', 'toy', 'gdp_retinanet_r18_fpn_toyvoc.py')


def gdp_cfg(make_toy_cfg, work_dir, epochs, **hook):
    cfg = make_toy_cfg(GDP_CFG, work_dir=str(work_dir), img_scale=(128, 128), batch_size=4,
                       max_epochs=epochs)
    cfg.model.input_size = (128, 128)
    cfg.model.detector.neck.out_channels = 64
    cfg.model.detector.bbox_head.update(in_channels=64, feat_channels=64)
    cfg.custom_hooks[0].update(hook)
    cfg.train_dataloader.dataset.pipeline = [
        t for t in cfg.train_dataloader.dataset.pipeline if t['type'] != 'RandomFlip']
    cfg.train_cfg.val_interval = 1000
    cfg.default_hooks.checkpoint = dict(type='CheckpointHook', interval=1)
    cfg.randomness = dict(seed=0, deterministic=False)
    cfg.train_dataloader.sampler = dict(type='DefaultSampler', shuffle=True, seed=0)
    cfg.train_dataloader.pop('batch_sampler', None)
    return cfg


class _Interrupted(Exception):
    pass


class _StopAfterEpoch(Hook):
    """Simulates a killed run: stops after the checkpoint of epoch ``n`` is written."""

    def __init__(self, n):
        self.n = n

    def after_train_epoch(self, runner):
        if runner.epoch == self.n:
            raise _Interrupted()


def gdp_hook(runner):
    return next(h for h in runner.hooks if type(h).__name__ == 'GDPHook')


@pytest.mark.slow
def test_gdp_reaches_budget_polarizes_and_exports(make_toy_cfg, tmp_path):
    cfg = gdp_cfg(make_toy_cfg, tmp_path / 'run', epochs=12, flops_target=0.5, log_interval=1)
    runner = Runner.from_cfg(cfg)
    runner.train()
    hook = gdp_hook(runner)
    a = hook.traced_gates()  # the live model was shrunk after the cut
    alive = a != 0
    ratio = hook.flops.count(alive) / hook.flops.full
    assert abs(ratio - 0.5) <= 0.02
    g = gate_value(a, hook.gates.eps_value, hook.gates.normalize)
    polarized = ((g == 0) | (g > 0.9)).float().mean()
    assert polarized >= 0.99
    # the export at the end of training is lossless and at the budget
    report = json.loads((tmp_path / 'run' / 'pruned' / 'prune_report.json').read_text())
    assert report['max_rel_output_diff'] <= 1e-4
    assert abs(report['flops_ratio'] - 0.5) <= 0.02
    # the history was logged: the ratio fell from 1 to the target
    ratios = [h[1] for h in report['history']]
    assert ratios[0] > 0.9 and abs(ratios[-1] - 0.5) <= 0.02
    # ... not before the gates had time to learn (lambda grows from lambda_init)
    first = next(i for i, r in enumerate(ratios) if r <= 0.51)
    assert 0.2 * len(ratios) < first <= 0.8 * len(ratios)


@pytest.mark.slow
def test_resume_restores_gates_eps_and_lambda(make_toy_cfg, tmp_path):
    hook = dict(flops_target=0.6, export=False)
    full = Runner.from_cfg(gdp_cfg(make_toy_cfg, tmp_path / 'full', epochs=4, **hook))
    full.train()
    part = Runner.from_cfg(gdp_cfg(make_toy_cfg, tmp_path / 'part', epochs=4, **hook))
    part.register_hook(_StopAfterEpoch(2), priority='LOWEST')
    with pytest.raises(_Interrupted):
        part.train()
    resumed_cfg = gdp_cfg(make_toy_cfg, tmp_path / 'part', epochs=4, **hook)
    resumed_cfg.resume = True
    resumed_cfg.load_from = str(tmp_path / 'part' / 'epoch_2.pth')
    resumed = Runner.from_cfg(resumed_cfg)
    resumed.train()
    a_full, a_res = full.model.gdp_gates.a.detach(), resumed.model.gdp_gates.a.detach()
    assert torch.equal(a_full == 0, a_res == 0)
    assert torch.allclose(a_full, a_res, atol=1e-6)
    assert gdp_hook(full).lam == pytest.approx(gdp_hook(resumed).lam)
    assert float(full.model.gdp_gates.eps) == pytest.approx(float(resumed.model.gdp_gates.eps))
