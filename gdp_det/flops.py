"""FLOPs model of a traced network as a function of which channels are alive.

Per conv call: ``k_h * k_w * H_out * W_out * C_in_active * C_out_active / groups``
(depthwise: ``k_h * k_w * H_out * W_out * C_active``); per linear call:
``rows * in_active * out_active``. Counts are multiply-accumulates per image at the
traced input size, summed over every call (a head shared by five FPN levels counts
five times). Fixed (never pruned) channels always count as active.
"""
from __future__ import annotations

from typing import Optional

import numpy as np
import torch

from .graph import ChannelGraph


class FlopsModel:
    """Exact (L0) FLOPs and per-channel FLOPs weights of a :class:`ChannelGraph`.

    Contract: ``count(alive)`` is the FLOPs of the network in which the gated
    channels with ``alive[c] == False`` were removed; ``count(all True) == full``.
    ``channel_weights(alive)`` is the FLOPs that each channel costs with all other
    channels' states held fixed (the linearisation used by the proximal step).
    """

    def __init__(self, graph: ChannelGraph, params: bool = False):
        calls = graph.calls
        self.num_channels = graph.num_channels
        n = self.num_channels  # index n = "always active" (fixed channels)
        if params:  # parameters: each layer once, coefficient = k*k/groups
            seen, keep = set(), []
            for i, c in enumerate(calls):
                if c.name not in seen:
                    seen.add(c.name)
                    keep.append(i)
        else:
            keep = list(range(len(calls)))
        coef, dw, in_idx, in_call, out_idx, out_call = [], [], [], [], [], []
        for j, i in enumerate(keep):
            c = calls[i]
            coef.append(c.param_coef if params else c.coef)
            dw.append(c.depthwise)
            ii = np.where(graph.call_in[i] < 0, n, graph.call_in[i])
            oo = np.where(graph.call_out[i] < 0, n, graph.call_out[i])
            in_idx.append(ii)
            in_call.append(np.full(len(ii), j))
            out_idx.append(oo)
            out_call.append(np.full(len(oo), j))
        cat = lambda xs: torch.as_tensor(np.concatenate(xs) if xs else np.zeros(0), dtype=torch.long)
        self.coef = torch.tensor(coef, dtype=torch.float64)
        self.depthwise = torch.tensor(dw, dtype=torch.bool)
        self.in_idx, self.in_call = cat(in_idx), cat(in_call)
        self.out_idx, self.out_call = cat(out_idx), cat(out_call)
        self.num_calls = len(keep)
        self.full = self.count(torch.ones(n, dtype=torch.bool))

    def _active(self, alive: torch.Tensor):
        ext = torch.cat([alive.detach().to(torch.float64).cpu(), torch.ones(1, dtype=torch.float64)])
        n_in = torch.zeros(self.num_calls, dtype=torch.float64).index_add_(
            0, self.in_call, ext[self.in_idx])
        n_out = torch.zeros(self.num_calls, dtype=torch.float64).index_add_(
            0, self.out_call, ext[self.out_idx])
        return n_in, n_out

    def count(self, alive: torch.Tensor) -> float:
        n_in, n_out = self._active(alive)
        per_call = torch.where(self.depthwise, self.coef * n_out, self.coef * n_in * n_out)
        return float(per_call.sum())

    def per_call(self, alive: Optional[torch.Tensor] = None) -> torch.Tensor:
        alive = torch.ones(self.num_channels, dtype=torch.bool) if alive is None else alive
        n_in, n_out = self._active(alive)
        return torch.where(self.depthwise, self.coef * n_out, self.coef * n_in * n_out)

    def channel_weights(self, alive: torch.Tensor) -> torch.Tensor:
        n_in, n_out = self._active(alive)
        w = torch.zeros(self.num_channels + 1, dtype=torch.float64)
        w_in = torch.where(self.depthwise, torch.zeros_like(self.coef), self.coef * n_out)
        w_out = torch.where(self.depthwise, self.coef, self.coef * n_in)
        w.index_add_(0, self.in_idx, w_in[self.in_call])
        w.index_add_(0, self.out_idx, w_out[self.out_call])
        return w[:-1]


class Budget:
    """One or more resource constraints ``model.count(alive) / model.full <= target``.

    Contract: ``met(alive)`` when every constraint holds; ``weights(alive)`` sums,
    over the violated constraints, each channel's cost relative to that model's
    full count (the per-channel strength of the proximal step).
    """

    def __init__(self, constraints):
        self.constraints = [(m, float(t)) for m, t in constraints if t is not None]

    def ratios(self, alive: torch.Tensor):
        return [m.count(alive) / m.full for m, _ in self.constraints]

    def met(self, alive: torch.Tensor) -> bool:
        return all(r <= t for r, (_, t) in zip(self.ratios(alive), self.constraints))

    def weights(self, alive: torch.Tensor) -> torch.Tensor:
        w = torch.zeros(self.constraints[0][0].num_channels, dtype=torch.float64)
        for (m, t), r in zip(self.constraints, self.ratios(alive)):
            if r > t:
                w += m.channel_weights(alive) / m.full
        return w
