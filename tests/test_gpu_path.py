"""The GPU path's second reading (issue 20), each finding proven on the CPU with a
stand-in: gradient accumulation and lambda, the AMP loss scale and fused optimizers,
fp16 gate gradients, fp16 eps, torch.compile, latency timing on CUDA (a fake clock),
DDP ranks waiting for rank 0 (gloo with a short timeout for the NCCL watchdog), an
op without a CPU kernel."""
import copy
import os.path as osp
import time
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn as nn
from mmengine.optim import OptimWrapper

from fake_clocks import FakeCuda
from gdp_det.hooks import GDPHook
from gdp_det.testing import fake_runner
from test_reliability import small_net


def _wrapper(net, **kw):
    """An optimizer wrapper over ``net``'s parameters, gates included (as mmengine
    builds it; the hook takes them out)."""
    return OptimWrapper(torch.optim.SGD(net.parameters(), lr=0.01), **kw)


def test_lambda_grows_over_its_span_whatever_the_accumulation():
    """``accumulative_counts=4``: lambda moves once per optimizer step, and still
    grows 1e4-fold over the first ``lambda_span`` of the phase (it grew 10-fold)."""
    net, x = small_net()
    net.train()
    iters, counts = 400, 4
    wrapper = _wrapper(net, accumulative_counts=counts)
    wrapper.initialize_count_status(net, 0, iters)
    hook = GDPHook(flops_target=0.5, export=False, lambda_init=1e-6, gate_lr=1e-3,
                   lambda_span=0.5)
    runner = fake_runner(net, wrapper, iters)
    hook.before_run(runner)
    hook.before_train(runner)
    for it in range(iters // 2):
        runner.iter = it
        hook.before_train_iter(runner, it)
        wrapper.update_params(net(x).square().mean())
        hook.after_train_iter(runner, it)
    assert hook.ratio > 0.5  # the budget was never met: lambda grew at every step
    assert 0.5e4 < hook.lam / 1e-6 < 2e4


def _amp_run(net, optimizer):
    """A GDPHook taking plain gradient steps (gate_lr 1, no penalty, no gradient
    normalisation) next to an AMP optimizer wrapper stand-in: mmengine's
    ``AmpOptimWrapper`` needs CUDA, so its ``step`` is replayed by :func:`_amp_step`
    with torch's real ``GradScaler`` on the CPU."""
    net.train()
    scaler = torch.amp.GradScaler('cpu', init_scale=2.0 ** 10, growth_interval=1)
    wrapper = OptimWrapper(optimizer)
    wrapper.loss_scaler = scaler
    hook = GDPHook(flops_target=0.9, export=False, gdp_iters=10, lambda_init=0.0,
                   grad_norm=False, gate_lr=1.0, grad_momentum=0.0)
    runner = fake_runner(net, wrapper, 10)
    hook.before_run(runner)
    hook.before_train(runner)
    hook.before_train_iter(runner, 0)
    return hook, runner, scaler


def _amp_step(wrapper, scaler, loss, spoil=None):
    """``AmpOptimWrapper.update_params``: scaled backward, ``scaler.step``,
    ``scaler.update``; ``spoil`` (a parameter) gets an inf gradient before the step."""
    scaler.scale(loss).backward()
    if spoil is not None:
        spoil.grad.view(-1)[0] = float('inf')
    scaler.step(wrapper.optimizer)
    scaler.update()


def test_amp_gate_gradient_is_unscaled_with_the_scale_of_its_step():
    """A growth step (the scaler doubles its scale in ``update()``, after the optimizer
    step): the gates still move by their true gradient, not half of it."""
    net, x = small_net()
    hook, runner, scaler = _amp_run(net, torch.optim.SGD(net.parameters(), lr=0.01))
    ref, _ = small_net()
    ref.train()
    ref.gdp_gates.set_eps(net.gdp_gates.eps_value)
    ref(x).square().sum().backward()
    true_grad = ref.gdp_gates.a.grad
    assert true_grad.abs().max() > 0.1
    _amp_step(runner.optim_wrapper, scaler, net(x).square().sum())
    hook.after_train_iter(runner, 0)
    assert float(scaler.get_scale()) == 2.0 ** 11  # it was a growth step
    torch.testing.assert_close(net.gdp_gates.a.detach(), 1 - true_grad, rtol=1e-4, atol=1e-5)


def test_fused_optimizer_overflow_step_leaves_the_gates():
    """A fused optimizer (``GradScaler`` calls its ``step`` even on overflow, with
    ``found_inf`` set; it skips the update itself): the gates skip that step too."""
    net, x = small_net()
    optimizer = torch.optim.SGD(net.parameters(), lr=0.01, fused=True)
    assert optimizer._step_supports_amp_scaling
    hook, runner, scaler = _amp_run(net, optimizer)
    weight = net.layers[0].weight
    before_w, before_a = weight.detach().clone(), net.gdp_gates.a.detach().clone()
    _amp_step(runner.optim_wrapper, scaler, net(x).square().mean(), spoil=weight)
    hook.after_train_iter(runner, 0)
    assert float(scaler.get_scale()) == 2.0 ** 9  # the scaler saw the overflow
    assert torch.equal(weight.detach(), before_w)  # and the optimizer skipped its step
    assert net.gdp_gates.a.grad is None  # the gradient is consumed all the same
    assert torch.equal(net.gdp_gates.a.detach(), before_a)


class LinearNet(nn.Module):
    """Linear(64, 64) -> Linear(64, 512)."""

    def __init__(self):
        super().__init__()
        self.fc0, self.fc1 = nn.Linear(64, 64), nn.Linear(64, 512)

    def forward(self, x):
        return self.fc1(self.fc0(x))


def _linear_net():
    """A :class:`LinearNet` gated between its layers (the second is gated on its
    input), with weights that make the fp16 sums below exact."""
    from gdp_det.gates import add_gates
    from gdp_det.graph import trace_channel_graph
    net = LinearNet()
    with torch.no_grad():
        net.fc0.weight.copy_(64 * torch.eye(64))
        net.fc1.weight.fill_(0.01)
        net.fc0.bias.zero_()
        net.fc1.bias.zero_()
    x = torch.full((1024, 64), 1 / 128)  # hidden activations 0.5
    return add_gates(net, trace_channel_graph(net, lambda m: m(x))), x


def test_fp16_gate_gradient_is_reduced_in_float32():
    """fp16 weights and a loss scaled by 32 (an AMP loss scale): the weights'
    gradients are finite (16384, ~1300) but the gates' sum over 1024 rows of a
    gradient summed over 512 outputs (~84000) is past fp16's 65504: it must still
    come back finite and right, not inf (which the hook's ``nan_to_num`` zeroed)."""
    net, x = _linear_net()
    net.gdp_gates.set_eps(1e-2)
    ref = copy.deepcopy(net)
    ref(x).sum().mul(32).backward()
    net.half()
    try:
        out = net(x.half())
    except RuntimeError as e:  # an op this CPU build lacks in fp16
        pytest.skip(f'no fp16 linear on this CPU: {e}')
    assert out.dtype == torch.float16
    out.sum().mul(32).backward()
    assert all(torch.isfinite(fc.weight.grad).all() for fc in (net.fc0, net.fc1))
    grad = net.gdp_gates.a.grad.float()
    assert ref.gdp_gates.a.grad.abs().min() > 1000
    assert torch.isfinite(grad).all()
    torch.testing.assert_close(grad, ref.gdp_gates.a.grad, rtol=1e-2, atol=0)


def test_fp16_model_keeps_float32_gates_and_eps():
    """``model.half()``: ``a`` and the ``eps`` buffer stay float32, so eps = 1e-8
    (0 in fp16) survives a checkpoint and reloaded zero gates are 0, not 0/0; and
    a gate step of 1e-4 at ``a = 1`` is not rounded away."""
    net, _ = small_net()
    net.gdp_gates.set_eps(1e-8)
    with torch.no_grad():
        net.gdp_gates.a[::3] = 0
    net.half()
    assert net.gdp_gates.a.dtype == net.gdp_gates.eps.dtype == torch.float32
    fresh, _ = small_net()
    fresh.half().load_state_dict(net.state_dict())
    assert fresh.gdp_gates.eps_value == pytest.approx(1e-8)
    values = fresh.gdp_gates.values()
    assert torch.equal(values == 0, net.gdp_gates.a == 0)
    with torch.no_grad():
        fresh.gdp_gates.a.sub_(1e-4)
    assert float(fresh.gdp_gates.a.detach()[1]) == pytest.approx(1 - 1e-4)


def _graph_breaks(fn, *args) -> int:
    torch._dynamo.reset()
    return torch._dynamo.explain(fn)(*args).graph_break_count


@pytest.mark.slow  # Dynamo traces two RetinaNets
def test_compiled_gated_forward_breaks_no_more_than_the_plain_one():
    """``torch._dynamo.explain`` on the toy RetinaNet's tensor forward: the gates add
    no graph break (the gate cache's keys broke the graph at every gated layer)."""
    from mmdet.registry import MODELS
    from conftest import CONFIG_DIR
    from test_training_path import _inputs, gated_detector
    gated, cfg = gated_detector(config=osp.join(CONFIG_DIR, 'retinanet_r18_fpn_toyvoc.py'))
    plain = MODELS.build(cfg.model).eval()
    gated.eval()
    x, samples = _inputs()
    breaks = [_graph_breaks(lambda x, m=m: m(x, samples, mode='tensor'), x)
              for m in (plain, gated)]
    assert breaks[1] <= breaks[0], breaks


def test_compiled_gates_break_no_graph_and_match_eager():
    """A small gated net compiled whole: no graph break, no recompilation when eps
    changes, the same outputs and gate gradients as eager."""
    from torch._dynamo.testing import CompileCounter
    net, x = small_net()
    assert _graph_breaks(net, x) == 0
    torch._dynamo.reset()
    counter = CompileCounter()
    compiled = torch.compile(net, backend=counter)
    for eps in (1e-2, 1e-3):
        net.gdp_gates.set_eps(eps)
        net.gdp_gates.a.grad = None
        compiled(x).square().sum().backward()
        grad = net.gdp_gates.a.grad.clone()
        net.gdp_gates.a.grad = None
        ref = net(x)
        ref.square().sum().backward()
        torch.testing.assert_close(grad, net.gdp_gates.a.grad)
    assert counter.frame_count == 1


def _conv_chain(width):
    return nn.Sequential(nn.Conv2d(3, width, 3, padding=1), nn.ReLU(),
                         nn.Conv2d(width, width, 3, padding=1), nn.ReLU(),
                         nn.Conv2d(width, 4, 1)).eval()


def test_calibration_forwards_are_timed_without_layer_syncs(monkeypatch):
    """On (fake) CUDA the two calibration forwards measure what a deployed forward
    takes; the per-layer syncs only go into the per-call times."""
    from gdp_det.latency import Clock, network_times
    fake = FakeCuda().install(monkeypatch)
    x = torch.randn(1, 3, 32, 32)
    models = [_conv_chain(32), _conv_chain(16)]
    names = ['0', '2', '4']
    with fake:
        totals, layers = network_times(models, lambda m: m(x), names, 'cuda', 3)
        clock = Clock('cuda')
        plain = []
        for m in models:  # one forward as deployed: launched back to back, one sync
            t = clock()
            m(x)
            plain.append(clock() - t)
    assert totals == pytest.approx(plain, rel=1e-9)
    for (inside, calls), m in zip(layers, models):
        assert len(calls) == 3 and all(c > fake.sync for c in calls)
        assert inside == pytest.approx(sum(calls), rel=1e-9)
    assert layers[0][0] > totals[0]  # the synchronised layers take longer than the forward


def test_evaluation_latency_waits_for_the_device(monkeypatch):
    """The pipeline's evaluation times a (fake) CUDA forward to the end of its
    kernels (it measured the launches alone) and names the device."""
    from mmengine.config import Config
    from gdp_det.pipeline import stages
    fake = FakeCuda(sync=0.0).install(monkeypatch)

    class Detector:
        """What ``evaluate`` uses of a detector on a GPU: 5 ms of kernels a forward."""
        def parameters(self):
            yield SimpleNamespace(device=torch.device('cuda'))

        def eval(self):
            return self

        def data_preprocessor(self, batch, training):
            return batch

        def __call__(self, inputs, data_samples, mode):
            fake.run(5e-3)

    runner = SimpleNamespace(test=lambda: {'pascal_voc/mAP': 0.5}, model=Detector(),
                             test_dataloader=[dict(inputs=[0, 1], data_samples=[0, 1])])
    monkeypatch.setattr(stages.Runner, 'from_cfg', lambda cfg: runner)
    result = stages.evaluate(Config(dict()), 'ckpt.pth', 'work', repeats=3)
    assert result['latency_ms'] == pytest.approx(5.0 + 1000 * fake.launch, rel=1e-9)
    assert result['latency_device'] == 'Fake GPU'


def _latency_rank(rank: int, world: int, port: int, out_dir: str) -> None:
    """One rank of :func:`test_ddp_ranks_share_rank0s_latency_table`: a GDPHook with a
    latency budget set up on a small gated net; the table stand-in names its rank and
    takes 5 s, past the default group's timeout (3 s, for the NCCL watchdog's)."""
    import datetime
    import os
    import torch.distributed as dist
    from gdp_det import hooks as hooks_mod
    from gdp_det.flops import FlopsModel
    from gdp_det.testing import toy_gated_net
    os.environ.update(MASTER_ADDR='127.0.0.1', MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group('gloo', rank=rank, world_size=world,
                            timeout=datetime.timedelta(seconds=3))

    def measure_table(model, *args, **kwargs):
        with open(osp.join(out_dir, f'measured_{rank}'), 'w') as f:
            f.write('')
        time.sleep(5)
        return dict(rank=rank)

    class TableModel(FlopsModel):
        """A ``LatencyModel`` stand-in: the FLOPs model scaled by the measuring rank
        (each rank's own table would give it another latency model)."""
        def __init__(self, graph, table):
            super().__init__(graph)
            self.table, self.device = table, 'cpu'
            self.coef = self.coef * (1 + table['rank'])
            self.full = self.count(np.ones(self.num_channels, bool))

        @classmethod
        def measure(cls, model):
            return cls(model.gdp_gates.graph, measure_table(model))

    hooks_mod.measure_table, hooks_mod.LatencyModel = measure_table, TableModel
    net = toy_gated_net()
    hook = GDPHook(latency_target=0.9, export=False)
    runner = fake_runner(net, SimpleNamespace(optimizer=torch.optim.SGD(net.parameters(), 0.1)),
                         10)
    hook.before_run(runner)
    hook.before_train(runner)
    torch.save(dict(table=hook.latency.table, full=hook.latency.full),
               osp.join(out_dir, f'latency_{rank}.pt'))
    dist.destroy_process_group()


def test_ddp_ranks_share_rank0s_latency_table(tmp_path):
    """2 gloo processes with a latency budget: rank 0 alone measures the table (and
    writes the cache) while the others wait, longer than the default group's timeout;
    every rank holds the table, so the same budget."""
    import torch.multiprocessing as mp
    from test_ddp import free_port
    mp.spawn(_latency_rank, args=(2, free_port(), str(tmp_path)), nprocs=2, join=True)
    assert sorted(p.name for p in tmp_path.glob('measured_*')) == ['measured_0']
    held = [torch.load(tmp_path / f'latency_{r}.pt') for r in (0, 1)]
    assert held[0] == held[1] == dict(table=dict(rank=0), full=held[0]['full'])


def _export_wait_rank(rank: int, world: int, port: int, out_dir: str) -> None:
    """One rank of :func:`test_ranks_outwait_rank0s_export`: the default group's 3 s
    timeout stands in for the NCCL watchdog; rank 0's training "exports" for 6 s."""
    import datetime
    import os
    import torch.distributed as dist
    from mmengine.config import Config
    from gdp_det.pipeline import stages
    os.environ.update(MASTER_ADDR='127.0.0.1', MASTER_PORT=str(port))
    dist.init_process_group('gloo', rank=rank, world_size=world,
                            timeout=datetime.timedelta(seconds=3))
    stages.init_distributed('pytorch', Config())
    runner = SimpleNamespace(train=lambda: time.sleep(6 if rank == 0 else 0))
    stages.Runner = SimpleNamespace(from_cfg=lambda cfg: runner)
    stages.train(Config(), osp.join(out_dir, f'work_{rank}'))
    dist.destroy_process_group()


def test_ranks_outwait_rank0s_export(tmp_path):
    """After training the other ranks wait for rank 0's export longer than the
    default group's timeout (they timed out there)."""
    import torch.multiprocessing as mp
    from test_ddp import free_port
    mp.spawn(_export_wait_rank, args=(2, free_port(), str(tmp_path)), nprocs=2, join=True)


class NoCPUKernel(nn.Module):
    """``inner``, behind an op that has no CPU kernel (as mmcv's CUDA-only ops say)."""

    def __init__(self, inner):
        super().__init__()
        self.inner = inner

    def forward(self, x):
        if x.device.type == 'cpu':
            raise RuntimeError('deform_roi_pool_forward_impl: implementation for device cpu '
                               'not found.')
        return self.inner(x)


def test_op_without_cpu_kernel_is_named(monkeypatch):
    """Without CUDA, a detector that calls an op without a CPU kernel cannot be traced:
    the error names the op and its module and says what to do (it was 'unexpected')."""
    from mmdet.registry import MODELS
    from conftest import CONFIG_DIR
    from gdp_det.cli import describe_error, load_config
    from gdp_det.detector import attach_gates
    cfg = load_config(osp.join(CONFIG_DIR, 'retinanet_r18_fpn_toyvoc.py'))
    model = MODELS.build(cfg.model)
    model.neck.fpn_convs[0] = NoCPUKernel(model.neck.fpn_convs[0])
    monkeypatch.setattr(torch.cuda, 'is_available', lambda: False)
    with pytest.raises(ValueError) as caught:
        attach_gates(model, (64, 64))
    message, code = describe_error(caught.value)
    assert code == 2
    assert message.startswith(
        "tracing runs one forward of the detector, on the CPU here, and module "
        "'neck.fpn_convs.0' calls an op without a CPU kernel (deform_roi_pool_forward_impl: "
        "implementation for device cpu not found.) (run on a machine with CUDA")


def _cuda_only_roi_layer(on_cuda):
    """mmcv's RoIAlign as an op with CUDA kernels only (as mmcv's deform_roi_pool):
    unless ``on_cuda(layer, input)``, it raises what mmcv raises on CPU tensors."""
    from mmcv.ops import RoIAlign

    class CUDAOnlyRoIPool(RoIAlign):
        def forward(self, input, rois):
            if not on_cuda(self, input):
                raise RuntimeError('deform_roi_pool_forward_impl: implementation for device '
                                   'cpu not found.')
            return super().forward(input, rois)
    return CUDAOnlyRoIPool


def _cuda_only_roi_config(tmp_path, monkeypatch,
                          on_cuda=lambda layer, x: x.device.type == 'cuda'):
    """The toy Faster R-CNN with its RoI layers CUDA-only (mmdet builds them from
    ``mmcv.ops``), dumped to a file."""
    import mmcv.ops
    from conftest import FASTER_RCNN_CFG
    from gdp_det.cli import load_config
    monkeypatch.setattr(mmcv.ops, 'CUDAOnlyRoIPool', _cuda_only_roi_layer(on_cuda),
                        raising=False)
    cfg = load_config(FASTER_RCNN_CFG)
    cfg.model.roi_head.bbox_roi_extractor.roi_layer = dict(
        type='CUDAOnlyRoIPool', output_size=7, sampling_ratio=0)
    path = str(tmp_path / 'frcnn_cuda_only_roi.py')
    cfg.dump(path)
    return path, cfg


ROI_LAYERS = [f'roi_head.bbox_roi_extractor.roi_layers.{i}' for i in range(4)]


def test_roi_layer_without_cpu_kernel_is_opaque_with_its_channels_kept(tmp_path, monkeypatch):
    """Without CUDA, an RoI layer whose op has no CPU kernel is traced as opaque: its
    output shape from the module, the FPN channels it reads kept, every level's layer
    named; the rest is still gated (it was NoCPUKernelError: nothing could be gated)."""
    from mmdet.registry import MODELS
    from gdp_det.detector import attach_gates
    monkeypatch.setattr(torch.cuda, 'is_available', lambda: False)
    _, cfg = _cuda_only_roi_config(tmp_path, monkeypatch)
    torch.manual_seed(0)
    graph = attach_gates(MODELS.build(cfg.model), (64, 64)).gdp_gates.graph
    cfg.model.roi_head.bbox_roi_extractor.roi_layer.type = 'RoIAlign'
    torch.manual_seed(0)
    known = attach_gates(MODELS.build(cfg.model), (64, 64)).gdp_gates.graph
    assert sorted(graph.unsupported) == ROI_LAYERS
    assert all(w.startswith('CUDAOnlyRoIPool (opaque: no CPU kernel, deform_roi_pool_forward'
                            '_impl: implementation for device cpu not found.; output shape '
                            'from the module)') for w in graph.unsupported.values())
    assert known.unsupported == {}

    def producers(g):
        return {p: len(ch) for grp in g.groups for p, ch in grp.producers.items()}
    assert producers(known)['neck.fpn_convs.0.conv'] == 128  # the FPN output: prunable ...
    assert 'neck.fpn_convs.0.conv' not in producers(graph)  # ... kept behind the opaque op
    # the rest is the same: the backbone, the FPN's lateral convs, the heads' own layers
    same = {p: n for p, n in producers(known).items() if not p.startswith('neck.fpn_convs')}
    assert {p: producers(graph).get(p) for p in same} == same
    assert graph.num_channels == known.num_channels - 128


class CUDAOnlyUpsample(nn.Module):
    """A content-aware upsampler like mmcv's CARAFEPack: an encoder conv predicts a
    mask from ``x``, then an op with CUDA kernels only (``carafe``) upsamples ``x``
    with it, ``scale_factor`` times."""

    def __init__(self, channels, scale_factor=2):
        super().__init__()
        self.scale_factor = scale_factor
        self.encoder = nn.Conv2d(channels, 4 * scale_factor ** 2, 1)

    def forward(self, x):
        mask = self.encoder(x).sigmoid()
        if x.device.type == 'cpu':
            raise RuntimeError('carafe_forward_impl: implementation for device cpu not '
                               'found.\n')
        return mask  # (stands for carafe(x, mask); never reached on the CPU)


def test_upsampler_without_cpu_kernel_is_opaque_with_the_layers_inside_kept():
    """An opaque upsampler: output shape from its ``scale_factor``, its input channels
    and those of its encoder (ran before the op, read after it by code the trace never
    saw) kept, named once after the module (the encoder's channels were a group)."""
    from gdp_det.graph import trace_channel_graph
    net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1),
                        CUDAOnlyUpsample(8), nn.Conv2d(8, 4, 3, padding=1))
    x = torch.randn(1, 3, 8, 8)
    shapes = []
    net[4].register_forward_pre_hook(lambda m, args: shapes.append(tuple(args[0].shape)))
    graph = trace_channel_graph(net, lambda m: m(x), opaque_without_kernel=True)
    assert shapes == [(1, 8, 16, 16)]
    assert graph.unsupported == {'3': 'CUDAOnlyUpsample (opaque: no CPU kernel, carafe_forward_'
                                      'impl: implementation for device cpu not found.; output '
                                      'shape from the module)'}
    assert [(sorted(g.producers), sorted(g.consumers)) for g in graph.groups] == \
        [(['0'], ['2'])]
    with pytest.raises(RuntimeError, match='carafe_forward_impl'):  # the forward is back
        net(x)


