"""A synthetic domain-shift benchmark: procedural street scenes in two renderings.

Every scene is a pinhole view of a straight street (docs/demo.md): a road
converging to a vanishing point on the horizon, a sidewalk on each side, and beside the street a
front row (building facades, fences, hedges or nothing) with a second row set back behind it
(buildings or tree lines); at the end of the street a skyline of buildings and trees; sky above.
On the ground stand cars (moving in lanes and parked at the kerb), persons (on the sidewalks, a few
crossing), street poles (some with a lamp arm) and trees, each drawn at the size its distance gives,
nearer objects over farther ones. Labels are Cityscapes train ids; every pixel is labelled (no 255).

The same generator draws both domains; only the object-size statistics (``_GEOMETRY``) and the
rendering differ:

- ``source``: flat shading in the Cityscapes palette, a random brightness per object instance and
  per part (car windows and wheels, tree trunks), light pixel noise.
- ``target``: the palette 25 % desaturated with a warm colour cast, blocky texture noise, a
  night-like darkening (brightness 0.45-0.8) with a vertical lighting gradient, a 3 x 3 blur and
  sensor noise; cars 5-25 % larger (source 0.9-1.1), persons 1.4-1.75 m tall (source 1.6-1.9 m),
  buildings 30 % taller. Per-class pixel frequencies move by less than 0.05 (cars +0.03, sky
  -0.02 in expectation at 128 x 256).

What it is: a cheap, seedable, no-download stand-in for a synthetic-to-real shift, where colour
statistics move a lot and layout statistics a little, so a source-only model keeps a usable start.
What it is not: photo-realistic, or a predictor of results on GTA5 -> Cityscapes; it has nine
classes, no texture detail to speak of and one kind of scene.

Images are float32 RGB in [0, 1], not normalised (normalising is the model's job); labels int64.
Scene ``seed`` -> (image, label) is a pure function, so an item is the same whether rendered alone
or in a batch, in a worker process or not.
"""
from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import Dataset

from sepico.data.cityscapes import PALETTE

ROAD, SIDEWALK, BUILDING, FENCE, POLE, VEGETATION, SKY, PERSON, CAR = 0, 1, 2, 4, 5, 8, 10, 11, 13
SYNTHETIC_CLASSES = (ROAD, SIDEWALK, BUILDING, FENCE, POLE, VEGETATION, SKY, PERSON, CAR)
DOMAINS = ("source", "target")
SPLITS = ("train", "test")
MIN_SIZE = 16  # smallest image side: below it the far objects are all sub-pixel

_NONE = 255  # "no surface" in a row of side segments
_CAMERA_HEIGHT = 1.5  # metres; every length below is in metres


@dataclass(frozen=True)
class _Geometry:
    """Object-size statistics of a domain; each pair is the (low, high) of a uniform draw."""
    car_scale: tuple[float, float]         # multiplier on a 1.8 m wide, 1.45 m high car
    person_height: tuple[float, float]     # metres
    building_height: tuple[float, float]   # metres, facades beside the street


_GEOMETRY = {
    "source": _Geometry(car_scale=(0.9, 1.1), person_height=(1.6, 1.9),
                        building_height=(6.0, 24.0)),
    "target": _Geometry(car_scale=(1.05, 1.25), person_height=(1.4, 1.75),
                        building_height=(7.8, 31.2)),
}


# ----------------------------------------------------------------------------------------------
# Public API
# ----------------------------------------------------------------------------------------------

def scene_seed(domain: str, split: str, seed: int, index: int) -> int:
    """The scene seed of item ``index`` of ``SyntheticStreets(domain, split, seed=seed)``.

    A 63-bit hash of (seed, domain, split, index) by numpy's ``SeedSequence``: train and test (and
    source and target) draw unrelated scenes; two keys collide with probability about 2^-63.
    """
    _check_choice("domain", domain, DOMAINS)
    _check_choice("split", split, SPLITS)
    for name, value in (("seed", seed), ("index", index)):
        _check_count(name, value, low=0)
    key = [int(seed), DOMAINS.index(domain), SPLITS.index(split), int(index)]
    hi, lo = np.random.SeedSequence(key).generate_state(2, np.uint32)
    return (int(hi) << 32 | int(lo)) >> 1


