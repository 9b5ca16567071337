# As gdp_retinanet_r50_fpn_1x_voc0712_flops50.py, keeping 30 % of the FLOPs.
_base_ = './gdp_retinanet_r50_fpn_1x_voc0712_flops50.py'

custom_hooks = [
    dict(type='GDPHook', flops_target=0.3, min_channels=8, channel_divisor=8, export=True)
]