def test_export_says_when_its_check_needs_a_kernel_the_cpu_lacks(tmp_path, monkeypatch, capsys):
    """tools/prune.py --random-gates --verify on that detector without CUDA: exported,
    the report and the summary say the check was skipped and why, name the RoI
    layers whose channels were kept, and claim no verification."""
    import json
    from tools.prune import main as prune_main
    monkeypatch.setattr(torch.cuda, 'is_available', lambda: False)
    path, _ = _cuda_only_roi_config(tmp_path, monkeypatch)
    out = tmp_path / 'out'
    rc = prune_main([path, '--random-gates', '0.5', '--out-dir', str(out),
                     '--input-size', '64', '64', '--verify'])
    assert rc == 0
    summary = json.loads(capsys.readouterr().out.split('\nwrote ')[0])
    report = json.loads((out / 'prune_report.json').read_text())
    reason = ("not verified: the check runs the models' forward, module "
              "'roi_head.bbox_roi_extractor.roi_layers.0' calls an op without a CPU kernel "
              "(deform_roi_pool_forward_impl: implementation for device cpu not found.) and "
              "there is no CUDA device here; verify the export on a machine with CUDA")
    assert summary['verification_skipped'] == report['verification_skipped'] == reason
    assert not {'max_rel_output_diff', 'verified_in', 'predict_check'} & set(report)
    assert sorted(report['unsupported']) == ROI_LAYERS
    assert 0.2 < report['flops_ratio'] < 0.9
    assert (out / 'frcnn_cuda_only_roi_pruned.pth').is_file()


