"""Clocks whose time is the work a forward does, so that latency tests read the same
numbers on every machine and under any load."""
import time

import torch
from torch.overrides import TorchFunctionMode


class WorkClock(TorchFunctionMode):
    """A clock that runs only while conv and linear calls work: inside the mode each one
    costs 1 ns per multiply-accumulate plus ``per_call`` seconds (:meth:`run`), nothing
    else takes time. ``now`` is the time."""

    def __init__(self, per_call: float = 0.0):
        super().__init__()
        self.per_call = per_call
        self.now = 0.0

    def run(self, seconds: float) -> None:
        """Work of ``seconds``, done before the clock is read again."""
        self.now += seconds

    def __torch_function__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if getattr(func, '__name__', '') in ('conv2d', 'linear'):
            weight = args[1] if len(args) > 1 else kwargs['weight']
            self.run(1e-9 * out.numel() * weight[0].numel() + self.per_call)
        return out


class FakeCuda(WorkClock):
    """A CUDA device on a :class:`WorkClock`: every call's work costs the host
    ``launch`` seconds and is queued on the device, which runs the queue in order while
    the host goes on; only ``torch.cuda.synchronize()`` (``sync`` seconds) waits for it.
    :meth:`install` makes ``time.perf_counter`` read its clock."""

    def __init__(self, launch=1e-5, sync=2e-5):
        super().__init__()
        self.launch, self.sync = launch, sync
        self.device_free = 0.0

    def install(self, monkeypatch):
        monkeypatch.setattr(time, 'perf_counter', lambda: self.now)
        monkeypatch.setattr(torch.cuda, 'synchronize', self.synchronize)
        monkeypatch.setattr(torch.cuda, 'get_device_name', lambda device=None: 'Fake GPU')
        return self

    def run(self, seconds: float) -> None:
        self.now += self.launch
        self.device_free = max(self.device_free, self.now) + seconds

    def synchronize(self, device=None) -> None:
        self.now = max(self.now, self.device_free) + self.sync