def render_batch(domain: str, seeds: Iterable[int], size: tuple[int, int] = (128, 256)):
    """Render one scene per seed.

    Args:
        domain: ``"source"`` or ``"target"``.
        seeds: non-negative ints (a list, a range, a generator...), one scene each.
        size: (H, W) of the images, each at least ``MIN_SIZE``.

    Returns:
        images: float32 [B, 3, H, W], RGB in [0, 1] (not normalised).
        labels: int64 [B, H, W], Cityscapes train ids from ``SYNTHETIC_CLASSES``.
    """
    _check_choice("domain", domain, DOMAINS)
    height, width = _check_size(size)
    seeds = list(seeds)
    if not seeds:
        raise ValueError("seeds is empty: render_batch needs at least one scene seed")
    for i, s in enumerate(seeds):
        _check_count(f"seeds[{i}]", s, low=0)
    geometry = _GEOMETRY[domain]
    shade = _shade_source if domain == "source" else _shade_target
    images = np.empty((len(seeds), 3, height, width), dtype=np.float32)
    labels = np.empty((len(seeds), height, width), dtype=np.int64)
    for b, s in enumerate(seeds):
        rng = np.random.default_rng(int(s))
        label, brightness = _draw_scene(rng, geometry, height, width)
        images[b] = shade(label, brightness, rng)
        labels[b] = label
    return torch.from_numpy(images), torch.from_numpy(labels)


class SyntheticStreets(Dataset):
    """A map-style dataset of ``length`` synthetic street scenes of one domain and split.

    Item ``i`` is ``(image float32 [3, H, W] in [0, 1], label int64 [H, W])``, a deterministic
    function of (domain, split, seed, i) through ``scene_seed``; train and test splits never share
    a scene. ``__getitems__`` renders a list of indices in one call (``DataLoader`` uses it).
    """

    def __init__(self, domain: str = "source", split: str = "train",
                 size: tuple[int, int] = (128, 256), length: int = 1000, seed: int = 0):
        _check_choice("domain", domain, DOMAINS)
        _check_choice("split", split, SPLITS)
        _check_count("length", length, low=1)
        _check_count("seed", seed, low=0)
        self.domain, self.split, self.seed, self.length = domain, split, int(seed), int(length)
        self.size = _check_size(size)

    def __len__(self) -> int:
        return self.length

    def scene_seed(self, index: int) -> int:
        return scene_seed(self.domain, self.split, self.seed, self._index(index))

    def __getitem__(self, index: int):
        images, labels = render_batch(self.domain, [self.scene_seed(index)], self.size)
        return images[0], labels[0]

    def __getitems__(self, indices):
        images, labels = render_batch(self.domain, [self.scene_seed(i) for i in indices], self.size)
        return list(zip(images, labels))

    def _index(self, index) -> int:
        _check_count("index", index, low=-self.length)
        if index >= self.length:
            raise IndexError(f"index {index} out of range for a dataset of length {self.length}")
        return int(index) % self.length

    def __repr__(self) -> str:
        return (f"SyntheticStreets(domain={self.domain!r}, split={self.split!r}, "
                f"size={self.size}, length={self.length}, seed={self.seed})")


# ----------------------------------------------------------------------------------------------
# Scene layout: a label map and a per-pixel brightness factor (instance and part shading)
# ----------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class _Camera:
    """Pinhole camera at ``_CAMERA_HEIGHT`` looking along the street: a point at lateral offset u,
    height z and distance d lands at column cx + f u / d and row cy + f (h - z) / d."""
    f: float   # focal length, pixels
    cx: float  # column of the vanishing point
    cy: float  # row of the horizon

    def col(self, u, d):
        return self.cx + self.f * u / d

    def row(self, z, d):
        return self.cy + self.f * (_CAMERA_HEIGHT - z) / d

    def ground_distance(self, row):
        """Distance of the ground point seen at pixel row ``row`` (below the horizon)."""
        return self.f * _CAMERA_HEIGHT / (row - self.cy)


@dataclass
class _Canvas:
    label: np.ndarray       # uint8 [H, W]
    brightness: np.ndarray  # float32 [H, W]

    def fill(self, rows: slice, cols: slice, mask, cls: int, value: float):
        self.label[rows, cols][mask] = cls
        self.brightness[rows, cols][mask] = value