def test_gpu_checkpoint_on_a_cpu_trace_says_to_prune_where_cuda_is(tmp_path, monkeypatch):
    """A checkpoint of GDP training on a GPU (traced through the op: one group more)
    loaded into the CPU's opaque trace: the mismatch names the opaque module and says
    to prune on a machine with CUDA (it said: use the config it was trained with)."""
    from mmdet.registry import MODELS
    from gdp_det.detector import attach_gates
    from gdp_det.gates import GateMismatchError
    _, cfg = _cuda_only_roi_config(tmp_path, monkeypatch)
    monkeypatch.setattr(torch.cuda, 'is_available', lambda: False)
    opaque = attach_gates(MODELS.build(cfg.model), (64, 64))
    cfg.model.roi_head.bbox_roi_extractor.roi_layer.type = 'RoIAlign'  # as traced on CUDA
    traced_through = attach_gates(MODELS.build(cfg.model), (64, 64))
    with pytest.raises(GateMismatchError) as caught:
        opaque.load_state_dict(traced_through.state_dict())
    msg = str(caught.value)
    n_gpu, n_cpu = (len(m.gdp_gates.graph.groups) for m in (traced_through, opaque))
    assert n_gpu == n_cpu + 1
    assert 'Here roi_head.bbox_roi_extractor.roi_layers.0 calls an op without a CPU kernel ' \
        'and was traced as opaque (no CUDA device), while a checkpoint trained on a GPU ' \
        'was traced through it: prune it on a machine with CUDA. Otherwise the checkpoint ' \
        'was trained with another detector config' in msg


