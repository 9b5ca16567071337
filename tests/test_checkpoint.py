"""mmengine checkpoints under torch >= 2.6 (``weights_only=True`` by default):
save with a Runner, load with plain ``torch.load`` and mmengine's loaders,
resume through ``tools/train.py --resume`` and test with ``tools/test.py``."""
import os.path as osp
import pickle
import runpy
import sys

import numpy as np
import pytest
import torch
from mmengine.hooks import Hook
from mmengine.registry import HOOKS

from conftest import FASTER_RCNN_CFG, REPO, RETINANET_CFG, toy_cfg

# Several runners in one process reuse the visualizer's name; harmless.
pytestmark = pytest.mark.filterwarnings(
    'ignore:.*instance named of visualizer has been created')

# 16 training images, batch 4: 4 iterations per epoch
ITERS_PER_EPOCH = 4

PROBE = {}


@HOOKS.register_module(force=True)
class _ResumeProbe(Hook):
    """Records where a (resumed) run starts and the optimizer state then."""
    priority = 'VERY_LOW'

    def before_train(self, runner):
        PROBE['start_iter'] = runner.iter
        PROBE['start_epoch'] = runner.epoch
        PROBE['optimizer'] = _clone(runner.optim_wrapper.state_dict())
        PROBE['schedulers'] = [
            _clone(s.state_dict()) for s in runner.param_schedulers
        ]
        PROBE['lr'] = [g['lr'] for g in runner.optim_wrapper.param_groups]
        PROBE['iters'] = []

    def after_train_iter(self, runner, batch_idx, data_batch=None,
                         outputs=None):
        # runner.iter counts finished iterations; it is incremented after
        # this hook, so the n-th iteration (1-based) records n - 1 here
        PROBE['iters'].append(runner.iter + 1)


def _clone(obj):
    if isinstance(obj, torch.Tensor):
        return obj.detach().clone()
    if isinstance(obj, dict):
        return {k: _clone(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_clone(v) for v in obj)
    return obj


def _assert_same(a, b, path='state'):
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor), path
        assert a.shape == b.shape and torch.equal(a, b), path
    elif isinstance(a, dict):
        assert set(a) == set(b), path
        for k in a:
            _assert_same(a[k], b[k], f'{path}.{k}')
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b)):
            _assert_same(x, y, f'{path}[{i}]')
    else:
        assert a == b, (path, a, b)


def _run_tool(tool, argv):
    """Run ``tools/<tool>.py`` in this process with ``argv``; returns its exit code."""
    old = sys.argv
    sys.argv = [tool] + [str(a) for a in argv]
    try:
        runpy.run_path(osp.join(REPO, 'tools', tool), run_name='__main__')
    except SystemExit as e:
        return e.code or 0
    finally:
        sys.argv = old
    return 0


@pytest.fixture(scope='module')
def trained(toy_data, tmp_path_factory):
    """One epoch of RetinaNet on the toy data through ``tools/train.py``."""
    work = tmp_path_factory.mktemp('ckpt')
    cfg = toy_cfg(
        RETINANET_CFG,
        toy_data.root,
        work_dir=str(work / 'run'),
        img_scale=(96, 96),
        batch_size=4,
        max_epochs=1,
        cfg_options={
            'train_cfg.val_interval': 100,
            'default_hooks.checkpoint.interval': 1,
            'default_hooks.checkpoint.max_keep_ckpts': 5,
            'randomness.seed': 0,
            # something that is not a tensor, as GDP will store in meta
            'custom_hooks': [dict(type='_ResumeProbe')],
        })
    cfg_file = str(work / 'cfg.py')
    cfg.dump(cfg_file)
    assert _run_tool('train.py', [cfg_file, '--work-dir', cfg.work_dir]) == 0
    ckpt = osp.join(cfg.work_dir, 'epoch_1.pth')
    assert osp.isfile(ckpt)
    return dict(cfg_file=cfg_file, work_dir=cfg.work_dir, ckpt=ckpt,
                first_iters=list(PROBE['iters']))


@pytest.mark.slow
def test_first_run_iterations(trained):
    assert trained['first_iters'] == list(range(1, ITERS_PER_EPOCH + 1))


@pytest.mark.slow
def test_torch_load_default_args(trained):
    ckpt = torch.load(trained['ckpt'])  # weights_only=True by default
    assert set(ckpt) >= {
        'meta', 'state_dict', 'optimizer', 'message_hub', 'param_schedulers'
    }
    meta = ckpt['meta']
    assert meta['epoch'] == 1
    assert meta['iter'] == ITERS_PER_EPOCH
    assert tuple(meta['dataset_meta']['classes']) == ('circle', 'square',
                                                      'triangle', 'star',
                                                      'cross')
    assert meta['seed'] == 0
    hub = ckpt['message_hub']
    loss = hub['log_scalars']['train/loss']
    # a real HistoryBuffer with numpy history, one entry per iteration
    assert type(loss).__name__ == 'HistoryBuffer'
    assert len(loss.data[0]) == ITERS_PER_EPOCH
    assert np.isfinite(loss.mean())
    assert loss.current() > 0
    assert hub['runtime_info']['iter'] == ITERS_PER_EPOCH - 1
    # SGD/AdamW state for every trained parameter
    n_params = sum(1 for _ in ckpt['state_dict'])
    assert len(ckpt['optimizer']['state']) > 0.5 * n_params
    assert all(torch.isfinite(v).all() for v in ckpt['state_dict'].values()
               if v.is_floating_point())


