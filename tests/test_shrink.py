"""Shrinking the live gated model once the cut is final (gdp_det.shrink,
``GDPHook(shrink_after_cut=True)``): the same outputs, the same optimizer and EMA steps
on the kept channels, checkpoints in the traced layout that resume to the same state,
and the same lossless export."""
import copy
import json
import os.path as osp

import numpy as np
import pytest
import torch
import torch.nn as nn
from mmengine.config import Config
from mmengine.model import ExponentialMovingAverage
from mmengine.runner import Runner

from conftest import CONFIG_DIR, FASTER_RCNN_CFG, RETINANET_CFG, toy_cfg
from gdp_det.api import max_output_difference
from gdp_det.flops import FlopsModel
from gdp_det.gates import add_gates
from gdp_det.graph import trace_channel_graph
from gdp_det.pruner import cut_tensor, exported_channels, pad_tensor
from gdp_det.shrink import ChannelShrink, shrink_averaged, shrink_optimizer
from test_gdp_training import _Interrupted, _StopAfterEpoch, gdp_cfg, gdp_hook

pytestmark = pytest.mark.filterwarnings(
    'ignore:.*instance named of visualizer has been created')


class ResidualNet(nn.Module):
    """Stem, a residual block, a depthwise conv with GroupNorm and a linear head on
    flattened features: producers, consumers, BN, GN, a carrier, a flattened consumer."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU())
        self.block = nn.Sequential(nn.Conv2d(16, 32, 3, padding=1), nn.BatchNorm2d(32),
                                   nn.ReLU(), nn.Conv2d(32, 16, 3, padding=1),
                                   nn.BatchNorm2d(16))
        self.dw = nn.Sequential(nn.Conv2d(16, 16, 3, padding=1, groups=16),
                                nn.GroupNorm(4, 16), nn.ReLU())
        self.head = nn.Linear(16 * 4 * 4, 10)

    def forward(self, x):
        x = self.stem(x)
        x = torch.relu(x + self.block(x))
        x = nn.functional.adaptive_avg_pool2d(self.dw(x), 4)
        return self.head(x.flatten(1))


def gated_net():
    """A gated :class:`ResidualNet` with a third of its gates at 0 and the others
    between 0.5 and 1.5, and its input."""
    torch.manual_seed(0)
    net = ResidualNet().eval()
    x = torch.randn(4, 3, 16, 16)
    add_gates(net, trace_channel_graph(net, lambda m: m(x)))
    with torch.no_grad():
        a = net.gdp_gates.a
        a.uniform_(0.5, 1.5)
        a[torch.randperm(a.numel())[:a.numel() // 3]] = 0
    return net, x


def shrink_of(model, min_channels=1):
    gates = model.gdp_gates
    kept = exported_channels(gates.graph, gates.a.detach().abs().numpy(), min_channels)
    return ChannelShrink(gates.graph, kept)


def test_shrunk_net_computes_the_same_and_counts_its_flops():
    net, x = gated_net()
    ref = net(x)
    traced = net.gdp_gates.graph
    shrink = shrink_of(net)
    kept = np.zeros(traced.num_channels, bool)
    kept[shrink.index] = True
    shrink.apply(net)
    assert torch.allclose(net(x), ref, rtol=1e-5, atol=1e-6)
    # the live model is narrower and its gates are the kept ones
    assert net.block[0].out_channels == len(shrink.kept[1]) < 32
    # the stem's group ties the 4 channels of each GroupNorm group: 4 gates for 16
    assert net.stem[0].out_channels == 4 * len(shrink.kept[0]) < 16
    assert net.head.in_features == 16 * net.stem[0].out_channels
    assert net.gdp_gates.a.numel() == len(shrink.index) == traced.num_channels - shrink.removed
    # the narrowed graph is the live model's: its full FLOPs are the traced graph's
    # count with the removed channels gone
    assert FlopsModel(shrink.graph).full == FlopsModel(traced).count(kept)
    # the traced layout back: the same function, zeros at the removed gates
    full = shrink.padded_copy(net)
    assert full.gdp_gates.a.numel() == traced.num_channels
    assert int((full.gdp_gates.a != 0).sum()) == int((net.gdp_gates.a != 0).sum())
    assert torch.allclose(full(x), ref, rtol=1e-5, atol=1e-6)


def test_a_second_shrink_leaves_the_model_as_one_shrink_would():
    """A gradual cut shrinks twice: the chain (the second shrink cutting the first's
    narrowed model) gives the model, optimizer state, padded checkpoint and padded copy
    that one shrink by the second mask gives, and computes what the gated net computes."""
    net, x = gated_net()
    traced = net.gdp_gates.graph
    params = lambda m: [p for n, p in m.named_parameters()  # noqa: E731
                        if not n.startswith('gdp_gates')]
    opt = torch.optim.SGD(params(net), lr=0.1, momentum=0.9)
    net(x).square().mean().backward()
    opt.step()
    first = shrink_of(net)
    with torch.no_grad():  # more gates to 0: half of each group's live ones, one kept
        for sl in net.gdp_gates.group_slices:
            live = np.flatnonzero(net.gdp_gates.a[sl].numpy()) + sl.start
            net.gdp_gates.a[live[1::2]] = 0
    ref = net(x)
    one, one_opt = copy.deepcopy((net, opt))
    single = shrink_of(one)
    assert 0 < len(single.index) < len(first.index)
    shrink_optimizer(one_opt, single.apply(one))
    two, two_opt = copy.deepcopy((net, opt))
    shrink_optimizer(two_opt, first.apply(two))  # (made before those gates were cut)
    kept = np.zeros(traced.num_channels, bool)
    kept[single.index] = True
    second = first.then(kept)
    shrink_optimizer(two_opt, second.apply(two))
    assert np.array_equal(second.index, single.index) and second.removed == single.removed
    assert second.traced is traced and second.graph.num_channels == single.graph.num_channels
    mine, theirs = two.state_dict(), one.state_dict()
    assert set(mine) == set(theirs)
    for k in theirs:
        if k != 'gdp_gates.fingerprint':  # (a gate set of another graph, the same sizes)
            assert torch.equal(mine[k], theirs[k]), k
    assert torch.allclose(two(x), ref, rtol=1e-5, atol=1e-6)
    padded = []
    for shrink, m, o in ((second, two, two_opt), (single, one, one_opt)):
        state, opt_state = m.state_dict(), o.state_dict()
        shrink.pad_state_dict(state)
        shrink.pad_optimizer_state(opt_state, o, m)
        padded.append((state, opt_state['state']))
    (mine, my_opt), (theirs, their_opt) = padded
    for k, v in theirs.items():
        assert torch.equal(mine[k], v), k
    assert mine['block.0.weight'].shape == net.block[0].weight.shape
    assert torch.equal(mine['gdp_gates.fingerprint'], net.gdp_gates.fingerprint)
    assert len(their_opt) == len(params(net))
    for i, entry in their_opt.items():
        assert torch.equal(my_opt[i]['momentum_buffer'], entry['momentum_buffer']), i
    full = second.padded_copy(two)
    assert torch.equal(full.gdp_gates.a, single.padded_copy(one).gdp_gates.a)
    assert torch.allclose(full(x), ref, rtol=1e-5, atol=1e-6)
    # a mask keeping removed channels (an export's zero-gated top-ups) keeps what is live
    assert np.array_equal(first.then(np.ones(traced.num_channels, bool)).index, first.index)
    none = first.then(np.zeros(traced.num_channels, bool))  # every group keeps one
    assert len(none.index) == len(traced.groups)


@pytest.mark.parametrize('optimizer', ['sgd', 'adamw'])
def test_a_step_after_the_shrink_is_the_step_of_the_kept_channels(optimizer):
    """SGD with momentum and AdamW, both with weight decay and two steps of state:
    the shrunk model's optimizer points at its new parameters, its state is the
    full one's restricted to the kept channels, and from the same (restricted)
    gradients its step gives exactly the full step's kept entries."""
    net, x = gated_net()
    net.train()
    params = [p for n, p in net.named_parameters() if not n.startswith('gdp_gates')]
    opt = (torch.optim.SGD(params, lr=0.1, momentum=0.9, weight_decay=1e-2)
           if optimizer == 'sgd' else torch.optim.AdamW(params, lr=0.01, weight_decay=0.05))
    loss = lambda m: m(x).square().mean()  # noqa: E731
    for _ in range(2):
        opt.zero_grad()
        loss(net).backward()
        opt.step()
    small, small_opt = copy.deepcopy((net, opt))
    shrink = shrink_of(small)
    shrink_optimizer(small_opt, shrink.apply(small))
    live = [p for n, p in small.named_parameters() if not n.startswith('gdp_gates')]
    assert [id(p) for g in small_opt.param_groups for p in g['params']] == [id(p) for p in live]
    assert set(small_opt.state) == set(live)
    full = dict(net.named_parameters())
    pairs = [(full[n], p, shrink.cuts.get(n, [])) for n, p in small.named_parameters()
             if not n.startswith('gdp_gates')]
    assert sum(bool(cut) for *_, cut in pairs) >= 10  # most parameters were cut
    # a backward pass gives the kept channels' gradients (float rounding aside)
    for model in (net, small):
        model.zero_grad()
        loss(model).backward()
    for big, p, cut in pairs:
        assert torch.allclose(cut_tensor(big.grad, cut), p.grad, rtol=1e-4, atol=1e-7)
    assert torch.allclose(net.gdp_gates.a.grad[shrink.index], small.gdp_gates.a.grad,
                          rtol=1e-4, atol=1e-7)
    for big, p, cut in pairs:
        p.grad = cut_tensor(big.grad, cut)
    opt.step()
    small_opt.step()
    for big, p, cut in pairs:
        assert torch.equal(cut_tensor(big.detach(), cut), p.detach())
        for k, v in opt.state[big].items():
            mine = small_opt.state[p][k]
            assert torch.equal(cut_tensor(v, cut) if v.shape == big.shape else v, mine), k
    assert any(torch.count_nonzero(v) for big, *_ in pairs
               for v in opt.state[big].values() if v.dim())  # the state was not empty


