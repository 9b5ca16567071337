# RTMDet-tiny (CSPNeXt + CSPNeXtPAFPN, depthwise-separable head convs) trained from
# scratch on the procedural toy VOC set, with the EMAHook of mmdet's RTMDet/YOLOX
# configs (ExpMomentumEMA, buffers averaged, priority 49): the toy detector for
# checking GDP with EMA weights. The strong augmentations of the COCO recipe
# (mosaic, mixup, pipeline switch) are left out: the toy set does not need them.
_base_ = [
    'mmdet::_base_/models/retinanet_r50_fpn.py',  # replaced below (_delete_)
    './_base_/toyvoc_dataset.py',
    './_base_/toy_schedule.py',
]

model = dict(
    _delete_=True,
    type='RTMDet',
    data_preprocessor=dict(
        type='DetDataPreprocessor', mean=[103.53, 116.28, 123.675],
        std=[57.375, 57.12, 58.395], bgr_to_rgb=False, pad_size_divisor=32,
        batch_augments=None),
    backbone=dict(
        type='CSPNeXt', arch='P5', expand_ratio=0.5, deepen_factor=0.167,
        widen_factor=0.375, channel_attention=True, norm_cfg=dict(type='BN'),
        act_cfg=dict(type='SiLU', inplace=True)),
    neck=dict(
        type='CSPNeXtPAFPN', in_channels=[96, 192, 384], out_channels=96,
        num_csp_blocks=1, expand_ratio=0.5, norm_cfg=dict(type='BN'),
        act_cfg=dict(type='SiLU', inplace=True)),
    bbox_head=dict(
        type='RTMDetSepBNHead', num_classes=5, in_channels=96, stacked_convs=2,
        feat_channels=96, anchor_generator=dict(type='MlvlPointGenerator', offset=0,
                                                strides=[8, 16, 32]),
        bbox_coder=dict(type='DistancePointBBoxCoder'),
        loss_cls=dict(type='QualityFocalLoss', use_sigmoid=True, beta=2.0,
                      loss_weight=1.0),
        loss_bbox=dict(type='GIoULoss', loss_weight=2.0), with_objectness=False,
        exp_on_reg=False, share_conv=True, pred_kernel_size=1,
        norm_cfg=dict(type='BN'), act_cfg=dict(type='SiLU', inplace=True)),
    train_cfg=dict(assigner=dict(type='DynamicSoftLabelAssigner', topk=13),
                   allowed_border=-1, pos_weight=-1, debug=False),
    test_cfg=dict(nms_pre=1000, min_bbox_size=0, score_thr=0.05,
                  nms=dict(type='nms', iou_threshold=0.6), max_per_img=100))

custom_hooks = [
    dict(type='EMAHook', ema_type='ExpMomentumEMA', momentum=0.0002,
         update_buffers=True, priority=49)
]
train_dataloader = dict(batch_size=8)
