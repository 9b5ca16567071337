# Faster R-CNN, ResNet-18 + FPN, trained from scratch (no pretrained weights
# are available offline) on the procedural toy VOC dataset (gdp_det.datasets.toy_voc).
# See benchmarks/toy_baseline.md for its time and mAP on 2 CPU cores.
_base_ = [
    'mmdet::_base_/models/faster-rcnn_r50_fpn.py',
    './_base_/toyvoc_dataset.py',
    './_base_/toy_schedule.py',
]

model = dict(
    backbone=dict(
        depth=18,
        frozen_stages=-1,  # from scratch: train every stage
        norm_eval=False,  # ... and keep BN statistics updating
        init_cfg=None),
    neck=dict(in_channels=[64, 128, 256, 512], out_channels=128),
    rpn_head=dict(in_channels=128, feat_channels=128),
    roi_head=dict(
        bbox_roi_extractor=dict(out_channels=128),
        bbox_head=dict(in_channels=128, fc_out_channels=512, num_classes=5)),
    # <= 4 objects in a 224 px image: fewer proposals and sampled RoIs keep
    # the CPU RoIAlign and the box head cheap
    train_cfg=dict(
        rpn_proposal=dict(nms_pre=1000, max_per_img=300),
        rcnn=dict(sampler=dict(num=128))),
    test_cfg=dict(rpn=dict(nms_pre=500, max_per_img=300)))

train_dataloader = dict(batch_size=8)
