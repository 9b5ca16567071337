"""The procedural toy VOC dataset: determinism, annotation correctness, and
loading through mmdet's VOCDataset / CocoDataset and their metrics."""
import hashlib
import json
import os
import os.path as osp
import xml.etree.ElementTree as ET

import numpy as np
import pytest
from PIL import Image

from gdp_det.datasets.toy_voc import (TOY_CLASSES, TOY_PALETTE, image_ids,
                                      make_toy_voc, sample_for)

from conftest import CONFIG_DIR, REPO


def _tree_digest(root):
    out = {}
    for dirpath, _, files in os.walk(root):
        for f in files:
            p = osp.join(dirpath, f)
            with open(p, 'rb') as fh:
                out[osp.relpath(p, root)] = hashlib.sha256(
                    fh.read()).hexdigest()
    return out


def _read_xml(path):
    root = ET.parse(path).getroot()
    size = root.find('size')
    objs = []
    for o in root.findall('object'):
        bb = o.find('bndbox')
        objs.append(
            dict(
                name=o.find('name').text,
                pose=o.find('pose').text,
                truncated=int(o.find('truncated').text),
                difficult=int(o.find('difficult').text),
                bndbox=tuple(
                    int(bb.find(k).text)
                    for k in ('xmin', 'ymin', 'xmax', 'ymax'))))
    return dict(
        filename=root.find('filename').text,
        width=int(size.find('width').text),
        height=int(size.find('height').text),
        depth=int(size.find('depth').text),
        objects=objs)


def _all_objects(toy_data):
    ids = image_ids(toy_data.num_train, toy_data.num_val)
    for split in ('trainval', 'test'):
        for index, img_id in enumerate(ids[split]):
            yield split, index, img_id


# ---------------------------------------------------------------------------
# Generation
# ---------------------------------------------------------------------------
def test_layout_and_split_files(toy_data):
    voc = osp.join(toy_data.root, 'VOC2007')
    ids = image_ids(toy_data.num_train, toy_data.num_val)
    for split, n in (('trainval', toy_data.num_train), ('test',
                                                          toy_data.num_val)):
        with open(osp.join(voc, 'ImageSets', 'Main', f'{split}.txt')) as f:
            lines = f.read().split()
        assert lines == ids[split]
        assert len(lines) == n
    assert not set(ids['trainval']) & set(ids['test'])
    n_img = toy_data.num_train + toy_data.num_val
    assert len(os.listdir(osp.join(voc, 'JPEGImages'))) == n_img
    assert len(os.listdir(osp.join(voc, 'Annotations'))) == n_img


def test_deterministic_for_a_seed(tmp_path):
    a = make_toy_voc(str(tmp_path / 'a'), 6, 3, seed=11, img_size=96,
                     coco=True)
    b = make_toy_voc(str(tmp_path / 'b'), 6, 3, seed=11, img_size=96,
                     coco=True)
    c = make_toy_voc(str(tmp_path / 'c'), 6, 3, seed=12, img_size=96)
    da, db = _tree_digest(tmp_path / 'a'), _tree_digest(tmp_path / 'b')
    assert len(da) == 2 * 9 + 2 + 2  # jpg + xml per image, 2 splits, 2 json
    assert da == db
    assert a['splits'] == b['splits']
    dc = _tree_digest(tmp_path / 'c')
    jpgs = [k for k in dc if k.endswith('.jpg')]
    assert len(jpgs) == 9
    # another seed gives other images
    assert all(da[k] != dc[k] for k in jpgs)
    assert c['splits']['trainval']['images'] == 6


