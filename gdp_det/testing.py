"""Drive a ``GDPHook`` as mmengine's train loop would, without a Runner or a
forward/backward pass: the caller gives the gates' gradient (tests, and the gate-selection
benchmark)."""
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
    Returns the runner stand-in. The model stays in the traced layout: the driver
    turns the hook's ``shrink_after_cut`` off (with no forward pass there is no cost
    to cut, and callers give and read the gates in that layout)."""
    hook.shrink_after_cut = False
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


def toy_gated_net(widths=(3, 32, 64, 64, 4), seed: int = 0):
    """A small gated conv chain (conv-BN-ReLU blocks, 1x1 output conv) on a 16x16 input."""
    import torch.nn as nn
    from .gates import add_gates
    from .graph import trace_channel_graph
    torch.manual_seed(seed)
    layers = []
    for cin, cout in zip(widths[:-2], widths[1:-1]):
        layers += [nn.Conv2d(cin, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.ReLU()]
    net = nn.Sequential(*layers, nn.Conv2d(widths[-2], widths[-1], 1)).eval()
    x = torch.randn(1, widths[0], 16, 16)
    return add_gates(net, trace_channel_graph(net, lambda m: m(x)))


def selection_quality(hook, net, noise: float, seed: int, iters: int = 120) -> dict:
    """How well a GDP run picks channels on a toy loss whose answer is known.

    Each channel has a need ``n_c`` (exponential draws); the loss is
    ``sum_c n_c (1 - g_c)^2 / 2`` and every iteration's ``dL/dg`` carries Gaussian
    noise of std ``noise`` (one batch's estimate), back-propagated through
    ``g = a^2 / (a^2 + eps)``: a channel feels the loss only while its gate is below 1.
    Runs ``hook`` (a fresh ``GDPHook``) on ``net`` (see :func:`toy_gated_net`) and returns
    ``quality``: the need lost by the cut channels, 0 for the best choice of as many
    channels, 1 for a random one; ``cut`` (their count) and ``met_at`` (the first
    iteration at the budget, None if never)."""
    gates = net.gdp_gates
    n = gates.a.numel()
    gen = torch.Generator().manual_seed(seed)
    need = torch.empty(n).exponential_(generator=gen)

    def grad(it):
        a, eps = gates.a.detach(), gates.eps_value
        g = a * a / (a * a + eps)
        dg_da = 2 * a * eps / (a * a + eps) ** 2
        return dg_da * (-need * (1 - g) + noise * torch.randn(n, generator=gen))

    met = []
    drive_hook(net, hook, iters, grad,
               on_iter=lambda it: met.append(it) if hook.budget.met(
                   hook.exported(gates.a.detach().numpy())) else None)
    cut = gates.a.detach() == 0
    k = int(cut.sum())
    best = float(need.sort().values[:k].sum())
    chance = float(need.mean()) * k
    quality = (float(need[cut].sum()) - best) / max(chance - best, 1e-12)
    return dict(quality=quality, cut=k, met_at=met[0] if met else None)