@pytest.mark.slow  # builds and exports a randomly initialised R50 Faster R-CNN
def test_mdpool_faster_rcnn_is_gated_and_exported_on_the_cpu(tmp_path, monkeypatch, capsys):
    """mmdet's dcnv2 mdpool Faster R-CNN (mmcv's deform_roi_pool has no CPU kernel)
    through tools/prune.py --random-gates without CUDA: its RoI layers are opaque,
    their FPN channels kept and named; the backbone is pruned."""
    import json
    from tools.prune import main as prune_main
    monkeypatch.setattr(torch.cuda, 'is_available', lambda: False)
    out = tmp_path / 'out'
    rc = prune_main(['mmdet::dcnv2/faster-rcnn_r50_fpn_mdpool_1x_coco.py', '--random-gates',
                     '0.5', '--out-dir', str(out), '--input-size', '128', '128'])
    assert rc == 0, capsys.readouterr().err
    report = json.loads((out / 'prune_report.json').read_text())
    assert sorted(report['unsupported']) == ROI_LAYERS
    assert all(w.startswith('ModulatedDeformRoIPoolPack (opaque: no CPU kernel, '
                            'deform_roi_pool_forward_impl: implementation for device cpu')
               for w in report['unsupported'].values())
    assert report['layer_widths']['neck.fpn_convs.0.conv'] == [256, 256]  # kept
    assert report['layer_widths']['backbone.layer1.0.conv1'][1] < 64
    assert report['flops_ratio'] < 0.9