def test_xml_matches_drawn_objects(toy_data):
    """Every written box is the tight box of the object's visible pixels and
    the pixels it covers were really drawn (differ from the background)."""
    voc = osp.join(toy_data.root, 'VOC2007')
    n_objects = 0
    for split, index, img_id in _all_objects(toy_data):
        s = sample_for(toy_data.seed, split, index, toy_data.img_size)
        ann = _read_xml(osp.join(voc, 'Annotations', f'{img_id}.xml'))
        assert ann['filename'] == f'{img_id}.jpg'
        assert (ann['width'], ann['height'], ann['depth']) == (s.width,
                                                               s.height, 3)
        assert 0.75 * toy_data.img_size - 1 <= s.width <= toy_data.img_size
        assert len(ann['objects']) == len(s.objects) >= 1

        jpg = np.asarray(
            Image.open(osp.join(voc, 'JPEGImages', f'{img_id}.jpg')).convert(
                'RGB'), np.float32)
        assert jpg.shape == (s.height, s.width, 3)
        # the JPEG is the drawn image (up to compression)
        assert np.abs(jpg - s.image).mean() < 10.0

        drawn = np.zeros((s.height, s.width), bool)
        for o, x in zip(s.objects, ann['objects']):
            n_objects += 1
            assert x['name'] == o.name == TOY_CLASSES[o.label]
            assert x['pose'] == 'Unspecified' and x['difficult'] == 0
            ys, xs = np.nonzero(o.mask)
            # VOC: 1-based, inclusive pixel coordinates of the visible mask
            assert x['bndbox'] == (xs.min() + 1, ys.min() + 1, xs.max() + 1,
                                   ys.max() + 1)
            xmin, ymin, xmax, ymax = x['bndbox']
            assert 1 <= xmin < xmax <= s.width
            assert 1 <= ymin < ymax <= s.height
            assert min(xmax - xmin, ymax - ymin) + 1 >= 8
            # the object's pixels were painted over the background
            diff = np.abs(s.image[o.mask].astype(np.float32) -
                          s.background[o.mask]).sum(-1)
            assert diff.mean() > 40, (img_id, o.name, diff.mean())
            # ... and are visible in the written JPEG too
            jdiff = np.abs(jpg[o.mask] - s.background[o.mask]).sum(-1)
            assert jdiff.mean() > 40
            drawn |= o.mask
        # outside the objects, the image is the untouched background
        assert np.array_equal(s.image[~drawn], s.background[~drawn])
    assert n_objects >= toy_data.num_train + toy_data.num_val


def test_truncation_flags(tmp_path):
    root = str(tmp_path / 'd')
    summary = make_toy_voc(root, 60, 0, seed=5, img_size=96)
    n_trunc = 0
    n_obj = 0
    for index, img_id in enumerate(image_ids(60, 0)['trainval']):
        s = sample_for(5, 'trainval', index, 96)
        ann = _read_xml(osp.join(root, 'VOC2007', 'Annotations',
                                 f'{img_id}.xml'))
        for o, x in zip(s.objects, ann['objects']):
            n_obj += 1
            assert x['truncated'] == int(o.truncated)
            assert o.truncated == (o.inside_pixels < o.shape_pixels)
            assert o.mask.sum() <= o.inside_pixels <= o.shape_pixels
            if o.truncated:
                n_trunc += 1
                xmin, ymin, xmax, ymax = x['bndbox']
                # cut by the border: the box touches it
                assert (xmin == 1 or ymin == 1 or xmax == s.width
                        or ymax == s.height)
                # ... but enough of the object is left inside
                assert o.inside_pixels >= 0.55 * o.shape_pixels
    assert summary['splits']['trainval']['objects'] == n_obj
    assert summary['splits']['trainval']['truncated'] == n_trunc
    # some, but not most, objects are truncated
    assert 0.03 * n_obj <= n_trunc <= 0.4 * n_obj


def test_overlap_and_class_variety(tmp_path):
    objs = []
    overlaps = 0
    for index in range(80):
        s = sample_for(9, 'trainval', index, 128)
        objs += s.objects
        boxes = [o.bbox for o in s.objects]
        for i in range(len(boxes)):
            for j in range(i + 1, len(boxes)):
                a, b = boxes[i], boxes[j]
                if (min(a[2], b[2]) >= max(a[0], b[0])
                        and min(a[3], b[3]) >= max(a[1], b[1])):
                    overlaps += 1
    labels = np.array([o.label for o in objs])
    counts = np.bincount(labels, minlength=len(TOY_CLASSES))
    assert len(counts) == len(TOY_CLASSES) == 5
    # every class appears, none dominates
    assert counts.min() >= 0.1 * len(objs)
    assert counts.max() <= 0.35 * len(objs)
    assert overlaps >= 5
    # scales vary widely
    sides = np.array([max(o.bbox[2] - o.bbox[0], o.bbox[3] - o.bbox[1]) + 1
                      for o in objs])
    assert sides.min() < 30 and sides.max() > 55