def test_ema_copy_is_shrunk_consistently():
    """An EMA copy shrunk with the model averages exactly what the full copy averages
    on the kept channels, and holds the live model's shapes."""
    net, x = gated_net()
    ema = ExponentialMovingAverage(net, momentum=0.1, update_buffers=True)
    gen = torch.Generator().manual_seed(1)

    def step():  # a random change of every parameter, in the full shapes
        return {n: torch.randn(p.shape, generator=gen) for n, p in net.named_parameters()}

    @torch.no_grad()
    def apply(model, delta, cuts):
        for n, p in model.named_parameters():
            p.add_(cut_tensor(delta[n], cuts.get(n, [])))

    for _ in range(2):
        apply(net, step(), {})
        ema.update_parameters(net)
    small, small_ema = copy.deepcopy((net, ema))
    shrink = shrink_of(small)
    shrink.apply(small)
    shrink_averaged(small_ema, shrink)
    delta = step()
    apply(net, delta, {})
    apply(small, delta, shrink.cuts)
    ema.update_parameters(net)
    small_ema.update_parameters(small)
    mine, theirs = small_ema.module.state_dict(), ema.module.state_dict()
    live = small.state_dict()
    for k, v in mine.items():
        assert v.shape == live[k].shape, k
        if k != 'gdp_gates.fingerprint':
            assert torch.equal(cut_tensor(theirs[k], shrink.cuts.get(k, [])), v), k
    assert not torch.equal(mine['block.0.weight'], live['block.0.weight'])  # averaged
    assert int(small_ema.steps) == int(ema.steps) == 3


