"""FLOPs model of a traced network as a function of which channels are alive.

Per conv call: ``k_h * k_w * H_out * W_out * C_in_active * C_out_active / groups``
(depthwise: ``k_h * k_w * H_out * W_out * C_active``); per linear call:
``rows * in_active * out_active``. Counts are multiply-accumulates per image at the
traced input size, summed over every call (a head shared by five FPN levels counts
five times). Fixed (never pruned) channels always count as active.
"""
from __future__ import annotations

from typing import Tuple

import numpy as np

from .graph import ChannelGraph


def alive_per_owner(alive, idx: np.ndarray, owner: np.ndarray, size: int) -> np.ndarray:
    """How many of the channels ``idx`` that each owner (a call or a pooling module) reads
    are alive: ``idx == len(alive)`` names a fixed channel, always alive."""
    ext = np.append(np.asarray(alive, dtype=np.float64), 1.0)
    return np.bincount(owner, ext[idx], minlength=size)


class FlopsModel:
    """Exact (L0) FLOPs and per-channel FLOPs weights of a :class:`ChannelGraph`.

    Host-side only (numpy): ``alive`` is a boolean array (or CPU tensor) over the
    graph's channels. Contract: ``count(alive)`` is the FLOPs of the network in which the gated
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
        cat = lambda xs: np.concatenate(xs).astype(np.int64) if xs else np.zeros(0, np.int64)
        self.coef = np.asarray(coef, dtype=np.float64)
        self.depthwise = np.asarray(dw, dtype=bool)
        self.in_idx, self.in_call = cat(in_idx), cat(in_call)
        self.out_idx, self.out_call = cat(out_idx), cat(out_call)
        self.num_calls = len(keep)
        self.full = self.count(np.ones(n, dtype=bool))

    def _active(self, alive) -> Tuple[np.ndarray, np.ndarray]:
        return (alive_per_owner(alive, self.in_idx, self.in_call, self.num_calls),
                alive_per_owner(alive, self.out_idx, self.out_call, self.num_calls))

    def count(self, alive) -> float:
        return float(self.per_call(alive).sum())

    def per_call(self, alive=None) -> np.ndarray:
        alive = np.ones(self.num_channels, dtype=bool) if alive is None else alive
        n_in, n_out = self._active(alive)
        return np.where(self.depthwise, self.coef * n_out, self.coef * n_in * n_out)

    def call_slopes(self, alive) -> Tuple[np.ndarray, np.ndarray]:
        """Per call: the cost of one more input channel and of one more output channel."""
        n_in, n_out = self._active(alive)
        w_in = np.where(self.depthwise, 0.0, self.coef * n_out)
        w_out = np.where(self.depthwise, self.coef, self.coef * n_in)
        return w_in, w_out

    def channel_weights(self, alive) -> np.ndarray:
        w_in, w_out = self.call_slopes(alive)
        size = self.num_channels + 1
        w = (np.bincount(self.in_idx, w_in[self.in_call], minlength=size)
             + np.bincount(self.out_idx, w_out[self.out_call], minlength=size))
        return w[:-1]


class Budget:
    """One or more resource constraints ``model.count(alive) / model.full <= target``.

    Contract: ``met(alive)`` when every constraint holds (``final=True``: at the
    targets given, whatever :meth:`ease` set); ``weights(alive)`` sums, over the
    violated constraints, each channel's cost relative to that model's full count (the
    per-channel strength of the proximal step). ``ease(share)`` sets the targets
    ``1 - (1 - target) * share`` (share 1: the targets given) for a budget that falls
    gradually.
    """

    def __init__(self, constraints):
        self.final = [(m, float(t)) for m, t in constraints if t is not None]
        self.constraints = list(self.final)

    def ease(self, share: float) -> None:
        share = min(max(share, 0.0), 1.0)
        self.constraints = [(m, 1.0 - (1.0 - t) * share) for m, t in self.final]

    def ratios(self, alive):
        return [m.count(alive) / m.full for m, _ in self.constraints]

    def met(self, alive, final: bool = False) -> bool:
        targets = self.final if final else self.constraints
        return all(r <= t for r, (_, t) in zip(self.ratios(alive), targets))

    def weights(self, alive) -> np.ndarray:
        w = np.zeros(self.constraints[0][0].num_channels, dtype=np.float64)
        for (m, t), r in zip(self.constraints, self.ratios(alive)):
            if r > t:
                w += m.channel_weights(alive) / m.full
        return w
