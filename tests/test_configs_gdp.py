"""Every shipped GDP config loads and builds a gated detector."""
import glob
import os.path as osp

import pytest
from mmdet.registry import MODELS

from conftest import REPO
from gdp_det.cli import load_config

pytestmark = pytest.mark.slow  # R50 builds traced at 800x1333
CONFIGS = sorted(glob.glob(osp.join(REPO, 'configs', 'gdp', '*.py')))


@pytest.mark.parametrize('path', CONFIGS, ids=[osp.basename(c)[:-3] for c in CONFIGS])
def test_gdp_config_builds(path):
    cfg = load_config(path)
    assert cfg.model.type == 'GDPDetector'
    hook = next(h for h in cfg.custom_hooks if h.type == 'GDPHook')
    assert hook.flops_target == (0.3 if 'flops30' in path else 0.5)
    # the GDP phase runs at a tenth of its baseline config's learning rate
    name = osp.basename(path)[len('gdp_'):].split('_flops')[0] + '.py'
    folder = 'pascal_voc' if 'voc' in name else name.split('_')[0].replace('-', '_')
    base = load_config(f'mmdet::{folder}/{name}')
    assert cfg.optim_wrapper.optimizer.lr == pytest.approx(0.1 * base.optim_wrapper.optimizer.lr)
    cfg.model.detector.backbone.init_cfg = None
    cfg.model.input_size = (128, 128)  # the trace only; keeps the test fast
    model = MODELS.build(cfg.model)
    assert len(model.gdp_gates.graph.groups) > 30
    num_classes = 20 if 'voc' in path else 80
    head = model.roi_head.bbox_head if hasattr(model, 'roi_head') else model.bbox_head
    assert head.num_classes == num_classes
