# COCO-format variant of the toy dataset: the same images, annotations from
# ``tools/make_toy_voc.py --coco`` (annotations/instances_{trainval,test}.json,
# file names relative to VOC2007/JPEGImages/). Evaluated with CocoMetric.
_base_ = ['./toyvoc_dataset.py']

dataset_type = 'CocoDataset'
data_root = 'data/toyvoc/'

train_dataloader = dict(
    dataset=dict(
        _delete_=True,
        type=dataset_type,
        metainfo={{_base_.metainfo}},
        data_root=data_root,
        ann_file='annotations/instances_trainval.json',
        data_prefix=dict(img='VOC2007/JPEGImages/'),
        filter_cfg=dict(filter_empty_gt=True, min_size=32),
        pipeline={{_base_.train_pipeline}},
        backend_args={{_base_.backend_args}}))
val_dataloader = dict(
    dataset=dict(
        _delete_=True,
        type=dataset_type,
        metainfo={{_base_.metainfo}},
        data_root=data_root,
        ann_file='annotations/instances_test.json',
        data_prefix=dict(img='VOC2007/JPEGImages/'),
        test_mode=True,
        pipeline={{_base_.test_pipeline}},
        backend_args={{_base_.backend_args}}))
test_dataloader = val_dataloader

val_evaluator = dict(
    _delete_=True,
    type='CocoMetric',
    ann_file=data_root + 'annotations/instances_test.json',
    metric='bbox',
    format_only=False,
    backend_args={{_base_.backend_args}})
test_evaluator = val_evaluator