def detector(config, input_size=(64, 64)):
    from mmdet.registry import MODELS
    cfg = Config.fromfile(config)
    cfg.model.backbone.init_cfg = None
    torch.manual_seed(0)
    model = MODELS.build(dict(type='GDPDetector', detector=cfg.model,
                              input_size=input_size)).eval()
    with torch.no_grad():  # half of every group's gates at 0, the others near 1
        for sl in model.gdp_gates.group_slices:
            seg = model.gdp_gates.a[sl]
            seg.uniform_(0.8, 1.2)
            seg[torch.randperm(len(seg))[:len(seg) // 2]] = 0
    return model


@pytest.mark.parametrize('config', [RETINANET_CFG, FASTER_RCNN_CFG],
                         ids=['retinanet', 'faster-rcnn'])
def test_detector_outputs_equal_before_and_after_the_shrink(config):
    model = detector(config)
    before = copy.deepcopy(model)
    params = sum(p.numel() for p in model.parameters())
    shrink = shrink_of(model)
    shrink.apply(model)
    assert sum(p.numel() for p in model.parameters()) < 0.5 * params
    assert max_output_difference(before, model, (64, 64)) <= 1e-5
    assert max_output_difference(before, shrink.padded_copy(model), (64, 64)) <= 1e-5


# -- GDP runs on the toy data (Runner) -------------------------------------------------

HOOK = dict(flops_target=0.6, lambda_init=1.0, lambda_span=0.25, min_channels=0.25)
EXPORT = 'pruned/gdp_retinanet_r18_fpn_toyvoc_pruned'


def run_cfg(toy_data, work_dir, **hook):
    """4 epochs of 4 iterations, the cut in the second."""
    make = lambda config, **kw: toy_cfg(config, toy_data.root, **kw)  # noqa: E731
    return gdp_cfg(make, work_dir, epochs=4, log_interval=1, **dict(HOOK, **hook))


@pytest.fixture(scope='module')
def uninterrupted(toy_data, tmp_path_factory):
    work = tmp_path_factory.mktemp('shrink') / 'full'
    runner = Runner.from_cfg(run_cfg(toy_data, work))
    runner.train()
    return runner, work


@pytest.mark.slow
def test_interrupted_run_after_the_shrink_resumes_to_the_same_state(uninterrupted, toy_data,
                                                                    tmp_path):
    """A run shrunk in epoch 2, killed after epoch 3 and resumed from its checkpoint
    ends in the state of the uninterrupted run: the same shapes, weights, gates,
    lambda and export. The checkpoint is in the traced layout (full width, the removed
    channels at 0, their gates at 0)."""
    full, full_dir = uninterrupted
    hook = gdp_hook(full)
    assert 4 < hook.shrunk_at <= 8  # shrunk in epoch 2 (4 iterations per epoch)
    part = Runner.from_cfg(run_cfg(toy_data, tmp_path / 'part'))
    part.register_hook(_StopAfterEpoch(3), priority='LOWEST')
    with pytest.raises(_Interrupted):
        part.train()
    ckpt = torch.load(tmp_path / 'part' / 'epoch_3.pth', weights_only=False)
    traced = hook.graph
    a = ckpt['state_dict']['gdp_gates.a']
    assert a.numel() == traced.num_channels
    assert ckpt['gdp_hook']['shrunk'] == hook.shrink.index.tolist()
    removed = np.setdiff1d(np.arange(traced.num_channels), hook.shrink.index)
    assert len(removed) > 0 and not a[removed].any()
    shapes = {k: v.shape for k, v in hook.shrink.padded_copy(full.model).state_dict().items()}
    assert {k: v.shape for k, v in ckpt['state_dict'].items()} == shapes
    for key, cut in hook.shrink.cuts.items():  # zeros in the removed channels
        t = ckpt['state_dict'][key]
        assert torch.equal(pad_tensor(cut_tensor(t, cut), cut), t), key
    resumed_cfg = run_cfg(toy_data, tmp_path / 'part')
    resumed_cfg.resume = True
    resumed_cfg.load_from = str(tmp_path / 'part' / 'epoch_3.pth')
    resumed = Runner.from_cfg(resumed_cfg)
    resumed.train()
    mine, theirs = resumed.model.state_dict(), full.model.state_dict()
    assert set(mine) == set(theirs)
    for k in theirs:
        assert mine[k].shape == theirs[k].shape, k
        assert torch.allclose(mine[k].float(), theirs[k].float(), rtol=1e-4, atol=1e-6), k
    assert gdp_hook(resumed).lam == pytest.approx(hook.lam)
    assert gdp_hook(resumed).shrunk_at == hook.shrunk_at
    reports = [json.loads((d / 'pruned' / 'prune_report.json').read_text())
               for d in (full_dir, tmp_path / 'part')]
    assert reports[0]['groups'] == reports[1]['groups']
    assert reports[0]['flops_ratio'] == reports[1]['flops_ratio'] <= 0.6 + 0.005


@pytest.mark.slow
def test_final_export_computes_what_the_shrunk_model_computes(uninterrupted):
    """The export at the end of a shrunk run is verified as before, and rebuilt from
    its files it computes what the shrunk live model computes."""
    from mmdet.registry import MODELS
    runner, work = uninterrupted
    assert gdp_hook(runner).shrink is not None
    report = json.loads((work / 'pruned' / 'prune_report.json').read_text())
    assert report['max_rel_output_diff'] <= 1e-4
    assert report['shrunk_after_iters'] == gdp_hook(runner).shrunk_at
    exported = MODELS.build(Config.fromfile(str(work / f'{EXPORT}.py')).model)
    exported.load_state_dict(torch.load(work / f'{EXPORT}.pth',
                                        weights_only=True)['state_dict'])
    assert max_output_difference(runner.model, exported, (128, 128)) <= 1e-4


@pytest.mark.slow
def test_shrunk_run_trains_what_the_full_width_run_trains(uninterrupted, toy_data, tmp_path):
    """The same run without the shrink: the same channels cut, and an export with the
    same weights, float rounding apart: the shrunk convs sum fewer zero terms, in another
    order, and the kept gates' normalised steps (``gate_lr`` 0.1 times a gradient of RMS
    1) carry those last-digit differences on for the 12 iterations after the cut: 8.8e-5
    on one gate of 0.105 with one thread, within 1e-4 relative with two (the bound: 1e-3, 1 %
    of a step, far below a different run's moves)."""
    shrunk, shrunk_dir = uninterrupted
    wide = Runner.from_cfg(run_cfg(toy_data, tmp_path / 'wide', shrink_after_cut=False))
    wide.train()
    assert gdp_hook(wide).shrink is None
    a_wide, a_shrunk = wide.model.gdp_gates.a.detach(), gdp_hook(shrunk).traced_gates()
    assert torch.equal(a_wide == 0, a_shrunk == 0)
    assert torch.allclose(a_wide, a_shrunk, rtol=0, atol=1e-3)
    mine, theirs = (torch.load(d / f'{EXPORT}.pth', weights_only=True)['state_dict']
                    for d in (shrunk_dir, tmp_path / 'wide'))
    assert set(mine) == set(theirs)
    for k in theirs:
        assert torch.allclose(mine[k].float(), theirs[k].float(), rtol=1e-3, atol=1e-5), k


@pytest.mark.slow
def test_gradual_cut_shrinks_as_it_goes_and_resumes_between_shrinks(toy_data, tmp_path):
    """``budget_ramp``: the target falls from 1 to 0.6 over the first 12 of 16 iterations;
    the live model shrinks each time it could lose another 0.1 of the FLOPs and at the
    final cut; the export is within budget and lossless; a run killed after iteration 8,
    between shrinks, and resumed ends in the uninterrupted run's state."""
    ramp = dict(budget_ramp=0.75)
    full = Runner.from_cfg(run_cfg(toy_data, tmp_path / 'full', **ramp))
    full.train()
    hook = gdp_hook(full)
    ratios = [r for _, r in hook.shrinks]
    assert len(ratios) >= 3 and ratios[-1] <= 0.6
    assert all(r <= before - 0.1 for before, r in zip([1.0] + ratios, ratios[:-1]))
    assert hook.shrinks[0][0] <= 8 < hook.shrinks[-1][0] <= 12
    report = json.loads((tmp_path / 'full' / 'pruned' / 'prune_report.json').read_text())
    assert report['shrinks'] == hook.shrinks and report['shrunk_after_iters'] == hook.shrunk_at
    assert report['flops_ratio'] <= 0.6 + 0.005 and report['max_rel_output_diff'] <= 1e-4
    part = Runner.from_cfg(run_cfg(toy_data, tmp_path / 'part', **ramp))
    part.register_hook(_StopAfterEpoch(2), priority='LOWEST')
    with pytest.raises(_Interrupted):
        part.train()
    resumed_cfg = run_cfg(toy_data, tmp_path / 'part', **ramp)
    resumed_cfg.resume = True
    resumed_cfg.load_from = str(tmp_path / 'part' / 'epoch_2.pth')
    resumed = Runner.from_cfg(resumed_cfg)
    resumed.train()
    assert gdp_hook(resumed).shrinks == hook.shrinks
    mine, theirs = resumed.model.state_dict(), full.model.state_dict()
    assert set(mine) == set(theirs)
    for k in theirs:
        assert mine[k].shape == theirs[k].shape, k
        assert torch.allclose(mine[k].float(), theirs[k].float(), rtol=1e-4, atol=1e-6), k


@pytest.mark.slow
def test_ema_run_resumed_after_the_shrink_matches_the_uninterrupted_one(make_toy_cfg, tmp_path):
    """The toy RTMDet-tiny with its EMAHook, shrunk in epoch 2, killed after epoch 3 and
    resumed: the EMA copy (loaded in the traced layout, then shrunk with the model)
    ends where the uninterrupted run's does, and so does the model."""
    def cfg(work):
        c = make_toy_cfg(osp.join(CONFIG_DIR, 'rtmdet_tiny_toyvoc.py'), work_dir=str(work),
                         img_scale=(128, 128), batch_size=4, max_epochs=4)
        c.model = dict(type='GDPDetector', detector=c.model, input_size=(128, 128))
        c.custom_hooks.append(dict(type='GDPHook', export=False, **HOOK))
        c.train_cfg.val_interval = 1000
        c.default_hooks.checkpoint = dict(type='CheckpointHook', interval=1)
        c.optim_wrapper.optimizer.lr = 1e-3
        c.randomness = dict(seed=0, deterministic=False)
        c.train_dataloader.sampler = dict(type='DefaultSampler', shuffle=True, seed=0)
        c.train_dataloader.pop('batch_sampler', None)
        c.train_dataloader.dataset.pipeline = [
            t for t in c.train_dataloader.dataset.pipeline if t['type'] != 'RandomFlip']
        return c

    def ema(runner):
        return next(h for h in runner.hooks if type(h).__name__ == 'EMAHook').ema_model

    full = Runner.from_cfg(cfg(tmp_path / 'full'))
    full.train()
    assert gdp_hook(full).shrunk_at <= 8  # before the interruption
    part = Runner.from_cfg(cfg(tmp_path / 'part'))
    part.register_hook(_StopAfterEpoch(3), priority='LOWEST')
    with pytest.raises(_Interrupted):
        part.train()
    resumed_cfg = cfg(tmp_path / 'part')
    resumed_cfg.resume = True
    resumed_cfg.load_from = str(tmp_path / 'part' / 'epoch_3.pth')
    resumed = Runner.from_cfg(resumed_cfg)
    resumed.train()
    for mine, theirs in ((resumed.model, full.model), (ema(resumed), ema(full))):
        mine, theirs = mine.state_dict(), theirs.state_dict()
        assert set(mine) == set(theirs)
        for k in theirs:
            assert mine[k].shape == theirs[k].shape, k
            assert torch.allclose(mine[k].float(), theirs[k].float(), rtol=1e-4, atol=1e-6), k
    assert int(ema(resumed).steps) == int(ema(full).steps) == 16