@pytest.fixture
def torchrun_threads(monkeypatch):
    """Under torchrun (2 local ranks, ``OMP_NUM_THREADS=1``: 1 torch thread) on a
    machine with 6 usable cores; torch's thread count restored after."""
    from gdp_det import distributed
    monkeypatch.setenv('LOCAL_WORLD_SIZE', '2')
    monkeypatch.setattr(distributed, 'usable_cores', lambda: 6)
    saved = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(saved)


def test_cpu_threads_under_torchrun_only(torchrun_threads, monkeypatch):
    """All the cores for rank 0 alone, a rank's share when all work, never fewer than
    set; outside torchrun the user's setting stays."""
    from gdp_det.distributed import cpu_threads
    seen = []
    for alone in (True, False):
        with cpu_threads(alone):
            seen.append(torch.get_num_threads())
    torch.set_num_threads(4)
    with cpu_threads(False):
        seen.append(torch.get_num_threads())
    monkeypatch.delenv('LOCAL_WORLD_SIZE')
    torch.set_num_threads(1)
    with cpu_threads(True):
        seen.append(torch.get_num_threads())
    assert seen == [6, 3, 4, 1]
    assert torch.get_num_threads() == 1


def _record_backbone_forwards(moved):
    """A global forward pre-hook recording, for each ResNet forward, the (fake) device
    of the ResNet, torch's threads and CUDA's TF32 flags."""
    from mmdet.models.backbones import ResNet
    seen = []

    def record(module, args):
        if isinstance(module, ResNet):
            seen.append((moved.get(id(module), torch.device('cpu')), torch.get_num_threads(),
                         torch.backends.cudnn.allow_tf32,
                         torch.backends.cuda.matmul.allow_tf32))
    return seen, nn.modules.module.register_module_forward_pre_hook(record)


