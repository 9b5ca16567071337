"""Each patch of ``gdp_det.compat`` against the upstream problem it works around.

Every ``test_upstream_*`` shows the problem without the patch and asserts that it is
still there: when one of them fails, upstream has fixed it and the matching patch in
``gdp_det/compat.py`` (and its test here) can be deleted.
"""
import pickle
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.serialization as ts

from gdp_det import compat

from conftest import REPO


def _run(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, '-c', code], cwd=REPO, capture_output=True,
                          text=True, timeout=120)


# -- 1. torch.load(weights_only=True) of mmengine checkpoints ---------------------------
@pytest.fixture
def runner_like_checkpoint(tmp_path):
    """What an mmengine Runner checkpoint holds besides tensors: a message hub with a
    ``HistoryBuffer`` (numpy arrays, statistics methods) and numpy scalars in meta."""
    from mmengine.logging import HistoryBuffer
    buf = HistoryBuffer()
    buf.update(0.5)
    path = tmp_path / 'epoch_1.pth'
    torch.save(dict(state_dict={'w': torch.ones(2)},
                    message_hub=dict(log_scalars={'train/loss': buf},
                                     runtime_info={'iter': np.int64(3)}),
                    meta=dict(seed=np.int64(0))), path)
    return str(path)


@pytest.fixture
def without_safe_globals():
    saved = ts.get_safe_globals()
    ts.clear_safe_globals()
    yield
    ts.clear_safe_globals()
    ts.add_safe_globals(saved)


def test_upstream_mmengine_checkpoints_need_safe_globals(runner_like_checkpoint,
                                                         without_safe_globals):
    from mmengine.runner.checkpoint import _load_checkpoint
    with pytest.raises(pickle.UnpicklingError):  # mmengine calls torch.load(path)
        _load_checkpoint(runner_like_checkpoint, map_location='cpu')
    compat.register_safe_globals()
    ckpt = _load_checkpoint(runner_like_checkpoint, map_location='cpu')
    assert ckpt['message_hub']['log_scalars']['train/loss'].current() == 0.5
    assert ckpt['meta']['seed'] == 0


# -- 2. mmengine's package lookups through pkg_resources ----------------------------------
NO_PKG_RESOURCES = ("import sys; sys.modules['pkg_resources'] = None\n")
RESOLVE = ("from mmengine.config import Config\n"
           "path, scope = Config._get_cfg_path('mmdet::_base_/default_runtime.py', '.')\n"
           "print(scope, path)\n")


def test_upstream_mmengine_needs_pkg_resources():
    bare = _run(NO_PKG_RESOURCES + RESOLVE)
    assert bare.returncode != 0 and 'pkg_resources' in bare.stderr, bare.stderr[-2000:]
    patched = _run(NO_PKG_RESOURCES + 'import gdp_det; gdp_det.compat.apply()\n' + RESOLVE)
    assert patched.returncode == 0, patched.stderr[-2000:]
    assert patched.stdout.startswith('mmdet ') and 'default_runtime.py' in patched.stdout


# -- 3. VOCMetric's class names ----------------------------------------------------------
def _voc_metric_dataset_arg(compute, monkeypatch):
    """The ``dataset`` that ``VOCMetric.compute_metrics`` passes to ``eval_map`` (it
    labels the per-class table) for a VOC-folder dataset with two own classes."""
    from mmdet.evaluation.metrics import VOCMetric, voc_metric
    seen = []
    orig = voc_metric.eval_map

    def spy(*args, **kwargs):
        seen.append(kwargs.get('dataset'))
        return orig(*args, **kwargs)
    monkeypatch.setattr(voc_metric, 'eval_map', spy)
    metric = VOCMetric(metric='mAP')
    metric.dataset_meta = dict(classes=('circle', 'square'), dataset_type='VOC2007')
    box = torch.tensor([[10., 10., 50., 50.]])
    metric.process({}, [dict(
        img_id='0', ori_shape=(64, 64),
        gt_instances=dict(bboxes=box, labels=torch.tensor([1])),
        ignored_instances=dict(bboxes=torch.zeros((0, 4)), labels=torch.zeros(0).long()),
        pred_instances=dict(bboxes=box, scores=torch.tensor([0.9]),
                            labels=torch.tensor([1])))])
    res = compute(metric, metric.results)
    assert res['mAP'] == pytest.approx(1.0)
    return seen[0]


def test_upstream_voc_metric_labels_any_voc_folder_as_voc(monkeypatch):
    from mmdet.evaluation.metrics import VOCMetric
    compat.apply()
    patched = VOCMetric.compute_metrics
    assert _voc_metric_dataset_arg(patched.__wrapped__, monkeypatch) == 'voc'
    assert _voc_metric_dataset_arg(patched, monkeypatch) == ['circle', 'square']


def test_apply_is_idempotent():
    from mmdet.evaluation.metrics import VOCMetric
    compat.apply()
    n, method = len(ts.get_safe_globals()), VOCMetric.compute_metrics
    compat.apply()
    assert len(ts.get_safe_globals()) == n and VOCMetric.compute_metrics is method


def test_import_patches_nothing():
    out = _run('import torch.serialization as ts\n'
               'import gdp_det\n'
               'from mmdet.evaluation.metrics import VOCMetric\n'
               'from mmengine.logging import HistoryBuffer\n'
               'names = [g[1] if isinstance(g, tuple) else g for g in ts.get_safe_globals()]\n'
               "print(HistoryBuffer in names, 'builtins.getattr' in names, "
               "hasattr(VOCMetric.compute_metrics, '__wrapped__'))\n")
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split() == ['False', 'False', 'False']
