"""GDP training as GPU users run it, checked on the CPU: host syncs, half precision
and autocast, AMP, EMA, gradient accumulation and clipping, budgets with a channel
divisor, gate fingerprints in checkpoints."""
import copy
import json

import numpy as np
import pytest
import torch
import torch.nn as nn
from mmengine.optim import OptimWrapper
from torch.overrides import TorchFunctionMode

from gdp_det import gates as gates_mod
from gdp_det.gates import GateMismatchError
from gdp_det.hooks import GDPHook
from test_gdp_training import gdp_cfg
from gdp_det.testing import drive_hook, fake_runner
from test_reliability import small_net

# what reads a device tensor back to the host (a CUDA sync)
SYNC_OPS = {torch.Tensor.item, torch.Tensor.__float__, torch.Tensor.__int__,
            torch.Tensor.__bool__, torch.Tensor.__index__, torch.Tensor.tolist,
            torch.Tensor.cpu, torch.Tensor.nonzero, torch.nonzero}


class SyncCounter(TorchFunctionMode):
    """Counts calls that would synchronise a CUDA device with the host."""

    def __init__(self):
        super().__init__()
        self.calls = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        to_cpu = func is torch.Tensor.to and any(
            isinstance(v, (str, torch.device)) and str(v) == 'cpu'
            for v in list(args[1:]) + list(kwargs.values()))
        if func in SYNC_OPS or to_cpu:
            self.calls.append(getattr(func, '__name__', str(func)))
        return func(*args, **kwargs)


def gated_detector(size=(128, 128), config='mmdet::retinanet/retinanet_r50_fpn_1x_coco.py'):
    """A gated detector from ``config`` (random init) and its config."""
    from mmdet.registry import MODELS
    from mmdet.utils import register_all_modules

    from gdp_det.cli import load_config
    from gdp_det.detector import attach_gates
    register_all_modules()
    cfg = load_config(config)
    cfg.model.backbone.init_cfg = None
    return attach_gates(MODELS.build(cfg.model), size), cfg


def test_gated_forward_backward_has_no_host_sync(monkeypatch):
    """Tensor-mode forward + backward of a gated R50-FPN RetinaNet: no call that reads
    a tensor back to the host, and each gate vector is computed once per forward
    (the shared head reads the FPN group on five levels)."""
    from gdp_det.graph import flat_tensors
    model, _ = gated_detector()
    model.train()
    with torch.no_grad():
        model.gdp_gates.a.uniform_(0.2, 1.5)
        model.gdp_gates.a[::5] = 0
    computed = []
    forward = gates_mod._GateVector.forward
    monkeypatch.setattr(gates_mod._GateVector, 'forward',
                        staticmethod(lambda ctx, a, spec, *r: computed.append(spec)
                                     or forward(ctx, a, spec, *r)))
    for _ in range(2):  # the second forward recomputes the gates once more
        computed.clear()
        with SyncCounter() as counter:
            outs = flat_tensors(model(*_inputs(), mode='tensor'))
            sum(o.sum() for o in outs).backward()
        assert counter.calls == []
        assert len(computed) == len(model.gdp_gates._specs)
    assert model.gdp_gates.a.grad.abs().sum() > 0


def _inputs():
    """(batch_inputs, data_samples) of one random 128 x 128 image."""
    from mmdet.structures import DetDataSample
    h, w = 128, 128
    meta = dict(img_shape=(h, w), ori_shape=(h, w), pad_shape=(h, w), scale_factor=(1., 1.),
                batch_input_shape=(h, w))
    return torch.randn(1, 3, h, w), [DetDataSample(metainfo=meta)]


def test_hook_iteration_needs_at_most_two_syncs():
    """The hook's per-iteration work on R50 gates (gradient step, proximal step,
    budget, logging of host-side scalars) reads the device at most twice outside
    its logging/snapshot iterations."""
    model, _ = gated_detector()
    hook = GDPHook(flops_target=0.5, log_interval=1000, num_snapshots=2, export=False,
                   gdp_iters=40, lambda_init=1.0)
    gen = torch.Generator().manual_seed(0)
    counters = []

    def counted(it):
        counters.append(SyncCounter())
        return counters[-1]

    drive_hook(model, hook, 40,
               lambda it: 1e-3 * torch.randn(model.gdp_gates.a.shape, generator=gen),
               iteration_context=counted)
    worst = max(len(c.calls) for c in counters[1:-1])  # not the snapshot iterations
    assert worst <= 2, worst
    assert (model.gdp_gates.a == 0).any()  # it did cut channels