def _fake_moves(monkeypatch):
    """``Module.to/cuda/cpu`` record where each module (and its children) was moved,
    in the returned dict, and leave the tensors on the CPU (dtype changes happen)."""
    moved = {}
    real_to = nn.Module.to

    def place(module, device):
        for m in module.modules():
            moved[id(m)] = torch.device(device)

    def to(self, *args, **kwargs):
        device, dtype, _, _ = torch._C._nn._parse_to(*args, **kwargs)
        if device is not None:
            place(self, device)
        return real_to(self, dtype) if dtype is not None else self

    def cuda(self, device=None):
        place(self, device if isinstance(device, torch.device) else
              torch.device('cuda', device or 0))
        return self

    def cpu(self):
        place(self, 'cpu')
        return self
    for name, fn in (('to', to), ('cuda', cuda), ('cpu', cpu)):
        monkeypatch.setattr(nn.Module, name, fn)
    return moved, place


def test_export_is_checked_on_the_training_device_with_every_core(tmp_path, monkeypatch,
                                                                 torchrun_threads):
    """Rank 0's export at the end of training on a (fake) GPU, under torchrun: the
    gated and the rebuilt model are both checked on the GPU with TF32 off (they were
    moved to the CPU), any CPU work with every core (it had torchrun's 1 thread); the
    settings are restored after."""
    from mmdet.registry import MODELS
    from conftest import RETINANET_CFG
    from gdp_det import api
    from gdp_det.cli import gdp_model_cfg, load_config
    from tools.prune import randomize_gates
    cfg = load_config(RETINANET_CFG)
    cfg.model = gdp_model_cfg(cfg, (64, 64), [], None)
    torch.manual_seed(0)
    gated = MODELS.build(cfg.model)
    randomize_gates(gated.gdp_gates, 0.5, seed=0)
    moved, place = _fake_moves(monkeypatch)
    place(gated, torch.device('cuda', 0))
    monkeypatch.setattr(api, 'model_device', lambda m: moved.get(id(m), torch.device('cpu')))
    saved_tf32 = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = True
    seen, handle = _record_backbone_forwards(moved)
    try:
        _, report, _ = api.prune_and_export(cfg, gated, str(tmp_path / 'out'), name='toy')
        after = (torch.get_num_threads(), torch.backends.cudnn.allow_tf32,
                 torch.backends.cuda.matmul.allow_tf32)
    finally:
        handle.remove()
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved_tf32
    assert report['verified_in'] == 'float32' and report['verified_on'] == 'cuda:0'
    assert report['max_rel_output_diff'] < 1e-5
    assert len(seen) >= 6  # gated and rebuilt: 2 tensor-mode forwards, 1 predict each
    assert set(seen) == {(torch.device('cuda', 0), 6, False, False)}
    assert moved[id(gated)] == torch.device('cuda', 0)
    assert after == (1, True, True)