def test_weights_only_still_guards(tmp_path):
    """The allowlist is narrow: arbitrary objects are still refused."""

    class Evil:

        def __reduce__(self):
            return (print, ('pwned', ))

    path = tmp_path / 'evil.pth'
    torch.save({'x': Evil()}, path)
    with pytest.raises(pickle.UnpicklingError):
        torch.load(path)

    # getattr is allowed only for HistoryBuffer's statistics methods, not
    # to reach other attributes of allowed classes
    from mmengine.config import Config
    from mmengine.logging import HistoryBuffer

    class Sneaky:

        def __init__(self, obj, name):
            self.obj, self.name = obj, name

        def __reduce__(self):
            return (getattr, (self.obj, self.name))

    for obj, name in ((Config, 'fromfile'), (HistoryBuffer, '__init__'),
                      (HistoryBuffer, 'update')):
        torch.save({'x': Sneaky(obj, name)}, tmp_path / 'sneaky.pth')
        with pytest.raises(pickle.UnpicklingError):
            torch.load(tmp_path / 'sneaky.pth')
    torch.save({'x': Sneaky(HistoryBuffer, 'mean')}, tmp_path / 'ok.pth')
    assert torch.load(tmp_path / 'ok.pth')['x'] is HistoryBuffer.mean


def test_meta_objects_roundtrip(tmp_path):
    from mmengine.config import Config, ConfigDict
    from mmengine.logging import HistoryBuffer
    buf = HistoryBuffer()
    for v in (1.0, 2.0, 6.0):
        buf.update(v)
    obj = {
        'cfg': ConfigDict(a=1, b=dict(c=[1, (2, 3)])),
        'config': Config(dict(model=dict(type='RetinaNet'))),
        'f32': np.float32(1.5),
        'i64': np.int64(7),
        'arr': np.arange(4, dtype=np.int32),
        'buf': buf,
    }
    torch.save(obj, tmp_path / 'meta.pth')
    back = torch.load(tmp_path / 'meta.pth')
    assert isinstance(back['cfg'], ConfigDict)
    assert back['cfg'].b.c == [1, (2, 3)]
    assert back['config'].model.type == 'RetinaNet'
    assert back['f32'] == np.float32(1.5) and back['f32'].dtype == np.float32
    assert back['i64'] == 7 and back['i64'].dtype == np.int64
    assert back['arr'].tolist() == [0, 1, 2, 3]
    assert back['buf'].mean() == pytest.approx(3.0)
    assert back['buf'].max() == 6.0


@pytest.mark.slow
def test_mmengine_load_checkpoint(trained):
    from mmengine.config import Config
    from mmengine.runner import load_checkpoint

    from mmdet.registry import MODELS
    from mmdet.utils import register_all_modules
    register_all_modules(init_default_scope=False)
    cfg = Config.fromfile(trained['cfg_file'])
    model = MODELS.build(cfg.model)
    ckpt = load_checkpoint(model, trained['ckpt'], map_location='cpu',
                           strict=True)
    assert ckpt['meta']['iter'] == ITERS_PER_EPOCH
    saved = torch.load(trained['ckpt'])['state_dict']
    own = model.state_dict()
    assert set(saved) == set(own)
    for k, v in saved.items():
        assert torch.equal(own[k], v), k


@pytest.mark.slow
def test_resume_continues(trained):
    """``tools/train.py --resume`` picks the last checkpoint, starts at its
    iteration with its optimizer and scheduler state, and trains on."""
    saved = torch.load(trained['ckpt'])
    PROBE.clear()
    assert _run_tool('train.py', [
        trained['cfg_file'], '--work-dir', trained['work_dir'], '--resume',
        '--cfg-options', 'train_cfg.max_epochs=2'
    ]) == 0
    assert PROBE['start_iter'] == ITERS_PER_EPOCH
    assert PROBE['start_epoch'] == 1
    _assert_same(PROBE['optimizer']['state'], saved['optimizer']['state'],
                 'optimizer.state')
    assert PROBE['optimizer']['param_groups'] == saved['optimizer'][
        'param_groups']
    _assert_same(PROBE['schedulers'], saved['param_schedulers'],
                 'param_schedulers')
    # the learning rate continues where the first run stopped
    assert PROBE['lr'] == [g['lr'] for g in saved['optimizer']['param_groups']]
    assert PROBE['iters'] == list(
        range(ITERS_PER_EPOCH + 1, 2 * ITERS_PER_EPOCH + 1))
    second = torch.load(osp.join(trained['work_dir'], 'epoch_2.pth'))
    assert second['meta']['epoch'] == 2
    assert second['meta']['iter'] == 2 * ITERS_PER_EPOCH
    assert len(second['message_hub']['log_scalars']['train/loss'].data[0]) \
        == 2 * ITERS_PER_EPOCH
    # the weights moved on from the resumed ones
    moved = [
        not torch.equal(second['state_dict'][k], v)
        for k, v in saved['state_dict'].items() if v.is_floating_point()
    ]
    assert sum(moved) > 0.5 * len(moved)


