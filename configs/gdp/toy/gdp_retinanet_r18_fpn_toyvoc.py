# GDP phase for the toy RetinaNet: start from a trained baseline (load_from),
# train gates until the detector is at 50 % of its FLOPs, then export the pruned
# model into <work_dir>/pruned. Usage:
#   python tools/train.py configs/gdp/toy/gdp_retinanet_r18_fpn_toyvoc.py \
#       --cfg-options load_from=work_dirs/retinanet_r18_fpn_toyvoc/epoch_16.pth
_base_ = '../../toy/retinanet_r18_fpn_toyvoc.py'

# 1) wrap the detector: one gate vector per group of coupled channels
model = dict(
    _delete_=True,
    type='GDPDetector',
    detector={{_base_.model}},
    input_size=(224, 224))  # training scale, for the FLOPs model

# 2) the GDP hook: eps schedule, proximal SGD on the gates, FLOPs budget, export
custom_hooks = [
    dict(type='GDPHook', flops_target=0.5, min_channels=1, export=True)
]

# 3) the schedule of a phase that starts from a trained model: a tenth of the
#    baseline's learning rate after a short warm-up (restarting AdamW at the full
#    rate with a fresh state undoes much of the baseline's training)
max_epochs = 4
train_cfg = dict(max_epochs=max_epochs, val_interval=max_epochs)
optim_wrapper = dict(optimizer=dict(lr=1e-4))
param_scheduler = [dict(type='LinearLR', start_factor=0.1, by_epoch=False, begin=0, end=50)]
load_from = None