@pytest.mark.parametrize('mode', ['bf16-model', 'bf16-autocast', 'fp16-model'])
def test_gates_in_low_precision(mode):
    """``model.half()`` / bf16 weights with eps far below fp16's range, and bf16
    autocast: no NaN, outputs keep the dtype the plain model gives, zero gates stay
    exact zeros."""
    net, x = small_net()
    net.gdp_gates.set_eps(1e-12)  # underflows to 0 in fp16: 0/0 if computed there
    with torch.no_grad():
        net.gdp_gates.a[net.gdp_gates.group_slices[0]][::2] = 0
    plain = copy.deepcopy(net)
    plain.gdp_gates.detach_hooks()
    if mode == 'bf16-autocast':
        with torch.autocast('cpu', dtype=torch.bfloat16):
            out, ref = net(x), plain(x)
    else:
        dtype = torch.float16 if mode == 'fp16-model' else torch.bfloat16
        net, plain = net.to(dtype), plain.to(dtype)
        try:
            out, ref = net(x.to(dtype)), plain(x.to(dtype))
        except RuntimeError as e:  # an op this CPU build lacks in fp16
            pytest.skip(f'no {dtype} conv on this CPU: {e}')
    assert out.dtype == ref.dtype
    assert torch.isfinite(out).all()


def _toy_optim_wrapper(net, **kw):
    params = [p for n, p in net.named_parameters() if not n.startswith('gdp_gates')]
    params.append(net.gdp_gates.a)  # as mmengine builds it: every parameter
    return OptimWrapper(torch.optim.SGD(params, lr=0.01), **kw)


def _accumulating_run(net, iters, **wrapper_kw):
    """An OptimWrapper with ``accumulative_counts=2`` and a GDPHook that only takes
    plain gradient steps (no penalty, no gradient normalisation, gate_lr 1), set up
    on ``net`` as a Runner would."""
    net.train()
    wrapper = _toy_optim_wrapper(net, accumulative_counts=2, **wrapper_kw)
    wrapper.initialize_count_status(net, 0, iters)
    hook = GDPHook(flops_target=0.9, export=False, gdp_iters=iters, lambda_init=0.0,
                   grad_norm=False, gate_lr=1.0)
    runner = fake_runner(net, wrapper, iters)
    hook.before_run(runner)
    hook.before_train(runner)
    return wrapper, hook, runner


def test_accumulation_moves_gates_once_per_step_and_clipping_ignores_them():
    """``accumulative_counts=2``: the gates move on every second iteration, with the
    gradient of both; ``clip_grad``: the gates' gradient is neither in the clipped
    norm nor clipped (the hook takes the gates out of the optimizer)."""
    net, x = small_net()
    wrapper, hook, runner = _accumulating_run(net, 8, clip_grad=dict(max_norm=1e-6))
    assert all(p is not net.gdp_gates.a for g in wrapper.optimizer.param_groups
               for p in g['params'])
    moved = []
    for it in range(6):
        runner.iter = it
        hook.before_train_iter(runner, it)
        before = net.gdp_gates.a.detach().clone()
        # the gradient the gates should get: the sum over this step's iterations
        with wrapper.optim_context(net):
            loss = net(x * (1 + it)).square().mean()
        wrapper.update_params(loss)
        hook.after_train_iter(runner, it)
        moved.append(not torch.equal(before, net.gdp_gates.a))
    assert moved == [False, True] * 3
    # clipping: with max_norm=1e-6 a clipped gate step would be invisible
    assert float((net.gdp_gates.a.detach() - 1).abs().max()) > 1e-5


def _accumulated_gate_gradient(hook):
    """The gates' gradient summed over iterations 0 and 1 (loss / 2 each, as
    mmengine scales it under ``accumulative_counts=2``; eps as the hook sets it)."""
    net, x = small_net()
    net.train()
    for it in range(2):
        net.gdp_gates.set_eps(hook.eps_at(it, hook.gdp_iters))
        net(x * (1 + it)).square().mean().div(2).backward()
    return net.gdp_gates.a.grad.clone()


def test_accumulated_gate_gradient_is_the_sum_of_both_iterations():
    net, x = small_net()
    wrapper, hook, runner = _accumulating_run(net, 2)
    for it in range(2):
        runner.iter = it
        hook.before_train_iter(runner, it)
        wrapper.update_params(net(x * (1 + it)).square().mean())
        hook.after_train_iter(runner, it)
    expected = 1 - _accumulated_gate_gradient(hook)  # a = 1 - gate_lr * grad
    assert torch.allclose(net.gdp_gates.a.detach(), expected, atol=1e-6)


@pytest.mark.parametrize('min_channels', [1, 0.25, 5])
@pytest.mark.parametrize('target', [0.5, 0.3])
@pytest.mark.parametrize('config', ['mmdet::retinanet/retinanet_r50_fpn_1x_coco.py',
                                    'toy/retinanet_r18_fpn_toyvoc.py'], ids=['r50', 'toy'])
