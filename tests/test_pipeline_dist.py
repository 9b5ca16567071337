"""The whole job under several processes (tools/dist_gdp_prune_pipeline.sh, 2 CPU
processes on gloo) and the VOC reproduction script's refusal without the dataset."""
import json
import os
import os.path as osp
import shutil
import socket
import subprocess
import sys

import pytest

from test_pipeline import small_cfg

REPO = osp.dirname(osp.dirname(osp.abspath(__file__)))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


def dist_pipeline(cfg_path, work, port):
    env = dict(os.environ, PYTHON=sys.executable, PORT=str(port), OMP_NUM_THREADS='1')
    return subprocess.run(
        ['bash', osp.join(REPO, 'tools', 'dist_gdp_prune_pipeline.sh'), cfg_path, '2',
         '--work-dir', work, '--flops-target', '0.6', '--gdp-epochs', '6',
         '--finetune-epochs', '1', '--gdp-options', 'log_interval=1',
         'cut_rate_factor=1.0'],  # (24 iterations: the cut at lambda's full rate)
        cwd=REPO, env=env, capture_output=True, text=True, timeout=1500)


@pytest.mark.slow
def test_two_process_pipeline_end_to_end(make_toy_cfg, tmp_path):
    cfg = small_cfg(make_toy_cfg, tmp_path)
    cfg.train_dataloader.batch_size = 2  # per process: the same 4 iterations per epoch
    cfg_path = str(tmp_path / 'toy_cfg.py')
    cfg.dump(cfg_path)
    work = tmp_path / 'job'
    proc = dist_pipeline(cfg_path, str(work), free_port())
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert json.loads((work / 'pipeline.json').read_text())['launcher'] == 'pytorch'
    gdp = json.loads((work / 'gdp' / 'stage_done.json').read_text())
    for key in ('config', 'checkpoint', 'report'):
        assert osp.getsize(gdp[key]) > 0
    rows = {r['model']: r for r in json.loads((work / 'report.json').read_text())['rows']}
    assert set(rows) == {'baseline', 'GDP pruned (no fine-tune)', 'GDP pruned + 1 ep fine-tune'}
    assert rows['GDP pruned (no fine-tune)']['FLOPs ratio'] <= 0.6 + 0.005
    for row in rows.values():
        assert isinstance(row['mAP'], float) and 0 <= row['mAP'] <= 1
        assert row['latency (ms)'] > 0  # measured on rank 0
    # rank 0 alone logs the stages
    assert proc.stdout.count('[gdp pipeline] gdp: running') == 1

    # rerun: every stage is found done by rank 0 and skipped on both ranks
    ckpt_mtime = osp.getmtime(gdp['checkpoint'])
    proc = dist_pipeline(cfg_path, str(work), free_port())
    assert proc.returncode == 0, proc.stderr[-3000:]
    for name in ('baseline', 'gdp', 'finetune', 'evaluate'):
        assert proc.stdout.count(f'[gdp pipeline] {name}: done earlier') == 1
    assert osp.getmtime(gdp['checkpoint']) == ckpt_mtime


def test_reproduce_voc_needs_the_dataset(tmp_path):
    """Without data/VOCdevkit the script stops at once and says where to put it."""
    os.makedirs(tmp_path / 'tools')
    script = str(tmp_path / 'tools' / 'reproduce_voc.sh')
    shutil.copy(osp.join(REPO, 'tools', 'reproduce_voc.sh'), script)
    proc = subprocess.run(['bash', script, '2'], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert proc.stderr.splitlines() == [
        'reproduce_voc.sh: error: data/VOCdevkit/VOC2007/ImageSets/Main/trainval.txt not found '
        f'under {tmp_path} (link your Pascal VOC 2007+2012 copy there: ln -s '
        '/path/to/VOCdevkit data/VOCdevkit)']
    proc = subprocess.run(['bash', script, 'two'], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "GPUS must be a positive number, got 'two'" in proc.stderr