def _gpu_machine(tmp_path, monkeypatch):
    """A machine with a (fake) GPU and the toy Faster R-CNN whose RoI layers run only
    where the fake moves put them on CUDA; returns the config's path and the moves."""
    from gdp_det import api
    moved, _ = _fake_moves(monkeypatch)
    monkeypatch.setattr(torch.cuda, 'is_available', lambda: True)
    monkeypatch.setattr(torch.cuda, 'device_count', lambda: 1)  # (mmengine's logger asks)
    monkeypatch.setattr(api, 'model_device', lambda m: moved.get(id(m), torch.device('cpu')))
    path, _ = _cuda_only_roi_config(
        tmp_path, monkeypatch, on_cuda=lambda layer, x: id(layer) in moved and
        moved[id(layer)].type == 'cuda')
    return path, moved


def _prune_verified(path, out, capsys) -> dict:
    """tools/prune.py --random-gates 0.5 --verify at 64x64; the report."""
    import json
    from tools.prune import main as prune_main
    rc = prune_main([path, '--random-gates', '0.5', '--out-dir', str(out),
                     '--input-size', '64', '64', '--verify'])
    assert rc == 0, capsys.readouterr().err
    return json.loads((out / 'prune_report.json').read_text())


def test_gpu_machine_traces_and_checks_a_cpu_model_on_cuda(tmp_path, monkeypatch, capsys):
    """tools/prune.py --verify on a machine with a (fake) GPU, on a model built on the
    CPU whose RoI layers have CUDA kernels only: the trace and the export's check go to
    CUDA and back (the check raised on the CPU), the graph goes through the op."""
    path, moved = _gpu_machine(tmp_path, monkeypatch)
    report = _prune_verified(path, tmp_path / 'out', capsys)
    assert report['unsupported'] == {}
    assert report['verified_on'].startswith('cuda') and report['max_rel_output_diff'] < 1e-5
    assert report['verified_in'] == 'float32' and 'verification_skipped' not in report
    assert {d.type for d in moved.values()} == {'cpu', 'cuda'}  # moved there and back