def _draw_scene(rng: np.random.Generator, geo: _Geometry, height: int, width: int):
    """Sample one street and draw it back to front. Returns (label uint8, brightness float32)."""
    u = rng.uniform
    fov = math.radians(u(65.0, 85.0))
    cam = _Camera(f=width / (2.0 * math.tan(fov / 2.0)), cx=width * u(0.38, 0.62),
                  cy=height * u(0.36, 0.5))
    road_width = u(6.0, 13.0)
    road_left = -road_width * u(0.25, 0.75)
    road_right = road_left + road_width
    walk_left, walk_right = u(2.0, 5.5), u(2.0, 5.5)
    edge_left, edge_right = road_left - walk_left, road_right + walk_right
    far = u(70.0, 160.0)
    canvas = _Canvas(np.empty((height, width), np.uint8), np.empty((height, width), np.float32))

    _draw_ground(canvas, cam, road_left, road_right, [u(0.85, 1.15) for _ in range(3)])
    _draw_skyline(canvas, cam, far, rng, geo)
    for edge, side in ((edge_left, -1.0), (edge_right, 1.0)):
        # the set-back row first: the front row covers it where it stands
        _draw_side_row(canvas, cam, edge + side * u(3.0, 10.0),
                       _segments(rng, far, (10.0, 40.0), _BACK_ROW, geo))
        _draw_side_row(canvas, cam, edge, _segments(rng, far, (8.0, 35.0), _FRONT_ROW, geo))

    d_bottom = cam.ground_distance(height)  # nearest ground in view
    objects = []
    objects += _cars(rng, geo, road_left, road_right, d_bottom)
    objects += _persons(rng, geo, (edge_left, road_left), (road_right, edge_right),
                        (road_left, road_right), d_bottom)
    for kerb, side in ((road_left, -1.0), (road_right, 1.0)):
        objects += _poles(rng, kerb + side * 0.45, -side, d_bottom)
    for edge, side in ((edge_left, -1.0), (edge_right, 1.0)):
        objects += _trees(rng, edge - side * u(0.6, 1.2), d_bottom)
    objects.sort(key=lambda obj: -obj[0])  # painter's order: farthest first
    for d, parts in objects:
        for part in parts:
            _draw_part(canvas, cam, d, *part)
    return canvas.label, canvas.brightness


def _draw_ground(canvas: _Canvas, cam: _Camera, road_left, road_right, shades):
    """Sky above the horizon; below it road between the kerbs and sidewalk elsewhere."""
    height, width = canvas.label.shape
    sky, road, walk = shades
    canvas.label[:] = SKY
    canvas.brightness[:] = sky
    first = max(0, math.ceil(cam.cy - 0.5 + 1e-6))  # first row whose centre is below the horizon
    if first >= height:
        return
    d = cam.ground_distance(np.arange(first, height) + 0.5)
    lateral = (np.arange(width) + 0.5 - cam.cx) * (d[:, None] / cam.f)
    on_road = (lateral >= road_left) & (lateral <= road_right)
    canvas.label[first:] = np.where(on_road, ROAD, SIDEWALK)
    canvas.brightness[first:] = np.where(on_road, road, walk)


# Surfaces of the rows beside the street: (class, probability, height range in metres, or None
# for the domain's building height). _NONE leaves the stretch open: the row behind shows.
_FRONT_ROW = ((BUILDING, 0.5, None), (FENCE, 0.25, (1.6, 2.2)), (VEGETATION, 0.15, (1.8, 3.5)),
              (_NONE, 0.10, (0.0, 0.0)))
_BACK_ROW = ((BUILDING, 0.6, None), (VEGETATION, 0.4, (5.0, 14.0)))


def _segments(rng, far, length_range, kinds, geo):
    """Consecutive stretches of a row along the street up to distance ``far``:
    (end distance, class, height, brightness) arrays, ordered by distance."""
    cumulative = np.cumsum([k[1] for k in kinds])
    ends, cls, heights, shades = [], [], [], []
    end = 0.0
    while end < far:
        end = min(far, end + rng.uniform(*length_range))
        k = min(int(np.searchsorted(cumulative, rng.uniform(), side="right")), len(kinds) - 1)
        ends.append(end)
        cls.append(kinds[k][0])
        heights.append(rng.uniform(*(kinds[k][2] or geo.building_height)))
        shades.append(rng.uniform(0.8, 1.15))
    return np.array(ends), np.array(cls, np.uint8), np.array(heights), np.array(shades, np.float32)


