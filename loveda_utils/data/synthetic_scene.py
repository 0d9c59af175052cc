"""One synthetic tile of the mini-LoveDA (:mod:`loveda_utils.data.synthetic`): a procedural
land-cover mask, then the image rendered from it pixel for pixel.

Urban tiles hold a road grid with blocks of buildings in rows, parks, construction sites and the
odd river; rural tiles hold field parcels with crop stripes, forest patches, lakes or rivers, a
few roads and villages. Every class has its own colour distribution *and* texture, blurred by
noise and per-tile brightness/colour jitter. Everything is vectorised numpy and draws only from
the ``numpy.random.Generator`` it is given, so a tile is a pure function of its seed.
"""

from __future__ import annotations

import numpy as np

from loveda_utils.data.classes import CLASS_NAMES, RAW_NODATA

__all__ = ["make_tile"]

# Raw mask values, derived from the one class list (raw = training label + 1).
_BACKGROUND, _BUILDING, _ROAD, _WATER, _BARREN, _FOREST, _AGRICULTURE = (
    CLASS_NAMES.index(name) + 1
    for name in ("background", "building", "road", "water", "barren", "forest", "agriculture")
)

# Features are designed on a 256 px tile and scale with the tile side, so a 1024 px tile shows
# the same scene at a higher resolution (like LoveDA's 0.3 m tiles seen at full size).
_REFERENCE_SIZE = 256.0
# Size of the per-tile table of random numbers that objects (buildings, parcels) hash into.
_TABLE_SIZE = 4096



