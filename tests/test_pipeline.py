"""The whole job on toy data: stages, report, plots and resume after interruption."""
import json
import os
import subprocess
import sys

import pytest

from gdp_det.pipeline import run_pipeline

from conftest import REPO


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
    # (24 iterations: lambda's growth is capped at 1.5x a step, so the cut needs its full
    # rate to finish in the run; the gentle default is for runs of hundreds of iterations)
    hook = dict(log_interval=1, cut_rate_factor=1.0)
    out = run_pipeline(cfg, str(work), flops_target=0.6, gdp_epochs=6, finetune_epochs=1,
                       hook=hook)
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
                 hook=hook, log=logs.append)
    assert any('baseline: done earlier' in m for m in logs)
    assert any('gdp: done earlier' in m for m in logs)
    assert any('evaluate: running' in m for m in logs)
    assert os.path.getmtime(gdp_ckpt) == mtime
    assert (work / 'report.md').exists()


def test_plot_tool_draws_from_a_prune_report(tmp_path):
    from tools.plot_gdp import main as plot_main
    report = dict(
        flops_target=0.5, hist_bins=[i / 20 for i in range(23)],
        history=[[0, 1.0, 0.1, 1.0, 0.0, 0.5], [10, 0.7, 0.2, 0.1, 0.2, 0.7],
                 [20, 0.5, 0.1, 1e-4, 0.4, 0.6]],
        snapshots=[[0, 0] + [0] * 20 + [10, 0], [20, 4] + [0] * 19 + [6, 0, 0]],
        layer_widths={'backbone.conv1': [64, 30], 'neck.fpn_convs.0.conv': [256, 101]})
    (tmp_path / 'prune_report.json').write_text(json.dumps(report))
    assert plot_main([str(tmp_path)]) == 0
    for f in ('gate_histograms.png', 'flops_ratio.png', 'layer_widths.png'):
        assert (tmp_path / f).read_bytes()[:8] == b'\x89PNG\r\n\x1a\n'
    assert plot_main([str(tmp_path / 'missing')]) == 2


def test_update_sections_replaces_only_its_own(tmp_path):
    from gdp_det.pipeline.report import update_sections
    path = tmp_path / 'RESULTS.md'
    path.write_text('# title\n\nmachine\n\n## (a) one\n\nold a\n\n## (e) five\n\nkeep e\n')
    update_sections(str(path), [('(a) one', ['new a']), ('(b) two', ['b'])])
    text = path.read_text()
    assert text.startswith('# title\n\nmachine\n')
    assert 'new a' in text and 'old a' not in text and 'keep e' in text
    assert text.index('## (a)') < text.index('## (b)') < text.index('## (e)')
    update_sections(str(path), [('(b) two', ['b2'])], head=['# new title'])
    text = path.read_text()
    assert text.startswith('# new title\n') and text.count('## (b)') == 1 and 'b2' in text


def test_report_rows_and_files(tmp_path):
    from gdp_det.pipeline.report import report_rows, write_report
    prune_report = dict(flops_before=4e9, flops_after=2e9, flops_ratio=0.5,
                        params_before=10e6, params_after=6e6, max_rel_output_diff=2e-6,
                        history=[[0, 1.0], [10, 0.5]], flops_target=0.5)
    ev = dict(baseline=dict(mAP=0.8, latency_ms=20.0), pruned=dict(mAP=0.7, latency_ms=12.0),
              finetuned=dict(mAP=0.75, latency_ms=11.0))
    rows = report_rows(prune_report, ev, finetune_epochs=2)
    assert [r['model'] for r in rows] == ['baseline', 'GDP pruned (no fine-tune)',
                                          'GDP pruned + 2 ep fine-tune']
    assert [r['GFLOPs'] for r in rows] == [4.0, 2.0, 2.0]
    assert [r['params (M)'] for r in rows] == [10.0, 6.0, 6.0]
    assert rows[1]['max output diff'] == 2e-6 and 'max output diff' not in rows[2]
    assert len(report_rows(prune_report, dict(ev, finetuned=None), 0)) == 2
    write_report(str(tmp_path), rows, prune_report, 'note')
    md = (tmp_path / 'report.md').read_text().splitlines()
    assert '| GDP pruned + 2 ep fine-tune | 0.75 | 2 | 0.5 | 6 | 11 |  |' in md
    assert 'note' in md and '![flops_ratio.png](flops_ratio.png)' in md
    assert json.loads((tmp_path / 'report.json').read_text())['figures'] == ['flops_ratio.png']
    assert (tmp_path / 'flops_ratio.png').read_bytes()[:4] == b'\x89PNG'


def test_main_job_and_dataset_import_without_matplotlib():
    code = ("import sys, gdp_det.pipeline, gdp_det.datasets.toy_voc; "
            "assert 'matplotlib' not in sys.modules")
    out = subprocess.run([sys.executable, '-c', code], cwd=REPO, capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