def _draw_side_row(canvas: _Canvas, cam: _Camera, lateral, segments):
    """Vertical surfaces standing in the plane u = ``lateral`` (a wall parallel to the street):
    column x sees the plane at distance d = f u / (x - cx), from the ground up to each height."""
    ends, cls, heights, shades = segments
    height, width = canvas.label.shape
    with np.errstate(divide="ignore"):
        d = cam.f * lateral / (np.arange(width) + 0.5 - cam.cx)
    cols = np.nonzero((d > 0) & (d < ends[-1]))[0]
    k = np.searchsorted(ends, d[cols], side="right")
    keep = cls[k] != _NONE
    cols, k, d = cols[keep], k[keep], d[cols][keep]
    if not cols.size:
        return
    rows = np.arange(height)[:, None] + 0.5
    inside = (rows >= cam.row(heights[k], d)) & (rows < cam.row(0.0, d))
    canvas.label[:, cols] = np.where(inside, cls[k], canvas.label[:, cols])
    canvas.brightness[:, cols] = np.where(inside, shades[k], canvas.brightness[:, cols])


def _draw_skyline(canvas: _Canvas, cam: _Camera, far, rng, geo):
    """The end of the street: a plane at distance ``far`` of buildings (80 %) and tree lines."""
    height, width = canvas.label.shape
    col_cls = np.empty(width, np.uint8)
    col_top = np.empty(width)
    col_shade = np.empty(width, np.float32)
    x = 0
    while x < width:
        n = max(1, round(cam.f * rng.uniform(8.0, 35.0) / far))
        if rng.uniform() < 0.8:
            cls, top = BUILDING, 1.5 * rng.uniform(*geo.building_height)
        else:
            cls, top = VEGETATION, rng.uniform(6.0, 15.0)
        col_cls[x:x + n], col_top[x:x + n] = cls, top
        col_shade[x:x + n] = rng.uniform(0.8, 1.15)
        x += n
    rows = np.arange(height)[:, None] + 0.5
    inside = (rows >= cam.row(col_top, far)) & (rows < cam.row(0.0, far))
    canvas.label[:] = np.where(inside, col_cls, canvas.label)
    canvas.brightness[:] = np.where(inside, col_shade, canvas.brightness)


# Objects: (distance, parts); a part is ("box", cls, brightness, u0, u1, z0, z1) or
# ("ellipse", cls, brightness, u_centre, z_centre, u_radius, z_radius), in metres.

def _depths(rng, d_bottom, count, nearest=0.9):
    """Distances whose image rows are uniform from 6 % to ``nearest`` of the way from the horizon
    to the bottom edge (uniform in 1 / d): as many objects near as far, in image terms."""
    return d_bottom / rng.uniform(0.06, nearest, size=count)


def _cars(rng, geo, road_left, road_right, d_bottom):
    out = []
    moving = int(rng.integers(1, 5))
    parked = [int(rng.integers(0, 3)), int(rng.integers(0, 3))]
    for d in _depths(rng, d_bottom, moving + sum(parked), nearest=0.75):
        s = rng.uniform(*geo.car_scale)
        if moving > 0:
            moving -= 1
            centre = rng.uniform(road_left + 1.0 * s, road_right - 1.0 * s)
        elif parked[0] > 0:
            parked[0] -= 1
            centre = road_left + 1.05 * s
        else:
            centre = road_right - 1.05 * s
        out.append((d, _car_parts(centre, s, rng.uniform(0.75, 1.25))))
    return out


def _car_parts(u, s, shade):
    return [
        ("box", CAR, shade, u - 0.9 * s, u + 0.9 * s, 0.2 * s, 0.95 * s),        # body
        ("box", CAR, 0.35 * shade, u - 0.85 * s, u - 0.5 * s, 0.0, 0.3 * s),     # wheels
        ("box", CAR, 0.35 * shade, u + 0.5 * s, u + 0.85 * s, 0.0, 0.3 * s),
        ("box", CAR, 0.6 * shade, u - 0.72 * s, u + 0.72 * s, 0.95 * s, 1.45 * s),  # cabin
    ]


def _persons(rng, geo, walk_left, walk_right, road, d_bottom):
    out = []
    count = int(rng.integers(1, 8))
    for d in _depths(rng, d_bottom, count):
        where = rng.uniform()
        lo, hi = walk_left if where < 0.45 else walk_right if where < 0.9 else road
        centre = rng.uniform(lo + 0.3, hi - 0.3)
        out.append((d, _person_parts(centre, rng.uniform(*geo.person_height),
                                     rng.uniform(0.8, 1.2))))
    return out