@pytest.mark.slow
def test_resume_from_path(trained, tmp_path):
    """``--resume PATH`` resumes from that file into another work dir."""
    PROBE.clear()
    assert _run_tool('train.py', [
        trained['cfg_file'], '--work-dir', tmp_path / 'other', '--resume',
        trained['ckpt'], '--cfg-options', 'train_cfg.max_epochs=2'
    ]) == 0
    assert PROBE['start_iter'] == ITERS_PER_EPOCH
    assert PROBE['iters'][-1] == 2 * ITERS_PER_EPOCH
    assert osp.isfile(tmp_path / 'other' / 'epoch_2.pth')


@pytest.mark.slow
def test_tools_test_dumps_predictions(trained, toy_data, tmp_path):
    out = tmp_path / 'preds.pkl'
    assert _run_tool('test.py', [
        trained['cfg_file'], trained['ckpt'], '--work-dir', tmp_path / 'test',
        '--out', out
    ]) == 0
    with open(out, 'rb') as f:
        preds = pickle.load(f)
    assert len(preds) == toy_data.num_val
    ids = sorted(p['img_id'] for p in preds)
    assert ids == sorted(f'{i:06d}' for i in range(
        toy_data.num_train + 1, toy_data.num_train + toy_data.num_val + 1))
    for p in preds:
        assert p['pred_instances']['bboxes'].shape[-1] == 4


@pytest.mark.slow
def test_gdp_checkpoint_with_a_plain_config_is_refused(trained, tmp_path, capsys):
    """The reverse of a plain checkpoint given to tools/prune.py: a GDP-trained
    checkpoint (with gates) would silently lose its gates in a plain detector."""
    ckpt = torch.load(trained['ckpt'], map_location='cpu', weights_only=False)
    ckpt['state_dict']['gdp_gates.a'] = torch.zeros(10)
    ckpt['state_dict']['gdp_gates.eps'] = torch.tensor(1e-4)
    gdp_ckpt = tmp_path / 'gdp.pth'
    torch.save(ckpt, gdp_ckpt)
    rc = _run_tool('test.py', [trained['cfg_file'], gdp_ckpt, '--work-dir', tmp_path / 't'])
    assert rc == 2 and 'written by GDP training' in capsys.readouterr().err
    rc = _run_tool('train.py', [trained['cfg_file'], '--work-dir', tmp_path / 'ft',
                                '--cfg-options', f'load_from={gdp_ckpt}'])
    assert rc == 2 and 'tools/prune.py' in capsys.readouterr().err
    assert not list((tmp_path / 'ft').glob('*.pth'))


@pytest.mark.slow
def test_tools_test_refuses_a_mismatching_checkpoint(trained, tmp_path, capsys):
    """mmengine would skip a weight of another shape with a warning and test a
    partly random model; tools/test.py names the weight and stops."""
    ckpt = torch.load(trained['ckpt'], map_location='cpu', weights_only=False)
    key = 'neck.fpn_convs.0.conv.weight'
    ckpt['state_dict'][key] = ckpt['state_dict'][key][:5]
    bad = tmp_path / 'bad.pth'
    torch.save(ckpt, bad)
    rc = _run_tool('test.py', [trained['cfg_file'], bad, '--work-dir', tmp_path / 't'])
    err = capsys.readouterr().err
    assert rc == 2 and key in err and 'does not match the config' in err


@pytest.mark.slow
def test_faster_rcnn_trains_and_saves(toy_data, tmp_path):
    """The Faster R-CNN config trains an epoch (4 iterations), evaluates with
    VOCMetric, and its checkpoint loads with weights_only=True."""
    from mmengine.runner import Runner
    cfg = toy_cfg(
        FASTER_RCNN_CFG,
        toy_data.root,
        work_dir=str(tmp_path / 'frcnn'),
        img_scale=(96, 96),
        batch_size=4,
        max_epochs=1,
        cfg_options={
            'train_cfg.val_interval': 1,
            'default_hooks.checkpoint.interval': 1
        })
    runner = Runner.from_cfg(cfg)
    runner.train()
    metrics = runner.val_loop.run()
    assert 0.0 <= metrics['pascal_voc/mAP'] <= 1.0
    ckpt = torch.load(osp.join(cfg.work_dir, 'epoch_1.pth'))
    assert ckpt['meta']['iter'] == ITERS_PER_EPOCH
    assert 'roi_head.bbox_head.fc_cls.weight' in ckpt['state_dict']
    assert ckpt['state_dict']['roi_head.bbox_head.fc_cls.weight'].shape[0] \
        == 5 + 1
