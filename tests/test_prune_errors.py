"""tools/prune.py refuses bad input clearly and never damages an existing export."""
import os

import pytest
import torch

from tools.prune import main as prune_main

CFG = 'mmdet::retinanet/retinanet_r50_fpn_1x_coco.py'
SMALL = ['--input-size', '128', '128']


def run(args, capsys):
    rc = prune_main(args)
    return rc, capsys.readouterr().err


def test_missing_config(tmp_path, capsys):
    rc, err = run(['nope.py', '--random-gates', '0.5', '--out-dir', str(tmp_path)], capsys)
    assert rc == 2 and 'config file not found: nope.py' in err
    assert os.listdir(tmp_path) == []


def test_needs_checkpoint_or_random_gates(tmp_path, capsys):
    rc, err = run([CFG, '--out-dir', str(tmp_path)], capsys)
    assert rc == 2 and '--random-gates' in err


@pytest.mark.slow
def test_plain_and_mismatching_checkpoints_are_refused(tmp_path, capsys):
    from mmdet.registry import MODELS
    from gdp_det.cli import load_config
    cfg = load_config(CFG)
    cfg.model.backbone.init_cfg = None
    plain = MODELS.build(cfg.model).state_dict()
    path = tmp_path / 'plain.pth'
    torch.save(dict(state_dict=plain), path)
    out = tmp_path / 'out'
    rc, err = run([CFG, str(path), '--out-dir', str(out)] + SMALL, capsys)
    assert rc == 2 and 'plain checkpoint without GDP gates' in err
    # a checkpoint of another width names the first mismatching key and shapes
    plain['neck.lateral_convs.0.conv.weight'] = torch.zeros(8, 512, 1, 1)
    plain['gdp_gates.a'] = torch.ones(3)
    torch.save(dict(state_dict=plain), path)
    rc, err = run([CFG, str(path), '--out-dir', str(out)] + SMALL, capsys)
    assert rc == 2 and 'neck.lateral_convs.0.conv.weight: checkpoint (8, 512, 1, 1)' in err
    assert not out.exists()


@pytest.mark.slow
def test_existing_export_is_kept_unless_force(tmp_path, capsys):
    args = [CFG, '--random-gates', '0.5', '--out-dir', str(tmp_path)] + SMALL
    assert run(args, capsys)[0] == 0
    ckpt = tmp_path / 'retinanet_r50_fpn_1x_coco_pruned.pth'
    before = ckpt.read_bytes()
    rc, err = run(args[:2] + ['0.3'] + args[3:], capsys)
    assert rc == 2 and '--force' in err
    assert ckpt.read_bytes() == before
    assert run(args + ['--force'], capsys)[0] == 0


@pytest.mark.slow
def test_crash_mid_export_leaves_previous_export(tmp_path, capsys, monkeypatch):
    args = [CFG, '--random-gates', '0.5', '--out-dir', str(tmp_path), '--force'] + SMALL
    assert run(args, capsys)[0] == 0
    files = {p: p.read_bytes() for p in tmp_path.iterdir()}

    def broken_save(*a, **k):
        raise OSError('disk full (injected)')
    monkeypatch.setattr(torch, 'save', broken_save)
    rc, err = run(args[:2] + ['0.2'] + args[3:], capsys)
    assert rc == 2 and 'disk full (injected)' in err
    assert {p: p.read_bytes() for p in tmp_path.iterdir()} == files  # no temp dir left


def test_flops_target_out_of_range():
    from gdp_det.hooks import GDPHook
    for bad in (0, -0.1, 1.5):
        with pytest.raises(ValueError, match=r'flops_target must be in \(0, 1\]'):
            GDPHook(flops_target=bad)