def _person_parts(u, h, shade):
    return [
        ("box", PERSON, 0.7 * shade, u - 0.2, u - 0.03, 0.0, 0.48 * h),        # legs
        ("box", PERSON, 0.7 * shade, u + 0.03, u + 0.2, 0.0, 0.48 * h),
        ("box", PERSON, shade, u - 0.24, u + 0.24, 0.46 * h, 0.84 * h),       # torso
        ("ellipse", PERSON, 1.1 * shade, u, 0.91 * h, 0.1 * h / 1.75, 0.075 * h),  # head
    ]


def _poles(rng, u, towards_road, d_bottom, last=90.0):
    """Street poles at the kerb, regularly spaced; 60 % of streets have them on a given side."""
    if rng.uniform() >= 0.6:
        return []
    out = []
    d = d_bottom * rng.uniform(1.0, 3.0)
    arm = rng.uniform() < 0.5
    while d < last:
        h, shade = rng.uniform(5.0, 9.0), rng.uniform(0.85, 1.15)
        parts = [("box", POLE, shade, u - 0.12, u + 0.12, 0.0, h)]
        if arm:
            reach = u + towards_road * 2.0
            parts.append(("box", POLE, shade, min(u, reach), max(u, reach), h - 0.25, h))
        out.append((d, parts))
        d += rng.uniform(12.0, 30.0)
    return out


def _trees(rng, u, d_bottom, last=80.0):
    """A row of trees on the outer part of a sidewalk, on half the streets' sides."""
    if rng.uniform() >= 0.5:
        return []
    out = []
    d = d_bottom * rng.uniform(1.0, 2.5)
    while d < last:
        trunk, ru, rz = rng.uniform(2.0, 3.5), rng.uniform(1.3, 2.6), rng.uniform(1.5, 3.0)
        shade = rng.uniform(0.8, 1.2)
        out.append((d, [("box", VEGETATION, 0.5 * shade, u - 0.18, u + 0.18, 0.0, trunk + rz),
                        ("ellipse", VEGETATION, shade, u, trunk + 0.8 * rz, ru, rz)]))
        d += rng.uniform(8.0, 20.0)
    return out


def _span(lo: float, hi: float, n: int) -> slice:
    """Pixels whose centres fall in [lo, hi), clipped to 0..n; an extent thinner than a pixel still
    covers the pixel of its midpoint, so far poles and persons do not vanish."""
    first, stop = math.ceil(lo - 0.5), math.ceil(hi - 0.5)
    if stop <= first:
        first = math.floor((lo + hi) / 2.0)
        stop = first + 1
    return slice(max(first, 0), max(min(stop, n), 0))


def _draw_part(canvas: _Canvas, cam: _Camera, d, kind, cls, shade, a, b, c, e):
    height, width = canvas.label.shape
    if kind == "box":  # u0, u1, z0, z1
        rows = _span(cam.row(e, d), cam.row(c, d), height)
        cols = _span(cam.col(a, d), cam.col(b, d), width)
        if rows.start < rows.stop and cols.start < cols.stop:
            canvas.fill(rows, cols, slice(None), cls, shade)
        return
    # ellipse: u_centre, z_centre, u_radius, z_radius
    x, y = cam.col(a, d), cam.row(b, d)
    rx, ry = max(cam.f * c / d, 0.5), max(cam.f * e / d, 0.5)
    rows, cols = _span(y - ry, y + ry, height), _span(x - rx, x + rx, width)
    if rows.start >= rows.stop or cols.start >= cols.stop:
        return
    dy = (np.arange(rows.start, rows.stop) + 0.5 - y) / ry
    dx = (np.arange(cols.start, cols.stop) + 0.5 - x) / rx
    canvas.fill(rows, cols, dy[:, None] ** 2 + dx[None, :] ** 2 <= 1.0, cls, shade)


# ----------------------------------------------------------------------------------------------
# Rendering: label map + brightness -> RGB in [0, 1]
# ----------------------------------------------------------------------------------------------

# Colours per train id, channel first ([3, 19]) so that a lookup gives [3, H, W] directly.
_SOURCE_COLOURS = np.ascontiguousarray(PALETTE.T, dtype=np.float32) / 255.0


