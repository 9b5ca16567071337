"""Run a ``GDPHook`` as mmengine's train loop would, without a Runner or a
forward/backward pass: the tests give the gates' gradient directly."""
import contextlib
from types import SimpleNamespace

import torch
from mmengine.logging import MessageHub


def fake_runner(model, optim_wrapper, iters, **attrs):
    """What the hook reads of a Runner (``attrs``: e.g. ``cfg``, ``work_dir``)."""
    return SimpleNamespace(model=model, iter=0, max_iters=iters, rank=0, hooks=[],
                           message_hub=MessageHub.get_instance('gdp_hook_driver'),
                           optim_wrapper=optim_wrapper, **attrs)


def drive_hook(model, hook, iters, grad_fn, on_iter=None,
               iteration_context=lambda it: contextlib.nullcontext(), **runner_attrs):
    """Run ``hook`` for ``iters`` iterations, the gates' gradient given by
    ``grad_fn(it)``; each iteration's hook calls run inside ``iteration_context(it)``.
    Returns the runner stand-in."""
    optimizer = torch.optim.SGD([p for n, p in model.named_parameters()
                                 if not n.startswith('gdp_gates')], lr=0.1)
    runner = fake_runner(model, SimpleNamespace(optimizer=optimizer), iters, **runner_attrs)
    hook.before_run(runner)
    hook.before_train(runner)
    for it in range(iters):
        runner.iter = it
        grad = grad_fn(it)
        with iteration_context(it):
            hook.before_train_iter(runner, it)
            model.gdp_gates.a.grad = grad
            hook._on_optimizer_step(optimizer, (), {})
            hook.after_train_iter(runner, it)
        if on_iter:
            on_iter(it)
    return runner
