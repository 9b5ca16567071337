"""The main job's pieces that need no training (the fast tier's share of
``gdp_det.pipeline``): the GDP-phase config of a plain config, and a stage that runs
once and is then read from its marker."""
import pytest
from mmengine.config import Config

from gdp_det.pipeline import gdp_config, stage

from conftest import RETINANET_CFG


def test_gdp_config_wraps_the_detector_and_scales_the_lr():
    cfg = Config.fromfile(RETINANET_CFG)
    out = gdp_config(cfg, 0.4, 'baseline.pth', epochs=3, lr_factor=0.1, min_channels=0.25)
    assert cfg.model.type == 'RetinaNet'  # the input config is left alone
    assert out.model['type'] == 'GDPDetector' and out.model['detector']['type'] == 'RetinaNet'
    assert tuple(out.model['input_size']) == (224, 224)  # the training Resize, as (H, W)
    hooks = [h for h in out.custom_hooks if h['type'] == 'GDPHook']
    assert len(hooks) == 1
    assert hooks[0]['flops_target'] == 0.4 and hooks[0]['min_channels'] == 0.25
    assert out.optim_wrapper.optimizer.lr == pytest.approx(cfg.optim_wrapper.optimizer.lr / 10)
    assert out.train_cfg.max_epochs == 3 and out.load_from == 'baseline.pth'


def test_stage_runs_once_then_reads_its_marker(tmp_path):
    calls = []

    def fn():
        calls.append(1)
        return dict(mAP=0.5, n=len(calls))
    logs = []
    first = stage(str(tmp_path), 'eval', fn, log=logs.append)
    again = stage(str(tmp_path), 'eval', fn, log=logs.append)
    assert first == again == dict(mAP=0.5, n=1) and len(calls) == 1
    assert (tmp_path / 'eval' / 'stage_done.json').is_file()
    assert 'skipped' in logs[-1]


def test_the_job_closes_the_process_groups_it_started(monkeypatch):
    """A gloo group left to the interpreter's exit can abort its rank there: the job
    destroys the groups it started, and leaves a group its caller started running."""
    import torch.distributed as dist
    from test_ddp import free_port
    from gdp_det.pipeline import stages
    monkeypatch.setenv('MASTER_ADDR', '127.0.0.1')
    monkeypatch.setenv('MASTER_PORT', str(free_port()))
    monkeypatch.setenv('RANK', '0')
    monkeypatch.setenv('WORLD_SIZE', '1')
    assert not dist.is_initialized()
    stages.init_distributed('pytorch', Config())
    assert dist.is_initialized() and stages._export_wait_group is not None
    stages.close_distributed()
    assert not dist.is_initialized() and stages._export_wait_group is None
    dist.init_process_group('gloo')  # the caller's own group
    try:
        stages.init_distributed('pytorch', Config())
        stages.close_distributed()
        assert dist.is_initialized()  # still the caller's
        dist.barrier()
    finally:
        dist.destroy_process_group()