@dataclass(frozen=True)
class _TargetLook:
    """The target camera; each pair is the (low, high) of a uniform draw per image."""
    desaturation: float = 0.25                        # share of each colour replaced by its luma
    cast: tuple[float, float, float] = (1.08, 1.0, 0.92)  # RGB gains: a warm cast
    texture_std: float = 0.1                          # blocky multiplicative texture noise
    texture_block: int = 8                            # pixels per texture block side
    brightness: tuple[float, float] = (0.45, 0.8)     # night-like darkening
    light_top: tuple[float, float] = (0.8, 1.05)      # vertical light gradient: top row gain
    light_bottom: tuple[float, float] = (0.95, 1.15)  # ... and bottom row gain
    noise_std: float = 0.03                           # sensor noise, after the 3 x 3 blur

    def colours(self) -> np.ndarray:
        """The source palette desaturated (mixed with its own luma) under the colour cast."""
        luma = np.array([0.299, 0.587, 0.114], np.float32) @ _SOURCE_COLOURS
        grey_mix = (1.0 - self.desaturation) * _SOURCE_COLOURS + self.desaturation * luma
        return np.clip(grey_mix * np.array(self.cast, np.float32)[:, None], 0.0, 1.0)


_TARGET_LOOK = _TargetLook()


def _noise(rng, shape, std):
    """Zero-mean pixel noise of standard deviation ``std``: uniform, which numpy draws about four
    times faster than normal, and a sensor model needs no more."""
    noise = rng.random(shape, dtype=np.float32)
    noise -= 0.5
    noise *= std * math.sqrt(12.0)
    return noise


def _shade_source(label, brightness, rng):
    """Flat shading: palette colour times the instance brightness, plus light pixel noise."""
    image = np.take(_SOURCE_COLOURS, label, axis=1)
    image *= brightness
    image += _noise(rng, image.shape, 0.02)
    return np.clip(image, 0.0, 1.0, out=image)


def _shade_target(label, brightness, rng, look: _TargetLook = _TARGET_LOOK):
    """The target camera: other palette, blocky texture, darkening with a vertical light gradient,
    then the optics (3 x 3 blur) and the sensor (pixel noise)."""
    height, width = label.shape
    block = look.texture_block
    image = np.take(look.colours(), label, axis=1)
    coarse = 1.0 + _noise(rng, (-(-height // block), -(-width // block)), look.texture_std)
    top, bottom = rng.uniform(*look.light_top), rng.uniform(*look.light_bottom)
    light = rng.uniform(*look.brightness) * np.linspace(top, bottom, height, dtype=np.float32)
    gain = np.repeat(np.repeat(coarse, block, 0), block, 1)[:height, :width] * light[:, None]
    image *= brightness * gain
    image = _blur3x3(image)
    image += _noise(rng, image.shape, look.noise_std)
    return np.clip(image, 0.0, 1.0, out=image)


def _blur3x3(image):
    """Separable [1, 2, 1] / 4 blur of [3, H, W], edges replicated."""
    p = np.pad(image, ((0, 0), (1, 1), (1, 1)), mode="edge")
    rows = p[:, 1:-1] * 2.0
    rows += p[:, :-2]
    rows += p[:, 2:]
    out = rows[:, :, 1:-1] * 2.0
    out += rows[:, :, :-2]
    out += rows[:, :, 2:]
    out *= 1.0 / 16.0
    return out


# ----------------------------------------------------------------------------------------------
# Argument checks (the public boundary)
# ----------------------------------------------------------------------------------------------

def _check_choice(name, value, choices):
    if value not in choices:
        raise ValueError(f"{name} must be one of {choices}, got {value!r}")


def _check_count(name, value, low):
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if value < low:
        raise ValueError(f"{name} must be >= {low}, got {value}")


def _check_size(size):
    if (not isinstance(size, (tuple, list)) or len(size) != 2
            or any(isinstance(s, bool) or not isinstance(s, (int, np.integer)) for s in size)):
        raise TypeError(f"size must be a pair of ints (H, W), got {size!r}")
    if min(size) < MIN_SIZE:
        raise ValueError(f"size must be at least {MIN_SIZE} x {MIN_SIZE}, got {tuple(size)}")
    return int(size[0]), int(size[1])