def make_tile(
    rng: np.random.Generator, size: int, urban: bool, nodata: bool | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Draw one tile: ``(mask [S, S] uint8 raw 0..7, image [S, S, 3] uint8 RGB)``.

    The mask is drawn first; the image is rendered from it (and from per-object fields such as
    roof colour or crop stripes), so both agree pixel for pixel and no-data is exactly black.
    ``nodata``: force a no-data region (True), forbid it (False), or leave it to chance (None,
    about a third of the tiles).
    """
    scene = _Scene(rng, size)
    if urban:
        scene.draw_urban()
    else:
        scene.draw_rural()
    scene.draw_nodata(nodata)
    return scene.mask, scene.render()


# --------------------------------------------------------------------------------------------
# Noise and geometry helpers (vectorised)
# --------------------------------------------------------------------------------------------


def _value_noise(rng: np.random.Generator, size: int, cell: float) -> np.ndarray:
    """Smooth value noise in [0, 1] with features about ``cell`` pixels across, ``[S, S]``."""
    cells = max(1, int(np.ceil(size / max(cell, 1.0))))
    grid = rng.random((cells + 2, cells + 2), dtype=np.float32)
    offset = rng.random(2)
    t = (np.arange(size, dtype=np.float32) + 0.5) / size * cells
    ty, tx = t + offset[0], t + offset[1]
    iy, ix = np.floor(ty).astype(np.intp), np.floor(tx).astype(np.intp)
    fy, fx = ty - iy, tx - ix
    fy, fx = fy * fy * (3 - 2 * fy), fx * fx * (3 - 2 * fx)  # smoothstep: no grid artefacts
    rows = grid[iy] * (1 - fy)[:, None] + grid[iy + 1] * fy[:, None]  # [S, cells + 2]
    return (rows[:, ix] * (1 - fx) + rows[:, ix + 1] * fx).astype(np.float32)


def _fbm(rng: np.random.Generator, size: int, cell: float, octaves: int = 3) -> np.ndarray:
    """Fractal noise (octaves of value noise), rescaled to [0, 1]: blobby natural shapes."""
    total = np.zeros((size, size), dtype=np.float32)
    amplitude, norm = 1.0, 0.0
    for _ in range(octaves):
        total += amplitude * _value_noise(rng, size, cell)
        norm += amplitude
        amplitude *= 0.5
        cell /= 2.0
    total /= norm
    lo, hi = float(total.min()), float(total.max())
    return (total - lo) / max(hi - lo, 1e-6)


def _blob(rng: np.random.Generator, size: int, cell: float, fraction: float) -> np.ndarray:
    """Boolean blob(s) covering about ``fraction`` of the tile, with natural ragged edges."""
    if fraction <= 0:
        return np.zeros((size, size), dtype=bool)
    field = _fbm(rng, size, cell)
    return field > np.quantile(field, 1.0 - fraction)


def _rotated(
    size: int, theta: float, rng: np.random.Generator, shift: bool = True
) -> tuple[np.ndarray, np.ndarray]:
    """Pixel coordinates rotated by ``theta`` about the centre, randomly shifted: ``(u, v)``."""
    y, x = np.mgrid[0:size, 0:size].astype(np.float32)
    y -= size / 2.0
    x -= size / 2.0
    c, s = np.cos(theta), np.sin(theta)
    du, dv = rng.uniform(-0.5, 0.5, 2) * size if shift else (0.0, 0.0)
    return (x * c + y * s + du).astype(np.float32), (-x * s + y * c + dv).astype(np.float32)


def _lines(rng: np.random.Generator, size: int, spacing: tuple[float, float]) -> np.ndarray:
    """Sorted positions of parallel lines with random gaps, covering every rotated, shifted
    pixel coordinate (|coord| <= (sqrt(2) / 2 + 1 / 2) * size < 1.25 * size)."""
    positions = [-1.25 * size - rng.uniform(0, spacing[1])]
    while positions[-1] < 1.25 * size:
        positions.append(positions[-1] + rng.uniform(*spacing))
    return np.asarray(positions, dtype=np.float32)


def _cells(coord: np.ndarray, lines: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """For each pixel: index of the strip between two lines, offset from its start, its width."""
    index = np.clip(np.searchsorted(lines, coord, side="right") - 1, 0, len(lines) - 2)
    start = lines[index]
    return index, coord - start, lines[index + 1] - start


def _hash(*keys: np.ndarray | int) -> np.ndarray:
    """Mix integer keys into an index of the per-tile random table (one value per object)."""
    primes = (73856093, 19349663, 83492791, 49979687, 2654435761)
    h = np.zeros(np.shape(keys[0]), dtype=np.int64)
    for key, prime in zip(keys, primes, strict=False):
        h = h ^ (np.asarray(key, dtype=np.int64) * prime)
    return np.mod(h, _TABLE_SIZE)


def _polyline_distance(size: int, points: np.ndarray) -> np.ndarray:
    """Distance of every pixel to a polyline given as ``[N, 2]`` (x, y) points."""
    y, x = np.mgrid[0:size, 0:size].astype(np.float32)
    best = np.full((size, size), np.inf, dtype=np.float32)
    for (x0, y0), (x1, y1) in zip(points[:-1], points[1:], strict=True):
        dx, dy = x1 - x0, y1 - y0
        t = np.clip(((x - x0) * dx + (y - y0) * dy) / max(dx * dx + dy * dy, 1e-6), 0, 1)
        np.minimum(best, np.hypot(x - x0 - t * dx, y - y0 - t * dy), out=best)
    return best


# --------------------------------------------------------------------------------------------
# Scene drawing
# --------------------------------------------------------------------------------------------


class _Scene:
    """One tile being drawn: the raw mask plus per-pixel fields the renderer needs."""

    def __init__(self, rng: np.random.Generator, size: int) -> None:
        self.rng = rng
        self.size = size
        self.scale = size / _REFERENCE_SIZE
        self.mask = np.full((size, size), _BACKGROUND, dtype=np.uint8)
        # Per-object random value in [0, 1) (roof colour, crop type), and the crop-row field.
        self.tone = np.zeros((size, size), dtype=np.float32)
        self.stripes = np.zeros((size, size), dtype=np.float32)
        self.table = rng.random(_TABLE_SIZE, dtype=np.float32)
        self.table2 = rng.random(_TABLE_SIZE, dtype=np.float32)

    def px(self, value: float, minimum: float = 1.0) -> float:
        """A length designed at 256 px, scaled to this tile, never below ``minimum`` pixels."""
        return max(value * self.scale, minimum)

    def paint(self, where: np.ndarray, value: int, tone: np.ndarray | float | None = None) -> None:
        """Set ``where`` to class ``value`` (and its per-object tone when given)."""
        self.mask[where] = value
        if tone is not None:
            self.tone[where] = tone[where] if isinstance(tone, np.ndarray) else tone

    # -- shared elements ---------------------------------------------------------------------

    def buildings(
        self,
        u: np.ndarray,
        v: np.ndarray,
        region: np.ndarray,
        pitch: tuple[float, float],
        fill: tuple[float, float],
        drop: float,
        key: np.ndarray | int = 0,
    ) -> None:
        """Rows of rectangular buildings on a lattice in (u, v), inside ``region``.

        ``pitch`` is the lattice period, ``fill`` the building share of it along u and v,
        ``drop`` the share of lattice cells left empty; sizes jitter per building.
        """
        pu, pv = pitch
        cu, cv = np.floor(u / pu), np.floor(v / pv)
        fu, fv = u - cu * pu, v - cv * pv
        h = _hash(cu, cv, key)
        jitter_u = 0.75 + 0.5 * self.table[h]
        jitter_v = 0.75 + 0.5 * self.table2[h]
        inside = (fu < fill[0] * pu * jitter_u) & (fv < fill[1] * pv * jitter_v)
        keep = self.table[_hash(cv, cu, key, 7)] >= drop
        self.paint(region & inside & keep, _BUILDING, self.table2[_hash(cu, cv, key, 3)])

    def river(self, theta: float, width: tuple[float, float]) -> np.ndarray:
        """A meandering river strip across the tile (boolean)."""
        rng = self.rng
        u, v = _rotated(self.size, theta, rng, shift=False)  # through the tile, not beside it
        v = v - rng.uniform(-0.25, 0.25) * self.size
        wavelength = rng.uniform(0.6, 1.6) * self.size
        phase = rng.uniform(0, 2 * np.pi)
        centre = rng.uniform(0.05, 0.15) * self.size * np.sin(2 * np.pi * u / wavelength + phase)
        centre += rng.uniform(0.0, 0.05) * self.size * np.sin(6 * np.pi * u / wavelength + phase)
        half = self.px(rng.uniform(*width), 2.0) / 2
        half_width = half * (0.8 + 0.4 * _value_noise(rng, self.size, self.size / 3))
        return np.abs(v - centre) < half_width

    def road_polyline(self, width: float) -> np.ndarray:
        """A road crossing the tile as a gently bending polyline (boolean)."""
        rng, s = self.rng, self.size
        # Enter and leave through opposite sides, with 1-3 bends in between; bends move only
        # across the direction of travel, so the road never doubles back.
        a, b = rng.uniform(0, s, 2)
        horizontal = rng.random() < 0.5
        n = int(rng.integers(1, 4))
        # Evenly spread bends: no two close together, so no hairpin zig-zags.
        t = (np.arange(1, n + 1) + rng.uniform(-0.2, 0.2, n)) / (n + 1)
        along = np.concatenate([[-4.0], t * s, [s + 4.0]])
        across = np.concatenate([[a], a + (b - a) * t + rng.normal(0, 0.04 * s, n), [b]])
        points = np.stack([along, across] if horizontal else [across, along], axis=1)
        return _polyline_distance(s, points) < self.px(width, 2.0) / 2

    # -- urban -------------------------------------------------------------------------------

    def draw_urban(self) -> None:
        """Road grid; blocks of buildings in rows, parks, open ground, construction, ponds."""
        rng, s = self.rng, self.size
        theta = rng.uniform(-0.4, 0.4) + (np.pi / 2 if rng.random() < 0.5 else 0.0)
        u, v = _rotated(s, theta, rng)
        lines_u = _lines(rng, s, (self.px(55), self.px(110)))
        lines_v = _lines(rng, s, (self.px(45), self.px(95)))
        bu, lu, wu = _cells(u, lines_u)
        bv, lv, wv = _cells(v, lines_v)
        # Road widths per grid line: arterials, streets, and lines that are not there at all.
        widths_u = rng.choice([0.0, 4.0, 7.0, 10.0], size=len(lines_u), p=[0.15, 0.4, 0.3, 0.15])
        widths_v = rng.choice([0.0, 4.0, 7.0, 10.0], size=len(lines_v), p=[0.15, 0.4, 0.3, 0.15])
        half_u = np.maximum(widths_u * self.scale, np.where(widths_u > 0, 2.0, 0.0)) / 2
        half_v = np.maximum(widths_v * self.scale, np.where(widths_v > 0, 2.0, 0.0)) / 2
        road = (lu < half_u[bu]) | (wu - lu < half_u[bu + 1])
        road |= (lv < half_v[bv]) | (wv - lv < half_v[bv + 1])

        # Block types: 0 buildings, 1 open ground, 2 park, 3 construction, 4 pond, 5 fields.
        kinds = rng.choice(
            6, size=(len(lines_u), len(lines_v)), p=[0.66, 0.08, 0.09, 0.08, 0.04, 0.05]
        )
        kind = kinds[bu, bv]
        block_key = bu * 1009 + bv
        if np.any(kind == 5):
            self.fields(kind == 5, theta + rng.choice([0.0, np.pi / 2]))
        if np.any(kind == 2):
            self.paint((kind == 2) & _blob(rng, s, self.px(40), 0.6), _FOREST)
        if np.any(kind == 3):
            self.paint((kind == 3) & _blob(rng, s, self.px(50), 0.6), _BARREN)
        if np.any(kind == 4):
            self.paint((kind == 4) & _blob(rng, s, self.px(45), 0.35), _WATER)

        # Building blocks: per-block lattice (small houses, terraces or large halls), laid out
        # from the block's inner corner so buildings line up in rows along the streets.
        setback = self.px(rng.uniform(2, 6), 1.0)
        styles = rng.choice(3, size=kinds.shape, p=[0.5, 0.3, 0.2])
        pitch_table = np.asarray([[14, 14], [24, 11], [44, 36]], dtype=np.float32) * self.scale
        pitch_table = np.maximum(pitch_table, 5.0)
        fill_table = np.asarray([[0.7, 0.7], [0.85, 0.65], [0.85, 0.8]], dtype=np.float32)
        style = styles[bu, bv]
        pu, pv = pitch_table[style, 0], pitch_table[style, 1]
        iu, iv = lu - half_u[bu] - setback, lv - half_v[bv] - setback  # inner coordinates
        room_u = wu - half_u[bu] - half_u[bu + 1] - 2 * setback  # inner block extent
        room_v = wv - half_v[bv] - half_v[bv + 1] - 2 * setback
        cu, cv = np.floor(iu / pu), np.floor(iv / pv)
        fu, fv = iu - cu * pu, iv - cv * pv
        h = _hash(cu, cv, block_key)
        inside = fu < fill_table[style, 0] * pu * (0.8 + 0.4 * self.table[h])
        inside &= fv < fill_table[style, 1] * pv * (0.8 + 0.4 * self.table2[h])
        # Whole buildings only: the lattice cell must lie inside the block, clear of the road.
        inside &= (iu >= 0) & (iv >= 0) & ((cu + 1) * pu <= room_u) & ((cv + 1) * pv <= room_v)
        drop = np.where(style == 2, 0.3, 0.08)
        keep = self.table[_hash(cv, cu, block_key, 7)] >= drop
        self.paint((kind == 0) & inside & keep, _BUILDING, self.table2[_hash(cu, cv, block_key, 3)])
        # Trees between houses: a few forest speckles in building blocks.
        trees = (kind == 0) & (self.mask == _BACKGROUND) & _blob(rng, s, self.px(10), 0.06)
        self.paint(trees, _FOREST)

        if rng.random() < 0.3:
            self.paint(self.river(rng.uniform(0, np.pi), (12, 28)), _WATER)
        self.paint(road, _ROAD)
        if rng.random() < 0.5:  # a diagonal arterial cutting the grid
            self.paint(self.road_polyline(rng.uniform(7, 12)), _ROAD)

    # -- rural -------------------------------------------------------------------------------

    def fields(self, region: np.ndarray, theta: float) -> None:
        """Agricultural parcels with crop rows inside ``region`` (some left fallow or wooded)."""
        rng, s = self.rng, self.size
        u, v = _rotated(s, theta, rng)
        lines_u = _lines(rng, s, (self.px(30), self.px(80)))
        lines_v = _lines(rng, s, (self.px(18), self.px(50)))
        bu, lu, wu = _cells(u, lines_u)
        bv, lv, wv = _cells(v, lines_v)
        # Parcel use: 0 crops, 1 grass/fallow (background), 2 orchard/wood, 3 bare soil.
        uses = rng.choice(4, size=(len(lines_u), len(lines_v)), p=[0.8, 0.1, 0.06, 0.04])
        use = uses[bu, bv]
        key = bu * 1013 + bv
        tone = self.table[_hash(bu, bv, 11)]
        # Crop rows run along u or v per parcel, with their own period.
        along_v = self.table2[_hash(bu, bv, 5)] < 0.5
        period = np.maximum(self.px(2.5, 2.5) + self.px(5.0) * self.table[_hash(key, 13)], 2.5)
        coord = np.where(along_v, u, v)
        self.stripes[region] = np.sin(2 * np.pi * coord / period)[region]
        # Field margins: thin strips of grass between parcels.
        margin = self.px(rng.uniform(0.6, 1.6), 1.0) if rng.random() < 0.7 else 0.0
        edge = (lu < margin) | (lv < margin) | (wu - lu < margin) | (wv - lv < margin)
        self.paint(region & (use == 0) & ~edge, _AGRICULTURE, tone)
        self.paint(region & (use == 2), _FOREST)
        self.paint(region & (use == 3), _BARREN)

    def draw_rural(self) -> None:
        """Field parcels, forest patches, water, roads, and a village now and then."""
        rng, s = self.rng, self.size
        self.fields(np.ones((s, s), dtype=bool), rng.uniform(0, np.pi))
        self.paint(_blob(rng, s, self.px(90), rng.uniform(0.0, 0.12)), _BACKGROUND)
        self.paint(_blob(rng, s, self.px(rng.uniform(60, 120)), rng.uniform(0.05, 0.35)), _FOREST)
        self.paint(_blob(rng, s, self.px(60), rng.uniform(0.0, 0.07)), _BARREN)
        water = rng.random()
        if water < 0.45:
            self.paint(_blob(rng, s, self.px(rng.uniform(70, 140)), rng.uniform(0.04, 0.2)), _WATER)
        elif water < 0.8:
            self.paint(self.river(rng.uniform(0, np.pi), (10, 30)), _WATER)
        if rng.random() < 0.5:  # a village: houses around a yard, not on the water
            village = _blob(rng, s, self.px(80), rng.uniform(0.05, 0.15))
            village &= self.mask != _WATER
            self.paint(village, _BACKGROUND)
            u, v = _rotated(s, rng.uniform(0, np.pi), rng)
            self.buildings(u, v, village, (self.px(15, 5), self.px(13, 5)), (0.6, 0.6), drop=0.35)
        for _ in range(int(rng.choice([0, 1, 1, 2]))):
            self.paint(self.road_polyline(rng.uniform(3, 6)), _ROAD)

    # -- no-data -----------------------------------------------------------------------------

    def draw_nodata(self, force: bool | None = None) -> None:
        """Cut an edge strip or a corner to no-data (raw 0): ``force``, or on a third of tiles."""
        rng, s = self.rng, self.size
        chance = rng.random() < 0.33  # drawn always, so forcing does not shift the stream
        if not (chance if force is None else force):
            return
        y, x = np.mgrid[0:s, 0:s].astype(np.float32)
        if rng.random() < 0.5:  # a strip along one side, its edge slightly slanted
            depth = rng.uniform(0.05, 0.3) * s
            slope = rng.uniform(-0.08, 0.08)
            side = int(rng.integers(4))
            coord, across = [(x, y), (s - 1 - x, y), (y, x), (s - 1 - y, x)][side]
            region = coord < depth + slope * (across - s / 2)
        else:  # a corner cut off along a diagonal
            cx, cy = [(x, y), (s - 1 - x, y), (x, s - 1 - y), (s - 1 - x, s - 1 - y)][
                int(rng.integers(4))
            ]
            region = cx + cy * rng.uniform(0.6, 1.6) < rng.uniform(0.2, 0.6) * s
        self.mask[region] = RAW_NODATA

    # -- rendering ---------------------------------------------------------------------------

    def render(self) -> np.ndarray:
        """Render the RGB image from the mask: per-class colour, texture and noise, uint8.

        Colours overlap between classes on purpose (grass vs. crops, bare ground vs. barren,
        grey roofs vs. roads, turbid water vs. canopy) and shift per tile, so a pixel's colour
        alone is a weak cue; texture (canopy speckle, crop rows, smooth water and asphalt,
        soil grain) and shape have to do the rest, as on real imagery.
        """
        rng, s, mask = self.rng, self.size, self.mask
        fine = _value_noise(rng, s, self.px(2.5, 1.5)) - 0.5  # leaf/grain speckle
        grain = rng.random((s, s), dtype=np.float32) - 0.5  # per-pixel grain
        mid = _fbm(rng, s, self.px(24), 2) - 0.5  # patchy variation within a surface
        ground = _fbm(rng, s, self.px(48), 2)  # grass <-> bare mixing of the background
        broad = _fbm(rng, s, self.px(128), 2) - 0.5  # illumination / haze over the tile

        def colour(rgb: tuple[float, float, float], spread: float) -> np.ndarray:
            """A class colour of this tile: the nominal one shifted at random."""
            return (np.asarray(rgb, np.float32) + rng.normal(0, spread, 3)).astype(np.float32)

        image = np.zeros((s, s, 3), dtype=np.float32)

        def put(cls: int, value: np.ndarray) -> None:
            where = mask == cls
            image[where] = value[where] if value.ndim == 3 else value

        # Background: a patchwork of grass and bare/paved ground, patchy and mildly grainy.
        mix = np.clip((ground - 0.5) * 2.5 + 0.5, 0, 1)[..., None]
        grass, bare = colour((118, 138, 92), 10), colour((162, 152, 132), 10)
        put(
            _BACKGROUND, grass * mix + bare * (1 - mix) + mid[..., None] * 30 + fine[..., None] * 14
        )
        # Buildings: roofs from a palette per building, flat tops with darker outlines.
        roofs = np.array(
            [[200, 200, 196], [150, 152, 156], [108, 110, 116], [168, 96, 74], [84, 118, 162]],
            np.float32,
        ) + rng.normal(0, 8, 3).astype(np.float32)
        roof = roofs[np.minimum((self.tone * len(roofs)).astype(np.intp), len(roofs) - 1)]
        building = mask == _BUILDING
        outline = np.zeros_like(building)
        outline[1:, :] |= building[1:, :] & ~building[:-1, :]
        outline[:-1, :] |= building[:-1, :] & ~building[1:, :]
        outline[:, 1:] |= building[:, 1:] & ~building[:, :-1]
        outline[:, :-1] |= building[:, :-1] & ~building[:, 1:]
        put(_BUILDING, roof * (1.0 - 0.3 * outline[..., None]) + fine[..., None] * 6)
        # Roads: asphalt or concrete, smooth, faint patches.
        asphalt = colour((100, 100, 104) if rng.random() < 0.7 else (140, 138, 134), 8)
        put(_ROAD, asphalt + mid[..., None] * 12)
        # Water: deep, algae-green or muddy per tile; very smooth, slow turbidity changes.
        waters = ((40, 66, 86), (58, 86, 70), (96, 98, 84))
        water = colour(waters[int(rng.integers(len(waters)))], 8)
        put(_WATER, water + broad[..., None] * np.array([10, 26, 26], np.float32))
        # Barren: tan soil or grey spoil, strong grain.
        soil = colour((184, 162, 128) if rng.random() < 0.7 else (160, 156, 146), 12)
        put(_BARREN, soil + fine[..., None] * 48 + mid[..., None] * 24)
        # Forest: dark green canopy with strong speckle (crowns and their shadows).
        canopy = np.clip(fine * 2.2, -0.5, 0.5)[..., None]
        put(_FOREST, colour((52, 84, 50), 8) + canopy * np.array([50, 70, 45], np.float32))
        # Agriculture: crop colour per parcel (green, ripe, tilled soil, young), crop rows.
        crops = np.array(
            [[100, 146, 66], [152, 160, 88], [146, 122, 90], [126, 150, 104]], np.float32
        ) + rng.normal(0, 8, 3).astype(np.float32)
        crop = crops[np.minimum((self.tone * len(crops)).astype(np.intp), len(crops) - 1)]
        put(_AGRICULTURE, crop + self.stripes[..., None] * 14 + mid[..., None] * 20)

        # Per-class pixel noise: smooth surfaces (water, road) quiet, soil and canopy loud.
        sigma = np.array([0, 6, 5, 4, 3, 10, 7, 6], np.float32)[mask]
        image += (grain * 2.0 * sigma)[..., None]
        image += rng.normal(0, 3.0, (s, s, 3)).astype(np.float32)
        # Per-tile brightness and colour cast, plus haze, like different acquisitions.
        gain = rng.uniform(0.8, 1.2)
        cast = rng.normal(0, 8, 3).astype(np.float32)
        shaded = image * gain + cast + broad[..., None] * 36
        out = np.clip(np.rint(shaded), 0, 255).astype(np.uint8)
        out[mask == RAW_NODATA] = 0  # no-data is exactly black, like the archive
        return out