def test_float64_check_of_a_model_without_cpu_kernels_runs_on_cuda(tmp_path, monkeypatch,
                                                                   capsys):
    """The same with the float32 check failing (forced): the float64 repetition runs on
    CUDA too (it ran on the CPU: 'not checkable', the export refused)."""
    from gdp_det import api
    path, _ = _gpu_machine(tmp_path, monkeypatch)
    failure, calls = api._failure, []

    def float32_fails(found, tolerance):
        calls.append(found['verified_on'])
        return 'forced' if len(calls) == 1 else failure(found, tolerance)
    monkeypatch.setattr(api, '_failure', float32_fails)
    report = _prune_verified(path, tmp_path / 'out', capsys)
    assert len(calls) == 2 and all(d.startswith('cuda') for d in calls)
    assert report['verified_in'] == 'float64' and report['verified_on'].startswith('cuda')
    assert report['max_rel_output_diff'] < 1e-12 and 'float32_max_rel_output_diff' in report


def test_trace_under_torchrun_uses_the_ranks_share_of_the_cores(monkeypatch, torchrun_threads):
    """Every rank traces its detector at once: each with its share of the cores (3 of 6
    for 2 ranks), not torchrun's 1 thread; restored after."""
    from mmdet.registry import MODELS
    from conftest import RETINANET_CFG
    from gdp_det.cli import load_config
    from gdp_det.detector import trace_detector
    moved = {}
    seen, handle = _record_backbone_forwards(moved)
    try:
        trace_detector(MODELS.build(load_config(RETINANET_CFG).model), (64, 64))
    finally:
        handle.remove()
    assert [s[1] for s in seen] == [3]
    assert torch.get_num_threads() == 1


def test_clock_waits_for_the_models_card(monkeypatch):
    """A latency clock of a model on the second card synchronises that card, not the
    current one (which a bare ``torch.cuda.synchronize()`` waits for)."""
    from gdp_det.latency import Clock
    waited = []
    monkeypatch.setattr(torch.cuda, 'synchronize', lambda device=None: waited.append(device))
    Clock('cuda:1')()
    assert waited == [torch.device('cuda:1')]
