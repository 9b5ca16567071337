"""GDP under torch DDP: 2 CPU processes (gloo), each loading its own data with a
worker process (num_workers > 0), keep bitwise identical gates by construction
(rank 0's gates are broadcast after every update), even when one rank's gate
gradient is perturbed."""
import socket

import pytest
import torch
import torch.multiprocessing as mp

from ddp_worker import run_rank
from test_gdp_training import gdp_cfg


def free_port() -> int:
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_process_gdp_keeps_gates_equal(make_toy_cfg, tmp_path):
    cfg = gdp_cfg(make_toy_cfg, tmp_path / 'ddp', epochs=6, flops_target=0.6, export=False)
    cfg.launcher = 'pytorch'
    cfg.batch_size = 2
    cfg.train_dataloader.batch_size = 2
    cfg.train_dataloader.update(num_workers=1, persistent_workers=True)
    # CPU DDP: no device ids
    cfg.model_wrapper_cfg = dict(type='MMDistributedDataParallel', device_ids=None,
                                 broadcast_buffers=False)
    cfg.env_cfg.dist_cfg = dict(backend='gloo')
    path = tmp_path / 'ddp_cfg.py'
    cfg.dump(str(path))
    mp.spawn(run_rank, args=(2, str(path), str(tmp_path), free_port()), nprocs=2, join=True)
    g0 = torch.load(tmp_path / 'gates_rank0.pt')
    g1 = torch.load(tmp_path / 'gates_rank1.pt')
    assert (g0['a'] == 0).any()  # the proximal step did prune
    assert torch.equal(g0['a'], g1['a'])
    assert torch.equal(g0['eps'], g1['eps'])
