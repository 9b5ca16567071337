"""What the ranks of a torchrun job share while rank 0 (or each rank) works on the CPU:
a process group to wait on (:func:`patient_group`), the cores (:func:`cpu_threads`)."""
import datetime
import os
from contextlib import contextmanager
from typing import Iterator

import torch
import torch.distributed as dist
from mmengine.dist import is_distributed

# how long the other ranks wait while rank 0 alone works: longer than the NCCL
# watchdog's timeout (10 minutes by default), which would end them
PATIENT_TIMEOUT = datetime.timedelta(hours=4)


def patient_group():
    """A gloo group of every rank with timeout ``PATIENT_TIMEOUT`` (``None`` without
    a process group). Collective: every rank calls it at the same point."""
    if not is_distributed():
        return None
    return dist.new_group(backend='gloo', timeout=PATIENT_TIMEOUT)


def close_process_groups() -> None:
    """Destroy every process group of this process, at the end of a tool's job (each rank):
    a gloo group left to the interpreter's exit can abort its rank there ("terminate called
    without an active exception", pytorch/pytorch#190489). Without one, nothing."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def usable_cores() -> int:
    """The CPU cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


@contextmanager
def cpu_threads(alone: bool) -> Iterator[None]:
    """torch's CPU threads for the CPU work inside, under torchrun (``LOCAL_WORLD_SIZE``
    set), which runs every process with ``OMP_NUM_THREADS=1`` unless told otherwise:
    all the usable cores when this rank works ``alone`` while the others wait (rank
    0's export check), else its share of them among the node's ranks (the trace, on
    every rank at once); never fewer threads than it had. Outside torchrun the
    setting is the user's and stays. Restored on exit."""
    saved = torch.get_num_threads()
    ranks = os.environ.get('LOCAL_WORLD_SIZE')
    if ranks is not None:
        torch.set_num_threads(max(saved, usable_cores() // (1 if alone else int(ranks))))
    try:
        yield
    finally:
        torch.set_num_threads(saved)
