"""The GPU path's second reading (issue 20), each finding proven on the CPU with a
stand-in: gradient accumulation and lambda, the AMP loss scale and fused optimizers,
fp16 gate gradients, fp16 eps, torch.compile, latency timing on CUDA."""
import torch
from mmengine.optim import OptimWrapper

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

