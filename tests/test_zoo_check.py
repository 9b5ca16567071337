"""tools/zoo_check.py: one named result row per config (lossless, refused, timeout),
resumable from its cache, and the coverage table."""
import json

import pytest

from tools import zoo_check


def run(tmp_path, *extra):
    md = tmp_path / 'zoo.md'
    rc = zoo_check.main(['--only', 'retinanet', '--cache-dir', str(tmp_path / 'cache'),
                         '--md', str(md), '--input-size', '128', '128', *extra])
    assert rc == 0
    return md.read_text(), tmp_path / 'cache' / 'retinanet.json'


def test_shorten_folds_indices():
    names = ['backbone.stages.0.blocks.0.attn', 'backbone.stages.0.blocks.1.attn',
             'backbone.stages.1.blocks.0.attn', 'bbox_head']
    assert zoo_check.shorten(names) == ['backbone.stages.*.blocks.*.attn (x3)', 'bbox_head']


def test_plan_covers_every_folder_and_names_why_one_is_skipped():
    rows = zoo_check.plan(zoo_check.configs_dir())
    assert len(rows) >= 110  # mmdet 3.3.0 ships 116 folders
    why = {folder: reason for folder, _, reason in rows}
    assert why['retinanet'] is None and why['swin'] is None
    assert 'tracking' in why['bytetrack'] and 'BERT' in why['glip']


@pytest.mark.slow
def test_lossless_row_then_resume_skips_it(tmp_path, capsys):
    md, cache = run(tmp_path)
    row = json.loads(cache.read_text())
    assert row['result'] == 'lossless' and row['kept'] == []
    assert 0.1 < row['flops_ratio'] < 0.6 and row['max_diff'] < 1e-4
    assert row['predict_check']['max_diff'] <= 1e-3
    assert '**1 configs checked: 1 lossless;' in md
    assert f"| retinanet | retinanet_r50_fpn_1x_coco.py | lossless | {row['flops_ratio']:.3f} " \
        in md
    mtime = cache.stat().st_mtime_ns
    capsys.readouterr()
    run(tmp_path)
    assert '1 to check, 0 not done yet' in capsys.readouterr().out
    assert cache.stat().st_mtime_ns == mtime


def test_missing_config_and_timeout_are_named_rows(tmp_path, monkeypatch):
    monkeypatch.setitem(zoo_check.ZOO, 'retinanet', 'no_such_config.py')
    md, cache = run(tmp_path)
    row = json.loads(cache.read_text())
    assert row['result'] == 'refused' and 'config file not found' in row['error']
    assert '**refused**: config file not found' in md
    cache.unlink()
    monkeypatch.setitem(zoo_check.ZOO, 'retinanet', 'retinanet_r50_fpn_1x_coco.py')
    md, cache = run(tmp_path, '--timeout', '0.01')
    assert json.loads(cache.read_text())['error'] == 'timeout after 0.01 s'
    assert '1 failed' in md


def test_forked_worker_runs_after_the_parent_used_threads(tmp_path):
    """GNU OpenMP hangs a forked child whose parent ran parallel ops (the whole test
    suite does): the worker must still finish (it runs single-threaded)."""
    import torch
    torch.set_num_threads(2)
    x = torch.randn(512, 512)
    (x @ x).sum()
    md, cache = run(tmp_path, '--timeout', '120')
    assert json.loads(cache.read_text())['result'] == 'lossless'
