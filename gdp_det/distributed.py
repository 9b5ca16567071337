"""A process group for the waits on rank 0 alone (a latency table, an export)."""
import datetime

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
