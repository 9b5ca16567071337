"""The whole job on toy data: stages, report, plots and resume after interruption."""
import json
import os

import pytest

from gdp_det.pipeline import run_pipeline


def small_cfg(make_toy_cfg, tmp_path):
    cfg = make_toy_cfg(work_dir=str(tmp_path), img_scale=(128, 128), batch_size=4, max_epochs=2)
    cfg.model.neck.out_channels = 64
    cfg.model.bbox_head.update(in_channels=64, feat_channels=64)
    cfg.train_cfg.val_interval = 100
    cfg.default_hooks.checkpoint = dict(type='CheckpointHook', interval=1)
    return cfg


@pytest.mark.slow
def test_pipeline_report_and_resume(make_toy_cfg, tmp_path):
    cfg = small_cfg(make_toy_cfg, tmp_path)
    work = tmp_path / 'job'
    out = run_pipeline(cfg, str(work), flops_target=0.6, gdp_epochs=6, finetune_epochs=1,
                       hook=dict(log_interval=1))
    rows = {r['model']: r for r in out['rows']}
    assert set(rows) == {'baseline', 'GDP pruned (no fine-tune)', 'GDP pruned + 1 ep fine-tune'}
    pruned = rows['GDP pruned (no fine-tune)']
    assert abs(pruned['FLOPs ratio'] - 0.6) <= 0.02
    assert pruned['max output diff'] <= 1e-4
    assert pruned['params (M)'] < rows['baseline']['params (M)']
    for f in ('report.md', 'report.json', 'gate_histograms.png', 'flops_ratio.png',
              'layer_widths.png'):
        assert (work / f).stat().st_size > 0
    md = (work / 'report.md').read_text()
    assert '| GDP pruned (no fine-tune) |' in md
    report = json.loads((work / 'report.json').read_text())
    assert len(report['rows']) == 3

    # interrupted before evaluation: the rerun skips training and only evaluates
    gdp_ckpt = json.loads((work / 'gdp' / 'stage_done.json').read_text())['checkpoint']
    mtime = os.path.getmtime(gdp_ckpt)
    os.remove(work / 'evaluate' / 'stage_done.json')
    os.remove(work / 'report.md')
    logs = []
    run_pipeline(cfg, str(work), flops_target=0.6, gdp_epochs=6, finetune_epochs=1,
                 hook=dict(log_interval=1), log=logs.append)
    assert any('baseline: done earlier' in m for m in logs)
    assert any('gdp: done earlier' in m for m in logs)
    assert any('evaluate: running' in m for m in logs)
    assert os.path.getmtime(gdp_ckpt) == mtime
    assert (work / 'report.md').exists()
