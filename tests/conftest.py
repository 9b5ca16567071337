"""Shared fixtures: a small toy dataset generated once per session, and a
helper that turns one of the toy configs into a fast config pointing at it."""
import os
import os.path as osp
import sys
from dataclasses import dataclass
from typing import Optional

import pytest
import torch

REPO = osp.dirname(osp.dirname(osp.abspath(__file__)))
if REPO not in sys.path:
    sys.path.insert(0, REPO)

import gdp_det  # noqa: E402  (registries)
gdp_det.compat.apply()  # torch.load of mmengine checkpoints, mmdet:: configs, VOCMetric
from gdp_det.datasets.toy_voc import make_toy_voc  # noqa: E402

# `make test-portability` reruns the numerically sensitive tests with oneDNN off as one of
# its variants (thread count and ISA are set through OMP_NUM_THREADS and
# ATEN_CPU_CAPABILITY, which torch reads at start-up).
if os.environ.get('GDP_TEST_MKLDNN') == '0':
    torch.backends.mkldnn.enabled = False


def pytest_report_header(config):
    """The numerical setting the suite runs under: what a result may depend on."""
    return (f'torch {torch.__version__}: {torch.get_num_threads()} threads, CPU capability '
            f'{torch.backends.cpu.get_cpu_capability()}, '
            f'oneDNN {"on" if torch.backends.mkldnn.enabled else "off"}')


CONFIG_DIR = osp.join(REPO, 'configs', 'toy')
RETINANET_CFG = osp.join(CONFIG_DIR, 'retinanet_r18_fpn_toyvoc.py')
FASTER_RCNN_CFG = osp.join(CONFIG_DIR, 'faster-rcnn_r18_fpn_toyvoc.py')


@dataclass(frozen=True)
class ToyData:
    root: str
    num_train: int
    num_val: int
    seed: int
    img_size: int
    summary: dict


TOY_NUM_TRAIN = 16
TOY_NUM_VAL = 8
TOY_SEED = 3
TOY_IMG_SIZE = 128


@pytest.fixture(scope='session')
def toy_data(tmp_path_factory) -> ToyData:
    """A toy VOC + COCO dataset (16 trainval, 8 test images of <= 128 px)."""
    root = str(tmp_path_factory.mktemp('toyvoc'))
    summary = make_toy_voc(
        root,
        num_train=TOY_NUM_TRAIN,
        num_val=TOY_NUM_VAL,
        seed=TOY_SEED,
        img_size=TOY_IMG_SIZE,
        coco=True)
    return ToyData(root, TOY_NUM_TRAIN, TOY_NUM_VAL, TOY_SEED, TOY_IMG_SIZE,
                   summary)


def _iter_datasets(dataset_cfg):
    """The dataset config and, through wrappers, the datasets it wraps."""
    yield dataset_cfg
    if 'dataset' in dataset_cfg:
        yield from _iter_datasets(dataset_cfg['dataset'])
    for ds in dataset_cfg.get('datasets', []) or []:
        yield from _iter_datasets(ds)


def toy_cfg(config: str,
            data_root: str,
            work_dir: Optional[str] = None,
            img_scale=(128, 128),
            batch_size: int = 4,
            max_epochs: Optional[int] = None,
            cfg_options: Optional[dict] = None):
    """Load ``config`` and point it at ``data_root`` for a fast CPU run.

    Sets every dataloader's dataset root (through dataset wrappers), no
    worker processes, the image scale of both pipelines, the batch size and,
    for COCO-format configs, the evaluator's annotation file. Extra keys in
    ``cfg_options`` are merged last (``Config.merge_from_dict`` syntax).
    """
    from mmengine.config import Config

    cfg = Config.fromfile(config)
    root = data_root.rstrip('/') + '/'
    for name in ('train_dataloader', 'val_dataloader', 'test_dataloader'):
        loader = cfg.get(name)
        if loader is None:
            continue
        loader.num_workers = 0
        loader.persistent_workers = False
        loader.batch_size = batch_size
        for ds in _iter_datasets(loader.dataset):
            if 'data_root' in ds:
                ds.data_root = root
            for t in ds.get('pipeline', []) or []:
                if t.get('type') == 'Resize':
                    t.scale = tuple(img_scale)
    for name in ('val_evaluator', 'test_evaluator'):
        ev = cfg.get(name)
        if ev is not None and ev.get('type') == 'CocoMetric':
            ev.ann_file = osp.join(root, 'annotations',
                                   'instances_test.json')
    if max_epochs is not None:
        cfg.train_cfg.max_epochs = max_epochs
    # Keep unit-test runs quiet and fast.
    cfg.default_hooks.logger.interval = 1
    cfg.default_hooks.visualization = dict(type='DetVisualizationHook')
    cfg.env_cfg.mp_cfg = dict(mp_start_method='fork', opencv_num_threads=1)
    if work_dir is not None:
        cfg.work_dir = str(work_dir)
    if cfg_options:
        cfg.merge_from_dict(cfg_options)
    return cfg


@pytest.fixture
def make_toy_cfg(toy_data):
    """``make_toy_cfg(config, work_dir=None, **kw)``: :func:`toy_cfg` on the
    session's toy dataset."""

    def _make(config=RETINANET_CFG, work_dir=None, **kwargs):
        return toy_cfg(config, toy_data.root, work_dir=work_dir, **kwargs)

    return _make


@pytest.fixture(scope='module')
def gated_toy_retinanet():
    """The gated toy RetinaNet R18-FPN at 224 px (``GDPDetector``, seeded random init,
    eval mode) and its GDP config."""
    from mmdet.registry import MODELS
    from mmdet.utils import register_all_modules

    from gdp_det.cli import load_config
    register_all_modules()
    cfg = load_config(osp.join(REPO, 'configs', 'gdp', 'toy', 'gdp_retinanet_r18_fpn_toyvoc.py'))
    torch.manual_seed(0)
    return MODELS.build(cfg.model).eval(), cfg
