"""Procedural sample dataset: facade label maps (A) paired with rendered facades (B).

The project ships no data, yet the default training job and the tests need aligned pix2pix pairs
that a small GAN can visibly learn within a few CPU minutes. This module draws them itself,
deterministically and without any download, in the standard aligned layout::

    ROOT/train/train_0000.png  ROOT/val/val_0000.png  ROOT/test/test_0000.png  ...

Each PNG is one pair, ``size`` high and ``2 * size`` wide: A (flat-colour label map) on the left,
B (a plausible rendering of the same layout) on the right. B is mostly a function of A, plus a
per-image wall/sky colour and mild texture noise, so the A -> B mapping is learnable.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

import numpy as np

from nectargan_core.files import SPLITS, save_image_atomic
from nectargan_core.settings import SampleDataSettings

__all__ = ["CLASS_NAMES", "PALETTE", "generate_sample_dataset", "render_pair"]

# Label classes; the index of a name is its class id in the label map and its row in PALETTE.
CLASS_NAMES = ("background", "wall", "window", "door", "balcony", "cornice", "pillar", "roof")
BACKGROUND, WALL, WINDOW, DOOR, BALCONY, CORNICE, PILLAR, ROOF = range(len(CLASS_NAMES))

# One flat, well-separated colour per class: A images contain these colours and nothing else,
# so a label map can be recovered exactly from A (and tests can check that it is).
PALETTE = np.array(
    [
        (20, 24, 120),  # background / sky
        (230, 130, 40),  # wall
        (70, 210, 245),  # window
        (170, 30, 50),  # door
        (245, 225, 50),  # balcony
        (120, 225, 110),  # cornice / ledge
        (200, 70, 210),  # pillar
        (110, 110, 110),  # roof
    ],
    dtype=np.uint8,
)
PALETTE.setflags(write=False)

_NAME_RE_TEMPLATE = r"{split}_\d{{4,}}\.png"

# Plausible facade base tones (brick, sand, cream, stone, ochre, terracotta, plaster); none of them
# is dark blue, so glass always stays clearly distinguishable from wall in B.
_WALL_TONES = np.array(
    [
        (165, 80, 60),
        (205, 180, 140),
        (222, 212, 190),
        (150, 146, 138),
        (196, 150, 90),
        (182, 112, 88),
        (236, 226, 212),
    ],
    dtype=np.float32,
)
_ROOF_TONES = np.array([(125, 58, 42), (72, 76, 88), (98, 72, 60)], dtype=np.float32)

Shader = Callable[[np.ndarray, np.ndarray], np.ndarray]
Mask = Callable[[np.ndarray, np.ndarray], np.ndarray]


class _Canvas:
    """Label map and rendering drawn together, so every pixel of B belongs to its class in A."""

    def __init__(self, size: int, background: np.ndarray) -> None:
        self.size = size
        self.labels = np.full((size, size), BACKGROUND, dtype=np.uint8)
        self.img = np.array(background, dtype=np.float32)

    def put(
        self,
        cls: int,
        y0: int,
        y1: int,
        x0: int,
        x1: int,
        shader: Shader | np.ndarray,
        mask: Mask | None = None,
    ) -> None:
        """Paint class ``cls`` over the rectangle [y0, y1) x [x0, x1) (clipped), optionally masked.

        ``shader`` gets absolute row (h, 1) and column (1, w) coordinates and returns the B colours.
        """
        y0, y1 = max(int(y0), 0), min(int(y1), self.size)
        x0, x1 = max(int(x0), 0), min(int(x1), self.size)
        if y1 <= y0 or x1 <= x0:
            return
        ys = np.arange(y0, y1)[:, None]
        xs = np.arange(x0, x1)[None, :]
        pix = shader(ys, xs) if callable(shader) else np.asarray(shader, dtype=np.float32)
        pix = np.broadcast_to(pix, (y1 - y0, x1 - x0, 3))
        if mask is None:
            self.labels[y0:y1, x0:x1] = cls
            self.img[y0:y1, x0:x1] = pix
        else:
            m = np.broadcast_to(mask(ys, xs), (y1 - y0, x1 - x0))
            self.labels[y0:y1, x0:x1][m] = cls
            self.img[y0:y1, x0:x1][m] = pix[m]


def _lerp_rows(top: np.ndarray, bottom: np.ndarray, t: np.ndarray) -> np.ndarray:
    """Vertical colour gradient: ``t`` is (h, 1) in [0, 1], result is (h, 1, 3)."""
    t = np.clip(t, 0.0, 1.0)[..., None]
    return top * (1.0 - t) + bottom * t


def _smooth_noise(rng: np.random.Generator, s: int, cell: int, sigma: float) -> np.ndarray:
    """Low-frequency (s, s) noise: a coarse random grid upsampled bilinearly, so stains look soft."""
    n = s // cell + 2
    grid = rng.normal(0.0, sigma, (n, n)).astype(np.float32)
    pos = (np.arange(s, dtype=np.float32) + 0.5) / cell
    i0 = np.floor(pos).astype(np.int64)
    frac = (pos - i0).astype(np.float32)
    rows = grid[i0] * (1 - frac)[:, None] + grid[i0 + 1] * frac[:, None]
    return rows[:, i0] * (1 - frac)[None, :] + rows[:, i0 + 1] * frac[None, :]


def render_pair(rng: np.random.Generator, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Draw one random facade and return ``(A, B)`` as ``uint8`` arrays of shape (size, size, 3).

    A is the flat-colour label map (only PALETTE colours); B is the rendering of the same layout.
    All randomness comes from ``rng``, so a seeded generator gives identical output every run.
    ``size`` is what ``sample.size`` allows (>= 32, a multiple of 16).
    """
    s = size
    f32 = np.float32

    # ---- per-image appearance (colour variation the generator cannot infer from A) -----------------
    overcast = rng.uniform(0.0, 0.45)
    sky_top = np.array([55, 105, 190], f32) + rng.normal(0, 8, 3).astype(f32)
    sky_bot = np.array([175, 205, 235], f32) + rng.normal(0, 6, 3).astype(f32)
    grey = np.array([185, 188, 195], f32)
    sky_top = sky_top * (1 - overcast) + grey * 0.85 * overcast
    sky_bot = sky_bot * (1 - overcast) + grey * overcast
    wall_base = _WALL_TONES[rng.integers(len(_WALL_TONES))] + rng.normal(0, 9, 3).astype(f32)
    frame_col = np.clip(wall_base * 0.42, 0, 255)
    ledge_col = wall_base * 0.35 + np.array([236, 232, 222], f32) * 0.65
    wood = np.array([112, 66, 36], f32) * rng.uniform(0.8, 1.2) + rng.normal(0, 5, 3).astype(f32)
    glass_top = sky_bot * rng.uniform(0.8, 0.95)
    glass_bot = np.array([30, 42, 62], f32) * rng.uniform(0.85, 1.15)
    rail_col = np.array([48, 48, 54], f32) if rng.random() < 0.6 else ledge_col * 0.9

    yy = np.arange(s, dtype=f32)[:, None]
    sky = np.broadcast_to(_lerp_rows(sky_top, sky_bot, yy / (s - 1)), (s, s, 3))
    canvas = _Canvas(s, sky)

    # ---- building footprint ------------------------------------------------------------------------
    bw = round(s * rng.uniform(0.62, 0.92))
    bx0 = int(rng.integers(0, s - bw + 1))
    bx1 = bx0 + bw
    bh = round(s * rng.uniform(0.6, 0.84))
    by0 = s - bh
    overhang = max(1, round(s * 0.012))

    # Wall texture: light falls from above, low-frequency blotches, fine grain, optional courses.
    blotch = _smooth_noise(rng, s, cell=max(4, s // 12), sigma=7.0)
    grain = rng.normal(0, 3.5, (s, s)).astype(f32)
    light = 1.08 - 0.18 * np.clip((yy - by0) / bh, 0, 1)
    lum = light * (1.0 + (blotch + grain) / 128.0)
    if rng.random() < 0.5:
        course = max(3, s // 24)
        lum = lum * np.where(((yy - by0) % course) == 0, 0.92, 1.0)
    wall_tex = np.clip(wall_base * lum[..., None], 0, 255).astype(f32)

    def wall_shader(ys: np.ndarray, xs: np.ndarray) -> np.ndarray:
        return wall_tex[ys, xs]

    # ---- roof (optional): a mansard trapezoid or a flat parapet above the cornice --------------------
    if rng.random() < 0.55 and by0 >= 6:
        rh = min(round(s * rng.uniform(0.06, 0.13)), by0 - 2)
        ry0 = by0 - rh
        slope = rng.uniform(0.6, 1.6) if rng.random() < 0.7 else 0.0
        roof_col = _ROOF_TONES[rng.integers(len(_ROOF_TONES))] * rng.uniform(0.85, 1.15)
        tile = max(2, s // 32)

        def roof_shader(ys: np.ndarray, xs: np.ndarray) -> np.ndarray:
            shade = 0.85 + 0.2 * (ys - ry0) / max(rh - 1, 1)
            shade = shade * np.where(((ys - ry0) % tile) == tile - 1, 0.82, 1.0)
            return (roof_col * shade[..., None]).astype(f32)

        def roof_mask(ys: np.ndarray, xs: np.ndarray) -> np.ndarray:
            inset = np.round((by0 - ys) * slope)
            return (xs >= bx0 - overhang + inset) & (xs < bx1 + overhang - inset)

        canvas.put(ROOF, ry0, by0, bx0 - overhang, bx1 + overhang, roof_shader, roof_mask)

    canvas.put(WALL, by0, s, bx0, bx1, wall_shader)

    ledges: list[tuple[int, int, int, int]] = []  # rectangles that cast a shadow on the wall below

    def ledge_shader_for(y0: int, y1: int) -> Shader:
        def shader(ys: np.ndarray, xs: np.ndarray) -> np.ndarray:
            t = (ys - y0) / max(y1 - y0 - 1, 1)
            shade = 1.08 - 0.3 * t * t
            return (ledge_col * shade[..., None]).astype(f32)

        return shader

    # ---- floors and columns ------------------------------------------------------------------------
    ch = max(2, round(s * rng.uniform(0.025, 0.045)))  # top cornice height
    pillars = rng.random() < 0.45
    pw = max(2, round(s * rng.uniform(0.03, 0.05))) if pillars else 0
    margin = pw + max(1, round(bw * rng.uniform(0.02, 0.07)))
    ix0, ix1 = bx0 + margin, bx1 - margin
    fy0 = by0 + ch + max(1, round(s * 0.015))
    avail = s - fy0
    min_fh = max(6, s // 10)
    n_floors = int(max(2, min(int(rng.integers(3, 6)), avail // min_fh)))
    fh = avail / n_floors
    min_cw = max(5, s // 12)
    n_cols = int(max(2, min(int(rng.integers(2, 7)), (ix1 - ix0) // min_cw)))
    cw = (ix1 - ix0) / n_cols

    ww = max(2, round(cw * rng.uniform(0.4, 0.66)))
    wh = max(3, round(fh * rng.uniform(0.45, 0.66)))
    w_off = round((fh - wh) * rng.uniform(0.35, 0.6))

    # Floor-separating string courses (optional), drawn as ledges across the building.
    if rng.random() < 0.45:
        lh = max(1, round(s * 0.015))
        for i in range(1, n_floors):
            ly0 = round(fy0 + i * fh) - lh
            canvas.put(CORNICE, ly0, ly0 + lh, bx0, bx1, ledge_shader_for(ly0, ly0 + lh))
            ledges.append((ly0, ly0 + lh, bx0, bx1))

    if pillars:

        def pillar_shader_for(x0: int) -> Shader:
            def shader(ys: np.ndarray, xs: np.ndarray) -> np.ndarray:
                u = (xs - x0 + 0.5) / pw
                shade = 0.82 + 0.36 * np.sin(np.pi * u)
                return wall_tex[ys, xs] * shade[..., None]

            return shader

        for px0 in (bx0, bx1 - pw):
            canvas.put(PILLAR, by0 + ch, s, px0, px0 + pw, pillar_shader_for(px0))

    # ---- windows, door, balconies ------------------------------------------------------------------
    ft = max(1, s // 64)
    mullions = rng.random() < 0.5

    def window_shader_for(y0: int, y1: int, x0: int, x1: int, bright: float) -> Shader:
        h, w = y1 - y0, x1 - x0
        f = min(ft, max(1, (min(h, w) - 1) // 3))

        def shader(ys: np.ndarray, xs: np.ndarray) -> np.ndarray:
            t = (ys - y0) / max(h - 1, 1)
            u = (xs - x0) / max(w - 1, 1)
            col = _lerp_rows(glass_top, glass_bot, t) * bright
            highlight = 28.0 * np.exp(-(((u + 0.6 * t - 0.6) / 0.13) ** 2))
            col = col + highlight[..., None]
            frame = (ys < y0 + f) | (ys >= y1 - f) | (xs < x0 + f) | (xs >= x1 - f)
            if mullions and w >= 6 and h >= 8:
                cx = x0 + w // 2
                cy = y0 + round(h * 0.38)
                frame = frame | ((xs >= cx - f // 2) & (xs < cx - f // 2 + f)) | ((ys >= cy) & (ys < cy + f))
            return np.where(frame[..., None], frame_col, col).astype(f32)

        return shader

    door_col = int(rng.integers(0, n_cols))
    dw = max(3, round(cw * rng.uniform(0.45, 0.72)))
    dh = max(4, round(fh * rng.uniform(0.7, 0.88)))
    door_x0 = round(ix0 + (door_col + 0.5) * cw - dw / 2)
    balcony_floors = {i for i in range(n_floors - 1) if rng.random() < 0.35}
    bal_h = max(2, round(wh * rng.uniform(0.25, 0.35)))
    bal_o = max(1, round(ww * 0.15))
    bar = max(2, s // 32)

    def balcony_shader_for(y0: int, x0: int) -> Shader:
        def shader(ys: np.ndarray, xs: np.ndarray) -> np.ndarray:
            bars = np.where(((xs - x0) % bar) < (bar + 1) // 2, 1.0, 0.62)
            shade = np.where(ys == y0, 1.3, bars)
            return (rail_col * shade[..., None]).astype(f32)

        return shader

    for i in range(n_floors):
        top = round(fy0 + i * fh) + w_off
        ground = i == n_floors - 1
        for j in range(n_cols):
            if ground and j == door_col:
                continue
            if ground and rng.random() < 0.2:
                continue  # a blank bay on the ground floor
            x0 = round(ix0 + (j + 0.5) * cw - ww / 2)
            bright = rng.uniform(0.88, 1.08)
            canvas.put(WINDOW, top, top + wh, x0, x0 + ww, window_shader_for(top, top + wh, x0, x0 + ww, bright))
            if i in balcony_floors:
                b0 = top + wh - bal_h + max(1, bal_h // 3)
                canvas.put(BALCONY, b0, b0 + bal_h, x0 - bal_o, x0 + ww + bal_o, balcony_shader_for(b0, x0))
                ledges.append((b0, b0 + bal_h, x0 - bal_o, x0 + ww + bal_o))

    dy0 = s - dh
    plank = max(2, s // 40)

    def door_shader(ys: np.ndarray, xs: np.ndarray) -> np.ndarray:
        f = ft
        shade = np.where(((xs - door_x0) % (plank + 1)) == plank, 0.78, 1.0)
        shade = shade * (1.05 - 0.15 * (ys - dy0) / max(dh - 1, 1))
        col = wood * shade[..., None]
        frame = (ys < dy0 + f) | (xs < door_x0 + f) | (xs >= door_x0 + dw - f)
        return np.where(frame[..., None], frame_col, col).astype(f32)

    canvas.put(DOOR, dy0, s, door_x0, door_x0 + dw, door_shader)

    # Top cornice last: it overhangs the building edges and sits in front of everything else.
    canvas.put(CORNICE, by0, by0 + ch, bx0 - overhang, bx1 + overhang, ledge_shader_for(by0, by0 + ch))
    ledges.append((by0, by0 + ch, bx0 - overhang, bx1 + overhang))

    # ---- soft shadows under ledges / balconies, only on wall and pillar pixels ----------------------
    shade_map = np.ones((s, s), dtype=f32)
    d = max(2, round(s * 0.04))
    ramp = (1.0 - 0.32 * (1.0 - np.arange(d, dtype=f32) / d))[:, None]
    for _y0, y1, x0, x1 in ledges:
        x0c, x1c = max(x0, 0), min(x1, s)
        rows = min(d, s - y1)
        if rows > 0 and x1c > x0c:
            shade_map[y1 : y1 + rows, x0c:x1c] *= ramp[:rows]
    receives = (canvas.labels == WALL) | (canvas.labels == PILLAR)
    img = canvas.img
    img[receives] *= shade_map[receives][:, None]

    # Mild sensor noise (luminance), then quantise.
    img += rng.normal(0, 2.0, (s, s, 1)).astype(f32)
    b = np.clip(np.rint(img), 0, 255).astype(np.uint8)
    a = PALETTE[canvas.labels]
    return a, b


def generate_sample_dataset(cfg: SampleDataSettings) -> dict[str, int]:
    """Write the procedural facades dataset under ``cfg.out`` and return the number of files per split.

    Every file is drawn from ``np.random.default_rng([seed, split_index, index])``, so its bytes
    depend only on (seed, split, index, size): re-runs are identical and a file does not change
    with the number of others. Existing files are overwritten; stale ``{split}_NNNN.png`` files left
    by a previous, larger run are removed (nothing else in the split folders is touched).
    """
    root = Path(cfg.out)
    counts = {"train": cfg.train, "val": cfg.val, "test": cfg.test}
    written: dict[str, int] = {}
    for split_id, split in enumerate(SPLITS):
        n = counts[split]
        split_dir = root / split
        split_dir.mkdir(parents=True, exist_ok=True)
        expected = set()
        for index in range(n):
            rng = np.random.default_rng([cfg.seed, split_id, index])
            a, b = render_pair(rng, cfg.size)
            name = f"{split}_{index:04d}.png"
            save_image_atomic(np.concatenate([a, b], axis=1), split_dir / name)
            expected.add(name)
        pattern = re.compile(_NAME_RE_TEMPLATE.format(split=re.escape(split)))
        for entry in split_dir.iterdir():
            if entry.is_file() and pattern.fullmatch(entry.name) and entry.name not in expected:
                entry.unlink()
        written[split] = n
    return written
