"""The toy baseline configs parse (with mmdet's package-scoped ``_base_``),
have the intended settings and build models whose outputs have the right
shapes; the compatibility helpers behave."""
import os.path as osp

import pytest
import torch
from mmengine.config import Config

from gdp_det import compat
from gdp_det.datasets.toy_voc import TOY_CLASSES

from conftest import FASTER_RCNN_CFG, RETINANET_CFG

NUM_CLASSES = len(TOY_CLASSES)


@pytest.mark.parametrize('config', [RETINANET_CFG, FASTER_RCNN_CFG])
def test_common_settings(config):
    cfg = Config.fromfile(config)
    assert cfg.default_scope == 'mmdet'
    assert cfg.custom_imports == dict(
        imports=['gdp_det'], allow_failed_imports=False)
    bb = cfg.model.backbone
    assert (bb.type, bb.depth) == ('ResNet', 18)
    assert bb.init_cfg is None  # no pretrained weights offline
    assert bb.norm_eval is False and bb.frozen_stages == -1
    assert cfg.model.neck.type == 'FPN'
    assert list(cfg.model.neck.in_channels) == [64, 128, 256, 512]
    for loader in ('train_dataloader', 'val_dataloader', 'test_dataloader'):
        ds = cfg[loader].dataset
        assert ds.type == 'VOCDataset'
        assert ds.data_root == 'data/toyvoc/'
        assert tuple(ds.metainfo.classes) == TOY_CLASSES
    assert cfg.val_dataloader.dataset.ann_file.endswith('Main/test.txt')
    assert cfg.train_dataloader.dataset.ann_file.endswith('Main/trainval.txt')
    assert cfg.val_evaluator.type == 'VOCMetric'
    assert cfg.val_evaluator.metric == 'mAP'
    assert cfg.get('val_evaluator').get('iou_thrs', 0.5) == 0.5
    assert cfg.train_cfg.type == 'EpochBasedTrainLoop'
    # small inputs for the CPU
    for t in cfg.train_dataloader.dataset.pipeline:
        if t.type == 'Resize':
            assert max(t.scale) <= 256


def _build(config):
    from mmdet.registry import MODELS
    from mmdet.utils import register_all_modules
    register_all_modules(init_default_scope=False)
    cfg = Config.fromfile(config)
    model = MODELS.build(cfg.model)
    model.init_weights()
    return model.eval()


def test_retinanet_outputs():
    model = _build(RETINANET_CFG)
    x = torch.rand(1, 3, 128, 96)
    with torch.no_grad():
        cls_scores, bbox_preds = model(x, mode='tensor')
    assert len(cls_scores) == len(bbox_preds) == 5
    anchors = model.bbox_head.num_base_priors
    assert anchors == 9
    for level, (c, b) in enumerate(zip(cls_scores, bbox_preds)):
        stride = 8 * 2**level
        assert c.shape[:2] == (1, anchors * NUM_CLASSES)
        assert b.shape[:2] == (1, anchors * 4)
        assert c.shape[2:] == (-(-128 // stride), -(-96 // stride))


def test_faster_rcnn_outputs():
    from mmdet.structures import DetDataSample
    model = _build(FASTER_RCNN_CFG)
    x = torch.rand(2, 3, 96, 128)
    samples = []
    for _ in range(2):
        s = DetDataSample()
        s.set_metainfo(dict(img_shape=(96, 128), ori_shape=(96, 128),
                            scale_factor=(1.0, 1.0)))
        samples.append(s)
    with torch.no_grad():
        out = model(x, samples, mode='predict')
    assert len(out) == 2
    for o in out:
        assert o.pred_instances.bboxes.shape[1] == 4
        if len(o.pred_instances.labels):
            assert int(o.pred_instances.labels.max()) < NUM_CLASSES
    assert model.roi_head.bbox_head.num_classes == NUM_CLASSES


def test_package_lookups_without_pkg_resources():
    import mmdet
    assert compat.is_installed('mmdet')
    assert not compat.is_installed('surely_not_an_installed_package_x')
    assert osp.samefile(
        compat.get_installed_path('mmdet'), osp.dirname(mmdet.__file__))
    assert compat.package2module('mmdet') == 'mmdet'
    # what mmengine uses to resolve 'mmdet::' bases works either way
    from mmengine.config.config import Config as C
    path, scope = C._get_cfg_path('mmdet::_base_/default_runtime.py', '.')
    assert scope == 'mmdet' and osp.isfile(path)


def test_safe_globals_registered_once():
    import torch.serialization as ts
    before = len(ts.get_safe_globals())
    compat.register_safe_globals()
    compat.apply()
    assert len(ts.get_safe_globals()) == before
    names = {
        g[1] if isinstance(g, tuple) else f'{g.__module__}.{g.__qualname__}'
        for g in ts.get_safe_globals()
    }
    assert 'mmengine.logging.history_buffer.HistoryBuffer' in names
    assert 'builtins.getattr' in names
