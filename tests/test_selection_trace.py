"""SelectionTraceHook and BudgetController.cut_now: what a cut made at each moment of the
GDP phase would remove, against what the cut removed."""
import json
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from mmengine.runner import Runner

from gdp_det.selection_trace import SelectionTraceHook, settling_table
from test_gate_training import controller_on_toy
from test_gdp_training import gdp_cfg, gdp_hook
from tools import analyze_selection


def test_cut_now_is_the_cut_a_step_past_every_gate_makes_and_changes_nothing():
    net, ctl, exported = controller_on_toy(0.5, min_channels=0)
    gen = torch.Generator().manual_seed(0)
    a = torch.rand(net.gdp_gates.a.numel(), generator=gen) + 0.01
    a[::3] *= -1  # the order is by |a|
    before = a.clone()
    kept = ctl.cut_now(a)
    assert torch.equal(a, before) and ctl.lam == 1.0 and ctl.kept is None
    assert ctl.budget.met(kept) and not kept.all()
    removed = np.abs(before.numpy())[~kept]
    assert removed.max() <= np.abs(before.numpy())[kept].min()  # the smallest go
    ctl.lam = 100.0  # a threshold past every gate: the step cuts as few as the budget needs
    ctl.step(a)
    assert np.array_equal(exported(a.numpy()), kept)
    assert np.array_equal(ctl.cut_now(a), kept)  # within budget: what the export keeps


def test_cut_now_keeps_min_channels_per_group():
    net, ctl, _ = controller_on_toy(0.001, min_channels=3)  # below what 3 per group cost
    a = torch.linspace(0.01, 1.0, net.gdp_gates.a.numel())
    kept = ctl.cut_now(a)
    for sl in net.gdp_gates.group_slices:
        assert int(kept[sl].sum()) == 3
        assert kept[sl][-3:].all()  # the largest of the group


def test_trace_hook_needs_a_gdp_hook():
    with pytest.raises(ValueError, match='no GDPHook'):
        SelectionTraceHook().before_train(SimpleNamespace(hooks=[]))
    with pytest.raises(ValueError, match='interval must be >= 1'):
        SelectionTraceHook(interval=0)


def test_settling_table_counts_the_shared_channels():
    trace = dict(num_channels=8, interval=2, cut=dict(iter=6, removed=[1, 2, 3, 4]),
                 records=[dict(iter=2, removed=[0, 1]), dict(iter=4, removed=[1, 2, 3, 5])])
    assert settling_table(trace)[2:] == ['| 2 | 2 | 0.250 |', '| 4 | 4 | 0.750 |',
                                         '| 6 (the cut) | 4 | 1.000 |']
    assert settling_table(trace, every=4)[2:3] == ['| 4 | 4 | 0.750 |']


@pytest.mark.slow
def test_trace_hook_records_every_iteration_until_the_cut(make_toy_cfg, tmp_path, capsys):
    cfg = gdp_cfg(make_toy_cfg, tmp_path / 'run', epochs=4, log_interval=1, flops_target=0.6,
                  lambda_init=1.0, lambda_span=0.25, min_channels=0.25)
    cfg.custom_hooks.append(dict(type='SelectionTraceHook', interval=1))
    runner = Runner.from_cfg(cfg)
    runner.train()
    hook = gdp_hook(runner)
    trace = json.loads((tmp_path / 'run' / 'selection_trace.json').read_text())
    assert trace['cut']['iter'] == hook.shrunk_at and hook.shrunk_at > 2
    kept = np.zeros(trace['num_channels'], bool)
    kept[hook.shrink.index] = True
    assert trace['cut']['removed'] == np.flatnonzero(~kept).tolist()
    assert [r['iter'] for r in trace['records']] == list(range(1, hook.shrunk_at))
    assert all(r['removed'] for r in trace['records'])  # a cut was needed each time
    capsys.readouterr()  # the training's log
    assert analyze_selection.main([str(tmp_path / 'run')]) == 0
    out = capsys.readouterr().out.splitlines()
    assert len(out) == 2 + len(trace['records']) + 1 and out[-1].endswith('| 1.000 |')