def test_budget_with_channel_divisor_lands_on_target(config, min_channels, target, tmp_path):
    """channel_divisor=8 with any min_channels: the export's FLOPs ratio is within
    +0.005 of flops_target (R50 and the toy R18 RetinaNet, random gate gradients)."""
    from conftest import CONFIG_DIR
    from gdp_det.api import prune_and_export
    from gdp_det.pruner import exported_channels
    if config.startswith('toy/'):
        config = CONFIG_DIR + config[3:]
    model, cfg = gated_detector((128, 128), config)
    hook = GDPHook(flops_target=target, min_channels=min_channels, channel_divisor=8,
                   export=False, gdp_iters=300, lambda_init=1.0, log_interval=1000)
    gen = torch.Generator().manual_seed(0)
    drive_hook(model, hook, 300,
               lambda it: torch.randn(model.gdp_gates.a.shape, generator=gen))
    a = model.gdp_gates.a.detach().numpy()
    kept = exported_channels(model.gdp_gates.graph, np.abs(a), min_channels, 8)
    predicted = hook.flops.count(kept) / hook.flops.full
    assert predicted <= target + 0.005 and predicted > target - 0.05
    if min_channels == 1 and target == 0.5:  # and the real export agrees
        _, report, _ = prune_and_export(cfg, model, str(tmp_path), name='r50', verify=False,
                                        min_channels=min_channels, channel_divisor=8)
        assert report['flops_ratio'] == pytest.approx(predicted, abs=1e-9)
        assert all(k % 8 == 0 or k == g for g, k in
                   ((x['channels'], x['kept']) for x in report['groups']))


def test_two_stage_flops_count_the_test_config_proposals():
    from mmdet.registry import MODELS
    from mmdet.utils import register_all_modules

    from gdp_det.cli import load_config
    from gdp_det.detector import attach_gates
    register_all_modules()
    cfg = load_config('mmdet::faster_rcnn/faster-rcnn_r50_fpn_1x_coco.py')
    cfg.model.backbone.init_cfg = None
    model = attach_gates(MODELS.build(cfg.model), (128, 128))
    assert model.gdp_gates.trace.num_proposals == cfg.model.test_cfg.rpn.max_per_img == 1000
    fc = [c for c in model.gdp_gates.graph.calls if c.name == 'roi_head.bbox_head.shared_fcs.0']
    assert fc[0].coef == pytest.approx(1000.0)  # rows = RoIs


def test_gate_fingerprint_refuses_other_groups():
    """A checkpoint's gates carry the group layout; gates of another layout are
    refused by name instead of loaded by position."""
    net, _ = small_net()
    state = net.state_dict()
    assert 'gdp_gates.fingerprint' in state
    other, _ = small_net()
    other.load_state_dict(state)  # same layout: fine
    fp = state['gdp_gates.fingerprint'].clone()
    fp[2] += 1  # first group one channel larger
    with pytest.raises(GateMismatchError, match='group 0'):
        other.load_state_dict(dict(state, **{'gdp_gates.fingerprint': fp}))
    with pytest.raises(GateMismatchError, match='do not match'):
        other.load_state_dict(dict(state, **{'gdp_gates.fingerprint': fp[:-1]}))


@pytest.mark.slow
def test_amp_bf16_run_reaches_target_and_exports_losslessly(make_toy_cfg, tmp_path,
                                                          monkeypatch):
    """mmengine's AmpOptimWrapper (bf16 autocast on the CPU): budget met, lossless export."""
    from mmengine.optim.optimizer import amp_optimizer_wrapper
    from mmengine.runner import Runner
    monkeypatch.setattr(amp_optimizer_wrapper, 'is_cuda_available', lambda: True)
    # (a short run: the cut at lambda's full rate, to finish in it)
    cfg = gdp_cfg(make_toy_cfg, tmp_path / 'amp', epochs=6, flops_target=0.6, cut_rate_factor=1.0)
    cfg.optim_wrapper.type = 'AmpOptimWrapper'
    cfg.optim_wrapper.dtype = 'bfloat16'
    runner = Runner.from_cfg(cfg)
    dtypes = set()
    runner.model.neck.fpn_convs[0].conv.register_forward_hook(
        lambda m, i, o: dtypes.add(o.dtype) if m.training else None)
    runner.train()
    assert dtypes == {torch.bfloat16}  # autocast really ran the gated convs in bf16
    report = json.loads((tmp_path / 'amp' / 'pruned' / 'prune_report.json').read_text())
    assert report['flops_ratio'] <= 0.6 + 0.005
    assert report['max_rel_output_diff'] <= 1e-4


