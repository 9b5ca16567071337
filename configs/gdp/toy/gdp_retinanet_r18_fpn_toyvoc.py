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
    dict(type='GDPHook', flops_target=0.5, eps_start=1.0, eps_end=1e-4, gate_lr=0.1,
         lambda_init=1e-3, min_channels=1, export=True)
]

max_epochs = 4
train_cfg = dict(max_epochs=max_epochs, val_interval=max_epochs)
param_scheduler = [dict(type='ConstantLR', factor=1.0, by_epoch=True, begin=0, end=max_epochs)]
load_from = None
