"""GDP under torch DDP: 2 CPU processes (gloo), each loading its own data with a
worker process (num_workers > 0), keep bitwise identical gates by construction
(rank 0's gates are broadcast after every update), even when one rank's gate
gradient is perturbed; a run resumed after the shrink ends where the uninterrupted one
did."""
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
    # (the cut in the first quarter at lambda's full rate: checkpoints after the shrink to
    # resume from)
    cfg = gdp_cfg(make_toy_cfg, tmp_path / 'ddp', epochs=10, flops_target=0.6, export=False,
                  lambda_span=0.25, cut_rate_factor=1.0)
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

    # resumed after the shrink from a full-width checkpoint: every rank shrinks again
    # with the recorded channels, and the run ends where the uninterrupted one did
    ckpts = sorted((tmp_path / 'ddp').glob('epoch_*.pth'), key=lambda p: int(p.stem[6:]))
    after = [c for c in ckpts[:-1]
             if torch.load(c, weights_only=False)['gdp_hook']['shrunk'] is not None]
    assert after, 'no checkpoint after the shrink to resume from'
    cfg.resume, cfg.load_from = True, str(after[0])
    cfg.work_dir = str(tmp_path / 'ddp_resumed')
    cfg.dump(str(path))
    mp.spawn(run_rank, args=(2, str(path), str(tmp_path), free_port(), '_resumed'), nprocs=2,
             join=True)
    for rank in range(2):
        r = torch.load(tmp_path / f'gates_resumed_rank{rank}.pt')
        assert r['shrunk_at'] == g0['shrunk_at']
        assert torch.equal(r['a'], g0['a'])
        for k, v in g0['state'].items():
            if rank == 1 and ('running_' in k or 'num_batches' in k):
                continue  # (BN statistics are per rank; the checkpoint holds rank 0's)
            torch.testing.assert_close(r['state'][k], v, rtol=1e-5, atol=1e-6, msg=k)
