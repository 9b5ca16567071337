"""One rank of the 2-process CPU (gloo) GDP run in tests/test_ddp.py."""
import os
import sys


def run_rank(rank: int, world: int, cfg_path: str, out_dir: str, port: int,
             tag: str = '') -> None:
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world),
                      MASTER_ADDR='127.0.0.1', MASTER_PORT=str(port))
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    import torch
    import torch.distributed as dist
    torch.set_num_threads(1)
    dist.init_process_group('gloo', rank=rank, world_size=world)
    import gdp_det  # noqa: F401
    from mmengine.config import Config
    from mmengine.runner import Runner
    from mmengine.hooks import Hook

    class PerturbGateGradient(Hook):
        """Rank 1 alone adds noise to the (all-reduced) gate gradient before the GDP
        hook uses it: the ranks would diverge unless the hook makes them agree."""
        priority = 'NORMAL'  # before GDPHook (LOW)

        def after_train_iter(self, runner, batch_idx, data_batch=None, outputs=None):
            a = runner.model.module.gdp_gates.a
            if rank == 1 and a.grad is not None:  # (seeded by the iteration: a resumed
                gen = torch.Generator().manual_seed(runner.iter)  # run adds the same)
                noise = torch.randn(a.grad.shape, generator=gen)
                a.grad.add_(noise * a.grad.abs().mean())

    cfg = Config.fromfile(cfg_path)
    runner = Runner.from_cfg(cfg)
    runner.register_hook(PerturbGateGradient())
    runner.train()
    gates = runner.model.module.gdp_gates
    hook = next(h for h in runner.hooks if type(h).__name__ == 'GDPHook')
    assert hook.shrink is not None  # shrunk after the cut, and wrapped in DDP anew
    assert type(runner.model).__name__ == 'MMDistributedDataParallel'
    torch.save(dict(a=hook.traced_gates().clone(), eps=gates.eps.clone(),
                    shrunk_at=hook.shrunk_at,
                    state=hook.shrink.padded_copy(runner.model.module).state_dict()),
               os.path.join(out_dir, f'gates{tag}_rank{rank}.pt'))
    dist.destroy_process_group()