def test_cli(tmp_path):
    import runpy
    import sys
    out = str(tmp_path / 'cli')
    argv = sys.argv
    sys.argv = [
        'make_toy_voc.py', '--out', out, '--num-train', '5', '--num-val', '2',
        '--seed', '1', '--coco', '--img-size', '96'
    ]
    try:
        with pytest.raises(SystemExit) as done:
            runpy.run_path(
                osp.join(REPO, 'tools', 'make_toy_voc.py'), run_name='__main__')
    finally:
        sys.argv = argv
    assert done.value.code == 0
    voc = osp.join(out, 'VOC2007')
    assert len(os.listdir(osp.join(voc, 'JPEGImages'))) == 7
    with open(osp.join(out, 'annotations', 'instances_test.json')) as f:
        assert len(json.load(f)['images']) == 2
    img = Image.open(osp.join(voc, 'JPEGImages', '000001.jpg'))
    assert max(img.size) <= 96


# ---------------------------------------------------------------------------
# Loading with mmdet
# ---------------------------------------------------------------------------
def _voc_dataset(root, split):
    from mmdet.datasets import VOCDataset
    return VOCDataset(
        data_root=root,
        ann_file=f'VOC2007/ImageSets/Main/{split}.txt',
        data_prefix=dict(sub_data_root='VOC2007/'),
        metainfo=dict(classes=TOY_CLASSES, palette=TOY_PALETTE),
        test_mode=True,
        pipeline=[])


def _coco_dataset(root, split):
    from mmdet.datasets import CocoDataset
    return CocoDataset(
        data_root=root,
        ann_file=f'annotations/instances_{split}.json',
        data_prefix=dict(img='VOC2007/JPEGImages/'),
        metainfo=dict(classes=TOY_CLASSES, palette=TOY_PALETTE),
        test_mode=True,
        pipeline=[])


@pytest.mark.parametrize('split', ['trainval', 'test'])
def test_voc_dataset_loads(toy_data, split):
    ds = _voc_dataset(toy_data.root, split)
    n = toy_data.num_train if split == 'trainval' else toy_data.num_val
    assert len(ds) == n
    assert ds.metainfo['dataset_type'] == 'VOC2007'
    assert tuple(ds.metainfo['classes']) == TOY_CLASSES
    n_inst = 0
    for index in range(len(ds)):
        info = ds.get_data_info(index)
        s = sample_for(toy_data.seed, split, index, toy_data.img_size)
        assert osp.isfile(info['img_path'])
        assert (info['width'], info['height']) == (s.width, s.height)
        assert len(info['instances']) == len(s.objects)
        for inst, o in zip(info['instances'], s.objects):
            assert inst['bbox_label'] == o.label
            # XMLDataset subtracts 1: 0-based inclusive pixel bounds
            assert inst['bbox'] == list(o.bbox)
            assert inst['ignore_flag'] == 0
        n_inst += len(info['instances'])
    assert n_inst == toy_data.summary['splits'][split]['objects']


@pytest.mark.parametrize('split', ['trainval', 'test'])
def test_coco_export_loads(toy_data, split):
    voc = _voc_dataset(toy_data.root, split)
    coco = _coco_dataset(toy_data.root, split)
    assert len(coco) == len(voc)
    n_voc = n_coco = 0
    for index in range(len(coco)):
        ci, vi = coco.get_data_info(index), voc.get_data_info(index)
        assert ci['img_path'] == vi['img_path']
        assert (ci['width'], ci['height']) == (vi['width'], vi['height'])
        assert ci['img_id'] == int(vi['img_id'])
        assert len(ci['instances']) == len(vi['instances'])
        for c, v in zip(ci['instances'], vi['instances']):
            assert c['bbox_label'] == v['bbox_label']
            x0, y0, x1, y1 = v['bbox']
            # COCO box covers the pixels: one more than VOC's x1/y1
            assert c['bbox'] == [x0, y0, x1 + 1, y1 + 1]
        n_voc += len(vi['instances'])
        n_coco += len(ci['instances'])
    assert n_coco == n_voc == toy_data.summary['splits'][split]['objects']


