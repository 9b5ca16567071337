"""What the toy dataset's images show, drawn from a random generator.

Five shape classes (:data:`TOY_CLASSES`) with varied scale, aspect ratio, rotation,
colour and texture, drawn on cluttered backgrounds (colour gradients, noise,
distractor lines and arcs), with some overlap between objects and partial truncation
at the image border: learnable by a ResNet-18 detector trained from scratch on a CPU
in minutes, yet not trivial. :func:`render_sample` draws one image with its objects;
:mod:`.toy_voc` writes them as a VOC/COCO dataset.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import List, Optional, Tuple

import numpy as np
from PIL import Image, ImageDraw

#: Object classes of the toy dataset, in label order (label i <-> TOY_CLASSES[i]).
TOY_CLASSES: Tuple[str, ...] = ('circle', 'square', 'triangle', 'star',
                                'cross')
#: One visualisation colour per class (for mmdet's ``metainfo['palette']``).
TOY_PALETTE: List[Tuple[int, int, int]] = [(220, 20, 60), (0, 0, 230),
                                           (0, 182, 199), (250, 170, 30),
                                           (106, 0, 228)]

# Objects per image are drawn from [MIN_OBJECTS, max_objects].
MIN_OBJECTS = 1
# Object size (longest side of the un-rotated shape) as a fraction of the
# shorter image side.
MIN_SCALE, MAX_SCALE = 0.16, 0.48
# A placed object keeps at least this fraction of its shape inside the image
# and at least this fraction visible after occlusion by later objects.
MIN_INSIDE_FRACTION = 0.55
MIN_VISIBLE_FRACTION = 0.7
MIN_BOX_SIDE = 8
TRUNCATE_PROB = 0.2


@dataclass
class ToyObject:
    """One drawn object.

    ``bbox`` is ``(x0, y0, x1, y1)``: 0-based, inclusive pixel bounds of
    ``mask`` (the visible pixels of the object). ``shape_pixels`` counts the
    pixels of the whole rasterised shape, also those outside the image, and
    ``inside_pixels`` those inside the image (before occlusion):
    ``truncated == (inside_pixels < shape_pixels)``.
    """
    name: str
    label: int
    bbox: Tuple[int, int, int, int]
    truncated: bool
    mask: np.ndarray = field(repr=False)
    shape_pixels: int = 0
    inside_pixels: int = 0
    difficult: bool = False

    def voc_bndbox(self) -> Tuple[int, int, int, int]:
        """1-based inclusive (xmin, ymin, xmax, ymax), as VOC XML stores it."""
        x0, y0, x1, y1 = self.bbox
        return x0 + 1, y0 + 1, x1 + 1, y1 + 1

    def coco_bbox(self) -> List[int]:
        """COCO ``[x, y, w, h]`` of the box covering the visible pixels."""
        x0, y0, x1, y1 = self.bbox
        return [x0, y0, x1 - x0 + 1, y1 - y0 + 1]


@dataclass
class ToySample:
    """One drawn image (``height x width x 3`` RGB, before JPEG compression), the
    background it was drawn on and its objects in drawing order (later ones occlude
    earlier ones; each object's ``mask`` and ``bbox`` are what stays visible)."""
    image: np.ndarray  # HxWx3 uint8 RGB, before JPEG compression
    background: np.ndarray = field(repr=False)  # HxWx3 uint8 RGB
    objects: List[ToyObject] = field(default_factory=list)

    @property
    def height(self) -> int:
        return int(self.image.shape[0])

    @property
    def width(self) -> int:
        return int(self.image.shape[1])


# ----------------------------------------------------------------------------
# Shapes: polygons in a unit frame (longest side about 1, centred at 0)
# ----------------------------------------------------------------------------
def _shape_polygon(name: str, rng: np.random.Generator) -> np.ndarray:
    if name == 'circle':
        t = np.linspace(0, 2 * np.pi, 72, endpoint=False)
        pts = np.stack([np.cos(t), np.sin(t)], 1) * 0.5
        aspect = rng.uniform(0.75, 1.0)
        rot = rng.uniform(-np.pi, np.pi)
    elif name == 'square':
        pts = np.array([[-.5, -.5], [.5, -.5], [.5, .5], [-.5, .5]])
        aspect = rng.uniform(0.65, 1.0)
        rot = rng.uniform(-0.3, 0.3)
    elif name == 'triangle':
        t = np.array([-90, 30, 150]) * np.pi / 180 + rng.uniform(-.15, .15, 3)
        pts = np.stack([np.cos(t), np.sin(t)], 1) * 0.55
        pts[:, 1] += 0.12
        aspect = rng.uniform(0.75, 1.0)
        rot = rng.uniform(-0.6, 0.6) + (np.pi if rng.random() < 0.25 else 0.)
    elif name == 'star':
        n = 5
        inner = rng.uniform(0.38, 0.5)
        t = np.arange(2 * n) * np.pi / n - np.pi / 2
        r = np.where(np.arange(2 * n) % 2 == 0, 0.5, 0.5 * inner)
        pts = np.stack([np.cos(t) * r, np.sin(t) * r], 1)
        aspect = rng.uniform(0.85, 1.0)
        rot = rng.uniform(-np.pi, np.pi)
    elif name == 'cross':
        a = rng.uniform(0.14, 0.2)  # half arm thickness
        pts = np.array([[-a, -.5], [a, -.5], [a, -a], [.5, -a], [.5, a],
                        [a, a], [a, .5], [-a, .5], [-a, a], [-.5, a],
                        [-.5, -a], [-a, -a]])
        aspect = rng.uniform(0.8, 1.0)
        rot = rng.uniform(-0.35, 0.35)
    else:
        raise KeyError(name)
    pts = pts.astype(np.float64).copy()
    if rng.random() < 0.5:
        pts[:, 0] *= aspect
    else:
        pts[:, 1] *= aspect
    c, s = math.cos(rot), math.sin(rot)
    return pts @ np.array([[c, s], [-s, c]])


def _polygon_mask(pts: np.ndarray, h: int, w: int) -> np.ndarray:
    canvas = Image.new('L', (w, h), 0)
    ImageDraw.Draw(canvas).polygon([(float(x), float(y)) for x, y in pts],
                                   fill=255)
    return np.asarray(canvas) > 127


# ----------------------------------------------------------------------------
# Colours, textures and backgrounds
# ----------------------------------------------------------------------------
def _random_color(rng: np.random.Generator) -> np.ndarray:
    return rng.integers(0, 256, 3).astype(np.float32)


def _linear_gradient(rng: np.random.Generator, h: int, w: int, c0: np.ndarray,
                     c1: np.ndarray) -> np.ndarray:
    ang = rng.uniform(0, 2 * np.pi)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    proj = xx * math.cos(ang) + yy * math.sin(ang)
    proj = (proj - proj.min()) / max(float(np.ptp(proj)), 1e-6)
    return c0[None, None] * (1 - proj[..., None]) + c1[None, None] * proj[...,
                                                                          None]


def _smooth_noise(rng: np.random.Generator, h: int, w: int,
                  cell: int) -> np.ndarray:
    """Low-frequency noise in [-1, 1]: a coarse random grid, bilinearly upscaled."""
    gh, gw = h // cell + 2, w // cell + 2
    grid = rng.uniform(-1, 1, (gh, gw, 3)).astype(np.float32)
    img = Image.fromarray(((grid + 1) * 127.5).astype(np.uint8))
    img = img.resize((gw * cell, gh * cell), Image.BILINEAR)
    return np.asarray(img, np.float32)[:h, :w] / 127.5 - 1


def _background(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    bg = _linear_gradient(rng, h, w, _random_color(rng), _random_color(rng))
    bg += _smooth_noise(rng, h, w, int(rng.integers(12, 40))) * rng.uniform(
        10, 45)
    bg += rng.normal(0, rng.uniform(3, 12), (h, w, 1)).astype(np.float32)
    canvas = Image.fromarray(np.clip(bg, 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(canvas)
    for _ in range(int(rng.integers(3, 10))):  # distractor lines
        p = rng.uniform(-0.1, 1.1, 4) * [w, h, w, h]
        draw.line([float(v) for v in p],
                  fill=tuple(int(v) for v in _random_color(rng)),
                  width=int(rng.integers(1, 4)))
    for _ in range(int(rng.integers(0, 4))):  # distractor arcs
        cx, cy = rng.uniform(0, 1, 2) * [w, h]
        r = rng.uniform(0.05, 0.3) * min(h, w)
        a0 = float(rng.uniform(0, 360))
        draw.arc([float(cx - r), float(cy - r),
                  float(cx + r), float(cy + r)],
                 a0,
                 a0 + float(rng.uniform(40, 200)),
                 fill=tuple(int(v) for v in _random_color(rng)),
                 width=int(rng.integers(1, 3)))
    return np.asarray(canvas, np.float32)


def _texture(rng: np.random.Generator, h: int, w: int,
             avoid: np.ndarray) -> np.ndarray:
    """A textured fill whose mean colour differs clearly from ``avoid``."""
    for _ in range(20):
        c0 = _random_color(rng)
        if np.abs(c0 - avoid).sum() > 150:
            break
    kind = rng.choice(['solid', 'noise', 'stripes', 'gradient'],
                      p=[0.3, 0.25, 0.25, 0.2])
    tex = np.broadcast_to(c0, (h, w, 3)).astype(np.float32)
    if kind == 'noise':
        tex = tex + rng.normal(0, rng.uniform(10, 30), (h, w, 3))
    elif kind == 'stripes':
        c1 = np.clip(c0 + rng.uniform(-90, 90, 3), 0, 255)
        ang = rng.uniform(0, np.pi)
        period = rng.uniform(4, 12)
        yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
        phase = (xx * math.cos(ang) + yy * math.sin(ang)) / period
        on = (np.floor(phase) % 2 == 0)[..., None]
        tex = np.where(on, c0, c1).astype(np.float32)
    elif kind == 'gradient':
        c1 = np.clip(c0 + rng.uniform(-80, 80, 3), 0, 255)
        tex = _linear_gradient(rng, h, w, c0, c1)
    return tex


# ----------------------------------------------------------------------------
# Samples
# ----------------------------------------------------------------------------
def _mask_bbox(mask: np.ndarray) -> Optional[Tuple[int, int, int, int]]:
    ys = np.flatnonzero(mask.any(1))
    xs = np.flatnonzero(mask.any(0))
    if len(xs) == 0:
        return None
    return int(xs[0]), int(ys[0]), int(xs[-1]), int(ys[-1])


def render_sample(rng: np.random.Generator,
                  img_size: int = 256,
                  max_objects: int = 4) -> ToySample:
    """Draw one image with its objects from ``rng``.

    Width and height are drawn from ``[0.75 * img_size, img_size]``.
    """
    h = int(rng.integers(int(0.75 * img_size), img_size + 1))
    w = int(rng.integers(int(0.75 * img_size), img_size + 1))
    bg = _background(rng, h, w)
    img = bg.copy()
    n_obj = int(rng.integers(MIN_OBJECTS, max_objects + 1))
    short = min(h, w)

    # label, visible mask, pixels inside the image, pixels of the shape
    placed: List[Tuple[int, np.ndarray, int, int]] = []
    occupied = np.zeros((h, w), bool)
    for _ in range(n_obj * 8):  # placement attempts
        if len(placed) == n_obj:
            break
        label = int(rng.integers(len(TOY_CLASSES)))
        size = rng.uniform(MIN_SCALE, MAX_SCALE) * short
        poly = _shape_polygon(TOY_CLASSES[label], rng) * size
        lo, hi = poly.min(0), poly.max(0)
        if rng.random() < TRUNCATE_PROB:
            # centre may sit close to (or a bit beyond) the border
            cx = rng.uniform(-0.25 * (hi[0] - lo[0]), w + 0.25 * (hi[0] - lo[0]))
            cy = rng.uniform(-0.25 * (hi[1] - lo[1]), h + 0.25 * (hi[1] - lo[1]))
        else:
            cx = rng.uniform(-lo[0], w - hi[0]) if w > hi[0] - lo[0] else w / 2
            cy = rng.uniform(-lo[1], h - hi[1]) if h > hi[1] - lo[1] else h / 2
        pts = poly + [cx, cy]
        # rasterise on a padded canvas so that truncation can be measured
        pad = int(math.ceil(size)) + 2
        full = _polygon_mask(pts + pad, h + 2 * pad, w + 2 * pad)
        inside = full[pad:pad + h, pad:pad + w]
        n_full, n_in = int(full.sum()), int(inside.sum())
        if n_full == 0 or n_in < MIN_INSIDE_FRACTION * n_full:
            continue
        bb = _mask_bbox(inside)
        if bb is None or min(bb[2] - bb[0], bb[3] - bb[1]) + 1 < MIN_BOX_SIDE:
            continue
        # the new object occludes earlier ones: keep each of them visible
        # enough, and keep the new one from mostly covering the clutter of
        # overlapping shapes
        if (occupied & inside).sum() > 0.35 * n_in:
            continue
        if any((m & ~inside).sum() < MIN_VISIBLE_FRACTION * n0
               for _, m, n0, _ in placed):
            continue
        placed = [(lab, m & ~inside, n0, nf) for lab, m, n0, nf in placed]
        placed.append((label, inside, n_in, n_full))
        occupied |= inside
        y0, y1 = bb[1], bb[3] + 1
        x0, x1 = bb[0], bb[2] + 1
        avoid = bg[y0:y1, x0:x1][inside[y0:y1, x0:x1]].mean(0)
        tex = _texture(rng, y1 - y0, x1 - x0, avoid)
        region = img[y0:y1, x0:x1]
        region[inside[y0:y1, x0:x1]] = tex[inside[y0:y1, x0:x1]]

    objects = []
    for label, vis, n_in, n_full in placed:
        bb = _mask_bbox(vis)
        if bb is None:  # cannot happen given MIN_VISIBLE_FRACTION, be safe
            continue
        objects.append(
            ToyObject(
                name=TOY_CLASSES[label],
                label=label,
                bbox=bb,
                truncated=n_in < n_full,
                mask=vis,
                shape_pixels=n_full,
                inside_pixels=n_in))
    image = np.clip(np.rint(img), 0, 255).astype(np.uint8)
    background = np.clip(np.rint(bg), 0, 255).astype(np.uint8)
    return ToySample(image=image, background=background, objects=objects)
