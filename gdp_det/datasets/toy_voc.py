"""Procedurally generated, Pascal-VOC-layout toy detection dataset.

The dataset is small and deterministic for a seed: every image has its own random
stream (:func:`sample_for`), drawn by :mod:`.toy_shapes` (what the images show).

Layout written by :func:`make_toy_voc` (the same as ``VOCdevkit``)::

    OUT/VOC2007/JPEGImages/000001.jpg
    OUT/VOC2007/Annotations/000001.xml
    OUT/VOC2007/ImageSets/Main/trainval.txt
    OUT/VOC2007/ImageSets/Main/test.txt
    OUT/annotations/instances_trainval.json   (only with ``coco=True``)
    OUT/annotations/instances_test.json       (only with ``coco=True``)

Box conventions
---------------
Every object is described by the tight box of its *visible* pixels (after
clipping at the image border and after occlusion by objects drawn later). With
``x0..x1`` / ``y0..y1`` the 0-based, inclusive column / row range of those
pixels:

* VOC XML stores 1-based inclusive ints, like the real VOC:
  ``xmin = x0 + 1, ymin = y0 + 1, xmax = x1 + 1, ymax = y1 + 1``. mmdet's
  ``XMLDataset`` subtracts 1, so it yields ``[x0, y0, x1, y1]``.
* COCO stores ``[x0, y0, x1 - x0 + 1, y1 - y0 + 1]`` (the box that covers the
  pixels); mmdet's ``CocoDataset`` yields ``[x0, y0, x1 + 1, y1 + 1]``.

``truncated`` is 1 when part of the object's shape lies outside the image.
``difficult`` is always 0 (every object is meant to be detected).
"""
from __future__ import annotations

import io
import json
import os
import os.path as osp
import xml.etree.ElementTree as ET
from typing import Dict, List, Sequence

import numpy as np
from PIL import Image

from .toy_shapes import TOY_CLASSES, TOY_PALETTE, ToyObject, ToySample, render_sample

__all__ = [
    'TOY_CLASSES', 'TOY_PALETTE', 'ToyObject', 'ToySample', 'render_sample',
    'sample_for', 'voc_xml', 'make_toy_voc', 'image_ids'
]

SPLITS = ('trainval', 'test')
JPEG_QUALITY = 92


def image_ids(num_train: int, num_val: int) -> Dict[str, List[str]]:
    """VOC-style six-digit ids: trainval is 000001..N, test follows it."""
    return {
        'trainval': [f'{i:06d}' for i in range(1, num_train + 1)],
        'test': [
            f'{i:06d}' for i in range(num_train + 1, num_train + num_val + 1)
        ],
    }


def sample_for(seed: int,
               split: str,
               index: int,
               img_size: int = 256,
               max_objects: int = 4) -> ToySample:
    """The sample number ``index`` (0-based) of ``split`` for ``seed``.

    Each image has its own random stream, so any one can be regenerated
    without the others (tests use this to compare against the written files).
    """
    rng = np.random.default_rng([int(seed), SPLITS.index(split), int(index)])
    return render_sample(rng, img_size=img_size, max_objects=max_objects)


def voc_xml(img_id: str, width: int, height: int,
            objects: Sequence[ToyObject]) -> bytes:
    """A Pascal VOC annotation file for one image."""
    root = ET.Element('annotation')
    ET.SubElement(root, 'folder').text = 'VOC2007'
    ET.SubElement(root, 'filename').text = f'{img_id}.jpg'
    source = ET.SubElement(root, 'source')
    ET.SubElement(source, 'database').text = 'gdp_det toy VOC'
    ET.SubElement(source, 'annotation').text = 'gdp_det.datasets.toy_voc'
    size = ET.SubElement(root, 'size')
    ET.SubElement(size, 'width').text = str(int(width))
    ET.SubElement(size, 'height').text = str(int(height))
    ET.SubElement(size, 'depth').text = '3'
    ET.SubElement(root, 'segmented').text = '0'
    for obj in objects:
        o = ET.SubElement(root, 'object')
        ET.SubElement(o, 'name').text = obj.name
        ET.SubElement(o, 'pose').text = 'Unspecified'
        ET.SubElement(o, 'truncated').text = str(int(obj.truncated))
        ET.SubElement(o, 'difficult').text = str(int(obj.difficult))
        bnd = ET.SubElement(o, 'bndbox')
        for key, val in zip(('xmin', 'ymin', 'xmax', 'ymax'),
                            obj.voc_bndbox()):
            ET.SubElement(bnd, key).text = str(int(val))
    ET.indent(root, space='\t')
    return ET.tostring(root, encoding='utf-8') + b'\n'


def _jpeg_bytes(image: np.ndarray, quality: int = JPEG_QUALITY) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format='JPEG', quality=quality)
    return buf.getvalue()


def _write(path: str, data: bytes) -> None:
    with open(path, 'wb') as f:
        f.write(data)


def make_toy_voc(out: str,
                 num_train: int = 400,
                 num_val: int = 100,
                 seed: int = 0,
                 img_size: int = 256,
                 coco: bool = False,
                 max_objects: int = 4) -> dict:
    """Write the toy dataset under ``out`` (see the module docstring).

    Returns a summary: number of images and objects per split and the paths
    written.
    """
    voc = osp.join(out, 'VOC2007')
    for sub in ('JPEGImages', 'Annotations', osp.join('ImageSets', 'Main')):
        os.makedirs(osp.join(voc, sub), exist_ok=True)
    ids = image_ids(num_train, num_val)
    summary = {'root': out, 'seed': seed, 'img_size': img_size, 'splits': {}}
    coco_cats = [{
        'id': i + 1,
        'name': name,
        'supercategory': 'shape'
    } for i, name in enumerate(TOY_CLASSES)]
    for split in SPLITS:
        coco_images, coco_anns = [], []
        n_obj = n_trunc = 0
        for index, img_id in enumerate(ids[split]):
            s = sample_for(seed, split, index, img_size, max_objects)
            _write(osp.join(voc, 'JPEGImages', f'{img_id}.jpg'),
                   _jpeg_bytes(s.image))
            _write(
                osp.join(voc, 'Annotations', f'{img_id}.xml'),
                voc_xml(img_id, s.width, s.height, s.objects))
            n_obj += len(s.objects)
            n_trunc += sum(o.truncated for o in s.objects)
            if coco:
                image_id = int(img_id)
                coco_images.append({
                    'id': image_id,
                    'file_name': f'{img_id}.jpg',
                    'width': s.width,
                    'height': s.height
                })
                for o in s.objects:
                    box = o.coco_bbox()
                    coco_anns.append({
                        'id': len(coco_anns) + 1,
                        'image_id': image_id,
                        'category_id': o.label + 1,
                        'bbox': box,
                        'area': int(o.mask.sum()),
                        'iscrowd': 0,
                        'truncated': int(o.truncated),
                    })
        _write(
            osp.join(voc, 'ImageSets', 'Main', f'{split}.txt'),
            ''.join(f'{i}\n' for i in ids[split]).encode())
        if coco:
            os.makedirs(osp.join(out, 'annotations'), exist_ok=True)
            doc = {
                'info': {
                    'description': 'gdp_det toy VOC',
                    'version': '1.0'
                },
                'licenses': [],
                'images': coco_images,
                'annotations': coco_anns,
                'categories': coco_cats,
            }
            _write(
                osp.join(out, 'annotations', f'instances_{split}.json'),
                json.dumps(doc, indent=1, sort_keys=True).encode())
        summary['splits'][split] = {
            'images': len(ids[split]),
            'objects': n_obj,
            'truncated': n_trunc
        }
    return summary
