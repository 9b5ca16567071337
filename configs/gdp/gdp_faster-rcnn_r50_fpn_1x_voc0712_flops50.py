# GDP phase on VOC07+12 (mmdet model zoo: 80.4 mAP), keeping 50 % of the FLOPs.
# Set load_from to the trained baseline (mmdet::pascal_voc/faster-rcnn_r50_fpn_1x_voc0712.py), e.g.
#   bash tools/dist_train.sh configs/gdp/gdp_faster-rcnn_r50_fpn_1x_voc0712_flops50.py 8 \
#       --cfg-options load_from=checkpoints/faster-rcnn_r50_fpn_1x_voc0712.pth
# The pruned config + checkpoint are exported into <work_dir>/pruned at the end.
_base_ = ['mmdet::pascal_voc/faster-rcnn_r50_fpn_1x_voc0712.py', './_base_/gdp_runtime.py']

model = dict(
    _delete_=True,
    type='GDPDetector',
    detector={{_base_.model}},
    input_size=(600, 1000))  # the training scale (H, W), for the FLOPs model
load_from = None  # the trained baseline checkpoint
# a tenth of the baseline's learning rate: the GDP phase starts from a trained model
# (restarting at the full rate undoes part of its training; see README, "GDP schedule")
optim_wrapper = dict(optimizer=dict(lr=0.001))
