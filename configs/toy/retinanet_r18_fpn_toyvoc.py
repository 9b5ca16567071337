# RetinaNet, ResNet-18 + FPN, trained from scratch (no pretrained weights are
# available offline) on the procedural toy VOC dataset (gdp_det.datasets.toy_voc).
# 16 epochs of 480 images at 224 px on 2 CPU cores: VOC mAP@0.5 ~0.75 in
# about 10 minutes; see benchmarks/toy_baseline.md.
_base_ = [
    'mmdet::_base_/models/retinanet_r50_fpn.py',
    './_base_/toyvoc_dataset.py',
    './_base_/toy_schedule.py',
]

model = dict(
    backbone=dict(
        depth=18,
        frozen_stages=-1,  # from scratch: train every stage
        norm_eval=False,  # ... and keep BN statistics updating
        init_cfg=None),
    # 128 FPN / head channels and 2 stacked head convs instead of 256 / 4:
    # the head is then ~0.6 instead of ~4.6 GMACs per 224 px image.
    neck=dict(in_channels=[64, 128, 256, 512], out_channels=128),
    bbox_head=dict(
        num_classes=5, in_channels=128, feat_channels=128, stacked_convs=2))

train_dataloader = dict(batch_size=8)