@pytest.mark.slow
def test_ema_checkpoint_holds_the_live_gates(make_toy_cfg, tmp_path):
    """The toy RTMDet-tiny with the EMAHook of mmdet's RTMDet/YOLOX configs
    (ExpMomentumEMA, buffers averaged, priority 49): the checkpoint's gates equal the
    live gates (zeros stay zeros), the EMA copy is shrunk with the model after the cut
    and the export prunes exactly the live model's zero channels."""
    import os.path as osp

    from mmengine.runner import Runner

    from conftest import CONFIG_DIR
    cfg = make_toy_cfg(osp.join(CONFIG_DIR, 'rtmdet_tiny_toyvoc.py'),
                       work_dir=str(tmp_path / 'ema'), img_scale=(128, 128), batch_size=4,
                       max_epochs=6)
    assert cfg.custom_hooks[0].type == 'EMAHook'
    cfg.model = dict(type='GDPDetector', detector=cfg.model, input_size=(128, 128))
    # (a short run: the cut at lambda's full rate, to finish in it)
    cfg.custom_hooks.append(dict(type='GDPHook', flops_target=0.6, export=True,
                                 cut_rate_factor=1.0))
    cfg.train_cfg.val_interval = 1000
    cfg.default_hooks.checkpoint = dict(type='CheckpointHook', interval=6)
    cfg.optim_wrapper.optimizer.lr = 1e-3
    runner = Runner.from_cfg(cfg)
    runner.train()
    hook = next(h for h in runner.hooks if type(h).__name__ == 'GDPHook')
    live = hook.traced_gates()  # (the model was shrunk after the cut: the traced layout)
    assert (live == 0).any()
    ckpt = torch.load(tmp_path / 'ema' / 'epoch_6.pth', weights_only=False)
    assert torch.equal(ckpt['state_dict']['gdp_gates.a'], live)
    # the EMA copy was shrunk with the model: same shapes, its own (averaged) weights
    ema = next(h for h in runner.hooks if type(h).__name__ == 'EMAHook').ema_model.module
    shapes = {k: v.shape for k, v in runner.model.state_dict().items()}
    assert {k: v.shape for k, v in ema.state_dict().items()} == shapes
    assert torch.equal(ema.gdp_gates.a, runner.model.gdp_gates.a)
    assert not torch.equal(ema.bbox_head.rtm_cls[0].weight,
                           runner.model.bbox_head.rtm_cls[0].weight)
    assert torch.equal(ckpt['state_dict']['bbox_head.rtm_cls.0.weight'],  # EMA weights
                       hook.shrink.padded_copy(ema).bbox_head.rtm_cls[0].weight)
    report = json.loads((tmp_path / 'ema' / 'pruned' / 'prune_report.json').read_text())
    expected = hook.exported(live.numpy())  # the live zeros, with min_channels applied
    offsets = hook.graph.offsets
    for i, g in enumerate(report['groups']):
        assert g['kept'] == int(expected[offsets[i]:offsets[i + 1]].sum())
    assert report['max_rel_output_diff'] <= 1e-4
    assert report['flops_ratio'] <= 0.6 + 0.005


def test_conv_with_its_own_forward_is_still_gated():
    """mmcv's Conv2dAdaptivePadding calls F.conv2d itself (never ``_conv_forward``):
    it is gated on its input instead, so zeroing a gate changes its output, and the
    export of such a network is lossless."""
    from mmcv.cnn.bricks.conv2d_adaptive_padding import Conv2dAdaptivePadding

    from gdp_det.gates import add_gates
    from gdp_det.graph import trace_channel_graph
    from gdp_det.pruner import extract_pruned
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.layers = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(),
                                        Conv2dAdaptivePadding(8, 8, 3, 2), nn.ReLU(),
                                        nn.Conv2d(8, 4, 1))

        def forward(self, x):
            return self.layers(x)

        def __getitem__(self, i):
            return self.layers[i]

    torch.manual_seed(0)
    net = Net().eval()
    x = torch.randn(1, 3, 17, 17)
    net = add_gates(net, trace_channel_graph(net, lambda m: m(x)))
    assert not any(h is net[2] for h in net.gdp_gates._handles)  # a pre-hook, not the kernel
    ref = net(x)
    with torch.no_grad():
        net.gdp_gates.a[net.gdp_gates.group_slices[0]][:3] = 0
    out = net(x)
    assert (out - ref).abs().max() > 1e-4  # the gate acts on the padded conv
    pruned = copy.deepcopy(net)
    extract_pruned(pruned)
    assert pruned[2].in_channels == 5
    assert torch.allclose(pruned(x), out, atol=1e-5)
