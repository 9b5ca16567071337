# Schedule and runtime shared by the toy baselines: mmdet's 1x schedule and
# default runtime, shortened for a from-scratch run on 2 CPU cores.
_base_ = [
    'mmdet::_base_/schedules/schedule_1x.py',
    'mmdet::_base_/default_runtime.py',
]
custom_imports = dict(imports=['gdp_det'], allow_failed_imports=False)
default_scope = 'mmdet'

max_epochs = 16
train_cfg = dict(max_epochs=max_epochs, val_interval=4)
# Linear warm-up, then cosine decay to 5% over all epochs (iteration-wise).
param_scheduler = [
    dict(type='LinearLR', start_factor=0.01, by_epoch=False, begin=0, end=100),
    dict(
        type='CosineAnnealingLR',
        begin=0,
        end=max_epochs,
        T_max=max_epochs,
        eta_min_ratio=0.05,
        by_epoch=True,
        convert_to_iter_based=True)
]
# From scratch, AdamW converges much faster than the 1x schedule's SGD.
optim_wrapper = dict(
    _delete_=True,
    type='OptimWrapper',
    optimizer=dict(type='AdamW', lr=1e-3, weight_decay=0.05),
    clip_grad=dict(max_norm=10, norm_type=2))
auto_scale_lr = dict(enable=False, base_batch_size=8)
# Reproducible runs (the baselines in benchmarks/toy_baseline.md use it).
randomness = dict(seed=0)

default_hooks = dict(
    logger=dict(type='LoggerHook', interval=10),
    checkpoint=dict(type='CheckpointHook', interval=4, max_keep_ckpts=2))
log_processor = dict(window_size=10)