def _gt_as_predictions(ds, shuffle_labels=False):
    """data_samples (dicts) whose predictions are the ground truth."""
    import torch
    rng = np.random.default_rng(0)
    samples = []
    for index in range(len(ds)):
        info = ds.get_data_info(index)
        boxes = torch.tensor([i['bbox'] for i in info['instances']],
                             dtype=torch.float32).reshape(-1, 4)
        labels = torch.tensor([i['bbox_label'] for i in info['instances']],
                              dtype=torch.long)
        pred_labels = labels.clone()
        if shuffle_labels:
            pred_labels = (labels + torch.from_numpy(
                rng.integers(1, len(TOY_CLASSES), len(labels)))) % len(
                    TOY_CLASSES)
        samples.append(
            dict(
                img_id=info['img_id'],
                ori_shape=(info['height'], info['width']),
                gt_instances=dict(bboxes=boxes, labels=labels),
                ignored_instances=dict(
                    bboxes=torch.zeros((0, 4)),
                    labels=torch.zeros((0, ), dtype=torch.long)),
                pred_instances=dict(
                    bboxes=boxes,
                    scores=torch.linspace(1.0, 0.5, len(labels)),
                    labels=pred_labels)))
    return samples


def test_voc_metric_on_ground_truth(toy_data):
    from mmdet.evaluation import VOCMetric
    ds = _voc_dataset(toy_data.root, 'test')
    metric = VOCMetric(metric='mAP', eval_mode='11points')
    metric.dataset_meta = ds.metainfo
    metric.process({}, _gt_as_predictions(ds))
    res = metric.evaluate(len(ds))
    assert res['pascal_voc/mAP'] == pytest.approx(1.0)
    metric = VOCMetric(metric='mAP', eval_mode='11points')
    metric.dataset_meta = ds.metainfo
    metric.process({}, _gt_as_predictions(ds, shuffle_labels=True))
    assert metric.evaluate(len(ds))['pascal_voc/mAP'] == pytest.approx(0.0)


def test_coco_metric_on_ground_truth(toy_data):
    from mmdet.evaluation import CocoMetric
    ds = _coco_dataset(toy_data.root, 'test')
    metric = CocoMetric(
        ann_file=osp.join(toy_data.root, 'annotations', 'instances_test.json'),
        metric='bbox')
    metric.dataset_meta = ds.metainfo
    metric.process({}, _gt_as_predictions(ds))
    res = metric.evaluate(len(ds))
    assert res['coco/bbox_mAP'] == pytest.approx(1.0)
    assert res['coco/bbox_mAP_50'] == pytest.approx(1.0)


def test_configs_match_toy_classes():
    from mmengine.config import Config
    for name in ('toyvoc_dataset.py', 'toycoco_dataset.py'):
        cfg = Config.fromfile(osp.join(CONFIG_DIR, '_base_', name))
        for loader in ('train_dataloader', 'val_dataloader',
                       'test_dataloader'):
            meta = cfg[loader].dataset.metainfo
            assert tuple(meta['classes']) == TOY_CLASSES
            assert [tuple(p) for p in meta['palette']] == TOY_PALETTE
    cfg = Config.fromfile(osp.join(CONFIG_DIR, '_base_', 'toycoco_dataset.py'))
    assert cfg.train_dataloader.dataset.type == 'CocoDataset'
    assert cfg.val_evaluator.type == 'CocoMetric'
    assert 'sub_data_root' not in cfg.val_dataloader.dataset.data_prefix
