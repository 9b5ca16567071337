"""When does GDP's selection settle? ``SelectionTraceHook`` records it.

GDP's cut comes late in its phase: on the toy RetinaNet at 0.5 of the FLOPs, no channel's
gate reached 0 before iteration 54 of 180 and the export's cut was complete at iteration
68. Training at full width until then is most of GDP's extra training cost, so whether
the cut could come earlier depends on when the channels it removes are known. The hook
answers that: every ``interval`` iterations of the GDP phase it records what a cut made
at that moment would remove (:meth:`~gdp_det.gate_training.BudgetController.cut_now`),
and when the cut is made, what it removed. :func:`settling_table` compares them.

Add it after the ``GDPHook``::

    custom_hooks = [dict(type='GDPHook', flops_target=0.5),
                    dict(type='SelectionTraceHook', interval=2)]
"""
from __future__ import annotations

import json
import os.path as osp
from typing import Dict, List, Optional

import numpy as np
from mmengine.dist import is_main_process
from mmengine.hooks import Hook

from .files import atomic_write


class SelectionTraceHook(Hook):
    """Records the channels a cut made now would remove, every ``interval``
    iterations of the ``GDPHook``'s phase, until its cut is made (the first iteration
    whose export is within budget), and the channels that cut removed.

    Contract: needs a ``GDPHook`` in the same runner (a ``ValueError`` otherwise);
    changes nothing in training (the gates, lambda and the budget controller's state are
    only read). Writes ``<work_dir>/<out>`` (rank 0, atomically) when the cut is made:
    ``{"num_channels", "interval", "records": [{"iter", "removed"}], "cut": {"iter",
    "removed"}}`` with ``iter`` the iterations done and ``removed`` the channel indices
    of the traced graph. A resumed run records from where it resumed.
    """

    priority = 'VERY_LOW'  # after the GDPHook's step

    def __init__(self, interval: int = 2, out: str = 'selection_trace.json'):
        if interval < 1:
            raise ValueError(f'SelectionTraceHook: interval must be >= 1, got {interval}')
        self.interval, self.out = interval, out
        self.records: List[Dict] = []
        self.done = False

    def before_train(self, runner) -> None:
        hooks = [h for h in runner.hooks if type(h).__name__ == 'GDPHook']
        if not hooks:
            raise ValueError('SelectionTraceHook: the runner has no GDPHook; add '
                             "dict(type='GDPHook', ...) to custom_hooks before it")
        self.gdp = hooks[0]

    def after_train_iter(self, runner, batch_idx: int, data_batch=None,
                         outputs=None) -> None:
        gdp, done = self.gdp, runner.iter + 1
        if self.done or done <= gdp.warmup_iters:
            return
        ctl = gdp.controller
        index = None if gdp.shrink is None else gdp.shrink.index
        if ctl.kept is not None and gdp.budget.met(ctl.kept):
            self.done = True
            if is_main_process():
                self._write(runner.work_dir, gdp.graph.num_channels,
                            dict(iter=done, removed=_removed(ctl.kept)))
        elif done % self.interval == 0:
            self.records.append(dict(iter=done,
                                     removed=_removed(ctl.cut_now(gdp.gates.a, index))))

    def _write(self, work_dir: str, num_channels: int, cut: Dict) -> None:
        atomic_write(osp.join(work_dir, self.out), json.dumps(dict(
            num_channels=num_channels, interval=self.interval, records=self.records,
            cut=cut)))


def _removed(kept: np.ndarray) -> List[int]:
    return np.flatnonzero(~np.asarray(kept, bool)).tolist()


def settling_table(trace: Dict, every: Optional[int] = None) -> List[str]:
    """Markdown rows: per recorded iteration (every ``every``-th iteration, default
    the trace's interval), how many channels a cut made then would remove and what share
    of the channels the cut removed they include."""
    cut = set(trace['cut']['removed'])
    every = every or trace['interval']
    rows = ['| iteration | a cut now removes | of which the cut removed too |',
            '|---|---|---|']
    for r in trace['records']:
        if r['iter'] % every == 0:
            rows.append(f"| {r['iter']} | {len(r['removed'])} | "
                        f"{len(cut & set(r['removed'])) / max(len(cut), 1):.3f} |")
    rows.append(f"| {trace['cut']['iter']} (the cut) | {len(cut)} | 1.000 |")
    return rows
